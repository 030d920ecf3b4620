"""Ingestion end to end on real files: plain, gzip, stdin; exactly once; hostile input."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logly.ingest import ingest_input
from logly.parsers.rules import RuleSet
from logly.sources.files import open_input
from logly.store.sqlite import SQLiteStore

LINES = [
    "Nov 24 10:00:01 web1 sshd[100]: Invalid user admin from 203.0.113.7 port 50000",
    "Nov 24 10:00:02 web1 sshd[100]: Failed password for invalid user admin from 203.0.113.7 "
    "port 50000 ssh2",
    "Nov 24 10:00:03 web1 sshd[101]: Accepted publickey for alice from 198.51.100.4 port 41000 "
    "ssh2: ED25519 SHA256:abc",
    "this line has no header at all",
    "Nov 24 10:00:04 web1 sshd[102]: Connection closed by authenticating user root "
    "192.0.2.9 port 40000 [preauth]",
]


def write(path: Path, lines: list[str], mode: str = "w") -> Path:
    with open(path, mode, encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.utime(path, (1764000000, 1764000000))  # 2025-11-24: year inference is stable
    return path


def ingest(store: SQLiteStore, rules: RuleSet, path: str | Path, **kw):  # type: ignore[no-untyped-def]
    inp = open_input(str(path))
    try:
        return ingest_input(store, rules, inp, **kw)
    finally:
        inp.close()


def events(store: SQLiteStore) -> list[dict]:
    return sorted(store.get_log_events(limit=None), key=lambda e: (e["path"], e["offset"]))


@pytest.mark.parametrize("parallel", [False, True])
def test_plain_file_events_offsets_and_rerun(tmp_path: Path, store: SQLiteStore,
                                             rules: RuleSet, parallel: bool) -> None:
    log = write(tmp_path / "auth.log", LINES)
    s = ingest(store, rules, log, parallel=parallel)
    assert (s.lines, s.events, s.unparsed, s.matched) == (5, 4, 1, 4)
    evs = events(store)
    raw = log.read_bytes()
    for e in evs:  # every event points at the byte where its line starts
        assert raw[e["offset"]:].split(b"\n", 1)[0].decode().endswith(e["message"])
    assert [e["action"] for e in evs] == ["invalid_user", "invalid_user", "auth_success",
                                          "preauth_disconnect"]
    assert evs[0]["timestamp"].startswith("2025-11-24T")
    again = ingest(store, rules, log, parallel=parallel)
    assert (again.lines, again.events) == (0, 0)
    assert len(events(store)) == 4


def test_appended_lines_continue_from_checkpoint(tmp_path: Path, store: SQLiteStore,
                                                 rules: RuleSet) -> None:
    log = write(tmp_path / "auth.log", LINES[:2])
    ingest(store, rules, log)
    write(log, LINES[2:], mode="a")
    s = ingest(store, rules, log)
    assert s.lines == 3 and s.skipped_bytes > 0
    assert len(events(store)) == 4


def test_rotated_and_compressed_copies_are_not_stored_twice(tmp_path: Path, store: SQLiteStore,
                                                            rules: RuleSet) -> None:
    log = write(tmp_path / "auth.log", LINES)
    ingest(store, rules, log)
    rotated = tmp_path / "auth.log.1"
    log.rename(rotated)
    gz = tmp_path / "auth.log.2.gz"
    with gzip.open(gz, "wb") as f:
        f.write(rotated.read_bytes())
    assert ingest(store, rules, rotated).events == 0
    assert ingest(store, rules, gz).events == 0
    assert len(events(store)) == 4


def test_gzip_and_stdin_inputs(tmp_path: Path, db_path: Path) -> None:
    gz = tmp_path / "auth.log.2.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(LINES) + "\n")
    logly = [sys.executable, "-m", "logly.cli"]
    env = {**os.environ, "LOGLY_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    r = subprocess.run([*logly, "ingest", str(gz), "--db", str(db_path), "--json"],
                       capture_output=True, text=True, env=env, check=True)
    assert '"events": 4' in r.stdout
    other = "\n".join(line.replace("203.0.113.7", "203.0.113.8") for line in LINES) + "\n"
    r = subprocess.run([*logly, "ingest", "-", "--db", str(db_path), "--json"], input=other,
                       capture_output=True, text=True, env=env, check=True)
    assert '"events": 4' in r.stdout and '"path": "-"' in r.stdout
    r = subprocess.run([*logly, "ingest", "-", "--db", str(db_path), "--json"], input=other,
                       capture_output=True, text=True, env=env, check=True)
    assert '"events": 0' in r.stdout  # the same stream again: nothing twice
    s = SQLiteStore(db_path)
    assert {e["ip_address"] for e in s.get_log_events(action="invalid_user")} == {
        "203.0.113.7", "203.0.113.8"}


def test_hostile_lines_never_cost_a_neighbour(tmp_path: Path, store: SQLiteStore,
                                              rules: RuleSet) -> None:
    good = "Nov 24 10:00:09 web1 sshd[200]: Invalid user bob from 198.51.100.9 port 1"
    hostile = [
        b"Nov 24 10:00:05 web1 sshd[201]: Invalid user x from 6.6.6.6 port 1 from 203.0.113.50"
        b" port 2",
        b"Nov 24 10:00:05 web1 sshd[202]: Invalid user \x1b[31mred\x1b[0m<b>x</b> from "
        b"203.0.113.51 port 3",
        b"Nov 24 10:00:05 web1 sshd[203]: Invalid user \xff\xfe\xc3 from 203.0.113.52 port 4",
        b"Nov 24 10:00:05 web1 sshd[204]: Invalid user nul\x00byte from 203.0.113.53 port 5",
        b"Nov 24 10:00:05 web1 sshd[205]: Invalid user " + b"A" * 200_000
        + b" from 203.0.113.54 port 6",
        b"\x00\x01\x02 garbage \xff",
        b"",
    ]
    data = b"".join(h + b"\n" + good.encode() + b"\n" for h in hostile)
    log = tmp_path / "hostile.log"
    log.write_bytes(data)
    s = ingest(store, rules, log)
    assert s.lines == 2 * len(hostile)
    evs = events(store)
    assert sum(1 for e in evs if e["user"] == "bob") == len(hostile)  # every neighbour parsed
    by_user_ip = {e["ip_address"] for e in evs if e["user"] != "bob"}
    assert "6.6.6.6" not in by_user_ip  # the address sshd wrote last wins
    assert {"203.0.113.50", "203.0.113.51", "203.0.113.52", "203.0.113.53"} <= by_user_ip
    assert s.invalid_utf8 >= 2 and s.unparsed >= 1


def test_kill_9_mid_ingest_then_resume_stores_each_line_once(tmp_path: Path,
                                                              db_path: Path) -> None:
    log = tmp_path / "big.log"
    n = 300_000
    with open(log, "w") as f:
        for i in range(n):
            f.write(f"Nov 24 10:{i // 6000 % 60:02d}:{i // 100 % 60:02d} web1 sshd[{i}]: "
                    f"Invalid user u{i} from 203.0.113.{i % 250} port {i % 60000}\n")
    (tmp_path / "c.toml").write_text("[ingest]\nbatch_lines = 5000\n")
    env = {**os.environ, "LOGLY_CONFIG": str(tmp_path / "c.toml")}
    cmd = [sys.executable, "-m", "logly.cli", "ingest", str(log), "--db", str(db_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    store = SQLiteStore(db_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once some, not all, batches are committed
        time.sleep(0.05)
        try:
            srcs = store.sources()
        except Exception:
            continue
        if srcs and 0 < srcs[0]["lines"] < n:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = store.sources()[0]["lines"]
    assert 0 < partial < n, "the ingest finished before it could be killed"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    conn = __import__("sqlite3").connect(db_path)
    total, distinct = conn.execute(
        'SELECT count(*), count(DISTINCT "offset") FROM log_events').fetchone()
    assert total == distinct == n


def _stored(store: SQLiteStore) -> list[tuple]:
    keep = ("timestamp", "host", "program", "pid", "level", "service", "action", "message",
            "ip_address", "user", "port", "metadata", "offset")
    return [tuple(str(e[k]).replace("/a/", "/b/") for k in keep) for e in events(store)]


def test_blocks_parsed_in_parallel_store_what_one_parser_stores(
        tmp_path: Path, rules: RuleSet) -> None:
    """A large file is cut into blocks parsed by several processes. Cut into 64 KB blocks,
    with sshd connections and PAM/sshd pairs crossing the cuts and a checkpoint in the middle,
    it stores the same events, counts and links as one parser reading it through."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from ingest import generate  # the benchmark's realistic auth.log

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = tmp_path / "a" / "auth.log"  # the same name: metadata holds the path
    generate(full, 12_000, seed=3)
    raw = full.read_bytes()
    os.utime(full, (1764000000, 1764000000))
    one = SQLiteStore(str(tmp_path / "one.db"))
    one.init()
    s1 = ingest(one, rules, full, parallel=False)

    log = tmp_path / "b" / "auth.log"
    half = raw.index(b"\n", len(raw) // 3) + 1
    log.write_bytes(raw[:half])
    os.utime(log, (1764000000, 1764000000))
    many = SQLiteStore(str(tmp_path / "many.db"))
    many.init()
    ingest(many, rules, log, parallel=False)
    with open(log, "ab") as f:
        f.write(raw[half:])
    os.utime(log, (1764000000, 1764000000))
    inp = open_input(str(log))
    from logly.ingest import block_bounds
    assert len(block_bounds(inp, half, 64 << 10)) > 5
    inp.close()
    s2 = ingest(many, rules, log, parallel=True, block_bytes=64 << 10, jobs=3)
    assert s2.skipped_bytes == half and s2.lines == s1.lines - raw[:half].count(b"\n")
    assert len(_stored(many)) == s1.events == 12_000
    assert _stored(many) == _stored(one)
    dup = [e for e in events(many) if e["metadata"] and "duplicate_of" in e["metadata"]]
    assert dup, "the log has PAM/sshd pairs: some must be linked"
