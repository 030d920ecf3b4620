"""Correlation end to end: real log lines -> ingest with the hooks -> event_traces rows.

Each pattern of rules/correlation.toml gets lines shaped as Debian 12 writes them, and a case
that must not fire. Restart survival runs two separate hook instances over one database file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from logly.errors import ConfigError
from logly.ingest import ingest_input
from logly.parsers.rules import RuleSet
from logly.sources.files import open_input
from logly.store.sqlite import SQLiteStore
from logly.tracer.correlate import make_hooks
from logly.tracer.patterns import load_rules, settings

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


class Cfg:
    def __init__(self, section: dict | None = None) -> None:
        self.sections = {"correlation": section} if section is not None else {}


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def line(seconds: float, prog: str, msg: str, host: str = "web1") -> str:
    return f"{at(seconds)} {host} {prog}: {msg}"


def feed(store: SQLiteStore, rules: RuleSet, hooks: list, path: Path,
         lines: list[str], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as f:
        f.write("".join(x + "\n" for x in lines))
    inp = open_input(str(path))
    try:
        ingest_input(store, rules, inp, hooks=hooks, parallel=False, batch_lines=7)
    finally:
        inp.close()


def traces(store: SQLiteStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        res = conn.exec_driver_sql("SELECT * FROM event_traces ORDER BY id")
        cols = list(res.keys())
        out = [dict(zip(cols, r, strict=True)) for r in res]
    for t in out:
        t["causality"] = json.loads(t["causality"] or '{"steps": []}')
        t["steps"] = [s["pattern"] for s in t["causality"]["steps"]]
    return out


def scalar(store: SQLiteStore, sql: str, *params: Any) -> Any:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(sql, params).scalar_one()


@pytest.fixture
def hooks() -> list:
    return make_hooks(Cfg())


def failures(ip: str, n: int, start: float = 0, step: float = 1, user: str = "root",
             pid: int = 2000) -> list[str]:
    return [line(start + i * step, f"sshd[{pid + i}]",
                 f"Failed password for {user} from {ip} port {40000 + i} ssh2") for i in range(n)]


# ---- attacks from one address -----------------------------------------------------------------
def test_brute_force_from_one_address(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                      hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log",
         failures("203.0.113.5", 8) + failures("198.51.100.9", 3, start=2, pid=3000))
    (t,) = traces(store)
    assert (t["pattern"], t["ip_address"], t["severity"]) == ("address", "203.0.113.5", "medium")
    assert t["steps"] == ["brute-force"]
    assert t["event_count"] == 8 and t["title"].startswith("SSH brute force from 203.0.113.5")
    assert t["first_seen"] == "2026-11-24T10:00:00.000000Z"  # the attempts before it fired too
    linked = scalar(store, "SELECT count(*) FROM log_events WHERE trace_id = ?", t["id"])
    assert linked == 8
    # the three attempts of the other address stay below the threshold
    assert scalar(store, "SELECT count(*) FROM log_events WHERE ip_address = '198.51.100.9' "
                  "AND trace_id IS NOT NULL") == 0


def test_pam_duplicate_and_publickey_offers_do_not_count(tmp_path: Path, store: SQLiteStore,
                                                         rules: RuleSet, hooks: list) -> None:
    lines = []
    for i in range(5):  # five key offers declined, as every client with several keys does
        lines.append(line(i, f"sshd[{100 + i}]", f"Failed publickey for alice from 192.0.2.44 "
                          f"port {5000 + i} ssh2: ED25519 SHA256:abc{i}"))
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    assert traces(store) == []


def test_password_spray_across_users(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                     hooks: list) -> None:
    users = ["oracle", "test", "admin", "guest", "ubuntu", "postgres"]
    lines = [line(i * 20, f"sshd[{400 + i}]", f"Invalid user {u} from 203.0.113.66 port "
                  f"{6000 + i}") for i, u in enumerate(users)]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    (t,) = traces(store)
    assert t["steps"] == ["password-spray"] and t["ip_address"] == "203.0.113.66"
    assert "across 6 users" in t["title"]


def test_success_after_failures_is_critical(tmp_path: Path, store: SQLiteStore,
                                            rules: RuleSet, hooks: list) -> None:
    lines = failures("203.0.113.8", 6) + [
        line(30, "sshd[999]", "Accepted password for root from 203.0.113.8 port 41999 ssh2")]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    (t,) = traces(store)
    assert t["severity"] == "critical" and t["user"] == "root"
    assert t["steps"] == ["brute-force", "login-after-failures"]
    assert t["title"] == "Successful login as root from 203.0.113.8 after 6 failed attempts"
    ok_id = scalar(store, "SELECT id FROM log_events WHERE action = 'auth_success'")
    assert scalar(store, "SELECT trace_id FROM log_events WHERE id = ?", ok_id) == t["id"]


def test_success_after_few_failures_is_not_flagged(tmp_path: Path, store: SQLiteStore,
                                                   rules: RuleSet, hooks: list) -> None:
    lines = failures("192.0.2.44", 2, user="alice") + [
        line(30, "sshd[999]", "Accepted password for alice from 192.0.2.44 port 41999 ssh2")]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    assert traces(store) == []  # a typo before the right password


def test_scan_then_login_attempts(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                  hooks: list) -> None:
    lines = [line(0, "sshd[10]", "Did not receive identification string from 198.51.100.23 "
                  "port 61000"),
             line(600, "sshd[11]", "Invalid user admin from 198.51.100.23 port 61022")]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    (t,) = traces(store)
    assert t["steps"] == ["scan-then-login"] and t["severity"] == "medium"
    assert t["event_count"] == 2


def test_port_scan_from_kernel_drops(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                     hooks: list) -> None:
    def drop(i: int, src: str) -> str:
        return line(i * 0.2, "kernel", f"[UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:"
                    f"00:65:43:21:08:00 SRC={src} DST=192.0.2.10 LEN=44 TOS=0x00 PREC=0x00 "
                    f"TTL=242 ID=54321 PROTO=TCP SPT=4444 DPT={20 + i} WINDOW=1024 RES=0x00 "
                    "SYN URGP=0")
    lines = [drop(i, "198.51.100.200") for i in range(20)] + \
            [drop(0, "198.51.100.201") for _ in range(20)]  # one port twenty times: no scan
    feed(store, rules, hooks, tmp_path / "kern.log", lines)
    (t,) = traces(store)
    assert t["steps"] == ["port-scan"] and t["ip_address"] == "198.51.100.200"


def test_recidive_after_unban(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                              hooks: list) -> None:
    def f2b(s: float, what: str) -> str:
        when = (T0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S,000")
        return f"{when} fail2ban.actions        [812]: NOTICE  [sshd] {what} 203.0.113.77"
    feed(store, rules, hooks, tmp_path / "fail2ban.log",
         [f2b(0, "Ban"), f2b(600, "Unban"), f2b(4000, "Ban")])
    (t,) = [t for t in traces(store) if "recidive" in t["steps"]]
    assert t["severity"] == "high" and t["ip_address"] == "203.0.113.77"


def test_canary_user(tmp_path: Path, store: SQLiteStore, rules: RuleSet, hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log", [
        line(0, "sshd-session[406147]", "Invalid user crowdsec-test-NtktlJHV4TfBSK3wvlhiOBnl "
             "from 127.0.0.1 port 49916")])
    (t,) = traces(store)
    assert t["steps"] == ["canary-user"]


def test_login_grace_timeouts_are_counted_by_their_rule(tmp_path: Path, store: SQLiteStore,
                                                       rules: RuleSet, hooks: list) -> None:
    # CVE-2024-6387: a timeout per grace period from one address; the 4th fires (capacity 3)
    lines = [line(i * 30, f"sshd[{300 + i}]", "fatal: Timeout before authentication for "
                  f"203.0.113.61 port {47000 + i}") for i in range(4)]
    # three from another address stay below it
    lines += [line(1 + i * 30, f"sshd[{400 + i}]", "fatal: Timeout before authentication for "
                   f"203.0.113.62 port {48000 + i}") for i in range(3)]
    # the same action under another rule (a client that left) is no timeout: 4 stay below
    # brute-force's threshold and fill no CVE bucket
    lines += [line(2 + i * 30, f"sshd[{500 + i}]", "Connection closed by 203.0.113.63 port "
                   f"{49000 + i} [preauth]") for i in range(4)]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    (t,) = traces(store)
    assert (t["ip_address"], t["steps"], t["severity"]) == ("203.0.113.61", ["cve-2024-6387"],
                                                            "medium")
    assert t["event_count"] == 4 and "CVE-2024-6387" in t["title"]


def test_packet_layer_fatals_across_a_restart(tmp_path: Path, db_path: Path,
                                              rules: RuleSet) -> None:
    fatal = ("ssh_dispatch_run_fatal: Connection from 203.0.113.64 port {}: message "
             "authentication code incorrect [preauth]")
    log = tmp_path / "auth.log"
    for start in (0, 2):  # two processes, two fatals each: the bucket is rebuilt from the store
        st = SQLiteStore(db_path)
        st.init()
        feed(st, rules, make_hooks(Cfg()), log,
             [line(start + i, f"sshd[{600 + start + i}]", fatal.format(50000 + start + i))
              for i in range(2)], mode="a")
        st.close()
    st = SQLiteStore(db_path)
    (t,) = traces(st)
    st.close()
    assert t["steps"] == ["cve-2024-6387"] and t["ip_address"] == "203.0.113.64"


def test_tcpwrappers_refusal_fires_on_one_line(tmp_path: Path, store: SQLiteStore,
                                              rules: RuleSet, hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log", [
        line(0, "sshd[16379]", "refused connect from example.com (203.0.113.65)"),
        # one refusal of another rule (sshd/not-allowed) is one failure, nothing more
        line(1, "sshd[16380]", "ROOT LOGIN REFUSED FROM 203.0.113.66 port 40000"),
    ])
    (t,) = traces(store)
    assert (t["ip_address"], t["steps"], t["severity"]) == ("203.0.113.65",
                                                            ["tcpwrappers-refused"], "low")
    assert t["event_count"] == 1


# ---- attacks on one user, logins ----------------------------------------------------------------
def test_distributed_attack_on_one_user(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                        hooks: list) -> None:
    lines = []
    for i in range(9):  # nine addresses, two attempts each: no address crosses its threshold
        lines += failures(f"203.0.113.{10 + i}", 2, start=i * 200, step=60, pid=500 + 10 * i)
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    (t,) = traces(store)
    assert (t["pattern"], t["user"], t["severity"]) == ("user-attack", "root", "high")
    assert t["steps"] == ["distributed-attack"] and "from 9 addresses" in t["title"]
    assert t["event_count"] == 18  # the attempts before it fired joined it


def test_login_from_new_address(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                hooks: list) -> None:
    ok = "Accepted publickey for alice from {} port 40112 ssh2: ED25519 SHA256:Zq3Y8m2E0b9"
    feed(store, rules, hooks, tmp_path / "auth.log", [
        line(0, "sshd[1]", ok.format("192.0.2.44")),       # first ever: not flagged
        line(60, "sshd[2]", ok.format("192.0.2.44")),      # known
        line(120, "sshd[3]", ok.format("198.51.100.77")),  # new for alice
        line(180, "sshd[4]", ok.format("198.51.100.77")),  # now known: same trace, no new one
    ])
    (t,) = traces(store)
    assert (t["pattern"], t["severity"], t["user"], t["ip_address"]) == \
        ("login", "low", "alice", "198.51.100.77")
    assert t["event_count"] == 2


# ---- privilege and accounts --------------------------------------------------------------------
def test_sudo_not_in_sudoers_and_failures(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                          hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log", [
        line(0, "sudo", "     bob : user NOT in sudoers ; TTY=pts/1 ; PWD=/home/bob ; "
             "USER=root ; COMMAND=/bin/bash"),
        *[line(10 + i, "sudo", "   carol : 1 incorrect password attempt ; TTY=pts/2 ; "
               "PWD=/home/carol ; USER=root ; COMMAND=/usr/bin/id") for i in range(3)],
        line(20, "sudo", "   dave : 1 incorrect password attempt ; TTY=pts/3 ; "
             "PWD=/home/dave ; USER=root ; COMMAND=/usr/bin/id"),
    ])
    by_user = {t["user"]: t for t in traces(store)}
    assert set(by_user) == {"bob", "carol"}  # dave mistyped once
    assert by_user["bob"]["steps"] == ["not-in-sudoers"]
    assert by_user["carol"]["steps"] == ["sudo-failures"]
    assert by_user["carol"]["event_count"] == 3  # the two before it fired joined it
    assert {t["severity"] for t in by_user.values()} == {"medium"}


def test_uid0_account_and_admin_group(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                      hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log", [
        line(0, "useradd[20620]", "new user: name=toor, UID=0, GID=0, home=/root, "
             "shell=/bin/bash, from=/dev/pts/0"),
        line(1, "useradd[20621]", "new user: name=deploy, UID=1002, GID=1002, "
             "home=/home/deploy, shell=/bin/bash, from=/dev/pts/0"),
        line(2, "usermod[20630]", "add 'deploy' to group 'sudo'"),
        line(3, "usermod[20631]", "add 'deploy' to shadow group 'sudo'"),
        line(4, "usermod[20632]", "delete 'carol' from group 'sudo'"),
        line(5, "usermod[20633]", "add 'carol' to group 'video'"),
        # removals, renames and the group's own changes grant nothing (metadata membership)
        line(6, "gpasswd[20634]", "user carol removed by root from group wheel"),
        line(7, "usermod[20635]", "change 'carol' to 'caroline' in group 'sudo'"),
        line(8, "groupdel[20636]", "removed group 'adm' owned by 'carol'"),
        line(9, "gpasswd[20637]", "user mallory added by root to group wheel"),
    ])
    by_user = {t["user"]: t for t in traces(store)}
    assert set(by_user) == {"toor", "deploy", "mallory"}
    assert by_user["toor"]["severity"] == "critical"
    assert by_user["deploy"]["severity"] == "high"
    assert by_user["deploy"]["steps"] == by_user["mallory"]["steps"] == ["admin-group"]
    assert by_user["deploy"]["event_count"] == 2  # both group lines; removals do not count
    assert by_user["mallory"]["title"] == "mallory added to privileged group wheel"


# ---- errors -------------------------------------------------------------------------------------
def test_error_burst_and_serious_error(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                       hooks: list) -> None:
    lines = []
    for i in range(6):
        lines.append(line(i * 30, "systemd[1]", "backup.service: Main process exited, "
                          "code=exited, status=1/FAILURE"))
    lines.append(line(5, "kernel", "[812345.117] I/O error, dev sda, sector 2048 op "
                      "0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2"))
    lines.append(line(6, "systemd[1]", "other.service: Failed with result 'exit-code'."))
    feed(store, rules, hooks, tmp_path / "syslog", lines)
    by_key = {t["causality"]["key"]: t for t in traces(store)}
    assert set(by_key) == {"web1 backup.service", "web1 kernel"}  # other.service: one error
    burst = by_key["web1 backup.service"]
    assert burst["steps"] == ["error-burst"] and burst["severity"] == "medium"
    assert burst["event_count"] == 6  # the 5th opened it with the 4 before; the 6th joined
    assert burst["title"] == "Error burst from backup.service on web1 (6 errors)"
    disk = by_key["web1 kernel"]
    assert disk["severity"] == "critical" and disk["title"].startswith("disk_io_error")
    # the error classes point at their trace
    assert scalar(store, "SELECT count(*) FROM error_traces WHERE trace_id = ?",
                  disk["id"]) == 1
    assert scalar(store, "SELECT count(*) FROM error_traces") == 8


# ---- lifecycle ----------------------------------------------------------------------------------
def test_trace_closes_after_gap_and_a_new_one_opens(tmp_path: Path, store: SQLiteStore,
                                                   rules: RuleSet, hooks: list) -> None:
    feed(store, rules, hooks, tmp_path / "auth.log",
         failures("203.0.113.5", 8) + failures("203.0.113.5", 8, start=3 * 3600, pid=9000))
    ts = traces(store)
    assert [t["status"] for t in ts] == ["closed", "open"]
    assert [t["event_count"] for t in ts] == [8, 8]


def test_brute_force_spanning_a_restart_is_one_trace(tmp_path: Path, db_path: Path,
                                                     rules: RuleSet) -> None:
    log = tmp_path / "auth.log"
    first = SQLiteStore(db_path)
    first.init()
    feed(first, rules, make_hooks(Cfg()), log, failures("203.0.113.5", 7))
    first.close()
    # a new process: new store, new hooks (empty memory), the same file grows
    second = SQLiteStore(db_path)
    feed(second, rules, make_hooks(Cfg()), log,
         failures("203.0.113.5", 5, start=20, pid=7000), mode="a")
    (t,) = traces(second)
    assert t["event_count"] == 12 and t["status"] == "open"
    assert scalar(second, "SELECT count(*) FROM log_events WHERE trace_id = ?", t["id"]) == 12
    # and windows are rebuilt, not only open traces: 3 + 3 attempts across a restart fire too
    feed(second, rules, make_hooks(Cfg()), tmp_path / "b.log",
         failures("198.51.100.3", 3, start=40, pid=8000))
    feed(second, rules, make_hooks(Cfg()), tmp_path / "c.log",
         failures("198.51.100.3", 3, start=44, pid=8100))
    assert [t["ip_address"] for t in traces(second)] == ["203.0.113.5", "198.51.100.3"]
    second.close()


def test_rolled_back_batch_does_not_leave_ghost_state(tmp_path: Path, store: SQLiteStore,
                                                      rules: RuleSet) -> None:
    hooks = make_hooks(Cfg())

    def boom(conn: Any, rows: Any, first_id: int) -> None:
        # the store's own failure rolls the whole batch back (a stage's bug would not)
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    with pytest.raises(OperationalError):
        feed(store, rules, [*hooks, boom], tmp_path / "a.log", failures("203.0.113.5", 7))
    assert scalar(store, "SELECT count(*) FROM log_events") == 0
    # the same hooks go on: the trace they opened in memory was rolled back with the batch
    feed(store, rules, hooks, tmp_path / "b.log", failures("203.0.113.5", 2, start=30))
    assert traces(store) == []


# ---- configuration ------------------------------------------------------------------------------
def test_config_table_is_validated(tmp_path: Path) -> None:
    assert make_hooks(Cfg({"enabled": False})) == []
    with pytest.raises(ConfigError, match="unknown key"):
        settings({"enable": True})
    with pytest.raises(ConfigError, match="must be bool"):
        settings({"enabled": "yes"})
    with pytest.raises(ConfigError, match="not found"):
        settings({"rules": str(tmp_path / "nope.toml")})


def test_rule_file_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    shipped = load_rules().path
    text = Path(shipped).read_text(encoding="utf-8")
    bad.write_text(text.replace('min_users = 6', 'min_users = "six"'))
    with pytest.raises(ConfigError, match=r"\[pattern.password-spray\]: min_users"):
        load_rules(bad)
    bad.write_text(text.replace('on = ["sudo_denied"]', 'on = ["sudo_deny"]'))
    with pytest.raises(ConfigError, match="unknown action"):
        load_rules(bad)
    bad.write_text(text.replace('title = "Port scan from {ip} ({ports} ports)"',
                                'title = "{password} {ip}"'))
    with pytest.raises(ConfigError, match="unknown field"):
        load_rules(bad)
    # a placeholder that is not a plain name is text, not an attribute lookup
    bad.write_text(text.replace('title = "Port scan from {ip} ({ports} ports)"',
                                'title = "{ip.__class__} {ip}"'))
    p = load_rules(bad).patterns["port-scan"]
    assert p.render({"ip": "192.0.2.1"}) == "{ip.__class__} 192.0.2.1"


def test_custom_thresholds_from_config(tmp_path: Path, store: SQLiteStore,
                                       rules: RuleSet) -> None:
    custom = tmp_path / "correlation.toml"
    text = Path(load_rules().path).read_text(encoding="utf-8")
    custom.write_text(text.replace("capacity = 5\n", "capacity = 1\n"))
    hooks = make_hooks(Cfg({"rules": str(custom)}))
    feed(store, rules, hooks, tmp_path / "auth.log", failures("203.0.113.5", 3))
    assert [t["steps"] for t in traces(store)] == [["brute-force"]]


def test_batch_hooks_keep_event_ids_in_order(tmp_path: Path, store: SQLiteStore,
                                             rules: RuleSet, hooks: list) -> None:
    # batch_lines=7 splits these across batches; the linked ids must be the stored rows
    feed(store, rules, hooks, tmp_path / "auth.log", failures("203.0.113.5", 20))
    (t,) = traces(store)
    with store.engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql(
            "SELECT id FROM log_events WHERE trace_id = ? ORDER BY id", (t["id"],))]
    assert ids == sorted(t["causality"]["events"]) and len(ids) == 20
    assert os.path.exists(store.path)


# ---- CLI: `logly traces` / `logly trace ID` ----------------------------------------------------
@pytest.fixture
def traces_cli(db_path: Path, tmp_path: Path) -> Any:
    import typer
    from typer.testing import CliRunner

    from logly.cli_traces import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    cfg = tmp_path / "logly.toml"
    cfg.write_text("")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, [*args, "--db", str(db_path), "--config", str(cfg)],
                             env={"COLUMNS": "250"})
    return run


def test_cli_lists_and_explains_traces(tmp_path: Path, store: SQLiteStore, rules: RuleSet,
                                       hooks: list, traces_cli: Any) -> None:
    lines = failures("203.0.113.8", 6) + [
        line(30, "sshd[999]", "Accepted password for root from 203.0.113.8 port 41999 ssh2"),
        line(40, "sshd-session[5]", "Invalid user crowdsec-test-\x1b[2J\x07x from 192.0.2.66 "
             "port 49916"),
        line(50, "sudo", "     bob : user NOT in sudoers ; TTY=pts/1 ; PWD=/home/bob ; "
             "USER=root ; COMMAND=/bin/bash"),
    ]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    by_title = {t["title"]: t for t in traces(store)}
    crit = next(t for t in by_title.values() if t["severity"] == "critical")
    # a kernel-tracer context trace (issue 4 writes these): info, hidden by default
    with store.engine.connect() as conn:
        conn.exec_driver_sql(
            "INSERT INTO event_traces (title, severity, pattern, first_seen, last_seen, "
            "event_count, created, updated) VALUES ('context of pid 4242', 'info', 'context', "
            "'2026-11-24T10:00:00.000000Z', '2026-11-24T10:00:00.000000Z', 0, 'x', 'x')")
        conn.exec_driver_sql(
            "INSERT INTO process_traces (trace_id, pid, ppid, uid, exe, cmdline, container, "
            "syscalls) VALUES (?, 4242, 1, 0, '/usr/sbin/sshd', 'sshd: root [priv]', "
            "'docker-ab12', '{\"failed\": {\"openat:EACCES\": 3}}')", (crit["id"],))
        conn.exec_driver_sql(
            "INSERT INTO network_traces (trace_id, pid, local_address, local_port, "
            "remote_address, remote_port, states) VALUES (?, 4242, '192.0.2.10', 22, "
            "'203.0.113.8', 41999, 'SYN_RECV>ESTABLISHED')", (crit["id"],))
        conn.commit()

    res = traces_cli("traces")
    assert res.exit_code == 0, res.output
    assert "context of pid" not in res.output  # info hidden by default
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\\x1b[2J" in res.output  # made visible, not executed
    assert "Successful login as root" in res.output

    res = traces_cli("traces", "--json", "--severity", "critical")
    rows = json.loads(res.output)
    assert [r["id"] for r in rows] == [crit["id"]]
    assert set(rows[0]) >= {"id", "title", "severity", "first_seen", "last_seen",
                            "ip_address", "user", "host", "event_count"}
    res = traces_cli("traces", "--json", "--severity", "info")
    assert any(r["title"] == "context of pid 4242" for r in json.loads(res.output))
    res = traces_cli("traces", "--json", "--user", "bob")
    assert [r["title"] for r in json.loads(res.output)] == [
        "bob tried sudo but is not in sudoers"]
    res = traces_cli("traces", "--json", "--ip", "203.0.113.8", "--since",
                     "2026-11-24T09:00:00+00:00", "--until", "2026-11-24T11:00:00+00:00")
    assert [r["id"] for r in json.loads(res.output)] == [crit["id"]]
    assert traces_cli("traces", "--severity", "urgent").exit_code != 0

    res = traces_cli("trace", str(crit["id"]))
    assert res.exit_code == 0, res.output
    for text in ("Causality", "login-after-failures", "Accepted password for root",
                 "/usr/sbin/sshd", "docker-ab12", "203.0.113.8:41999", "SYN_RECV>ESTABLISHED",
                 "What to do next", "authorized_keys", "openat:EACCES x3"):
        assert text in res.output, text
    one = json.loads(traces_cli("trace", str(crit["id"]), "--json").output)
    assert set(one) >= {"id", "title", "severity", "events", "processes", "connections",
                        "syscalls", "errors", "reputation"}
    assert len(one["events"]) == 7 and one["processes"][0]["exe"] == "/usr/sbin/sshd"
    assert one["syscalls"] == [{"pid": 4242, "failed": {"openat:EACCES": 3}}]
    assert traces_cli("trace", "99999").exit_code != 0

    # a context trace the kernel tracer wrote: its chain renders step by step
    ctx_id = next(r["id"] for r in json.loads(traces_cli("traces", "--json", "--severity",
                                                         "info").output)
                  if r["title"] == "context of pid 4242")
    with store.engine.connect() as conn:
        chain = {"version": 1, "source": "tracer", "steps": [
            {"kind": "process", "pid": 4242, "ppid": 1, "exe": "/usr/sbin/sshd"},
            {"kind": "connection", "pid": 4242, "local": "192.0.2.10:22",
             "remote": "203.0.113.8:41999", "states": ["SYN_RECV", "ESTABLISHED"]},
            {"kind": "event", "event_id": 1, "action": "auth_failure",
             "at": "2026-11-24T10:00:00.000000Z"}]}
        conn.exec_driver_sql("UPDATE event_traces SET causality = ? WHERE id = ?",
                             (json.dumps(chain), ctx_id))
        conn.commit()
    res = traces_cli("trace", str(ctx_id))
    assert res.exit_code == 0, res.output
    assert "process 4242 (parent 1) /usr/sbin/sshd" in res.output
    assert "SYN_RECV>ESTABLISHED" in res.output


def test_generated_day_finds_every_planted_incident(tmp_path: Path) -> None:
    """bench/correlate.py's day, small: each planted incident at its severity, no other trace."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_correlate", Path(__file__).resolve().parents[1] / "bench" / "correlate.py")
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    log = tmp_path / "day.log"
    expected = bench.generate(log, 30_000, seed=3)
    bench.ingest(tmp_path / "on.db", log, make_hooks(Cfg()))
    table, false_positives = bench.check(tmp_path / "on.db", expected)
    assert [r["incident"] for r in table if not r["ok"]] == []
    assert false_positives == []


def test_incident_takes_events_from_a_context_trace(tmp_path: Path, store: SQLiteStore,
                                                    rules: RuleSet) -> None:
    """The kernel tracer's hook runs after correlation and gives unclaimed events a 'context'
    trace; when a later batch reveals them as a brute force, the incident takes them over."""
    def context_hook(conn: Any, rows: Any, first_id: int) -> None:
        tid = conn.exec_driver_sql(
            "INSERT INTO event_traces (title, severity, pattern, first_seen, last_seen, "
            "event_count, created, updated) VALUES ('ctx', 'info', 'context', 'x', 'x', 0, "
            "'x', 'x')").lastrowid
        conn.exec_driver_sql("UPDATE log_events SET trace_id = ? WHERE id >= ? AND trace_id "
                             "IS NULL", (tid, first_id))

    hooks = [*make_hooks(Cfg()), context_hook]
    feed(store, rules, hooks, tmp_path / "a.log", failures("203.0.113.5", 4))
    feed(store, rules, hooks, tmp_path / "b.log", failures("203.0.113.5", 4, start=10))
    (t,) = [t for t in traces(store) if t["pattern"] == "address"]
    assert scalar(store, "SELECT count(*) FROM log_events WHERE trace_id = ?", t["id"]) == 8


def test_daemon_killed_mid_attack_keeps_one_trace(tmp_path: Path) -> None:
    """The real daemon with the hooks follows a file; SIGKILL after 4 attempts (below the
    threshold), a new daemon process, 4 more attempts: one brute-force trace of 8 events."""
    import signal
    import subprocess
    import sys
    import time

    log, db, cfg = tmp_path / "auth.log", tmp_path / "l.db", tmp_path / "logly.toml"
    cfg.write_text("")
    log.write_text("")
    child = (
        "import sys\n"
        "from pathlib import Path\n"
        "from logly.config import SourceSpec, load_config\n"
        "from logly.daemon import DaemonOptions, run_daemon\n"
        "from logly.tracer.correlate import make_hooks\n"
        f"opts = DaemonOptions(config_path=Path({str(cfg)!r}), db=Path({str(db)!r}),\n"
        f"    follow=[SourceSpec.parse({str(log)!r})], from_start=True, tracer=False)\n"
        f"sys.exit(run_daemon(opts, make_hooks(load_config({str(cfg)!r}))))\n")

    def events() -> int:
        if not db.exists():
            return 0
        try:
            with SQLiteStore(db).engine.connect() as conn:
                return conn.exec_driver_sql("SELECT count(*) FROM log_events").scalar_one()
        except Exception:
            return 0

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while events() < n:
            assert time.monotonic() < deadline, f"daemon stored {events()} of {n} events"
            time.sleep(0.1)

    def append(lines: list[str]) -> None:
        with open(log, "a", encoding="utf-8") as f:
            f.write("".join(x + "\n" for x in lines))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, "-c", child], env=env, stderr=subprocess.DEVNULL)
    try:
        append(failures("203.0.113.5", 4))
        wait_for(4)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = subprocess.Popen([sys.executable, "-c", child], env=env, stderr=subprocess.DEVNULL)
    try:
        append(failures("203.0.113.5", 4, start=10, pid=7000))
        wait_for(8)  # traces commit in the same transaction as the events
    finally:
        second.terminate()
        second.wait(timeout=30)
    store = SQLiteStore(db)
    (t,) = traces(store)
    assert (t["steps"], t["event_count"]) == (["brute-force"], 8)
    assert scalar(store, "SELECT count(*) FROM log_events WHERE trace_id = ?", t["id"]) == 8
    store.close()


def test_an_older_file_read_later_does_not_fire_on_one_attempt(tmp_path: Path,
                                                               store: SQLiteStore,
                                                               rules: RuleSet,
                                                               hooks: list) -> None:
    # today's auth.log first, then yesterday's rotated auth.log.1: time goes backwards
    feed(store, rules, hooks, tmp_path / "auth.log",
         failures("203.0.113.5", 5, start=86400, step=2))
    feed(store, rules, hooks, tmp_path / "auth.log.1", failures("203.0.113.5", 1, start=0))
    assert traces(store) == []


def test_rotated_file_read_after_the_current_one_extends_the_trace(
        tmp_path: Path, store: SQLiteStore, rules: RuleSet, hooks: list) -> None:
    # an attack across log rotation; `logly ingest auth.log auth.log.1` reads the newer half
    # first, then later lines of the same day move the batch time past the trace's gap
    feed(store, rules, hooks, tmp_path / "auth.log",
         failures("203.0.113.5", 8, start=100) + [
             line(3 * 3600, "sshd[1]", "Accepted publickey for alice from 192.0.2.44 port 1 "
                  "ssh2: ED25519 SHA256:x")])
    feed(store, rules, hooks, tmp_path / "auth.log.1", failures("203.0.113.5", 6, start=0))
    (t,) = traces(store)
    assert t["event_count"] == 14 and t["first_seen"] == "2026-11-24T10:00:00.000000Z"


def test_classify_can_be_turned_off(tmp_path: Path, store: SQLiteStore, rules: RuleSet) -> None:
    hooks = make_hooks(Cfg({"classify": False}))
    feed(store, rules, hooks, tmp_path / "syslog", [
        line(0, "kernel", "I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x800 "
             "phys_seg 1 prio class 2"), *failures("203.0.113.5", 6, start=1)])
    assert scalar(store, "SELECT count(*) FROM error_traces") == 0
    assert [t["steps"] for t in traces(store)] == [["brute-force"]]


def test_recurring_shapes_are_counted_in_trace_patterns(tmp_path: Path, store: SQLiteStore,
                                                        rules: RuleSet, hooks: list) -> None:
    lines = failures("203.0.113.5", 6) + failures("203.0.113.6", 6, start=100, pid=5000) + \
        [line(200, "sshd[9]", "Accepted password for root from 203.0.113.6 port 1 ssh2")]
    feed(store, rules, hooks, tmp_path / "auth.log", lines)
    with store.engine.connect() as conn:
        rows = dict(conn.exec_driver_sql(
            "SELECT signature, occurrences FROM trace_patterns").all())
    # both traces went through brute-force; one went on to a login
    assert rows == {"address:brute-force": 2,
                    "address:brute-force>login-after-failures": 1}
