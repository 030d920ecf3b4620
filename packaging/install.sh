#!/usr/bin/env bash
# Install Logly as a service on a Debian machine: a virtualenv in /opt/logly, the config in
# /etc/logly, the unit in /etc/systemd/system; then enable and start it where systemd runs.
# Run as root from a checkout: sudo ./packaging/install.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${LOGLY_PREFIX:-/opt/logly}

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh must run as root (sudo ./packaging/install.sh)" >&2
    exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in python3 python3-venv python3-pip; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# --system-site-packages: the kernel tracer's bcc comes from Debian (python3-bpfcc)
[ -x "$prefix/venv/bin/python" ] || python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/pip" install -q --upgrade pip >/dev/null
"$prefix/venv/bin/pip" install -q "$here"
ln -sf "$prefix/venv/bin/logly" /usr/local/bin/logly

install -d -m 0755 /etc/logly /etc/logly/rules.d
[ -e /etc/logly/logly.toml ] || install -m 0644 "$here/packaging/logly.toml" /etc/logly/logly.toml
install -d -m 0750 /var/lib/logly
install -m 0644 "$here/packaging/logly.service" /etc/systemd/system/logly.service
if [ -e "$here/packaging/logly.cron" ]; then
    install -m 0644 "$here/packaging/logly.cron" /etc/cron.d/logly
fi
/usr/local/bin/logly init

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now logly
    systemctl --no-pager status logly | head -n 5 || true
else
    echo "systemd is not running here: start the daemon by hand with 'logly daemon'." >&2
fi
