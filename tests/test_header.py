"""Syslog headers: every form named in the issue, converted to UTC, with year inference."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from logly.parsers.header import HeaderParser

ZURICH = ZoneInfo("Europe/Zurich")


@pytest.fixture
def hp() -> HeaderParser:
    return HeaderParser(tz=ZURICH, reference=datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


@pytest.mark.parametrize(("line", "ts", "host", "prog", "pid", "msg"), [
    # RFC 3164, local time (CET = UTC+1 in November)
    ("Nov  3 10:00:00 web1 sshd[42]: Invalid user a from 1.2.3.4",
     "2026-11-03T09:00:00.000000Z", "web1", "sshd", 42, "Invalid user a from 1.2.3.4"),
    # summer time (CEST = UTC+2)
    ("Jul 14 10:00:00 web1 sshd[42]: x", "2026-07-14T08:00:00.000000Z", "web1", "sshd", 42,
     "x"),
    # Debian 12 rsyslog default: ISO with microseconds and offset
    ("2026-11-24T10:00:00.123456+01:00 web1 sshd-session[7]: x",
     "2026-11-24T09:00:00.123456Z", "web1", "sshd-session", 7, "x"),
    # journalctl -o short-iso
    ("2026-11-24T10:00:00+0100 web1 sudo[9]: x", "2026-11-24T09:00:00.000000Z", "web1",
     "sudo", 9, "x"),
    # RFC 5424 with structured data
    ('<38>1 2022-01-19T14:23:55+00:00 fw sshd 44255 - [meta sequenceId="1"] Invalid user a',
     "2022-01-19T14:23:55.000000Z", "fw", "sshd", 44255, "Invalid user a"),
    # no host, program without pid
    ("May  9 11:11:17 sshd[30876]: x", "2026-05-09T09:11:17.000000Z", None, "sshd", 30876, "x"),
    ("Nov 24 10:00:00 web1 sudo:    alice : TTY=pts/0", "2026-11-24T09:00:00.000000Z", "web1",
     "sudo", None, "   alice : TTY=pts/0"),
    # fail2ban.log, local time with milliseconds
    ("2026-11-24 10:00:00,123 fail2ban.actions        [811]: NOTICE  [sshd] Ban 1.2.3.4",
     "2026-11-24T09:00:00.123000Z", None, "fail2ban.actions", 811,
     "NOTICE  [sshd] Ban 1.2.3.4"),
    # kernel with uptime stays in the message (the kernel rules strip it)
    ("Nov 24 10:00:00 web1 kernel: [  970.699396] [UFW BLOCK] IN=eth0",
     "2026-11-24T09:00:00.000000Z", "web1", "kernel", None,
     "[  970.699396] [UFW BLOCK] IN=eth0"),
    # busybox facility token, rsyslog "prog[pid]" without colon
    ("Jun 20 02:18:39 vps auth.info sshd[13482]: x", "2026-06-20T00:18:39.000000Z", "vps",
     "sshd", 13482, "x"),
    ("2020-05-29T11:28:56.058908+02:00 bastion sshd[20974] error: x",
     "2020-05-29T09:28:56.058908Z", "bastion", "sshd", 20974, "error: x"),
])
def test_header_forms(hp: HeaderParser, line: str, ts: str, host: str | None, prog: str,
                      pid: int | None, msg: str) -> None:
    h = hp.parse(line)
    assert h is not None
    assert (h.timestamp, h.host, h.program, h.pid) == (ts, host, prog, pid)
    assert h.message.strip() == msg.strip()


def test_december_read_in_january_is_last_year() -> None:
    hp = HeaderParser(tz=UTC, reference=datetime(2027, 1, 2, 3, 0, tzinfo=UTC))
    assert hp.parse("Dec 31 23:59:59 h p[1]: x").timestamp == "2026-12-31T23:59:59.000000Z"
    assert hp.parse("Jan  2 01:00:00 h p[1]: x").timestamp == "2027-01-02T01:00:00.000000Z"


def test_explicit_year_wins() -> None:
    hp = HeaderParser(tz=UTC, reference=datetime(2027, 1, 2, tzinfo=UTC), year=2019)
    assert hp.parse("Dec 31 23:59:59 h p[1]: x").timestamp.startswith("2019-12-31")


def test_impossible_dates_are_not_headers(hp: HeaderParser) -> None:
    feb30 = hp.parse("Feb 30 10:00:00 h p[1]: x")
    assert feb30 is None or feb30.timestamp is None
    assert hp.parse("just words here") is None
    assert hp.parse("") is None


def test_timestamps_sort_as_text(hp: HeaderParser) -> None:
    a = hp.parse("2026-11-24T10:00:00.5+01:00 h p[1]: x").timestamp
    b = hp.parse("2026-11-24T10:00:01+01:00 h p[1]: x").timestamp
    assert a < b and len(a) == len(b)
