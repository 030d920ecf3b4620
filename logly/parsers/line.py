"""One line in, one LogEvent (or a reason it is not one) out: header, rules, links.

The per-line work is a header regex, a dict lookup on the program name and the message's first
characters, and the few anchored regexes in that bucket. No pyparsing, no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from logly.events import ACTIONS, ATTACK_ACTIONS, LogEvent
from logly.parsers.addresses import is_hostname, normalize_ip
from logly.parsers.header import HeaderParser, strip_kernel_uptime
from logly.parsers.patterns import Compiled
from logly.parsers.rules import Candidate, Rule, RuleSet

MAX_LINE = 64 * 1024  # longer lines are cut before matching; the event notes the cut
_REPEAT = re.compile(r"message repeated (\d+) times: \[ ?(.*?) ?\]\s*\Z", re.S)
# JSON may spell a lone UTF-16 surrogate ("\ud800"): no UTF-8 text, so SQLite refuses to bind it
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
LINK_SECONDS = 5.0  # sshd and pam log one attempt within the same second, in practice
# Programs that fork one process per connection: every line of one pid concerns one peer.
CONNECTION_PROGRAMS = frozenset({"sshd", "sshd-session", "dropbear"})
CONNECTION_SECONDS = 600.0  # longer than any LoginGraceTime in use; a reused pid is older
# LineParser.match remembers this many (program, message) results, for messages this short
MATCH_CACHE_SIZE = 4096
MATCH_CACHE_TEXT = 256
_UNSEEN = object()
# which pattern matched, and its captures in group order
Match = tuple[Candidate, tuple[str | None, ...]]


@dataclass(slots=True)
class Outcome:
    """What became of a line: an event (matched or not by a rule), or unparsed with a reason."""

    event: LogEvent | None
    rule: Rule | None = None
    reason: str | None = None


class LineParser:
    def __init__(self, rules: RuleSet, headers: HeaderParser | None = None) -> None:
        self.rules = rules
        self.headers = headers or HeaderParser()
        # (host, pid) -> (timestamp text, ip, offset) of the last PAM auth failure from sshd
        self._pam_pending: dict[tuple[str | None, int], tuple[str, str | None, int | None]] = {}
        # (host, pid) -> (timestamp text, address) that a line of that connection pinned down
        # unambiguously; it settles a later line whose two readings disagree, and gives an
        # address to sshd's address-less verdicts ("Disconnecting: Too many authentication
        # failures [preauth]"). Text never picks it: it only chooses among what sshd wrote.
        self._peers: dict[tuple[str | None, int], tuple[str, str]] = {}
        self._matches: dict[tuple[str | None, str], Match | None] = {}

    def share_match_cache(self, cache: dict) -> None:
        """Use `cache` for match results: they depend on the rules only, so parsers of one
        rule set (one per block of a file) can share it."""
        self._matches = cache

    def parse(self, line: str, path: str | None = None, offset: int | None = None) -> Outcome:
        if len(line) > MAX_LINE:
            line, cut = line[:MAX_LINE], len(line)
        else:
            cut = 0
        if line[-1:] == "\r":
            line = line.rstrip("\r")
        if "\x00" in line:
            line = line.replace("\x00", "\ufffd")
        if line[:1] == "{":
            return self._ndjson(line, path, offset)
        head = self.headers.parse(line)
        if head is None:
            return Outcome(None, reason="no syslog/fail2ban header" if line.strip() else "empty")
        ts, host, program, pid, message, _, bare = head
        meta: dict = {}
        if ts is None:
            ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            meta["time_from"] = "ingest"
        if cut:
            meta["truncated_from"] = cut
        if message[:1] == " ":
            message = message.lstrip(" ")
        if bare is not None:  # "TIME word rest": a tag, or the first word of a message?
            out = self.parse_fields(ts, host, program, pid, message, dict(meta), path, offset)
            if out.rule is not None:
                return out
            alt = self.parse_fields(ts, host, None, None, bare, meta, path, offset)
            return alt if alt.rule is not None else out
        return self.parse_fields(ts, host, program, pid, message, meta, path, offset)

    def parse_fields(
        self, ts: str, host: str | None, program: str | None, pid: int | None, message: str,
        meta: dict, path: str | None, offset: int | None, level: str = "info",
    ) -> Outcome:
        """A message whose header is already split (a syslog header, or journal fields)."""
        if program == "kernel":
            message = strip_kernel_uptime(message)
        source = "fail2ban" if program and program[:8] == "fail2ban" else "syslog"
        ev = LogEvent(ts, source, message, "info", level, host, program, pid,
                      None, None, None, None, meta, path, offset)
        text = message
        if text[:17] == "message repeated ":
            m = _REPEAT.match(text)
            if m:
                meta["repeat"] = int(m[1])
                text = m[2]
        rule = self.apply_rules(ev, program, text)
        return Outcome(ev, rule)

    def match(self, program: str | None, text: str) -> Match | None:
        """The first pattern for `program` that matches `text`, and its captures.

        A pure function of its arguments (the rules are fixed), remembered for short messages:
        a log repeats many messages word for word (PAM sessions, cron jobs, "check pass"), and
        those are the ones that go through the most patterns before one matches.
        """
        key = (program, text)
        found = self._matches.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        found = None
        for match, cand in self.rules.tries(program, text):
            m = match(text)
            if m is not None:
                found = (cand, m.groups())
                break
        # a message naming a client port is one connection's own: it will not come again
        if len(text) <= MATCH_CACHE_TEXT and (
                found is None or "port" not in found[0].compiled.fields):
            if len(self._matches) >= MATCH_CACHE_SIZE:
                self._matches.clear()
            self._matches[key] = found
        return found

    def apply_rules(self, ev: LogEvent, program: str | None, text: str) -> Rule | None:
        found = self.match(program, text)
        if found is None:
            return None
        cand, values = found
        comp = cand.compiled
        rule = cand.rule
        meta = ev.metadata
        ambiguous = False
        peer_key = (ev.host, ev.pid) if ev.pid is not None and program in \
            CONNECTION_PROGRAMS else None
        if comp.lazy is not None and (not comp.ip_sep or text.count(comp.ip_sep) > 1):
            other = comp.lazy.match(text)
            other_values = other.groups() if other is not None else ()
            ambiguous = other is not None and \
                _ip_of(other_values, comp) != _ip_of(values, comp)
            if ambiguous and peer_key is not None:
                # two readings: the connection's own earlier lines say which is sshd's
                known = self._peer(peer_key, ev.timestamp)
                if known is not None and known == _norm(_ip_of(values, comp)):
                    ambiguous = False
                elif known is not None and known == _norm(_ip_of(other_values, comp)):
                    values, ambiguous = other_values, False
                if not ambiguous:
                    meta["address_from"] = "connection"
            if ambiguous:
                meta["ambiguous_address"] = True
        if not ambiguous:
            for i in comp.ip_at:
                value = values[i]
                if value is not None:
                    addr = normalize_ip(value)
                    if addr is not None:
                        ev.ip_address = addr
                    elif is_hostname(value):
                        meta["rhost"] = value
            for i in comp.port_at:
                if values[i] is not None:
                    ev.port = int(values[i])
        for i in comp.user_at:
            if values[i] is not None:
                ev.user = values[i]
        for i, name in comp.meta_at:
            if values[i] is not None:
                meta[name] = values[i]
        if rule.constants:
            for k, v in rule.constants.items():
                meta.setdefault(k, v)
        ev.action = rule.action
        ev.level = rule.level
        ev.service = rule.service
        meta["rule"] = rule.name
        if peer_key is not None:
            self._track_peer(peer_key, ev, rule, ambiguous)
        if ev.pid is not None and rule.action in ("auth_failure", "invalid_user"):
            self._link_attempt(ev, rule)
        return rule

    def _peer(self, key: tuple[str | None, int], ts: str) -> str | None:
        seen = self._peers.get(key)
        if seen is None or _seconds_between(seen[0], ts) > CONNECTION_SECONDS:
            return None
        return seen[1]

    def _track_peer(self, key: tuple[str | None, int], ev: LogEvent, rule: Rule,
                    ambiguous: bool) -> None:
        if ev.ip_address is not None:
            if not ambiguous and "address_from" not in ev.metadata:
                if len(self._peers) > 10_000:
                    self._peers.clear()
                self._peers[key] = (ev.timestamp, ev.ip_address)
        elif (rule.action in ATTACK_ACTIONS and not ambiguous and "rhost" not in ev.metadata
              and not rule.name.startswith("pam/")):
            # PAM's address-less lines stay so: sshd logs the same attempt with its address
            known = self._peer(key, ev.timestamp)
            if known is not None:
                ev.ip_address = known
                ev.metadata["address_from"] = "connection"
        if rule.action in ("disconnect", "preauth_disconnect"):
            self._peers.pop(key, None)  # the connection is over; its pid may be reused

    def _link_attempt(self, ev: LogEvent, rule: Rule) -> None:
        """sshd logs a failed password twice (its PAM stack, then itself): count it once."""
        key = (ev.host, ev.pid)  # type: ignore[assignment]
        if rule.name.startswith("pam/"):
            # only PAM's own failure line with an address stands for the attempt: "check pass;
            # user unknown" or a failure naming a host would leave sshd's line uncounted
            if (rule.action == "auth_failure" and ev.ip_address is not None
                    and ev.metadata.get("pam_service") in ("sshd", "sshd-session")):
                if len(self._pam_pending) > 10_000:
                    self._pam_pending.clear()
                self._pam_pending[key] = (ev.timestamp, ev.ip_address, ev.offset)
            return
        prior = self._pam_pending.pop(key, None)
        if prior is None or (prior[1] and ev.ip_address and prior[1] != ev.ip_address):
            return
        if _seconds_between(prior[0], ev.timestamp) <= LINK_SECONDS:
            ev.metadata["duplicate_of"] = {"path": ev.path, "offset": prior[2]}

    def _ndjson(self, line: str, path: str | None, offset: int | None) -> Outcome:
        try:
            obj = json.loads(line)
        except ValueError:
            return Outcome(None, reason="invalid JSON")
        if "\\u" in line and _SURROGATE_ESCAPE.search(line):
            obj = _scrub_surrogates(obj)
        if isinstance(obj, dict) and "MESSAGE" in obj and "__REALTIME_TIMESTAMP" in obj:
            from logly.parsers.journal_entry import entry_outcome

            return entry_outcome(self, obj, path, offset)  # journalctl -o json
        if not isinstance(obj, dict) or not isinstance(obj.get("message"), str):
            return Outcome(None, reason="JSON without a 'message' string")
        ts = _iso_utc(obj.get("timestamp"))
        if ts is None:
            return Outcome(None, reason="JSON without a valid ISO 8601 'timestamp'")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        action = obj.get("action") if obj.get("action") in ACTIONS else "info"
        ip = obj.get("ip_address")
        ev = LogEvent(
            ts,
            _str(obj.get("source")) or "ndjson",
            obj["message"],
            action,
            _str(obj.get("level")) or "info",
            _str(obj.get("host")),
            _str(obj.get("program")),
            _int(obj.get("pid")),
            _str(obj.get("service")),
            normalize_ip(ip) if isinstance(ip, str) else None,
            _str(obj.get("user")),
            _int(obj.get("port")),
            dict(meta),
            path,
            offset,
        )
        rule = None
        if action == "info" and ev.program:
            rule = self.apply_rules(ev, ev.program, ev.message)
        return Outcome(ev, rule)


def _scrub_surrogates(v: object) -> object:
    """`v` with each lone surrogate in its strings made U+FFFD (as invalid UTF-8 is on input)."""
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(v, dict):
        return {_scrub_surrogates(k): _scrub_surrogates(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_scrub_surrogates(x) for x in v]
    return v


def _norm(value: str | None) -> str | None:
    return normalize_ip(value) if value else None


def _ip_of(values: tuple[str | None, ...], comp: Compiled) -> str | None:
    return next((values[i] for i in comp.ip_at if values[i]), None)


def _str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _int(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


def _iso_utc(v: object) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds_between(a: str, b: str) -> float:
    if a[:19] == b[:19]:
        return 0.0
    try:
        return abs(
            (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
        )
    except ValueError:
        return float("inf")

