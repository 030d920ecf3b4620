"""The CLI contract: commands, --json shapes, exit codes, help with examples, safe output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logly.events import EVENT_COLUMNS
from logly.store.sqlite import SCHEMA_VERSION

AUTH = (
    "Nov 24 10:00:01 web1 sshd[100]: Invalid user admin from 203.0.113.7 port 50000\n"
    "Nov 24 10:00:02 web1 sshd[100]: Failed password for invalid user admin from 203.0.113.7 "
    "port 50000 ssh2\n"
    "Nov 24 10:00:03 web1 sshd[101]: Failed password for root from 198.51.100.2 port 4 ssh2\n"
    "Nov 24 10:00:04 web1 sshd[102]: Invalid user \x1b]0;pwned\x07\x1b[2J<script>x</script> "
    "from 192.0.2.66 port 5\n"
    "not a log line\n"
)

COMMANDS = [["init"], ["ingest"], ["events"], ["stats"], ["rules", "test"], ["rules", "list"],
            ["report", "daily"], ["cleanup"], ["traces"], ["trace"]]


@pytest.fixture
def loaded(cli, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    log = tmp_path / "auth.log"
    log.write_text(AUTH)
    db = tmp_path / "l.db"
    r = cli("ingest", str(log), "--db", str(db), "--tz", "UTC", "--year", "2026")
    assert r.code == 0, r.err
    return db


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cli, cmd: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = cli(*cmd, "--help")
    assert r.code == 0
    assert "Example: logly" in r.out
    assert "--db" in r.out and "--config" in r.out


def test_init_is_idempotent(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "x.db"
    assert cli("init", "--db", str(db)).code == 0
    r = cli("init", "--db", str(db))
    assert r.code == 0 and f"schema version {SCHEMA_VERSION}" in r.out


def test_events_json_follows_the_contract(cli, loaded: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("events", "--db", str(loaded), "--json", "--action", "invalid_user",
            "--ip", "203.0.113.7")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert len(rows) == 2
    for row in rows:
        assert list(row) == list(EVENT_COLUMNS)
        assert row["timestamp"].endswith("Z") and row["timestamp"].startswith("2026-11-24T10")
        assert row["path"].endswith("auth.log") and isinstance(row["offset"], int)
    r = cli("events", "--db", str(loaded), "--json", "--since", "2026-11-24T10:00:02+00:00",
            "--until", "2026-11-24T10:00:03+00:00")
    assert [e["message"][:6] for e in json.loads(r.out)] == ["Failed"]


def test_table_output_cannot_drive_the_terminal(cli, loaded: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("events", "--db", str(loaded))
    assert r.code == 0
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "192.0.2.66" in r.out
    j = cli("events", "--db", str(loaded), "--json")
    assert "\x1b" not in j.out  # escaped as \\u001b inside JSON strings
    assert "\\u001b" in j.out


def test_stats_json(cli, loaded: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("stats", "--db", str(loaded), "--json")
    data = json.loads(r.out)
    assert data["rows"]["log_events"] == 4 and data["unparsed"] == 1
    assert data["sources"][0]["lines"] == 5


def test_rules_test_on_a_file_and_on_stored_unparsed_lines(cli, loaded: Path,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    r = cli("rules", "test", str(log), "--json")
    rows = json.loads(r.out)
    assert [x["rule"] for x in rows] == ["sshd/invalid-user", "sshd/failed-invalid-user",
                                         "sshd/failed", "sshd/invalid-user", None]
    assert rows[2]["ip_address"] == "198.51.100.2" and rows[2]["user"] == "root"
    assert rows[4]["reason"] == "no syslog/fail2ban header"
    r = cli("rules", "test", "--unparsed", "--db", str(loaded), "--json")
    assert [x["text"] for x in json.loads(r.out)] == ["not a log line"]
    table = cli("rules", "test", str(log))
    assert "4 matched a rule" in table.out and "\x1b" not in table.out


def test_user_rules_directory_extends_the_shipped_rules(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "myapp.rules").write_text(
        "programs = myapp\nservice = web\n\n[login-failed]\naction = auth_failure\n"
        "match = login failed for <user:word> from <ip>\n")
    log = tmp_path / "app.log"
    log.write_text("Nov 24 10:00:01 web1 myapp[9]: login failed for bob from 203.0.113.99\n")
    r = cli("rules", "test", str(log), "--rules-dir", str(d), "--json")
    row = json.loads(r.out)[0]
    assert (row["rule"], row["ip_address"], row["user"]) == ("myapp/login-failed",
                                                             "203.0.113.99", "bob")


def test_broken_rule_file_names_file_and_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "bad.rules").write_text("programs = x\n\n[r]\naction = auth_failure\n"
                                 "match = Failed for <user from <ip>\n")
    log = tmp_path / "a.log"
    log.write_text("x\n")
    r = cli("rules", "test", str(log), "--rules-dir", str(d))
    assert r.code == 3
    assert "bad.rules:5" in r.err


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["events", "--ip", "300.1.1.1"], 2, "not an IP address"),
    (["events", "--action", "nope"], 2, "unknown action"),
    (["events", "--since", "yesterday-ish"], 2, "cannot read time"),
    (["events", "--bogus"], 2, "No such option"),
])
def test_bad_input_exits_with_usage_errors(cli, loaded: Path, args, code, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli(*args, "--db", str(loaded))
    assert r.code == code
    assert needle in r.err


def test_missing_database_and_missing_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("events", "--db", str(tmp_path / "none.db"))
    assert r.code == 3 and "logly init" in r.err
    r = cli("ingest", str(tmp_path / "nope.log"), "--db", str(tmp_path / "n.db"))
    assert r.code == 3 and "nope.log" in r.err


def test_bad_config_names_the_key(cli, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "bad.toml"
    cfg.write_text('database = 5\n')
    r = cli("stats", "--config", str(cfg))
    assert r.code == 4 and "database" in r.err
    cfg.write_text('colour = "blue"\n')
    r = cli("stats", "--config", str(cfg))
    assert r.code == 4 and "colour" in r.err


def test_db_from_environment(cli, loaded: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOGLY_DB", str(loaded))
    r = cli("stats", "--json")
    assert json.loads(r.out)["database"] == str(loaded)
