"""`logly traces` and `logly trace ID`: thin commands over logly.tracer.trace_queries.

`register(app)` adds them to the main typer app (logly/cli.py calls it). Every log-derived
value is printed through `cell()` / `safe_text`: titles and messages carry attacker text.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from logly.clikit import ConfigOpt, DbOpt, JsonOpt, _cell, _ctx, _table, when
from logly.errors import ExitCode, LoglyError, UsageError
from logly.plaintext import safe_text
from logly.timespec import parse_time
from logly.tracer.classify import SEVERITIES

_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan",
          "info": "dim"}


class TraceNotFound(LoglyError):
    exit_code = ExitCode.NOT_FOUND


def _sev(value: str) -> Text:
    return Text(safe_text(value), style=_STYLE.get(value, ""))


def register(app: typer.Typer) -> None:
    @app.command()
    def traces(
        severity: Annotated[str, typer.Option(
            "--severity", help="This level and worse: info, low, medium, high, critical.")]
        = "low",
        since: Annotated[str | None, typer.Option(
            help="Active since: 24h, 7d, 2026-11-20, ISO.")] = None,
        until: Annotated[str | None, typer.Option(help="Started before, same forms.")] = None,
        ip: Annotated[str | None, typer.Option("--ip", help="Remote address.")] = None,
        user: Annotated[str | None, typer.Option(help="User name.")] = None,
        source: Annotated[str | None, typer.Option(
            help="Detector: address, user-attack, login, privilege, account, errors, "
                 "context.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
        as_json: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """List traces (correlated incidents), newest first; 'info' context traces are hidden
        unless asked for with --severity info.

        Example: logly traces --severity high --since 24h
        Example: logly traces --json --severity critical
        """
        from logly.tracer.trace_queries import list_traces

        ctx = _ctx(db, config)
        if severity not in SEVERITIES:
            raise UsageError(f"unknown severity {severity!r}",
                             hint="one of: " + ", ".join(SEVERITIES))
        if ip is not None:
            from logly.parsers.addresses import normalize_ip

            norm = normalize_ip(ip)
            if norm is None:
                raise UsageError(f"not an IP address: {ip!r}")
            ip = norm
        rows = list_traces(
            ctx.store(), severity=severity, since=parse_time(since) if since else None,
            until=parse_time(until) if until else None, ip=ip, user=user, source=source,
            limit=limit)
        if as_json:
            ctx.print_json(rows)
            return
        t = _table("id", "severity", "address", "user", "host", "first (UTC)", "last (UTC)",
                   "events", "title")
        for r in rows:
            t.add_row(str(r["id"]), _sev(r["severity"]), _cell(r["ip_address"]),
                      _cell(r["user"]), _cell(r["host"]), when(r["first_seen"]),
                      when(r["last_seen"]), f"{r['event_count']:,}", _cell(r["title"]))
        ctx.out.print(t)

    @app.command()
    def trace(
        trace_id: Annotated[int, typer.Argument(metavar="ID", help="Trace id (from `logly "
                                                "traces`).")],
        as_json: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """One trace's story: its steps, the events event by event, related services, process
        and network context, the error classes with their root cause, and what to do next.

        Example: logly trace 42
        Example: logly trace 42 --json
        """
        from logly.tracer.trace_queries import describe_step, get_trace

        ctx = _ctx(db, config)
        tr = get_trace(ctx.store(), trace_id)
        if tr is None:
            raise TraceNotFound(f"no trace {trace_id}", hint="list them with `logly traces`")
        if as_json:
            ctx.print_json(tr)
            return
        out = ctx.out
        out.print(Text(f"Trace {tr['id']}: ") + _sev(tr["severity"]) + Text(" ")
                  + _cell(tr["title"]))
        out.print(Text(f"{when(tr['first_seen'])} -> {when(tr['last_seen'])} UTC, "
                       f"{tr['event_count']:,} events, {tr['status']}; address ")
                  + _cell(tr["ip_address"] or "-") + Text(", user ") + _cell(tr["user"] or "-")
                  + Text(", host ") + _cell(tr["host"] or "-"))
        if tr["services"]:
            out.print(Text("Services: ") + _cell(", ".join(tr["services"])))
        if tr["reputation"]:
            rep = tr["reputation"]
            out.print(Text(f"Reputation: score {rep['score']}, ") + _cell(rep["verdict"]))
        if tr["steps"]:
            st = _table("#", "at (UTC)", "step", "severity", "event", "what",
                        title="Causality")
            for i, s in enumerate(tr["steps"], 1):
                st.add_row(str(i), when(s.get("at"), ""), _cell(s.get("pattern") or s.get("kind")),
                           _sev(str(s.get("severity") or "")), str(s.get("event_id") or ""),
                           _cell(describe_step(s)))
            out.print(st)
        ev = _table("id", "time (UTC)", "program", "action", "ip", "user", "message",
                    title="Events")
        for e in tr["events"]:
            ev.add_row(str(e["id"]), when(e["timestamp"]), _cell(e["program"]),
                       _cell(e["action"]), _cell(e["ip_address"]), _cell(e["user"]),
                       _cell(e["message"]))
        out.print(ev)
        if tr["more_events"]:
            out.print(Text(f"... and {tr['more_events']:,} more events"))
        if tr["processes"]:
            from logly.tracer.procfs import exit_text

            pt = _table("pid", "ppid", "uid", "container", "exe", "ended", "cmdline",
                        title="Processes")
            for p in tr["processes"]:
                pt.add_row(_cell(p["pid"]), _cell(p["ppid"]), _cell(p["uid"]),
                           _cell(p["container"]), _cell(p["exe"] or p["comm"]),
                           _cell(exit_text(p["exit_code"]) if p["exit"] else None),
                           _cell(p["cmdline"]))
            out.print(pt)
        if tr["syscalls"]:
            sc = _table("pid", "failed syscalls", "slow", title="Syscalls")
            for x in tr["syscalls"]:
                failed = x.get("failed") or {}
                failed_text = ", ".join(f"{k} x{v}" for k, v in failed.items()) \
                    if isinstance(failed, dict) else str(failed)
                sc.add_row(_cell(x.get("pid")), _cell(failed_text or x.get("raw", "")),
                           _cell(len(x.get("slow") or [])))
            out.print(sc)
        if tr["connections"]:
            ct = _table("pid", "local", "remote", "bytes sent / received", "states",
                        title="Connections")
            for c in tr["connections"]:
                moved = None if c["bytes_sent"] is None and c["bytes_recv"] is None else \
                    f"{c['bytes_sent'] or 0:,} / {c['bytes_recv'] or 0:,}"
                ct.add_row(_cell(c["pid"]), _cell(f"{c['local_address']}:{c['local_port']}"),
                           _cell(f"{c['remote_address']}:{c['remote_port']}"),
                           _cell(moved), _cell(c["states"]))
            out.print(ct)
        if tr["errors"]:
            et = _table("time (UTC)", "type", "category", "severity", "file/code", "hint",
                        title="Errors")
            for x in tr["errors"]:
                where = x["file"] or ""
                if x["line_no"]:
                    where += f":{x['line_no']}"
                if x["code"]:
                    where = f"{where} {x['code']}".strip()
                et.add_row(when(x["timestamp"]), _cell(x["error_type"]), _cell(x["category"]),
                           _sev(x["severity"]), _cell(where), _cell(x["hints"]))
            out.print(et)
        if tr["root_cause"]:
            out.print(Text("Root cause:"))
            for line in tr["root_cause"]:
                out.print(Text("  - ") + _cell(line))
        if tr["next_steps"]:
            out.print(Text("What to do next:"))
            for line in tr["next_steps"]:
                out.print(Text("  - ") + _cell(line))
