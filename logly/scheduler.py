"""The daemon's periodic work, on apscheduler 3's BackgroundScheduler.

Every job is a plain function of a store and a clock (`run_hourly`, `run_daily`,
`run_retention`, `run_metrics`, `run_report_mail`), so tests and the CLI drive them directly
and only `start_scheduler` knows about apscheduler. What the jobs rely on:

- **Idempotent, exactly once.** Aggregation moves a watermark in the same transaction as the
  rows it writes (store/aggregates.py), so a run that crashes is redone, and a run that races
  another does nothing.
- **Catch-up.** The watermark, not the trigger time, says which hours are due: a start after
  downtime computes every missed hour at once (a job runs immediately on start), and so does a
  trigger that fired late.
- **No overlap.** Each job has max_instances=1 and coalesce=True (a backlog of missed runs is
  one run), and the aggregation jobs share a lock.
- **Never blocks ingestion.** Reads run in WAL snapshots; writes are short transactions
  (retention deletes in bounded batches with pauses, store/retention.py).

Triggers: aggregation at `hourly_minute` past every hour (which also rolls up each UTC day
once its last hour is in), retention daily at `retention_time`, metric samples every
`metrics_seconds`, and, if `report_time` is set, the daily report mail (otherwise cron sends it:
packaging/logly.cron). Wall-clock times are in the configured `timezone`, else the machine's.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from logly.errors import ConfigError
from logly.report import ReportConfig, SmtpConfig
from logly.store import aggregates
from logly.store.retention import CleanupResult, RetentionConfig, cleanup
from logly.store.sqlite import SQLiteStore

log = logging.getLogger("logly.scheduler")
Clock = Callable[[], datetime]
Job = Callable[[SQLiteStore, Clock], Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _hhmm(where: str, value: Any) -> tuple[int, int]:
    try:
        h, m = (int(x) for x in str(value).split(":"))
        if 0 <= h < 24 and 0 <= m < 60:
            return h, m
    except ValueError:
        pass
    raise ConfigError(f"{where} must be a time \"HH:MM\", not {value!r}")


@dataclass
class SchedulerConfig:
    """`[scheduler]` in logly.toml."""

    enabled: bool = True
    hourly_minute: int = 5  # aggregate the past hour a few minutes after it, for late lines
    retention_time: str = "03:30"
    metrics_seconds: float = 60.0
    report_time: str = ""  # "06:30" mails the daily report from the daemon; "" = cron does
    # on a fresh database, aggregate at most this far back; 0 = from the first event, so
    # events bulk-loaded before the daemon's first start get aggregates before retention
    catchup_days: int = 0

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str = "scheduler") -> SchedulerConfig:
        cfg = cls()
        for key, value in data.items():
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.enabled must be true or false")
                cfg.enabled = value
            elif key in ("hourly_minute", "catchup_days"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (
                        key == "hourly_minute" and value > 59):
                    raise ConfigError(f"{where}.{key} is out of range")
                setattr(cfg, key, value)
            elif key == "metrics_seconds":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"{where}.metrics_seconds must be a number >= 1")
                cfg.metrics_seconds = float(value)
            elif key in ("retention_time", "report_time"):
                if value != "" or key == "retention_time":
                    _hhmm(f"{where}.{key}", value)
                setattr(cfg, key, str(value))
            else:
                raise ConfigError(f"unknown key '{where}.{key}'")
        return cfg


@dataclass
class Settings:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)


def settings(config: Any) -> Settings:
    """The `[scheduler]`, `[retention]`, `[report]` and `[smtp]` tables, validated."""
    raw = config.sections
    out = Settings()
    for name, cls in (("scheduler", SchedulerConfig), ("retention", RetentionConfig),
                      ("report", ReportConfig), ("smtp", SmtpConfig)):
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"'{name}' must be a table")
        setattr(out, name, cls.from_toml(table, name))
    return out


# ---- jobs ------------------------------------------------------------------------------------
def run_hourly(store: SQLiteStore, clock: Clock, catchup: timedelta | None = None,
               stop: threading.Event | None = None) -> list[datetime]:
    """Aggregate every complete hour not yet aggregated, and again those that got late
    events; returns those hours. `stop` ends a long catch-up between hours."""
    hours = aggregates.catch_up_hours(store, clock(), limit=catchup, stop=stop)
    return hours + aggregates.catch_up_late(store, stop=stop)


def run_daily(store: SQLiteStore, clock: Clock, catchup: timedelta | None = None,
              stop: threading.Event | None = None) -> tuple[list[datetime], list[date]]:
    """Hours first (a day rolls up only from complete hours), then the complete days."""
    hours = run_hourly(store, clock, catchup, stop)
    return hours, aggregates.catch_up_days(store, clock(), stop=stop)


class JobStopped(Exception):
    """The daemon is stopping; the job's finished batches stay done."""


def run_retention(store: SQLiteStore, clock: Clock, config: RetentionConfig | None = None,
                  stop: threading.Event | None = None) -> CleanupResult | None:
    def pause(seconds: float) -> None:  # cleanup pauses between batches: a place to stop
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise JobStopped

    try:
        return cleanup(store, config or RetentionConfig(), now=clock(), sleep=pause)
    except JobStopped:
        return None


def run_metrics(store: SQLiteStore, sampler: Any) -> Any:
    from logly.metrics import record_sample

    return record_sample(store, sampler)


def run_report_mail(store: SQLiteStore, clock: Clock, cfg: Settings) -> str:
    """Mail yesterday's report; returns the subject."""
    from logly.report import build_message, build_report, send_message, yesterday

    report = build_report(store, yesterday(clock()), top=cfg.report.top, now=clock())
    msg = build_message(report, cfg.smtp, cfg.report)
    send_message(msg, cfg.smtp)
    return str(msg["Subject"])


# ---- the scheduler ---------------------------------------------------------------------------
class LoglyScheduler:
    """The running BackgroundScheduler plus a short history of job results (for status and
    tests): (job id, finished at, result or exception)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.history: collections.deque[tuple[str, datetime, Any]] = collections.deque(
            maxlen=1000)
        self._done = threading.Condition()
        self.stop = threading.Event()

    def _record(self, event: Any) -> None:
        result = event.exception if event.exception is not None else event.retval
        if event.exception is not None:
            log.error("scheduled job %s failed: %s", event.job_id, event.exception)
        with self._done:
            self.history.append((event.job_id, datetime.now(UTC), result))
            self._done.notify_all()

    def wait_for(self, job_id: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until `job_id` has finished `count` times (tests, and `--once` style use)."""
        deadline = time.monotonic() + timeout
        with self._done:
            while sum(1 for j, _, _ in self.history if j == job_id) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def results(self, job_id: str) -> list[Any]:
        return [r for j, _, r in list(self.history) if j == job_id]

    def shutdown(self, wait: bool = True) -> None:
        # a running job ends at its next hour or batch; the interpreter waits for pool threads
        # at exit, so without this a long start-up catch-up would hold a stopping daemon
        self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)


def start_scheduler(
    store: SQLiteStore,
    config: Any,
    clock: Clock = utc_now,
    *,
    extra_jobs: Mapping[str, tuple[Job, dict[str, Any]]] | None = None,
    sampler: Any = None,
) -> LoglyScheduler:
    """Start the jobs in a background thread; the daemon calls this once and `shutdown()` on
    exit. `config` is a logly Config (its `[scheduler]`, `[retention]`, `[report]`, `[smtp]`
    tables are read). `extra_jobs` adds other stages' jobs, e.g. reputation decay:
    `{"reputation_decay": (decay, {"trigger": "cron", "minute": 17})}`, each called as
    `job(store, clock)` under the same no-overlap rules. An aggregation run starts at once to
    catch up the hours missed while the daemon was down."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    cfg = settings(config)
    sc = cfg.scheduler
    tz = config.tzinfo() if hasattr(config, "tzinfo") else None
    zone = {"timezone": tz} if tz else {}  # else apscheduler uses the machine's zone
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=3)},
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 3600},
        **zone,
    )
    wrapper = LoglyScheduler(scheduler)
    scheduler.add_listener(wrapper._record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    if not sc.enabled:
        return wrapper
    catchup = timedelta(days=sc.catchup_days) if sc.catchup_days else None
    agg_lock = threading.Lock()

    def aggregate() -> tuple[list[datetime], list[date]]:
        with agg_lock:  # the start-up catch-up and the hourly trigger never run together
            return run_daily(store, clock, catchup, wrapper.stop)

    # start-up catch-up first, then the hourly trigger (same function, same lock)
    scheduler.add_job(aggregate, "date", id="catchup", run_date=datetime.now(UTC))
    scheduler.add_job(aggregate, "cron", id="aggregate", minute=sc.hourly_minute)
    h, m = _hhmm("scheduler.retention_time", sc.retention_time)

    def retention() -> CleanupResult | None:
        with agg_lock:  # retention aggregates the hours it is about to delete
            return run_retention(store, clock, cfg.retention, wrapper.stop)

    scheduler.add_job(retention, "cron", id="retention", hour=h, minute=m)
    if sampler is None:
        from logly.metrics import MetricsSampler

        sampler = MetricsSampler(clock, disk_path=store.path.parent)
    scheduler.add_job(run_metrics, "interval", id="metrics", seconds=sc.metrics_seconds,
                      args=(store, sampler))
    if sc.report_time:
        rh, rm = _hhmm("scheduler.report_time", sc.report_time)
        scheduler.add_job(run_report_mail, "cron", id="report_mail", hour=rh, minute=rm,
                          args=(store, clock, cfg))
    for name, (job, trigger) in (extra_jobs or {}).items():
        opts = dict(trigger)
        scheduler.add_job(job, opts.pop("trigger", "interval"), id=name, args=(store, clock),
                          **opts)
    scheduler.start()
    log.info("scheduler started: aggregates at :%02d, retention at %s, metrics every %gs%s",
             sc.hourly_minute, sc.retention_time, sc.metrics_seconds,
             f", report mail at {sc.report_time}" if sc.report_time else "")
    return wrapper
