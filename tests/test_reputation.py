"""IP reputation end to end: a generated log with known actors goes through `logly.ingest` with
the reputation hook into a real SQLite file; `logly ips` must rank the actors as the model
says and `logly ip` must explain every point. Plus: incremental == full recompute, one
attempt logged by sshd and PAM counted once, IPv6 /64 aggregation, allowlist, decay, the
model file's own examples, configuration errors, hostile user names."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from logly.config import load_config
from logly.errors import ConfigError
from logly.ingest import ingest_input
from logly.parsers.rules import RuleSet
from logly.sources.files import open_input
from logly.store.sqlite import SQLiteStore
from logly.tracer.reputation import COLUMNS, Reputation, make_hook, settings
from logly.tracer.reputation_jobs import decay, make_decay_job, recompute, recompute_addresses
from logly.tracer.reputation_model import Model
from logly.tracer.reputation_query import ip_report, parse_target, top

BRUTE = "198.51.100.66"
SPRAYER = "203.0.113.50"
SCANNER = "192.0.2.200"
ROTATING = "2001:db8:bad:1::/64"
LEGIT = "198.51.100.20"
ADMIN = "192.0.2.10"
ALLOW = "192.0.2.0/28"  # the admin's network
GUESSES = ("oracle", "test", "git", "postgres", "ubuntu", "pi")


def ensure_ip_commands() -> None:
    """`ip`/`ips` on the real app, once (a no-op when logly/cli.py registers them)."""
    from logly.cli import app
    from logly.cli_ip import register

    if not any(c.name == "ip" for c in app.registered_commands):
        register(app)


@pytest.fixture(scope="module", autouse=True)
def ip_commands() -> None:
    ensure_ip_commands()


class LogWriter:
    """Syslog lines with ISO times (UTC) and fail2ban.log lines, a few seconds apart."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.auth: list[str] = []
        self.f2b: list[str] = []
        self.pid = 3000
        self.port = 40000

    def tick(self, seconds: float = 1.0) -> str:
        self.t += timedelta(seconds=seconds)
        return self.t.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")

    def sshd(self, msg: str, pid: int) -> None:
        self.auth.append(f"{self.tick()} web1 sshd[{pid}]: {msg}")

    def fail2ban(self, kind: str, ip: str) -> None:
        self.tick()
        stamp = self.t.strftime("%Y-%m-%d %H:%M:%S,") + f"{self.t.microsecond // 1000:03d}"
        logger, level = ("filter", "INFO   ") if kind == "Found" else ("actions", "NOTICE ")
        self.f2b.append(f"{stamp} fail2ban.{logger:<14} [811]: {level} [sshd] {kind} {ip}")

    def conn(self) -> tuple[int, int]:
        self.pid += 1
        self.port += 1
        return self.pid, self.port

    def valid_user_failures(self, ip: str, user: str, tries: int, max_tries: bool = False
                            ) -> None:
        """PAM's line then sshd's for each try: one attempt each (linked by pid)."""
        pid, port = self.conn()
        for _ in range(tries):
            self.sshd("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
                      f"tty=ssh ruser= rhost={ip}  user={user}", pid)
            self.sshd(f"Failed password for {user} from {ip} port {port} ssh2", pid)
        if max_tries:
            self.sshd(f"error: maximum authentication attempts exceeded for {user} from {ip} "
                      f"port {port} ssh2 [preauth]", pid)

    def invalid_user_failures(self, ip: str, user: str, tries: int) -> None:
        pid, port = self.conn()
        self.sshd(f"Invalid user {user} from {ip} port {port}", pid)
        for _ in range(tries):
            self.sshd("pam_unix(sshd:auth): check pass; user unknown", pid)
            self.sshd("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
                      f"tty=ssh ruser= rhost={ip}", pid)
            self.sshd(f"Failed password for invalid user {user} from {ip} port {port} ssh2",
                      pid)
        self.sshd(f"Connection closed by invalid user {user} {ip} port {port} [preauth]", pid)

    def login(self, ip: str, user: str, how: str = "password") -> None:
        pid, port = self.conn()
        self.sshd(f"Accepted {how} for {user} from {ip} port {port} ssh2", pid)


def actors_log(tmp: Path, start: datetime, seed: int = 5) -> tuple[Path, Path]:
    """The six actors, interleaved at random (so batches cut through every one of them)."""
    w = LogWriter(start)
    rng = random.Random(seed)
    steps: list[Callable[[], None]] = []

    def brute_round() -> None:
        for i in range(20):
            w.valid_user_failures(BRUTE, "root", 3, max_tries=True)
            if i % 4 == 0:
                w.fail2ban("Found", BRUTE)
        w.invalid_user_failures(BRUTE, "admin", 2)
        w.fail2ban("Ban", BRUTE)
        w.fail2ban("Unban", BRUTE)

    steps += [brute_round] * 3
    steps += [lambda u=f"user{i:02d}": w.invalid_user_failures(SPRAYER, u, 2)
              for i in range(50)]

    def scan(k: int) -> None:
        pid, _ = w.conn()
        if k < 8:
            w.sshd(f"Did not receive identification string from {SCANNER} port {50000 + k}",
                   pid)
        for j in range(15):
            w.auth.append(
                f"{w.tick(0.1)} web1 kernel: [UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:12:34:56:"
                f"52:54:00:65:43:21:08:00 SRC={SCANNER} DST=192.0.2.1 LEN=44 TOS=0x00 "
                f"PREC=0x00 TTL=242 ID=54321 PROTO=TCP SPT=41234 DPT={(k * 15 + j) % 60 + 1000}"
                " WINDOW=1024 RES=0x00 SYN URGP=0")

    steps += [lambda k=k: scan(k) for k in range(10)]
    steps += [lambda i=i: w.invalid_user_failures(f"2001:db8:bad:1::{i + 1:x}",
                                                  GUESSES[i % len(GUESSES)], 2)
              for i in range(30)]
    rng.shuffle(steps)
    # the legitimate user mistypes once, then logs in; the admin fumbles, then logs in
    steps.insert(len(steps) // 2, lambda: (w.valid_user_failures(LEGIT, "alice", 1),
                                           w.login(LEGIT, "alice")))
    steps.insert(len(steps) // 3, lambda: (w.valid_user_failures(ADMIN, "root", 3),
                                           w.valid_user_failures(ADMIN, "toor", 2),
                                           w.login(ADMIN, "root", "publickey")))
    for step in steps:
        step()
    auth, f2b = tmp / "auth.log", tmp / "fail2ban.log"
    auth.write_text("\n".join(w.auth) + "\n", encoding="utf-8")
    f2b.write_text("\n".join(w.f2b) + "\n", encoding="utf-8")
    return auth, f2b


def config_file(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "logly.toml"
    cfg.write_text(f'[reputation]\nallowlist = ["{ALLOW}"]\nhalf_life = "7d"\n{extra}')
    return cfg


def ingest(store: SQLiteStore, paths: list[Path], hooks: list[Any], batch_lines: int = 20_000
           ) -> int:
    rules = RuleSet.load()
    n = 0
    for p in paths:
        inp = open_input(str(p))
        try:
            n += ingest_input(store, rules, inp, tz=UTC, hooks=hooks, batch_lines=batch_lines,
                              parallel=False).events
        finally:
            inp.close()
    return n


def table(store: SQLiteStore) -> dict[str, dict[str, Any]]:
    """ip_reputation as comparable dicts: JSON parsed, `updated` (a wall-clock stamp) left out."""
    conn = sqlite3.connect(store.path)
    out = {}
    for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ip_reputation"):
        d = dict(zip(COLUMNS, row, strict=True))
        d.pop("updated")
        for k in ("evidence", "counts", "users", "geo", "asn", "blocklists"):
            d[k] = json.loads(d[k]) if d[k] else None
        out[d["address"]] = d
    conn.close()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The actors' log ingested with the hook built from a config file, as the daemon would."""
    tmp = tmp_path_factory.mktemp("actors")
    now = datetime.now(UTC).replace(microsecond=0)
    logs = actors_log(tmp, now - timedelta(hours=3))
    cfg_path = config_file(tmp)
    store = SQLiteStore(tmp / "logly.db")
    store.init()
    hook = make_hook(load_config(cfg_path))
    assert hook is not None
    ingest(store, list(logs), [hook], batch_lines=97)  # small batches: state crosses them
    return {"tmp": tmp, "db": tmp / "logly.db", "cfg": cfg_path, "store": store, "logs": logs}


# ---- the actors -------------------------------------------------------------------------------
def test_ips_ranks_the_actors_in_the_expected_order(world: dict, cli: Callable) -> None:
    r = cli("ips", "--top", "100", "--json", "--db", str(world["db"]), "--config",
            str(world["cfg"]))
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    order = [row["address"] for row in rows]
    named = [a for a in order if a in (BRUTE, SPRAYER, SCANNER, ROTATING, LEGIT, ADMIN)]
    # brute-forcer (banned thrice) > sprayer (50 users) > the rotating /64 > the scanner >
    # the user who mistyped once > the allowlisted admin
    assert named == [BRUTE, SPRAYER, ROTATING, SCANNER, LEGIT, ADMIN], rows
    by = {row["address"]: row for row in rows}
    assert [by[a]["verdict"] for a in named] == ["malicious", "malicious", "malicious",
                                                 "suspicious", "low", "allowlisted"]
    assert by[ADMIN]["score"] == 0
    # the /64 row gathers its 30 addresses and stands for them in the list ...
    assert by[ROTATING]["members"] == 30
    assert not [a for a in order if a.startswith("2001:db8:bad:1::") and a != ROTATING]
    # ... each of which scores low on its own
    r = cli("ip", ROTATING, "--json", "--db", str(world["db"]), "--config", str(world["cfg"]))
    members = json.loads(r.out)["members"]
    assert len(members) == 30 and all(0 < m["score"] < 5 for m in members)
    assert by[SPRAYER]["users"] == 50 and by[SPRAYER]["attempts"] == 100
    assert all(set(row) >= {"address", "score", "verdict"} for row in rows)


@pytest.mark.parametrize("address, features", [
    (BRUTE, {"failed", "invalid_user", "preauth", "max_tries", "f2b_found", "banned",
             "recidive"}),
    (SPRAYER, {"failed", "invalid_user", "users", "spray", "preauth"}),
    (SCANNER, {"scan", "firewall", "ports"}),
    (ROTATING, {"failed", "invalid_user", "users", "preauth", "hosts"}),
    (LEGIT, {"failed"}),
    (ADMIN, {"allowlisted", "failed", "compromise"}),
])
def test_ip_explains_every_point(world: dict, cli: Callable, address: str,
                                 features: set[str]) -> None:
    r = cli("ip", address, "--json", "--db", str(world["db"]), "--config", str(world["cfg"]))
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert {"address", "score", "verdict", "first_seen", "last_seen", "evidence", "counts",
            "users", "geo", "asn", "blocklists"} <= set(rep)
    got = {e["feature"] for e in rep["evidence"]} - {"decay"}
    assert got == features
    # every point is on an evidence line: the lines add up to the score shown
    assert sum(e["points"] for e in rep["evidence"]) == pytest.approx(rep["score"], abs=0.01)
    assert all(e["text"] for e in rep["evidence"])
    assert rep["events"], "recent events are listed"
    # and the table view prints the same evidence
    r = cli("ip", address, "--db", str(world["db"]), "--config", str(world["cfg"]))
    assert r.code == 0
    for e in rep["evidence"]:
        assert e["text"][:40] in r.out.replace("\n", " ") or e["text"][:20] in r.out


def test_actor_counts_are_exact(world: dict) -> None:
    t = table(world["store"])
    brute = t[BRUTE]["counts"]["counters"]
    # 3 rounds x 20 connections x 3 tries (PAM + sshd lines: once each) + 3 x 2 for admin
    assert brute["failed"] == 3 * 20 * 3 + 3 * 2
    assert brute["f2b_ban"] == 3 and brute["invalid_user"] == 3
    assert brute["max_tries"] == 60 and brute["f2b_found"] == 15
    assert t[BRUTE]["users"] == {"root": 180, "admin": 9}
    assert t[SPRAYER]["counts"]["counters"]["failed"] == 100
    assert len(t[SPRAYER]["users"]) == 50
    assert t[SCANNER]["counts"]["counters"] == {"scan": 8, "firewall": 150}
    assert len(t[SCANNER]["counts"]["ports"]) == 60
    legit = t[LEGIT]["counts"]
    assert legit["counters"] == {"failed": 1, "success": 1} and legit["logins"] == {"alice": 1}
    assert t[LEGIT]["verdict"] == "low" and t[ADMIN]["verdict"] == "allowlisted"
    net = t[ROTATING]
    assert net["counts"]["counters"]["failed"] == 60 and net["counts"]["members"] == 30
    assert set(net["users"]) == set(GUESSES)
    assert all(t[a]["net"] == ROTATING for a in t if a.startswith("2001:db8:bad:1::")
               and a != ROTATING)


def test_incremental_equals_full_recompute(world: dict, tmp_path: Path) -> None:
    """The table the hook kept batch by batch (97 lines a batch) is what one pass gives."""
    store = world["store"]
    before = table(store)
    fixed = datetime.now(UTC)
    rep = Reputation.from_config(load_config(world["cfg"]), clock=lambda: fixed)
    res = recompute(store, rep)
    after = table(store)
    assert res.addresses == len(before) == len(after)
    for rows in (before, after):
        for d in rows.values():
            d.pop("score")  # decayed to the moment of writing; base_score is the stored score
            d.pop("verdict")
    assert after == before
    assert res.changed >= 0
    # a second database, ingested in one batch, gives the same table again
    other = SQLiteStore(tmp_path / "one.db")
    other.init()
    ingest(other, list(world["logs"]), [rep], batch_lines=1_000_000)
    again = table(other)
    for d in again.values():
        d.pop("score")
        d.pop("verdict")
    assert again == before
    # recompute reports no difference against a table it just built
    assert recompute(store, rep).changed == 0


def test_recompute_detects_and_repairs_a_damaged_row(world: dict, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db")
    store.init()
    fixed = datetime.now(UTC)
    rep = Reputation.from_config(load_config(world["cfg"]), clock=lambda: fixed)
    ingest(store, list(world["logs"]), [rep])
    good = table(store)[SPRAYER]
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE ip_reputation SET base_score = 1, evidence = '[]' WHERE address = ?",
                 (SPRAYER,))
    conn.commit()
    conn.close()
    res = recompute_addresses(store, rep, [SPRAYER])
    assert res.changed == 1
    assert table(store)[SPRAYER]["base_score"] == good["base_score"]
    res = recompute_addresses(store, rep, ["2001:db8:bad:1::3"])
    assert res.changed == 0 and res.addresses == 2  # the host and its /64


def test_recompute_via_cli(world: dict, cli: Callable, tmp_path: Path) -> None:
    r = cli("ip", "--recompute", "--json", "--db", str(world["db"]), "--config",
            str(world["cfg"]))
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["addresses"] == len(table(world["store"])) and res["changed"] == 0
    r = cli("ip", BRUTE, "--recompute", "--json", "--db", str(world["db"]), "--config",
            str(world["cfg"]))
    assert r.code == 0 and "0 changed" in r.err


# ---- smaller, focused cases -------------------------------------------------------------------
def _store(tmp_path: Path, lines: list[str], cfg: str = "", clock: Any = None,
           name: str = "auth.log") -> tuple[SQLiteStore, Reputation]:
    log = tmp_path / name
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load_config(config_file(tmp_path, cfg))
    rep = Reputation.from_config(config, **({"clock": clock} if clock else {}))
    store = SQLiteStore(tmp_path / "r.db")
    store.init()
    ingest(store, [log], [rep])
    return store, rep


def test_one_attempt_logged_by_sshd_and_pam_counts_once(tmp_path: Path) -> None:
    w = LogWriter(datetime(2026, 11, 24, 10, tzinfo=UTC))
    w.valid_user_failures("203.0.113.9", "root", 4)
    store, _ = _store(tmp_path, w.auth)
    row = table(store)["203.0.113.9"]
    assert row["counts"]["events"] == 8  # every line is an event ...
    assert row["counts"]["counters"]["failed"] == 4  # ... but 4 attempts
    assert row["counts"]["actions"] == {"auth_failure": 4}
    assert row["users"] == {"root": 4}


def test_message_repeated_counts_each_repeat(tmp_path: Path) -> None:
    lines = ["2026-11-24T10:00:00+00:00 web1 sshd[9]: Failed password for root from "
             "203.0.113.9 port 4 ssh2",
             "2026-11-24T10:00:05+00:00 web1 sshd[9]: message repeated 4 times: [ Failed "
             "password for root from 203.0.113.9 port 4 ssh2]"]
    store, _ = _store(tmp_path, lines)
    assert table(store)["203.0.113.9"]["counts"]["counters"]["failed"] == 5


def test_login_after_many_failures_is_a_possible_compromise(tmp_path: Path) -> None:
    w = LogWriter(datetime(2026, 11, 24, 10, tzinfo=UTC))
    w.valid_user_failures("203.0.113.9", "root", 6)
    w.login("203.0.113.9", "root")
    w.valid_user_failures("203.0.113.8", "bob", 2)  # two typos: no alarm
    w.login("203.0.113.8", "bob")
    store, rep = _store(tmp_path, w.auth)
    t = table(store)
    assert t["203.0.113.9"]["counts"]["compromise"] == 1
    assert ["compromise", 1, 30.0] in t["203.0.113.9"]["evidence"]
    assert "compromise" not in t["203.0.113.8"]["counts"]


def test_allowlist_cidr_and_v6_never_scored(tmp_path: Path) -> None:
    w = LogWriter(datetime(2026, 11, 24, 10, tzinfo=UTC))
    for ip in ("192.0.2.3", "2001:db8:1::5", "192.0.2.99"):
        w.valid_user_failures(ip, "root", 30)
    store, _ = _store(tmp_path, w.auth, cfg="")  # ALLOW is 192.0.2.0/28
    cfg = tmp_path / "logly.toml"
    cfg.write_text('[reputation]\nallowlist = ["192.0.2.0/28", "2001:db8:1::/48"]\n')
    store2 = SQLiteStore(tmp_path / "r2.db")
    store2.init()
    ingest(store2, [tmp_path / "auth.log"], [make_hook(load_config(cfg))])
    t = table(store2)
    assert t["192.0.2.3"]["verdict"] == "allowlisted" and t["192.0.2.3"]["base_score"] == 0
    assert t["2001:db8:1::5"]["verdict"] == "allowlisted"
    assert "2001:db8:1::/64" not in t  # allowlisted hosts do not feed their /64
    assert t["192.0.2.99"]["base_score"] > 0  # outside the /28


def test_decay_halves_the_score_per_half_life(tmp_path: Path) -> None:
    w = LogWriter(datetime(2026, 11, 1, 10, tzinfo=UTC))
    w.valid_user_failures("203.0.113.9", "root", 10)
    store, rep = _store(tmp_path, w.auth, cfg='', clock=lambda: datetime(2026, 11, 1, 11,
                                                                         tzinfo=UTC))
    last = datetime.fromisoformat(table(store)["203.0.113.9"]["last_attack"])
    base = table(store)["203.0.113.9"]["base_score"]
    assert base == 10.0
    t = parse_target("203.0.113.9")
    assert ip_report(store, rep, t, last)["score"] == pytest.approx(10.0)
    assert ip_report(store, rep, t, last + timedelta(days=7))["score"] == pytest.approx(5.0)
    assert ip_report(store, rep, t, last + timedelta(days=14))["score"] == pytest.approx(2.5)
    # the scheduler job brings the stored column along, only where it moved
    assert decay(store, lambda: last + timedelta(days=7), model=rep.model) == 1
    assert table(store)["203.0.113.9"]["score"] == pytest.approx(5.0)
    assert decay(store, lambda: last + timedelta(days=7), model=rep.model) == 0
    # the same as a scheduler job, `job(store, clock)`, with the configured half-life
    cfg = tmp_path / "fast.toml"
    cfg.write_text('[reputation]\nhalf_life = "1d"\n')
    job = make_decay_job(load_config(cfg))
    assert job is not None and job(store, lambda: last + timedelta(days=2)) == 1
    assert table(store)["203.0.113.9"]["score"] == pytest.approx(2.5)
    cfg.write_text("[reputation]\nenabled = false\n")
    assert make_decay_job(load_config(cfg)) is None
    # a shorter configured half-life fades faster
    fast = Reputation(rep.model, settings(load_config(config_file(tmp_path,
                                                                  ""))), clock=rep.clock)
    fast.half_life = 86400.0
    assert ip_report(store, fast, t, last + timedelta(days=1))["score"] == pytest.approx(5.0)


def test_cidr_query_sums_hosts(tmp_path: Path, cli: Callable) -> None:
    w = LogWriter(datetime.now(UTC) - timedelta(hours=1))
    for i in range(1, 5):
        w.valid_user_failures(f"203.0.113.{i}", "root", 3)
    w.valid_user_failures("203.0.114.1", "root", 3)
    store, _ = _store(tmp_path, w.auth)
    db, cfg = str(store.path), str(tmp_path / "logly.toml")
    r = cli("ip", "203.0.113.0/24", "--json", "--db", db, "--config", cfg)
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["counters"]["failed"] == 12
    assert {m["address"] for m in rep["members"]} == {f"203.0.113.{i}" for i in range(1, 5)}
    assert ["hosts", 3, 3.0] in [[e["feature"], e["count"], e["points"]]
                                 for e in rep["evidence"]]
    r = cli("ip", "203.0.113.0/30", "--json", "--db", db, "--config", cfg)
    assert json.loads(r.out)["counters"]["failed"] == 9  # .1 .2 .3 (.0 never seen)
    assert cli("ip", "10.0.0.0/8", "--db", db, "--config", cfg).code == 1


def test_exit_codes_and_bad_input(world: dict, cli: Callable) -> None:
    db, cfg = str(world["db"]), str(world["cfg"])
    assert cli("ip", BRUTE, "--db", db, "--config", cfg).code == 0
    r = cli("ip", "198.51.100.250", "--db", db, "--config", cfg)
    assert r.code == 1 and "never seen" in r.err
    for bad in ("1.2.3", "203.0.113.7/33", "example.org", "1.2.3.4; rm -rf /", ""):
        r = cli("ip", bad, "--db", db, "--config", cfg)
        assert r.code == 2, bad
        assert "not an IP address" in r.err
    assert cli("ip", "--db", db, "--config", cfg).code == 2  # neither ADDR nor --recompute
    # the same address written differently is the same address
    r = cli("ip", "::ffff:198.51.100.66", "--json", "--db", db, "--config", cfg)
    assert r.code == 0 and json.loads(r.out)["address"] == BRUTE


def test_hostile_user_names_never_reach_the_terminal(tmp_path: Path, cli: Callable) -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J<b>x</b>"
    lines = [f"{datetime.now(UTC).isoformat()} web1 sshd[7]: Invalid user {evil} from "
             "203.0.113.77 port 4000"]
    store, _ = _store(tmp_path, lines)
    r = cli("ip", "203.0.113.77", "--db", str(store.path), "--config",
            str(tmp_path / "logly.toml"))
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "\\x1b" in r.out  # made visible instead
    r = cli("ip", "203.0.113.77", "--json", "--db", str(store.path), "--config",
            str(tmp_path / "logly.toml"))
    assert "\x1b" not in r.out and json.loads(r.out)["users"]


def test_disabled_gives_no_hook_and_ip_says_unscored(tmp_path: Path, cli: Callable) -> None:
    cfg = tmp_path / "off.toml"
    cfg.write_text("[reputation]\nenabled = false\n")
    assert make_hook(load_config(cfg)) is None
    w = LogWriter(datetime.now(UTC) - timedelta(hours=1))
    w.valid_user_failures("203.0.113.9", "root", 2)
    log = tmp_path / "a.log"
    log.write_text("\n".join(w.auth) + "\n")
    store = SQLiteStore(tmp_path / "off.db")
    store.init()
    ingest(store, [log], [])
    r = cli("ip", "203.0.113.9", "--json", "--db", str(store.path), "--config", str(cfg))
    assert r.code == 0 and json.loads(r.out)["verdict"] == "unscored"
    r = cli("ip", "203.0.113.9", "--recompute", "--json", "--db", str(store.path),
            "--config", str(tmp_path / "off.toml"))
    assert r.code == 0 and json.loads(r.out)["counters"]["failed"] == 2


# ---- the model file and the configuration -----------------------------------------------------
def test_model_file_examples() -> None:
    """rules/reputation.toml carries its own cases: facts in, score and verdict out."""
    model = Model.load()
    assert len(model.examples) >= 6
    for ex in model.examples:
        facts = {k: float(v) for k, v in ex["facts"].items()}
        allow = ex.get("allowlisted", False)
        base, evidence = model.score(facts, allow)
        assert base == pytest.approx(ex["score"]), ex["name"]
        assert model.verdict(base, base, facts, allow) == ex["verdict"], ex["name"]
        assert sum(e[2] for e in evidence) == pytest.approx(base), ex["name"]


def test_local_model_override_is_merged(tmp_path: Path) -> None:
    (tmp_path / "reputation.toml").write_text("[feature.failed]\npoints = 2.0\n")
    model = Model.load([tmp_path])
    f = next(f for f in model.features if f.name == "failed")
    assert f.points == 2.0 and f.cap == 30  # the rest of the feature is the shipped one


def test_model_cache_serves_unchanged_files_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsed model files are cached under their stat; a change, or a file too fresh to
    trust its times, is read again; a damaged cache is ignored."""
    import os
    import time

    from logly.tracer import reputation_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "logly" / "reputation-model.json"
    local = tmp_path / "rules" / "reputation.toml"
    local.parent.mkdir()

    def write(text: str, age: float) -> None:
        local.write_text(text)
        t = time.time() - age
        os.utime(local, (t, t))

    write("[feature.failed]\npoints = 2.0\n", age=0)  # ctime is now: not cached
    assert Model.load([local.parent]).features[0].points == 2.0
    assert not cache.exists()
    time.sleep(2.1)
    assert Model.load([local.parent]).features[0].points == 2.0
    assert cache.is_file()
    real = reputation_model.read_toml
    monkeypatch.setattr(reputation_model, "read_toml", lambda p: pytest.fail(f"read {p}"))
    assert Model.load([local.parent]).features[0].points == 2.0  # from the cache
    monkeypatch.setattr(reputation_model, "read_toml", real)
    assert Model.load().features[0].points != 2.0  # other files, another key
    write("[feature.failed]\npoints = 3.0\n", age=100)  # same size, old mtime: ctime moved
    assert Model.load([local.parent]).features[0].points == 3.0
    cache.write_text("{not json")
    assert Model.load([local.parent]).features[0].points == 3.0
    # the cache holds data, not a verdict: a bad file is refused on every load
    write("[verdicts]\nsuspicious = 90\n", age=100)
    time.sleep(2.1)
    for _ in range(2):
        with pytest.raises(ConfigError, match="suspicious <= malicious"):
            Model.load([local.parent])


@pytest.mark.parametrize("text, message", [
    ("[feature.failed]\ncount = \"nope\"\n", "count 'nope' is neither"),
    ("[feature.failed]\npoints = \"lots\"\n", "points: must be a number"),
    ("[feature.failed]\ntext = \"{what}\"\n", "does not format"),
    ("[counters]\nno_such_action = \"x\"\n", "is not an action"),
    ("[verdicts]\nsuspicious = 90\n", "suspicious <= malicious"),
    ("[score]\nhalf_life = \"soon\"\n", "is not a duration"),
    ("[weights]\n", "unknown table [weights]"),
    ("[feature.failed\n", "reputation.toml"),
])
def test_bad_model_file_says_where_and_why(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "reputation.toml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        Model.load([tmp_path])
    assert message in str(exc.value)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ('half_life = "fortnight"', "[reputation] half_life"),
    ('half_life = -1', "must be positive"),
    ('allowlist = ["10.0.0.0/8", "not-an-ip"]', "'not-an-ip' is not an address"),
    ('allowlist = "10.0.0.0/8"', "allowlist must be a list"),
    ('blocklists = [1]', "blocklists must be a list of strings"),
    ('enabled = "yes"', "enabled must be true or false"),
    ('geoip_city = 5', "geoip_city must be a file path"),
    ('colour = "red"', "unknown key 'colour'"),
])
def test_bad_config_is_a_clear_config_error(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f"[reputation]\n{text}\n")
    with pytest.raises(ConfigError) as exc:
        settings(load_config(cfg))
    assert message in str(exc.value)


def test_top_since_filters_old_addresses(world: dict) -> None:
    store = world["store"]
    rep = Reputation.from_config(load_config(world["cfg"]))
    now = datetime.now(UTC)
    future = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert top(store, rep, 10, future, now) == []
    assert len(top(store, rep, 3, None, now)) == 3


def test_top_reads_few_rows_and_ranks_like_a_full_read(world: dict) -> None:
    """`logly ips` stops reading once the stored score bounds out the rest; same answer."""
    from logly.tracer.reputation_query import _listing, _ranked, reading

    store = world["store"]
    rep = Reputation.from_config(load_config(world["cfg"]))
    now = datetime.now(UTC) + timedelta(days=3)  # scores have faded since they were stored
    with reading(store) as conn:
        full, complete = _ranked(conn, rep, None, now, 0)
        assert complete
        part, complete = _ranked(conn, rep, None, now, 3)
        assert not complete and len(part) == 3
        for n in (1, 2, 3, 5, 40):
            assert top(store, rep, n, None, now) == _listing(conn, rep, full, n)


def test_ip_lists_the_traces_of_the_address(world: dict, cli: Callable) -> None:
    conn = sqlite3.connect(world["db"])
    conn.execute("INSERT INTO event_traces (title, severity, first_seen, last_seen, ip_address, "
                 "user, event_count, created, updated) VALUES ('ssh brute force on root', "
                 "'high', '2026-11-27T10:00:00.000000Z', '2026-11-27T10:05:00.000000Z', ?, "
                 "'root', 42, 'x', 'x')", (BRUTE,))
    conn.commit()
    conn.close()
    r = cli("ip", BRUTE, "--json", "--db", str(world["db"]), "--config", str(world["cfg"]))
    traces = json.loads(r.out)["traces"]
    assert [(t["title"], t["event_count"]) for t in traces] == [("ssh brute force on root", 42)]
    r = cli("ip", BRUTE, "--db", str(world["db"]), "--config", str(world["cfg"]))
    assert "ssh brute force on root" in r.out
    r = cli("ip", SPRAYER, "--json", "--db", str(world["db"]), "--config", str(world["cfg"]))
    assert json.loads(r.out)["traces"] == []


# ---- the fast way in: `logly ip` without typer --------------------------------------------
FAST = [("ip", BRUTE), ("ip", ROTATING), ("ip", "198.51.100.0/24"), ("ip", "198.51.100.250"),
        ("ip", "300.1.2.3"), ("ip", "1.2.3.4/99"), ("ip", "::ffff:198.51.100.66"),
        ("ip", BRUTE, "--events", "2"), ("ips", "--top", "5"), ("ips", "--since", "7d")]


@pytest.mark.parametrize("args", FAST)
@pytest.mark.parametrize("as_json", [False, True])
def test_fast_path_answers_as_the_typer_command(world: dict, cli: Callable,
                                                monkeypatch: pytest.MonkeyPatch,
                                                args: tuple[str, ...], as_json: bool) -> None:
    """Same output and exit code whichever way `logly ip` came in (0, 1 never seen, 2 bad)."""
    from logly import cli_ip

    now = datetime.now(UTC)
    monkeypatch.setattr(cli_ip, "_now", lambda: now)
    argv = [*args, *(["--json"] if as_json else []), "--db", str(world["db"]), "--config",
            str(world["cfg"])]
    assert cli_ip.parse_argv(argv) is not None
    fast = cli(*argv)
    monkeypatch.setattr(cli_ip, "parse_argv", lambda argv: None)  # everything to typer
    slow = cli(*argv)
    assert (fast.code, fast.out) == (slow.code, slow.out)
    assert " ".join(fast.err.split()) == " ".join(slow.err.split())  # rich wraps stderr
    assert fast.code == {"198.51.100.250": 1, "300.1.2.3": 2, "1.2.3.4/99": 2}.get(args[1], 0)
    if as_json and fast.code == 0:
        assert json.loads(fast.out)


HEAVY = ("typer", "click", "rich", "sqlalchemy", "sqlmodel", "pyparsing", "geoip2", "jinja2")


def test_logly_ip_in_a_new_process_loads_no_typer_rich_or_sqlalchemy(world: dict,
                                                                     cli: Callable) -> None:
    """The console script's `main` (logly.cli_entry) in a child: what it imported is checked
    after it answered, and the answer is the in-process one."""
    import os
    import subprocess
    import sys

    child = ("import sys\nfrom logly.cli_entry import main\ncode = main(sys.argv[1:])\n"
             f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
             "sys.stderr.write('loaded: ' + ' '.join(heavy))\nsys.exit(code)")
    base = ["--db", str(world["db"]), "--config", str(world["cfg"])]
    for argv in (["ip", BRUTE], ["ip", BRUTE, "--json"], ["ip", ROTATING, "--json"],
                 ["ip", "198.51.100.0/24"], ["ip", "198.51.100.250"], ["ip", "300.1.2.3"],
                 ["ips", "--top", "20"], ["ips", "--top", "20", "--json"]):
        p = subprocess.run([sys.executable, "-c", child, *argv, *base], capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)
        assert p.stderr.endswith("loaded: "), (argv, p.stderr)
        here = cli(*argv, *base)
        assert p.returncode == here.code, (argv, p.stderr)
        if "--json" not in argv:  # (JSON carries scores decayed to the second)
            assert p.stdout == here.out, argv
    # what the fast path leaves to typer still works from the same entry
    p = subprocess.run([sys.executable, "-c", child, "ip", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "--recompute" in p.stdout and "typer" in p.stderr


# what `logly ip` must not load to answer in 50 ms: ~7 ms of dataclasses (inspect, ast...),
# typing, pathlib, and tomllib when the model cache holds the parsed reputation.toml
LEAN = ("dataclasses", "inspect", "typing", "pathlib", "tomllib")


def test_logly_ip_in_a_new_process_loads_no_dataclasses_typing_or_tomllib(
        world: dict, cli: Callable, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    if os.path.exists("/etc/logly/logly.toml"):
        pytest.skip("this machine has a config file: the default path reads it")
    child = ("import sys\nfrom logly.cli_entry import main\ncode = main(sys.argv[1:])\n"
             f"lean = sorted({{m.split('.')[0] for m in sys.modules}} & set({LEAN!r}))\n"
             "sys.stderr.write('loaded: ' + ' '.join(lean))\nsys.exit(code)")
    env = {k: v for k, v in os.environ.items() if k not in ("LOGLY_CONFIG", "LOGLY_DB")}
    env.update(COLUMNS="200", XDG_CACHE_HOME=str(tmp_path / "cache"))

    def child_run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", child, *argv, "--db", str(world["db"])],
                              capture_output=True, text=True, env=env, timeout=60)

    first = child_run("ip", BRUTE)  # parses reputation.toml and fills the cache
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "cache" / "logly" / "reputation-model.json").is_file()
    for argv in (["ip", BRUTE], ["ip", ROTATING, "--json"], ["ip", "198.51.100.0/24"],
                 ["ip", "198.51.100.250"], ["ip", "300.1.2.3"], ["ips", "--top", "5"]):
        p = child_run(*argv)
        assert p.stderr.endswith("loaded: "), (argv, p.stderr)
        assert p.returncode == {"198.51.100.250": 1, "300.1.2.3": 2}.get(argv[1], 0), argv
    assert child_run("ip", BRUTE).stdout == first.stdout
    # a config file is read with tomllib, still without dataclasses or pathlib
    p = child_run("ip", BRUTE, "--config", str(world["cfg"]))
    assert p.returncode == 0
    assert "dataclasses" not in p.stderr and "pathlib" not in p.stderr, p.stderr
