#!/usr/bin/env bash
# Set Logly up on a Debian machine and run its main job once: parse this machine's auth and
# fail2ban logs (or the bundled samples when there are none) into a database, then show what
# it found. Safe to run again: nothing is stored twice.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    missing=()
    for pkg in python3 python3-venv python3-pip; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
logly=.venv/bin/logly

logs=()
for f in /var/log/auth.log* /var/log/fail2ban.log*; do
    [ -r "$f" ] && [ -s "$f" ] && logs+=("$f")
done
if [ ${#logs[@]} -eq 0 ]; then
    echo "No readable /var/log/auth.log or fail2ban.log here: using the bundled samples." >&2
    logs=(packaging/samples/auth.log packaging/samples/fail2ban.log)
fi

$logly init
$logly ingest "${logs[@]}"
$logly events --limit 15
$logly traces --limit 10
$logly ips --top 10
$logly stats
echo
echo "Database: $($logly stats --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["database"])')"
echo "Try: $logly events --action auth_failure --since 7d     or     $logly rules test ${logs[0]}"
