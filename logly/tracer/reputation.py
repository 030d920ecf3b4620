"""IP reputation: `ip_reputation` kept up to date from each stored batch, and rebuilt on demand.

The store calls the hook inside the batch's transaction (`hook(conn, rows, first_id)`), so an
address's row commits or rolls back with the events it was computed from. Per row the hook
does a few dict updates (no I/O, no JSON unless a row's metadata must be read, and that is
cached); per address and batch it reads the stored state once, merges, scores
(logly/tracer/reputation_model.py) and writes one UPSERT. IPv6 hosts are folded into a
second row for their /64 as well: a host that rotates addresses within its prefix shows up
there.

The full rebuild and the decay job are in logly/tracer/reputation_jobs.py.

Config, table `[reputation]` of logly.toml:
    enabled = true
    half_life = "7d"                      # how fast a score fades after the last attack
    allowlist = ["192.0.2.10", "2001:db8:1::/48"]   # never scored as malicious
    blocklists = ["/etc/logly/blocklists/firehol_level1.netset"]
    geoip_city = "/var/lib/GeoIP/GeoLite2-City.mmdb"  # or a Country database
    geoip_asn = "/var/lib/GeoIP/GeoLite2-ASN.mmdb"
"""

from __future__ import annotations

import gc
import json
from _socket import AF_INET6, inet_ntop, inet_pton  # not socket.py: ms of start-up (logly ip)
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from logly.errors import ConfigError
from logly.rows import ACTION, IP, METADATA, PORT, TIMESTAMP, USER
from logly.tracer.blocklist import Blocklists, NetSet, addr_int
from logly.tracer.geoip import GeoIP
from logly.tracer.reputation_model import Model, parse_duration

# The read side (`logly ip`) loads this module in a process that must answer in milliseconds:
# no SQLAlchemy, dataclasses or typing at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from logly.store.sqlite import BatchHook

Clock = Callable[[], datetime]
TABLE = "ip_reputation"
COLUMNS = ("address", "score", "verdict", "first_seen", "last_seen", "evidence", "counts",
           "users", "geo", "asn", "blocklists", "updated", "base_score", "last_attack", "net")
USER_MAX_LEN = 64  # user names are attacker text; a long one is kept cut
BANS_KEPT = 5
_IN_CHUNK = 500  # addresses per `IN (...)` (SQLite's variable limit is far above)


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def fade_age(since: str | None, listed: bool, now: datetime) -> float:
    """Seconds a score has faded for: since the last attack (else the last sighting), and not
    at all while the address is on a blocklist (the list says it is bad now)."""
    if listed or not since:
        return 0.0
    return max(0.0, (now - parse_ts(since)).total_seconds())


# ---- configuration ----------------------------------------------------------------------------
class ReputationSettings:
    """`[reputation]`, checked (see `settings`)."""

    __slots__ = ("enabled", "half_life", "allowlist", "blocklists", "geoip_city", "geoip_asn")

    def __init__(self, enabled: bool = True, half_life: float | None = None,
                 allowlist: list[str] | None = None, blocklists: list[str] | None = None,
                 geoip_city: str | None = None, geoip_asn: str | None = None) -> None:
        self.enabled = enabled
        self.half_life = half_life  # seconds; None: the model's
        self.allowlist: list[str] = [] if allowlist is None else allowlist
        self.blocklists: list[str] = [] if blocklists is None else blocklists
        self.geoip_city = geoip_city
        self.geoip_asn = geoip_asn

    def _values(self) -> tuple:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReputationSettings) and self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "ReputationSettings(" + ", ".join(
            f"{k}={v!r}" for k, v in zip(self.__slots__, self._values(), strict=True)) + ")"


def settings(config: Any) -> ReputationSettings:
    """`[reputation]` of the config, validated; ConfigError names the key and the problem."""
    raw = getattr(config, "sections", {}).get("reputation", {}) if config is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError("[reputation] must be a table")
    out = ReputationSettings()
    known = {"enabled", "half_life", "allowlist", "blocklists", "geoip_city", "geoip_asn"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"[reputation] unknown key {key!r}",
                              hint="known keys: " + ", ".join(sorted(known)))
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise ConfigError("[reputation] enabled must be true or false")
        out.enabled = raw["enabled"]
    if "half_life" in raw:
        out.half_life = parse_duration(raw["half_life"], "[reputation] half_life")
    for key in ("allowlist", "blocklists"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[reputation] {key} must be a list of strings")
        setattr(out, key, list(value))
    try:
        NetSet.from_strings(out.allowlist, "[reputation] allowlist entry")
    except ValueError as exc:
        raise ConfigError(str(exc), hint="use addresses or CIDRs, e.g. \"192.0.2.0/24\"") \
            from None
    for key in ("geoip_city", "geoip_asn"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"[reputation] {key} must be a file path")
        setattr(out, key, value)
    return out


# ---- per-batch accumulation -------------------------------------------------------------------
_Info = tuple[bool, int, "str | None", "str | None", "str | None", bool]
_PLAIN: _Info = (False, 1, None, None, None, False)
# compact, and without json.dumps' per-call argument handling (this runs per address and batch)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_RULE_KEY = '"rule": "'
_DUP: _Info = (True, 1, None, None, None, False)
STATE_CACHE = 200_000  # addresses whose decoded state the hook keeps between batches


class _Cached:
    """An address's stored row, decoded, as of the `updated` stamp this process wrote."""

    __slots__ = ("stamp", "first", "last", "last_attack", "state", "users", "users_text",
                 "geo", "asn", "lists", "lists_gen")

    def __init__(self, stamp: str, first: str, last: str, last_attack: str | None,
                 state: dict[str, Any], users: dict[str, int], users_text: str | None,
                 geo: str | None, asn: str | None) -> None:
        self.stamp, self.first, self.last, self.last_attack = stamp, first, last, last_attack
        self.state, self.users, self.users_text = state, users, users_text
        self.geo, self.asn = geo, asn
        self.lists: list[str] = []
        self.lists_gen = -1


def _chunks(keys: list[str]) -> list[tuple[str, ...]]:
    return [tuple(keys[i:i + _IN_CHUNK]) for i in range(0, len(keys), _IN_CHUNK)]


@lru_cache(maxsize=8)
def _upsert(table: str) -> str:
    cols = ", ".join(COLUMNS)
    sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
    return (f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(COLUMNS))}) "
            f"ON CONFLICT(address) DO UPDATE SET {sets}")


class _Acc:
    """What one batch says about one address (or /64): counts and the order of logins."""

    __slots__ = ("first", "last", "last_attack", "events", "actions", "counters", "users",
                 "logins", "ports", "segs", "bans")

    def __init__(self, ts: str) -> None:
        self.first = self.last = ts
        self.last_attack: str | None = None
        self.events = 0
        self.actions: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.users: dict[str, int] = {}
        self.logins: dict[str, int] = {}
        self.ports: dict[int, int] = {}
        self.segs = [0]  # failures between logins: [before 1st, after 1st, ...]
        self.bans: list[list[str]] = []


@lru_cache(maxsize=65536)
def net64(addr: str) -> str:
    """`2001:db8:44::9` -> `2001:db8:44::/64`."""
    raw = inet_pton(AF_INET6, addr)
    return inet_ntop(AF_INET6, raw[:8] + bytes(8)) + "/64"


def _net_bounds(net: str) -> tuple[int, int]:
    lo = int.from_bytes(inet_pton(AF_INET6, net[:-3]), "big")
    return lo, lo | ((1 << 64) - 1)


class Reputation:
    """The hook object: model, allowlist, blocklists and GeoIP readers, kept for the run."""

    before_insert = True  # it reads the batch's rows, never the stored events

    def __init__(self, model: Model, cfg: ReputationSettings | None = None,
                 clock: Clock = utc_now, *, geoip: GeoIP | None = None,
                 blocklists: Blocklists | None = None) -> None:
        cfg = cfg or ReputationSettings()
        self.model = model
        self.cfg = cfg
        self.clock = clock
        self.half_life = cfg.half_life or model.half_life
        self.allow = NetSet.from_strings(cfg.allowlist, "[reputation] allowlist entry")
        self.blocklists = blocklists if blocklists is not None else Blocklists(cfg.blocklists)
        if geoip is None and (cfg.geoip_city or cfg.geoip_asn):
            geoip = GeoIP(cfg.geoip_city, cfg.geoip_asn)
        self.geoip = geoip
        self._meta: dict[str, _Info] = {}
        self._by_rule, self._by_method = model.by_rule, model.by_method
        self._states: dict[str, dict[str, _Cached]] = {}
        self._last_stamp = ""
        self.allowed = lru_cache(maxsize=65536)(self._allowed)

    @classmethod
    def from_config(cls, config: Any, clock: Clock = utc_now) -> Reputation:
        return cls(Model.load(getattr(config, "rules_dirs", None)), settings(config), clock)

    def __call__(self, conn: Any, rows: Sequence[tuple], first_id: int) -> None:
        # The hook makes and drops many small containers while the cache holds many more;
        # a cyclic collection in the middle of it would only rescan the cache (it costs a
        # third of the hook's time), so collections wait until it returns.
        enabled = gc.isenabled()
        if enabled:
            gc.disable()
        try:
            self.update(conn, rows)
        finally:
            if enabled:
                gc.enable()

    def _allowed(self, key: str) -> bool:
        if key.endswith("/64"):
            return self.allow.covers(6, *_net_bounds(key))
        k = addr_int(key)
        return k is not None and self.allow.contains_int(*k)

    # ---- metadata: read only when it can change how a row counts --------------------------
    def _meta_info(self, action: str, counter: str, meta: str) -> _Info:
        """How a counted row's metadata changes its counting. JSON is parsed (and the answer
        cached) only when a cheap look at the text says it can matter: most metadata is either
        repeated verbatim (cache hits) or, like a firewall line's, irrelevant here."""
        hit = self._meta.get(meta)
        if hit is not None:
            return hit
        dup = '"duplicate_of"' in meta  # such text holds an offset: unique, never cached
        if ('"repeat"' in meta or '"pam_service"' in meta or counter == "f2b_ban"
                or (action == "auth_failure" and self._by_method and '"method"' in meta)):
            return self._parse(meta, cache=not dup)
        by_rule = None
        if self._by_rule:
            # the rule's name, read straight from the text: a quote inside a JSON value is
            # escaped, so `"rule": "` is only ever the key itself
            i = meta.rfind(_RULE_KEY)
            if i >= 0:
                i += len(_RULE_KEY)
                by_rule = self._by_rule.get(meta[i:meta.find('"', i)])
            elif '"rule"' in meta:  # written with other separators: read it properly
                return self._parse(meta, cache=not dup)
        if dup:
            return _DUP if by_rule is None else (True, 1, by_rule, None, None, False)
        out = _PLAIN if by_rule is None else (False, 1, by_rule, None, None, False)
        self._remember(meta, out)
        return out

    def _remember(self, meta: str, info: _Info) -> None:
        if len(self._meta) >= 8192:
            self._meta.clear()
        self._meta[meta] = info

    def _parse(self, meta: str, cache: bool) -> _Info:
        try:
            m = json.loads(meta)
        except ValueError:
            m = {}
        if not isinstance(m, dict):
            m = {}
        rep = m.get("repeat", 1)
        rep = rep if isinstance(rep, int) and not isinstance(rep, bool) and rep > 0 else 1
        rule, method, jail = m.get("rule"), m.get("method"), m.get("jail")
        # PAM's line for an sshd attempt: sshd's own line for it (linked as its duplicate)
        # names the user, also when PAM does not (unknown users), so the name comes from there
        twin = isinstance(rule, str) and rule.startswith("pam/") \
            and m.get("pam_service") in ("sshd", "sshd-session")
        out = (bool(m.get("duplicate_of")), rep,
               self.model.by_rule.get(rule) if isinstance(rule, str) else None,
               self.model.by_method.get(method) if isinstance(method, str) else None,
               jail if isinstance(jail, str) else None, twin)
        if cache:
            self._remember(meta, out)
        return out

    # ---- the hook -----------------------------------------------------------------------------
    def update(self, conn: Any, rows: Sequence[tuple], *, table: str = TABLE,
               hosts: bool = True, nets: bool = True) -> int:
        """Fold `rows` (EVENT_INSERT_COLUMNS order) into `table`; returns rows written."""
        by_action = self.model.by_action
        attack, user_c, streak = self.model.attack, self.model.user_counters, self.model.streak
        meta_info = self._meta_info
        known = self._meta  # metadata text -> how it counts (see _meta_info)
        accs: dict[str, _Acc] = {}
        net_accs: dict[str, _Acc] = {}
        allowed = self.allowed

        def add(a: _Acc, ts: str, action: str, counter: str | None, n: int, dup: bool,
                user: str | None, port: int | None, jail: str | None) -> None:
            a.events += 1
            if ts < a.first:
                a.first = ts
            elif ts > a.last:
                a.last = ts
            if dup:  # the attempt is counted on its PAM twin; the user name is counted here
                if user is not None and counter in user_c:
                    u = user[:USER_MAX_LEN]
                    a.users[u] = a.users.get(u, 0) + n
                return
            acts = a.actions
            acts[action] = acts.get(action, 0) + n
            if counter is None:
                return
            cs = a.counters
            cs[counter] = cs.get(counter, 0) + n
            if counter in attack and (a.last_attack is None or ts > a.last_attack):
                a.last_attack = ts
            if user is not None:
                if counter in user_c:
                    u = user[:USER_MAX_LEN]
                    a.users[u] = a.users.get(u, 0) + n
                elif counter == "success":
                    u = user[:USER_MAX_LEN]
                    a.logins[u] = a.logins.get(u, 0) + n
            if counter in streak:
                a.segs[-1] += n
            elif counter == "success":
                a.segs.extend([0] * n)
            elif counter == "firewall" and port is not None:
                a.ports[port] = a.ports.get(port, 0) + n
            elif counter == "f2b_ban":
                a.bans.append([ts, jail or ""])

        for r in rows:
            ip = r[IP]
            if ip is None:
                continue
            ts = r[TIMESTAMP]
            action = r[ACTION]
            counter = by_action.get(action)
            user = r[USER]
            n, dup, jail = 1, False, None
            if counter is not None:
                meta = r[METADATA]
                if meta is not None:
                    info = known.get(meta)
                    if info is None:
                        info = meta_info(action, counter, meta)
                    dup, n, by_rule, by_method, jail, twin = info
                    if by_rule is not None:
                        counter = by_rule
                    elif by_method is not None and action == "auth_failure":
                        counter = by_method
                    if twin:
                        user = None
            if hosts:
                a = accs.get(ip)
                if a is None:
                    a = accs[ip] = _Acc(ts)
                add(a, ts, action, counter, n, dup, user, r[PORT], jail)
            if nets and ":" in ip and not allowed(ip):
                key = net64(ip)
                a = net_accs.get(key)
                if a is None:
                    a = net_accs[key] = _Acc(ts)
                add(a, ts, action, counter, n, dup, user, r[PORT], jail)

        if not accs and not net_accs:
            return 0
        now = self.clock()
        stamp = self._stamp()
        self.blocklists.refresh()
        try:
            written = self._write(conn, table, accs, now, stamp, is_net=False)
            if net_accs:
                written += self._write(conn, table, net_accs, now, stamp, is_net=True)
        except BaseException:
            self._states.pop(table, None)  # cached states may be ahead of the database now
            raise
        return written

    def _stamp(self) -> str:
        """`updated` for this batch: a UTC time, strictly increasing within the process, so a
        cached state is known current exactly when the row still carries its stamp."""
        from logly.store.sqlite import utcnow

        stamp = utcnow()
        if stamp <= self._last_stamp:
            t = parse_ts(self._last_stamp) + timedelta(microseconds=1)
            stamp = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._last_stamp = stamp
        return stamp

    # ---- merge, score, write ------------------------------------------------------------------
    def _write(self, conn: Any, table: str, accs: dict[str, _Acc], now: datetime, stamp: str,
               *, is_net: bool) -> int:
        keys = list(accs)
        if not keys:
            return 0
        cache = self._states.setdefault(table, {})
        if len(cache) > STATE_CACHE:
            cache.clear()
        # which stored rows the cache still mirrors: the row carries the stamp we wrote
        current: dict[str, str] = {}
        for part in _chunks(keys):
            current.update(conn.exec_driver_sql(
                f"SELECT address, updated FROM {table} WHERE address IN "
                f"({','.join('?' * len(part))})", part).all())
        reload = [k for k, upd in current.items()
                  if k not in cache or cache[k].stamp != upd]
        for part in _chunks(reload):
            for r in conn.exec_driver_sql(
                    f"SELECT address, first_seen, last_seen, last_attack, counts, users, geo, "
                    f"asn FROM {table} WHERE address IN ({','.join('?' * len(part))})", part):
                cache[r[0]] = _Cached(current[r[0]], r[1], r[2], r[3],
                                      json.loads(r[4]) if r[4] else {},
                                      json.loads(r[5]) if r[5] else {}, r[5], r[6], r[7])
        members: dict[str, tuple[int, int]] = {}
        if is_net:
            for part in _chunks(keys):
                for net, total, attacking in conn.exec_driver_sql(
                        f"SELECT net, count(*), count(last_attack) FROM {table} "
                        f"WHERE net IN ({','.join('?' * len(part))}) GROUP BY net", part):
                    members[net] = (total, attacking)
        gen = self.blocklists.generation
        out = []
        for key in keys:
            a = accs[key]
            c = cache.get(key) if key in current else None
            if c is None:  # a new row
                probe = key[:-3] if is_net else key
                geo = asn = None
                if self.geoip is not None:
                    g, s = self.geoip.lookup(probe)
                    geo = json.dumps(g) if g else None
                    asn = json.dumps(s) if s else None
                c = cache[key] = _Cached(stamp, a.first, a.last, None, {}, {}, None, geo, asn)
            state, users = merge_state(c.state, c.users, a, self.model)
            if a.first < c.first:
                c.first = a.first
            if a.last > c.last:
                c.last = a.last
            if a.last_attack is not None and (c.last_attack is None
                                              or a.last_attack > c.last_attack):
                c.last_attack = a.last_attack
            if a.users or c.users_text is None:
                c.users_text = _dumps(users)
            hosts = 0
            if is_net:
                total, hosts = members.get(key, (0, 0))
                state["members"] = total
            if c.lists_gen != gen:
                c.lists = self.blocklists.lookup(key[:-3] if is_net else key)
                c.lists_gen = gen
            allowlisted = self.allowed(key)
            scored = self.score_row(state, users, c.lists, hosts, allowlisted,
                                    c.last_attack or c.last, now)
            c.stamp = stamp
            out.append((key, scored.score, scored.verdict, c.first, c.last,
                        _dumps(scored.evidence), _dumps(state), c.users_text, c.geo,
                        c.asn, json.dumps(c.lists) if c.lists else None, stamp, scored.base,
                        c.last_attack, None if is_net or ":" not in key else net64(key)))
        conn.exec_driver_sql(_upsert(table), out)
        return len(out)

    def score_row(self, state: dict[str, Any], users: dict[str, int], lists: list[str],
                  hosts: int, allowlisted: bool, since: str | None, now: datetime) -> Scored:
        facts = self.model.facts(state, users, lists, hosts)
        base, evidence = self.model.score(facts, allowlisted)
        age = fade_age(since, bool(lists), now)
        score = round(base * self.model.decay(age, self.half_life), 3)
        verdict = self.model.verdict(score, base, facts, allowlisted)
        return Scored(score, base, verdict, evidence, facts)


class Scored:
    """A row's score now, before decay, its verdict, and the evidence and facts behind it."""

    __slots__ = ("score", "base", "verdict", "evidence", "facts")

    def __init__(self, score: float, base: float, verdict: str, evidence: list[list[Any]],
                 facts: dict[str, float]) -> None:
        self.score, self.base, self.verdict = score, base, verdict
        self.evidence, self.facts = evidence, facts

    def __repr__(self) -> str:
        return (f"Scored(score={self.score!r}, base={self.base!r}, verdict={self.verdict!r}, "
                f"evidence={self.evidence!r}, facts={self.facts!r})")


def _add_capped(state: dict[str, Any], key: str, counts: dict[str, int], cap: int,
                into: dict[str, int] | None = None) -> None:
    """Add `counts` to state[key] (or `into`), keeping at most `cap` names; the rest only
    counts, in state[key + "_over"]: an attacker must not grow a row without bound."""
    kept = into if into is not None else state.setdefault(key, {})
    for name, n in counts.items():
        if name in kept:
            kept[name] += n
        elif len(kept) < cap:
            kept[name] = n
        else:
            state[key + "_over"] = state.get(key + "_over", 0) + n


def merge_state(state: dict[str, Any], users: dict[str, int], a: _Acc,
                model: Model) -> tuple[dict[str, Any], dict[str, int]]:
    """Stored state + one batch's accumulation -> new state (pure; same order, same result)."""
    state["events"] = state.get("events", 0) + a.events
    for name, src in (("actions", a.actions), ("counters", a.counters),
                      ("logins", a.logins)):
        if src:
            dst = state.setdefault(name, {})
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    if a.ports:
        _add_capped(state, "ports", {str(p): v for p, v in a.ports.items()},
                    model.max_ports_kept)
    _add_capped(state, "users", a.users, model.max_users_kept, users)
    # logins after a run of failures: the stored run continues into this batch
    run = state.get("streak", 0) + a.segs[0]
    for seg in a.segs[1:]:
        if run >= model.compromise_after:
            state["compromise"] = state.get("compromise", 0) + 1
            state["worst_run"] = max(state.get("worst_run", 0), run)
        run = seg
    if run or "streak" in state:
        state["streak"] = run
    if a.bans:
        bans = sorted({tuple(b) for b in [*state.get("bans", []), *a.bans]}, reverse=True)
        state["bans"] = [list(b) for b in bans[:BANS_KEPT]]
    return state, users


# ---- entry points -----------------------------------------------------------------------------
def make_hook(config: Any, clock: Clock = utc_now) -> BatchHook | None:
    """The batch hook for ingest and the daemon, or None when `[reputation] enabled = false`."""
    cfg = settings(config)
    if not cfg.enabled:
        return None
    return Reputation(Model.load(getattr(config, "rules_dirs", None)), cfg, clock)


def load_for_cli(config: Any, *, with_lists: bool = False) -> Reputation:
    """A Reputation for reading: blocklists (which can be large) only when asked for."""
    cfg = settings(config)
    model = Model.load(getattr(config, "rules_dirs", None))
    if not with_lists:
        return Reputation(model, cfg, blocklists=Blocklists([]), geoip=_NoGeo())
    return Reputation(model, cfg)


class _NoGeo(GeoIP):
    def __init__(self) -> None:  # no readers: the CLI shows what the hook stored
        super().__init__(None, None)
