"""The `logly` command: options in, one library call, a table or `--json` out.

Errors are typed (logly.errors) and mapped to exit codes in `main`; `--traceback` shows the
stack. Log content is attacker-controlled, so every value printed to a terminal goes through
`safe_text` and is rendered as plain `Text`, never as rich markup.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from logly.clikit import ConfigOpt, Context, DbOpt, JsonOpt, _cell, _ctx, _table, when
from logly.errors import ExitCode, LoglyError, UsageError
from logly.plaintext import safe_text
from logly.timespec import parse_time

app = typer.Typer(
    help="Logly: security event tracer and log correlation for Linux servers.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
rules_app = typer.Typer(help="Inspect and test the parsing rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


# ---- init --------------------------------------------------------------------------------------
@app.command()
def init(db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Create the database, or upgrade its schema; safe to run again.

    Example: logly init --db /tmp/logly.db
    """
    ctx = _ctx(db, config)
    version = ctx.store(must_exist=False).init()
    ctx.out.print(Text(f"Database ready: {ctx.config.db} (schema version {version})"))


# ---- ingest ------------------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[list[str] | None, typer.Argument(
        help="Log files (.gz too), or - for stdin.", show_default=False)] = None,
    journal: Annotated[bool, typer.Option(
        "--journal", help="Read the system journal (auth-relevant entries).")] = False,
    journal_file: Annotated[list[str] | None, typer.Option(
        "--journal-file", help="Read a journal file (repeatable).")] = None,
    journal_dir: Annotated[str | None, typer.Option(
        "--journal-dir", help="Read the journal files in this directory.")] = None,
    match: Annotated[list[str] | None, typer.Option(
        "--match", help="Journal FIELD=VALUE filter (repeatable, OR); default: sshd, sudo, "
        "su, PAM, account tools, auth facilities, kernel.")] = None,
    since: Annotated[str | None, typer.Option(help="Journal: entries since (journalctl "
                                              "time, e.g. 2026-11-20).")] = None,
    until: Annotated[str | None, typer.Option(help="Journal: entries until.")] = None,
    year: Annotated[int | None, typer.Option(help="Year for year-less syslog times "
                                             "(default: from the file's mtime).")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="Zone of times without one "
                                           "(default: this machine's).")] = None,
    no_enrich: Annotated[bool, typer.Option(
        "--no-enrich", help="Store events only: no reputation, error classes or traces "
        "(a fast bulk load; `logly ip --recompute` scores later).")] = False,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, max=64, help="Parser processes for a large file (default: one "
        "per CPU beside the writer's, up to 4).", show_default=False)] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Parse log files into the database; running it again stores nothing twice.

    The format is detected per line: syslog (RFC 3164, ISO, RFC 5424), fail2ban.log, or
    NDJSON events. Lines that cannot be parsed are counted and kept for `logly rules test
    --unparsed`.

    Example: logly ingest /var/log/auth.log /var/log/auth.log.2.gz /var/log/fail2ban.log
    Example: journalctl -o short-iso -u ssh | logly ingest -
    Example: logly ingest --journal --since 2026-11-20 --until 2026-11-21
    """
    from logly.ingest import ingest_input
    from logly.sources.files import open_input

    ctx = _ctx(db, config)
    use_journal = journal or bool(journal_file) or journal_dir is not None
    if not paths and not use_journal:
        raise UsageError("nothing to read", hint="give PATH..., -, --journal or "
                         "--journal-file FILE")
    paths = paths or []
    if tz:
        ctx.config.timezone = tz
    tzinfo = ctx.config.tzinfo()
    store = ctx.store(must_exist=False)
    store.init()
    rules = ctx.rules()
    from logly.tracer.stages import build_hooks

    hooks = [] if no_enrich else build_hooks(ctx.config)
    summaries = []
    failed = False
    for path in paths:
        try:
            inp = open_input(path)
        except OSError as exc:
            ctx.err.print(Text(f"logly: {path}: {exc.strerror or exc}"))
            failed = True
            continue
        try:
            with _progress(ctx, inp) as advance:
                s = ingest_input(store, rules, inp, tz=tzinfo, year=year, progress=advance,
                                 batch_lines=ctx.config.batch_lines,
                                 batch_seconds=ctx.config.batch_seconds, hooks=hooks,
                                 jobs=jobs)
        finally:
            inp.close()
        summaries.append(s)
    if use_journal:
        summaries.append(_ingest_journal(ctx, store, rules, journal_file or [], journal_dir,
                                         match, since, until, hooks))
    if as_json:
        ctx.print_json([s.to_dict() for s in summaries])
    else:
        table = _table("input", "lines", "events", "matched", "unparsed", "lines/s",
                       title="Ingested")
        for s in summaries:
            table.add_row(_cell(s.path), f"{s.lines:,}", f"{s.events:,}", f"{s.matched:,}",
                          f"{s.unparsed:,}", f"{s.lines_per_second:,.0f}")
        ctx.out.print(table)
        for s in summaries:
            if s.skipped_bytes:
                ctx.out.print(Text(f"{safe_text(s.path)}: resumed after {s.skipped_bytes:,} "
                                   "bytes already stored"))
            if s.invalid_utf8 or s.truncated:
                ctx.out.print(Text(f"{safe_text(s.path)}: {s.invalid_utf8} lines with invalid "
                                   f"UTF-8, {s.truncated} over-long lines cut"))
    if failed:
        raise typer.Exit(ExitCode.ERROR)


def _ingest_journal(ctx: Context, store: Any, rules: Any, files: list[str],
                    directory: str | None, match: list[str] | None, since: str | None,
                    until: str | None, hooks: list[Any]) -> Any:
    from logly.sources.journal import (
        DEFAULT_MATCHES,
        JournalQuery,
        JournalUnavailable,
        ingest_journal,
    )

    query = JournalQuery(matches=list(match or DEFAULT_MATCHES), files=list(files),
                         directory=directory, since=since, until=until)
    try:
        return ingest_journal(store, rules, query, batch_lines=ctx.config.batch_lines,
                              hooks=hooks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except JournalUnavailable as exc:
        raise LoglyError(f"cannot read the journal: {exc}",
                         hint="run as root or in group systemd-journal/adm") from None


class _progress:
    """A progress bar on stderr when it is a terminal; a no-op callback otherwise."""

    def __init__(self, ctx: Context, inp: Any) -> None:
        self.ctx, self.inp, self.bar = ctx, inp, None

    def __enter__(self) -> Any:
        if not self.ctx.err.is_terminal:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                            DownloadColumn(), TimeRemainingColumn(), console=self.ctx.err,
                            transient=True)
        self.bar.start()
        task = self.bar.add_task(Text(safe_text(self.inp.path)).plain.replace("[", r"\["),
                                 total=self.inp.size if self.inp.kind == "file" else None)
        return lambda n: self.bar.advance(task, n)  # type: ignore[union-attr]

    def __exit__(self, *_: Any) -> None:
        if self.bar:
            self.bar.stop()


# ---- events ------------------------------------------------------------------------------------
@app.command()
def events(
    since: Annotated[str | None, typer.Option(help="Start: 24h, 7d, 2026-11-20, ISO.")] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive), same forms.")] = None,
    source: Annotated[str | None, typer.Option(help="syslog, fail2ban, ndjson, ...")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. auth_failure, invalid_user.")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="Remote address.")] = None,
    user: Annotated[str | None, typer.Option(help="User name.")] = None,
    program: Annotated[str | None, typer.Option(help="Program, e.g. sshd.")] = None,
    level: Annotated[str | None, typer.Option(help="Level, e.g. warning.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List stored events, newest first.

    Example: logly events --since 24h --action auth_failure --ip 203.0.113.7 --json
    """
    from logly.parsers.addresses import normalize_ip

    ctx = _ctx(db, config)
    if ip is not None:
        norm = normalize_ip(ip)
        if norm is None:
            raise UsageError(f"not an IP address: {ip!r}")
        ip = norm
    if action is not None:
        from logly.events import ACTIONS

        if action not in ACTIONS:
            raise UsageError(f"unknown action {action!r}",
                             hint="one of: " + ", ".join(sorted(ACTIONS)))
    rows = ctx.store().get_log_events(
        start=parse_time(since) if since else None, end=parse_time(until) if until else None,
        source=source, level=level, ip=ip, user=user, action=action, limit=limit,
        program=program,
    )
    if as_json:
        ctx.print_json(rows)
        return
    table = _table("id", "time (UTC)", "host", "program", "action", "ip", "user", "message")
    for r in rows:
        table.add_row(str(r["id"]), when(r["timestamp"]), _cell(r["host"]),
                      _cell(r["program"]), _cell(r["action"]), _cell(r["ip_address"]),
                      _cell(r["user"]), _cell(r["message"]))
    ctx.out.print(table)


# ---- stats -------------------------------------------------------------------------------------
@app.command()
def stats(as_json: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Rows per table, database size, and per input: offset, lines, events, unparsed.

    Example: logly stats --json
    """
    ctx = _ctx(db, config)
    data = ctx.store().get_stats()
    if as_json:
        ctx.print_json(data)
        return
    ctx.out.print(Text(f"Database {data['database']}: schema {data['schema_version']}, "
                       f"{data['size_bytes'] / 1e6:,.1f} MB, {data['unparsed']:,} unparsed lines"))
    t = _table("table", "rows", title="Tables")
    for name, n in data["rows"].items():
        t.add_row(name, f"{n:,}")
    ctx.out.print(t)
    s = _table("input", "kind", "offset", "lines", "events", "unparsed", "updated",
               title="Inputs")
    for src in data["sources"]:
        s.add_row(_cell(src["path"]), src["kind"], f"{src['offset']:,}", f"{src['lines']:,}",
                  f"{src['events']:,}", f"{src['unparsed']:,}", src["updated"][:19])
    ctx.out.print(s)
    d = data.get("daemon")
    if d:
        state = f"error: {d['error']}" if d.get("error") else "ok"
        ctx.out.print(Text(f"Daemon pid {d['pid']} ({state}), status at {d['updated'][:19]}Z: "
                           f"{d['events_per_min']:,} events/min"))
        tr = d.get("tracer") or {}
        if tr:
            why = f" ({safe_text(tr['reason'])})" if tr.get("reason") else ""
            missed = sum(n or 0 for n in (tr.get("missed_runs") or {}).values())
            ctx.out.print(Text(f"Tracer: {tr['mode']}{why}, "
                               f"{sum((tr.get('events') or {}).values()):,} kernel events, "
                               f"{sum((tr.get('lost') or {}).values()):,} lost"
                               + (f", {missed:,} probe runs skipped (nested)" if missed else "")))
        for stage, n in (d.get("enrich_failures") or {}).items():
            ctx.out.print(Text(f"Enrichment stage {safe_text(stage)} failed on {n:,} batches "
                               "(events stored without it; see the daemon's log)"))
        t = _table("followed file", "lag (bytes)", "pending", "events", "invalid UTF-8",
                   "cut", title="Following")
        for f in d["files"]:
            t.add_row(_cell(f["path"]), f"{f['lag_bytes']:,}", f"{f['pending']:,}",
                      f"{f['events']:,}", f"{f['invalid_utf8']:,}" if "invalid_utf8" in f else "-",
                      f"{f['truncated']:,}" if "truncated" in f else "-")
        ctx.out.print(t)


# ---- daemon ------------------------------------------------------------------------------------
@app.command()
def daemon(
    follow: Annotated[list[str] | None, typer.Option(
        "--follow", help="PATH[:TYPE] to follow (repeatable; globs allowed); replaces the "
        "config's [[source]] list. TYPE: auto, syslog, auth, fail2ban, ndjson.")] = None,
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Read files seen for the first time from their beginning "
        "(default: from their end).")] = False,
    no_tracer: Annotated[bool, typer.Option("--no-tracer", help="Do not start the kernel "
                                            "tracer.")] = False,
    no_scheduler: Annotated[bool, typer.Option(
        "--no-scheduler", help="Do not run aggregates, metrics and retention in the "
        "background (e.g. when cron runs `logly cleanup`).")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Follow logs as they grow and store their events (the systemd service runs this).

    Survives rotation (rename+create, copytruncate, compression) and SIGKILL without losing or
    repeating a line. SIGTERM flushes and stops; SIGHUP reloads the config and the rules.

    Example: logly daemon --follow /var/log/auth.log --follow '/var/log/fail2ban.log*:fail2ban'
    """
    from logly.config import SourceSpec
    from logly.daemon import DaemonOptions, run_daemon

    ctx = _ctx(db, config)  # validates the configuration before anything starts
    opts = DaemonOptions(config_path=config, db=ctx.config.db,
                         follow=[SourceSpec.parse(f) for f in follow or []],
                         from_start=from_start, tracer=not no_tracer,
                         scheduler=not no_scheduler)
    raise typer.Exit(run_daemon(opts))


# ---- rules -------------------------------------------------------------------------------------
@rules_app.command("test")
def rules_test(
    file: Annotated[str | None, typer.Argument(help="A log file, or - for stdin.")] = None,
    unparsed: Annotated[bool, typer.Option("--unparsed", help="Test the lines the database "
                                           "kept as unparsed instead of a file.")] = False,
    unmatched: Annotated[bool, typer.Option("--unmatched",
                                            help="Show only lines no rule matched.")] = False,
    rules_dir: Annotated[list[Path] | None, typer.Option(
        "--rules-dir", help="Also load rules from this directory (repeatable).")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="Zone of times without one.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many lines.")] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show, line by line, which rule matched and what it extracted (like fail2ban-regex).

    Example: logly rules test /var/log/auth.log --unmatched
    Example: logly rules test --unparsed
    """
    from logly.rulestest import test_lines

    ctx = _ctx(db, config)
    if tz:
        ctx.config.timezone = tz
    if rules_dir:
        ctx.config.rules_dirs.extend(rules_dir)
    if unparsed == (file is not None):
        raise UsageError("give a FILE or --unparsed (one of them)")
    report = test_lines(ctx, file, from_db=unparsed, limit=limit)
    rows = [r for r in report.rows if not (unmatched and r["rule"])]
    if as_json:
        ctx.print_json(rows)
        return
    table = _table("line", "rule", "action", "ip", "user", "port", "text")
    for r in rows:
        table.add_row(str(r["line"]), _cell(r["rule"] or r["reason"] or "-"),
                      _cell(r["action"]), _cell(r["ip_address"]), _cell(r["user"]),
                      _cell(r["port"]), _cell(r["text"][:160]))
    ctx.out.print(table)
    ctx.out.print(Text(
        f"{report.lines:,} lines: {report.matched:,} matched a rule, {report.other:,} parsed "
        f"without a rule, {report.unparsed:,} unparsed"))
    for name, n in sorted(report.per_rule.items(), key=lambda kv: -kv[1]):
        ctx.out.print(Text(f"  {n:>8,}  {name}"))


@rules_app.command("list")
def rules_list(as_json: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """List the loaded rules: name, action, programs and patterns.

    Example: logly rules list --json
    """
    ctx = _ctx(db, config)
    rs = ctx.rules()
    rows = [
        {"rule": r.name, "action": r.action, "level": r.level, "file": r.file,
         "programs": f.programs, "patterns": [p.source for p in r.patterns]}
        for f in rs.files for r in f.rules
    ]
    if as_json:
        ctx.print_json(rows)
        return
    table = _table("rule", "action", "programs", "patterns")
    for r in rows:
        table.add_row(r["rule"], r["action"], ", ".join(r["programs"]), str(len(r["patterns"])))
    ctx.out.print(table)


# Later stages keep their commands in their own modules; each adds itself to `app`.
def _register_stages() -> None:
    from logly import cli_ip, cli_report, cli_traces

    for module in (cli_ip, cli_report, cli_traces):
        module.register(app)


_register_stages()


@app.callback()
def _root(
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the stack on errors.")]
    = False,
) -> None:
    if traceback:
        _state["traceback"] = True


_state: dict[str, bool] = {"traceback": False}


def main(argv: list[str] | None = None) -> int:
    """What the console script runs (logly/cli_entry.py: `logly ip`/`ips` without typer)."""
    from logly.cli_entry import main as entry

    return entry(argv)


def typer_main(argv: list[str] | None = None) -> int:
    """The typer app, with Logly's errors and exit codes (for what `cli_ip.run` leaves)."""
    err = Console(stderr=True, highlight=False)
    try:
        app(args=argv, prog_name="logly")
    except SystemExit as exc:  # typer exits with click's codes: 0, 2 for usage, 130 for ^C
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.ERROR)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        return ExitCode.INTERRUPTED
    except LoglyError as exc:
        if _state["traceback"]:
            raise
        err.print(Text(f"logly: {exc}"))
        if exc.hint:
            err.print(Text(f"hint: {exc.hint}"))
        return exc.exit_code
    return ExitCode.OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
