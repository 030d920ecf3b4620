"""Line-level behaviour: NDJSON, repeats, the sshd+PAM attempt link, addresses, hostile text."""

from __future__ import annotations

import json

import pytest

from logly.parsers.addresses import normalize_ip
from logly.parsers.line import MAX_LINE, LineParser, safe_text


def test_ndjson_events_from_other_collectors(parser: LineParser) -> None:
    line = json.dumps({"timestamp": "2026-11-24T10:00:00+01:00", "host": "web2",
                       "program": "sshd", "pid": "77", "action": "auth_failure",
                       "message": "Failed password for root from ::ffff:203.0.113.9 port 2 ssh2",
                       "ip_address": "::ffff:203.0.113.9", "metadata": {"collector": "x"}})
    ev = parser.parse(line).event
    assert ev is not None
    assert ev.timestamp == "2026-11-24T09:00:00.000000Z"
    assert (ev.host, ev.pid, ev.action, ev.ip_address) == ("web2", 77, "auth_failure",
                                                          "203.0.113.9")
    assert ev.metadata["collector"] == "x"


def test_ndjson_without_action_goes_through_the_rules(parser: LineParser) -> None:
    line = json.dumps({"timestamp": "2026-11-24T10:00:00Z", "program": "sshd",
                       "message": "Invalid user bob from 198.51.100.3 port 9"})
    out = parser.parse(line)
    assert out.rule is not None and out.event.action == "invalid_user"
    assert out.event.ip_address == "198.51.100.3"


@pytest.mark.parametrize("line", ['{"message": "x"}', "{not json", '["a"]',
                                  '{"timestamp": "yesterday", "message": "x"}'])
def test_bad_ndjson_is_unparsed_with_a_reason(parser: LineParser, line: str) -> None:
    out = parser.parse(line)
    assert out.event is None and out.reason


def test_message_repeated_is_parsed_inside(parser: LineParser) -> None:
    ev = parser.parse("Nov 24 10:00:00 web1 sshd[5]: message repeated 3 times: [ Failed "
                      "password for root from 203.0.113.7 port 22 ssh2]").event
    assert ev.action == "auth_failure" and ev.ip_address == "203.0.113.7"
    assert ev.metadata["repeat"] == 3


def test_sshd_and_pam_log_one_attempt_once(parser: LineParser) -> None:
    pam = parser.parse(
        "Nov 24 10:00:00 web1 sshd[5]: pam_unix(sshd:auth): authentication failure; logname= "
        "uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.7  user=root", "/l", 0).event
    ssh = parser.parse("Nov 24 10:00:02 web1 sshd[5]: Failed password for root from "
                       "203.0.113.7 port 22 ssh2", "/l", 120).event
    other = parser.parse("Nov 24 10:00:03 web1 sshd[6]: Failed password for root from "
                         "203.0.113.7 port 23 ssh2", "/l", 200).event
    assert pam.action == ssh.action == "auth_failure"
    assert ssh.metadata["duplicate_of"] == {"path": "/l", "offset": 0}
    assert "duplicate_of" not in pam.metadata and "duplicate_of" not in other.metadata
    assert pam.is_attack and not ssh.is_attack and other.is_attack


@pytest.mark.parametrize(("text", "want"), [
    ("::ffff:1.2.3.4", "1.2.3.4"), ("2001:DB8::0:1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"), ("[2001:db8::2]", "2001:db8::2"),
    ("192.030.0.6", None), ("example.com", None), ("1.2.3", None), ("", None),
])
def test_address_normalisation(text: str, want: str | None) -> None:
    assert normalize_ip(text) == want


def test_hostname_is_kept_as_written_never_resolved(parser: LineParser) -> None:
    ev = parser.parse("Nov 24 10:00:00 web1 sshd[5]: Invalid user a from bad.example.com").event
    assert ev.ip_address is None and ev.metadata["rhost"] == "bad.example.com"


@pytest.mark.parametrize("line", [
    # the address sshd wrote last wins
    ("Nov 24 10:00:00 h sshd[1]: Failed password for invalid user x from 6.6.6.6 port 1 ssh2 "
     "from 203.0.113.7 port 22 ssh2", "203.0.113.7"),
    ("Nov 24 10:00:00 h sshd[1]: Invalid user rhost=6.6.6.6 from 203.0.113.7 port 22",
     "203.0.113.7"),
    ("Nov 24 10:00:00 h sshd[1]: Connection closed by authenticating user x 6.6.6.6 port 1 "
     "203.0.113.7 port 22 [preauth]", "203.0.113.7"),
    # free text after the address that could hold another: no address rather than a wrong one
    ("Nov 24 10:00:00 h sshd[1]: Failed password for x from 203.0.113.7 port 22 ssh2: from "
     "6.6.6.6 port 1 ssh2", None),
])
def test_injected_addresses_never_win(parser: LineParser, line: tuple[str, str | None]) -> None:
    ev = parser.parse(line[0]).event
    assert ev.action in ("auth_failure", "invalid_user", "preauth_disconnect")
    assert ev.ip_address == line[1]


def test_huge_line_is_cut_and_noted(parser: LineParser) -> None:
    line = "Nov 24 10:00:00 h sshd[1]: Invalid user " + "a" * (MAX_LINE * 2) + " from 1.2.3.4"
    ev = parser.parse(line).event
    assert ev is not None and ev.metadata["truncated_from"] == len(line)
    assert ev.ip_address is None  # the address was past the cut: not guessed


def test_safe_text_shows_control_characters() -> None:
    assert safe_text("a\x1b[2Jb\x07\x9bc\n") == "a\\x1b[2Jb\\x07\\x9bc\\x0a"
    assert safe_text(None) == ""
