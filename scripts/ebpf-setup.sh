#!/usr/bin/env bash
# Make BCC usable on a Debian machine whose running kernel has no headers package of its own
# (see ARCHITECTURE.md, "eBPF on this kind of machine"). Idempotent; run as root.
#   1. install python3-bpfcc, bpfcc-tools and Debian's kernel headers (when missing);
#   2. link the closest installed /usr/src/linux-headers-*-amd64 as /lib/modules/$(uname -r)/build
#      and .../source (BCC compiles against them; tracepoint arguments come from tracefs, so a
#      version mismatch does not matter for the probes we use);
#   3. mount tracefs at /sys/kernel/tracing (and debugfs, where older BCC looks) when absent;
#   4. put /usr/lib/python3/dist-packages (BCC's pure-Python module) on the venv's path with a
#      .pth file — PyPI's "bcc" is an unrelated package.
# Usage: scripts/ebpf-setup.sh [VENV]   (VENV defaults to .venv next to this script's parent)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}

if [ "$(id -u)" -ne 0 ]; then
    echo "ebpf-setup: not root; skipping (the tracer will use its /proc fallback)" >&2
    exit 0
fi

missing=()
for pkg in python3-bpfcc bpfcc-tools linux-headers-amd64; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# 2. headers: prefer an exact match, else the highest installed Debian -amd64 headers.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build/Makefile" ]; then
    HDR=""
    if [ -d "/usr/src/linux-headers-$KREL" ]; then
        HDR=/usr/src/linux-headers-$KREL
    else
        HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    if [ -z "$HDR" ]; then
        echo "ebpf-setup: no /usr/src/linux-headers-*-amd64 installed" >&2
        exit 1
    fi
    COMMON=${HDR%-amd64}-common
    [ -d "$COMMON" ] || COMMON=$HDR
    mkdir -p "$MODDIR"
    ln -sfn "$HDR" "$MODDIR/build"
    ln -sfn "$COMMON" "$MODDIR/source"
    echo "ebpf-setup: $MODDIR/build -> $HDR, source -> $COMMON"
fi

# 3. tracefs (and debugfs, whose tracing/ dir some BCC versions still probe).
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing
fi
if [ -d /sys/kernel/debug ] && [ ! -e /sys/kernel/debug/tracing ] \
        && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi

# 4. BCC visible from the venv (only when the venv exists; test.sh creates it first).
if [ -x "$VENV/bin/python" ]; then
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "/usr/lib/python3/dist-packages" > "$SITE/logly-bcc.pth"
    "$VENV/bin/python" -c 'import bcc' \
        || { echo "ebpf-setup: bcc not importable from $VENV" >&2; exit 1; }
fi
echo "ebpf-setup: ok"
