"""Retention: per-table cut-offs, batches, aggregation before deletion, the archive, the
incremental vacuum that returns space, and the CLI's cleanup command."""

from __future__ import annotations

import gzip
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from typer.testing import CliRunner

from logly.cli_report import register
from logly.events import EVENT_COLUMNS
from logly.store import aggregates
from logly.store.retention import RetentionConfig, checkpoint, cleanup
from logly.store.sqlite import SQLiteStore, schema_sql
from tests.test_aggregates import ev, plant

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def incremental_store(path: Path) -> SQLiteStore:
    """A database as `logly init` creates it: auto_vacuum = INCREMENTAL."""
    store = SQLiteStore(path)
    store.init()
    assert count(store, "PRAGMA auto_vacuum") == 2  # 2 = incremental
    return store


def legacy_store(path: Path) -> SQLiteStore:
    """A database created before Logly set auto_vacuum (or by hand): it stays at none."""
    raw = sqlite3.connect(path)
    raw.executescript(schema_sql())
    raw.close()
    store = SQLiteStore(path)
    store.init()
    return store


def count(store: SQLiteStore, sql: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql(sql).scalar_one())


def planted(store: SQLiteStore, old: int = 3000, new: int = 50) -> None:
    start = NOW - timedelta(days=40)
    rows = [ev(start + timedelta(minutes=i), "auth_failure", f"203.0.113.{i % 200}",
               "root" if i % 2 else "<script>x</script>") for i in range(old)]
    rows += [ev(NOW - timedelta(hours=1, minutes=i), "auth_success", "198.51.100.1", "alice")
             for i in range(new)]
    plant(store, rows)


def fast(**kw: object) -> RetentionConfig:
    cfg = RetentionConfig(batch_rows=200, max_txn_ms=1000, pause_ms=1, vacuum_pages=64)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_old_events_go_in_batches_after_their_hours_are_aggregated(tmp_path: Path) -> None:
    store = incremental_store(tmp_path / "r.db")
    planted(store)
    store.executemany("INSERT INTO system_metrics (timestamp, cpu_percent) VALUES (?, ?)",
                      [(aggregates.ts(NOW - timedelta(days=20)), 5.0),
                       (aggregates.ts(NOW - timedelta(days=1)), 6.0)])
    sleeps: list[float] = []
    res = cleanup(store, fast(max_txn_ms=0.001), now=NOW, sleep=sleeps.append)
    assert res.deleted["log_events"] == 3000 and res.deleted["system_metrics"] == 1
    assert res.cutoffs["log_events"] == "2026-10-26T00:00:00.000000Z"  # midnight, 30 days
    assert count(store, "SELECT count(*) FROM log_events") == 50
    assert res.batches >= 3000 // 200 and len(sleeps) >= res.batches
    # every deleted event is still counted in the aggregates
    assert res.hours_aggregated > 0
    assert count(store, "SELECT sum(event_count) FROM hourly_aggregates WHERE source = '*'") \
        == 3000
    assert aggregates.retained_from(store) == res.cutoffs["log_events"]
    # a second run finds nothing and changes nothing
    again = cleanup(store, fast(), now=NOW, sleep=lambda s: None)
    assert again.deleted["log_events"] == 0
    assert count(store, "SELECT sum(event_count) FROM hourly_aggregates WHERE source = '*'") \
        == 3000


def test_incremental_vacuum_returns_the_space(tmp_path: Path) -> None:
    store = incremental_store(tmp_path / "v.db")
    planted(store, old=20_000)
    checkpoint(store, "TRUNCATE")
    before = (tmp_path / "v.db").stat().st_size
    res = cleanup(store, fast(batch_rows=5000), now=NOW, sleep=lambda s: None)
    assert res.auto_vacuum == "incremental" and res.pages_freed > 0
    checkpoint(store, "TRUNCATE")
    assert count(store, "PRAGMA freelist_count") == 0
    assert (tmp_path / "v.db").stat().st_size < before / 2


def test_without_incremental_auto_vacuum_the_free_space_is_reported(tmp_path: Path) -> None:
    store = legacy_store(tmp_path / "legacy.db")
    planted(store, old=5000)
    res = cleanup(store, fast(batch_rows=5000), now=NOW, sleep=lambda s: None)
    assert res.auto_vacuum == "none" and res.pages_freed == 0 and res.reclaimable_bytes > 0


def test_archive_holds_every_deleted_event_in_the_json_contract(tmp_path: Path) -> None:
    store = incremental_store(tmp_path / "a.db")
    planted(store, old=1500)
    res = cleanup(store, fast(archive_dir=tmp_path / "archive"), now=NOW,
                  sleep=lambda s: None)
    assert res.archived and all(Path(p).stat().st_mode & 0o777 == 0o640 for p in res.archived)
    lines = []
    for path in res.archived:
        with gzip.open(path, "rt", encoding="utf-8") as fh:  # several gzip members: one stream
            lines += [json.loads(line) for line in fh]
    assert len(lines) == 1500
    assert list(lines[0]) == list(EVENT_COLUMNS)
    assert lines[0]["path"] == "/var/log/auth.log" and lines[0]["metadata"] == {"rule": "sshd/x"}
    assert {ln["user"] for ln in lines} == {"root", "<script>x</script>"}
    assert all(Path(p).name.startswith("log_events-2026-10-1") for p in res.archived)


def test_aggregate_tables_outlive_raw_events(tmp_path: Path) -> None:
    store = incremental_store(tmp_path / "k.db")
    store.executemany(
        "INSERT INTO hourly_aggregates (hour, source, action, event_count) VALUES (?, ?, ?, ?)",
        [(aggregates.ts(NOW - timedelta(days=d)), "*", "*", d) for d in (40, 400)])
    store.executemany(
        "INSERT INTO daily_aggregates (day, source, action, event_count) VALUES (?, ?, ?, ?)",
        [((NOW - timedelta(days=d)).date().isoformat(), "*", "*", d) for d in (40, 4000)])
    res = cleanup(store, fast(), now=NOW, sleep=lambda s: None)
    assert res.deleted["hourly_aggregates"] == 1  # 400 days > 365
    assert "daily_aggregates" not in res.deleted  # kept forever by default
    assert count(store, "SELECT count(*) FROM daily_aggregates") == 2


def test_config_rejects_unknown_and_bad_keys() -> None:
    import pytest

    from logly.errors import ConfigError

    cfg = RetentionConfig.from_toml({"log_events_days": 7, "archive_dir": "/tmp/a"})
    assert cfg.days["log_events"] == 7 and cfg.archive_dir == Path("/tmp/a")
    with pytest.raises(ConfigError, match="retention.nope"):
        RetentionConfig.from_toml({"nope": 1})
    with pytest.raises(ConfigError, match="log_events_days"):
        RetentionConfig.from_toml({"log_events_days": -1})


def test_cleanup_command_json(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "logly.toml"
    cfg.write_text('[retention]\npause_ms = 1\nlog_events_days = 90\n')
    monkeypatch.setenv("LOGLY_CONFIG", str(cfg))
    store = incremental_store(tmp_path / "c.db")
    start = datetime.now(UTC) - timedelta(days=40)
    plant(store, [ev(start + timedelta(minutes=i), "scan", "192.0.2.1") for i in range(300)])
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["cleanup", "--db", str(tmp_path / "c.db"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["deleted"]["log_events"] == 0  # config: 90 days
    r = runner.invoke(app, ["cleanup", "--db", str(tmp_path / "c.db"), "--retention-days", "30",
                            "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["deleted"]["log_events"] == 300 and out["auto_vacuum"] == "incremental"
    r = runner.invoke(app, ["cleanup", "--help"])
    assert "Example: logly cleanup" in r.stdout
