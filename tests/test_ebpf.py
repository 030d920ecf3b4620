"""The eBPF tracer for real: kernel probes, a followed log file, the link hook, a real SQLite DB.

Needs root, BCC (python3-bpfcc), kernel headers and tracefs (scripts/ebpf-setup.sh). Elsewhere
these tests skip and say why; with CI set they fail instead, so CI cannot silently skip them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from logly.parsers.rules import RuleSet
from logly.sources.follow import Follower
from logly.store.sqlite import SQLiteStore
from logly.tracer.ebpf import EbpfTracer, TracerSettings, ebpf_unavailable
from logly.tracer.link import make_hook

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def tracer() -> Iterator[EbpfTracer]:
    reason = ebpf_unavailable()
    t = EbpfTracer(TracerSettings(keep_seconds=120, slow_syscalls=True, slow_syscall_ms=50))
    if reason is None:
        try:
            t.start()
        except Exception as exc:
            reason = f"BCC could not load the probes: {exc}"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the eBPF tests, but: {reason}")
        pytest.skip(f"eBPF unavailable here: {reason}")
    yield t
    t.stop()


def _follow(store: SQLiteStore, rules: RuleSet, log: Path, tracer: EbpfTracer) -> None:
    f = Follower(store, rules, str(log), from_start=True, tz=UTC, hooks=[make_hook(tracer)])
    f.poll(10_000)
    f.flush()
    f.close()


def _wait_for(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _rows(db: Path, sql: str, args: tuple = ()) -> list[dict]:
    import sqlite3

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def test_exited_process_is_linked_with_exe_argv_and_parent(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    log = tmp_path / "auth.log"
    log.touch()
    # one sh process: its own pid in an sshd-style line, then exit at once (code 7)
    script = ('printf "%s %s sshd[%s]: Failed password for root from 203.0.113.9 port 4242 ssh2\\n"'
              f' "$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)" {HOST} $$ >> {log}; exit 7')
    child = subprocess.Popen(["/bin/sh", "-c", script])
    assert child.wait() == 7
    assert not Path(f"/proc/{child.pid}").exists()  # gone before anything reads the log
    assert _wait_for(lambda: (p := tracer.process(child.pid)) is not None and p.exit is not None)

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events")
    assert len(ev) == 1 and ev[0]["pid"] == child.pid and ev[0]["trace_id"] is not None
    procs = _rows(db_path, "SELECT * FROM process_traces WHERE trace_id = ? ORDER BY id",
                  (ev[0]["trace_id"],))
    me = procs[0]
    assert me["pid"] == child.pid and me["event_id"] == ev[0]["id"]
    assert me["exe"] == "/bin/sh"
    assert me["cmdline"] == f"/bin/sh -c {script}"
    assert me["ppid"] == os.getpid() and me["exit_code"] == 7 and me["exit"] is not None
    # ancestry: this test process is the parent, and its own parent follows
    assert [p["pid"] for p in procs[1:3]] == [os.getpid(), os.getppid()]
    assert procs[1]["cmdline"] and sys.executable.split("/")[-1] in procs[1]["cmdline"]
    trace = _rows(db_path, "SELECT * FROM event_traces WHERE id = ?", (ev[0]["trace_id"],))[0]
    assert trace["pattern"] == "context" and trace["severity"] == "info"
    steps = json.loads(trace["causality"])["steps"]
    assert [s["kind"] for s in steps[-2:]] == ["process", "event"]
    assert steps[-2]["pid"] == child.pid and steps[-1]["event_id"] == ev[0]["id"]
    assert sum(tracer.lost().values()) == 0


def test_forked_child_without_exec_inherits_exe_and_argv(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    # old sshd's model: the per-connection process is a fork that never execs
    log = tmp_path / "auth.log"
    code = ("import os, sys, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    ts = time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime())\n"
            f"    os.write(1, f'{{ts}} {HOST} sshd[{{os.getpid()}}]: Connection closed by "
            "198.51.100.4 port 2222 [preauth]\\n'.encode())\n"
            "    os._exit(255)\n"
            "os.waitpid(pid, 0)\n"
            "print(pid, file=sys.stderr)\n")
    assert len(code) > 255  # longer than an argv slot: stored cut, marked with "…"
    with log.open("w") as out:
        parent = subprocess.Popen([sys.executable, "-c", code, "--listen"], stdout=out,
                                  stderr=subprocess.PIPE, text=True)
        child_pid = int(parent.communicate()[1])
    assert parent.returncode == 0
    assert _wait_for(lambda: (p := tracer.process(child_pid)) is not None and p.exit is not None)

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events")
    procs = _rows(db_path, "SELECT * FROM process_traces WHERE trace_id = ? ORDER BY id",
                  (ev[0]["trace_id"],))
    assert [p["pid"] for p in procs[:2]] == [child_pid, parent.pid]
    child, par = procs[0], procs[1]
    assert child["ppid"] == parent.pid and child["exit_code"] == 255
    assert child["exe"] == par["exe"] == sys.executable
    assert child["cmdline"] == par["cmdline"] == f"{sys.executable} -c {code[:255]}… --listen"


def _loopback_client(then: str) -> tuple[socket.socket, int, subprocess.Popen, socket.socket,
                                         str, int]:
    """A listener here and a client process connected to it, which then runs `then` (Python,
    its socket is `s`): (listener, its port, client process, accepted socket, client address,
    client port)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, "-c",
         "import socket\n"
         f"s = socket.create_connection(('127.0.0.1', {port}))\n"
         "print(s.getsockname()[1], flush=True)\n" + then],
        stdout=subprocess.PIPE, text=True)
    conn, (caddr, cport) = srv.accept()
    assert int(client.stdout.readline()) == cport
    return srv, port, client, conn, caddr, cport


def test_connection_by_client_address_gets_pid_and_states(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    srv, port, client, conn, caddr, cport = _loopback_client("s.recv(1)\n")
    conn.close()  # the server closes first (FIN_WAIT1 by us), the client exits
    assert client.wait() == 0
    srv.close()
    assert _wait_for(lambda: any(c.closed for c in tracer.connections(caddr, cport)))
    log = tmp_path / "auth.log"
    log.write_text(f"2026-01-01T00:00:00+00:00 {HOST} x[1]: old line, never linked\n")
    with log.open("a") as f:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        f.write(f"{ts} {HOST} sshd: Accepted publickey for alice from {caddr} port {cport} "
                "ssh2\n")

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events ORDER BY id")
    assert ev[0]["trace_id"] is None
    assert ev[1]["port"] == cport and ev[1]["trace_id"] is not None
    nets = _rows(db_path, "SELECT * FROM network_traces WHERE trace_id = ?", (ev[1]["trace_id"],))
    # (a busy machine may have other sockets on the same port number towards other peers)
    clients = [n for n in nets if (n["local_port"], n["remote_port"]) == (cport, port)]
    servers = [n for n in nets if (n["local_port"], n["remote_port"]) == (port, cport)]
    assert len(clients) == 1 and len(servers) == 1
    c, s = clients[0], servers[0]
    assert c["pid"] == client.pid and c["remote_port"] == port
    assert [st for _, st in json.loads(c["states"])][1:] == [
        "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    assert s["pid"] == os.getpid() and s["remote_port"] == cport and s["local_port"] == port
    assert [st for _, st in json.loads(s["states"])][1:] == [
        "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]
    assert c["first_seen"] <= s["first_seen"] <= s["last_seen"]
    # the line names no pid: the socket's process is linked (the client, connect()'s caller)
    procs = _rows(db_path, "SELECT pid FROM process_traces WHERE trace_id = ?",
                  (ev[1]["trace_id"],))
    assert procs and procs[0]["pid"] in (client.pid, os.getpid())


def test_live_connection_on_a_dual_stack_listener_is_read_from_the_kernel(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    # sshd's default: one [::] socket; IPv4 peers appear as ::ffff:a.b.c.d on that side
    srv = socket.socket(socket.AF_INET6)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    acc, peer = srv.accept()
    cport = cli.getsockname()[1]
    assert peer[0] == "::ffff:127.0.0.1" and peer[1] == cport
    try:
        log = tmp_path / "auth.log"
        ts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        log.write_text(f"{ts} {HOST} sshd[{os.getpid()}]: Connection from 127.0.0.1 port "
                       f"{cport} on 127.0.0.1 port {port}\n")
        _follow(store, rules, log, tracer)
    finally:
        cli.close()
        acc.close()
        srv.close()
    ev = _rows(db_path, "SELECT * FROM log_events")
    nets = _rows(db_path, "SELECT * FROM network_traces WHERE event_id = ?", (ev[0]["id"],))
    server = [n for n in nets if n["local_port"] == port and n["remote_port"] == cport]
    assert len(server) == 1 and server[0]["remote_address"] == "127.0.0.1"
    assert server[0]["remote_port"] == cport
    states = [st for _, st in json.loads(server[0]["states"])]
    assert states[-1] == "ESTABLISHED" and "CLOSE" not in states  # still open when linked


def test_failed_syscalls_are_counted_per_process(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    log = tmp_path / "auth.log"
    # as nobody: reading /etc/shadow fails with EACCES, in the kernel's count for this pid
    code = ("import os, sys, time\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "for _ in range(3):\n"
            "    try: open('/etc/shadow')\n"
            "    except PermissionError: pass\n"
            "ts = time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime())\n"
            f"sys.stdout.write(f'{{ts}} {HOST} su[{{os.getpid()}}]: pam_unix(su:auth): "
            "authentication failure\\n')\n")
    with log.open("w") as out:
        child = subprocess.run([sys.executable, "-c", code], stdout=out, check=True)
    assert child.returncode == 0
    assert _wait_for(lambda: tracer.failed_syscalls(_pid_of(log)).get("openat:EACCES", 0) >= 3)

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events")
    me = _rows(db_path, "SELECT * FROM process_traces WHERE event_id = ? AND pid = ?",
               (ev[0]["id"], ev[0]["pid"]))[0]
    assert json.loads(me["syscalls"])["failed"]["openat:EACCES"] == 3


def _pid_of(log: Path) -> int:
    line = log.read_text()
    return int(line.split("[", 1)[1].split("]", 1)[0])


def test_slow_syscalls_of_a_linked_process_are_kept(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    log, go = tmp_path / "app.log", tmp_path / "go"
    line = (f"time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime()) + ' {HOST} app[' + "
            "str(os.getpid()) + ']: ")
    code = ("import os, sys, time\n"
            f"print({line}starting', flush=True)\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
            "time.sleep(0.2)\n"  # one clock_nanosleep of 200 ms: slower than 50 ms
            f"print({line}done', flush=True)\n")
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=out)
        assert _wait_for(lambda: log.stat().st_size > 0)
        hook = make_hook(tracer)
        f = Follower(store, rules, str(log), from_start=True, tz=UTC, hooks=[hook])
        f.poll(100)
        f.flush()  # links line 1: the hook asks the kernel to time this pid's syscalls
        go.touch()
        assert child.wait() == 0
        f.poll(100)
        f.flush()
        f.close()
    ev = _rows(db_path, "SELECT * FROM log_events ORDER BY id")
    assert len(ev) == 2 and ev[0]["trace_id"] == ev[1]["trace_id"] is not None  # one process
    me = _rows(db_path, "SELECT * FROM process_traces WHERE trace_id = ? AND pid = ?",
               (ev[0]["trace_id"], child.pid))
    assert len(me) == 1
    slow = json.loads(me[0]["syscalls"])["slow"]
    assert [s["syscall"] for s in slow if s["ms"] >= 190] == ["clock_nanosleep"]
    assert me[0]["exit_code"] == 0  # refreshed: it exited before line 2 was linked


def test_lost_counters_and_stats_are_reported(tracer: EbpfTracer) -> None:
    subprocess.run(["/bin/true"], check=True)  # at least one exec, whichever test ran before
    assert _wait_for(lambda: tracer.stats()["events"].get("exec", 0) >= 1)
    st = tracer.stats()
    assert st["mode"] == "ebpf" and st["reason"] is None
    assert set(st["lost"]) == {"fork", "exec", "exit", "tcp", "slow"}
    assert st["events"]["exec"] >= 1 and st["errors"] == 0
    # every attached program's skipped runs, as the kernel counts them (6.x: a number each)
    missed = st["missed_runs"]
    assert {"raw_tracepoint__sys_exit", "tracepoint__sched__sched_process_exec"} <= set(missed)
    assert all(isinstance(n, int) and n >= 0 for n in missed.values()), missed


def _raw_conn(sk: int, saddr: str, sport: int, daddr: str, dport: int, family: int = 2) -> bytes:
    from logly.tracer.ebpf import _ConnT

    c = _ConnT(skaddr=sk, first_ts=1, last_ts=2, nstates=1, sport=sport, dport=dport,
               family=family)
    fam = socket.AF_INET if family == 2 else socket.AF_INET6
    for field, addr in (("saddr", saddr), ("daddr", daddr)):
        b = socket.inet_pton(fam, addr)
        getattr(c, field)[:len(b)] = list(b)
    c.states[0] = 7
    return bytes(c)


def test_closed_connection_cache_shares_endpoints_and_evicts_oldest_first() -> None:
    # no kernel needed: the records are built here
    from logly.tracer.ebpf import ConnCache, EbpfTracer, _ConnT

    t = EbpfTracer()
    cache = ConnCache(60, 3, lambda raw: t._conn(_ConnT.from_buffer_copy(raw)))
    # three clients of one listening endpoint; one over a dual-stack socket (::ffff:10.0.0.3)
    cache.add(_raw_conn(1, "10.0.0.1", 22, "10.0.0.2", 5001), 100.0)
    cache.add(_raw_conn(2, "10.0.0.1", 22, "10.0.0.2", 5002), 101.0)
    cache.add(_raw_conn(3, "::ffff:10.0.0.1", 22, "::ffff:10.0.0.3", 5003, family=10), 102.0)
    assert [c.key for c in cache.lookup("10.0.0.1", 22)] == [1, 2, 3]
    assert [c.remote_address for c in cache.lookup("10.0.0.3", 5003)] == ["10.0.0.3"]
    cache.add(_raw_conn(4, "10.0.0.1", 22, "10.0.0.2", 5004), 103.0)  # over max: 1 goes
    assert cache.evicted == 1 and cache.lookup("10.0.0.2", 5001) == []
    assert [c.key for c in cache.lookup("10.0.0.1", 22)] == [2, 3, 4]
    cache.prune(60 + 102.5)  # closed before 102.5 - 60: 2 and 3 go
    assert [c.key for c in cache.lookup("10.0.0.1", 22)] == [4]
    assert cache.lookup("10.0.0.3", 5003) == [] and len(cache.index) == 2


def test_process_killed_by_a_signal_records_the_signal(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    # no exit_group(): the kernel ends it for SIGTERM, so the exit code is the signal's
    log = tmp_path / "auth.log"
    script = ('printf "%s %s sshd[%s]: Failed password for root from 203.0.113.10 port 4243 '
              'ssh2\\n" "$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)" ' f'{HOST} $$ >> {log}; '
              'kill -TERM $$; sleep 5')
    child = subprocess.Popen(["/bin/sh", "-c", script])
    assert child.wait() == -15
    assert _wait_for(lambda: (p := tracer.process(child.pid)) is not None and p.exit is not None)
    info = tracer.process(child.pid)
    assert info is not None and info.exit_code == -15 and info.ended() == "killed by SIGTERM"

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events")
    me = _rows(db_path, "SELECT * FROM process_traces WHERE event_id = ?", (ev[0]["id"],))[0]
    assert me["pid"] == child.pid and me["exit_code"] == -15
    # a process that handles the signal and then exits keeps its own code
    handled = subprocess.Popen(["/bin/sh", "-c", "trap 'exit 3' TERM; kill -TERM $$; sleep 5"])
    assert handled.wait() == 3
    assert _wait_for(lambda: (p := tracer.process(handled.pid)) is not None and p.exit is not None)
    assert tracer.process(handled.pid).exit_code == 3  # type: ignore[union-attr]


def _docker_style_cgroup(cid: str) -> Path | None:
    """A real cgroup named as Docker's cgroupfs driver names a container's (/docker/<id>)."""
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").exists():
            try:
                d = root / "docker" / cid
                d.mkdir(parents=True)
                return d
            except OSError:
                continue
    return None


def test_process_in_a_container_cgroup_is_attributed_to_it(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    # no Docker engine here: the process is put in a real cgroup where Docker puts one
    cid = os.urandom(32).hex()
    cg = _docker_style_cgroup(cid)
    if cg is None:
        pytest.skip("no cgroup hierarchy this test can create a cgroup in")
    log = tmp_path / "auth.log"
    try:
        inner = ('printf "%s %s sshd[%s]: Failed password for root from 203.0.113.11 port 4244 '
                 'ssh2\\n" "$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)" ' f'{HOST} $$ >> {log}; '
                 'sleep 0.5')
        # join the cgroup, then exec: the exec the tracer sees happens inside the container
        child = subprocess.Popen(["/bin/sh", "-c",
                                  f'echo $$ > {cg}/cgroup.procs && exec /bin/sh -c \'{inner}\''])
        assert child.wait() == 0
        assert _wait_for(lambda: (p := tracer.process(child.pid)) is not None
                         and p.exit is not None)
        _follow(store, rules, log, tracer)
        ev = _rows(db_path, "SELECT * FROM log_events")
        me = _rows(db_path, "SELECT * FROM process_traces WHERE event_id = ?", (ev[0]["id"],))[0]
        assert me["pid"] == child.pid and me["container"] == f"docker:{cid}"
        parent = _rows(db_path, "SELECT * FROM process_traces WHERE trace_id = ? AND pid = ?",
                       (me["trace_id"], os.getpid()))
        assert parent and parent[0]["container"] != f"docker:{cid}"
    finally:
        cg.rmdir()


def test_connection_bytes_are_counted_per_socket(
        tracer: EbpfTracer, tmp_path: Path, db_path: Path, store: SQLiteStore,
        rules: RuleSet) -> None:
    if not tracer._tcp_bytes:
        pytest.skip("this kernel has no sock:sock_send_length/sock_recv_length tracepoints")
    srv, port, client, conn, caddr, cport = _loopback_client(
        "s.sendall(b'x' * 3000)\n"
        "got = b''\n"
        "while len(got) < 17:\n"
        "    got += s.recv(100)\n"
        "s.close()\n")
    got = b""
    while len(got) < 3000:
        assert conn.recv(4096, socket.MSG_PEEK)  # a peek counts nothing
        got += conn.recv(4096)
    conn.sendall(b"y" * 17)
    assert client.wait() == 0
    conn.close()
    srv.close()
    assert _wait_for(lambda: sum(1 for c in tracer.connections(caddr, cport) if c.closed) >= 2)
    log = tmp_path / "auth.log"
    ts = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    log.write_text(f"{ts} {HOST} sshd: Accepted publickey for alice from {caddr} port {cport} "
                   "ssh2\n")

    _follow(store, rules, log, tracer)

    ev = _rows(db_path, "SELECT * FROM log_events")
    nets = _rows(db_path, "SELECT * FROM network_traces WHERE trace_id = ?", (ev[0]["trace_id"],))
    server = [n for n in nets if (n["local_port"], n["remote_port"]) == (port, cport)]
    clients = [n for n in nets if (n["local_port"], n["remote_port"]) == (cport, port)]
    assert len(server) == 1 and len(clients) == 1
    assert (server[0]["bytes_recv"], server[0]["bytes_sent"]) == (3000, 17)
    assert (clients[0]["bytes_sent"], clients[0]["bytes_recv"]) == (3000, 17)
    # and `logly trace` shows them
    out = subprocess.run([sys.executable, "-m", "logly.cli", "trace", str(ev[0]["id"]), "--db",
                          str(db_path)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stderr
    assert "17 / 3,000" in out.stdout and "3,000 / 17" in out.stdout, out.stdout
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith(f"│ {client.pid} ")]
    assert rows and "exited 0" in rows[0]  # the client's row of the Processes table


def _conn_view(c) -> tuple:  # type: ignore[no-untyped-def]
    """A connection record without its times (two tracers stamp them a few ns apart)."""
    return (c.key, c.pid, c.comm, c.local_address, c.local_port, c.remote_address,
            c.remote_port, [st for _, st in c.states], c.closed is not None, c.bytes_sent,
            c.bytes_recv)


def test_raw_tcp_probe_records_connections_as_the_classic_tracepoint(
        tracer: EbpfTracer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the raw probe reads the socket at offsets taken from the kernel's BTF: a wrong offset
    # shows here as an endpoint, a family or a protocol that differs from the tracepoint's
    assert tracer.tcp_hook.startswith("raw tracepoint"), tracer.tcp_hook
    import logly.tracer.ebpf as ebpf

    monkeypatch.setattr(ebpf, "sock_offsets", lambda: ([], "compared with the raw probe"))
    classic = EbpfTracer(TracerSettings(keep_seconds=120, failed_syscalls=False))
    classic.start()
    try:
        assert classic.tcp_hook == "tracepoint sock:inet_sock_set_state"
        ends = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            srv = socket.socket(family)
            srv.bind((host, 0))
            srv.listen()
            cli = socket.create_connection((host, srv.getsockname()[1]))
            acc, _ = srv.accept()
            cli.sendall(b"x" * 1000)
            assert acc.recv(4096)
            acc.sendall(b"y" * 10)
            assert cli.recv(100)
            caddr, cport = cli.getsockname()[:2]
            # live: read from each tracer's kernel maps
            live = [sorted(map(_conn_view, t.connections(caddr, cport)))
                    for t in (tracer, classic)]
            assert len(live[0]) == 2 and live[0] == live[1]
            cli.close()
            acc.close()
            srv.close()
            ends.append((caddr, cport))
        for caddr, cport in ends:
            for t in (tracer, classic):
                assert _wait_for(lambda t=t, a=caddr, p=cport: sum(
                    1 for c in t.connections(a, p) if c.closed) >= 2)
            got = [sorted(map(_conn_view, t.connections(caddr, cport))) for t in (tracer, classic)]
            assert got[0] == got[1]
            assert {c[3] for c in got[0]} == {caddr}  # both sockets, by their own addresses
            assert sorted(c[7][-1] for c in got[0]) == ["CLOSE", "CLOSE"]
            assert sorted((c[9], c[10]) for c in got[0]) == [(10, 1000), (1000, 10)]
        # a refused connect (SYN_SENT, then CLOSE): its endpoints are read at CLOSE, when the
        # kernel has already released the local port from sock_common (inet_sock keeps it)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
        probe.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", dead))
        for t in (tracer, classic):
            assert _wait_for(lambda t=t: any(c.closed for c in t.connections("127.0.0.1", dead)))
        got = [sorted(map(_conn_view, t.connections("127.0.0.1", dead))) for t in (tracer, classic)]
        assert got[1] and [c for c in got[0] if c in got[1]] == got[1]
        assert all(c[4] and c[3] == "127.0.0.1" for c in got[1])  # the local port and address
    finally:
        classic.stop()


def test_many_live_connections_are_each_found_in_the_kernel_table(tracer: EbpfTracer) -> None:
    # every socket takes a slot of the set its address hashes to; userspace must find each one
    # there (bpf/tcp.c conn_claim, ebpf.py _sock_record), and closing frees the slots
    from logly.tracer.ebpf import SOCK_WAYS, _sock_set

    bits = tracer._sock_bits
    assert {_sock_set(sk, bits) % SOCK_WAYS for sk in range(1 << 20, 1 << 21, 2368)} == {0}
    assert max(_sock_set(sk, bits) for sk in range(1 << 40, (1 << 40) + 10**7, 997)) < 1 << bits
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    pairs = []
    try:
        for _ in range(150):
            cli = socket.create_connection(srv.getsockname())
            acc, _ = srv.accept()
            pairs.append((cli, acc))
        for cli, _acc in pairs:
            # (closed sockets that had the same client port earlier are found too)
            live = [c for c in tracer.connections(*cli.getsockname()) if c.closed is None]
            assert len(live) == 2, (cli.getsockname(), live)
            assert {c.states[-1][1] for c in live} == {"ESTABLISHED"}
    finally:
        for cli, acc in pairs:
            cli.close()
            acc.close()
        srv.close()


def test_a_full_socket_table_evicts_but_every_close_is_recorded(tracer: EbpfTracer) -> None:
    # 8 slots (2 sets of 4) for 40 sockets: sockets evict one another's records; one seen
    # again later takes a slot back, reads its endpoints at CLOSE, and every close still
    # reaches userspace (which keeps the last 8: max_connections bounds that cache too)
    small = EbpfTracer(TracerSettings(keep_seconds=120, max_connections=8,
                                      failed_syscalls=False))
    small.start()
    try:
        assert small._sock_bits == 3
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        port = srv.getsockname()[1]
        pairs = []
        for _ in range(20):
            cli = socket.create_connection(srv.getsockname())
            pairs.append((cli, srv.accept()[0]))
        ends = {cli.getsockname()[1] for cli, _ in pairs}
        live = sum(len(small.connections("127.0.0.1", p)) for p in ends)
        assert 0 < live <= 8  # (only sockets that kept their slot are found live)
        for cli, acc in pairs:
            cli.close()
            acc.close()
        srv.close()
        assert _wait_for(lambda: small.events["tcp"] >= 41)  # 40 sockets and the listener
        recs = [c for p in ends for c in small.connections("127.0.0.1", p)]
        assert len({c.key for c in recs}) >= 6
        for c in recs:  # (with the endpoints of each: the port from inet_sock at CLOSE)
            assert c.closed and {c.local_port, c.remote_port} - ends == {port}, c
        assert small.lost()["tcp"] == 0
        # an evicted socket's endpoint went with it, a closed one's at its close: none is left
        from logly.tracer.ebpf import _EP_SLOT

        assert small._ep_mem is not None
        assert [sk for *_, sk in _EP_SLOT.iter_unpack(small._ep_mem[:])] == [0] * 8
    finally:
        small.stop()
