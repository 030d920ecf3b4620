"""The tracer's records and its /proc fallback: live processes and sockets through psutil.

Used when eBPF cannot run (not root, no BCC, no kernel headers, no tracefs): it only sees what
still exists when an event is stored, so a process that already exited has no context. The
eBPF tracer (ebpf.py) extends this class: it keeps the same records from kernel events,
including for processes that are gone, and uses the /proc scan here to seed its cache.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from logly.parsers.addresses import normalize_ip
from logly.tracer.containers import container_of

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}


@dataclass(slots=True)
class ProcInfo:
    """One process as the tracer knows it; times are epoch seconds."""

    pid: int
    ppid: int | None = None
    uid: int | None = None
    comm: str | None = None
    exe: str | None = None
    argv: list[str] | None = None
    start: float | None = None
    exit: float | None = None
    exit_code: int | None = None
    container: str | None = None
    source: str = "proc"  # "ebpf": seen starting by the kernel probes; "proc": read from /proc
    slow: list[dict[str, Any]] = field(default_factory=list)  # slow syscalls (traced pids)

    def cmdline(self) -> str | None:
        return None if self.argv is None else " ".join(self.argv)

    def ended(self) -> str | None:
        """How it ended: "exited 0", "killed by SIGTERM" (a negative exit_code is the signal,
        as in Python's returncode), "exited" with no code known; None while it runs."""
        if self.exit is None:
            return None
        return exit_text(self.exit_code)


def exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


@dataclass(slots=True)
class Conn:
    """One TCP socket: its endpoints, the pid behind it and its state history."""

    key: int
    pid: int | None = None
    comm: str | None = None
    local_address: str | None = None
    local_port: int | None = None
    remote_address: str | None = None
    remote_port: int | None = None
    states: list[tuple[float, str]] = field(default_factory=list)
    first: float | None = None
    last: float | None = None
    closed: float | None = None
    bytes_sent: int | None = None  # payload sent / received through this socket (eBPF only)
    bytes_recv: int | None = None


def norm_addr(addr: str) -> str:
    """One spelling per address (the parsers' rule: IPv4-mapped IPv6 as IPv4, IPv6
    compressed), so kernel and log addresses compare equal; non-addresses stay as they are."""
    if ":" not in addr:  # IPv4 text, the common case, is already in its one spelling
        return addr
    return normalize_ip(addr) or addr


class ProcfsTracer:
    """Process and socket context from /proc, for live processes only."""

    mode = "procfs"

    def __init__(self, reason: str | None = None, *, ttl: float = 2.0) -> None:
        self.reason = reason  # why eBPF is not used (None when procfs was asked for)
        self.ttl = ttl
        self._procs: dict[int, tuple[float, ProcInfo | None]] = {}
        self._conns: tuple[float, dict[tuple[str, int], list[Conn]]] = (0.0, {})
        self._lock = threading.Lock()

    # ---- lifecycle (nothing runs in the background) --------------------------------------------
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def sync(self) -> None:
        pass  # nothing buffered: /proc is read at lookup time

    # ---- lookups ------------------------------------------------------------------------------
    def process(self, pid: int) -> ProcInfo | None:
        now = time.monotonic()
        hit = self._procs.get(pid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        info = read_process(pid)
        if len(self._procs) > 4096:
            self._procs.clear()
        self._procs[pid] = (now, info)
        return info

    def known(self, pid: int) -> bool:
        """Cheap first test before process_at (the link hook asks it for every row)."""
        return self.process(pid) is not None

    def process_at(self, pid: int, when: float, slack: float = 2.0) -> ProcInfo | None:
        """The process with this pid that was alive at `when` (epoch seconds)."""
        info = self.process(pid)
        if info is None or (info.start is not None and when < info.start - slack):
            return None
        return info

    def ancestors(self, info: ProcInfo, limit: int = 8) -> list[ProcInfo]:
        """Parent, grandparent, ... up to pid 1 (included), as far as known."""
        out: list[ProcInfo] = []
        seen = {info.pid}
        ppid = info.ppid
        while ppid and ppid not in seen and len(out) < limit:
            parent = self.process(ppid)
            if parent is None:
                break
            out.append(parent)
            seen.add(ppid)
            ppid = parent.ppid
        return out

    def connections(self, addr: str, port: int) -> list[Conn]:
        """Sockets with this endpoint, remote (a server's view) or local (a client's)."""
        now = time.monotonic()
        with self._lock:
            at, index = self._conns
            if now - at >= self.ttl:
                index = _socket_index()
                self._conns = (now, index)
        return list(index.get((norm_addr(addr), port), ()))

    def failed_syscalls(self, pid: int) -> dict[str, int]:
        return {}  # needs the kernel's view

    def watch(self, pid: int) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "events": {}, "lost": {}}


def read_process(pid: int) -> ProcInfo | None:
    """A live process from /proc; None when it is gone. Fields we may not read stay None."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            info = ProcInfo(pid=pid, ppid=p.ppid(), uid=p.uids().real, comm=p.name(),
                            start=p.create_time())
            try:
                info.exe = p.exe() or None
                info.argv = p.cmdline()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                pass
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None
    info.container = container_of(pid)
    return info


def live_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _socket_index() -> dict[tuple[str, int], list[Conn]]:
    index: dict[tuple[str, int], list[Conn]] = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # other users' sockets need root on some systems
        return index
    now = time.time()
    for i, c in enumerate(conns):
        if not c.raddr:  # listening sockets name no peer
            continue
        conn = Conn(key=i, pid=c.pid, local_address=norm_addr(c.laddr.ip),
                    local_port=c.laddr.port, remote_address=norm_addr(c.raddr.ip),
                    remote_port=c.raddr.port, states=[(now, c.status)], first=now, last=now)
        index.setdefault((conn.remote_address, conn.remote_port), []).append(conn)
        index.setdefault((conn.local_address, conn.local_port), []).append(conn)
    return index
