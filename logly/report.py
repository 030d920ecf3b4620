"""The daily report: what happened on one UTC day, as text and HTML, and its delivery by SMTP.

`build_report` reads the store (raw events of the day; aggregates where retention already
deleted them; reputation, traces and error classes where other stages filled those tables),
`render` turns it into text and HTML through jinja2 templates in `logly/templates/`, and
`build_message` / `send_message` make and send one multipart/alternative mail with smtplib
(implicit TLS, STARTTLS or plain, AUTH when a user is configured). No shell, no external mail
program.

Usernames, messages, trace titles and host names come from attackers. Every value a template
prints passes through `safe_text` (control characters made visible: no terminal escapes in the
text part or on stdout), and the HTML environment autoescapes, so `<script>` arrives as text.
The chart is drawn by the template from numbers only, so no markup is ever built in Python.

The SMTP password comes from a file (`password_file`) or an environment variable
(`password_env`, default LOGLY_SMTP_PASSWORD), never from the command line, where every user
on the machine could read it in the process list.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from logly.errors import ConfigError, LoglyError
from logly.events import ATTACK_ACTIONS
from logly.plaintext import safe_text
from logly.store.aggregates import NOT_DUPLICATE, retained_from, snapshot, ts
from logly.store.sqlite import SQLiteStore

TEMPLATES = Path(__file__).resolve().parent / "templates"
ACCOUNT_ACTIONS = ("user_added", "user_deleted", "user_modified", "group_changed",
                   "password_changed")
SECURITY_MODES = ("starttls", "ssl", "none")
_ATTACKS = "(" + ", ".join(f"'{a}'" for a in sorted(ATTACK_ACTIONS)) + ")"


class MailError(LoglyError):
    """The report could not be sent; the message says why (connection, TLS, AUTH, refusal)."""


# ---- configuration ---------------------------------------------------------------------------
def _check(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


@dataclass
class ReportConfig:
    """`[report]`: how much goes in the report."""

    top: int = 10  # rows in the "top" lists
    subject_prefix: str = "[logly]"

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str = "report") -> ReportConfig:
        cfg = cls()
        for key, value in data.items():
            if key == "top":
                cfg.top = int(_check(where, key, value, int))
            elif key == "subject_prefix":
                cfg.subject_prefix = str(_check(where, key, value, str))
            else:
                raise ConfigError(f"unknown key '{where}.{key}'", hint="known: top, "
                                  "subject_prefix")
        return cfg


@dataclass
class SmtpConfig:
    """`[smtp]`: where and how the report is sent."""

    host: str = "localhost"
    port: int = 0  # 0: 465 for ssl, 587 for starttls, 25 for none
    security: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    password_env: str = "LOGLY_SMTP_PASSWORD"
    sender: str = ""  # default: logly@<this host's name>
    recipients: list[str] = field(default_factory=list)
    ca_file: Path | None = None  # trust this CA (a private relay); default: the system's
    timeout: float = 30.0

    @classmethod
    def from_toml(cls, data: dict[str, Any], where: str = "smtp") -> SmtpConfig:
        cfg = cls()
        for key, value in data.items():
            if key in ("host", "username", "password_env", "sender"):
                setattr(cfg, key, str(_check(where, key, value, str)))
            elif key == "security":
                if value not in SECURITY_MODES:
                    raise ConfigError(f"{where}.security must be one of "
                                      f"{', '.join(SECURITY_MODES)}")
                cfg.security = value
            elif key == "port":
                cfg.port = int(_check(where, key, value, int))
            elif key == "timeout":
                cfg.timeout = float(_check(where, key, value, (int, float)))
            elif key in ("password_file", "ca_file"):
                setattr(cfg, key, Path(str(_check(where, key, value, str))))
            elif key == "recipients":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{where}.recipients must be a list of addresses")
                cfg.recipients = list(value)
            elif key == "password":
                raise ConfigError(f"{where}.password is not supported: keep the secret in a "
                                  "file (password_file) or the LOGLY_SMTP_PASSWORD variable")
            else:
                raise ConfigError(f"unknown key '{where}.{key}'")
        return cfg

    def effective_port(self) -> int:
        return self.port or {"ssl": 465, "starttls": 587}.get(self.security, 25)

    def password(self, env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip("\r\n")
            except OSError as exc:
                raise MailError(f"cannot read the SMTP password file {self.password_file}: "
                                f"{exc.strerror}") from None
        return env.get(self.password_env)


# ---- data ------------------------------------------------------------------------------------
def _change(today: int, before: int) -> str:
    if before == 0:
        return "new" if today else "±0"
    pct = (today - before) * 100 / before
    return f"{pct:+.0f}%"


def _label(raw: Any, keys: tuple[str, ...]) -> str | None:
    """A country or ASN from whatever shape the reputation stage stored (JSON or text)."""
    if raw in (None, ""):
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return str(raw)
    if isinstance(value, dict):
        parts = [str(value[k]) for k in keys if value.get(k) not in (None, "")]
        return " ".join(parts[:2]) or None
    return str(value)


def _hints(raw: Any) -> str | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return str(raw)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value[:2]) or None
    return str(value)


def _rows(conn: Any, sql: str, params: Any) -> list[dict[str, Any]]:
    result = conn.exec_driver_sql(sql, params)
    return [dict(zip(result.keys(), r, strict=True)) for r in result]


def _action_totals(conn: Any, start: str, end: str, day: date, raw: bool) -> dict[str, int]:
    if raw:
        sql = ("SELECT action, count(*) FROM log_events WHERE timestamp >= ? AND timestamp < ? "
               f"AND {NOT_DUPLICATE} GROUP BY action")
        return {a: int(n) for a, n in conn.exec_driver_sql(sql, (start, end))}
    return {a: int(n) for a, n in conn.exec_driver_sql(
        "SELECT action, sum(event_count) FROM daily_aggregates WHERE day = ? AND source != '*' "
        "GROUP BY action", (day.isoformat(),))}


def build_report(store: SQLiteStore, day: date, top: int = 10,
                 now: datetime | None = None) -> dict[str, Any]:
    """Everything the templates show for one UTC day, as plain data (also `--json`-able)."""
    store.require_schema()
    start_dt = datetime(day.year, day.month, day.day, tzinfo=UTC)
    start, end = ts(start_dt), ts(start_dt + timedelta(days=1))
    prev_start = ts(start_dt - timedelta(days=1))
    kept = retained_from(store)
    raw = kept is None or start >= kept  # the day's raw events still exist
    prev_raw = kept is None or prev_start >= kept
    rng = (start, end)
    with snapshot(store) as conn:
        host = conn.exec_driver_sql(
            "SELECT value FROM metadata WHERE key = 'hostname'").scalar() or socket.gethostname()
        actions = _action_totals(conn, start, end, day, raw)
        prev_actions = _action_totals(conn, prev_start, start, day - timedelta(days=1),
                                      prev_raw)
        attempts = sum(n for a, n in actions.items() if a in ATTACK_ACTIONS)
        prev_attempts = sum(n for a, n in prev_actions.items() if a in ATTACK_ACTIONS)

        per_hour = [0] * 24
        if raw:
            hours = conn.exec_driver_sql(
                "SELECT CAST(substr(timestamp, 12, 2) AS INTEGER), count(*) FROM log_events "
                f"WHERE timestamp >= ? AND timestamp < ? AND action IN {_ATTACKS} "
                f"AND {NOT_DUPLICATE} GROUP BY 1", rng)
        else:
            hours = conn.exec_driver_sql(
                "SELECT CAST(substr(hour, 12, 2) AS INTEGER), sum(event_count) "
                f"FROM hourly_aggregates WHERE hour >= ? AND hour < ? AND action IN {_ATTACKS} "
                "AND source != '*' GROUP BY 1", rng)
        for h, n in hours:
            per_hour[int(h)] = int(n)

        attackers: list[dict[str, Any]] = []
        usernames: list[dict[str, Any]] = []
        logins: list[dict[str, Any]] = []
        sudo_users: list[dict[str, Any]] = []
        sudo_failures: list[dict[str, Any]] = []
        accounts: list[dict[str, Any]] = []
        banned: list[dict[str, Any]] = []
        unique_attackers = 0
        if raw:
            unique_attackers = int(conn.exec_driver_sql(
                "SELECT count(DISTINCT ip_address) FROM log_events WHERE timestamp >= ? "
                f"AND timestamp < ? AND action IN {_ATTACKS} AND {NOT_DUPLICATE}",
                rng).scalar_one())
            attackers = _rows(conn, (
                "SELECT ip_address AS address, count(*) AS attempts, "
                "count(DISTINCT user) AS users, min(timestamp) AS first_seen, "
                "max(timestamp) AS last_seen FROM log_events "
                f"WHERE timestamp >= ? AND timestamp < ? AND action IN {_ATTACKS} "
                f"AND ip_address IS NOT NULL AND {NOT_DUPLICATE} "
                "GROUP BY ip_address ORDER BY attempts DESC, ip_address LIMIT ?"), (*rng, top))
            if attackers:
                marks = ", ".join("?" for _ in attackers)
                rep = {r["address"]: r for r in _rows(conn, (
                    "SELECT address, score, verdict, geo, asn FROM ip_reputation "
                    f"WHERE address IN ({marks})"), tuple(a["address"] for a in attackers))}
                for a in attackers:
                    r = rep.get(a["address"], {})
                    a["score"] = r.get("score")
                    a["verdict"] = r.get("verdict")
                    a["country"] = _label(r.get("geo"), ("country_code", "iso_code", "country",
                                                         "country_name"))
                    a["asn"] = _label(r.get("asn"), ("asn", "number", "org", "organization",
                                                     "name"))
            usernames = _rows(conn, (
                "SELECT user, count(*) AS attempts, count(DISTINCT ip_address) AS addresses "
                "FROM log_events WHERE timestamp >= ? AND timestamp < ? "
                f"AND action IN ('auth_failure', 'invalid_user') AND user IS NOT NULL "
                f"AND {NOT_DUPLICATE} GROUP BY user ORDER BY attempts DESC, user LIMIT ?"),
                (*rng, top))
            # "new": this user never logged in from this address before the day (as far back
            # as the retained events go)
            logins = _rows(conn, (
                "SELECT e.user, e.ip_address AS address, count(*) AS logins, "
                "min(e.timestamp) AS first_seen, NOT EXISTS (SELECT 1 FROM log_events p "
                "WHERE p.ip_address IS e.ip_address AND p.timestamp < ? "
                "AND p.action = 'auth_success' AND p.user IS e.user) AS new "
                "FROM log_events e WHERE e.timestamp >= ? AND e.timestamp < ? "
                "AND e.action = 'auth_success' "
                "AND json_extract(e.metadata, '$.duplicate_of') IS NULL "
                "GROUP BY e.user, e.ip_address ORDER BY first_seen LIMIT 100"), (start, *rng))
            for r in logins:
                r["new"] = bool(r["new"])
            sudo_users = _rows(conn, (
                "SELECT user, count(*) AS commands FROM log_events WHERE timestamp >= ? "
                "AND timestamp < ? AND action = 'sudo_command' GROUP BY user "
                "ORDER BY commands DESC, user LIMIT ?"), (*rng, top))
            sudo_failures = _rows(conn, (
                "SELECT timestamp, action, user, message FROM log_events WHERE timestamp >= ? "
                "AND timestamp < ? AND action IN ('sudo_failure', 'sudo_denied') "
                f"AND {NOT_DUPLICATE} ORDER BY timestamp LIMIT 50"), rng)
            accounts = _rows(conn, (
                "SELECT timestamp, action, user, message FROM log_events WHERE timestamp >= ? "
                "AND timestamp < ? AND action IN (" + ", ".join(f"'{a}'" for a in ACCOUNT_ACTIONS)
                + ") ORDER BY timestamp LIMIT 50"), rng)
            banned = _rows(conn, (
                "SELECT ip_address AS address, count(*) AS bans, min(timestamp) AS first_seen "
                "FROM log_events WHERE timestamp >= ? AND timestamp < ? AND action = 'f2b_ban' "
                "GROUP BY ip_address ORDER BY bans DESC, address LIMIT ?"), (*rng, top))

        # tables other stages fill: read whatever is there
        traces = _rows(conn, (
            "SELECT id, title, severity, ip_address, user, event_count, first_seen, last_seen "
            "FROM event_traces WHERE severity IN ('high', 'critical') AND last_seen >= ? "
            "AND first_seen < ? ORDER BY severity = 'critical' DESC, event_count DESC, id "
            "LIMIT 20"), rng)
        errors = _rows(conn, (
            "SELECT error_type, category, count(*) AS count, max(hints) AS hints "
            "FROM error_traces WHERE timestamp >= ? AND timestamp < ? "
            "GROUP BY error_type, category ORDER BY count DESC, error_type LIMIT ?"),
            (*rng, top))
        for e in errors:
            e["hints"] = _hints(e["hints"])

    return {
        "day": day.isoformat(),
        "host": host,
        "generated": ts(now or datetime.now(UTC)),
        "raw_events": raw,
        "totals": {
            "events": sum(actions.values()), "previous_events": sum(prev_actions.values()),
            "attempts": attempts, "previous_attempts": prev_attempts,
            "attempts_change": _change(attempts, prev_attempts),
            "events_change": _change(sum(actions.values()), sum(prev_actions.values())),
            "unique_attackers": unique_attackers,
            "logins": actions.get("auth_success", 0),
            "bans": actions.get("f2b_ban", 0), "unbans": actions.get("f2b_unban", 0),
        },
        "actions": [
            {"action": a, "count": actions.get(a, 0), "previous": prev_actions.get(a, 0),
             "change": _change(actions.get(a, 0), prev_actions.get(a, 0))}
            for a in sorted(set(actions) | set(prev_actions),
                            key=lambda a: (-actions.get(a, 0), a))
        ],
        "attempts_per_hour": per_hour,
        "attackers": attackers,
        "usernames": usernames,
        "logins": logins,
        "new_logins": sum(1 for r in logins if r["new"]),
        "sudo_users": sudo_users,
        "sudo_failures": sudo_failures,
        "accounts": accounts,
        "banned": banned,
        "traces": traces,
        "errors": errors,
    }


# ---- rendering -------------------------------------------------------------------------------
def _finalize(value: Any) -> Any:
    from markupsafe import Markup

    if value is None:
        return ""
    if isinstance(value, str) and not isinstance(value, Markup):
        return safe_text(value)
    return value


def _env(html: bool) -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=html,
                      finalize=_finalize, undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["hhmm"] = lambda t: (t or "")[11:16]
    env.filters["num"] = lambda n: "" if n is None else f"{n:,}"
    return env


def render(report: dict[str, Any], fmt: str = "text") -> str:
    """The report as `text` or `html`."""
    if fmt not in ("text", "html"):
        raise LoglyError(f"unknown report format {fmt!r}", hint="text or html")
    peak = max(report["attempts_per_hour"]) or 1
    template = _env(fmt == "html").get_template(f"daily.{'html' if fmt == 'html' else 'txt'}.j2")
    return template.render(r=report, peak=peak)


# ---- mail ------------------------------------------------------------------------------------
def subject(report: dict[str, Any], prefix: str = "[logly]") -> str:
    t = report["totals"]
    # the host name is ours, but safe_text keeps any stray control character out of a header
    return (f"{prefix} {safe_text(report['host'])} {report['day']}: {t['attempts']:,} attack "
            f"attempts ({t['attempts_change']}), {t['logins']:,} logins").strip()


def build_message(report: dict[str, Any], smtp: SmtpConfig,
                  config: ReportConfig | None = None) -> EmailMessage:
    """One multipart/alternative mail: the text part first, the HTML part preferred."""
    config = config or ReportConfig()
    if not smtp.recipients:
        raise MailError("no recipients for the report",
                        hint="set [smtp] recipients or pass --to ADDR")
    msg = EmailMessage()
    sender = smtp.sender or f"logly@{socket.getfqdn()}"
    try:
        msg["Subject"] = subject(report, config.subject_prefix)
        msg["From"] = sender
        msg["To"] = ", ".join(smtp.recipients)
    except (ValueError, TypeError) as exc:  # e.g. a newline in an address from the config
        raise MailError(f"bad mail header: {exc}") from None
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the robot
    msg.set_content(render(report, "text"))
    msg.add_alternative(render(report, "html"), subtype="html")
    return msg


def send_message(msg: EmailMessage, smtp: SmtpConfig,
                 env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Deliver `msg`; any failure becomes a MailError naming the server and the reason."""
    password = smtp.password(env)
    if smtp.username and password is None:
        raise MailError(f"[smtp] username is set but no password was found (file "
                        f"{smtp.password_file or '-'}, variable {smtp.password_env})")
    port = smtp.effective_port()
    where = f"{smtp.host}:{port}"
    context = ssl.create_default_context(
        cafile=str(smtp.ca_file) if smtp.ca_file else None)
    try:
        if smtp.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, port, timeout=smtp.timeout,
                                                    context=context)
        else:
            client = smtplib.SMTP(smtp.host, port, timeout=smtp.timeout)
        with client:
            client.ehlo()
            if smtp.security == "starttls":
                # never fall back to plain text: a man in the middle can strip the offer
                if not client.has_extn("starttls"):
                    raise MailError(f"{where} does not offer STARTTLS",
                                    hint="set [smtp] security = \"ssl\" or \"none\"")
                client.starttls(context=context)
                client.ehlo()
            if smtp.username:
                client.login(smtp.username, password or "")
            refused = client.send_message(msg)
        if refused:
            raise MailError(f"{where} refused recipients: {', '.join(sorted(refused))}")
    except smtplib.SMTPAuthenticationError as exc:
        raise MailError(f"{where}: authentication failed ({exc.smtp_code})",
                        hint="check [smtp] username and the password file/variable") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailError(f"{where} refused all recipients: "
                        f"{', '.join(sorted(exc.recipients))}") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        raise MailError(f"{where}: {exc.smtp_code} {safe_text(text)}") from None
    except ssl.SSLError as exc:
        raise MailError(f"{where}: TLS failed: {exc.reason or exc}",
                        hint="set [smtp] ca_file for a private CA") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"cannot send the report via {where}: {exc or type(exc).__name__}",
                        hint="check [smtp] host, port and security") from None


def yesterday(now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=1)).date()
