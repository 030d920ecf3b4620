"""Correlation: stateful patterns over the event stream -> event_traces with a causality chain.

Patterns and their thresholds are data (rules/correlation.toml, see logly/tracer/patterns.py);
this module holds the state machine. It runs as a batch hook inside write_batch's transaction:
per row it looks the action up in a dispatch table (most rows stop there), updates small
per-key counters in memory, and only when a pattern fires or an open trace grows does it touch
the database, once per batch: new traces, updated traces, `log_events.trace_id` for the linked
events, `error_traces.trace_id`, and `trace_patterns`.

State survives a restart because none of it lives only in memory: open traces are rows
(status 'open', their key and steps in `causality`), and the counters are rebuilt on the first
batch from the recent events already stored (replayed without side effects). The same rebuild
runs when a batch this hook saw was rolled back (the next batch does not start at the id
expected), so memory never holds state the database lost.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import sub
from typing import Any

from logly.errors import ConfigError
from logly.rows import ACTION, HOST, IP, METADATA, PORT, PROGRAM, TIMESTAMP, USER
from logly.store.sqlite import BatchHook
from logly.tracer.classify import SEVERITY_RANK, Classified
from logly.tracer.patterns import CorrelationRules, Pattern

MAX_EVENT_IDS = 500  # event ids kept in a trace's causality; event_count keeps counting
BACKWARDS_SLACK = 60  # seconds a log may step back (two files interleaved) and still be one run
_REPEAT = re.compile(r'"repeat": (\d{1,6})')
_UID_TO_0 = re.compile(r"\bUID from '\d{1,10}' to '0'")
_dumps = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(x, ensure_ascii=False)


def _epoch_of(ts: str, cache: dict[str, int]) -> int:
    """Seconds since the epoch of a stored timestamp; the minute is cached (a day has 1440)."""
    t = cache.get(ts[:16])
    if t is None:
        if len(cache) > 50_000:
            cache.clear()
        try:
            t = int(datetime.fromisoformat(ts[:16]).replace(tzinfo=UTC).timestamp())
        except ValueError:
            t = 0
        cache[ts[:16]] = t
    sec = ts[17:19]
    return t + int(sec) if sec.isdigit() else t


@dataclass(slots=True, eq=False)  # identity: one object per trace
class Trace:
    group: str
    key: str
    first_seen: str
    last_seen: str
    last_t: int
    ip: str | None = None
    user: str | None = None
    host: str | None = None
    id: int | None = None
    title: str = ""
    severity: str = "info"
    event_count: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    dirty: bool = True
    shapes: list[tuple[str, str]] = field(default_factory=list)  # reached since the last flush
    title_pattern: Pattern | None = None
    title_values: dict[str, Any] = field(default_factory=dict)
    event_set: set[int] | None = None  # `events` as a set, made when first asked
    step_names: set[str] | None = None  # the patterns of `steps`, made when first asked
    events_text: str = ""  # `events` as JSON list items, up to `events_done` of them
    events_done: int = 0
    steps_text: str = "[]"  # `steps` as JSON, of the first `steps_done` (steps only join)
    steps_done: int = 0

    def has_event(self, eid: int) -> bool:
        """`eid in events` without the list scan (a trace keeps up to 500 ids)."""
        s = self.event_set
        if s is None:
            s = self.event_set = set(self.events)
        return eid in s

    def render_title(self) -> None:
        if self.title_pattern is not None:
            self.title = self.title_pattern.render({"count": self.event_count,
                                                    **self.title_values})

    def causality(self) -> str:
        """json.dumps({"key", "steps", "events", "more_events"}, ensure_ascii=False), with
        the event ids' text kept between flushes (ids only ever join at the end)."""
        events = self.events
        n = len(events)
        if n != self.events_done:
            if n < self.events_done:  # not expected: start over
                self.events_text, self.events_done = "", 0
            tail = ", ".join(map(str, events[self.events_done:]))
            self.events_text = f"{self.events_text}, {tail}" if self.events_text else tail
            self.events_done = n
        if len(self.steps) != self.steps_done:
            self.steps_text, self.steps_done = _dumps(self.steps), len(self.steps)
        more = max(0, self.event_count - n)
        return (f'{{"key": {_dumps(self.key)}, "steps": {self.steps_text}, '
                f'"events": [{self.events_text}], "more_events": {more}}}')


class _Addr:
    """What one remote address did recently (all bounded, lists trimmed by half when full)."""

    __slots__ = ("levels", "fails", "recent", "users", "ports", "scan_t", "unban_t")

    def __init__(self, n_levels: int, t: int) -> None:
        self.levels: list[float] = [0.0, float(t)] * n_levels  # leaky buckets: level, time
        self.fails: list[int] = []  # times of failed attempts
        self.recent: list[tuple[int, int, str]] = []  # (t, event id, ts): join a new trace
        self.users: dict[str, int] | None = None  # user -> last t
        self.ports: dict[int, int] | None = None  # port -> last t
        self.scan_t = -1
        self.unban_t = -1


@dataclass(slots=True)
class Ev:
    """The normalised fields correlation reads (metadata as its JSON text)."""

    id: int
    ts: str
    t: int
    host: str | None
    program: str | None
    action: str
    ip: str | None
    user: str | None
    port: int | None
    meta: str | None


def _ev(eid: int, row: tuple, t: int, program: str | None) -> Ev:
    """A stored row (EVENT_INSERT_COLUMNS order) as correlation reads it."""
    return Ev(eid, row[TIMESTAMP], t, row[HOST], program, row[ACTION], row[IP], row[USER],
              row[PORT], row[METADATA])


class Correlator:
    def __init__(self, rules: CorrelationRules) -> None:
        self.rules = rules
        self._next_id: int | None = None
        self._replay = False
        self._cache: dict[str, int] = {}
        self._epochs: dict[str, int] = {}
        self._reset()
        fail = frozenset(rules.failure_actions)
        self._fail_actions = fail
        # action -> handlers; an action with no entry costs one dict miss per row
        self._dispatch: dict[str, list[Any]] = {}
        for a in fail:
            self._on(a, self._address_failure)
        for p in rules.patterns.values():
            if p.kind in ("distinct-ips",):
                for a in p.on:
                    self._on(a, self._user_attack)
            elif p.kind in ("each", "count"):
                for a in p.on:
                    self._on(a, self._privilege)
            elif p.kind in ("uid0", "admin-group"):
                for a in p.on:
                    self._on(a, self._account)
            elif p.kind == "scan-then-login":
                # the address handlers below see these actions; others would never arrive
                odd = (set(p.params["login_actions"]) - fail - {"auth_success"}) | (
                    set(p.params["scan_actions"]) - fail - {"firewall_block"})
                if odd:
                    raise ConfigError(f"{rules.path}: [pattern.{p.name}]: actions "
                                      f"{', '.join(sorted(odd))} are not address events",
                                      hint="use [failures] actions, auth_success or "
                                           "firewall_block")
        self._on("auth_success", self._address_success)
        self._on("auth_success", self._login)
        for a in ("firewall_block", "f2b_ban", "f2b_unban", "f2b_found"):
            self._on(a, self._address_other)
        for group in rules.traces.values():
            for a in group.link_actions:
                self._dispatch.setdefault(a, [])
        for a, hs in self._dispatch.items():
            self._dispatch[a] = list(dict.fromkeys(hs))
        # action -> (group, key kind, gap) of the traces it may join
        self._link_keys: dict[str, list[tuple[str, str, int]]] = {}
        for name, g in rules.traces.items():
            for a in g.link_actions:
                self._link_keys.setdefault(a, []).append((name, g.key, g.gap_seconds))
        self._prepare()

    def _on(self, action: str, handler: Any) -> None:
        self._dispatch.setdefault(action, []).append(handler)

    def _reset(self) -> None:
        self.open: dict[tuple[str, str], Trace] = {}
        self.closed: dict[tuple[str, str], Trace] = {}  # recently closed, by key
        self.addrs: dict[str, _Addr] = {}
        self.few: dict[str, tuple[tuple, ...]] = {}  # address -> its first events
        self.user_ips: dict[str, dict[str, int]] = {}
        # addresses older than the widest distinct-ips window never count again
        self._ips_window = max((p.params["window_seconds"] for p in self.rules.patterns.values()
                                if p.kind == "distinct-ips"), default=0)
        self.user_fails: dict[str, deque[tuple[int, int, str]]] = {}
        self.user_recent: dict[str, deque[tuple[int, int, str]]] = {}
        self.logins: dict[str, set[str]] = {}
        self.errors: dict[str, deque[tuple[int, int, str]]] = {}
        self._links: dict[int, Trace] = {}  # event id -> the first trace it joined
        self._error_links: list[tuple[Trace, int]] = []
        self._batch_max_t = 0
        self._closing: list[Trace] = []
        self._added = -1  # id of the event a trace took last (one event joins a trace once)
        self._linking: frozenset[str] = frozenset()  # actions some open trace may take

    # ---- the hook --------------------------------------------------------------------------------
    def hook(self, conn: Any, rows: Sequence[tuple], first_id: int,
             errors: list[Classified] | None = None) -> dict[int, int]:
        """Correlate a batch (event ids first_id, first_id + 1, ...) before it is stored: its
        events' traces are returned ({event id: trace id}) for the insert to set; earlier
        events that join a trace are updated in place."""
        if self._next_id != first_id:
            self.rebuild(conn, first_id)
        self._next_id = first_id + len(rows)
        dispatch = self._dispatch
        cache = self._cache
        epochs = self._epochs  # timestamp -> _epoch_of(timestamp): lines share their second
        if len(epochs) > 16_384:
            epochs.clear()
        if rows:  # idle traces close against this batch's (log) time
            self._batch_max_t = max(_epoch_of(rows[0][TIMESTAMP], cache),
                                    _epoch_of(rows[-1][TIMESTAMP], cache))
        link_open = self._link_open
        for i, row in enumerate(rows, first_id):
            action = row[ACTION]
            handlers = dispatch.get(action)
            if handlers is None or not (handlers or action in self._linking):
                continue  # most rows stop here: no pattern and no open trace wants them
            ts = row[TIMESTAMP]
            t = epochs.get(ts)
            if t is None:
                t = epochs[ts] = _epoch_of(ts, cache)
            ev = _ev(i, row, t, row[PROGRAM])
            self._added = -1
            for h in handlers:
                h(ev)
            if self._added != i and action in self._linking:
                link_open(ev)  # no pattern took it: it may still join an open trace
        for hit in errors or ():
            row = rows[hit.index]
            # a unit's errors are that service's, not all of systemd's
            ev = _ev(first_id + hit.index, row, _epoch_of(row[TIMESTAMP], cache),
                     hit.unit or row[PROGRAM])
            self._error(ev, hit.cls.type, hit.cls.severity)
        return self._flush(conn, first_id)

    def _event(self, ev: Ev, handlers: list[Any]) -> None:
        self._added = -1
        for h in handlers:
            h(ev)
        if self._added != ev.id:  # no pattern took it: it may still join an open trace
            self._link_open(ev)

    def _link_open(self, ev: Ev) -> None:
        """An event of an open trace's link actions joins it (first trace that takes it)."""
        if self._replay or ev.action not in self._linking:
            return
        open_ = self.open
        for name, kind, gap in self._link_keys.get(ev.action, ()):
            key = ev.ip if kind == "ip" else ev.user if kind == "user" else self._key(kind, ev)
            if key is None:
                continue
            tr = open_.get((name, key))
            if tr is not None and ev.t - tr.last_t <= gap:
                self._add(tr, ev)
                return

    @staticmethod
    def _key(kind: str, ev: Ev) -> str | None:
        if kind == "ip":
            return ev.ip
        if kind == "user":
            return ev.user
        if kind == "user+ip":
            return f"{ev.user} {ev.ip}" if ev.user and ev.ip else None
        return f"{ev.host or '-'} {ev.program or '-'}"

    # ---- address patterns ------------------------------------------------------------------------
    def _addr(self, ip: str, t: int) -> _Addr:
        a = self.addrs.get(ip)
        if a is None:
            if len(self.addrs) > 200_000:  # a flood of one-shot addresses: forget the quiet ones
                self._forget_addrs()
            a = self.addrs[ip] = _Addr(self._n_levels, t)
        return a

    def _forget_addrs(self) -> None:
        horizon = self._batch_max_t - self.rules.max_window
        self.addrs = {ip: a for ip, a in self.addrs.items()
                      if a.recent and a.recent[-1][0] >= horizon}
        self.few = {ip: v for ip, v in self.few.items() if v[-1][0] >= horizon}

    def _keep_few(self, ev: Ev, w: int) -> bool:
        """Most addresses show up a few times and never again: until one could cross a
        threshold, its events wait as plain tuples (which the garbage collector soon stops
        scanning), and no state object is made."""
        items = self.few.get(ev.ip)  # type: ignore[arg-type]
        item = (ev.t, ev.id, ev.ts, ev.user, w, ev.action, ev.port)
        user = ev.user
        if items is None:
            if w > self._first_safe or (user and user.startswith(self._canary_prefixes)):
                return False
            if len(self.few) > 200_000:
                self._forget_addrs()
            self.few[ev.ip] = (item,)  # type: ignore[index]
            return True
        weight = w
        scanned = False
        for x in items:
            weight += x[4]
            scanned = scanned or x[5] in self._scan_like
        if (len(items) >= self._first_safe or weight > self._first_safe
                or (user and user.startswith(self._canary_prefixes))
                or (scanned and ev.action in self._login_actions)):
            return False
        self.few[ev.ip] = (*items, item)  # type: ignore[index]
        return True

    def _get(self, ip: str) -> _Addr | None:
        """The state of an address; made now from its waiting events if it has none yet."""
        a = self.addrs.get(ip)
        if a is not None:
            return a
        items = self.few.pop(ip, None)
        if items is None:
            return None
        a = self._addr(ip, items[0][0])
        for t, eid, ts, user, w, action, port in items:  # by construction none can fire
            old = Ev(eid, ts, t, None, None, action, ip, user, port, None)
            if action == "firewall_block":
                self._other(old, a)
            else:
                self._failure(old, a, w)
        return a

    def _meta_info(self, meta: str) -> tuple[int, list[tuple[int, int, int, Pattern]] | None]:
        """How an event of this metadata text counts: its weight, and the buckets it fills if
        its rule is one some pattern selects (None: the general ones). Kept per text: most
        texts recur verbatim (`{"rule": "sshd/invalid-user"}`)."""
        if "duplicate_of" in meta:  # sshd and PAM logged one attempt: count it once
            return 0, None  # (the text holds an offset: unique, not kept)
        w = 1
        if '"repeat"' in meta:
            m = _REPEAT.search(meta)
            w = int(m[1]) if m else 1
        buckets = None
        if self._rule_search is not None:
            m = self._rule_search(meta)
            if m is not None:
                buckets = self._rule_leaky[m[1]]
        if len(self._meta_hits) >= 4096:
            self._meta_hits.clear()
        info = self._meta_hits[meta] = (w, buckets)
        return info

    def _prepare(self) -> None:
        """Thresholds as plain tuples: the per-event loop reads no dicts of parameters."""
        r = self.rules
        # buckets of every failure, then buckets of some parser rules' failures only
        leaky = sorted(r.kind("leaky"), key=lambda p: bool(p.rules))
        self._n_levels = len(leaky)
        buckets = [(2 * i, p.params["capacity"], p.params["leak_seconds"], p)
                   for i, p in enumerate(leaky)]
        self._leaky = [b for b in buckets if not b[3].rules]
        # rule -> the general buckets and those of the patterns that select it
        self._rule_leaky: dict[str, list[tuple[int, int, int, Pattern]]] = {}
        for b in buckets:
            for rule in b[3].rules:
                self._rule_leaky.setdefault(rule, list(self._leaky)).append(b)
        # finds a selected rule in the metadata's JSON text (a quote inside a JSON value is
        # escaped, so `"rule": "` is only ever the key)
        self._rule_search = re.compile('"rule": "({})"'.format(
            "|".join(re.escape(x) for x in sorted(self._rule_leaky)))).search \
            if self._rule_leaky else None
        self._meta_hits: dict[str, tuple[int, list[tuple[int, int, int, Pattern]] | None]] = {}
        self._address_gap = r.traces["address"].gap_seconds
        self._ips = [(p, p.on, p.params["window_seconds"], p.params["min_ips"])
                     for p in r.kind("distinct-ips")]
        self._spaced = [(p.params["min_failures"], p.params["window_seconds"],
                         p.params["min_median_gap"], p) for p in r.kind("spaced")]
        self._spaced_min = min([x[0] for x in self._spaced] or [1 << 30])
        self._spray = [(p.params["min_users"], p.params["window_seconds"], p)
                       for p in r.kind("distinct-users")]
        self._canary = [(p.params["user_prefixes"], p) for p in r.kind("canary-user")]
        self._canary_prefixes = tuple(x for c, _ in self._canary for x in c)
        self._stl = [(p.params["login_set"], p.params["window_seconds"], p)
                     for p in r.kind("scan-then-login")]
        self._scan_actions = frozenset(a for p in r.kind("scan-then-login")
                                       for a in p.params["scan_actions"]) or frozenset({"scan"})
        self._scan_like = self._scan_actions | {"firewall_block"}
        self._login_actions = frozenset(a for p in r.kind("scan-then-login")
                                        for a in p.params["login_set"])
        # a few events of this total weight cannot overflow any bucket or reach any count
        self._first_safe = min([cap for _, cap, _, _ in self._leaky]
                               + [x[0] - 1 for x in self._spaced]
                               + [x[0] - 1 for x in self._spray]
                               + [p.params["min_ports"] - 1 for p in r.kind("distinct-ports")]
                               or [0])

    def _address_failure(self, ev: Ev) -> None:
        ip = ev.ip
        if ip is None:
            return
        meta = ev.meta
        if meta:
            # the event of a rule some pattern selects fills that pattern's bucket too; the
            # few such events skip the waiting list below (its safe total is for the general
            # buckets)
            w, buckets = self._meta_hits.get(meta) or self._meta_info(meta)
        else:
            w, buckets = 1, None
        a = self.addrs.get(ip)
        if a is None:
            if buckets is None and self._keep_few(ev, w):
                return
            a = self._get(ip) or self._addr(ip, ev.t)
        self._failure(ev, a, w, buckets)

    def _failure(self, ev: Ev, a: _Addr, w: int,
                 buckets: list[tuple[int, int, int, Pattern]] | None = None) -> None:
        t = ev.t
        recent = a.recent
        recent.append((t, ev.id, ev.ts))  # joins the trace if one opens, counted or not
        if len(recent) > 64:
            del recent[:32]
        if w == 0:
            return
        fails = a.fails
        fails.append(t)
        if w > 1:
            fails.extend([t] * min(w - 1, 63))
        if len(fails) > 64:
            del fails[:32]
        fired: list[tuple[Pattern, dict[str, Any]]] = []
        lv = a.levels
        for j, cap, leak, p in self._leaky if buckets is None else buckets:
            dt = t - lv[j + 1]
            if dt >= 0:
                level = lv[j] - dt / leak
                level = (level if level > 0.0 else 0.0) + w
            else:  # an older file read after a newer one: a new run, unless a few seconds
                level = (lv[j] if dt > -BACKWARDS_SLACK else 0.0) + w
            lv[j] = level
            lv[j + 1] = t
            if level > cap:
                fired.append((p, {}))
        if len(fails) >= self._spaced_min:
            for n, window, min_gap, p in self._spaced:
                if len(fails) >= n and t - fails[-n] <= window:
                    last = fails[-n:]
                    gaps = sorted(map(sub, last[1:], last))  # the gaps between them
                    if gaps[len(gaps) // 2] > min_gap:
                        fired.append((p, {}))  # {count}: the trace's events
        user = ev.user
        if user:
            users = a.users
            if users is None:
                users = a.users = {}
            prev = users.get(user)
            if prev is None and len(users) >= 256:
                users.clear()  # a long enumeration: start counting again, it refires anyway
            users[user] = t
            if (prev is None or t - prev > 3600) and len(users) > 1:  # a new name
                for min_users, window, p in self._spray:
                    horizon = t - window
                    n = sum(1 for v in users.values() if v >= horizon)
                    if n >= min_users:
                        fired.append((p, {"users": n}))
            if user.startswith(self._canary_prefixes):
                for prefixes, p in self._canary:
                    if user.startswith(prefixes):
                        fired.append((p, {}))
        if a.scan_t >= 0:
            for login_set, window, p in self._stl:
                if ev.action in login_set and 0 <= t - a.scan_t <= window:
                    fired.append((p, {}))
        if ev.action in self._scan_actions:
            a.scan_t = t
        if fired:
            self._fire_address(ev, a, fired)

    def _address_other(self, ev: Ev) -> bool:
        """firewall drops, fail2ban verdicts: scans, recidive, port scans."""
        if ev.ip is None:
            return False
        a = self.addrs.get(ev.ip)
        if a is None:
            if ev.action == "firewall_block" and self._keep_few(ev, 0):
                return False
            a = self._get(ev.ip) or self._addr(ev.ip, ev.t)
        return self._other(ev, a)

    def _other(self, ev: Ev, a: _Addr) -> bool:
        t = ev.t
        fired: list[tuple[Pattern, dict[str, Any]]] = []
        if ev.action == "firewall_block":
            a.scan_t = t
            ports = a.ports
            if ports is None:
                ports = a.ports = {}
            new_port = ev.port is not None and ev.port not in ports
            if ev.port is not None:
                if len(ports) > 4096:
                    ports.clear()
                ports[ev.port] = t
            for p in self.rules.kind("distinct-ports") if new_port else ():
                horizon = t - p.params["window_seconds"]
                n = sum(1 for v in ports.values() if v >= horizon)
                if n >= p.params["min_ports"]:
                    fired.append((p, {"ports": n}))
        elif ev.action == "f2b_unban":
            a.unban_t = t
        elif ev.action == "f2b_ban":
            for p in self.rules.kind("recidive"):
                if a.unban_t >= 0 and t - a.unban_t <= p.params["window_seconds"]:
                    fired.append((p, {}))
        a.recent.append((t, ev.id, ev.ts))
        if len(a.recent) > 64:
            del a.recent[:32]
        return self._fire_address(ev, a, fired)

    def _address_success(self, ev: Ev) -> bool:
        if ev.ip is None:
            return False
        a = self._get(ev.ip)
        if a is None:
            return False
        t = ev.t
        fired: list[tuple[Pattern, dict[str, Any]]] = []
        for p in self.rules.kind("success-after-failures"):
            horizon = t - p.params["window_seconds"]
            n = sum(1 for x in a.fails if x >= horizon)
            if n >= p.params["min_failures"]:
                fired.append((p, {"failures": n}))
        for p in self.rules.kind("scan-then-login"):
            if (a.scan_t >= 0 and 0 < t - a.scan_t <= p.params["window_seconds"]
                    and "auth_success" in p.params["login_set"]):
                fired.append((p, {}))
        linked = self._fire_address(ev, a, fired)
        # a login ends the run of failures: time-based patterns start over (CrowdSec cancel_on)
        a.fails.clear()
        return linked

    def _fire_address(self, ev: Ev, a: _Addr, fired: list[tuple[Pattern, dict]]) -> bool:
        if not fired:
            return False
        gap = self._address_gap
        tr = self.open.get(("address", ev.ip or ""))
        if tr is None or ev.t - tr.last_t > gap or self._replay:
            tr = self._trace("address", ev.ip or "", ev, gap, ip=ev.ip)
        recent = a.recent
        if tr is None:  # replaying: the stored trace already has these events
            recent.clear()
            return True
        # the attempts that led here join the trace too (they may be in earlier batches); an
        # address that fires again mostly has only this event waiting
        if len(recent) > 1 or (recent and recent[0][1] != ev.id):
            self._join(tr, recent, max(ev.t - self.rules.max_window, tr.last_t - gap), ev)
        recent.clear()
        self._fire(tr, fired, ev)
        return True

    # ---- user patterns ---------------------------------------------------------------------------
    def _user_attack(self, ev: Ev) -> bool:
        user, ip = ev.user, ev.ip
        if not user or not ip:
            return False
        meta = ev.meta
        if meta and (self._meta_hits.get(meta) or self._meta_info(meta))[0] == 0:
            return False
        ips = self.user_ips.get(user)
        if ips is None:
            ips = self.user_ips[user] = {}
        if len(ips) > 4096:
            ips.clear()
        # kept in last-seen order, so counting the addresses inside a window walks only those
        # (a user like root is tried from hundreds of addresses: a full scan per attempt was
        # most of correlation's cost)
        t = ev.t
        new_ip = ips.pop(ip, None) is None
        ips[ip] = t
        oldest = t - self._ips_window
        if next(iter(ips.values())) < oldest:  # else the loop below would stop at once
            for old_ip, old_t in list(itertools.islice(ips.items(), 8)):  # a few per event
                if old_t >= oldest:
                    break
                del ips[old_ip]
        recent = self.user_recent.get(user)
        if recent is None:
            recent = self.user_recent[user] = deque(maxlen=64)
        recent.append((t, ev.id, ev.ts))
        if not (new_ip or ("user-attack", user) in self.open):
            return False  # no pattern below can fire
        fired = []
        for p, on, window, min_ips in self._ips:
            if ev.action not in on:
                continue
            horizon = t - window
            if window >= self._ips_window and next(iter(ips.values())) >= horizon:
                n = len(ips)  # everything left is inside the widest window
            else:
                n = 0
                for v in reversed(ips.values()):
                    if v < horizon:
                        break
                    n += 1
            if n >= min_ips:
                fired.append((p, {"ips": n}))
        if fired:
            tr = self._trace("user-attack", ev.user, ev, self._gap("user-attack"), user=ev.user)
            if tr is not None:
                # the attempts that made it a pattern join it
                self._join(tr, recent, ev.t - max(p.params["window_seconds"] for p, _ in fired),
                           ev)
                recent.clear()
                self._fire(tr, fired, ev)
        return False  # the address's own trace, if any, claims the event first

    def _login(self, ev: Ev) -> bool:
        if not ev.user or not ev.ip:
            return False
        seen = self.logins.get(ev.user)
        if seen is None:
            self.logins[ev.user] = {ev.ip}
            return False
        if ev.ip in seen:
            return False
        seen.add(ev.ip)
        fired = [(p, {}) for p in self.rules.kind("new-address")]
        if not fired:
            return False
        tr = self._trace("login", f"{ev.user} {ev.ip}", ev, self._gap("login"), ip=ev.ip,
                         user=ev.user)
        if tr is None:
            return False
        # not claiming the event first: an address trace (login after failures) says more
        self._fire(tr, fired, ev)
        return False

    def _privilege(self, ev: Ev) -> bool:
        if not ev.user:
            return False
        fired = []
        for p in self.rules.kind("each"):
            if ev.action in p.on:
                fired.append((p, {}))
        for p in self.rules.kind("count"):
            if ev.action not in p.on:
                continue
            d = self.user_fails.get(ev.user)
            if d is None:
                d = self.user_fails[ev.user] = deque(maxlen=64)
            d.append((ev.t, ev.id, ev.ts))
            horizon = ev.t - p.params["window_seconds"]
            n = sum(1 for x in d if x[0] >= horizon)
            if n >= p.params["min_count"] or ("privilege", ev.user) in self.open:
                fired.append((p, {}))  # {count}: the trace's events
        if not fired:
            return False
        tr = self._trace("privilege", ev.user, ev, self._gap("privilege"), user=ev.user)
        if tr is None:
            return True
        d = self.user_fails.get(ev.user)
        if d:  # the failures that made it a pattern join it
            self._join(tr, d, ev.t - max(p.params.get("window_seconds", 0) for p, _ in fired),
                       ev)
            d.clear()
        self._fire(tr, fired, ev)
        return True

    def _account(self, ev: Ev) -> bool:
        if not ev.user:
            return False
        meta = json.loads(ev.meta) if ev.meta else {}
        fired = []
        for p in self.rules.kind("uid0"):
            if ev.action not in p.on:
                continue
            if (ev.action == "user_added" and str(meta.get("uid")) == "0") or (
                    ev.action == "user_modified"
                    and _UID_TO_0.search(str(meta.get("change", "")))):
                fired.append((p, {}))
        for p in self.rules.kind("admin-group"):
            # only a user put into the group: removals, renames and the group's own changes
            # grant nothing (the parser says which in metadata "membership")
            if (ev.action in p.on and meta.get("membership") == "added"
                    and meta.get("group") in p.params["groups"]):
                fired.append((p, {"group": meta.get("group")}))
        if not fired:
            return False
        tr = self._trace("account", ev.user, ev, self._gap("account"), user=ev.user)
        if tr is None:
            return True
        self._fire(tr, fired, ev)
        return True

    # ---- errors ----------------------------------------------------------------------------------
    def _error(self, ev: Ev, error_type: str, severity: str) -> None:
        key = f"{ev.host or '-'} {ev.program or '-'}"
        rank = SEVERITY_RANK[severity]
        bursts = [p for p in self.rules.kind("error-burst")
                  if rank >= SEVERITY_RANK[p.params.get("min_severity", "info")]]
        d = self.errors.get(key)
        if d is None:
            d = self.errors[key] = deque(maxlen=64)
        if bursts:
            d.append((ev.t, ev.id, ev.ts))
        fired = []
        for p in bursts:
            horizon = ev.t - p.params["window_seconds"]
            n = sum(1 for x in d if x[0] >= horizon)
            if n >= p.params["min_count"]:
                fired.append((p, {}))  # {count}: the trace's events
        for p in self.rules.kind("serious-error"):
            if SEVERITY_RANK[severity] >= SEVERITY_RANK[p.params["min_severity"]]:
                fired.append((p, {"severity": severity}))
        g = self.rules.traces["errors"]
        tr = self.open.get(("errors", key))
        if tr is not None and ev.t - tr.last_t > g.gap_seconds:
            tr = None
        if not fired and tr is None:
            return
        if self._replay:
            return
        if tr is None:
            tr = self._trace("errors", key, ev, g.gap_seconds)
            if tr is None:
                return
            horizon = ev.t - max([p.params.get("window_seconds", 0) for p, _ in fired] or [0])
            for t, eid, ts in d:  # the errors that made the burst join it
                if t >= horizon and eid != ev.id:
                    self._add(tr, None, eid)
                    self._error_links.append((tr, eid))
                    tr.first_seen = min(tr.first_seen, ts)
        d.clear()
        for p, values in fired:
            values.setdefault("error_type", error_type)
            self._step(tr, p, ev, values)
        self._add(tr, ev)
        self._error_links.append((tr, ev.id))

    # ---- traces ----------------------------------------------------------------------------------
    def _gap(self, group: str) -> int:
        return self.rules.traces[group].gap_seconds

    def _trace(self, group: str, key: str, ev: Ev, gap: int, *, ip: str | None = None,
               user: str | None = None) -> Trace | None:
        """The open trace for (group, key), a new one if none is open; None when replaying."""
        if self._replay:
            return None
        tr = self.open.get((group, key))
        if tr is not None and ev.t - tr.last_t > gap:
            self._close(tr)
            tr = None
        if tr is None:
            # an older log read after a newer one: the event may belong to a trace just closed
            old = self.closed.get((group, key))
            if (old is not None
                    and _epoch_of(old.first_seen, self._cache) - gap <= ev.t <= old.last_t + gap):
                del self.closed[(group, key)]
                self.open[(group, key)] = old
                old.dirty = True
                self._linking = self._linking | self.rules.traces[group].link_set
                return old
            tr = Trace(group, key, ev.ts, ev.ts, ev.t, ip=ip, user=user, host=ev.host)
            self.open[(group, key)] = tr
            self._linking = self._linking | self.rules.traces[group].link_set
        return tr

    def _join(self, tr: Trace, recent: Iterable[tuple[int, int, str]], horizon: int,
              ev: Ev) -> None:
        """Earlier events (t, id, timestamp) since `horizon` that led to `ev` join `tr`."""
        for t, eid, ts in recent:
            if t >= horizon and eid != ev.id and not tr.has_event(eid):
                self._add(tr, None, eid)
                if ts < tr.first_seen:
                    tr.first_seen = ts

    def _fire(self, tr: Trace, fired: list[tuple[Pattern, dict[str, Any]]], ev: Ev) -> None:
        """The patterns that fired become steps of `tr`, and `ev` joins it."""
        for p, values in fired:
            self._step(tr, p, ev, values)
        self._add(tr, ev)

    def _step(self, tr: Trace, p: Pattern, ev: Ev, values: dict[str, Any]) -> None:
        """Pattern p fired on ev for trace tr: a new step, or the same step again (cheap)."""
        sev = (values.pop("severity", None) if values else None) or p.severity
        rank = SEVERITY_RANK[sev]
        floor = SEVERITY_RANK[p.severity]
        if rank < floor:
            sev, rank = p.severity, floor
        trank = SEVERITY_RANK[tr.severity]  # tr.severity changes only at the end
        names = tr.step_names
        if names is None:
            names = tr.step_names = {s["pattern"] for s in tr.steps}
        if p.name not in names:
            step_title = p.render({"ip": ev.ip or tr.ip, "user": ev.user or tr.user,
                                   "host": ev.host, "program": ev.program,
                                   "count": tr.event_count + 1, **values})
            tr.steps.append({"pattern": p.name, "event_id": ev.id, "at": ev.ts,
                             "severity": sev, "title": step_title})
            names.add(p.name)
            # every shape a trace reaches counts once, however the batches fell
            worst = sev if rank >= trank else tr.severity
            tr.shapes.append((f"{tr.group}:" + ">".join(s["pattern"] for s in tr.steps), worst))
            if ev.user and p.kind in ("success-after-failures", "canary-user", "new-address"):
                tr.user = ev.user
        elif tr.title_pattern is not p and rank <= trank:
            return
        # the title follows the worst step (the latest of equals); rendered once per flush
        if rank >= trank or tr.title_pattern is None:
            tr.title_pattern = p
            tr.title_values = {"ip": ev.ip or tr.ip, "user": ev.user or tr.user,
                               "host": ev.host, "program": ev.program, **values}
        if rank > trank:
            tr.severity = sev
        tr.dirty = True

    def _add(self, tr: Trace, ev: Ev | None, event_id: int | None = None) -> None:
        eid = ev.id if ev is not None else event_id
        if eid is None or self._replay:
            return
        tr.event_count += 1
        self._added = eid
        events = tr.events
        if len(events) < MAX_EVENT_IDS:
            events.append(eid)
            if tr.event_set is not None:
                tr.event_set.add(eid)
        if ev is not None:
            t, ts = ev.t, ev.ts
            if t >= tr.last_t:
                tr.last_t, tr.last_seen = t, ts
            if ts < tr.first_seen:  # an older file read later
                tr.first_seen = ts
            if tr.host is None:
                tr.host = ev.host
        links = self._links
        if eid not in links:
            links[eid] = tr
        tr.dirty = True

    def _close(self, tr: Trace) -> None:
        tr.dirty = True
        self._closing.append(tr)
        self.open.pop((tr.group, tr.key), None)
        if len(self.closed) >= 10_000:  # kept only to reopen on out-of-order input
            self.closed.pop(next(iter(self.closed)))
        self.closed[(tr.group, tr.key)] = tr

    # ---- persistence -----------------------------------------------------------------------------
    def _flush(self, conn: Any, first_id: int) -> dict[int, int]:
        """Write the touched traces; the links of events from `first_id` on (not stored yet)
        are returned instead of written."""
        # traces idle longer than their gap (in log time) close now
        for (group, _key), tr in list(self.open.items()):
            if self._batch_max_t - tr.last_t > self.rules.traces[group].gap_seconds:
                self._close(tr)
        # a trace closed and then reopened in this batch (out-of-order input) is open
        closing = [tr for tr in dict.fromkeys(self._closing)
                   if self.open.get((tr.group, tr.key)) is not tr]
        touched = [tr for tr in self.open.values() if tr.dirty] + closing
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for tr in touched:
            tr.render_title()
            if tr.id is None:
                cur = conn.exec_driver_sql(
                    "INSERT INTO event_traces (title, severity, pattern, first_seen, last_seen, "
                    "ip_address, user, host, event_count, status, causality, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                    (tr.title or tr.group, tr.severity, tr.group, tr.first_seen, tr.last_seen,
                     tr.ip, tr.user, tr.host, tr.event_count, tr.causality(), now, now))
                tr.id = int(cur.lastrowid)
        updates = [(tr.title or tr.group, tr.severity, tr.first_seen, tr.last_seen, tr.user,
                    tr.host, tr.event_count, "closed" if tr in closing else "open",
                    tr.causality(), now, tr.id) for tr in touched]
        if updates:
            conn.exec_driver_sql(
                "UPDATE event_traces SET title = ?, severity = ?, first_seen = min(first_seen, ?),"
                " last_seen = ?, user = coalesce(?, user), host = coalesce(host, ?), "
                "event_count = ?, status = ?, causality = ?, updated = ? WHERE id = ?", updates)
        unstored = {eid: tr.id for eid, tr in self._links.items() if eid >= first_id}
        earlier = [(tr.id, eid) for eid, tr in self._links.items() if eid < first_id]
        if earlier:
            # an event takes its first trace; a kernel-tracer 'context' trace (made for events
            # no correlation had claimed yet) gives way to the incident the event belongs to
            conn.exec_driver_sql(
                "UPDATE log_events SET trace_id = ? WHERE id = ? AND (trace_id IS NULL OR "
                "EXISTS (SELECT 1 FROM event_traces t WHERE t.id = log_events.trace_id AND "
                "t.pattern = 'context'))", earlier)
        if self._error_links:
            conn.exec_driver_sql("UPDATE error_traces SET trace_id = ? WHERE event_id = ?",
                                 [(tr.id, eid) for tr, eid in self._error_links])
        for tr in touched:
            for signature, severity in tr.shapes:
                self._pattern_seen(conn, tr, signature, severity)
            tr.shapes.clear()
            tr.dirty = False
        self._links = {}
        self._error_links = []
        self._closing = []
        self._relink()
        return unstored

    def _relink(self) -> None:
        groups = {g for g, _ in self.open}
        self._linking = frozenset().union(*(self.rules.traces[g].link_set for g in groups))

    @staticmethod
    def _pattern_seen(conn: Any, tr: Trace, signature: str, severity: str) -> None:
        names = signature.split(":", 1)[1].split(">")
        desc = " then ".join(names) + f" ({tr.group} trace)"
        conn.exec_driver_sql(
            "INSERT INTO trace_patterns (name, signature, description, severity, occurrences, "
            "first_seen, last_seen) VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(signature) DO "
            "UPDATE SET occurrences = occurrences + 1, last_seen = max(last_seen, "
            "excluded.last_seen)",
            (names[-1], signature, desc, severity, tr.first_seen, tr.last_seen))

    # ---- restart ---------------------------------------------------------------------------------
    def rebuild(self, conn: Any, first_id: int) -> None:
        """Rebuild memory from the database: open traces, then recent events replayed."""
        self._reset()
        groups = list(self.rules.traces)
        marks = ",".join("?" for _ in groups)
        for r in conn.exec_driver_sql(
            "SELECT id, title, severity, pattern, first_seen, last_seen, ip_address, user, host,"
            f" event_count, causality FROM event_traces WHERE status = 'open' AND pattern IN "
            f"({marks})", tuple(groups),
        ):
            c = json.loads(r[10]) if r[10] else {}
            key = c.get("key")
            if key is None:
                continue
            tr = Trace(r[3], key, r[4], r[5], _epoch_of(r[5], self._cache), ip=r[6], user=r[7],
                       host=r[8], id=r[0], title=r[1], severity=r[2], event_count=r[9],
                       steps=list(c.get("steps", [])), events=list(c.get("events", [])),
                       dirty=False)
            self.open[(tr.group, key)] = tr
        self._relink()
        last = conn.exec_driver_sql(
            "SELECT timestamp FROM log_events WHERE id = (SELECT max(id) FROM log_events "
            "WHERE id < ?)", (first_id,)).first()
        if last is None:
            return
        ref = _epoch_of(last[0], self._cache)
        start = datetime.fromtimestamp(ref - self.rules.max_window, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        self._replay = True
        try:
            # who logged in from where (for "never seen" addresses), within retention
            for user, ip in conn.exec_driver_sql(
                    "SELECT DISTINCT user, ip_address FROM log_events WHERE action = "
                    "'auth_success' AND id < ? AND user IS NOT NULL AND ip_address IS NOT "
                    "NULL", (first_id,)):
                self.logins.setdefault(user, set()).add(ip)
            long_start = datetime.fromtimestamp(ref - self.rules.long_window, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            for ip, ts in conn.exec_driver_sql(
                    "SELECT ip_address, max(timestamp) FROM log_events WHERE action = "
                    "'f2b_unban' AND timestamp >= ? AND id < ? GROUP BY ip_address",
                    (long_start, first_id)):
                if ip:
                    (self._get(ip) or self._addr(ip, ref)).unban_t = _epoch_of(ts, self._cache)
            wanted = list(self._dispatch)
            marks = ",".join("?" for _ in wanted)
            cur = conn.exec_driver_sql(
                "SELECT id, timestamp, host, program, action, ip_address, user, port, metadata "
                f"FROM log_events WHERE timestamp >= ? AND id < ? AND action IN ({marks}) "
                "ORDER BY timestamp, id", (start, first_id, *wanted))
            for r in cur:
                ev = Ev(r[0], r[1], _epoch_of(r[1], self._cache), r[2], r[3], r[4], r[5], r[6],
                        r[7], r[8])
                handlers = [h for h in self._dispatch[ev.action] if h != self._login]
                self._event(ev, handlers)
            for r in conn.exec_driver_sql(
                    "SELECT e.id, e.timestamp, e.host, e.program, x.error_type, x.severity "
                    "FROM error_traces x JOIN log_events e ON e.id = x.event_id "
                    "WHERE x.timestamp >= ? AND e.id < ? ORDER BY e.timestamp, e.id",
                    (start, first_id)):
                ev = Ev(r[0], r[1], _epoch_of(r[1], self._cache), r[2], r[3], "error", None,
                        None, None, None)
                self._error(ev, r[4], r[5])
        finally:
            self._replay = False
            self._links = {}
            self._error_links = []


# ---- wiring -------------------------------------------------------------------------------------
def make_hooks(config: Any) -> list[BatchHook]:
    """The batch hooks for write_batch: classification, then correlation (which reads the
    classification of the same batch). `config` is a logly.config.Config; its [correlation]
    table can turn either off or point at other rule files."""
    from logly.tracer.classify import Classifier, store_classified
    from logly.tracer.patterns import load_rules, settings

    s = settings(config.sections.get("correlation", {}))
    if not s.enabled:
        return []
    classifier = Classifier.load(s.errors) if s.classify else None
    correlator = Correlator(load_rules(s.rules))
    handoff: dict[str, tuple[int, list[Classified]]] = {}

    # Both run before the batch's events are stored (write_batch checks the error_traces rows'
    # foreign keys at commit), so that the events go in with their trace.
    def classify_hook(conn: Any, rows: Sequence[tuple], first_id: int) -> None:
        hits = classifier.classify_rows(rows) if classifier else []
        store_classified(conn, rows, first_id, hits)
        handoff["batch"] = (first_id, hits)

    def correlate_hook(conn: Any, rows: Sequence[tuple], first_id: int) -> dict[int, int]:
        batch = handoff.pop("batch", None)
        hits = batch[1] if batch and batch[0] == first_id else None
        return correlator.hook(conn, rows, first_id, hits)

    classify_hook.before_insert = True  # type: ignore[attr-defined]
    correlate_hook.before_insert = True  # type: ignore[attr-defined]

    classify_hook.correlator = correlator  # type: ignore[attr-defined]  # for tests/bench
    correlate_hook.correlator = correlator  # type: ignore[attr-defined]
    return [classify_hook, correlate_hook]
