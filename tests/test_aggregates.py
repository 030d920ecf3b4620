"""Hourly and daily aggregates: counts by source/action, metrics, idempotent upserts, the
duplicate-line rule, catch-up by watermark, and hours whose events retention deleted."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from logly.store import aggregates
from logly.store.aggregates import ALL, catch_up_days, catch_up_hours, store_day, store_hour
from logly.store.sqlite import SQLiteStore

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def ev(when: datetime, action: str, ip: str | None = None, user: str | None = None,
       source: str = "syslog", meta: dict | None = None) -> tuple:
    """A row in EVENT_INSERT_COLUMNS order."""
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (stamp, source, "web1", "sshd", 1, "warning", "ssh", action, f"{action} line", ip,
            user, 22, json.dumps(meta or {"rule": "sshd/x"}), None, None)


def plant(store: SQLiteStore, rows: list[tuple]) -> None:
    fid, _ = store.open_source("test-identity", "/var/log/auth.log")
    rows = [r[:13] + (fid, i) for i, r in enumerate(rows)]
    store.write_batch(fid, rows, [], offset=len(rows), lines=len(rows))


def rows_of(store: SQLiteStore, table: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")]


def test_hour_counts_by_source_and_action_and_skips_duplicate_lines(store: SQLiteStore) -> None:
    h = T0 + timedelta(hours=10)
    plant(store, [
        ev(h + timedelta(minutes=1), "auth_failure", "203.0.113.7", "root"),
        # the PAM twin of the same attempt: linked, not counted
        ev(h + timedelta(minutes=1), "auth_failure", "203.0.113.7", "root",
           meta={"duplicate_of": {"path": "/var/log/auth.log", "offset": 0}}),
        ev(h + timedelta(minutes=2), "auth_failure", "203.0.113.8", "admin"),
        ev(h + timedelta(minutes=3), "invalid_user", "203.0.113.7", "oracle"),
        ev(h + timedelta(minutes=4), "f2b_ban", "203.0.113.7", source="fail2ban"),
        ev(h + timedelta(hours=1), "auth_failure", "198.51.100.1", "root"),  # next hour
    ])
    rows = {(r.source, r.action): r for r in store_hour(store, h) or []}
    assert rows[("syslog", "auth_failure")].event_count == 2
    assert rows[("syslog", "auth_failure")].unique_ips == 2
    assert rows[("syslog", "auth_failure")].unique_users == 2
    assert rows[("syslog", "invalid_user")].event_count == 1
    assert rows[("fail2ban", "f2b_ban")].event_count == 1
    assert rows[(ALL, ALL)].event_count == 4 and rows[(ALL, ALL)].unique_ips == 2


def test_rerunning_an_hour_replaces_rather_than_duplicates(store: SQLiteStore) -> None:
    h = T0 + timedelta(hours=3)
    plant(store, [ev(h, "auth_failure", "203.0.113.7", "root")])
    store_hour(store, h)
    first = rows_of(store, "hourly_aggregates")
    store_hour(store, h)
    assert rows_of(store, "hourly_aggregates") == first
    # a late line for the same hour updates the row in place
    plant(store, [ev(h + timedelta(minutes=30), "auth_failure", "203.0.113.9", "root")])
    store_hour(store, h)
    again = rows_of(store, "hourly_aggregates")
    assert len(again) == len(first)
    counts = {(r[2], r[3]): r[4] for r in again}
    assert counts[("syslog", "auth_failure")] == 2


def test_metrics_become_hourly_averages_maxima_and_byte_totals(store: SQLiteStore) -> None:
    h = T0 + timedelta(hours=5)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    store.executemany(
        "INSERT INTO system_metrics (timestamp, cpu_percent, memory_percent) VALUES (?, ?, ?)",
        [((h + timedelta(minutes=m)).strftime(fmt), cpu, mem)
         for m, cpu, mem in ((0, 10.0, 40.0), (20, 30.0, 50.0), (40, 50.0, 60.0))])
    # the "all" row: first sample after start has NULL rates; then 1000 B/s sent for 60 s gaps
    net = [((h - timedelta(minutes=1)).strftime(fmt), None, None)]
    net += [((h + timedelta(minutes=m)).strftime(fmt), 1000.0, 500.0) for m in range(0, 60)]
    store.executemany(
        "INSERT INTO network_metrics (timestamp, interface, bytes_sent_ps, bytes_recv_ps) "
        "VALUES (?, 'all', ?, ?)", net)
    total = (store_hour(store, h) or [])[-1]
    assert (total.source, total.action) == (ALL, ALL) and total.event_count == 0
    assert total.cpu_avg == 30.0 and total.cpu_max == 50.0
    assert total.memory_avg == 50.0 and total.memory_max == 60.0
    assert total.net_bytes_sent == 60 * 60 * 1000 and total.net_bytes_recv == 60 * 60 * 500


def test_daily_rolls_up_hours_and_counts_distinct_addresses_per_day(store: SQLiteStore) -> None:
    # the same address in two hours: hourly unique_ips 1 + 1, daily 1
    plant(store, [
        ev(T0 + timedelta(hours=1), "auth_failure", "203.0.113.7", "root"),
        ev(T0 + timedelta(hours=2), "auth_failure", "203.0.113.7", "root"),
        ev(T0 + timedelta(hours=2, minutes=5), "auth_failure", "203.0.113.8", "admin"),
    ])
    for hour in range(24):
        store_hour(store, T0 + timedelta(hours=hour))
    rows = {(r.source, r.action): r for r in store_day(store, T0.date()) or []}
    assert rows[("syslog", "auth_failure")].event_count == 3
    assert rows[("syslog", "auth_failure")].unique_ips == 2
    assert rows[(ALL, ALL)].unique_users == 2
    store_day(store, T0.date())
    assert len(aggregates.daily(store, T0.date())) == 2


def test_catch_up_starts_at_the_first_event_and_moves_the_watermark(store: SQLiteStore) -> None:
    plant(store, [ev(T0 + timedelta(hours=2, minutes=5), "scan", "192.0.2.1")])
    done = catch_up_hours(store, T0 + timedelta(hours=5, minutes=7))
    assert done == [T0 + timedelta(hours=h) for h in (2, 3, 4)]
    assert catch_up_hours(store, T0 + timedelta(hours=5, minutes=59)) == []
    assert catch_up_hours(store, T0 + timedelta(hours=6)) == [T0 + timedelta(hours=5)]
    assert catch_up_days(store, T0 + timedelta(hours=6)) == []  # the day is not over
    catch_up_hours(store, T0 + timedelta(days=1, minutes=5))
    assert catch_up_days(store, T0 + timedelta(days=1, minutes=5)) == [date(2026, 11, 20)]


def test_hours_whose_events_were_deleted_keep_their_aggregates(store: SQLiteStore) -> None:
    h = T0 + timedelta(hours=1)
    plant(store, [ev(h, "auth_failure", "203.0.113.7", "root")])
    store_hour(store, h)
    with store._write() as conn:
        conn.exec_driver_sql("DELETE FROM log_events")
    store.set_metadata(aggregates.RETAINED_MARK, aggregates.ts(T0 + timedelta(days=1)))
    assert store_hour(store, h) is None  # refused: would write zeros
    counts = {(r[2], r[3]): r[4] for r in rows_of(store, "hourly_aggregates")}
    assert counts[("syslog", "auth_failure")] == 1


def test_events_stored_after_their_hour_was_aggregated_are_counted_once(
        store: SQLiteStore) -> None:
    """A backfill that races the start-up catch-up, or a rotated file read late."""
    plant(store, [ev(T0 + timedelta(hours=1), "scan", "192.0.2.1")])
    catch_up_hours(store, T0 + timedelta(days=1, minutes=5))
    catch_up_days(store, T0 + timedelta(days=1, minutes=5))
    assert aggregates.catch_up_late(store) == []  # nothing new yet
    plant(store, [ev(T0 + timedelta(hours=3, minutes=m), "auth_failure", "203.0.113.7", "root")
                  for m in range(4)])
    assert aggregates.catch_up_late(store) == [T0 + timedelta(hours=3)]
    assert aggregates.catch_up_late(store) == []  # each late event once
    hourly = {(r[2], r[3]): r[4] for r in rows_of(store, "hourly_aggregates")
              if r[1].startswith("2026-11-20T03")}
    assert hourly[(ALL, ALL)] == 4
    daily = {(r[2], r[3]): r[4] for r in rows_of(store, "daily_aggregates")}
    assert daily[(ALL, ALL)] == 5  # the day was rolled up again
