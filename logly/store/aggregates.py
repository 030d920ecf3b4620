"""Hourly and daily aggregates: what the report, trends and long-term history read.

Hourly rows come from `log_events` (events by source and action, distinct addresses and users)
and the metric samples (CPU/memory averages and maxima, network byte totals); daily rows are
rolled up from the hourly ones, with distinct addresses and users counted again from the day's
raw events (distinct counts do not add up). Every write is an upsert keyed by
(hour|day, source, action), so running an hour twice gives the same rows.

Each hour has one extra row with source = action = "*": the totals over all events and the
system/network metrics, which belong to the hour, not to one (source, action) pair; it exists
even for an hour without events, so "this hour is aggregated" is visible in the table itself.

Reading happens in a read transaction (a WAL snapshot, which never blocks the writer); only the
upsert takes the write lock, for a few milliseconds. The scheduler's watermark moves in that
same transaction, with a compare-and-set, so an hour is counted once even when two processes
(the daemon and a manual run) race.

Hours older than the raw-event retention cut-off (metadata `events_retained_from`, written by
retention) are never recomputed: their events are gone and a re-run would replace the kept
numbers with zeros.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from logly.store.sqlite import SQLiteStore


class Stop(Protocol):
    """A threading.Event: long catch-ups end between hours when the daemon stops."""

    def is_set(self) -> bool: ...


ALL = "*"  # source and action of the per-hour totals row
HOURLY_MARK = "aggregates_hourly_through"  # first hour not yet aggregated (storage text)
DAILY_MARK = "aggregates_daily_through"  # first day not yet rolled up (YYYY-MM-DD)
RETAINED_MARK = "events_retained_from"  # raw events before this were deleted by retention
LATE_MARK = "aggregates_events_through"  # highest log_events.id the aggregates have looked at

# The second log line of one sshd+PAM attempt links to the first; counting both would double
# every password attempt (README, JSON contract).
NOT_DUPLICATE = "json_extract(metadata, '$.duplicate_of') IS NULL"

def ts(dt: datetime) -> str:
    """Storage text of an aware datetime (fixed width, so text order is time order)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@contextlib.contextmanager
def snapshot(store: SQLiteStore) -> Iterator[Connection]:
    """A read transaction: one consistent WAL snapshot that never takes the write lock.

    The flag is cleared explicitly because `SQLiteStore._write()` leaves `info["write"]` set on
    the pooled DBAPI connection, which would turn a later plain read into BEGIN IMMEDIATE.
    """
    with store.engine.connect() as conn:
        conn.info["write"] = False
        with conn.begin():
            yield conn


def floor_hour(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class AggregateRow:
    source: str
    action: str
    event_count: int
    unique_ips: int
    unique_users: int
    cpu_avg: float | None = None
    cpu_max: float | None = None
    memory_avg: float | None = None
    memory_max: float | None = None
    net_bytes_sent: int | None = None
    net_bytes_recv: int | None = None

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in _COLUMNS)


# the aggregate tables' value columns, in AggregateRow's order
_COLUMNS = tuple(f.name for f in fields(AggregateRow))


# ---- reading ---------------------------------------------------------------------------------
def _event_rows(conn: Connection, start: str, end: str) -> list[AggregateRow]:
    rows = [
        AggregateRow(r[0], r[1], int(r[2]), int(r[3]), int(r[4]))
        for r in conn.exec_driver_sql(
            "SELECT source, action, count(*), count(DISTINCT ip_address), count(DISTINCT user) "
            f"FROM log_events WHERE timestamp >= ? AND timestamp < ? AND {NOT_DUPLICATE} "
            "GROUP BY source, action ORDER BY source, action", (start, end))
    ]
    total = conn.exec_driver_sql(
        "SELECT count(*), count(DISTINCT ip_address), count(DISTINCT user) FROM log_events "
        f"WHERE timestamp >= ? AND timestamp < ? AND {NOT_DUPLICATE}", (start, end)).one()
    rows.append(AggregateRow(ALL, ALL, int(total[0]), int(total[1]), int(total[2])))
    return rows


def _metrics(conn: Connection, start: str, end: str) -> dict[str, Any]:
    cpu_avg, cpu_max, mem_avg, mem_max = conn.exec_driver_sql(
        "SELECT avg(cpu_percent), max(cpu_percent), avg(memory_percent), max(memory_percent) "
        "FROM system_metrics WHERE timestamp >= ? AND timestamp < ?", (start, end)).one()
    # Samples hold rates over the time since the interface's previous sample; bytes = rate x
    # that gap. A sampler's first sample after a restart has NULL rates, so a gap spanning
    # downtime contributes nothing instead of a made-up total. Looking back one hour finds
    # the previous sample of the hour's first one.
    look_back = ts(parse_ts(start) - timedelta(hours=1))
    sent, recv = conn.exec_driver_sql(
        "SELECT sum(bytes_sent_ps * gap), sum(bytes_recv_ps * gap) FROM ("
        " SELECT timestamp, bytes_sent_ps, bytes_recv_ps,"
        "  (julianday(timestamp) - julianday(lag(timestamp) OVER ("
        "    PARTITION BY interface ORDER BY timestamp))) * 86400.0 AS gap"
        " FROM network_metrics WHERE interface = 'all' AND timestamp >= ? AND timestamp < ?"
        ") WHERE timestamp >= ?", (look_back, end, start)).one()
    return {"cpu_avg": cpu_avg, "cpu_max": cpu_max, "memory_avg": mem_avg,
            "memory_max": mem_max,
            "net_bytes_sent": None if sent is None else round(sent),
            "net_bytes_recv": None if recv is None else round(recv)}


def compute_hour(store: SQLiteStore, hour: datetime) -> list[AggregateRow]:
    """The rows of one hour, read from one snapshot; the last row is the "*" totals row."""
    start, end = ts(floor_hour(hour)), ts(floor_hour(hour) + timedelta(hours=1))
    with snapshot(store) as conn:
        rows = _event_rows(conn, start, end)
        for k, v in _metrics(conn, start, end).items():
            setattr(rows[-1], k, v)
    return rows


def compute_day(store: SQLiteStore, day: date) -> list[AggregateRow]:
    """Roll one UTC day up from its hourly rows; distinct counts come from the raw events."""
    start, end = ts(day_start(day)), ts(day_start(day) + timedelta(days=1))
    with snapshot(store) as conn:
        rows = [
            AggregateRow(r[0], r[1], int(r[2]), 0, 0, r[3], r[4], r[5], r[6],
                         None if r[7] is None else int(r[7]),
                         None if r[8] is None else int(r[8]))
            for r in conn.exec_driver_sql(
                "SELECT source, action, sum(event_count), avg(cpu_avg), max(cpu_max), "
                "avg(memory_avg), max(memory_max), sum(net_bytes_sent), sum(net_bytes_recv) "
                "FROM hourly_aggregates WHERE hour >= ? AND hour < ? GROUP BY source, action "
                "ORDER BY source, action", (start, end))
        ]
        # an address active in several hours counts once a day: from the events, not the hours
        distinct = {(r.source, r.action): (r.unique_ips, r.unique_users)
                    for r in _event_rows(conn, start, end)}
    for row in rows:
        row.unique_ips, row.unique_users = distinct.get((row.source, row.action), (0, 0))
    return rows


# ---- writing ---------------------------------------------------------------------------------
def _upsert(conn: Connection, table: str, key: str, when: str, rows: list[AggregateRow]) -> None:
    cols = (key, *_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT ({key}, source, action) DO UPDATE SET {updates}",
        [(when, *r.values()) for r in rows])


def _get_mark(conn: Connection, key: str) -> str | None:
    row = conn.exec_driver_sql("SELECT value FROM metadata WHERE key = ?", (key,)).first()
    return row[0] if row else None


def _set_mark(conn: Connection, key: str, value: str) -> None:
    conn.exec_driver_sql(
        "INSERT INTO metadata (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def get_mark(store: SQLiteStore, key: str) -> str | None:
    with snapshot(store) as conn:
        return _get_mark(conn, key)


def retained_from(store: SQLiteStore) -> str | None:
    return get_mark(store, RETAINED_MARK)


def store_hour(store: SQLiteStore, hour: datetime, *, expect_mark: str | None = None,
               mark: bool = False) -> list[AggregateRow] | None:
    """Compute and upsert one hour. With `mark`, the hourly watermark moves past this hour in
    the same transaction, but only if it still reads `expect_mark` (another run may have done
    the hour meanwhile): returns None then, and also for an hour whose events retention has
    already deleted."""
    hour = floor_hour(hour)
    kept = retained_from(store)
    if kept is not None and ts(hour) < kept:
        return None
    rows = compute_hour(store, hour)
    with store._write() as conn:
        if mark and _get_mark(conn, HOURLY_MARK) != expect_mark:
            return None
        _upsert(conn, "hourly_aggregates", "hour", ts(hour), rows)
        if mark:
            _set_mark(conn, HOURLY_MARK, ts(hour + timedelta(hours=1)))
    return rows


def store_day(store: SQLiteStore, day: date, *, expect_mark: str | None = None,
              mark: bool = False) -> list[AggregateRow] | None:
    """Roll up and upsert one day; the daily watermark moves like the hourly one."""
    kept = retained_from(store)
    if kept is not None and ts(day_start(day)) < kept:
        return None
    rows = compute_day(store, day)
    with store._write() as conn:
        if mark and _get_mark(conn, DAILY_MARK) != expect_mark:
            return None
        _upsert(conn, "daily_aggregates", "day", day.isoformat(), rows)
        if mark:
            _set_mark(conn, DAILY_MARK, (day + timedelta(days=1)).isoformat())
    return rows


def reaggregate(store: SQLiteStore, start: datetime, end: datetime) -> int:
    """Recompute the hours in [start, end) and their days, e.g. after ingesting old logs whose
    hours had already been aggregated. Watermarks do not move. Returns hours written."""
    hour, done, days = floor_hour(start), 0, set()
    while hour < end:
        if store_hour(store, hour) is not None:
            done += 1
            days.add(hour.date())
        hour += timedelta(hours=1)
    for day in sorted(days):
        store_day(store, day)
    return done


# ---- reading for others ------------------------------------------------------------------------
def hourly(store: SQLiteStore, start: datetime, end: datetime) -> list[dict[str, Any]]:
    with snapshot(store) as conn:
        result = conn.exec_driver_sql(
            "SELECT hour, " + ", ".join(_COLUMNS) + " FROM hourly_aggregates "
            "WHERE hour >= ? AND hour < ? ORDER BY hour, source, action", (ts(start), ts(end)))
        return [dict(zip(result.keys(), r, strict=True)) for r in result]


def daily(store: SQLiteStore, day: date) -> list[dict[str, Any]]:
    with snapshot(store) as conn:
        result = conn.exec_driver_sql(
            "SELECT day, " + ", ".join(_COLUMNS) + " FROM daily_aggregates WHERE day = ? "
            "ORDER BY source, action", (day.isoformat(),))
        return [dict(zip(result.keys(), r, strict=True)) for r in result]


# ---- catching up ---------------------------------------------------------------------------
DEFAULT_CATCHUP = timedelta(days=31)


def _move_mark(store: SQLiteStore, key: str, expect: str | None, new: str) -> bool:
    with store._write() as conn:
        if _get_mark(conn, key) != expect:
            return False
        _set_mark(conn, key, new)
    return True


def _first_event_hour(store: SQLiteStore) -> datetime | None:
    with snapshot(store) as conn:
        first = conn.exec_driver_sql("SELECT min(timestamp) FROM log_events").scalar_one()
    return floor_hour(parse_ts(first)) if first else None


def catch_up_hours(store: SQLiteStore, until: datetime,
                   limit: timedelta | None = DEFAULT_CATCHUP, stop: Stop | None = None
                   ) -> list[datetime]:
    """Aggregate every complete hour before `until` that is not aggregated yet, oldest first,
    and return them. Where to start is the watermark; on a fresh database, the first event's
    hour (at most `limit` back; None = no limit). Hours whose events retention already deleted
    are skipped, not zeroed. Stops quietly if another run moves the watermark meanwhile."""
    end = floor_hour(until)
    mark = get_mark(store, HOURLY_MARK)
    if mark is not None:
        start = parse_ts(mark)
    else:
        seen = _max_event_id(store)  # before the first event is read: no gap for a racer
        start = _first_event_hour(store) or end
        if limit is not None:
            start = max(start, end - limit)
        start = min(start, end)
        if not _move_mark(store, HOURLY_MARK, None, ts(start)):
            return []
        mark = ts(start)
        # events stored from here on, for hours already behind the mark, are late events
        _move_mark(store, LATE_MARK, None, str(seen))
    kept = retained_from(store)
    if kept is not None and ts(start) < kept:
        start = max(min(floor_hour(parse_ts(kept)), end), start)
        if not _move_mark(store, HOURLY_MARK, mark, ts(start)):
            return []
        mark = ts(start)
    done: list[datetime] = []
    hour = start
    while hour < end and not (stop and stop.is_set()):
        if store_hour(store, hour, expect_mark=mark, mark=True) is None:
            break
        done.append(hour)
        hour += timedelta(hours=1)
        mark = ts(hour)
    return done


def _max_event_id(store: SQLiteStore) -> int:
    with snapshot(store) as conn:
        return int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM log_events")
                   .scalar_one())


def catch_up_late(store: SQLiteStore, stop: Stop | None = None) -> list[datetime]:
    """Hours behind the watermark that got events since the last run — a backfill racing the
    daemon's start-up catch-up, a rotated file read late — aggregated again, and their days
    rolled up again. Recomputing replaces rows, so a repeat is harmless. Event ids only grow,
    so "since the last run" is a rowid range, not a scan."""
    hourly_mark = get_mark(store, HOURLY_MARK)
    if hourly_mark is None:
        return []
    seen_text = get_mark(store, LATE_MARK)
    top = _max_event_id(store)
    if seen_text is None:  # a database from before this mark: start watching from now
        _move_mark(store, LATE_MARK, None, str(top))
        return []
    with snapshot(store) as conn:
        hours = sorted(r[0] for r in conn.exec_driver_sql(
            "SELECT DISTINCT substr(timestamp, 1, 13) FROM log_events "
            "WHERE id > ? AND id <= ? AND timestamp < ?", (int(seen_text), top, hourly_mark)))
    done = []
    for text in hours:
        if stop and stop.is_set():
            return done  # the mark stays: the next run does these hours again
        h = datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC)
        if store_hour(store, h) is not None:
            done.append(h)
    daily_mark = get_mark(store, DAILY_MARK)
    for day in sorted({h.date() for h in done}):
        if daily_mark is not None and day.isoformat() < daily_mark:
            store_day(store, day)
    _move_mark(store, LATE_MARK, seen_text, str(top))
    return done


def catch_up_days(store: SQLiteStore, until: datetime, stop: Stop | None = None
                  ) -> list[date]:
    """Roll up every UTC day before `until` whose hours are all aggregated and which is not
    rolled up yet; returns those days."""
    hourly_mark = get_mark(store, HOURLY_MARK)
    if hourly_mark is None:
        return []
    # a day is complete once its last hour is aggregated and the day itself is over
    end_day = min(parse_ts(hourly_mark), until.astimezone(UTC)).date()
    mark = get_mark(store, DAILY_MARK)
    if mark is None:
        with snapshot(store) as conn:
            first = conn.exec_driver_sql("SELECT min(hour) FROM hourly_aggregates").scalar_one()
        start = parse_ts(first).date() if first else end_day
        start = min(start, end_day)
        if not _move_mark(store, DAILY_MARK, None, start.isoformat()):
            return []
        mark = start.isoformat()
    day, done = date.fromisoformat(mark), []
    kept = retained_from(store)
    while day < end_day and not (stop and stop.is_set()):
        if kept is not None and ts(day_start(day)) < kept:
            # its raw events are gone: keep whatever was rolled up, only move past it
            if not _move_mark(store, DAILY_MARK, mark, (day + timedelta(days=1)).isoformat()):
                break
        elif store_day(store, day, expect_mark=mark, mark=True) is None:
            break
        else:
            done.append(day)
        day += timedelta(days=1)
        mark = day.isoformat()
    return done
