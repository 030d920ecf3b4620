"""Retention: delete what is older than each table's limit, without stalling ingestion.

SQLite has one writer at a time, and the daemon is that writer. A single `DELETE ... WHERE
timestamp < cut-off` over millions of rows would hold the write lock for many seconds, and the
daemon's batches would wait behind it. So rows go in bounded batches, each its own short
transaction: the ids are chosen from a read snapshot (no lock), the delete of those ids takes the
lock for about `max_txn_ms`, and the batch size adapts to keep it there. Between batches the
cleaner pauses for `pause_ms`: SQLite's busy handler retries a waiting writer after sleeps of up
to 25-50 ms, so without the pause the cleaner would win the lock again every time.

Raw events go first to the hourly/daily aggregates (every hour before the cut-off is aggregated
before any of its events is deleted), so aggregates outlive raw events. Optionally, events are
archived to gzip NDJSON (the JSON contract's keys, one file per UTC day) before they are
deleted; the archive is written and synced before the delete commits, so a crash in between can
repeat a batch in the archive but never loses one.

Freed pages are returned to the file system with `PRAGMA incremental_vacuum`, a few MB per
transaction. That only works when the database was created with auto_vacuum = INCREMENTAL;
otherwise freed pages are reused by new rows but the file does not shrink, and the result says
so.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from logly.errors import ConfigError, LoglyError
from logly.events import EVENT_COLUMNS
from logly.store import aggregates
from logly.store.aggregates import snapshot, ts
from logly.store.sqlite import SQLiteStore

# table -> its time column; the order is the deletion order (raw data before aggregates).
TABLES: dict[str, str] = {
    "log_events": "timestamp",
    "unparsed_lines": "seen",
    "system_metrics": "timestamp",
    "network_metrics": "timestamp",
    "hourly_aggregates": "hour",
    "daily_aggregates": "day",
}
DEFAULT_DAYS: dict[str, int] = {
    "log_events": 30,
    "unparsed_lines": 30,
    "system_metrics": 14,
    "network_metrics": 14,
    "hourly_aggregates": 365,
    "daily_aggregates": 0,  # 0 = keep forever
}
AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


class RetentionError(LoglyError):
    """Cleanup could not finish (the part done so far stays done)."""


@dataclass
class RetentionConfig:
    """`[retention]` in logly.toml: `<table>_days`, batching, vacuum and archive settings."""

    days: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_DAYS))
    max_txn_ms: float = 50.0  # the write lock is held about this long per batch
    pause_ms: float = 50.0  # between batches, so a waiting writer gets the lock
    batch_rows: int = 2000  # first batch; then adapted to max_txn_ms
    vacuum_pages: int = 1024  # at most this many pages returned per transaction
    archive_dir: Path | None = None  # archive deleted events here first (gzip NDJSON)

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str = "retention") -> RetentionConfig:
        cfg = cls()
        for key, value in data.items():
            if key.endswith("_days") and key[:-5] in TABLES:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{where}.{key} must be a whole number of days >= 0")
                cfg.days[key[:-5]] = value
            elif key in ("max_txn_ms", "pause_ms"):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"{where}.{key} must be a positive number")
                setattr(cfg, key, float(value))
            elif key in ("batch_rows", "vacuum_pages"):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"{where}.{key} must be a positive whole number")
                setattr(cfg, key, value)
            elif key == "archive_dir":
                if not isinstance(value, str):
                    raise ConfigError(f"{where}.archive_dir must be a path")
                cfg.archive_dir = Path(value) if value else None
            else:
                known = [f"{t}_days" for t in TABLES] + [
                    "max_txn_ms", "pause_ms", "batch_rows", "vacuum_pages", "archive_dir"]
                raise ConfigError(f"unknown key '{where}.{key}'",
                                  hint="known keys: " + ", ".join(known))
        return cfg


@dataclass
class CleanupResult:
    deleted: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, str] = field(default_factory=dict)
    archived: list[str] = field(default_factory=list)
    hours_aggregated: int = 0
    batches: int = 0
    longest_txn_ms: float = 0.0
    auto_vacuum: str = "none"
    pages_freed: int = 0
    reclaimable_bytes: int = 0  # free pages left in the file (auto_vacuum none)
    size_before: int = 0
    size_after: int = 0
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def db_size(store: SQLiteStore) -> int:
    """Bytes of the database file and its WAL."""
    return sum(p.stat().st_size for p in (store.path, Path(f"{store.path}-wal")) if p.exists())


def checkpoint(store: SQLiteStore, mode: str = "PASSIVE") -> tuple[int, int, int]:
    """Copy the WAL back into the database outside any transaction (SQLAlchemy would wrap the
    pragma in BEGIN, where SQLite refuses it). Returns (busy, wal pages, pages copied)."""
    raw = store.engine.raw_connection()
    try:
        row = raw.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    finally:
        raw.close()
    return int(row[0]), int(row[1]), int(row[2])


def cutoff_for(table: str, days: int, now: datetime) -> str:
    """The storage-text cut-off: midnight UTC `days` days ago, so whole days go at once and the
    aggregates of a day are never left half-backed by raw events."""
    day = (now.astimezone(UTC) - timedelta(days=days)).date()
    if table == "daily_aggregates":
        return day.isoformat()
    return ts(datetime(day.year, day.month, day.day, tzinfo=UTC))


class _Archive:
    """gzip NDJSON per UTC day, appended as gzip members (readers treat them as one stream)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths: set[str] = set()

    def write(self, rows: list[dict[str, Any]]) -> None:
        by_day: dict[str, list[str]] = {}
        for row in rows:
            row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else {}
            by_day.setdefault(row["timestamp"][:10], []).append(
                json.dumps(row, ensure_ascii=False))
        for day, lines in sorted(by_day.items()):
            path = self.dir / f"log_events-{day}.ndjson.gz"
            # log content is sensitive: the archive gets the database's 0640, not the umask
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            with os.fdopen(fd, "ab") as raw:
                with gzip.GzipFile(fileobj=raw, mode="ab") as gz:
                    gz.write(("\n".join(lines) + "\n").encode("utf-8"))
                raw.flush()
                os.fsync(raw.fileno())  # on disk before the rows it holds are deleted
            self.paths.add(str(path))


_SELECT_EVENTS = (
    "SELECT e.id, e.timestamp, e.source, e.host, e.program, e.pid, e.level, e.service, "
    "e.action, e.message, e.ip_address, e.user, e.port, e.metadata, f.path, e.\"offset\", "
    "e.trace_id FROM log_events e LEFT JOIN source_files f ON f.id = e.file_id "
    "WHERE e.id IN (SELECT value FROM json_each(?)) ORDER BY e.id"
)


class Cleaner:
    def __init__(self, store: SQLiteStore, config: RetentionConfig,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store, self.cfg, self.sleep = store, config, sleep
        self.result = CleanupResult()

    def _txn(self, sql: str, params: tuple[Any, ...]) -> float:
        with self.store._write() as conn:
            # timed from the moment BEGIN IMMEDIATE holds the lock (waiting for the daemon's
            # batch is not a stall we cause) to the end of COMMIT
            t0 = time.perf_counter()
            conn.exec_driver_sql(sql, params)
        ms = (time.perf_counter() - t0) * 1000
        self.result.longest_txn_ms = max(self.result.longest_txn_ms, round(ms, 1))
        self.result.batches += 1
        return ms

    def delete_older(self, table: str, cutoff: str, archive: _Archive | None = None) -> int:
        col = TABLES[table]
        batch, total = self.cfg.batch_rows, 0
        while True:
            with snapshot(self.store) as conn:  # choosing rows takes no lock
                ids = [r[0] for r in conn.exec_driver_sql(
                    f"SELECT id FROM {table} WHERE {col} < ? ORDER BY {col} LIMIT ?",
                    (cutoff, batch))]
                rows = []
                if ids and archive is not None:
                    result = conn.exec_driver_sql(_SELECT_EVENTS, (json.dumps(ids),))
                    rows = [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in result]
            if not ids:
                return total
            if archive is not None:
                archive.write(rows)
            ms = self._txn(f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))",
                           (json.dumps(ids),))
            total += len(ids)
            # copy the batch's WAL frames back now, outside the write lock: left to SQLite's
            # auto-checkpoint, whichever commit crosses 1000 frames pays for it, and that is
            # often the daemon's next batch, stalled by our pages
            checkpoint(self.store, "PASSIVE")
            # aim the next batch at max_txn_ms; at most double or halve it, so one slow fsync
            # or a cold cache does not swing the size wildly
            scale = min(2.0, max(0.5, self.cfg.max_txn_ms / max(ms, 1.0)))
            batch = int(min(50_000, max(100, batch * scale)))
            self.sleep(self.cfg.pause_ms / 1000)

    def vacuum(self) -> None:
        with snapshot(self.store) as conn:
            mode = int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one())
            page = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        self.result.auto_vacuum = AUTO_VACUUM.get(mode, str(mode))
        pages = max(16, self.cfg.vacuum_pages // 8)  # start small; grown to max_txn_ms
        while True:
            with snapshot(self.store) as conn:
                free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
            if mode != 2:
                self.result.reclaimable_bytes = free * page
                return
            if free == 0:
                break
            raw = self.store.engine.raw_connection()
            try:
                t0 = time.perf_counter()
                # executescript, not execute: Python's sqlite3 steps this pragma once, which
                # frees a single page; sqlite3_exec runs it to the end. (executescript commits
                # an open transaction first, so BEGIN goes in the script and the time below
                # includes waiting for the lock.)
                raw.driver_connection.executescript(
                    "BEGIN IMMEDIATE; "
                    f"PRAGMA incremental_vacuum({int(pages)}); COMMIT;")
                ms = (time.perf_counter() - t0) * 1000
            finally:
                raw.close()
            self.result.longest_txn_ms = max(self.result.longest_txn_ms, round(ms, 1))
            self.result.pages_freed += min(free, pages)
            checkpoint(self.store, "PASSIVE")  # as for deletes: our frames, our copying
            # the cost per page varies (pages near the end move further, the file is
            # truncated at commit): grow slowly, shrink fast, keep each step near max_txn_ms
            scale = min(1.25, max(0.5, self.cfg.max_txn_ms / max(ms, 1.0)))
            pages = int(min(self.cfg.vacuum_pages, max(16, pages * scale)))
            self.sleep(self.cfg.pause_ms / 1000)
        # the file shrinks when the WAL is copied back; PASSIVE never waits for (or blocks)
        # the daemon, so under load the shrink may land at a later automatic checkpoint
        checkpoint(self.store, "PASSIVE")
        # then shrink the WAL, which the deletes grew: TRUNCATE briefly holds new writers off,
        # so it gets its own connection with a short busy timeout and is skipped if the
        # daemon is mid-write (the WAL is reused in place anyway)
        shrink = sqlite3.connect(self.store.path, timeout=0.1, isolation_level=None)
        with contextlib.closing(shrink), contextlib.suppress(sqlite3.OperationalError):
            shrink.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def run(self, now: datetime) -> CleanupResult:
        t0 = time.perf_counter()
        res = self.result
        res.size_before = db_size(self.store)
        archive = _Archive(self.cfg.archive_dir) if self.cfg.archive_dir else None
        for table in TABLES:
            days = self.cfg.days.get(table, 0)
            if days <= 0:
                continue
            cutoff = cutoff_for(table, days, now)
            res.cutoffs[table] = cutoff
            if table == "log_events":
                p0 = time.perf_counter()
                # aggregate every hour that is about to lose its events, then mark the cut-off
                # so no later run recomputes those hours from what is left
                res.hours_aggregated = len(aggregates.catch_up_hours(
                    self.store, aggregates.parse_ts(cutoff), limit=None))
                kept = aggregates.get_mark(self.store, aggregates.RETAINED_MARK)
                if kept is None or kept < cutoff:
                    self.store.set_metadata(aggregates.RETAINED_MARK, cutoff)
                res.phase_seconds["aggregate"] = round(time.perf_counter() - p0, 2)
            p0 = time.perf_counter()
            res.deleted[table] = self.delete_older(
                table, cutoff, archive if table == "log_events" else None)
            res.phase_seconds[f"delete {table}"] = round(time.perf_counter() - p0, 2)
        if archive is not None:
            res.archived = sorted(archive.paths)
        p0 = time.perf_counter()
        self.vacuum()
        res.phase_seconds["vacuum"] = round(time.perf_counter() - p0, 2)
        res.size_after = db_size(self.store)
        res.seconds = round(time.perf_counter() - t0, 2)
        return res


def cleanup(store: SQLiteStore, config: RetentionConfig, now: datetime | None = None,
            sleep: Callable[[float], None] = time.sleep) -> CleanupResult:
    """Apply every table's retention, then return freed space. Safe while the daemon runs."""
    store.require_schema()
    try:
        return Cleaner(store, config, sleep).run(now or datetime.now(UTC))
    except OSError as exc:  # the archive directory: full, read-only, not ours
        raise RetentionError(f"cannot archive old events: {exc}",
                             hint="check [retention] archive_dir") from None
