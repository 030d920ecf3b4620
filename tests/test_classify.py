# ruff: noqa: E501  (DEBIAN below holds real log lines, kept whole)
"""Error classes (rules/errors.toml): samples, false positives, hostile input, and real
Debian 12 lines through ingest into error_traces."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from logly.errors import ConfigError
from logly.ingest import ingest_input
from logly.parsers.rules import RuleSet
from logly.sources.files import open_input
from logly.store.sqlite import SQLiteStore
from logly.tracer.classify import CATEGORIES, Classifier, check_bounded, load_classes
from logly.tracer.correlate import make_hooks

CLASSIFIER = Classifier.load()
ALL = [(c.name, s) for c in CLASSIFIER.classes for s in c.samples]
NOT = [(c.name, s) for c in CLASSIFIER.classes for s in c.not_samples]


def program_of(name: str) -> str | None:
    c = next(c for c in CLASSIFIER.classes if c.name == name)
    return c.programs[0] if c.programs else None


@pytest.mark.parametrize(("name", "sample"), ALL)
def test_every_sample_matches_its_class(name: str, sample: str) -> None:
    hit = CLASSIFIER.classify(program_of(name), sample)
    assert hit is not None and hit.cls.name == name


@pytest.mark.parametrize(("name", "sample"), NOT)
def test_not_samples_do_not_match(name: str, sample: str) -> None:
    hit = CLASSIFIER.classify(program_of(name), sample)
    assert hit is None or hit.cls.name != name


def test_every_class_has_a_sample_and_every_category_is_used() -> None:
    assert all(c.samples for c in CLASSIFIER.classes)
    assert {c.category for c in CLASSIFIER.classes} == CATEGORIES


def test_program_dispatch() -> None:
    # a kernel OOM line written by another program is not a kernel OOM kill
    assert CLASSIFIER.classify("bash", "Out of memory: Killed process 1 (init)") is None
    # program-specific classes win over generic ones
    hit = CLASSIFIER.classify("systemd", "foo.service: Failed to execute /usr/bin/foo: "
                              "Permission denied")
    assert hit is not None and hit.cls.name == "systemd-exec-failed"
    hit = CLASSIFIER.classify("nginx", "open() \"/var/www/x\" failed (13: Permission denied)")
    assert hit is not None and hit.cls.type == "permission_denied" and hit.file == "/var/www/x"


@pytest.mark.parametrize("message", [
    "Received disconnect from 198.51.100.7 port 4000:11: No space left on device [preauth]",
    "input_userauth_request: invalid user Input/output error [preauth]",
    "Bad protocol version identification 'Out of memory: Killed process 1 (x)' from 192.0.2.1",
    "Connection closed by 192.0.2.9 port 22: Permission denied /etc/shadow",
])
def test_remote_text_in_sshd_lines_cannot_raise_an_error(message: str) -> None:
    assert CLASSIFIER.classify("sshd", message) is None
    assert CLASSIFIER.classify("sshd-session", message) is None


def test_loader_rejects_unanchored_and_unbounded_patterns(tmp_path: Path) -> None:
    assert check_bounded("^foo .{0,20}? bar") is None
    assert "anchored" in str(check_bounded("foo"))
    assert "unbounded" in str(check_bounded("^(a+)+$"))
    assert "unbounded" in str(check_bounded("^.*No space"))
    assert "unbounded" in str(check_bounded("^x{2,}"))
    assert check_bounded(r"^[*+]\+ \*") is None  # literal * and + are fine
    bad = tmp_path / "errors.toml"
    bad.write_text('[[error]]\nname = "x"\nkeywords = ["a"]\nmatch = \'^(a|aa)*$\'\n'
                   'type = "t"\ncategory = "network"\nseverity = "low"\n')
    with pytest.raises(ConfigError, match=r"#1 \(x\): match uses an unbounded repeat"):
        load_classes(bad)
    bad.write_text('[[error]]\nname = "x"\nkeywords = ["a"]\nmatch = \'^a\'\n'
                   'type = "t"\ncategory = "networking"\nseverity = "low"\n')
    with pytest.raises(ConfigError, match="category must be one of"):
        load_classes(bad)


def test_hostile_input_stays_linear() -> None:
    """64 KiB lines built to make backtracking regexes explode, with every keyword present."""
    keywords = [k for c in CLASSIFIER.classes for k in c.keywords]
    nasty = [
        "a" * 65536,
        " " * 65530 + "X",
        "/" * 32000 + " ".join(keywords),
        ("(" + "x" * 60 + ")") * 1000 + "".join(keywords),
        "".join(keywords) * 40 + "\x1b[31m" * 1000,
        "PAM unable to dlopen(" + "a" * 60000,
        "I/O error, dev " + "s" * 65000,
    ]
    worst = 0.0
    for text in nasty:
        for c in CLASSIFIER.classes:
            t0 = time.perf_counter()
            c.regex.match(text)
            if c.extract is not None:
                c.extract.search(text, 0, 4096)
            worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05, f"a class took {worst * 1000:.1f} ms on hostile input"


def test_captured_text_is_bounded_and_not_interpreted() -> None:
    evil = "/etc/" + "A" * 5000
    hit = CLASSIFIER.classify("sshd", f"Authentication refused: bad ownership or modes for "
                              f"file {evil}")
    assert hit is not None and hit.file is not None and len(hit.file) <= 255
    hit = CLASSIFIER.classify("sshd", "Authentication refused: bad ownership or modes for "
                              "file /home/{code}/{hints.__class__}")  # sshd's own wording
    assert hit is not None and "__class__" in hit.hints  # placeholders in values stay text


DEBIAN = """\
Nov 24 03:12:01 web1 kernel: [812345.117204] java invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
Nov 24 03:12:01 web1 kernel: [812345.117399] Out of memory: Killed process 2314 (java) total-vm:4823104kB, anon-rss:2017852kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4392kB oom_score_adj:0
Nov 24 03:12:02 web1 systemd[1]: tomcat.service: A process of this unit has been killed by the OOM killer.
Nov 24 03:14:10 web1 kernel: [812474.001] nginx[4321]: segfault at 0 ip 000055d0c8a1b2c3 sp 00007ffc6e1f8a30 error 4 in nginx[55d0c8a00000+e4000] likely on CPU 1 (core 1, socket 0)
Nov 24 03:20:00 web1 rsyslogd: file '/var/log/syslog'[7] write error - see https://www.rsyslog.com/solving-rsyslog-write-errors/ for help OS error: No space left on device [v8.2302.0 try https://www.rsyslog.com/e/2027 ]
Nov 24 03:21:09 web1 kernel: [813002.5] I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2
Nov 24 03:22:00 web1 sshd[1201]: error: Could not load host key: /etc/ssh/ssh_host_ecdsa_key
Nov 24 03:22:05 web1 sshd[1210]: Authentication refused: bad ownership or modes for directory /home/alice/.ssh
Nov 24 03:22:10 web1 sshd[1220]: userauth_pubkey: key type ssh-rsa not in PubkeyAcceptedAlgorithms [preauth]
Nov 24 03:22:20 web1 sshd[1230]: PAM unable to dlopen(pam_google_authenticator.so): /lib/security/pam_google_authenticator.so: cannot open shared object file: No such file or directory
Nov 24 03:22:20 web1 sshd[1230]: PAM adding faulty module: pam_google_authenticator.so
Nov 24 03:25:01 web1 CRON[5120]: (root) CMD (/usr/local/bin/backup.sh)
Nov 24 03:25:03 web1 CRON[5119]: (CRON) error (grandchild #5120 failed with exit status 127)
Nov 24 03:30:00 web1 systemd[1]: backup.service: Main process exited, code=exited, status=1/FAILURE
Nov 24 03:30:00 web1 systemd[1]: backup.service: Failed with result 'exit-code'.
Nov 24 03:30:00 web1 systemd[1]: Failed to start backup.service - Nightly backup.
Nov 24 03:31:00 web1 sshd[1300]: /etc/ssh/sshd_config: line 14: Bad configuration option: PermitRootLogn
Nov 24 03:32:00 web1 sshd[1301]: Failed password for root from 203.0.113.9 port 40000 ssh2
Nov 24 03:33:00 web1 systemd[1]: Started session-14.scope - Session 14 of User alice.
Nov 24 03:33:01 web1 CRON[5200]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)
"""

EXPECTED = [  # (error_type, category, severity, file, line_no, code)
    ("oom_pressure", "crash/OOM", "medium", None, None, None),
    ("oom_kill", "crash/OOM", "high", None, None, None),
    ("oom_kill", "crash/OOM", "high", None, None, None),
    ("segfault", "crash/OOM", "high", "nginx", None, "4"),
    ("disk_full", "resource exhaustion", "high", "/var/log/syslog", None, None),
    ("disk_io_error", "hardware/disk", "critical", "sda", None, "2048"),
    ("host_key_unreadable", "permission", "high", "/etc/ssh/ssh_host_ecdsa_key", None, None),
    ("bad_key_file_modes", "permission", "medium", "/home/alice/.ssh", None, None),
    ("weak_key_refused", "security policy", "low", None, None, "ssh-rsa"),
    ("pam_module_load", "authentication", "high", "pam_google_authenticator.so", None, None),
    ("pam_module_load", "authentication", "high", "pam_google_authenticator.so", None, None),
    ("cron_job_failed", "configuration", "medium", None, None, "127"),
    ("unit_failed", "configuration", "medium", None, None, None),
    ("unit_failed", "configuration", "medium", None, None, "exit-code"),
    ("unit_failed", "configuration", "medium", None, None, None),
    ("config_error", "configuration", "medium", "/etc/ssh/sshd_config", 14,
     "Bad configuration option"),
]


def test_debian_lines_through_ingest(tmp_path: Path, store: SQLiteStore,
                                     rules: RuleSet) -> None:
    import os

    log = tmp_path / "syslog"
    log.write_text(DEBIAN)
    os.utime(log, (1764000000, 1764000000))

    class Cfg:
        sections: dict = {}

    inp = open_input(str(log))
    try:
        ingest_input(store, rules, inp, hooks=make_hooks(Cfg()), parallel=False)
    finally:
        inp.close()
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT x.error_type, x.category, x.severity, x.file, x.line_no, x.code, x.hints, "
            "x.suggestions, e.program FROM error_traces x JOIN log_events e ON "
            "e.id = x.event_id ORDER BY x.id").all()
    assert [tuple(r[:6]) for r in rows] == EXPECTED
    assert all(r[6] and r[7] for r in rows)  # every class explains itself
    seg = rows[3]
    assert "nginx (pid 4321)" in seg[6] and "coredumpctl" in seg[7]


def test_security_events_are_not_classified() -> None:
    row = ("2026-11-24T10:00:00.000000Z", "syslog", "web1", "nginx", 1, "warning", "ssh",
           "auth_failure", "Failed password for root from 192.0.2.1 port 1 ssh2: "
           "Permission denied", "192.0.2.1", "root", 1, None, 1, 0)
    assert CLASSIFIER.classify_rows([row]) == []
    info = row[:7] + ("info",) + row[8:]
    assert len(CLASSIFIER.classify_rows([info])) == 1
