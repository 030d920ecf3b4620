"""SQLiteStore: the one way into the database.

WAL mode so the CLI reads while the daemon writes; a busy timeout instead of "database is
locked"; a schema version in `metadata` with forward migrations; bulk inserts as one
`executemany` per batch inside the same transaction as the input's checkpoint, so a crash
never separates stored events from the recorded read position. All SQL is parameterised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from logly.errors import LoglyError
from logly.rows import EVENT_INSERT_COLUMNS

log = logging.getLogger("logly.store")

# Forward migrations: version -> SQL that brings version-1 to version. A new database gets
# schema.sql, which is always the latest shape; a test proves both paths end in the same schema.
MIGRATIONS: dict[int, str] = {
    2: "ALTER TABLE source_files ADD COLUMN cursor TEXT;",  # journal sources
    # retention deletes events in batches; these keep the ON DELETE actions from scanning
    3: "CREATE INDEX IF NOT EXISTS ix_error_traces_event ON error_traces (event_id);\n"
       "CREATE INDEX IF NOT EXISTS ix_process_traces_event ON process_traces (event_id);\n"
       "CREATE INDEX IF NOT EXISTS ix_network_traces_event ON network_traces (event_id);",
    # reputation: base score (before decay), last attack (decay starts there), the /64 of an
    # IPv6 host. A table rebuild rather than ADD COLUMN: it also runs on a table that has them.
    4: "CREATE TABLE ip_reputation_v4 (address TEXT PRIMARY KEY, score REAL NOT NULL DEFAULT 0,"
       " verdict TEXT NOT NULL DEFAULT 'unknown', first_seen TEXT, last_seen TEXT, evidence TEXT,"
       " counts TEXT, users TEXT, geo TEXT, asn TEXT, blocklists TEXT, updated TEXT NOT NULL,"
       " base_score REAL NOT NULL DEFAULT 0, last_attack TEXT, net TEXT);\n"
       "INSERT INTO ip_reputation_v4 (address, score, verdict, first_seen, last_seen, evidence,"
       " counts, users, geo, asn, blocklists, updated) SELECT address, score, verdict,"
       " first_seen, last_seen, evidence, counts, users, geo, asn, blocklists, updated"
       " FROM ip_reputation;\n"
       "DROP TABLE ip_reputation;\n"
       "ALTER TABLE ip_reputation_v4 RENAME TO ip_reputation;\n"
       "CREATE INDEX IF NOT EXISTS ix_ip_reputation_score ON ip_reputation (score);\n"
       "CREATE INDEX IF NOT EXISTS ix_ip_reputation_net ON ip_reputation (net);\n"
       "CREATE INDEX IF NOT EXISTS ix_ip_reputation_last_seen ON ip_reputation (last_seen);",
    # correlation: deleting a trace sets its events' trace_id to NULL and deletes its error rows;
    # without these each deleted trace scans the tables (8 s per 50 traces on 1M events). The
    # partial index costs inserts nothing (new events have no trace yet).
    5: "CREATE INDEX IF NOT EXISTS ix_log_events_trace ON log_events (trace_id) "
       "WHERE trace_id IS NOT NULL;\n"
       "CREATE INDEX IF NOT EXISTS ix_error_traces_trace ON error_traces (trace_id);\n"
       "CREATE INDEX IF NOT EXISTS ix_event_traces_open ON event_traces (pattern) "
       "WHERE status = 'open';",
    # tracer: a process's failed syscalls (and slow ones) as the kernel counted them, JSON
    6: "ALTER TABLE process_traces ADD COLUMN syscalls TEXT;",
}
SCHEMA_VERSION = max(MIGRATIONS)

# Rows per INSERT statement in a batch: one statement's set-up and one call per 50 rows
# instead of per row took 10-20% off the writer's CPU (800 parameters at most, far below
# SQLite's limit)
INSERT_ROWS = 50


def _insert_sql(columns: Sequence[str], rows: int) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    values = "(" + ", ".join("?" for _ in columns) + ")"
    return f"INSERT INTO log_events ({names}) VALUES " + ", ".join([values] * rows)


# (one row, INSERT_ROWS rows) per statement: rows as the sources build them, and the same with
# their trace_id (set by hooks that run before the insert)
_INSERTS = {with_trace: (_insert_sql(cols, 1), _insert_sql(cols, INSERT_ROWS))
            for with_trace, cols in ((False, EVENT_INSERT_COLUMNS),
                                     (True, (*EVENT_INSERT_COLUMNS, "trace_id")))}
UNPARSED_KEEP = 1000  # sample lines kept per input; the count is always exact
# runs inside a batch's transaction: (connection, rows, id of the first row). A hook with
# `before_insert = True` runs before the rows are stored and may return {event id: trace id}
# for them; the others run after, and return nothing.
BatchHook = Callable[[Connection, Sequence[tuple], int], "dict[int, int] | None"]


class StoreError(LoglyError):
    """The database cannot be used as asked."""


def schema_sql() -> str:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "schema.sql", here.parent / "schema.sql"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise StoreError("schema.sql not found next to the package")


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SQLiteStore:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        # absolute now: the tracer's compiler (libbcc) changes the process's working directory
        # for a moment, and a relative path opened then lands in the kernel headers
        self.path = Path(path).absolute()
        self.busy_timeout_ms = busy_timeout_ms
        self._engine: Engine | None = None

    # ---- connection ---------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> Engine:
        if not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # created 0640 before SQLite opens it: log content is sensitive
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o640)
                os.close(fd)
            except OSError as exc:
                raise StoreError(f"cannot create database {self.path}: {exc.strerror}",
                                 hint="pass --db PATH or set LOGLY_DB") from None
        engine = create_engine(f"sqlite:///{self.path}", future=True)
        timeout = self.busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # SQLAlchemy's own transaction handling is replaced by explicit BEGIN below
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(timeout)}")
            cur.execute("PRAGMA foreign_keys = ON")
            # only takes effect on a new file; retention hands freed pages back incrementally
            cur.execute("PRAGMA auto_vacuum = INCREMENTAL")
            with contextlib.suppress(Exception):  # read-only medium: readers still work
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _write(self) -> Any:
        conn = self.engine.connect()
        conn.info["write"] = True
        return _WriteTxn(conn)

    # ---- schema -------------------------------------------------------------------------------
    def version(self) -> int:
        with self.engine.connect() as conn:
            exists = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='metadata'"
            ).first()
            if not exists:
                return 0
            row = conn.exec_driver_sql(
                "SELECT value FROM metadata WHERE key='schema_version'"
            ).first()
            return int(row[0]) if row else 0

    def init(self) -> int:
        """Create or upgrade the schema; idempotent. Returns the version now in place."""
        current = self.version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {current} is newer than this Logly ({SCHEMA_VERSION})",
                hint="upgrade Logly",
            )
        if current == SCHEMA_VERSION:
            self.ensure_indexes()
            return current
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if current == 0:
                cur.executescript("BEGIN;\n" + schema_sql() + "\nCOMMIT;")
                now = utcnow()
                cur.executemany(
                    "INSERT OR IGNORE INTO metadata (key, value) VALUES (?, ?)",
                    [("created", now), ("hostname", socket.gethostname())],
                )
            else:
                for v in range(current + 1, SCHEMA_VERSION + 1):
                    cur.executescript("BEGIN;\n" + MIGRATIONS[v] + "\nCOMMIT;")
            cur.execute(
                "INSERT INTO metadata (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            cur.close()
        finally:
            raw.close()
        return SCHEMA_VERSION

    # ---- bulk loading -------------------------------------------------------------------------
    def event_index_ddl(self) -> list[str]:
        """The CREATE INDEX statements for log_events, as schema.sql declares them."""
        stmts = [st.strip() for st in schema_sql().split(";")]
        return [st for st in stmts
                if st.upper().startswith("CREATE INDEX") and " ON log_events " in st]

    def ensure_indexes(self) -> None:
        """Recreate any log_events index a bulk load dropped (also after a crash)."""
        with self._write() as conn:
            conn.exec_driver_sql(f"PRAGMA threads = {min(4, os.cpu_count() or 1)}")
            for ddl in self.event_index_ddl():
                conn.exec_driver_sql(ddl)

    def approx_event_rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM log_events")
                       .scalar_one())

    def drop_event_indexes(self, only: Iterable[str] | None = None) -> None:
        """For a load much larger than the table: one sort at the end beats per-row upkeep.

        `only` names the indexes to drop (default: all of log_events'); `ensure_indexes()`
        recreates whatever is missing.
        """
        with self._write() as conn:
            for ddl in self.event_index_ddl():
                name = ddl.split("EXISTS", 1)[1].split()[0]
                if only is None or name in only:
                    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")

    def require_schema(self) -> None:
        if not self.path.exists() or self.version() == 0:
            raise StoreError(f"no Logly database at {self.path}", hint="run `logly init` first")

    # ---- inputs and checkpoints ---------------------------------------------------------------
    def open_source(
        self, identity: str, path: str, kind: str = "file",
        device: int | None = None, inode: int | None = None,
    ) -> tuple[int, int]:
        """The id and committed offset of an input, registering it if new."""
        now = utcnow()
        with self._write() as conn:
            row = conn.exec_driver_sql(
                'SELECT id, "offset" FROM source_files WHERE identity = ?', (identity,)
            ).first()
            if row:
                conn.exec_driver_sql(
                    "UPDATE source_files SET path = ?, device = ?, inode = ?, updated = ? "
                    "WHERE id = ?", (path, device, inode, now, row[0]),
                )
                return int(row[0]), int(row[1])
            cur = conn.exec_driver_sql(
                "INSERT INTO source_files (identity, path, kind, device, inode, first_seen, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (identity, path, kind, device, inode, now, now),
            )
            return int(cur.lastrowid), 0

    def set_metadata(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.exec_driver_sql(
                "INSERT INTO metadata (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def get_metadata(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT value FROM metadata WHERE key = ?", (key,)).first()
        return row[0] if row else None

    def path_family_updated(self, path: str) -> str | None:
        """When any input at `path` or a rotated name of it (`path.1`, `path-…`) last moved, less
        a little slack for clock granularity; None if Logly never read that path."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', max(updated), '-2 seconds') "
                "FROM source_files WHERE path = ? OR substr(path, 1, ?) IN (?, ?)",
                (path, len(path) + 1, path + ".", path + "-")).first()
        if not row or row[0] is None:
            return None
        return row[0][:-1] + "000Z" if len(row[0]) == 24 else row[0]

    def source_cursor(self, identity: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT cursor FROM source_files WHERE identity = ?", (identity,)).first()
        return row[0] if row else None

    def source_offset(self, identity: str) -> int | None:
        """The committed offset of a known input, or None if never seen."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                'SELECT "offset" FROM source_files WHERE identity = ?', (identity,)).first()
        return int(row[0]) if row else None

    def write_batch(
        self,
        file_id: int,
        rows: Sequence[tuple],
        unparsed: Sequence[tuple[int, str, str]],
        offset: int,
        lines: int,
        size: int | None = None,
        hooks: Sequence[BatchHook] = (),
        cursor: str | None = None,
    ) -> int:
        """Store events and unparsed samples and move the checkpoint, in one transaction.

        `rows` are tuples in EVENT_INSERT_COLUMNS order; `unparsed` are (offset, reason, line).
        Each hook runs inside the same transaction as `hook(conn, rows, first_id)`: the stored
        events have ids first_id, first_id + 1, ... in row order (one writer, rowid = max + 1),
        so derived tables (reputation, traces) commit or roll back with the events.
        Returns how many events were stored.
        """
        now = utcnow()
        with self._write() as conn:
            first_id = 1 + conn.exec_driver_sql(
                "SELECT coalesce(max(id), 0) FROM log_events").scalar_one()
            # hooks marked before_insert run first and may give this batch's events their
            # trace: set in the INSERT, it spares an UPDATE that rewrote each linked row (a
            # quarter of enriched ingest's time). The rows they derive (error_traces) name
            # events stored just below, so foreign keys are checked at commit.
            traces: dict[int, int] = {}
            early = [h for h in hooks if getattr(h, "before_insert", False)]
            late = [h for h in hooks if h not in early]
            if early:
                conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            for hook in early:
                got = _run_hook(conn, hook, rows, first_id)
                if got:
                    traces.update(got)
            if rows:
                _insert_events(conn, rows, first_id, traces)
            inserted = len(rows)
            for hook in late:
                _run_hook(conn, hook, rows, first_id)
            if unparsed:
                kept = conn.exec_driver_sql(
                    "SELECT count(*) FROM unparsed_lines WHERE file_id = ?", (file_id,)
                ).scalar_one()
                room = max(0, UNPARSED_KEEP - kept)
                if room:
                    conn.exec_driver_sql(
                        'INSERT INTO unparsed_lines (file_id, "offset", reason, line, seen) '
                        "VALUES (?, ?, ?, ?, ?)",
                        [(file_id, o, r, ln[:4096], now) for o, r, ln in unparsed[:room]],
                    )
            conn.exec_driver_sql(
                'UPDATE source_files SET "offset" = ?, size = coalesce(?, size), '
                "lines = lines + ?, events = events + ?, unparsed = unparsed + ?, updated = ?, "
                "cursor = coalesce(?, cursor) WHERE id = ?",
                (offset, size, lines, inserted, len(unparsed), now, cursor, file_id),
            )
        return inserted

    # ---- queries ------------------------------------------------------------------------------
    def get_log_events(
        self,
        start: str | None = None,
        end: str | None = None,
        source: str | None = None,
        level: str | None = None,
        ip: str | None = None,
        user: str | None = None,
        action: str | None = None,
        limit: int | None = 100,
        program: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events newest first, as dicts keyed like the JSON contract."""
        where, params = [], {}
        for col, val, op in (
            ("e.timestamp", start, ">="), ("e.timestamp", end, "<"), ("e.source", source, "="),
            ("e.level", level, "="), ("e.ip_address", ip, "="), ("e.user", user, "="),
            ("e.action", action, "="), ("e.program", program, "="),
        ):
            if val is not None:
                key = f"p{len(params)}"
                where.append(f"{col} {op} :{key}")
                params[key] = val
        sql = (
            "SELECT e.id, e.timestamp, e.source, e.host, e.program, e.pid, e.level, e.service, "
            "e.action, e.message, e.ip_address, e.user, e.port, e.metadata, f.path, e.\"offset\", "
            "e.trace_id FROM log_events e LEFT JOIN source_files f ON f.id = e.file_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.timestamp DESC, e.id DESC"
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = int(limit)
        with self.engine.connect() as conn:
            result = conn.execute(text(sql), params)
            cols = list(result.keys())
            out = []
            for row in result:
                d = dict(zip(cols, row, strict=True))
                d["metadata"] = json.loads(d["metadata"]) if d["metadata"] else {}
                out.append(d)
        return out

    def unparsed_lines(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.exec_driver_sql(
                'SELECT f.path, u."offset", u.reason, u.line, u.seen FROM unparsed_lines u '
                "LEFT JOIN source_files f ON f.id = u.file_id ORDER BY u.id DESC LIMIT ?",
                (limit,),
            )
            return [dict(zip(result.keys(), r, strict=True)) for r in result]

    def sources(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.exec_driver_sql(
                'SELECT id, path, kind, identity, "offset", size, lines, events, unparsed, '
                "first_seen, updated FROM source_files ORDER BY path"
            )
            return [dict(zip(result.keys(), r, strict=True)) for r in result]

    def get_stats(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            tables = [
                r[0] for r in conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            rows = {
                t: conn.exec_driver_sql(f'SELECT count(*) FROM "{t}"').scalar_one()
                for t in tables
            }
            meta = dict(conn.exec_driver_sql("SELECT key, value FROM metadata").all())
        size = sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
        )
        sources = self.sources()
        daemon = json.loads(meta["daemon_status"]) if meta.get("daemon_status") else None
        return {
            "database": str(self.path),
            "schema_version": int(meta.get("schema_version", 0)),
            "created": meta.get("created"),
            "hostname": meta.get("hostname"),
            "size_bytes": size,
            "rows": rows,
            "unparsed": sum(s["unparsed"] for s in sources),
            "sources": sources,
            "daemon": daemon,
        }

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._write() as conn:
            conn.exec_driver_sql(sql, list(rows))


HOOK_FAILURES: dict[str, int] = {}  # per stage, since the process started (`logly stats`)


def _run_hook(conn: Connection, hook: BatchHook, rows: Sequence[tuple],
              first_id: int) -> dict[int, int] | None:
    """Enrichment must never cost the events: a stage that fails (a bug, a hostile line it
    did not expect) has its own writes undone and the batch is stored without them (and
    without the traces it returned). The store's own trouble (locked, disk full) still fails
    the batch, which is then retried."""
    conn.exec_driver_sql("SAVEPOINT enrich")
    got = None
    try:
        got = hook(conn, rows, first_id)
    except OperationalError:
        raise
    except Exception:
        conn.exec_driver_sql("ROLLBACK TO enrich")
        name = getattr(hook, "__qualname__", None) or type(hook).__name__
        HOOK_FAILURES[name] = HOOK_FAILURES.get(name, 0) + 1
        log.exception("enrichment stage %s failed on a batch of %d events; stored without it",
                      name, len(rows))
    conn.exec_driver_sql("RELEASE enrich")
    return got


def _insert_events(conn: Connection, rows: Sequence[tuple], first_id: int,
                   traces: dict[int, int]) -> None:
    """Rows in order (ids follow it: hooks count on that), INSERT_ROWS per statement; `traces`
    gives some of them (by id) their trace_id.

    Through the driver's own cursor (SQLAlchemy's per-call work was a tenth of the writer's
    time), its errors raised as SQLAlchemy's, as every other statement's are: the daemon
    tells a full disk (OperationalError) from a bug that way.
    """
    one, many = _INSERTS[bool(traces)]
    if traces:
        get = traces.get
        rows = [(*r, get(i)) for i, r in enumerate(rows, first_id)]
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    full = len(rows) - len(rows) % INSERT_ROWS
    flat = chain.from_iterable
    sql = many
    try:
        for i in range(0, full, INSERT_ROWS):
            cur.execute(many, tuple(flat(rows[i:i + INSERT_ROWS])))
        if full < len(rows):
            sql = one
            cur.executemany(one, rows[full:])
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
    finally:
        cur.close()


class _WriteTxn:
    """`with store._write() as conn:` — BEGIN IMMEDIATE ... COMMIT, rollback on error."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        self.txn = self.conn.begin()
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self.txn.commit()
                except Exception:
                    # a COMMIT that fails (a deferred foreign key, say) leaves SQLite's
                    # transaction open: end it, or the pooled connection's next BEGIN fails
                    with contextlib.suppress(Exception):
                        self.conn.connection.driver_connection.rollback()  # type: ignore[union-attr]
                    raise
            else:
                self.txn.rollback()
        finally:
            self.conn.info["write"] = False  # the pooled connection may next serve a reader
            self.conn.close()
