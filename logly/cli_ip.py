"""`logly ip ADDR|CIDR` and `logly ips`: thin commands over logly.tracer.reputation_query.

`register(app)` adds them to the main typer app (logly/cli.py calls it). Exit codes: 0 the
address or network is known, 1 never seen (ExitCode.NOT_FOUND), 2 not an address. User names,
messages and program names come from attackers: every such value goes through `cell()`, and
JSON is printed ASCII-escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from logly.clikit import ConfigOpt, Context, DbOpt, JsonOpt, _cell, _ctx, _table, when
from logly.errors import ExitCode, LoglyError, UsageError


class NotSeen(LoglyError):
    exit_code = ExitCode.NOT_FOUND


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


def register(app: typer.Typer) -> None:
    @app.command("ip")
    def ip_cmd(
        address: Annotated[str | None, typer.Argument(
            help="An address (203.0.113.7, 2001:db8::1) or a network (203.0.113.0/24, "
                 "2001:db8:1:2::/64).", show_default=False)] = None,
        recompute: Annotated[bool, typer.Option(
            "--recompute", help="Rebuild the score from the stored events first; without "
            "ADDR, rebuild the whole reputation table.")] = False,
        events: Annotated[int, typer.Option("--events", min=0,
                                            help="Recent events to show.")] = 10,
        as_json: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """How dangerous an address is and why: score 0-100 and verdict, the evidence behind
        every point, first/last seen, attempts by action, users tried, ports, bans,
        country/city/ASN, blocklists, recent events and traces. A network sums its hosts.
        Exit code 0 known, 1 never seen, 2 not an address.

        Example: logly ip 203.0.113.7
        Example: logly ip 2001:db8:44::/64 --json
        Example: logly ip --recompute
        """
        from logly.tracer.reputation import Reputation, load_for_cli
        from logly.tracer.reputation_jobs import recompute as recompute_all
        from logly.tracer.reputation_jobs import recompute_addresses
        from logly.tracer.reputation_query import ip_report, parse_target

        ctx = _ctx(db, config)
        if address is None:
            if not recompute:
                raise UsageError("give an ADDRESS or network, or --recompute",
                                 hint="e.g. logly ip 203.0.113.7")
            store = ctx.store()
            store.init()  # the reputation columns come with schema version 4
            res = recompute_all(store, Reputation.from_config(ctx.config))
            if as_json:
                ctx.print_json(res.to_dict())
            else:
                ctx.out.print(Text(
                    f"Recomputed {res.addresses:,} addresses from {res.events:,} events in "
                    f"{res.seconds:,.1f} s; {res.changed:,} rows differed from the "
                    "incrementally kept table"))
            return
        target = parse_target(address)
        store = ctx.store()
        if recompute:
            store.init()
            rep = Reputation.from_config(ctx.config)
            hosts = [target.text] if target.is_host else _hosts_in(store, target)
            if not target.is_host and target.network and target.network.version == 6 \
                    and target.network.prefixlen == 64:
                hosts.append(target.text)
            res = recompute_addresses(store, rep, hosts)
            ctx.err.print(Text(f"recomputed {res.addresses:,} rows from {res.events:,} "
                               f"events; {res.changed:,} changed"))
        else:
            rep = load_for_cli(ctx.config)
        report = ip_report(store, rep, target, _now(), recent=events)
        if report is None:
            raise NotSeen(f"{target.text} was never seen in this database")
        if as_json:
            ctx.print_json(report)
            return
        _print_report(ctx, report)

    @app.command("ips")
    def ips_cmd(
        top: Annotated[int, typer.Option("--top", min=1, help="How many addresses.")] = 20,
        since: Annotated[str | None, typer.Option(
            help="Only addresses seen since: 24h, 7d, 2026-11-20, ISO.")] = None,
        as_json: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """The worst addresses by current score (decayed since their last attack). An IPv6
        /64 is listed as one row when several of its addresses were seen.

        Example: logly ips --top 20 --since 7d
        Example: logly ips --json
        """
        from logly.timespec import parse_time
        from logly.tracer.reputation import load_for_cli
        from logly.tracer.reputation_query import top as top_rows

        ctx = _ctx(db, config)
        now = _now()
        start = parse_time(since, now) if since else None
        rows = top_rows(ctx.store(), load_for_cli(ctx.config), top, start, now)
        if as_json:
            ctx.print_json(rows)
            return
        t = _table("address", "score", "verdict", "attempts", "users", "events", "last seen",
                   "country", "ASN", "blocklists", title="Addresses by reputation")
        for r in rows:
            asn = f"AS{r['asn']} {r['org'] or ''}".strip() if r["asn"] else ""
            t.add_row(_cell(r["address"]), _fmt(r["score"]), r["verdict"],
                      f"{r['attempts']:,}", f"{r['users']:,}", f"{r['events']:,}",
                      when(r["last_seen"]), _cell(r["country"]), _cell(asn),
                      _cell(", ".join(r["blocklists"])))
        ctx.out.print(t)


def _hosts_in(store: Any, target: Any) -> list[str]:
    """Every address inside a network that has a reputation row or events (for --recompute)."""
    from logly.tracer.reputation_query import members_in

    with store.engine.connect() as conn:
        return [m["address"] for m in members_in(conn, target.network)]


def _print_report(ctx: Context, r: dict[str, Any]) -> None:
    out = ctx.out
    head = Text()
    head.append_text(_cell(r["address"]))
    head.stylize("bold")
    if r["score"] is None:
        head.append("  not scored")
    else:
        head.append(f"  score {_fmt(r['score'])}/100")
        if r["base_score"] != r["score"]:
            head.append(f" ({_fmt(r['base_score'])} before decay)")
    head.append(f"  {r['verdict']}", style="bold red" if r["verdict"] == "malicious" else "")
    out.print(head)
    if r.get("note"):
        out.print(Text(r["note"]))
    out.print(Text(f"first seen {when(r['first_seen'])}  last seen {when(r['last_seen'])}  "
                   f"last attack {when(r['last_attack'])}  (UTC)  "
                   f"{r.get('events_total', 0):,} events"))
    if r["evidence"]:
        t = _table("points", "evidence", title="Why this score")
        for e in r["evidence"]:
            pts = e["points"]
            t.add_row(f"{pts:+.1f}" if abs(pts) >= 0.05 or pts == 0 else f"{pts:+.2f}",
                      _cell(e["text"]))
        out.print(t)
    facts = _table("", "", title=None)
    facts.show_header = False
    geo, asn = r.get("geo") or {}, r.get("asn") or {}
    if geo:
        facts.add_row("location", _cell(", ".join(str(v) for v in (
            geo.get("city"), geo.get("country"), geo.get("country_code")) if v)))
    if asn:
        facts.add_row("ASN", _cell(f"AS{asn.get('asn')} {asn.get('org') or ''}"))
    facts.add_row("blocklists", _cell(", ".join(r["blocklists"]) or "none"))
    if r["users"]:
        shown = list(r["users"].items())[:15]
        more = r["users_total"] - len(shown)
        facts.add_row("users tried", _cell(", ".join(f"{u} ({n})" for u, n in shown)
                                           + (f" and {more:,} more" if more > 0 else "")))
    if r["logins"]:
        facts.add_row("logins", _cell(", ".join(f"{u} ({n})" for u, n in r["logins"].items())))
    if r["ports"]:
        ports = list(r["ports"].items())
        facts.add_row("ports", _cell(", ".join(f"{p} ({n})" for p, n in ports[:20])
                                     + (f" and {len(ports) - 20} more" if len(ports) > 20
                                        else "")))
    bans = r["bans"]
    if bans["count"]:
        facts.add_row("bans", _cell(f"{bans['count']}: " + ", ".join(
            f"{when(b['timestamp'])} {b['jail']}" for b in bans["recent"])))
    if r.get("network"):
        n = r["network"]
        facts.add_row("/64", _cell(f"{n['address']}: score {_fmt(n['score'])}, "
                                   f"{n['members'] or 0} addresses"))
    out.print(facts)
    if r["counts"]:
        t = _table("action", "count", title="Attempts by action")
        for action, n in r["counts"].items():
            t.add_row(_cell(action), f"{n:,}")
        out.print(t)
    if r.get("members"):
        t = _table("address", "score", "verdict", "last seen", title="Addresses in network")
        for m in r["members"][:20]:
            t.add_row(_cell(m["address"]), _fmt(m["score"]), _cell(m["verdict"]),
                      when(m["last_seen"]))
        out.print(t)
    if r["events"]:
        t = _table("id", "time (UTC)", "program", "action", "user", "message",
                   title="Recent events")
        for e in r["events"]:
            t.add_row(str(e["id"]), when(e["timestamp"]), _cell(e["program"]),
                      _cell(e["action"]), _cell(e["user"]), _cell(e["message"]))
        out.print(t)
    if r["traces"]:
        t = _table("id", "severity", "last seen", "events", "title", title="Traces")
        for tr in r["traces"]:
            t.add_row(str(tr["id"]), _cell(tr["severity"]), when(tr["last_seen"]),
                      f"{tr['event_count']:,}", _cell(tr["title"]))
        out.print(t)
