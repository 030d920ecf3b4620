"""The store: schema and models agree, WAL, permissions, migrations, atomic batches."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

import logly.store.models  # noqa: F401 - registers the tables
from logly.store import sqlite as store_mod
from logly.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError

ROW = ("2026-11-24T10:00:00.000000Z", "syslog", "web1", "sshd", 42, "warning", "ssh",
       "auth_failure", "Failed password for root from 203.0.113.7 port 22 ssh2",
       "203.0.113.7", "root", 22, '{"rule": "sshd/failed"}')


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, tuple[str, bool, bool]]:
    return {r[1]: (r[2].upper(), bool(r[3]), bool(r[5])) for r in
            conn.execute(f'PRAGMA table_info("{table}")')}


def test_models_mirror_schema_sql(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    tables = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
    assert tables == set(SQLModel.metadata.tables)
    type_map = {"INTEGER": "INTEGER", "VARCHAR": "TEXT", "FLOAT": "REAL", "TEXT": "TEXT"}
    for name, table in SQLModel.metadata.tables.items():
        cols = _columns(conn, name)
        assert set(cols) == {c.name for c in table.columns}, name
        for col in table.columns:
            sql_type, notnull, pk = cols[col.name]
            model_type = type_map.get(type(col.type).__name__.upper(),
                                      str(col.type.compile()).upper())
            assert sql_type == type_map.get(model_type, model_type), (name, col.name)
            assert pk == col.primary_key, (name, col.name)
        fks = {(r[3], r[2]) for r in conn.execute(f'PRAGMA foreign_key_list("{name}")')}
        model_fks = {(fk.parent.name, fk.column.table.name) for fk in table.foreign_keys}
        assert fks == model_fks, name


def test_required_tables_and_indexes(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    for t in ("system_metrics", "network_metrics", "log_events", "hourly_aggregates",
              "daily_aggregates", "event_traces", "process_traces", "network_traces",
              "error_traces", "ip_reputation", "trace_patterns", "metadata"):
        assert t in names
    idx = {r[1]: [c[2] for c in conn.execute(f'PRAGMA index_info("{r[1]}")')]
           for r in conn.execute('PRAGMA index_list("log_events")')}
    assert ["timestamp"] in idx.values()
    assert ["source", "timestamp"] in idx.values()
    assert ["ip_address", "timestamp"] in idx.values()
    for t in ("process_traces", "network_traces", "error_traces"):
        targets = {r[2] for r in conn.execute(f'PRAGMA foreign_key_list("{t}")')}
        assert "event_traces" in targets


def test_init_is_idempotent_and_records_metadata(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    assert s.init() == SCHEMA_VERSION
    created = s.get_stats()["created"]
    assert s.init() == SCHEMA_VERSION
    stats = s.get_stats()
    assert stats["created"] == created and stats["hostname"]
    assert stats["schema_version"] == SCHEMA_VERSION


def test_database_file_is_0640_and_wal(db_path: Path, store: SQLiteStore) -> None:
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o640
    mode = sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_forward_migration_runs_in_order(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SQLiteStore(db_path)
    s.init()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_mod.MIGRATIONS, SCHEMA_VERSION + 1,
                        "ALTER TABLE log_events ADD COLUMN extra TEXT;")
    assert s.init() == SCHEMA_VERSION + 1
    cols = _columns(sqlite3.connect(db_path), "log_events")
    assert "extra" in cols
    assert s.version() == SCHEMA_VERSION + 1


def _shape(path: Path) -> dict[str, object]:
    """Every table's columns and every index's definition: what a migration must reproduce."""
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    shape: dict[str, object] = {t: _columns(conn, t) for t in names}
    shape["indexes"] = sorted(
        (r[0], " ".join(r[1].split())) for r in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    conn.close()
    return shape


def test_version_1_database_is_migrated_to_the_shape_of_a_new_one(tmp_path: Path) -> None:
    """tests/data/schema_v1.sql is schema.sql as the first release shipped it."""
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old)
    conn.executescript((Path(__file__).parent / "data" / "schema_v1.sql").read_text())
    conn.execute("INSERT INTO metadata (key, value) VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO source_files (identity, path, kind, \"offset\", size, lines, "
                 "events, unparsed, first_seen, updated) VALUES ('old', '/var/log/auth.log', "
                 "'file', 100, 100, 1, 1, 0, '2026-11-24T10:00:00.000000Z', "
                 "'2026-11-24T10:00:00.000000Z')")
    conn.commit()
    conn.close()
    s = SQLiteStore(old)
    assert s.version() == 1
    assert s.init() == SCHEMA_VERSION
    assert s.source_offset("old") == 100
    fid, _ = s.open_source("old", "/var/log/auth.log")
    s.write_batch(fid, [(*ROW, fid, 100)], [], 200, 1)
    assert len(s.get_log_events()) == 1
    s.close()
    fresh = SQLiteStore(tmp_path / "new.db")
    fresh.init()
    fresh.close()
    assert _shape(old) == _shape(tmp_path / "new.db")


def test_newer_schema_is_refused(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    s.init()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE metadata SET value='999' WHERE key='schema_version'")
    conn.commit()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(db_path).init()


def test_batch_and_checkpoint_commit_together(store: SQLiteStore) -> None:
    fid, off = store.open_source("id1", "/var/log/auth.log")
    assert off == 0
    rows = [(*ROW, fid, i * 100) for i in range(10)]
    assert store.write_batch(fid, rows, [(1000, "no header", "junk")], 1100, 11) == 10
    assert store.open_source("id1", "/var/log/auth.log.1") == (fid, 1100)
    # a failing batch (NOT NULL violated) leaves neither rows nor checkpoint behind
    bad = [(*ROW, fid, 2000), (None, *ROW[1:], fid, 2100)]
    with pytest.raises(IntegrityError):
        store.write_batch(fid, bad, [], 2200, 2)
    assert store.open_source("id1", "/x")[1] == 1100
    assert len(store.get_log_events(limit=None)) == 10
    src = store.sources()[0]
    assert (src["lines"], src["events"], src["unparsed"]) == (11, 10, 1)


def test_rows_keep_their_order_and_fail_whole_across_statements(store: SQLiteStore) -> None:
    # 123 rows: two full multi-row statements and a remainder; ids follow row order
    fid, _ = store.open_source("id-multi", "/var/log/multi.log")
    rows = [(*ROW, fid, i) for i in range(123)]
    assert store.write_batch(fid, rows, [], 123, 123) == 123
    stored = store.get_log_events(limit=None)
    assert sorted((e["id"], e["offset"]) for e in stored) == [(i + 1, i) for i in range(123)]
    # a bad row inside a multi-row statement fails the whole batch, as SQLAlchemy's error
    bad = [(*ROW, fid, 200 + i) for i in range(120)]
    bad[70] = (None, *ROW[1:], fid, 270)
    with pytest.raises(IntegrityError):
        store.write_batch(fid, bad, [], 400, 120)
    assert len(store.get_log_events(limit=None)) == 123
    assert store.open_source("id-multi", "/x")[1] == 123


def test_query_filters_are_parameters(store: SQLiteStore) -> None:
    fid, _ = store.open_source("id2", "/log")
    rows = [
        (*ROW, fid, 0),
        ("2026-11-24T11:00:00.000000Z", "syslog", "web1", "sshd", 43, "notice", "ssh",
         "auth_success", "Accepted", "198.51.100.1", "alice", 22, None, fid, 100),
    ]
    store.write_batch(fid, rows, [], 200, 2)
    assert [e["user"] for e in store.get_log_events(action="auth_success")] == ["alice"]
    assert [e["user"] for e in store.get_log_events(ip="203.0.113.7")] == ["root"]
    assert store.get_log_events(user="x' OR '1'='1") == []
    assert [e["id"] for e in store.get_log_events(start="2026-11-24T10:30:00.000000Z")] == [2]
    assert [e["id"] for e in store.get_log_events(end="2026-11-24T10:30:00.000000Z")] == [1]
    ev = store.get_log_events(action="auth_failure")[0]
    assert ev["metadata"] == {"rule": "sshd/failed"} and ev["path"] == "/log"


def test_reader_waits_for_writer_instead_of_failing(store: SQLiteStore) -> None:
    """A write lock held briefly by another connection is waited out (busy timeout)."""
    fid, _ = store.open_source("id3", "/log")
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.5)
        other.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    t0 = time.monotonic()
    store.write_batch(fid, [(*ROW, fid, 0)], [], 100, 1)
    assert released.is_set() and time.monotonic() - t0 >= 0.4


def test_missing_database_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no Logly database"):
        SQLiteStore(tmp_path / "none.db").require_schema()


def test_unwritable_location_is_a_typed_error(tmp_path: Path) -> None:
    # a path below a regular file cannot be created, even by root
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreError, match="cannot create"):
        SQLiteStore(tmp_path / "plain" / "x.db").init()


def test_a_relative_path_is_fixed_when_the_store_is_made(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """libbcc changes the working directory for a moment while the tracer compiles; a relative
    database path opened then must not land in the kernel headers."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    s = SQLiteStore("rel.db")
    monkeypatch.chdir(tmp_path / "elsewhere")
    s.init()
    assert (tmp_path / "here" / "rel.db").exists()
    assert not (tmp_path / "elsewhere" / "rel.db").exists()


def test_a_failing_enrichment_stage_costs_only_its_own_writes(store: SQLiteStore) -> None:
    def good(conn, rows, first_id):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("INSERT INTO metadata (key, value) VALUES ('good', ?)",
                             (str(first_id),))

    def broken(conn, rows, first_id):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("INSERT INTO metadata (key, value) VALUES ('broken', 'x')")
        raise ValueError("a bug in a stage")

    fid, _ = store.open_source("id-hooks", "/var/log/auth.log")
    stored = store.write_batch(fid, [(*ROW, fid, 0), (*ROW, fid, 10)], [], 20, 2,
                               hooks=[broken, good])
    assert stored == 2 and len(store.get_log_events()) == 2
    assert store.source_offset("id-hooks") == 20
    assert store.get_metadata("good") == "1"  # the stage after it still ran
    assert store.get_metadata("broken") is None  # its own write was undone
    from logly.store.sqlite import HOOK_FAILURES

    assert any("broken" in name for name in HOOK_FAILURES)


def test_hooks_before_the_insert_set_traces_and_name_the_batch_events(
        store: SQLiteStore) -> None:
    seen_after: list[tuple] = []

    def tracer(conn, rows, first_id):  # type: ignore[no-untyped-def]
        # nothing of this batch is stored yet; what it derives names its events all the same
        assert conn.exec_driver_sql("SELECT count(*) FROM log_events WHERE id >= ?",
                                    (first_id,)).scalar_one() == 0
        tid = conn.exec_driver_sql(
            "INSERT INTO event_traces (title, severity, first_seen, last_seen, created, updated)"
            " VALUES ('t', 'high', 'a', 'b', 'c', 'd')").lastrowid
        conn.exec_driver_sql(
            "INSERT INTO error_traces (trace_id, event_id, timestamp, error_type, category, "
            "severity) VALUES (?, ?, 'a', 'e', 'c', 'low')", (tid, first_id + 60))
        return {first_id + 1: tid, first_id + 60: tid}

    def broken(conn, rows, first_id):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(
            "INSERT INTO event_traces (title, severity, first_seen, last_seen, created, updated)"
            " VALUES ('lost', 'high', 'a', 'b', 'c', 'd')")
        raise ValueError("a bug in a stage")  # its traces and its writes go

    def after(conn, rows, first_id):  # type: ignore[no-untyped-def]
        seen_after.extend(conn.exec_driver_sql(
            "SELECT id, trace_id FROM log_events WHERE trace_id IS NOT NULL").all())

    tracer.before_insert = broken.before_insert = True  # type: ignore[attr-defined]
    fid, _ = store.open_source("id-early", "/var/log/auth.log")
    rows = [(*ROW, fid, i) for i in range(70)]  # a multi-row statement and a remainder
    assert store.write_batch(fid, rows, [], 70, 70, hooks=[after, tracer, broken]) == 70
    tid = seen_after[0][1]
    assert seen_after == [(2, tid), (61, tid)]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT title FROM event_traces").scalars().all() == ["t"]
        assert conn.exec_driver_sql("SELECT event_id FROM error_traces").scalar_one() == 61
    # a derived row naming an event the batch does not hold fails the batch at commit
    def dangling(conn, rows, first_id):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(
            "INSERT INTO error_traces (event_id, timestamp, error_type, category, severity) "
            "VALUES (?, 'a', 'e', 'c', 'low')", (first_id + len(rows) + 5,))

    dangling.before_insert = True  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        store.write_batch(fid, rows[:3], [], 73, 3, hooks=[dangling])
    assert len(store.get_log_events(limit=None)) == 70
