"""Journal backfill throughput: three ways to get the same entries into Logly, in one run.

    python bench/journal.py                   # 1M entries
    python bench/journal.py --entries 200000 --json bench/out/journal.json

1. `logly ingest --journal-dir D` (journalctl -o json read by Logly's journal source);
2. `journalctl --file F -o json | logly ingest -` (the same JSON through the stdin path);
3. `logly ingest auth.log` on the same entries written as syslog lines (the file path).

The journal file is built with systemd-journal-remote from the export format (Debian package
systemd-journal-remote). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
MESSAGES = (
    "Failed password for invalid user {u} from {ip} port {port} ssh2",
    "Invalid user {u} from {ip} port {port}",
    "Connection closed by authenticating user root {ip} port {port} [preauth]",
    "Accepted publickey for alice from {ip} port {port} ssh2: ED25519 SHA256:x",
    "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
)


def generate(n: int, export: Path, syslog: Path, seed: int = 1) -> None:
    rng = random.Random(seed)
    base = 1_763_978_400_000_000
    with open(export, "wb") as ex, open(syslog, "w") as sl:
        for i in range(n):
            msg = rng.choice(MESSAGES).format(
                u=rng.choice(("admin", "test", "oracle", "ubuntu")),
                ip=f"203.0.{rng.randrange(4)}.{rng.randrange(256)}",
                port=rng.randrange(1024, 65535))
            pid = 1000 + i // 4
            usec = base + i * 250_000
            ex.write(f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={i + 1}\n"
                     f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=web1\n"
                     f"SYSLOG_IDENTIFIER=sshd\n_COMM=sshd\n_PID={pid}\nPRIORITY=6\n"
                     f"SYSLOG_FACILITY=10\nMESSAGE={msg}\n\n".encode())
            t = time.gmtime(usec // 1_000_000)
            sl.write(time.strftime("%b %d %H:%M:%S", t) + f" web1 sshd[{pid}]: {msg}\n")


def timed(cmd: str | list[str], config: Path, shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "LOGLY_CONFIG": str(config), "LOGLY_TIMEZONE": "UTC"})
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logly = str(Path(sys.executable).with_name("logly"))
    results = []
    with tempfile.TemporaryDirectory(prefix="logly-journal-") as tmp:
        d = Path(tmp)
        export, syslog, jdir = d / "e.export", d / "auth.log", d / "journal"
        jdir.mkdir()
        t0 = time.perf_counter()
        generate(args.entries, export, syslog)
        # journal-remote rotates its output at its size limit (files bench@....journal beside
        # it), so the whole directory is read
        subprocess.run([JOURNAL_REMOTE, "-o", str(jdir / "bench.journal"), str(export)],
                       check=True, capture_output=True)
        size = sum(f.stat().st_size for f in jdir.iterdir())
        print(f"built {args.entries:,} entries in {time.perf_counter() - t0:.1f} s "
              f"({size / 1e6:.0f} MB in {len(list(jdir.iterdir()))} journal files)", flush=True)
        runs = [
            ("logly ingest --journal-dir", [logly, "ingest", "--journal-dir", str(jdir),
                                            "--match", "_COMM=sshd", "--db", str(d / "a.db")]),
            ("journalctl -o json | logly ingest -",
             f"journalctl -D {jdir} -o json | {logly} ingest - --db {d / 'b.db'}"),
            ("logly ingest auth.log (syslog)", [logly, "ingest", str(syslog), "--db",
                                                str(d / "c.db")]),
        ]
        config = d / "logly.toml"
        config.write_text("")
        for (name, cmd), db in zip(runs, ("a.db", "b.db", "c.db"), strict=True):
            secs = timed(cmd, config, shell=isinstance(cmd, str))
            with sqlite3.connect(d / db) as conn:  # a fast wrong answer is no answer
                stored = conn.execute("SELECT count(*) FROM log_events").fetchone()[0]
            r = {"way": name, "entries": args.entries, "stored": stored,
                 "seconds": round(secs, 2), "entries_per_s": round(args.entries / secs)}
            results.append(r)
            print(f"{name:40s} {secs:7.1f} s  {r['entries_per_s']:>9,} entries/s  "
                  f"{stored:,} events stored", flush=True)
            if stored != args.entries:
                print(f"  MISMATCH: {args.entries - stored:,} entries not stored", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
