"""The read side of reputation: one address or network explained (`logly ip`), and the worst
addresses ranked (`logly ips`).

Both read what the batch hook stored and apply the decay for the current time, so the two
commands always agree with each other. Every query is an index lookup (`ip_reputation` by
address or /64, `log_events` by address and time, `event_traces` by address), so the cost does
not grow with the size of the database; a CIDR query sums the host rows inside it.

The queries run on a DB-API sqlite3 connection, a SQLiteStore's (`reading(store)`) or one of
`connect(path)`: `logly ip` in a new process opens the database with the standard library
alone, so this module and what it imports load no SQLAlchemy (logly/cli_ip.py).
"""

from __future__ import annotations

import heapq
import ipaddress
import json
import os
import sqlite3
from contextlib import contextmanager

from logly.configread import path_text
from logly.errors import LoglyError, UsageError
from logly.parsers.addresses import normalize_ip
from logly.tracer.reputation import BANS_KEPT, Reputation, fade_age, net64

# no dataclasses, typing or pathlib at run time: `logly ip` (see logly/configread.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime
    from pathlib import Path
    from typing import Any

    from logly.store.sqlite import SQLiteStore

RECENT_EVENTS = 10
RECENT_TRACES = 10
_SELECT = ("SELECT address, score, verdict, first_seen, last_seen, evidence, counts, users, "
           "geo, asn, blocklists, updated, base_score, last_attack, net FROM ip_reputation ")
_ROW_KEYS = ("address", "score", "verdict", "first_seen", "last_seen", "evidence", "counts",
             "users", "geo", "asn", "blocklists", "updated", "base_score", "last_attack", "net")


class Target:
    """What `logly ip` was asked about: `text` is canonical (an address, or a network in CIDR
    form); `network` is None for an address."""

    __slots__ = ("text", "network")

    def __init__(self, text: str,
                 network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None) -> None:
        self.text = text
        self.network = network

    @property
    def is_host(self) -> bool:
        return self.network is None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.text, self.network) == (other.text,
                                                                          other.network)

    def __hash__(self) -> int:
        return hash((self.text, self.network))

    def __repr__(self) -> str:
        return f"Target(text={self.text!r}, network={self.network!r})"


def connect(path: str | Path, *, busy_timeout_ms: int = 10_000) -> sqlite3.Connection:
    """A connection for reading, without SQLAlchemy: the database must exist and carry a
    schema (the same check and message as SQLiteStore.require_schema); the same busy
    timeout as the store, so a write in progress makes it wait rather than fail."""
    p = path_text(path)
    if not p.startswith("/"):  # as Path(path).absolute() spells it
        p = path_text(os.path.join(os.getcwd(), p))
    missing = LoglyError(f"no Logly database at {p}", hint="run `logly init` first")
    if not os.path.exists(p):
        raise missing
    conn = sqlite3.connect(p, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM metadata WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError:
        row = None
    if not row or not int(row[0]):
        conn.close()
        raise missing
    return conn


@contextmanager
def reading(db: SQLiteStore | sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """The DB-API connection of `db` (a SQLiteStore, or a sqlite3 connection as `connect`
    gives), inside one read transaction: every query of a report sees one snapshot."""
    if isinstance(db, sqlite3.Connection):
        with _snapshot(db) as conn:
            yield conn
        return
    with db.engine.connect() as sa, _snapshot(sa.connection.driver_connection) as conn:
        yield conn


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def parse_target(text: str) -> Target:
    """An address or a CIDR as a user types it; UsageError (exit 2) for anything else."""
    raw = text.strip()
    if "/" not in raw:
        addr = normalize_ip(raw)
        if addr is None:
            raise UsageError(f"not an IP address or network: {text!r}",
                             hint="e.g. 203.0.113.7, 2001:db8::1, 203.0.113.0/24, "
                                  "2001:db8:1:2::/64")
        return Target(addr)
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise UsageError(f"not an IP address or network: {text!r}",
                         hint="a network is ADDRESS/PREFIX, e.g. 203.0.113.0/24") from None
    if net.num_addresses == 1:
        return Target(str(net.network_address))
    return Target(str(net), net)


def _row(r: Any) -> dict[str, Any]:
    d = dict(zip(_ROW_KEYS, r, strict=True))
    for k in ("evidence", "counts", "users", "geo", "asn", "blocklists"):
        d[k] = json.loads(d[k]) if d[k] else None
    return d


def _stored(conn: sqlite3.Connection, address: str) -> dict[str, Any] | None:
    """The reputation row of an address or /64, if it has one."""
    r = conn.execute(_SELECT + "WHERE address = ?", (address,)).fetchone()
    return _row(r) if r else None


def members_in(conn: sqlite3.Connection,
               net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[dict]:
    """Host rows inside `net`, found through an index range and checked exactly."""
    if net.version == 6:
        if net.prefixlen >= 64:
            rows = conn.execute(_SELECT + "WHERE net = ?",
                                (net64(str(net.network_address)),))
        else:
            rows = conn.execute(_SELECT + "WHERE net IS NOT NULL")
    else:
        octets = str(net.network_address).split(".")
        keep = net.prefixlen // 8  # whole octets shared by every member, as a text prefix
        if keep == 0:
            rows = conn.execute(_SELECT + "WHERE address NOT LIKE '%:%' "
                                "AND address NOT LIKE '%/%'")
        else:
            prefix = ".".join(octets[:keep]) + "."
            # '/' sorts right after '.': [prefix, prefix-with-'/') is every text starting so
            rows = conn.execute(_SELECT + "WHERE address >= ? AND address < ?",
                                (prefix, prefix[:-1] + "/"))
    out = []
    for r in rows:
        if "/" in r[0]:
            continue
        try:
            if ipaddress.ip_address(r[0]) in net:
                out.append(_row(r))
        except ValueError:
            continue
    return out


def sum_rows(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, int]]:
    """States of several hosts added up (for a network): counters, users, ports, bans."""
    state: dict[str, Any] = {"events": 0}
    users: dict[str, int] = {}
    bans: set[tuple[str, str]] = set()
    for r in rows:
        s = r["counts"] or {}
        state["events"] += s.get("events", 0)
        for name in ("actions", "counters", "logins", "ports"):
            dst = state.setdefault(name, {})
            for k, v in s.get(name, {}).items():
                dst[k] = dst.get(k, 0) + v
        for k in ("compromise", "users_over", "ports_over"):
            if s.get(k):
                state[k] = state.get(k, 0) + s[k]
        bans.update(tuple(b) for b in s.get("bans", []))
        for u, v in (r["users"] or {}).items():
            users[u] = users.get(u, 0) + v
    if bans:
        state["bans"] = [list(b) for b in sorted(bans, reverse=True)[:BANS_KEPT]]
    return state, users


def _evidence(rep: Reputation, stored: list[list[Any]], facts: dict[str, float],
              score: float, base: float, age: float | None) -> list[dict[str, Any]]:
    per_user = 0.0
    if facts.get("users"):
        per_user = rep.model.attempts(facts) / facts["users"]
    ctx = {"users": int(facts.get("users", 0)), "per_user": per_user,
           "compromise_after": rep.model.compromise_after, "hosts": int(facts.get("hosts", 0)),
           "lists": ", ".join(facts.get("_lists", []))}  # type: ignore[arg-type]
    out = [{"feature": name, "count": n, "points": pts, "text": rep.model.explain(name, n, ctx)}
           for name, n, pts in stored]
    if base > 0 and age is not None and score != base:
        days = age / 86400
        out.append({"feature": "decay", "count": round(days, 2), "points": round(score - base, 3),
                    "text": f"last attack {days:.1f} days ago, half-life "
                            f"{rep.half_life / 86400:g} days: x{score / base:.3f}"})
    return out


def _score(rep: Reputation, row: dict[str, Any], now: datetime) -> tuple[float, float | None]:
    age = fade_age(row["last_attack"] or row["last_seen"], bool(row["blocklists"]), now)
    base = row["base_score"] or 0.0
    return round(base * rep.model.decay(age, rep.half_life), 3), age


def ip_report(db: SQLiteStore | sqlite3.Connection, rep: Reputation, target: Target,
              now: datetime, *, recent: int = RECENT_EVENTS) -> dict[str, Any] | None:
    """Everything `logly ip` shows, or None if the address/network was never seen."""
    with reading(db) as conn:
        if target.is_host:
            members: list[dict[str, Any]] = []
            row = _stored(conn, target.text)
            if row is None:
                seen = conn.execute("SELECT 1 FROM log_events WHERE ip_address = ? "
                                    "LIMIT 1", (target.text,)).fetchone()
                if not seen:
                    return None
            addresses = [target.text]
        else:
            assert target.network is not None
            row = None
            if target.network.version == 6 and target.network.prefixlen == 64:
                row = _stored(conn, target.text)
            members = members_in(conn, target.network)
            if row is None and not members:
                return None
            addresses = [m["address"] for m in members]
            if row is None:  # sum the hosts that are not allowlisted
                counted = [m for m in members if m["verdict"] != "allowlisted"]
                state, users = sum_rows(counted)
                lists = sorted({b for m in counted for b in m["blocklists"] or []})
                hosts = sum(1 for m in counted if m["last_attack"])
                scored = rep.score_row(state, users, lists, hosts, False, None, now)
                seen = counted or members
                row = {"address": target.text, "counts": state, "users": users,
                       "evidence": scored.evidence, "base_score": scored.base,
                       "blocklists": lists,
                       "first_seen": min(m["first_seen"] for m in seen),
                       "last_seen": max(m["last_seen"] for m in seen),
                       "last_attack": max((m["last_attack"] for m in counted
                                           if m["last_attack"]), default=None),
                       "geo": None, "asn": None, "verdict": None, "net": None}
        out = _report(rep, row, target, now)
        out["events"] = _recent_events(conn, addresses, recent)
        out["traces"] = _traces(conn, addresses)
        if members:
            out["members"] = [{"address": m["address"], "score": _score(rep, m, now)[0],
                               "verdict": m["verdict"], "last_seen": m["last_seen"]}
                              for m in members]
            out["members"].sort(key=lambda m: (-m["score"], m["address"]))
        if target.is_host and ":" in target.text:
            n = _stored(conn, net64(target.text))
            if n:
                out["network"] = {"address": n["address"], "score": _score(rep, n, now)[0],
                                  "members": (n["counts"] or {}).get("members")}
    return out


def _report(rep: Reputation, row: dict[str, Any] | None, target: Target, now: datetime
            ) -> dict[str, Any]:
    if row is None:  # events stored while reputation was off
        return {"address": target.text, "score": None, "verdict": "unscored",
                "base_score": None, "first_seen": None, "last_seen": None,
                "last_attack": None, "evidence": [], "counts": {}, "counters": {},
                "users": {}, "logins": {}, "ports": {}, "bans": {"count": 0, "recent": []},
                "geo": None, "asn": None, "blocklists": [], "allowlisted": False,
                "note": "events are stored but not scored: run `logly ip ADDR --recompute`"}
    state = row["counts"] or {}
    users = row["users"] or {}
    lists = row["blocklists"] or []
    allowlisted = row["verdict"] == "allowlisted"
    score, age = _score(rep, row, now)
    facts = rep.model.facts(state, users, lists)
    facts["_lists"] = lists  # type: ignore[assignment]
    base = row["base_score"] or 0.0
    verdict = rep.model.verdict(score, base, facts, allowlisted)
    counters = state.get("counters", {})
    return {
        "address": row["address"],
        "score": score,
        "verdict": verdict,
        "base_score": base,
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "last_attack": row["last_attack"],
        "half_life_days": rep.half_life / 86400,
        "evidence": _evidence(rep, row["evidence"] or [], facts, score, base, age),
        "counts": dict(sorted(state.get("actions", {}).items(), key=lambda kv: -kv[1])),
        "counters": counters,
        "users": dict(sorted(users.items(), key=lambda kv: (-kv[1], kv[0]))),
        "users_total": int(facts.get("users", 0)),
        "logins": state.get("logins", {}),
        "ports": dict(sorted(state.get("ports", {}).items(), key=lambda kv: -kv[1])),
        "bans": {"count": counters.get("f2b_ban", 0),
                 "recent": [{"timestamp": t, "jail": j} for t, j in state.get("bans", [])]},
        "geo": row["geo"],
        "asn": row["asn"],
        "blocklists": lists,
        "allowlisted": allowlisted,
        "events_total": state.get("events", 0),
    }


_MEMBERS_PER_QUERY = 200  # below SQLite's limit of 500 terms in a compound SELECT


def _recent_events(conn: Any, addresses: list[str], limit: int) -> list[dict[str, Any]]:
    """The newest `limit` events of the addresses: the newest `limit` (time, id) of each from
    the (ip_address, timestamp) index alone, in one statement per 200 addresses; then the
    rows of the newest of those. A /64 of 90 hosts reads 10 rows, not 900."""
    if not addresses or limit <= 0:
        return []
    cols = ("id", "timestamp", "host", "program", "action", "ip_address", "user", "port",
            "message", "path", "offset", "trace_id")
    newest = ("SELECT * FROM (SELECT id, timestamp FROM log_events WHERE ip_address = ? "
              "ORDER BY timestamp DESC, id DESC LIMIT ?)")
    keys: list[Any] = []
    members = addresses[:1000]
    for i in range(0, len(members), _MEMBERS_PER_QUERY):
        chunk = members[i:i + _MEMBERS_PER_QUERY]
        params = [v for a in chunk for v in (a, limit)]
        keys += conn.execute(" UNION ALL ".join([newest] * len(chunk)), params).fetchall()
    ids = [k[0] for k in heapq.nlargest(limit, keys, key=lambda k: (k[1], k[0]))]
    if not ids:
        return []
    rows = conn.execute(
        'SELECT e.id, e.timestamp, e.host, e.program, e.action, e.ip_address, e.user, e.port, '
        'e.message, f.path, e."offset", e.trace_id FROM log_events e '
        "LEFT JOIN source_files f ON f.id = e.file_id "
        f"WHERE e.id IN ({','.join('?' * len(ids))}) ORDER BY e.timestamp DESC, e.id DESC",
        ids).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _traces(conn: Any, addresses: list[str]) -> list[dict[str, Any]]:
    cols = ("id", "title", "severity", "first_seen", "last_seen", "ip_address", "user",
            "event_count")
    out: list[Any] = []
    members = addresses[:1000]
    for i in range(0, len(members), 500):
        chunk = members[i:i + 500]
        out += conn.execute(
            "SELECT id, title, severity, first_seen, last_seen, ip_address, user, event_count "
            f"FROM event_traces WHERE ip_address IN ({','.join('?' * len(chunk))}) "
            "ORDER BY last_seen DESC, id DESC LIMIT ?", (*chunk, RECENT_TRACES)).fetchall()
    out = heapq.nlargest(RECENT_TRACES, out, key=lambda r: (r[4], r[0]))
    return [dict(zip(cols, r, strict=True)) for r in out]


def top(db: SQLiteStore | sqlite3.Connection, rep: Reputation, n: int, since: str | None,
        now: datetime) -> list[dict[str, Any]]:
    """The `n` addresses with the highest score now, among those seen since `since`.

    A /64 row is listed when more than one of its hosts was seen (otherwise it repeats its
    only host), and then stands for its hosts: those ranked below it are not listed again
    (`logly ip PREFIX/64` lists them). Ties: higher base score, more recent, the address.
    """
    with reading(db) as conn:
        # the stored score (faded to when it was written) bounds the score now from above,
        # so reading in stored-score order can stop early; a full read if that runs short
        for k in (max(4 * n, n + 200), 0):
            ranked, complete = _ranked(conn, rep, since, now, k)
            out = _listing(conn, rep, ranked, n)
            if len(out) >= n or complete:
                return out
    return out


def _ranked(conn: Any, rep: Reputation, since: str | None, now: datetime, k: int
            ) -> tuple[list[tuple], bool]:
    """Rows by current score (ties: base score, last seen, address). With k > 0, only rows
    that can be among the k best: reading stops once the stored score, an upper bound, falls
    below the k-th best current score. Returns (rows, whether every row was read)."""
    sql = ("SELECT address, base_score, coalesce(last_attack, last_seen), last_seen, verdict, "
           "blocklists, net, score FROM ip_reputation")
    params: tuple = ()
    if since:
        sql += " WHERE last_seen >= ?"
        params = (since,)
    sql += " ORDER BY score DESC"
    decay, hl = rep.model.decay, rep.half_life
    best: list[float] = []
    ranked = []
    complete = True
    for address, base, start, last, verdict, lists, net, stored in conn.execute(
            sql, params):
        if k and len(best) >= k and stored < best[0]:
            complete = False
            break
        score = round((base or 0.0) * decay(fade_age(start, bool(lists), now), hl), 3)
        ranked.append((score, base or 0.0, last or "", address, verdict, net))
        if k:
            if len(best) < k:
                heapq.heappush(best, score)
            elif score > best[0]:
                heapq.heapreplace(best, score)
    ranked.sort(key=lambda t: t[3])  # stable sorts, last key first
    ranked.sort(key=lambda t: t[2], reverse=True)
    ranked.sort(key=lambda t: (t[0], t[1]), reverse=True)
    if not complete:  # past the k-th, an unread row could outrank a read one
        del ranked[k:]
    return ranked, complete


def _listing(conn: Any, rep: Reputation, ranked: list[tuple], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    listed_nets: set[str] = set()
    for score, base, _last, address, verdict, net in ranked:
        if len(out) >= n:
            break
        if net is not None and net in listed_nets:
            continue
        r = _stored(conn, address)
        assert r is not None  # read in the same snapshot as `ranked`
        state = r["counts"] or {}
        if "/" in address:
            if (state.get("members") or 0) < 2:
                continue
            listed_nets.add(address)
        counters = state.get("counters", {})
        users = r["users"] or {}
        facts = rep.model.facts(state, users, r["blocklists"] or [])
        out.append({
            "address": address,
            "score": score,
            "verdict": rep.model.verdict(score, base, facts, verdict == "allowlisted"),
            "base_score": base,
            "first_seen": r["first_seen"],
            "last_seen": r["last_seen"],
            "last_attack": r["last_attack"],
            "events": state.get("events", 0),
            "attempts": rep.model.attempts(counters),
            "users": int(facts.get("users", 0)),
            "country": (r["geo"] or {}).get("country_code"),
            "asn": (r["asn"] or {}).get("asn"),
            "org": (r["asn"] or {}).get("org"),
            "blocklists": r["blocklists"] or [],
            "members": state.get("members"),
        })
    return out
