"""The /proc fallback tracer, open_tracer's choice and its one warning, and [tracer] settings."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest

from logly.errors import ConfigError
from logly.parsers.rules import RuleSet
from logly.sources.follow import Follower
from logly.store.sqlite import SQLiteStore
from logly.tracer.ebpf import ConnCache, ProcessCache, TracerSettings, open_tracer, parse_settings
from logly.tracer.link import make_hook
from logly.tracer.procfs import ProcfsTracer, norm_addr

HOST = socket.gethostname()


def test_live_process_and_ancestors() -> None:
    t = ProcfsTracer()
    me = t.process(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.exe == os.path.realpath(
        sys.executable)
    assert me.argv == Path("/proc/self/cmdline").read_text().split("\0")[:-1]
    assert [p.pid for p in t.ancestors(me)][:1] == [os.getppid()]
    assert t.process(2**22 + 7) is None
    assert t.process_at(os.getpid(), time.time() - 3600) is None  # before it started


def test_live_socket_by_either_endpoint() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    acc, (caddr, cport) = srv.accept()
    try:
        found = ProcfsTracer(ttl=0).connections(caddr, cport)
        # both ends of the loopback connection name the client's endpoint (other sockets of
        # other processes may use the same port number towards other peers: not ours)
        mine = [c for c in found if c.pid == os.getpid()]
        assert {(c.local_port, c.remote_port) for c in mine} == {
            (cport, srv.getsockname()[1]), (srv.getsockname()[1], cport)}
        assert all(c.states[0][1] == "ESTABLISHED" for c in mine)
        assert all(cport in (c.local_port, c.remote_port) for c in found)
    finally:
        cli.close()
        acc.close()
        srv.close()


def test_hook_links_a_live_process_only(tmp_path: Path, db_path: Path, store: SQLiteStore,
                                        rules: RuleSet) -> None:
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    try:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        log = tmp_path / "auth.log"
        log.write_text(
            f"{ts} {HOST} sleep[{sleeper.pid}]: session opened for user root\n"
            f"{ts} {HOST} true[{dead.pid}]: session opened for user root\n"
            f"{ts} otherhost sleep[{sleeper.pid}]: session opened for user root\n")
        f = Follower(store, rules, str(log), from_start=True, tz=UTC,
                     hooks=[make_hook(ProcfsTracer())])
        f.poll(1000)
        f.flush()
        f.close()
    finally:
        sleeper.kill()
        sleeper.wait()
    con = sqlite3.connect(db_path)
    ev = con.execute("SELECT id, pid, trace_id FROM log_events ORDER BY id").fetchall()
    assert ev[0][2] is not None  # live: linked
    assert ev[1][2] is None  # exited before the line was stored: /proc cannot know it
    assert ev[2][2] is None  # another host's pid is not ours
    exe, argv = con.execute("SELECT exe, cmdline FROM process_traces WHERE trace_id = ? "
                            "AND pid = ?", (ev[0][2], sleeper.pid)).fetchone()
    assert exe == os.path.realpath("/bin/sleep") and argv == "/bin/sleep 30"
    causality = json.loads(con.execute("SELECT causality FROM event_traces WHERE id = ?",
                                       (ev[0][2],)).fetchone()[0])
    assert causality["steps"][-2]["pid"] == sleeper.pid
    con.close()


def test_open_tracer_falls_back_with_one_warning_without_root(tmp_path: Path) -> None:
    # a real unprivileged process: it cannot load BPF, and must say so once and carry on
    # (imports first: this Python may live under /root, which nobody cannot read)
    code = ("import logging, os\n"
            "from logly.tracer.ebpf import open_tracer\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
            "t = open_tracer()\n"
            "print('MODE', t.mode, t.stats()['reason'])\n")
    if os.geteuid() != 0:
        code = code.replace("os.setgid(65534); os.setuid(65534)\n", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(
                             Path(__file__).resolve().parents[1])}, check=True)
    assert "MODE procfs not running as root" in out.stdout
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "eBPF unavailable (not running as root)" in warnings[0]


def test_open_tracer_procfs_mode_is_honoured() -> None:
    t = open_tracer(TracerSettings(mode="procfs"))
    assert isinstance(t, ProcfsTracer) and t.mode == "procfs"


def test_settings_validation() -> None:
    s = parse_settings({"keep_seconds": 60, "mode": "auto", "enabled": False})
    assert s.keep_seconds == 60.0 and s.enabled is False
    for bad, word in [({"keep": 1}, "unknown key"), ({"mode": "kprobe"}, "mode"),
                      ({"keep_seconds": -1}, "positive"), ({"enabled": "yes"}, "true or false"),
                      ({"max_processes": True}, "positive")]:
        with pytest.raises(ConfigError, match=word):
            parse_settings(bad)


def test_process_cache_keeps_exited_for_keep_seconds_and_one_generation_back() -> None:
    from logly.tracer.procfs import ProcInfo

    c = ProcessCache(keep_seconds=10, max_entries=3)
    c.put(ProcInfo(pid=5, start=100.0, exe="/old"))
    c.mark_exit(5, 101.0, 0)
    c.put(ProcInfo(pid=5, start=102.0, exe="/new"))  # pid reused
    assert c.at(5, 100.5, slack=0.1).exe == "/old"
    assert c.at(5, 103.0, slack=0.1).exe == "/new"
    c.prune(now=112.0)  # the old one exited 11 s ago
    assert c.at(5, 100.5, slack=0.1) is None
    for pid in (6, 7, 8):
        c.put(ProcInfo(pid=pid, start=120.0))
    assert len(c.procs) == 3 and c.evicted == 1  # bounded: the oldest live entry went


def test_conn_cache_indexes_both_endpoints_and_forgets_after_keep() -> None:
    from logly.tracer.procfs import Conn

    c = ConnCache(keep_seconds=5, max_entries=2)
    a = Conn(key=1, pid=42, local_address="10.0.0.1", local_port=40000,
             remote_address="192.0.2.9", remote_port=22, first=10.0, last=11.0, closed=11.0)
    b = Conn(key=2, pid=43, local_address="10.0.0.1", local_port=40001,
             remote_address="192.0.2.9", remote_port=22, first=12.0, last=13.0, closed=13.0)
    c.add(a)
    c.add(b)
    assert c.lookup("10.0.0.1", 40000) == [a] and c.lookup("192.0.2.9", 22) == [a, b]
    c.prune(now=17.0)  # a closed 6 s ago, b 4 s ago
    assert c.lookup("10.0.0.1", 40000) == [] and c.lookup("192.0.2.9", 22) == [b]
    c.add(Conn(key=3, local_address="10.0.0.1", local_port=1, closed=14.0))
    c.add(Conn(key=4, local_address="10.0.0.1", local_port=2, closed=14.0))
    assert c.lookup("192.0.2.9", 22) == [] and c.evicted == 1  # bounded: b went first


def test_norm_addr() -> None:
    assert norm_addr("::ffff:192.0.2.1") == "192.0.2.1"
    assert norm_addr("2001:db8:0:0::1") == "2001:db8::1"
    assert norm_addr("not an ip") == "not an ip"


def test_process_cache_is_bounded_by_the_bytes_its_command_lines_hold() -> None:
    """Long command lines (anyone can start processes with 20 arguments of 255 bytes) evict
    exited entries before the tracer outgrows its memory budget; live ones stay."""
    from logly.tracer.ebpf import ENTRY_BYTES, _argv_bytes
    from logly.tracer.procfs import ProcInfo

    long_argv = ["a" * 255] * 20
    per = ENTRY_BYTES + _argv_bytes(long_argv)
    c = ProcessCache(keep_seconds=300, max_entries=100_000, max_bytes=50 * per)
    c.put(ProcInfo(pid=1, start=0.0, argv=["/sbin/init"]))  # live: stays
    for pid in range(2, 1002):
        c.put(ProcInfo(pid=pid, start=float(pid)))
        c.set_argv(c.get(pid), long_argv)  # as exec gives it
        c.mark_exit(pid, float(pid) + 0.5, 0)
        assert c.bytes <= 50 * per
    assert c.get(1) is not None and c.evicted == 0
    assert c.get(1001) is not None and c.get(2) is None  # the oldest exited went first
    assert 40 <= len(c.procs) <= 51
    # the count stays exact as entries come and go
    c.prune(now=10_000.0)
    assert list(c.procs) == [1] and c.bytes == ENTRY_BYTES + _argv_bytes(["/sbin/init"])
