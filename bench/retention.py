"""Retention cleanup of millions of old events while ingestion runs: how long does ingestion
ever wait, and how much space comes back?

A database (auto_vacuum = INCREMENTAL) gets N old events (31-60 days old, one executemany per
batch of 500k, indexes built once at the end). Then an ingester process stores a batch of
100 fresh events every 20 ms through SQLiteStore.write_batch, as the daemon would, timing each
call; after a quiet baseline, `logly.store.retention.cleanup` deletes everything older than 30
days in the same database. Reported: the ingester's longest write (the stall), its p99, the
cleanup's longest lock, rows/s, and the file size before and after.

    python bench/retention.py                       # 5M rows
    python bench/retention.py --rows 1000000 --json
    python bench/retention.py --rows 5000000 --max-txn-ms 50 --pause-ms 50 --keep

Compare two revisions by running it from each checkout with the same --rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logly.store.retention import RetentionConfig, checkpoint, cleanup  # noqa: E402
from logly.store.sqlite import SQLiteStore, schema_sql  # noqa: E402

FMT = "%Y-%m-%dT%H:%M:%S.%fZ"
USERS = ("root", "admin", "oracle", "test", "ubuntu", "git", "postgres", "user")


def create(path: Path, rows: int, now: datetime) -> float:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    raw = sqlite3.connect(path)
    raw.executescript("PRAGMA auto_vacuum = INCREMENTAL;\n" + schema_sql())
    raw.close()
    store = SQLiteStore(path)
    store.init()
    fid, _ = store.open_source("bench-old", "/var/log/auth.log.old")
    store.drop_event_indexes()  # one index build at the end beats per-row upkeep
    t0 = time.perf_counter()
    start = now - timedelta(days=60)
    step = timedelta(days=29) / rows  # spread over days 60..31 ago
    batch = 500_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # generation only; the bench measures cleanup
    sql = ('INSERT INTO log_events (timestamp, source, host, program, pid, level, service, '
           'action, message, ip_address, user, port, metadata, file_id, "offset") '
           "VALUES (?, 'syslog', 'web1', 'sshd', 1000, 'warning', 'ssh', 'auth_failure', ?, ?, "
           "?, 22, '{\"rule\": \"sshd/failed-password\"}', ?, ?)")
    for lo in range(0, rows, batch):
        def gen(lo: int = lo):  # type: ignore[no-untyped-def]
            for i in range(lo, min(rows, lo + batch)):
                ip = f"203.0.{(i >> 8) & 255}.{i & 255}"
                user = USERS[i % len(USERS)]
                yield ((start + step * i).strftime(FMT),
                       f"Failed password for {user} from {ip} port {1024 + i % 60000} ssh2",
                       ip, user, fid, i * 100)
        conn.execute("BEGIN")
        conn.executemany(sql, gen())
        conn.execute("COMMIT")
        print(f"  generated {min(rows, lo + batch):,} rows", file=sys.stderr, flush=True)
    conn.close()
    store.ensure_indexes()
    checkpoint(store, "TRUNCATE")
    store.close()
    return time.perf_counter() - t0


def ingester(path: str, stop: mp.synchronize.Event, out: mp.Queue, every: float) -> None:
    store = SQLiteStore(path)
    fid, offset = store.open_source("bench-live", "/var/log/auth.log")
    lat: list[tuple[float, float]] = []  # (start, seconds)
    n = 0
    while not stop.is_set():
        now = datetime.now(UTC).strftime(FMT)
        rows = [(now, "syslog", "web1", "sshd", 2000, "warning", "ssh", "auth_failure",
                 "Failed password for root from 198.51.100.7 port 4000 ssh2", "198.51.100.7",
                 "root", 4000, '{"rule": "sshd/failed-password"}', fid, offset + i * 80)
                for i in range(100)]
        t0 = time.perf_counter()
        store.write_batch(fid, rows, [], offset=offset + 8000, lines=100)
        lat.append((t0, time.perf_counter() - t0))
        offset += 8000
        n += 100
        time.sleep(every)
    out.put({"latencies": lat, "events": n})
    store.close()


def sizes(path: Path) -> dict[str, int]:
    return {"db": path.stat().st_size,
            "wal": Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--db", type=Path, default=Path(__file__).parent / "out" / "retention.db")
    ap.add_argument("--max-txn-ms", type=float, default=50.0)
    ap.add_argument("--pause-ms", type=float, default=50.0)
    ap.add_argument("--every", type=float, default=0.02, help="ingester pause between batches")
    ap.add_argument("--baseline", type=float, default=3.0, help="seconds of ingestion alone")
    ap.add_argument("--keep", action="store_true", help="keep the database file")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    print(f"generating {args.rows:,} old events in {args.db} ...", file=sys.stderr)
    gen_s = create(args.db, args.rows, now)
    before = sizes(args.db)

    ctx = mp.get_context("spawn")  # a fresh interpreter: no GIL or fork-inherited engine
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=ingester, args=(str(args.db), stop, out, args.every))
    proc.start()
    time.sleep(args.baseline)
    store = SQLiteStore(args.db)
    cfg = RetentionConfig(max_txn_ms=args.max_txn_ms, pause_ms=args.pause_ms)
    cfg.days = {"log_events": 30}
    c0 = time.perf_counter()
    res = cleanup(store, cfg, now=now)
    c1 = time.perf_counter()
    time.sleep(1.0)
    stop.set()
    data = out.get()
    proc.join()
    store.close()
    after = sizes(args.db)

    lat = data["latencies"]
    during = [s for t, s in lat if c0 <= t <= c1]
    base = [s for t, s in lat if t < c0]

    def pct(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100)[q - 1] * 1000, 1) if len(xs) > 2 else 0.0

    report = {
        "rows": args.rows, "generate_s": round(gen_s, 1),
        "deleted": res.deleted.get("log_events", 0), "cleanup_s": round(c1 - c0, 1),
        "delete_rows_per_s": round(res.deleted.get("log_events", 0) / max(c1 - c0, 1e-9)),
        "hours_aggregated_first": res.hours_aggregated,
        "phase_seconds": res.phase_seconds, "batches": res.batches,
        "cleanup_longest_lock_ms": res.longest_txn_ms,
        "ingest_writes_during": len(during), "ingest_events": data["events"],
        "ingest_max_ms_baseline": round(max(base) * 1000, 1) if base else None,
        "ingest_p99_ms_baseline": pct(base, 99),
        "ingest_max_ms_during": round(max(during) * 1000, 1) if during else None,
        "ingest_p99_ms_during": pct(during, 99),
        "ingest_writes_over_200ms": sum(1 for s in during if s > 0.2),
        # when (seconds into the cleanup) the worst writes happened, to match against phases
        "worst_writes": sorted(([round(t - c0, 1), round(s * 1000)] for t, s in lat
                                if c0 <= t <= c1), key=lambda x: -x[1])[:8],
        "size_before": before, "size_after": after,
        "pages_freed": res.pages_freed, "auto_vacuum": res.auto_vacuum,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>28}: {v}")
    if not args.keep:
        for p in (args.db, Path(f"{args.db}-wal"), Path(f"{args.db}-shm")):
            p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
