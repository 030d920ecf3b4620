"""journald as a source, on real journal files written by systemd-journal-remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.parsers.rules import RuleSet
from logly.sources.journal import JournalQuery, ingest_journal
from logly.store.sqlite import SQLiteStore

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
CORPORA = Path(os.environ.get("LOGLY_CORPORA",
                              Path(__file__).resolve().parents[2] / "shared" / "corpora"))
BOOT = "0123456789abcdef0123456789abcdef"

needs_journal = pytest.mark.skipif(
    not (os.path.exists(JOURNAL_REMOTE) and shutil.which("journalctl")) and not os.environ.get(
        "CI"), reason="systemd-journal-remote / journalctl not installed")


def export_entry(seq: int, message: str | bytes, *, ident: str = "sshd", pid: int = 100,
                 host: str = "srv", extra: dict[str, str] | None = None) -> bytes:
    """One entry in journald's export format (binary-safe form for byte messages)."""
    fields = {"__REALTIME_TIMESTAMP": str(1_763_978_400_000_000 + seq * 1_000_000),
              "__MONOTONIC_TIMESTAMP": str(1000 + seq), "_BOOT_ID": BOOT, "_HOSTNAME": host,
              "SYSLOG_IDENTIFIER": ident, "_COMM": ident, "_PID": str(pid), "_UID": "0",
              "PRIORITY": "6", "SYSLOG_FACILITY": "10", **(extra or {})}
    out = b"".join(f"{k}={v}\n".encode() for k, v in fields.items())
    if isinstance(message, bytes):
        out += b"MESSAGE\n" + len(message).to_bytes(8, "little") + message + b"\n"
    else:
        out += f"MESSAGE={message}\n".encode()
    return out + b"\n"


def write_journal(path: Path, entries: list[bytes]) -> None:
    exp = path.with_suffix(".export")
    exp.write_bytes(b"".join(entries))
    subprocess.run([JOURNAL_REMOTE, "-o", str(path), str(exp)], check=True,
                   capture_output=True)


def rows(db: Path, sql: str = "SELECT user, ip_address, action FROM log_events ORDER BY id"
         ) -> list[tuple]:
    try:
        return sqlite3.connect(db, timeout=10).execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


@needs_journal
def test_entries_become_the_same_events_as_syslog_lines(tmp_path: Path, store: SQLiteStore,
                                                        rules: RuleSet) -> None:
    journal = tmp_path / "a.journal"
    write_journal(journal, [
        export_entry(1, "Invalid user admin from 203.0.113.7 port 50000", pid=10),
        export_entry(2, b"Invalid user \xff\xfe from 203.0.113.8 port 50001", pid=11),
        export_entry(3, "pam_unix(sudo:auth): authentication failure; logname=bob uid=1000 "
                     "euid=0 tty=/dev/pts/0 ruser=bob rhost=  user=bob", ident="sudo", pid=12),
        export_entry(4, "Invalid user x from 203.0.113.9 port 1", pid=13,
                     extra={"_SYSTEMD_UNIT": "ssh.service"}),
    ])
    q = JournalQuery(files=[str(journal)])
    s = ingest_journal(store, rules, q)
    assert (s.lines, s.events) == (4, 4)
    evs = sorted(store.get_log_events(limit=None), key=lambda e: e["offset"])
    assert [e["ip_address"] for e in evs] == ["203.0.113.7", "203.0.113.8", None,
                                              "203.0.113.9"]
    assert evs[0]["timestamp"] == "2025-11-24T10:00:01.000000Z" and evs[0]["pid"] == 10
    assert evs[0]["source"] == "journal" and evs[0]["path"] == f"journal:{journal}"
    assert evs[0]["metadata"]["cursor"].startswith("s=") and evs[0]["offset"] == 1
    assert evs[1]["user"] == "\ufffd\ufffd"  # a byte-array MESSAGE is decoded, not dropped
    assert evs[3]["metadata"]["systemd_unit"] == "ssh.service"
    assert evs[3]["metadata"]["uid"] == "0" and evs[3]["metadata"]["trusted_pid"] is True
    # a second run resumes after the committed cursor: nothing twice
    write_journal(journal, [export_entry(5, "Invalid user late from 198.51.100.5 port 2")])
    s = ingest_journal(store, rules, q)
    assert (s.lines, s.events) == (1, 1)
    assert len(store.get_log_events(limit=None)) == 5


@needs_journal
def test_match_filters_select_entries(tmp_path: Path, store: SQLiteStore,
                                      rules: RuleSet) -> None:
    journal = tmp_path / "b.journal"
    write_journal(journal, [
        export_entry(1, "Invalid user a from 203.0.113.1 port 1"),
        export_entry(2, "Started something.", ident="systemd", extra={"SYSLOG_FACILITY": "3"}),
    ])
    s = ingest_journal(store, rules, JournalQuery(files=[str(journal)]))
    assert s.lines == 1  # the default filter keeps auth-relevant entries only
    s = ingest_journal(store, rules, JournalQuery(matches=["_COMM=systemd"],
                                                  files=[str(journal)]))
    assert s.lines == 1


@needs_journal
def test_fail2ban_journal_samples_match_their_syslog_twins(tmp_path: Path, store: SQLiteStore,
                                                           rules: RuleSet) -> None:
    sample = CORPORA / "fail2ban" / "logs" / "sshd-journal"
    if not sample.exists():
        if os.environ.get("CI"):
            pytest.fail(f"corpus missing in CI: {sample}")
        pytest.skip("../shared/corpora not present")
    pattern = re.compile(r"(\S+) (sshd(?:-session)?)\[(\d+)\]: (.*)")
    lines = [ln for ln in sample.read_bytes().split(b"\n") if ln and not ln.startswith(b"#")]
    entries, twins = [], []
    for i, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace")
        m = pattern.fullmatch(text)
        if m is None:
            continue
        entries.append(export_entry(i, m[4], ident=m[2], pid=int(m[3]), host=m[1]))
        twins.append(text)
    assert len(twins) > 100
    journal = tmp_path / "f2b.journal"
    write_journal(journal, entries)
    s = ingest_journal(store, rules, JournalQuery(files=[str(journal)]))
    assert s.lines == len(twins)
    got = [(e["action"], e["ip_address"], e["user"]) for e in
           sorted(store.get_log_events(limit=None), key=lambda e: e["offset"])]
    parser = LineParser(rules, HeaderParser())
    want = []
    for t in twins:
        ev = parser.parse(t).event
        want.append((ev.action, ev.ip_address, ev.user))
    assert got == want
    assert sum(1 for a, ip, _ in got if ip) > 60


@needs_journal
def test_daemon_follows_the_journal_exactly_once_across_sigkill(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    jdir.mkdir()
    journal = jdir / "remote.journal"
    db = tmp_path / "l.db"
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f'[[source]]\ntype = "journal"\ndirectory = "{jdir}"\n'
                   "[daemon]\nbatch_seconds = 0.05\npoll_seconds = 0.05\n")
    args = [sys.executable, "-m", "logly.cli", "daemon", "--db", str(db), "--config", str(cfg),
            "--from-start"]
    seq = 0

    def append(n: int) -> None:
        nonlocal seq
        write_journal(journal, [export_entry(seq + i, f"Invalid user u{seq + i} from "
                                             f"203.0.113.{(seq + i) % 250} port 1")
                                for i in range(n)])
        seq += n

    procs = []
    err = open(tmp_path / "daemon.err", "a")  # noqa: SIM115
    try:
        append(20)
        for _cycle in range(6):
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True)
            procs.append(p)
            time.sleep(1.0)
            append(15)
            time.sleep(0.3)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            append(5)  # written while nothing reads
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                             start_new_session=True)
        procs.append(p)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(rows(db)) < seq:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        err.close()
    users = [r[0] for r in rows(db)]
    missing = sorted(set(range(seq)) - {int(u[1:]) for u in users})
    assert len(users) == seq, f"{len(users)} stored of {seq}, missing {missing}: " + \
        (tmp_path / "daemon.err").read_text()[-3000:]
    assert sorted(users) == sorted(f"u{i}" for i in range(seq))


def test_journalctl_json_on_stdin_is_understood(parser: LineParser) -> None:
    entry = {"__CURSOR": "s=ab;i=1f", "__REALTIME_TIMESTAMP": "1763978400000000",
             "_HOSTNAME": "srv", "SYSLOG_IDENTIFIER": "sshd", "_PID": "77",
             "MESSAGE": "Invalid user bob from 198.51.100.3 port 9"}
    out = parser.parse(json.dumps(entry), "-", 0)
    assert out.rule is not None and out.event.ip_address == "198.51.100.3"
    assert out.event.pid == 77 and out.event.offset == 0


def test_an_idle_follow_is_reopened_from_the_cursor_without_repeats(
        tmp_path: Path, store: SQLiteStore, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """journalctl --follow can sleep through a writer that sends no inotify event; the
    follower re-queries from the committed cursor when it has heard nothing for a while."""
    from logly.sources import journal as jmod

    monkeypatch.setattr(jmod, "REOPEN_IDLE_SECONDS", 0.3)
    jdir = tmp_path / "journal"
    jdir.mkdir()
    journal = jdir / "remote.journal"
    write_journal(journal, [export_entry(i, f"Invalid user u{i} from 203.0.113.{i} port 1")
                            for i in range(5)])
    f = jmod.JournalFollower(store, RuleSet.load(),
                             JournalQuery(matches=[], directory=str(jdir)), from_start=True)

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            f.poll(10_000)
            if f.due(10_000, 0.05):
                f.flush()
            time.sleep(0.05)

    pump(2.0)  # reads the five, then sits idle past REOPEN_IDLE_SECONDS
    assert f.reopened >= 1
    write_journal(journal, [export_entry(i, f"Invalid user u{i} from 203.0.113.{i} port 1")
                            for i in range(5, 9)])
    pump(2.0)
    f.close()
    users = [r[0] for r in rows(store.path)]
    assert sorted(users) == sorted(f"u{i}" for i in range(9))  # each once
