"""The rule pattern language: compilation, errors, and address anchoring."""

from __future__ import annotations

from pathlib import Path

import pytest

from logly.errors import ConfigError
from logly.parsers.patterns import PatternError, compile_pattern
from logly.tracer.patterns import load_rules


def groups(pattern: str, text: str) -> dict[str, str] | None:
    c = compile_pattern(pattern)
    m = c.regex.match(text)
    if m is None:
        return None
    return {c.groups[g]: v for g, v in m.groupdict().items() if v is not None}


def test_captures_optionals_and_choices() -> None:
    p = "Failed <method:word> for {invalid user |}<user> from <ip>[ port <port>][ ssh2]"
    assert groups(p, "Failed password for invalid user bob from 1.2.3.4 port 22 ssh2") == {
        "method": "password", "user": "bob", "ip": "1.2.3.4", "port": "22"}
    assert groups(p, "Failed none for root from ::1") == {"method": "none", "user": "root",
                                                          "ip": "::1"}
    assert groups(p, "Failed password for root from 1.2.3.4 port 22 ssh2 trailing") is None


def test_space_matches_runs_of_spaces_and_escapes_are_literal() -> None:
    assert groups(r"rhost=<ip> user=<user:word> \[x\]", "rhost=1.2.3.4  user=root [x]") == {
        "ip": "1.2.3.4", "user": "root"}


def test_patterns_are_anchored_at_both_ends() -> None:
    assert groups("Invalid user <user> from <ip>", "xx Invalid user a from 1.2.3.4") is None
    assert groups("Invalid user <user> from <ip>", "Invalid user a from 1.2.3.4 x") is None


def test_last_address_wins_before_a_fixed_tail() -> None:
    g = groups("Invalid user <user> from <ip> port <port>",
               "Invalid user x from 6.6.6.6 port 1 from 1.2.3.4 port 2")
    assert g == {"user": "x from 6.6.6.6 port 1", "ip": "1.2.3.4", "port": "2"}


def test_free_text_after_the_address_gets_a_second_reading() -> None:
    c = compile_pattern("Failed <m:word> for <user> from <ip> port <port>[: <*>]")
    assert c.lazy is not None and c.ip_sep == "from"
    assert compile_pattern("Invalid user <user> from <ip>").lazy is None


@pytest.mark.parametrize(("pattern", "needle"), [
    ("Failed for <user from <ip>", "bracket"),
    ("Failed [for <user>", "bracket"),
    ("Failed for <user:nosuchtype>", "unknown capture type"),
    ("", "empty"),
])
def test_errors_are_explained(pattern: str, needle: str) -> None:
    with pytest.raises(PatternError, match=needle):
        compile_pattern(pattern)


def test_text_fields_are_empty_or_start_with_a_non_space() -> None:
    p = "ruser=<ruser:text> rhost=<ip>[ user=<user:any>]"
    # "ruser= rhost=A user=x rhost=B": pam wrote an empty ruser, so A is the host
    assert groups(p, "ruser= rhost=192.0.2.2 user=test rhost=192.0.2.152") == {
        "ruser": "", "ip": "192.0.2.2", "user": "test rhost=192.0.2.152"}
    assert groups(p, "ruser=test rhost=192.0.2.151 rhost=192.0.2.1") == {
        "ruser": "test rhost=192.0.2.151", "ip": "192.0.2.1"}
    c = compile_pattern(p)
    assert c.lazy is not None and c.ip_sep == "rhost="


def test_bounded_free_text() -> None:
    assert groups("a <r:short> b", "a " + "x" * 128 + " b") == {"r": "x" * 128}
    assert groups("a <r:short> b", "a " + "x" * 129 + " b") is None
    assert groups("a <r:long> b", "a " + "x" * 1024 + " b") == {"r": "x" * 1024}
    assert groups("a <r:long> b", "a " + "x" * 1025 + " b") is None


# ---- correlation patterns (rules/correlation.toml): selecting events by parser rule ----------
def test_a_leaky_pattern_selects_events_by_rule(tmp_path: Path) -> None:
    shipped = load_rules()
    assert shipped.patterns["cve-2024-6387"].rules == {"sshd/login-timeout",
                                                       "sshd/dispatch-fatal"}
    assert shipped.patterns["tcpwrappers-refused"].params["capacity"] == 0  # a trigger
    assert shipped.patterns["brute-force"].rules == frozenset()  # any rule
    text = Path(shipped.path).read_text(encoding="utf-8")
    bad = tmp_path / "correlation.toml"
    for old, new, needle in [
        ('kind = "distinct-users"\n', 'kind = "distinct-users"\nrules = ["sshd/failed"]\n',
         r"\[pattern.password-spray\]: rules = \[...\] is for kind leaky only"),
        ('rules = ["sshd/tcpwrappers-refused"]', 'rules = "sshd/tcpwrappers-refused"',
         "rules must be a non-empty list"),
        ('rules = ["sshd/tcpwrappers-refused"]', "rules = []", "rules must be a non-empty list"),
        ('rules = ["sshd/tcpwrappers-refused"]', 'rules = ["tcpwrappers-refused"]',
         "rule names like"),
        ("capacity = 0\n", "capacity = -1\n", "capacity must be an integer >= 0"),
    ]:
        assert old in text
        bad.write_text(text.replace(old, new, 1), encoding="utf-8")
        with pytest.raises(ConfigError, match=needle):
            load_rules(bad)
