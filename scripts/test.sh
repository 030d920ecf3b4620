#!/usr/bin/env bash
# Set up everything the tests need on a Debian machine (system packages too, when root) and
# run them: ruff, then pytest. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
            return 0
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

if command -v apt-get >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip sqlite3 systemd systemd-journal-remote
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[dev]'
# eBPF for the tracer tests: BCC, kernel headers, tracefs (as root; they skip elsewhere)
./scripts/ebpf-setup.sh .venv

.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
