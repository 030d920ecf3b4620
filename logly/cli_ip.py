"""`logly ip ADDR|CIDR` and `logly ips`: thin commands over logly.tracer.reputation_query.

Two ways in, one way through. `run(argv)` takes `logly ip ADDR [--json] [--events N]` and
`logly ips [--top N] [--since WHEN] [--json]` (with --db/--config) in a process that loads
neither typer, rich nor SQLAlchemy: the `logly` console script (logly/cli_entry.py) and
`logly.cli.main` try it first, because a new process must answer in 50 ms on 10M events and
those imports alone take most of a second. What it does not take on (--help, --recompute, a
bad option value) goes to the typer commands that `register(app)` adds; they parse the same
options and call the same `show_ip` / `show_ips`. Tables and JSON come from logly/plaintext.py.

Exit codes: 0 the address or network is known, 1 never seen (ExitCode.NOT_FOUND), 2 not an
address. User names, messages and program names come from attackers: every table cell goes
through `safe_text`, and JSON is printed ASCII-escaped.
"""

# No `from __future__ import annotations`: typer reads the option annotations of the commands
# `register` defines, and those name typer, which is imported there and not at module level.
# The other annotations are strings: typing, pathlib and dataclasses stay unloaded on the fast
# path (logly/configread.py).
import sys
from datetime import UTC, datetime

from logly.errors import ExitCode, LoglyError, UsageError
from logly.plaintext import Table, json_line, lines, safe_text, when, width_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any

    import typer

    from logly.config import Config
    from logly.configread import RawConfig
    from logly.tracer.reputation import Reputation


class NotSeen(LoglyError):
    exit_code = ExitCode.NOT_FOUND


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


# ---- the commands, whichever way they came in ---------------------------------------------
def show_ip(config: "Config | RawConfig", address: str, *, events: int = 10,
            as_json: bool = False, out: "IO[str] | None" = None,
            rep: "Reputation | None" = None) -> None:
    """Print what is known about an address or network; NotSeen or UsageError otherwise."""
    from logly.tracer.reputation import load_for_cli
    from logly.tracer.reputation_query import connect, ip_report, parse_target

    out = out or sys.stdout
    target = parse_target(address)
    conn = connect(config.db)
    try:
        report = ip_report(conn, rep or load_for_cli(config), target, _now(), recent=events)
    finally:
        conn.close()
    if report is None:
        raise NotSeen(f"{target.text} was never seen in this database")
    out.write(json_line(report) if as_json else render_report(report, width_of(out)))


def show_ips(config: "Config | RawConfig", top: int = 20, since: str | None = None, *,
             as_json: bool = False, out: "IO[str] | None" = None) -> None:
    """Print the worst addresses by current score, seen since `since` (24h, 7d, ISO)."""
    from logly.timespec import parse_time
    from logly.tracer.reputation import load_for_cli
    from logly.tracer.reputation_query import connect
    from logly.tracer.reputation_query import top as top_rows

    out = out or sys.stdout
    now = _now()
    start = parse_time(since, now) if since else None
    conn = connect(config.db)
    try:
        rows = top_rows(conn, load_for_cli(config), top, start, now)
    finally:
        conn.close()
    if as_json:
        out.write(json_line(rows))
        return
    t = Table("address", "score", "verdict", "attempts", "users", "events", "last seen",
              "country", "ASN", "blocklists", title="Addresses by reputation")
    for r in rows:
        asn = f"AS{r['asn']} {r['org'] or ''}".strip() if r["asn"] else ""
        t.add_row(r["address"], _fmt(r["score"]), r["verdict"], f"{r['attempts']:,}",
                  f"{r['users']:,}", f"{r['events']:,}", when(r["last_seen"]), r["country"],
                  asn, ", ".join(r["blocklists"]))
    out.write(t.render(width_of(out)))


# ---- the fast way in: argv, no typer ------------------------------------------------------
_VALUED = {"ip": ("--db", "--config", "--events"), "ips": ("--db", "--config", "--top", "--since")}
_MINIMUM = {"--events": 0, "--top": 1}


def parse_argv(argv: "Sequence[str]") -> "tuple[str, dict[str, Any]] | None":
    """(command, options) for the forms `run` answers, None for anything else: another
    command, --help, --recompute, an option before the command, a value typer would refuse
    (typer then says what is wrong, as for every command)."""
    if not argv or argv[0] not in _VALUED:
        return None
    cmd, valued = argv[0], _VALUED[argv[0]]
    opts: dict[str, Any] = {"--json": False, "--db": None, "--config": None,
                            "--events": 10, "--top": 20, "--since": None}
    args: list[str] = []
    rest = list(argv[1:])
    while rest:
        tok = rest.pop(0)
        if tok == "--json":
            opts["--json"] = True
            continue
        name, eq, value = tok.partition("=")
        if name in valued:
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            if name in _MINIMUM:
                try:
                    number = int(value)
                except ValueError:
                    return None
                if number < _MINIMUM[name]:
                    return None
                opts[name] = number
            else:
                opts[name] = value
            continue
        if tok.startswith("-"):
            return None
        args.append(tok)
    if len(args) != (1 if cmd == "ip" else 0):
        return None
    opts["address"] = args[0] if args else None
    return cmd, opts


def run(argv: "Sequence[str]") -> int | None:
    """Answer `logly ip ...` / `logly ips ...` and return the exit code, or None when these
    arguments are for the typer app (see `parse_argv`)."""
    parsed = parse_argv(argv)
    if parsed is None:
        return None
    cmd, o = parsed
    from logly.configread import read_config

    try:
        # the config as logly.config.load_config(check_stages=False) reads it, without the
        # dataclasses: the [scheduler]/[report] tables are checked where they are used
        config = read_config(o["--config"])
        if o["--db"] is not None:
            config.db = o["--db"]
        if cmd == "ip":
            show_ip(config, o["address"], events=o["--events"], as_json=o["--json"])
        else:
            show_ips(config, o["--top"], o["--since"], as_json=o["--json"])
    except LoglyError as exc:
        sys.stderr.write(f"logly: {safe_text(str(exc))}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {safe_text(exc.hint)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return ExitCode.INTERRUPTED
    return ExitCode.OK


# ---- the typer commands (help, --recompute) -----------------------------------------------
def register(app: "typer.Typer") -> None:
    from typing import Annotated

    import typer
    from rich.text import Text

    from logly.clikit import ConfigOpt, DbOpt, JsonOpt, _ctx

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
        from logly.tracer.reputation import Reputation
        from logly.tracer.reputation_jobs import recompute as recompute_all
        from logly.tracer.reputation_jobs import recompute_addresses
        from logly.tracer.reputation_query import parse_target

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
        rep = None
        if recompute:
            target = parse_target(address)
            store = ctx.store()
            store.init()
            rep = Reputation.from_config(ctx.config)
            hosts = [target.text] if target.is_host else _hosts_in(store, target)
            if not target.is_host and target.network and target.network.version == 6 \
                    and target.network.prefixlen == 64:
                hosts.append(target.text)
            res = recompute_addresses(store, rep, hosts)
            ctx.err.print(Text(f"recomputed {res.addresses:,} rows from {res.events:,} "
                               f"events; {res.changed:,} changed"))
        show_ip(ctx.config, address, events=events, as_json=as_json, out=ctx.out.file,
                rep=rep)

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
        ctx = _ctx(db, config)
        show_ips(ctx.config, top, since, as_json=as_json, out=ctx.out.file)


def _hosts_in(store: "Any", target: "Any") -> list[str]:
    """Every address inside a network that has a reputation row or events (for --recompute)."""
    from logly.tracer.reputation_query import members_in, reading

    with reading(store) as conn:
        return [m["address"] for m in members_in(conn, target.network)]


# ---- the report as text -------------------------------------------------------------------
def render_report(r: "dict[str, Any]", width: int) -> str:
    """`ip_report`'s dict as the tables `logly ip` prints."""
    head = r["address"]
    if r["score"] is None:
        head += "  not scored"
    else:
        head += f"  score {_fmt(r['score'])}/100"
        if r["base_score"] != r["score"]:
            head += f" ({_fmt(r['base_score'])} before decay)"
    out = lines(head + f"  {r['verdict']}", width)
    if r.get("note"):
        out += lines(r["note"], width)
    out += lines(f"first seen {when(r['first_seen'])}  last seen {when(r['last_seen'])}  "
                 f"last attack {when(r['last_attack'])}  (UTC)  "
                 f"{r.get('events_total', 0):,} events", width)
    if r["evidence"]:
        t = Table("points", "evidence", title="Why this score")
        for e in r["evidence"]:
            pts = e["points"]
            t.add_row(f"{pts:+.1f}" if abs(pts) >= 0.05 or pts == 0 else f"{pts:+.2f}",
                      e["text"])
        out += t.render(width)
    facts = Table("", "")
    facts.show_header = False
    geo, asn = r.get("geo") or {}, r.get("asn") or {}
    if geo:
        facts.add_row("location", ", ".join(str(v) for v in (
            geo.get("city"), geo.get("country"), geo.get("country_code")) if v))
    if asn:
        facts.add_row("ASN", f"AS{asn.get('asn')} {asn.get('org') or ''}")
    facts.add_row("blocklists", ", ".join(r["blocklists"]) or "none")
    if r["users"]:
        shown = list(r["users"].items())[:15]
        more = r["users_total"] - len(shown)
        facts.add_row("users tried", ", ".join(f"{u} ({n})" for u, n in shown)
                      + (f" and {more:,} more" if more > 0 else ""))
    if r["logins"]:
        facts.add_row("logins", ", ".join(f"{u} ({n})" for u, n in r["logins"].items()))
    if r["ports"]:
        ports = list(r["ports"].items())
        facts.add_row("ports", ", ".join(f"{p} ({n})" for p, n in ports[:20])
                      + (f" and {len(ports) - 20} more" if len(ports) > 20 else ""))
    bans = r["bans"]
    if bans["count"]:
        facts.add_row("bans", f"{bans['count']}: " + ", ".join(
            f"{when(b['timestamp'])} {b['jail']}" for b in bans["recent"]))
    if r.get("network"):
        n = r["network"]
        facts.add_row("/64", f"{n['address']}: score {_fmt(n['score'])}, "
                             f"{n['members'] or 0} addresses")
    out += facts.render(width)
    if r["counts"]:
        t = Table("action", "count", title="Attempts by action")
        for action, n in r["counts"].items():
            t.add_row(action, f"{n:,}")
        out += t.render(width)
    if r.get("members"):
        t = Table("address", "score", "verdict", "last seen", title="Addresses in network")
        for m in r["members"][:20]:
            t.add_row(m["address"], _fmt(m["score"]), m["verdict"], when(m["last_seen"]))
        out += t.render(width)
    if r["events"]:
        t = Table("id", "time (UTC)", "program", "action", "user", "message",
                  title="Recent events")
        for e in r["events"]:
            t.add_row(e["id"], when(e["timestamp"]), e["program"], e["action"], e["user"],
                      e["message"])
        out += t.render(width)
    if r["traces"]:
        t = Table("id", "severity", "last seen", "events", "title", title="Traces")
        for tr in r["traces"]:
            t.add_row(tr["id"], tr["severity"], when(tr["last_seen"]),
                      f"{tr['event_count']:,}", tr["title"])
        out += t.render(width)
    return out
