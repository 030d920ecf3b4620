"""Tie stored events to the tracer's processes and connections, inside write_batch's transaction.

`make_hook(tracer)` returns a BatchHook. For each stored event that names a pid the tracer
knows (alive at the event's time, or exited less than keep_seconds before), or an address and
port of a known TCP socket, it stores:
  - process_traces rows: the process and its ancestors (with the failed syscalls the kernel
    counted for the process), network_traces rows: the socket(s) with their state history;
  - under the event's trace: the one an earlier hook of the same batch made (log_events.trace_id
    already set, e.g. a correlation trace), else a 'context' event_traces row made here, one per
    process (later events of the same process join it), with a causality chain (docs/tracer.md).
Most rows name no pid the tracer knows: for them the cost is a string compare and a dict lookup.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from logly.rows import ACTION, HOST, IP, PID, PORT, TIMESTAMP, USER
from logly.store.sqlite import BatchHook, utcnow
from logly.tracer.procfs import Conn, ProcfsTracer, ProcInfo

log = logging.getLogger("logly.tracer")

SLACK = 2.0  # seconds: syslog timestamps have whole seconds, processes start mid-second
MAX_ANCESTORS = 8
CAUSALITY_VERSION = 1


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts).timestamp()
    except (TypeError, ValueError):
        return None


class _Bounded(OrderedDict):
    """A small LRU map: memory of what this hook made, never the source of truth."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class Linker:
    def __init__(self, tracer: ProcfsTracer, *, keep_seconds: float = 300.0,
                 local_only: bool = True) -> None:
        self.tracer = tracer
        self.keep = keep_seconds
        name = socket.gethostname()
        self.local_hosts = {None, "", "localhost", name, name.split(".")[0]} \
            if local_only else None
        self.context_traces = _Bounded(4096)  # (pid, start) -> event_traces.id
        self.attached = _Bounded(16384)  # (trace_id, what) already stored under that trace
        self.watched = _Bounded(4096)  # pids whose slow syscalls the kernel times
        self.linked = 0

    # ---- the hook -----------------------------------------------------------------------------
    def __call__(self, conn: Connection, rows: Sequence[tuple], first_id: int) -> None:
        now = time.time()
        self.tracer.sync()  # the kernel's events up to now are in the caches
        horizon = iso(now - self.keep - 60.0)  # older lines cannot name a process we know
        tracer, hosts = self.tracer, self.local_hosts
        hits: list[tuple[int, tuple, ProcInfo | None, list[Conn]]] = []
        for i, row in enumerate(rows):
            ts = row[TIMESTAMP]
            if ts < horizon:  # fixed-width ISO text: string order is time order
                continue
            pid, ip = row[PID], row[IP]
            if (pid is None or not tracer.known(pid)) and (ip is None or row[PORT] is None):
                continue
            if hosts is not None and row[HOST] not in hosts:
                continue  # a line from another machine names another machine's pids
            when = _epoch(ts)
            if when is None:
                continue
            info = tracer.process_at(pid, when, SLACK) if pid is not None else None
            conns: list[Conn] = []
            if ip is not None and row[PORT] is not None:
                conns = [c for c in tracer.connections(ip, row[PORT]) if _conn_at(c, when,
                                                                                  self.keep)]
                if info is None:  # the socket's process, for a line that names no pid
                    for c in conns:
                        if c.pid:
                            info = tracer.process_at(c.pid, when, SLACK)
                            if info is not None:
                                break
            if info is not None or conns:
                hits.append((first_id + i, row, info, conns))
        if not hits:
            return
        # a failure here undoes only the links (SQLiteStore runs every stage in a savepoint)
        self._store(conn, hits)

    # ---- storing ------------------------------------------------------------------------------
    def _store(self, conn: Connection, hits: list[tuple[int, tuple, ProcInfo | None,
                                                        list[Conn]]]) -> None:
        # a few statements per batch and per process, not per row: a busy process's lines
        # join its one context trace with one UPDATE per batch
        existing = _trace_ids(conn, [h[0] for h in hits])
        self._forget_gone_traces(conn, hits)
        now = utcnow()
        set_trace: list[tuple[int, int]] = []
        bumps: dict[int, list] = {}  # reused context trace -> [new events, last timestamp]
        done: set[tuple] = set()  # (trace, process or socket) stored in this batch
        for event_id, row, info, conns in hits:
            trace_id = existing.get(event_id)
            if trace_id is None:
                key = (info.pid, info.start) if info is not None else None
                trace_id = self.context_traces.get(key) if key is not None else None
                if trace_id is not None:
                    b = bumps.setdefault(trace_id, [0, row[TIMESTAMP]])
                    b[0] += 1
                    b[1] = max(b[1], row[TIMESTAMP])
                else:
                    trace_id = self._new_context_trace(conn, event_id, row, info, conns, now)
                    if key is not None:
                        self.context_traces.remember(key, trace_id)
                set_trace.append((trace_id, event_id))
            if info is not None and (trace_id, "p", info.pid, info.start) not in done:
                done.add((trace_id, "p", info.pid, info.start))
                self._store_processes(conn, trace_id, event_id, info)
                if info.pid not in self.watched:
                    self.watched.remember(info.pid, True)
                    self.tracer.watch(info.pid)
            for c in conns:
                if (trace_id, "c", c.key, c.first) not in done:
                    done.add((trace_id, "c", c.key, c.first))
                    self._store_conn(conn, trace_id, event_id, c)
            self.linked += 1
        if set_trace:
            conn.exec_driver_sql("UPDATE log_events SET trace_id = ? WHERE id = ?", set_trace)
        if bumps:
            conn.exec_driver_sql(
                "UPDATE event_traces SET event_count = event_count + ?, "
                "last_seen = max(last_seen, ?), updated = ? WHERE id = ?",
                [(n, last, now, tid) for tid, (n, last) in bumps.items()])

    def _forget_gone_traces(self, conn: Connection, hits: list[tuple]) -> None:
        """Drop remembered context traces that no longer exist (deleted by retention, or made
        in a batch that rolled back): events must not point at a missing trace."""
        ids = {self.context_traces[k] for k in
               {(h[2].pid, h[2].start) for h in hits if h[2] is not None}
               if k in self.context_traces}
        if not ids:
            return
        alive = set(_existing(conn, "event_traces", sorted(ids)))
        for k in [k for k, v in self.context_traces.items() if v in ids and v not in alive]:
            del self.context_traces[k]

    def _new_context_trace(self, conn: Connection, event_id: int, row: tuple,
                           info: ProcInfo | None, conns: list[Conn], now: str) -> int:
        chain = self._chain(event_id, row, info, conns)
        trace_id = conn.exec_driver_sql(
            "INSERT INTO event_traces (title, severity, pattern, first_seen, last_seen, "
            "ip_address, user, host, event_count, status, causality, created, updated) "
            "VALUES (?, 'info', 'context', ?, ?, ?, ?, ?, 1, 'open', ?, ?, ?)",
            (_title(info, conns), row[TIMESTAMP], row[TIMESTAMP], row[IP], row[USER], row[HOST],
             json.dumps(chain, ensure_ascii=False), now, now),
        ).lastrowid
        return int(trace_id)

    def _chain(self, event_id: int, row: tuple, info: ProcInfo | None,
               conns: list[Conn]) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        if info is not None:
            for p in reversed([info, *self.tracer.ancestors(info, MAX_ANCESTORS)]):
                steps.append({"kind": "process", "pid": p.pid, "ppid": p.ppid, "comm": p.comm,
                              "exe": p.exe, "start": iso(p.start), "exit": iso(p.exit),
                              "exit_code": p.exit_code})
        for c in conns:
            steps.append({"kind": "connection", "pid": c.pid,
                          "local": f"{c.local_address}:{c.local_port}",
                          "remote": f"{c.remote_address}:{c.remote_port}",
                          "states": [s for _, s in c.states]})
        steps.append({"kind": "event", "event_id": event_id, "action": row[ACTION],
                      "at": row[TIMESTAMP]})
        return {"version": CAUSALITY_VERSION, "source": "tracer", "steps": steps}

    def _store_processes(self, conn: Connection, trace_id: int, event_id: int,
                         info: ProcInfo) -> None:
        syscalls = self._syscalls(info)
        key = (trace_id, "p", info.pid, info.start)
        if key in self.attached and conn.exec_driver_sql(  # the same process again: refresh
                "UPDATE process_traces SET exit = ?, exit_code = ?, syscalls = ? WHERE id = ?",
                (iso(info.exit), info.exit_code, syscalls, self.attached[key])).rowcount:
            return  # (rowcount 0: that batch rolled back; store the rows again)
        rows = [info, *self.tracer.ancestors(info, MAX_ANCESTORS)]
        for depth, p in enumerate(rows):
            k = (trace_id, "p", p.pid, p.start)
            if depth and k in self.attached:
                continue
            rid = conn.exec_driver_sql(
                "INSERT INTO process_traces (trace_id, event_id, pid, ppid, uid, comm, exe, "
                "cmdline, container, start, exit, exit_code, syscalls) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trace_id, event_id, p.pid, p.ppid, p.uid, p.comm, p.exe, p.cmdline(),
                 p.container, iso(p.start), iso(p.exit), p.exit_code,
                 syscalls if depth == 0 else None),
            ).lastrowid
            self.attached.remember(k, rid)

    def _syscalls(self, info: ProcInfo) -> str | None:
        failed = self.tracer.failed_syscalls(info.pid)
        if not failed and not info.slow:
            return None
        return json.dumps({"failed": failed, "slow": list(info.slow)}, ensure_ascii=False)

    def _store_conn(self, conn: Connection, trace_id: int, event_id: int, c: Conn) -> None:
        key = (trace_id, "c", c.key, c.first)
        states = json.dumps([[iso(t), s] for t, s in c.states])
        if key in self.attached and conn.exec_driver_sql(
                "UPDATE network_traces SET states = ?, last_seen = ?, pid = ?, bytes_sent = ?, "
                "bytes_recv = ? WHERE id = ?",
                (states, iso(c.last), c.pid, c.bytes_sent, c.bytes_recv,
                 self.attached[key])).rowcount:
            return
        rid = conn.exec_driver_sql(
            "INSERT INTO network_traces (trace_id, event_id, pid, local_address, local_port, "
            "remote_address, remote_port, states, first_seen, last_seen, bytes_sent, bytes_recv) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (trace_id, event_id, c.pid, c.local_address, c.local_port, c.remote_address,
             c.remote_port, states, iso(c.first), iso(c.last), c.bytes_sent, c.bytes_recv),
        ).lastrowid
        self.attached.remember(key, rid)


def make_hook(tracer: ProcfsTracer, *, keep_seconds: float | None = None,
              local_only: bool = True) -> BatchHook:
    """The BatchHook linking events to `tracer`'s context (see the module docstring)."""
    if keep_seconds is None:
        settings = getattr(tracer, "settings", None)
        keep_seconds = settings.keep_seconds if settings is not None else 300.0
    return Linker(tracer, keep_seconds=keep_seconds, local_only=local_only)


def _conn_at(c: Conn, when: float, keep: float) -> bool:
    first = c.first if c.first is not None else when
    end = c.closed if c.closed is not None else when
    return first - SLACK <= when <= end + keep


def _existing(conn: Connection, table: str, ids: list[int]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        out += [r[0] for r in conn.exec_driver_sql(
            f"SELECT id FROM {table} WHERE id IN ({marks})", tuple(chunk))]
    return out


def _trace_ids(conn: Connection, ids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for eid, tid in conn.exec_driver_sql(
                f"SELECT id, trace_id FROM log_events WHERE id IN ({marks}) "
                "AND trace_id IS NOT NULL", tuple(chunk)):
            out[eid] = tid
    return out


def _title(info: ProcInfo | None, conns: list[Conn]) -> str:
    parts: list[str] = []
    if info is not None:
        what = info.exe or info.comm or "?"
        parts.append(f"{info.comm or '?'}[{info.pid}] {what} uid {info.uid}")
        ended = info.ended()
        if ended is not None:
            parts.append(ended)
    for c in conns[:1]:
        parts.append(f"tcp {c.remote_address}:{c.remote_port} -> "
                     f"{c.local_address}:{c.local_port}")
    return ", ".join(parts)[:200]
