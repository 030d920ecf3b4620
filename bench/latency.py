"""Daemon latency: time from a line's append to its event being queryable, at steady rates.

    python bench/latency.py                         # 1k, 10k, 50k lines/s for 30 s each
    python bench/latency.py --rates 10000 --seconds 10
    python bench/latency.py --json bench/out/latency.json

A writer appends auth.log lines at a fixed rate (in 10 ms ticks) to a file that `logly daemon`
follows; a reader polls the database every 5 ms and notes when each line's event appears.
Reported per rate: p50/p99/max latency, events lost (written but never stored), duplicates,
and the daemon's peak RSS (from /proc, sampled). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def line(seq: int) -> str:
    return (f"Nov 24 10:{seq // 60 % 60:02d}:{seq % 60:02d} web1 sshd[{1000 + seq % 50000}]: "
            f"Invalid user u{seq} from 203.0.113.{seq % 250} port {1024 + seq % 60000}\n")


def rss_kb(pid: int) -> int:
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    except OSError:
        pass
    return 0


def run_rate(rate: int, seconds: float, workdir: Path) -> dict:
    log = workdir / f"auth-{rate}.log"
    db = workdir / f"l-{rate}.db"
    cfg = workdir / "logly.toml"
    cfg.write_text("[daemon]\nbatch_seconds = 0.05\npoll_seconds = 0.05\n")
    log.write_text("")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "logly.cli", "daemon", "--db", str(db), "--config", str(cfg),
         "--follow", str(log), "--from-start"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not db.exists() or rss_kb(daemon.pid) == 0:
        time.sleep(0.05)
    time.sleep(1.0)
    written: list[float] = []
    seen: dict[int, float] = {}
    dupes = 0
    done = threading.Event()
    peak = [0]

    def writer() -> None:
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        seq = 0
        t0 = time.monotonic()
        with open(log, "a", buffering=1 << 16) as f:
            while time.monotonic() - t0 < seconds:
                chunk = "".join(line(seq + i) for i in range(per_tick))
                now = time.monotonic()
                f.write(chunk)
                f.flush()
                written.extend([now] * per_tick)
                seq += per_tick
                nxt = t0 + (seq / per_tick) * tick
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        done.set()

    def reader() -> None:
        nonlocal dupes
        conn = sqlite3.connect(db, timeout=30)
        last_id = 0
        quiet_since = None
        while True:
            rows = conn.execute("SELECT id, user FROM log_events WHERE id > ? ORDER BY id",
                                (last_id,)).fetchall()
            now = time.monotonic()
            for rid, user in rows:
                seq = int(user[1:])
                if seq in seen:
                    dupes += 1
                seen[seq] = now
                last_id = rid
            peak[0] = max(peak[0], rss_kb(daemon.pid))
            if rows:
                quiet_since = None
            if done.is_set():
                if len(seen) >= len(written):
                    break
                quiet_since = quiet_since or now
                if now - quiet_since > 10:  # ten seconds without progress: the rest is lost
                    break
            time.sleep(0.005)

    tw = threading.Thread(target=writer)
    tr = threading.Thread(target=reader)
    tw.start()
    tr.start()
    tw.join()
    tr.join()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)
    lat = sorted((seen[i] - written[i]) * 1000 for i in range(len(written)) if i in seen)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else float("nan")

    return {"rate": rate, "seconds": seconds, "written": len(written), "stored": len(seen),
            "lost": len(written) - len(seen), "duplicates": dupes, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": round(lat[-1], 1) if lat else None,
            "peak_rss_mb": round(peak[0] / 1024, 1),
            "caught_up_after_s": round(max(seen.values()) - written[-1], 2) if seen else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="logly-latency-") as tmp:
        for rate in args.rates:
            r = run_rate(rate, args.seconds, Path(tmp))
            results.append(r)
            print(f"{r['rate']:>6} lines/s  written {r['written']:>8,}  lost {r['lost']:>6,}  "
                  f"dupes {r['duplicates']}  p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  "
                  f"max {r['max_ms']} ms  peak RSS {r['peak_rss_mb']} MB  "
                  f"last event {r['caught_up_after_s']} s after the last append", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["lost"] == 0 and r["duplicates"] == 0 for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("LOGLY_CONFIG", "/nonexistent")
    sys.exit(main())
