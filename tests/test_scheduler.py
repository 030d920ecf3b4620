"""The scheduler on a clock the test controls: every hour aggregated exactly once across a
restart, catch-up on start, no overlap between racing runs, and the jobs' settings."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from logly.config import load_config
from logly.errors import ConfigError
from logly.scheduler import SchedulerConfig, run_daily, run_hourly, settings, start_scheduler
from logly.store.aggregates import ALL
from logly.store.sqlite import SQLiteStore
from tests.test_aggregates import ev, plant

D0 = datetime(2026, 11, 20, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class NoMetrics:
    """Stands in for the psutil sampler: this test is about aggregation."""

    def sample(self) -> None:  # pragma: no cover - the interval never fires in the test
        raise AssertionError("metrics job ran")


def hour_events() -> list[tuple]:
    # hour h of the day holds h + 1 events, so each hour's count is recognisable
    return [ev(D0 + timedelta(hours=h, minutes=m), "auth_failure", f"192.0.2.{h}", "root")
            for h in range(24) for m in range(h + 1)]


def totals(store: SQLiteStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.exec_driver_sql(
            "SELECT hour, event_count FROM hourly_aggregates WHERE source = ? AND action = ?",
            (ALL, ALL)).all())


def config_file(tmp_path: Path, db: Path) -> Path:
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f'database = "{db}"\n[scheduler]\nmetrics_seconds = 86400\n'
                   'hourly_minute = 5\nretention_time = "03:30"\n')
    return cfg


def test_every_hour_is_aggregated_exactly_once_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    store.init()
    plant(store, hour_events())
    clock = Clock(D0 + timedelta(hours=3, minutes=10))
    done: list[datetime] = []

    # first daemon: the hourly trigger fires at :05 (and once late, at 03:40)
    for t in (timedelta(hours=3, minutes=10), timedelta(hours=3, minutes=40),
              timedelta(hours=6, minutes=5)):
        clock.now = D0 + t
        hours, days = run_daily(store, clock)
        done += hours
        assert days == []
    assert done == [D0 + timedelta(hours=h) for h in range(6)]
    store.close()  # the daemon goes away; 06:00-13:59 pass without it

    # second daemon, started at 14:20 with the real apscheduler: it catches up at once
    clock.now = D0 + timedelta(hours=14, minutes=20)
    store = SQLiteStore(db)
    sched = start_scheduler(store, load_config(config_file(tmp_path, db), env={}), clock,
                            sampler=NoMetrics())
    try:
        assert sched.wait_for("catchup")
        hours, days = sched.results("catchup")[0]
        assert hours == [D0 + timedelta(hours=h) for h in range(6, 14)] and days == []
        done += hours

        # the hourly trigger fires (made due now); nothing new is complete yet
        sched.scheduler.get_job("aggregate").modify(next_run_time=datetime.now(UTC))
        assert sched.wait_for("aggregate")
        assert sched.results("aggregate")[0] == ([], [])

        # after midnight: the rest of the hours, then the day they complete
        clock.now = D0 + timedelta(days=1, minutes=5)
        sched.scheduler.get_job("aggregate").modify(next_run_time=datetime.now(UTC))
        assert sched.wait_for("aggregate", count=2)
        hours, days = sched.results("aggregate")[1]
        done += hours
        assert days == [date(2026, 11, 20)]

        for job in sched.scheduler.get_jobs():  # no overlap, a backlog is one run
            assert job.max_instances == 1 and job.coalesce is True
    finally:
        sched.shutdown()

    assert done == [D0 + timedelta(hours=h) for h in range(24)]  # each hour once, in order
    assert len(set(done)) == 24
    got = totals(store)
    assert got == {(D0 + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"): h + 1
                   for h in range(24)}
    with store.engine.connect() as conn:
        daily = conn.exec_driver_sql(
            "SELECT event_count, unique_ips FROM daily_aggregates WHERE day = '2026-11-20' "
            "AND source = '*'").one()
    assert tuple(daily) == (sum(range(1, 25)), 24)


def test_racing_runs_aggregate_each_hour_once(tmp_path: Path) -> None:
    """Two stores on one file (the daemon and a manual run): the watermark's
    compare-and-set lets exactly one of them write each hour."""
    db = tmp_path / "r.db"
    first = SQLiteStore(db)
    first.init()
    plant(first, hour_events())
    clock = Clock(D0 + timedelta(days=1, minutes=5))
    results: list[list[datetime]] = []
    lock = threading.Lock()

    def worker() -> None:
        store = SQLiteStore(db)
        hours = run_hourly(store, clock)
        with lock:
            results.append(hours)
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = sorted(h for r in results for h in r)
    assert merged == [D0 + timedelta(hours=h) for h in range(24)]


def test_scheduler_settings_are_validated(tmp_path: Path) -> None:
    assert SchedulerConfig.from_toml({"report_time": "06:30"}).report_time == "06:30"
    with pytest.raises(ConfigError, match="scheduler.retention_time"):
        SchedulerConfig.from_toml({"retention_time": "25:00"})
    with pytest.raises(ConfigError, match="scheduler.bogus"):
        SchedulerConfig.from_toml({"bogus": 1})
    cfg = tmp_path / "logly.toml"
    cfg.write_text('[smtp]\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match="password_file"):
        settings(load_config(cfg, env={}))


def test_packaged_config_gives_the_defaults() -> None:
    repo = Path(__file__).resolve().parents[1]
    s = settings(load_config(repo / "packaging" / "logly.toml", env={}))
    assert s.scheduler.hourly_minute == 5 and s.retention.days["log_events"] == 30
