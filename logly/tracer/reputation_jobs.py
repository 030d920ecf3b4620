"""Reputation jobs: rebuild `ip_reputation` from the stored events, and let scores fade.

`recompute(store, rep)` replays every event with an address through the batch hook's own code
(logly/tracer/reputation.py), in id order, into a temporary table and swaps it in: the
incremental table and a full rebuild agree (tests/test_reputation.py proves it), and a daemon
writing meanwhile only waits for the final swap. `recompute_addresses` does the same for some
addresses, in one write transaction. `decay` is the scheduler job that keeps the stored `score`
column current as scores fade.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from logly.store.sqlite import SQLiteStore
from logly.tracer.reputation import (
    _IN_CHUNK,
    COLUMNS,
    TABLE,
    Clock,
    Reputation,
    fade_age,
    net64,
    settings,
    utc_now,
)
from logly.tracer.reputation_model import Model

_EVENT_SELECT = ('SELECT timestamp, source, host, program, pid, level, service, action, '
                 'message, ip_address, user, port, metadata, file_id, "offset" FROM log_events ')


@dataclass
class RecomputeResult:
    events: int = 0
    addresses: int = 0
    changed: int = 0  # rows whose content differed from the incrementally kept table
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


_COMPARE = "address, base_score, first_seen, last_seen, last_attack, evidence, counts, users, " \
           "blocklists, net, verdict"


def recompute(store: SQLiteStore, rep: Reputation, *, chunk_ids: int = 200_000
              ) -> RecomputeResult:
    """Rebuild the whole table from the stored events (see the module docstring)."""
    t0 = time.perf_counter()
    res = RecomputeResult()
    conn = store.engine.connect()
    try:
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.rep_rebuild")
        conn.exec_driver_sql(
            "CREATE TEMP TABLE rep_rebuild (address TEXT PRIMARY KEY, score REAL NOT NULL, "
            "verdict TEXT NOT NULL, first_seen TEXT, last_seen TEXT, evidence TEXT, "
            "counts TEXT, users TEXT, geo TEXT, asn TEXT, blocklists TEXT, updated TEXT NOT "
            "NULL, base_score REAL NOT NULL, last_attack TEXT, net TEXT)")
        conn.exec_driver_sql("CREATE INDEX temp.ix_rep_rebuild_net ON rep_rebuild (net)")
        conn.commit()
        top = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM log_events").scalar_one()
        conn.commit()
        lo = 0
        while lo < top:  # one short read transaction per chunk: no long-lived snapshot
            hi = min(top, lo + chunk_ids)
            res.events += _replay(conn, rep, "WHERE id > ? AND id <= ?", (lo, hi))
            conn.commit()
            lo = hi
        conn.info["write"] = True  # BEGIN IMMEDIATE: the daemon waits for the swap only
        with conn.begin():
            res.events += _replay(conn, rep, "WHERE id > ?", (top,))
            res.changed = conn.exec_driver_sql(
                f"SELECT count(*) FROM (SELECT {_COMPARE} FROM main.{TABLE} EXCEPT "
                f"SELECT {_COMPARE} FROM temp.rep_rebuild)").scalar_one() + \
                conn.exec_driver_sql(
                f"SELECT count(*) FROM (SELECT {_COMPARE} FROM temp.rep_rebuild EXCEPT "
                f"SELECT {_COMPARE} FROM main.{TABLE})").scalar_one()
            conn.exec_driver_sql(f"DELETE FROM main.{TABLE}")
            cols = ", ".join(COLUMNS)
            conn.exec_driver_sql(f"INSERT INTO main.{TABLE} ({cols}) SELECT {cols} "
                                 "FROM temp.rep_rebuild")
            res.addresses = conn.exec_driver_sql(
                f"SELECT count(*) FROM main.{TABLE}").scalar_one()
        conn.info["write"] = False
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.rep_rebuild")
        conn.commit()
    finally:
        conn.info["write"] = False
        conn.close()
    res.seconds = time.perf_counter() - t0
    return res


def _replay(conn: Any, rep: Reputation, where: str, params: tuple, *,
            table: str = "temp.rep_rebuild", hosts: bool = True, nets: bool = True,
            batch: int = 50_000) -> int:
    result = conn.exec_driver_sql(
        _EVENT_SELECT + where + " AND ip_address IS NOT NULL ORDER BY id", params)
    n = 0
    while True:
        rows = result.fetchmany(batch)
        if not rows:
            return n
        rep.update(conn, [tuple(r) for r in rows], table=table, hosts=hosts, nets=nets)
        n += len(rows)


def recompute_addresses(store: SQLiteStore, rep: Reputation, addresses: Sequence[str]
                        ) -> RecomputeResult:
    """Rebuild the rows of some hosts (and of the /64 of each IPv6 one) from their events."""
    t0 = time.perf_counter()
    res = RecomputeResult()
    hosts = sorted({a for a in addresses if not a.endswith("/64")})
    nets = sorted({a for a in addresses if a.endswith("/64")}
                  | {net64(a) for a in hosts if ":" in a})
    with store._write() as conn:
        before = _snapshot(conn, [*hosts, *nets])
        for i in range(0, len(hosts), _IN_CHUNK):
            part = hosts[i:i + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            conn.exec_driver_sql(f"DELETE FROM {TABLE} WHERE address IN ({marks})", tuple(part))
            res.events += _replay(conn, rep, f"WHERE ip_address IN ({marks})", tuple(part),
                                  table=TABLE, nets=False)
        for net in nets:
            conn.exec_driver_sql(f"DELETE FROM {TABLE} WHERE address = ?", (net,))
            members = [r[0] for r in conn.exec_driver_sql(
                f"SELECT address FROM {TABLE} WHERE net = ?", (net,))]
            for i in range(0, len(members), _IN_CHUNK):
                part = members[i:i + _IN_CHUNK]
                marks = ",".join("?" * len(part))
                res.events += _replay(conn, rep, f"WHERE ip_address IN ({marks})",
                                      tuple(part), table=TABLE, hosts=False)
        after = _snapshot(conn, [*hosts, *nets])
    res.addresses = len(after)
    res.changed = sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    res.seconds = time.perf_counter() - t0
    return res


def _snapshot(conn: Any, keys: list[str]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i in range(0, len(keys), _IN_CHUNK):
        part = keys[i:i + _IN_CHUNK]
        marks = ",".join("?" * len(part))
        for r in conn.exec_driver_sql(f"SELECT {_COMPARE} FROM {TABLE} WHERE address IN "
                                      f"({marks})", tuple(part)):
            out[r[0]] = tuple(r)
    return out


def decay(store: SQLiteStore, clock: Clock = utc_now, *, model: Model | None = None,
          half_life: float | None = None) -> int:
    """Scheduler job: refresh the stored `score`/`verdict` as scores fade; returns rows changed.

    `logly ip`/`logly ips` compute the faded score themselves; this keeps the column current for
    other readers (the daily report). Only rows whose rounded score moved are written.
    """
    model = model or Model.load()
    hl = half_life or model.half_life
    now = clock()
    updates = []
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT address, score, base_score, coalesce(last_attack, last_seen), blocklists "
            f"FROM {TABLE} WHERE base_score > 0").all()
    for address, score, base, since, lists in rows:
        age = fade_age(since, bool(lists), now)
        new = round(base * model.decay(age, hl), 3)
        if abs(new - score) < 0.05:
            continue
        new_verdict = model.verdict(new, base)
        updates.append((new, new_verdict, address))
    if updates:
        store.executemany(f"UPDATE {TABLE} SET score = ?, verdict = ? WHERE address = ?",
                          updates)
    return len(updates)


def make_decay_job(config: Any) -> Callable[[SQLiteStore, Clock], int] | None:
    """`decay` bound to the config's model and half-life, as a scheduler job
    (`job(store, clock)`); None when reputation is disabled."""
    cfg = settings(config)
    if not cfg.enabled:
        return None
    model = Model.load(getattr(config, "rules_dirs", None))

    def reputation_decay(store: SQLiteStore, clock: Clock) -> int:
        return decay(store, clock, model=model, half_life=cfg.half_life)

    return reputation_decay
