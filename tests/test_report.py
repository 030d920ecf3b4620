"""The daily report: its content for a generated day, escaping of attacker text, the chart,
and delivery to real SMTP servers on loopback (plain, STARTTLS + AUTH, implicit TLS)."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from logly.cli_report import register
from logly.errors import ExitCode
from logly.report import (
    MailError,
    SmtpConfig,
    build_message,
    build_report,
    render,
    send_message,
)
from logly.store.sqlite import SQLiteStore
from tests.test_aggregates import ev, plant

aiosmtpd = pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

DAY = date(2026, 11, 20)
D0 = datetime(2026, 11, 20, tzinfo=UTC)
TOP = "203.0.113.66"
XSS = "<script>alert(1)</script>"


def day_rows() -> list[tuple]:
    rows = []
    # the planted top attacker: 30 attempts at 03:xx, 10 at 04:xx
    rows += [ev(D0 + timedelta(hours=3, minutes=i), "auth_failure", TOP, "root")
             for i in range(30)]
    rows += [ev(D0 + timedelta(hours=4, minutes=i), "invalid_user", TOP, "oracle")
             for i in range(10)]
    rows += [ev(D0 + timedelta(hours=8, minutes=i), "auth_failure", f"198.51.100.{i}", "admin")
             for i in range(5)]
    rows.append(ev(D0 + timedelta(hours=9), "invalid_user", "192.0.2.9", XSS))
    rows.append(ev(D0 + timedelta(hours=9, minutes=1), "invalid_user", "192.0.2.9",
                   "evil\x1b[2J\x1b]0;pwned\x07"))
    # logins: alice from a known address (seen two days ago), bob from a new one
    rows.append(ev(D0 - timedelta(days=2), "auth_success", "198.51.100.200", "alice"))
    rows.append(ev(D0 + timedelta(hours=7), "auth_success", "198.51.100.200", "alice"))
    rows.append(ev(D0 + timedelta(hours=11), "auth_success", TOP, "bob"))
    rows.append(ev(D0 + timedelta(hours=12), "sudo_command", None, "alice"))
    rows.append(ev(D0 + timedelta(hours=12, minutes=5), "sudo_denied", None, "mallory"))
    rows.append(ev(D0 + timedelta(hours=13), "user_added", None, "backdoor"))
    rows.append(ev(D0 + timedelta(hours=5), "f2b_ban", TOP, source="fail2ban"))
    # the previous day: 8 attempts
    rows += [ev(D0 - timedelta(hours=5, minutes=i), "auth_failure", "192.0.2.1", "root")
             for i in range(8)]
    return rows


@pytest.fixture
def day_store(store: SQLiteStore) -> SQLiteStore:
    plant(store, day_rows())
    # rows other stages would write (reputation, correlation), planted to be read
    store.executemany(
        "INSERT INTO ip_reputation (address, score, verdict, geo, asn, updated) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(TOP, 87.5, "malicious", json.dumps({"country_code": "NL"}),
          json.dumps({"asn": 64500, "org": "Example Hosting"}), "2026-11-20T12:00:00.000000Z")])
    store.executemany(
        "INSERT INTO event_traces (title, severity, first_seen, last_seen, ip_address, "
        "event_count, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [("Brute force then login <img src=x onerror=alert(2)>", "critical",
          "2026-11-20T03:00:00.000000Z", "2026-11-20T11:00:00.000000Z", TOP, 41,
          "2026-11-20T03:00:00.000000Z", "2026-11-20T11:00:00.000000Z"),
         ("Noise", "low", "2026-11-20T03:00:00.000000Z", "2026-11-20T03:00:00.000000Z", None,
          1, "2026-11-20T03:00:00.000000Z", "2026-11-20T03:00:00.000000Z")])
    store.executemany(
        "INSERT INTO error_traces (timestamp, error_type, category, severity, hints) "
        "VALUES (?, ?, ?, ?, ?)",
        [("2026-11-20T06:00:00.000000Z", "disk_full", "resource", "high",
          json.dumps(["free space on /var"]))] * 3)
    return store


# ---- content ---------------------------------------------------------------------------------
def test_report_data_for_a_generated_day(day_store: SQLiteStore) -> None:
    r = build_report(day_store, DAY)
    t = r["totals"]
    assert t["attempts"] == 30 + 10 + 5 + 2 + 1  # f2b_ban counts as an attack signal
    assert t["previous_attempts"] == 8 and t["attempts_change"] == "+500%"
    assert r["attackers"][0]["address"] == TOP and r["attackers"][0]["attempts"] == 41
    assert r["attackers"][0]["country"] == "NL" and r["attackers"][0]["score"] == 87.5
    assert "64500" in r["attackers"][0]["asn"]
    assert r["attempts_per_hour"][3] == 30 and r["attempts_per_hour"][4] == 10
    new = {(x["user"], x["address"]): x["new"] for x in r["logins"]}
    assert new == {("alice", "198.51.100.200"): False, ("bob", TOP): True}
    assert [s["user"] for s in r["sudo_failures"]] == ["mallory"]
    assert [a["user"] for a in r["accounts"]] == ["backdoor"]
    assert [b["address"] for b in r["banned"]] == [TOP]
    assert [x["severity"] for x in r["traces"]] == ["critical"]  # the low one is left out
    assert r["errors"][0]["count"] == 3 and r["errors"][0]["hints"] == "free space on /var"


def test_text_escapes_terminal_control_and_draws_the_chart(day_store: SQLiteStore) -> None:
    text = render(build_report(day_store, DAY), "text")
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J" in text  # visible, inert
    assert TOP in text and "NEW address" in text
    line3 = next(ln for ln in text.splitlines() if ln.strip().startswith("03:00"))
    assert line3.count("#") == 40 and line3.rstrip().endswith("30")


def test_html_is_autoescaped_and_has_the_chart(day_store: SQLiteStore) -> None:
    html = render(build_report(day_store, DAY), "html")
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "\x1b" not in html
    assert 'id="attempts-per-hour"' in html
    assert 'title="03:00 UTC: 30 attempts"' in html and "height: 80px" in html


# ---- SMTP ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collect:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope, getattr(session, "authenticated", False)))
        return "250 OK"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return crt, key


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def check_auth(server: Any, session: Any, envelope: Any, mechanism: str,
               data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"logly", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def plain_server() -> Iterator[tuple[Controller, Collect]]:
    handler = Collect()
    c = Controller(handler, hostname="127.0.0.1", port=free_port())
    c.start()
    yield c, handler
    c.stop()


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[tuple[Controller, Collect]]:
    """Demands STARTTLS before anything, and AUTH (only over TLS) before MAIL."""
    handler = Collect()
    c = Controller(handler, hostname="127.0.0.1", port=free_port(),
                   tls_context=server_context(cert), require_starttls=True,
                   authenticator=check_auth, auth_required=True, auth_require_tls=True)
    c.start()
    yield c, handler
    c.stop()


def received(handler: Collect) -> email.message.EmailMessage:
    assert len(handler.messages) == 1
    envelope, _ = handler.messages[0]
    return email.message_from_bytes(envelope.original_content, policy=email.policy.default)


def check_message(msg: email.message.EmailMessage) -> None:
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert TOP in text and TOP in html
    assert "Top attacking addresses" in text and "NL" in html
    assert XSS in text  # plain text shows it as typed
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'id="attempts-per-hour"' in html and 'title="03:00 UTC: 30 attempts"' in html
    assert "03:00 ########################################" in text


def test_report_mail_over_plain_smtp(day_store: SQLiteStore, plain_server) -> None:  # type: ignore[no-untyped-def]
    controller, handler = plain_server
    smtp = SmtpConfig(host="127.0.0.1", port=controller.port, security="none",
                      sender="logly@example.org", recipients=["admin@example.org"])
    send_message(build_message(build_report(day_store, DAY), smtp), smtp)
    msg = received(handler)
    check_message(msg)
    assert handler.messages[0][0].rcpt_tos == ["admin@example.org"]
    assert "48 attack attempts" in msg["Subject"] and "+500%" in msg["Subject"]


def test_report_mail_with_starttls_and_auth(day_store: SQLiteStore, tls_server, cert,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    controller, handler = tls_server
    secret = tmp_path / "smtp.password"
    secret.write_text("s3cret\n")
    smtp = SmtpConfig(host="127.0.0.1", port=controller.port, security="starttls",
                      username="logly", password_file=secret, ca_file=cert[0],
                      recipients=["admin@example.org"])
    send_message(build_message(build_report(day_store, DAY), smtp), smtp)
    check_message(received(handler))
    assert handler.messages[0][1] is True  # delivered on an authenticated session


def test_starttls_server_refuses_wrong_password_and_plain_text(day_store: SQLiteStore,  # type: ignore[no-untyped-def]
                                                               tls_server, cert) -> None:
    controller, handler = tls_server
    msg = build_message(build_report(day_store, DAY),
                        SmtpConfig(recipients=["admin@example.org"]))
    wrong = SmtpConfig(host="127.0.0.1", port=controller.port, security="starttls",
                       username="logly", ca_file=cert[0], recipients=["admin@example.org"])
    with pytest.raises(MailError, match="authentication failed"):
        send_message(msg, wrong, env={"LOGLY_SMTP_PASSWORD": "guess"})
    plain = SmtpConfig(host="127.0.0.1", port=controller.port, security="none",
                       recipients=["admin@example.org"])
    with pytest.raises(MailError, match="530"):  # "Must issue a STARTTLS command first"
        send_message(msg, plain)
    untrusted = SmtpConfig(host="127.0.0.1", port=controller.port, security="starttls",
                           username="logly", recipients=["admin@example.org"])
    with pytest.raises(MailError, match="TLS"):  # self-signed, no ca_file: not trusted
        send_message(msg, untrusted, env={"LOGLY_SMTP_PASSWORD": "s3cret"})
    assert handler.messages == []


def test_report_mail_over_implicit_tls(day_store: SQLiteStore, cert) -> None:  # type: ignore[no-untyped-def]
    handler = Collect()
    c = Controller(handler, hostname="127.0.0.1", port=free_port(),
                   ssl_context=server_context(cert), server_hostname="localhost")
    c.start()
    try:
        smtp = SmtpConfig(host="127.0.0.1", port=c.port, security="ssl", ca_file=cert[0],
                          recipients=["admin@example.org"])
        send_message(build_message(build_report(day_store, DAY), smtp), smtp)
    finally:
        c.stop()
    check_message(received(handler))


def test_starttls_is_never_skipped_when_the_server_does_not_offer_it(  # type: ignore[no-untyped-def]
        day_store: SQLiteStore, plain_server) -> None:
    controller, handler = plain_server  # no tls_context: no STARTTLS in EHLO
    smtp = SmtpConfig(host="127.0.0.1", port=controller.port, security="starttls",
                      recipients=["admin@example.org"])
    with pytest.raises(MailError, match="does not offer STARTTLS"):
        send_message(build_message(build_report(day_store, DAY), smtp), smtp)
    assert handler.messages == []


# ---- CLI -------------------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    cfg = tmp_path / "logly.toml"
    cfg.write_text('[smtp]\nsecurity = "none"\nsender = "logly@example.org"\n'
                   'recipients = ["root@example.org"]\n')
    monkeypatch.setenv("LOGLY_CONFIG", str(cfg))
    monkeypatch.delenv("LOGLY_DB", raising=False)
    a = typer.Typer()
    register(a)
    return a


def test_cli_report_daily_html_and_help(app: typer.Typer, day_store: SQLiteStore) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["report", "daily", "--date", "2026-11-20", "--format", "html",
                            "--db", str(day_store.path)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("<!DOCTYPE html>") and "&lt;script&gt;" in r.stdout
    r = runner.invoke(app, ["report", "daily", "--help"])
    assert "Example: logly report daily" in r.stdout and "--password" not in r.stdout


def test_cli_email_dry_run_prints_the_message(app: typer.Typer, day_store: SQLiteStore) -> None:
    r = CliRunner().invoke(app, ["report", "daily", "--date", "2026-11-20", "--email",
                                 "--to", "sec@example.org", "--dry-run",
                                 "--db", str(day_store.path)])
    assert r.exit_code == 0, r.output
    msg = email.message_from_string(r.stdout, policy=email.policy.default)
    assert msg["To"] == "sec@example.org" and msg.get_content_type() == "multipart/alternative"


def test_cli_email_to_a_live_server(app: typer.Typer, day_store: SQLiteStore,  # type: ignore[no-untyped-def]
                                    plain_server) -> None:
    controller, handler = plain_server
    r = CliRunner().invoke(app, ["report", "daily", "--date", "2026-11-20", "--email",
                                 "--smtp", f"127.0.0.1:{controller.port}",
                                 "--db", str(day_store.path)])
    assert r.exit_code == 0, r.output
    check_message(received(handler))
    assert handler.messages[0][0].rcpt_tos == ["root@example.org"]


def test_cli_failed_send_is_a_typed_error_with_a_non_zero_exit(app: typer.Typer,  # type: ignore[no-untyped-def]
                                                               day_store: SQLiteStore) -> None:
    r = CliRunner().invoke(app, ["report", "daily", "--date", "2026-11-20", "--email",
                                 "--smtp", f"127.0.0.1:{free_port()}",
                                 "--db", str(day_store.path)])
    assert r.exit_code != 0
    assert isinstance(r.exception, MailError) and r.exception.exit_code == ExitCode.ERROR
    assert "cannot send the report via 127.0.0.1" in str(r.exception)
    r = CliRunner().invoke(app, ["report", "daily", "--email", "--password", "x",
                                 "--db", str(day_store.path)])
    assert r.exit_code == 2  # there is no such flag: secrets stay off the command line
