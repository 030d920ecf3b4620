"""`logly report daily` and `logly cleanup`: thin commands over logly.report and retention.

`register(app)` adds them to the main typer app (logly/cli.py calls it). The SMTP password has
no flag on purpose: command lines are visible to every user in the process list.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer
from rich.text import Text

from logly.clikit import ConfigOpt, DbOpt, JsonOpt, _cell, _ctx, _table
from logly.errors import UsageError


def _parse_smtp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--smtp wants HOST:PORT, not {value!r}",
                         hint="e.g. --smtp mail.example.org:587")
    return host.strip("[]"), int(port)  # [::1]:25 works too


def register(app: typer.Typer) -> None:
    report_app = typer.Typer(help="Reports built from the database.", no_args_is_help=True)
    app.add_typer(report_app, name="report")

    @report_app.command("daily")
    def report_daily(
        day: Annotated[str | None, typer.Option(
            "--date", help="UTC day YYYY-MM-DD (default: yesterday).", show_default=False)]
        = None,
        fmt: Annotated[str, typer.Option("--format", help="text or html.")] = "text",
        email: Annotated[bool, typer.Option(
            "--email", help="Send text+HTML by mail ([smtp] in the config).")] = False,
        to: Annotated[list[str] | None, typer.Option(
            "--to", help="Recipient (repeatable); replaces [smtp] recipients.")] = None,
        smtp: Annotated[str | None, typer.Option(
            "--smtp", help="HOST:PORT; replaces [smtp] host and port.")] = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="With --email: print the whole message instead of sending.")]
        = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """One day's security summary: attempts and change, top attackers, logins (new
        address-for-user pairs flagged), sudo, account changes, traces, errors, bans, and
        attempts per hour. The SMTP password comes from [smtp] password_file or the
        LOGLY_SMTP_PASSWORD variable, never from a flag.

        Example: logly report daily --date 2026-11-20 --format html > report.html
        Example: logly report daily --email --to admin@example.org --smtp mail.example.org:587
        """
        from logly.report import build_message, build_report, render, send_message, yesterday
        from logly.scheduler import settings

        ctx = _ctx(db, config)
        if fmt not in ("text", "html"):
            raise UsageError(f"--format must be text or html, not {fmt!r}")
        try:
            when = date.fromisoformat(day) if day else yesterday()
        except ValueError:
            raise UsageError(f"cannot read date {day!r}", hint="use YYYY-MM-DD") from None
        feature = settings(ctx.config)
        report = build_report(ctx.store(), when, top=feature.report.top)
        if not email:
            ctx.out.file.write(render(report, fmt))
            return
        if to:
            feature.smtp.recipients = list(to)
        if smtp:
            feature.smtp.host, feature.smtp.port = _parse_smtp(smtp)
        msg = build_message(report, feature.smtp, feature.report)
        if dry_run:
            ctx.out.file.write(msg.as_string())
            return
        send_message(msg, feature.smtp)
        ctx.err.print(Text(f"Sent {msg['Subject']} to {', '.join(feature.smtp.recipients)}"))

    @app.command()
    def cleanup(
        retention_days: Annotated[int | None, typer.Option(
            "--retention-days", min=1, help="Keep raw events (and unparsed lines) this many "
            "days; replaces [retention] log_events_days.", show_default=False)] = None,
        as_json: JsonOpt = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Delete what is older than each table's retention, in small batches (safe while the
        daemon runs), aggregating raw events first, then return the freed space to the disk.

        Example: logly cleanup --retention-days 30 --json
        """
        from logly.scheduler import settings
        from logly.store.retention import cleanup as run_cleanup

        ctx = _ctx(db, config)
        cfg = settings(ctx.config).retention
        if retention_days is not None:
            cfg.days["log_events"] = cfg.days["unparsed_lines"] = retention_days
        result = run_cleanup(ctx.store(), cfg)
        if as_json:
            ctx.print_json(result.to_dict())
            return
        t = _table("table", "kept from (UTC)", "deleted", title="Cleanup")
        for name, cutoff in result.cutoffs.items():
            t.add_row(name, cutoff[:19], f"{result.deleted.get(name, 0):,}")
        ctx.out.print(t)
        ctx.out.print(Text(
            f"{result.hours_aggregated:,} hours aggregated first; {result.batches:,} batches, "
            f"longest lock {result.longest_txn_ms:,.0f} ms; database "
            f"{result.size_before / 1e6:,.1f} MB -> {result.size_after / 1e6:,.1f} MB "
            f"in {result.seconds:,.1f} s"))
        for path in result.archived:
            ctx.out.print(Text("archived: ") + _cell(path))
        if result.auto_vacuum != "incremental" and result.reclaimable_bytes:
            ctx.err.print(Text(
                f"{result.reclaimable_bytes / 1e6:,.1f} MB are free inside the file but not "
                "returned (auto_vacuum is " + json.dumps(result.auto_vacuum) + "); with the "
                "daemon stopped, run once: sqlite3 DB 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'"))
