"""`logly ip` / `logly ips` without typer: which arguments the fast path takes, the console
script it starts from, and tables drawn by logly/plaintext.py exactly as rich drew them.
(Against a database: tests/test_reputation.py, "the fast way in".)"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from logly.cli_ip import parse_argv
from logly.clikit import cell, table
from logly.plaintext import Table, safe_text

ROOT = Path(__file__).resolve().parents[1]


def test_the_console_script_starts_at_the_fast_entry() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["logly"] == "logly.cli_entry:main"


@pytest.mark.parametrize("argv, taken", [
    (["ip", "203.0.113.7"], ("ip", {"address": "203.0.113.7", "--json": False})),
    (["ip", "203.0.113.0/24", "--json", "--db", "x.db"], ("ip", {"--db": "x.db"})),
    (["ip", "--db=x.db", "2001:db8::1", "--config", "c.toml", "--events", "0"],
     ("ip", {"address": "2001:db8::1", "--config": "c.toml", "--events": 0})),
    (["ips"], ("ips", {"--top": 20, "--since": None})),
    (["ips", "--top", "5", "--since", "7d", "--json"], ("ips", {"--top": 5, "--since": "7d"})),
    (["ips", "--top=3"], ("ips", {"--top": 3})),
    # for typer: help, other options, a value it refuses, a missing or extra argument
    (["ip", "--help"], None), (["ip", "-h"], None), (["ip", "--recompute"], None),
    (["ip", "203.0.113.7", "--recompute"], None), (["ip"], None),
    (["ip", "203.0.113.7", "198.51.100.1"], None), (["ip", "203.0.113.7", "--events", "-1"], None),
    (["ip", "203.0.113.7", "--events", "x"], None), (["ip", "203.0.113.7", "--db"], None),
    (["ips", "--top", "0"], None), (["ips", "203.0.113.7"], None), (["ips", "--events", "3"], None),
    (["--traceback", "ip", "203.0.113.7"], None), (["ingest", "x.log"], None), ([], None),
])
def test_which_arguments_the_fast_path_takes(argv: list[str], taken: tuple | None) -> None:
    got = parse_argv(argv)
    if taken is None:
        assert got is None
        return
    assert got is not None and got[0] == taken[0]
    assert {k: got[1][k] for k in taken[1]} == taken[1]


ROWS = [("+30.0", "14306 failed login attempts"),
        ("+15.0", "5827 logins for user names that do not exist"),
        ("-0.04", "last attack 3.2 days ago, half-life 7 days: x0.731"),
        ("+5.0", "a user named \x1b]0;pwned\x07\x1b[2J tried " + "very long words " * 12),
        ("+1.0", "x" * 230)]


@pytest.mark.parametrize("width", [100, 120, 160, 200])
def test_plain_tables_are_drawn_as_rich_drew_them(width: int) -> None:
    def both(*headers: str, title: str | None, rows: list[tuple[str, ...]], header: bool = True
             ) -> tuple[str, str]:
        old, new = table(*headers, title=title), Table(*headers, title=title)
        old.show_header = new.show_header = header
        for r in rows:
            old.add_row(*(cell(v) for v in r))
            new.add_row(*r)
        buf = io.StringIO()
        Console(file=buf, width=width, highlight=False).print(old)
        return buf.getvalue(), new.render(width)

    for old, new in (
        both("points", "evidence", title="Why this score", rows=ROWS),
        both("", "", title=None, header=False,
             rows=[("location", "Zürich, Switzerland, CH"), ("blocklists", "none"),
                   ("users tried", ", ".join(f"u{i} ({i})" for i in range(40)))]),
        both("id", "time (UTC)", "program", "action", "user", "message", title="Recent events",
             rows=[("299999", "2026-11-27 17:22:32", "sshd", "invalid_user", "oracle",
                    "Invalid user oracle from 203.0.113.7 port 4242 " * 3),
                   ("7", "2026-11-27 17:20:05", "kernel", "firewall_block", "", "")]),
        both("address", "score", "verdict", title="Addresses by reputation",
             rows=[("2001:db8:bad:1::/64", "97.5", "malicious"), ("192.0.2.10", "0", "")]),
    ):
        assert new == old
    assert "\x1b" not in new


def test_safe_text_shows_control_characters() -> None:
    assert safe_text("a\x1b[2Jb\x07\x9bc\n") == "a\\x1b[2Jb\\x07\\x9bc\\x0a"
    assert safe_text(None) == ""
