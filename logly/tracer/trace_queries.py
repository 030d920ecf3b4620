"""Reading traces back: the list for `logly traces` and the whole story for `logly trace ID`.

Plain dicts keyed like the JSON contract (ARCHITECTURE.md). Process and network context rows
(process_traces / network_traces, written by the kernel tracer) and error classes
(error_traces) are attached generically when present; a trace made only of context is shown
the same way.
"""

from __future__ import annotations

import json
from typing import Any

from logly.store.sqlite import SQLiteStore
from logly.tracer.classify import SEVERITIES, SEVERITY_RANK

TRACE_COLUMNS = ("id", "title", "severity", "first_seen", "last_seen", "ip_address", "user",
                 "host", "event_count")


def severities_from(level: str) -> list[str]:
    """`level` and every worse one."""
    return [s for s in SEVERITIES if SEVERITY_RANK[s] >= SEVERITY_RANK[level]]


def list_traces(
    store: SQLiteStore, *, severity: str = "low", since: str | None = None,
    until: str | None = None, ip: str | None = None, user: str | None = None,
    source: str | None = None, limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Traces newest first (by last event). `source` is the detector that made the trace:
    address, user-attack, login, privilege, account, errors, or context (the kernel tracer)."""
    levels = severities_from(severity)
    where = [f"severity IN ({','.join('?' for _ in levels)})"]
    params: list[Any] = list(levels)
    for cond, val in (("last_seen >= ?", since), ("first_seen < ?", until),
                      ("ip_address = ?", ip), ("user = ?", user), ("pattern = ?", source)):
        if val is not None:
            where.append(cond)
            params.append(val)
    sql = (f"SELECT {', '.join(TRACE_COLUMNS)}, pattern, status FROM event_traces WHERE "
           + " AND ".join(where) + " ORDER BY last_seen DESC, id DESC")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(sql, tuple(params))
        cols = list(result.keys())
        return [dict(zip(cols, r, strict=True)) for r in result]


def _rows(conn: Any, sql: str, params: tuple) -> list[dict[str, Any]]:
    result = conn.exec_driver_sql(sql, params)
    cols = list(result.keys())
    return [dict(zip(cols, r, strict=True)) for r in result]


def get_trace(store: SQLiteStore, trace_id: int, *, max_events: int = 500) -> dict | None:
    with store.engine.connect() as conn:
        rows = _rows(conn, f"SELECT {', '.join(TRACE_COLUMNS)}, pattern, status, causality "
                     "FROM event_traces WHERE id = ?", (trace_id,))
        if not rows:
            return None
        trace = rows[0]
        causality = json.loads(trace.pop("causality") or "null") or {}
        ids = [int(i) for i in causality.get("events", [])][:max_events]
        if not ids:  # a trace written by another stage: its events point at it
            ids = [r[0] for r in conn.exec_driver_sql(
                "SELECT id FROM log_events WHERE trace_id = ? ORDER BY id LIMIT ?",
                (trace_id, max_events))]
        events = []
        for chunk in range(0, len(ids), 400):
            part = ids[chunk:chunk + 400]
            events += _rows(conn, (
                "SELECT e.id, e.timestamp, e.source, e.host, e.program, e.pid, e.level, "
                "e.service, e.action, e.message, e.ip_address, e.user, e.port, e.metadata, "
                "f.path, e.\"offset\", e.trace_id FROM log_events e LEFT JOIN source_files f "
                f"ON f.id = e.file_id WHERE e.id IN ({','.join('?' for _ in part)})"),
                tuple(part))
        events.sort(key=lambda e: (e["timestamp"], e["id"]))
        for e in events:
            e["metadata"] = json.loads(e["metadata"]) if e["metadata"] else {}
        trace["steps"] = causality.get("steps", [])
        trace["events"] = events
        trace["more_events"] = max(0, int(trace["event_count"] or 0) - len(events))
        has_syscalls = any(r[1] == "syscalls" for r in conn.exec_driver_sql(
            "PRAGMA table_info(process_traces)"))
        trace["processes"] = _rows(conn, (
            "SELECT pid, ppid, uid, comm, exe, cmdline, container, start, exit, exit_code, "
            + ("syscalls, " if has_syscalls else "")
            + "event_id FROM process_traces WHERE trace_id = ? ORDER BY id"), (trace_id,))
        trace["connections"] = _rows(conn, (
            "SELECT pid, local_address, local_port, remote_address, remote_port, states, "
            "first_seen, last_seen, bytes_sent, bytes_recv, event_id FROM network_traces "
            "WHERE trace_id = ? ORDER BY id"), (trace_id,))
        # the kernel tracer keeps a process's failed/slow syscalls as JSON on its row
        trace["syscalls"] = []
        for p in trace["processes"]:
            raw = p.pop("syscalls", None)
            if raw:
                try:
                    trace["syscalls"].append({"pid": p["pid"], **json.loads(raw)})
                except (ValueError, TypeError):
                    trace["syscalls"].append({"pid": p["pid"], "raw": raw})
        trace["errors"] = _rows(conn, (
            "SELECT event_id, timestamp, error_type, category, severity, file, line_no, code, "
            "hints, suggestions FROM error_traces WHERE trace_id = ? ORDER BY id LIMIT 200"),
            (trace_id,))
        trace["reputation"] = None
        if trace["ip_address"]:
            rep = _rows(conn, "SELECT address, score, verdict, first_seen, last_seen, counts, "
                        "users FROM ip_reputation WHERE address = ?", (trace["ip_address"],))
            trace["reputation"] = rep[0] if rep else None
    trace["services"] = sorted({e["service"] or e["program"] for e in events
                                if e["service"] or e["program"]})
    trace["root_cause"], trace["next_steps"] = _explain(trace)
    return trace


def describe_step(step: dict[str, Any]) -> str:
    """One line for any causality step: a correlation pattern, or a process, connection or
    event step of a kernel-tracer context trace."""
    if "pattern" in step:
        return str(step.get("title") or step["pattern"])
    kind = step.get("kind", "step")
    if kind == "process":
        return (f"process {step.get('pid')} (parent {step.get('ppid')}) "
                f"{step.get('exe') or step.get('comm') or ''}").strip()
    if kind == "connection":
        states = step.get("states") or []
        return f"connection {step.get('local')} <-> {step.get('remote')} " + ">".join(
            str(s) for s in states)
    if kind == "event":
        return f"event {step.get('event_id')} ({step.get('action')})"
    return json.dumps(step, ensure_ascii=True)[:200]


def _explain(trace: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Root cause and what to do next: from the error classes and the patterns' advice."""
    from logly.tracer.patterns import load_rules

    cause: list[str] = []
    todo: list[str] = []
    try:
        patterns = load_rules().patterns
    except Exception:  # a broken rule file must not hide the trace itself
        patterns = {}
    for step in trace["steps"]:
        if "pattern" not in step:  # a step another stage wrote (the kernel tracer's chain)
            cause.append(describe_step(step))
            continue
        p = patterns.get(step.get("pattern"))
        what = step.get("title") or step.get("pattern")
        cause.append(f"{str(step.get('at', ''))[:19].replace('T', ' ')} {what} "
                     f"[{step.get('pattern')}, {step.get('severity')}]")
        advice = p.params.get("advice") if p else None
        if advice and advice not in todo:
            todo.append(advice)
    for err in trace["errors"]:
        if err["hints"] and err["hints"] not in cause:
            cause.append(err["hints"])
        if err["suggestions"] and err["suggestions"] not in todo:
            todo.append(err["suggestions"])
    return cause[:20], todo[:10]
