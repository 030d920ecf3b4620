"""Daemon latency: time from a line's append to its event being queryable, at steady rates.

    python bench/latency.py                         # 1k, 10k, 50k lines/s for 30 s each
    python bench/latency.py --rates 10000 --seconds 10
    python bench/latency.py --fail2ban              # and fail2ban-server on the same stream
    python bench/latency.py --json bench/out/latency.json

With --fail2ban, Debian's fail2ban-server runs its sshd jail (file backend, polling: Debian has
no pyinotify by default; dummy ban action, no firewall) on an identical stream, and the time
from append to its "[sshd] Found <ip>" log line is measured the same way (fail2ban reads a
file in order, so the k-th "Found" is the k-th line).

A writer appends auth.log lines at a fixed rate (in 10 ms ticks) to a file that `logly daemon`
follows; a reader polls the database every 5 ms and notes when each line's event appears.
Reported per rate: p50/p99/max latency, events lost (written but never stored), duplicates,
and the daemon's peak RSS (from /proc, sampled). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def line(seq: int, stamp: str) -> str:
    # current local time: fail2ban ignores lines older than its findtime
    return (f"{stamp} web1 sshd[{1000 + seq % 50000}]: "
            f"Invalid user u{seq} from 203.0.113.{seq % 250} port {1024 + seq % 60000}\n")


def rss_kb(pid: int) -> int:
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    except OSError:
        pass
    return 0


def write_at_rate(log: Path, rate: int, seconds: float, written: list[float],
                  done: threading.Event) -> None:
    """Append `rate` lines/s in 10 ms ticks; `written[i]` is when line i reached the file."""
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    seq = 0
    t0 = time.monotonic()
    with open(log, "a", buffering=1 << 16) as f:
        while time.monotonic() - t0 < seconds:
            stamp = time.strftime("%b %e %H:%M:%S")
            chunk = "".join(line(seq + i, stamp) for i in range(per_tick))
            now = time.monotonic()
            f.write(chunk)
            f.flush()
            written.extend([now] * per_tick)
            seq += per_tick
            delay = t0 + (seq / per_tick) * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    done.set()


def follow_until_quiet(poll, written: list[float], done: threading.Event, pid: int,
                       peak: list[int]) -> None:
    """Call `poll()` every 5 ms until everything written was seen or 10 s pass without news."""
    quiet_since = None
    seen = 0
    while True:
        got = poll()
        now = time.monotonic()
        seen += got
        peak[0] = max(peak[0], rss_kb(pid))
        if got:
            quiet_since = None
        if done.is_set():
            if seen >= len(written):
                return
            quiet_since = quiet_since or now
            if now - quiet_since > 10:  # ten seconds without progress: the rest is lost
                return
        time.sleep(0.005)


def summarise(name: str, rate: int, seconds: float, written: list[float],
              seen: dict[int, float], dupes: int, peak_kb: int) -> dict:
    lat = sorted((seen[i] - written[i]) * 1000 for i in range(len(written)) if i in seen)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else float("nan")

    return {"tool": name, "rate": rate, "seconds": seconds, "written": len(written),
            "stored": len(seen), "lost": len(written) - len(seen), "duplicates": dupes,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 1) if lat else None,
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "caught_up_after_s": round(max(seen.values()) - written[-1], 2) if seen else None}


def run_rate(rate: int, seconds: float, workdir: Path) -> dict:
    log = workdir / f"auth-{rate}.log"
    db = workdir / f"l-{rate}.db"
    cfg = workdir / "logly.toml"
    cfg.write_text("[daemon]\nbatch_seconds = 0.05\npoll_seconds = 0.05\n")
    log.write_text("")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "logly.cli", "daemon", "--db", str(db), "--config", str(cfg),
         "--follow", str(log), "--from-start"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / f"daemon-{rate}.err", "w"),  # noqa: SIM115
        start_new_session=True)
    while not db.exists() or rss_kb(daemon.pid) == 0:
        if daemon.poll() is not None:
            raise SystemExit(f"logly daemon exited with {daemon.returncode}: "
                             + (workdir / f"daemon-{rate}.err").read_text()[-2000:])
        time.sleep(0.05)
    time.sleep(1.0)
    written: list[float] = []
    seen: dict[int, float] = {}
    dupes = 0
    done = threading.Event()
    peak = [0]
    conn = sqlite3.connect(db, timeout=30, check_same_thread=False)
    last_id = 0

    def poll() -> int:
        nonlocal dupes, last_id
        rows = conn.execute("SELECT id, user FROM log_events WHERE id > ? ORDER BY id",
                            (last_id,)).fetchall()
        now = time.monotonic()
        for rid, user in rows:
            seq = int(user[1:])
            if seq in seen:
                dupes += 1
            seen[seq] = now
            last_id = rid
        return len(rows)

    tw = threading.Thread(target=write_at_rate, args=(log, rate, seconds, written, done))
    tw.start()
    follow_until_quiet(poll, written, done, daemon.pid, peak)
    tw.join()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)
    return summarise("logly", rate, seconds, written, seen, dupes, peak[0])


F2B_JAIL = """[DEFAULT]
backend = polling
banaction = dummy
banaction_allports = dummy
maxretry = 1000000000
findtime = 1h
[sshd]
enabled = true
port = ssh
logpath = {log}
mode = normal
"""


def run_fail2ban(rate: int, seconds: float, workdir: Path) -> dict:
    """fail2ban-server's sshd jail on the same stream: append to "[sshd] Found" in its log."""
    conf = workdir / "f2b-conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/fail2ban", conf)
    for extra in (conf / "jail.d").glob("*"):
        extra.unlink()
    log = workdir / f"f2b-auth-{rate}.log"
    out = workdir / f"f2b-{rate}.log"
    log.write_text("")
    out.write_text("")
    (conf / "fail2ban.local").write_text("[DEFAULT]\ndbfile = :memory:\n")
    (conf / "jail.local").write_text(F2B_JAIL.format(log=log))
    server = subprocess.Popen(
        ["fail2ban-server", "-f", "-x", "-c", str(conf), "-s", str(workdir / "f2b.sock"),
         "-p", str(workdir / "f2b.pid"), "--logtarget", str(out), "--loglevel", "INFO"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while "Jail 'sshd' started" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    written: list[float] = []
    seen: dict[int, float] = {}
    done = threading.Event()
    peak = [0]
    fh = open(out, encoding="utf-8", errors="replace")  # noqa: SIM115
    pending = ""

    def poll() -> int:
        nonlocal pending
        data = pending + fh.read()
        lines = data.split("\n")
        pending = lines.pop()
        now = time.monotonic()
        found = sum(1 for ln in lines if "] Found " in ln)
        for _ in range(found):
            seen[len(seen)] = now
        return found

    tw = threading.Thread(target=write_at_rate, args=(log, rate, seconds, written, done))
    tw.start()
    follow_until_quiet(poll, written, done, server.pid, peak)
    tw.join()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    fh.close()
    return summarise("fail2ban-server", rate, seconds, written, seen, 0, peak[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fail2ban", action="store_true",
                    help="also run fail2ban-server's sshd jail on the same stream")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    runners = [run_rate] + ([run_fail2ban] if args.fail2ban else [])
    with tempfile.TemporaryDirectory(prefix="logly-latency-") as tmp:
        for rate, runner in ((r, f) for r in args.rates for f in runners):
            r = runner(rate, args.seconds, Path(tmp))
            results.append(r)
            print(f"{r['tool']:<16}{r['rate']:>6} lines/s  written {r['written']:>8,}  "
                  f"lost {r['lost']:>6,}  "
                  f"dupes {r['duplicates']}  p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  "
                  f"max {r['max_ms']} ms  peak RSS {r['peak_rss_mb']} MB  "
                  f"last event {r['caught_up_after_s']} s after the last append", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 and r["duplicates"] == 0
                    for r in results if r["tool"] == "logly") else 1


if __name__ == "__main__":
    os.environ.setdefault("LOGLY_CONFIG", "/nonexistent")
    sys.exit(main())
