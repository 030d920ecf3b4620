"""The eBPF tracer: process, TCP and syscall context from kernel tracepoints (BCC).

The C in bpf/*.c attaches to sched:sched_process_{fork,exec,exit}, syscalls:sys_enter_execve
(argv), syscalls:sys_enter_exit_group (exit code) and, as raw tracepoints, inet_sock_set_state
(TCP; socket fields at offsets from the kernel's BTF, else the classic sock: tracepoint),
sock_{send,recv}_length (bytes), sys_exit (failed syscalls) and, once a pid is watched,
sys_enter + sys_exit (slow syscalls); events come through one BPF ring buffer drained by a
thread of ours. The caches
here outlive the processes and sockets by `keep_seconds`, so a log line written by a process
that has already exited still finds its exe, argv, parent and exit code.

`open_tracer(settings)` returns this tracer when it can attach, else the /proc tracer
(procfs.py) after one warning that says why.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes as ct
import errno
import logging
import mmap
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logly.errors import ConfigError
from logly.tracer.containers import container_of
from logly.tracer.procfs import (
    TCP_STATES,
    Conn,
    ProcfsTracer,
    ProcInfo,
    live_pids,
    norm_addr,
    read_process,
)

log = logging.getLogger("logly.tracer")

BPF_DIR = Path(__file__).resolve().parent / "bpf"
BPF_SOURCES = ("common.c", "syscalls.c", "process.c", "tcp.c")  # order: definitions first
BCC_PATH = "/usr/lib/python3/dist-packages"  # python3-bpfcc; PyPI's "bcc" is another thing

EV_FORK, EV_EXEC, EV_EXIT, EV_TCP, EV_SLOW, EV_ARGV = 1, 2, 3, 4, 5, 6
KIND_NAMES = {EV_FORK: "fork", EV_EXEC: "exec", EV_EXIT: "exit", EV_TCP: "tcp", EV_SLOW: "slow"}
EVENT_NAMES = {**KIND_NAMES, EV_ARGV: "argv"}  # (a lost argv is counted as a lost exec)
MAX_PENDING_ARGV = 4096  # argv of execs not yet seen (or failed: a PATH search) by thread
MAXARGS, ARGLEN, FILENAME_LEN, COMM_LEN, FAIL_SLOTS = 20, 256, 256, 16, 16
MAX_STATES = 12  # state changes kept per socket (bpf/tcp.c)
SOCK_WAYS, SOCK_HASH = 4, 0x9E3779B97F4A7C15  # the live sockets' table (bpf/tcp.c)


def sock_bits(max_connections: int) -> int:
    """log2 of the slots of the live sockets' table: at least max_connections."""
    return max(max_connections - 1, SOCK_WAYS - 1).bit_length()


def _sock_set(sk: int, bits: int) -> int:
    """The first slot of the set a socket's kernel address hashes to (bpf/tcp.c, sock_set)."""
    return ((sk * SOCK_HASH) & 0xFFFFFFFFFFFFFFFF) >> (64 - bits) & ~(SOCK_WAYS - 1)


def _ep_set(addr: bytes, port: int, bits: int) -> int:
    """The first slot of an endpoint's set in the endpoint table (bpf/tcp.c, ep_set); `addr`
    as _addr_key gives it."""
    lo, hi = struct.unpack("<QQ", addr)
    h = ((lo ^ ((hi * SOCK_HASH) & 0xFFFFFFFFFFFFFFFF) ^ port) * SOCK_HASH) & 0xFFFFFFFFFFFFFFFF
    return h >> (64 - bits) & ~(SOCK_WAYS - 1)


# ---- settings ([tracer] in the config) --------------------------------------------------------
@dataclass(frozen=True)
class TracerSettings:
    enabled: bool = True
    mode: str = "auto"  # auto | ebpf | procfs
    keep_seconds: float = 300.0  # how long exited processes and closed sockets stay known
    max_processes: int = 65536
    process_cache_mb: int = 40  # and at most this much memory for them (argv is the bulk)
    max_connections: int = 65536
    failed_syscalls: bool = True  # count failed syscalls (raw_syscalls:sys_exit, every syscall)
    tcp_bytes: bool = True  # count bytes per traced socket (sock:sock_{send,recv}_length, 6.3+)
    slow_syscalls: bool = False  # time the syscalls of linked pids: one more probe per syscall
    slow_syscall_ms: float = 10.0
    ringbuf_pages: int = 1024  # 4 MiB: ~8,000 fork+exec+exit with short argv between drains
    drain_ms: float = 50.0  # how often the ring buffer is read (and before each linked batch)
    failed_pids: int = 16384  # processes whose failed syscalls the kernel map holds
    link_host: bool = True  # link only events whose host is this machine (or unset)


def parse_settings(table: dict[str, Any]) -> TracerSettings:
    """Validate the [tracer] table; ConfigError names the bad key."""
    defaults = TracerSettings()
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if not hasattr(defaults, key):
            raise ConfigError(f"[tracer] unknown key {key!r}")
        want = type(getattr(defaults, key))
        if want is bool:
            if not isinstance(raw, bool):
                raise ConfigError(f"[tracer] {key} must be true or false")
            values[key] = raw
        elif want is str:
            if raw not in ("auto", "ebpf", "procfs"):
                raise ConfigError(f"[tracer] mode must be auto, ebpf or procfs, not {raw!r}")
            values[key] = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
                raise ConfigError(f"[tracer] {key} must be a positive number")
            values[key] = want(raw)
    return TracerSettings(**values)


def open_tracer(settings: TracerSettings | None = None) -> EbpfTracer | ProcfsTracer:
    """The eBPF tracer, started, if it can run here; else the /proc one (warning once why)."""
    s = settings or TracerSettings()
    if s.mode == "procfs":
        return ProcfsTracer()
    reason = ebpf_unavailable()
    if reason is None:
        tracer = EbpfTracer(s)
        try:
            tracer.start()
            return tracer
        except Exception as exc:  # compile or attach failure: say what the kernel said
            reason = f"BCC could not load the probes: {str(exc).strip().splitlines()[-1]}"
    if s.mode == "ebpf":
        raise ConfigError(f"[tracer] mode = 'ebpf' but {reason}")
    log.warning("tracer: eBPF unavailable (%s); using /proc (live processes only)", reason)
    return ProcfsTracer(reason)


TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def ebpf_unavailable() -> str | None:
    """Why eBPF cannot run here, or None. Checks what scripts/ebpf-setup.sh provides."""
    if os.geteuid() != 0:
        return "not running as root"
    if not any(Path(root, "events").is_dir() for root in TRACEFS):
        return "tracefs is not mounted at /sys/kernel/tracing"
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        return f"no kernel headers at {build} (run scripts/ebpf-setup.sh)"
    try:
        _import_bcc()
    except ImportError as exc:
        return f"BCC's Python module is missing ({exc}; install python3-bpfcc)"
    return None


# The socket fields the raw inet_sock_set_state probe reads (bpf/tcp.c), as members of struct
# inet_sock, with the sizes a probe may read them as, and the span they are read in: each span
# is one bpf_probe_read_kernel (a helper call costs more than the bytes it copies). Offsets come
# from the running kernel's BTF; a span's fields get offsets within it. The classic tracepoint
# takes the local address and port from inet_saddr and inet_sport (include/trace/events/sock.h).
# An established TCP socket holds the same values in struct sock_common (skc_rcv_saddr; skc_num,
# in host order), read with the other endpoint fields in one go; but at CLOSE the kernel has
# already released the port (skc_num is 0), and then the second span, inet_sock's own, is read.
SOCK_FIELDS = {
    "SK_PROTO": ("sk.sk_protocol", (1, 2), ""),  # a u16 since 5.6; a byte-wide bitfield before
    "SK_FAMILY": ("sk.__sk_common.skc_family", (2,), "SKC"),
    "SK_DPORT": ("sk.__sk_common.skc_dport", (2,), "SKC"),
    "SK_NUM": ("sk.__sk_common.skc_num", (2,), "SKC"),
    "SK_DADDR": ("sk.__sk_common.skc_daddr", (4,), "SKC"),
    "SK_RCV_SADDR": ("sk.__sk_common.skc_rcv_saddr", (4,), "SKC"),
    "SK_SADDR6": ("sk.__sk_common.skc_v6_rcv_saddr", (16,), "SKC"),
    "SK_DADDR6": ("sk.__sk_common.skc_v6_daddr", (16,), "SKC"),
    "SK_SPORT": ("inet_sport", (2,), "INET"),
    "SK_SADDR": ("inet_saddr", (4,), "INET"),
}
MAX_SPAN = 128  # bytes of BPF stack a span may take


def sock_offsets(btf_path: Path | None = None) -> tuple[list[str], str | None]:
    """The -D flags that select the raw inet_sock_set_state probe, with the socket fields'
    offsets from the running kernel's BTF: (flags, None), or ([], why the classic tracepoint
    must do)."""
    from logly.tracer import btf

    try:
        types = btf.load(btf_path or btf.VMLINUX)
        found: dict[str, tuple[int, int]] = {}
        for macro, (path, sizes, _span) in SOCK_FIELDS.items():
            at = types.offset_of("inet_sock", path)
            if at is None or at[1] not in sizes:
                return [], f"struct inet_sock has no usable {path} in BTF"
            if at[0] % min(at[1], 8):
                return [], f"inet_sock.{path} is not aligned"
            found[macro] = at
    except btf.BtfError as exc:
        return [], str(exc)
    flags = [f"-DSK_PROTO_OFF={found['SK_PROTO'][0]}", f"-DSK_PROTO_SIZE={found['SK_PROTO'][1]}"]
    for span in sorted({sp for _p, _s, sp in SOCK_FIELDS.values() if sp}):
        fields = {m: found[m] for m, (_p, _s, sp) in SOCK_FIELDS.items() if sp == span}
        lo = min(off for off, _ in fields.values()) & ~7
        hi = max(off + size for off, size in fields.values())
        length = (hi - lo + 7) & ~7
        if length > MAX_SPAN:
            return [], f"the {span} fields of inet_sock span {length} bytes"
        flags += [f"-D{span}_SPAN_OFF={lo}", f"-D{span}_SPAN_LEN={length}"]
        flags += [f"-D{m}_OFF={off - lo}" for m, (off, _size) in fields.items()]
    return flags, None


def probe_cflags(s: TracerSettings) -> tuple[list[str], str | None]:
    """The compile flags for bpf/*.c under these settings, and why the TCP probe is the classic
    tracepoint (None: it is the raw one)."""
    cflags = [f"-DRINGBUF_PAGES={s.ringbuf_pages}", f"-DFAIL_PIDS={s.failed_pids}",
              f"-DSOCK_BITS={sock_bits(s.max_connections)}", f"-DMAX_STATES={MAX_STATES}",
              f"-DMAXARGS={MAXARGS}", f"-DARGLEN={ARGLEN}"]
    if not s.failed_syscalls:
        cflags.append("-DNO_FAILED")
    exists = _import_bcc().BPF.tracepoint_exists
    if not (s.tcp_bytes and exists("sock", "sock_send_length")
            and exists("sock", "sock_recv_length")):
        cflags.append("-DNO_TCP_BYTES")
    if s.slow_syscalls:
        cflags.append(f"-DSLOW_NS={int(s.slow_syscall_ms * 1e6)}ULL")
    sock, why_not = sock_offsets()
    return cflags + sock, why_not


def _import_bcc() -> Any:
    try:
        import bcc
    except ImportError:
        if BCC_PATH in sys.path or not Path(BCC_PATH, "bcc").is_dir():
            raise
        sys.path.append(BCC_PATH)  # last: never shadow the venv's own packages
        import bcc
    return bcc


def _release_compiler_memory() -> None:
    """Give back what compiling the probes touched: ~100 MB of LLVM/clang pages and heap.

    BCC links the whole compiler into the process; after the probes are loaded none of it
    runs again, but its touched pages would stay in our RSS. MADV_PAGEOUT (Linux 5.4) drops
    them from this process (they refault if ever needed); malloc_trim returns freed heap."""
    try:
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read().splitlines()
    except OSError:
        return
    for line in maps:
        parts = line.split()
        if len(parts) < 6 or not any(k in parts[5] for k in ("libLLVM", "libclang", "libz3")):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        libc.madvise(lo, hi - lo, 21)  # MADV_PAGEOUT; EINVAL on older kernels: harmless


# ---- the kernel's records, as ctypes mirrors of bpf/*.c -------------------------------------
class _ForkEv(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("pid", ct.c_uint32), ("ppid", ct.c_uint32),
                ("uid", ct.c_uint32), ("ts", ct.c_uint64), ("cgroup", ct.c_uint64),
                ("comm", ct.c_char * COMM_LEN)]


class _ArgvEv(ct.Structure):  # followed by `len` bytes: the arguments, each NUL-terminated
    _fields_ = [("kind", ct.c_uint32), ("tid", ct.c_uint32), ("argc", ct.c_uint32),
                ("truncated", ct.c_uint32), ("len", ct.c_uint32), ("pad", ct.c_uint32)]


_ARGV_HDR = ct.sizeof(_ArgvEv)


class _ExecEv(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("pid", ct.c_uint32), ("old_pid", ct.c_uint32),
                ("uid", ct.c_uint32), ("ts", ct.c_uint64), ("cgroup", ct.c_uint64),
                ("comm", ct.c_char * COMM_LEN), ("filename", ct.c_char * FILENAME_LEN)]


class _ExitEv(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("pid", ct.c_uint32), ("tid", ct.c_uint32),
                ("group_dead", ct.c_uint32), ("code", ct.c_int32), ("has_code", ct.c_uint32),
                ("ts", ct.c_uint64)]


class _ConnT(ct.Structure):
    _fields_ = [("skaddr", ct.c_uint64), ("first_ts", ct.c_uint64), ("last_ts", ct.c_uint64),
                ("pid", ct.c_uint32), ("nstates", ct.c_uint32), ("sport", ct.c_uint16),
                ("dport", ct.c_uint16), ("family", ct.c_uint16), ("first_old", ct.c_uint16),
                ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16),
                ("comm", ct.c_char * COMM_LEN), ("states", ct.c_uint8 * MAX_STATES),
                ("ts", ct.c_uint64 * MAX_STATES), ("bytes_sent", ct.c_uint64),
                ("bytes_recv", ct.c_uint64)]


class _EpSlot(ct.Structure):
    _fields_ = [("addr", ct.c_uint8 * 16), ("port", ct.c_uint16), ("remote", ct.c_uint16),
                ("pad", ct.c_uint32), ("sk", ct.c_uint64)]


class _TcpEv(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("pad", ct.c_uint32), ("c", _ConnT)]


_TCP_C, _CONN_SIZE = _TcpEv.c.offset, ct.sizeof(_ConnT)
_EP_SLOT = struct.Struct("<16sHHIQ")  # _EpSlot, unpacked without a ctypes object per slot
assert _EP_SLOT.size == ct.sizeof(_EpSlot)


class _SlowEv(ct.Structure):
    _fields_ = [("kind", ct.c_uint32), ("pid", ct.c_uint32), ("tid", ct.c_uint32),
                ("nr", ct.c_uint32), ("ret", ct.c_int64), ("ts", ct.c_uint64),
                ("duration_ns", ct.c_uint64)]


class _FailSlot(ct.Structure):
    _fields_ = [("nr", ct.c_uint32), ("err", ct.c_uint32), ("count", ct.c_uint64)]


class _Fail(ct.Structure):
    _fields_ = [("s", _FailSlot * FAIL_SLOTS), ("other", ct.c_uint64)]


def _text(raw: bytes) -> str:
    # interned: thousands of cached processes share a handful of comm and exe names
    return sys.intern(raw.decode("utf-8", "replace"))


def _arg(raw: bytes) -> str:
    # the kernel copied at most ARGLEN - 1 bytes: a full slot means the argument was cut
    return _text(raw) + ("…" if len(raw) >= ARGLEN - 1 else "")


# ---- caches -------------------------------------------------------------------------------
class ProcessCache:
    """pid -> ProcInfo for live processes and, for keep_seconds, exited ones.

    One generation back is kept per pid (`previous`), so a late line from a process whose pid
    was already reused still finds the right one by time. Bounded twice: by entries, and by
    the bytes their argv hold (up to 20 x 255 bytes each, chosen by whoever starts a process),
    so a burst of long command lines cannot grow the tracer past its budget; exited entries go
    first, oldest first.
    """

    def __init__(self, keep_seconds: float, max_entries: int,
                 max_bytes: int = 40 << 20) -> None:
        self.keep = keep_seconds
        self.max = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # estimated memory of the entries of procs and previous
        self.procs: dict[int, ProcInfo] = {}
        self.previous: dict[int, ProcInfo] = {}
        self.exited: collections.deque[tuple[float, int]] = collections.deque()
        self.evicted = 0  # live entries dropped because the cache was full

    def get(self, pid: int) -> ProcInfo | None:
        return self.procs.get(pid)

    def at(self, pid: int, when: float, slack: float) -> ProcInfo | None:
        for info in (self.procs.get(pid), self.previous.get(pid)):
            if info is None:
                continue
            if info.start is not None and when < info.start - slack:
                continue
            if info.exit is not None and when > info.exit + self.keep:
                continue
            return info
        return None

    def put(self, info: ProcInfo) -> None:
        old = self.procs.get(info.pid)
        if old is not None:
            if old.exit is not None:
                self._forget(self.previous.get(info.pid))
                self.previous[info.pid] = old
            else:
                self._forget(old)
        self.procs[info.pid] = info
        self.bytes += ENTRY_BYTES + _argv_bytes(info.argv)
        if len(self.procs) > self.max or self.bytes > self.max_bytes:
            self._shrink()

    def set_argv(self, info: ProcInfo, argv: list[str] | None) -> None:
        """Give a cached process its argv (at exec), keeping the byte count right."""
        self.bytes += _argv_bytes(argv) - _argv_bytes(info.argv)
        info.argv = argv
        if self.bytes > self.max_bytes:
            self._shrink()

    def mark_exit(self, pid: int, when: float, code: int | None) -> None:
        info = self.procs.get(pid)
        if info is None:
            return
        info.exit = when
        info.exit_code = code
        self.exited.append((when, pid))

    def drop(self, pid: int) -> None:
        self._forget(self.procs.pop(pid, None))

    def prune(self, now: float) -> None:
        horizon = now - self.keep
        while self.exited and self.exited[0][0] < horizon:
            self._expire(self.exited.popleft()[1], horizon)

    def _expire(self, pid: int, horizon: float) -> None:
        """Drop pid's entries that exited before `horizon` (a reused pid's live one stays)."""
        info = self.procs.get(pid)
        if info is not None and info.exit is not None and info.exit < horizon:
            del self.procs[pid]
            self._forget(info)
        prev = self.previous.get(pid)
        if prev is not None and prev.exit is not None and prev.exit < horizon:
            del self.previous[pid]
            self._forget(prev)

    def _forget(self, info: ProcInfo | None) -> None:
        if info is not None:
            self.bytes -= ENTRY_BYTES + _argv_bytes(info.argv)

    def _shrink(self) -> None:
        # exited first (oldest first), then the oldest inserted live entries
        while self.exited and (len(self.procs) > self.max or self.bytes > self.max_bytes):
            self._expire(self.exited.popleft()[1], float("inf"))
        while self.procs and (len(self.procs) > self.max or self.bytes > self.max_bytes):
            pid = next(iter(self.procs))
            self._forget(self.procs.pop(pid))
            self.evicted += 1


ENTRY_BYTES = 400  # a ProcInfo with its small strings and floats, and its dict slot


def _argv_bytes(argv: list[str] | None) -> int:
    # a str costs ~49 bytes beyond its text, a list slot 8: close enough to bound memory
    return 0 if not argv else sum(len(a) + 57 for a in argv)


class ConnCache:
    """Closed TCP sockets, indexed by both endpoints, kept keep_seconds after they closed.
    (Live sockets stay in the kernel's maps and are read when asked for.)

    The tracer keeps each as the kernel's record (216 bytes), decoded by `decode` only when a
    lookup finds it: a busy server closes thousands of sockets a second, and few are ever
    asked about. (A Conn may be added as it is.) An endpoint is an int key; most have one
    socket, shared ones (a listening port, a popular service) a deque, oldest first, so
    dropping the oldest costs O(1)."""

    def __init__(self, keep_seconds: float, max_entries: int,
                 decode: Callable[[bytes], Conn] | None = None) -> None:
        self.keep = keep_seconds
        self.max = max_entries
        self.decode = decode
        self.index: dict[int, Any] = {}  # key -> record, or a deque of records
        self.closed: collections.deque[tuple[float, bytes | Conn]] = collections.deque()
        self.evicted = 0

    def add(self, rec: bytes | Conn, closed: float | None = None,
            keys: list[int] | None = None) -> None:
        """Keep a closed socket; `keys`: its endpoints' keys if the caller has them (_rec_keys)."""
        index = self.index
        for key in _rec_keys(rec) if keys is None else set(keys):
            have = index.get(key)
            if have is None:
                index[key] = rec
            elif isinstance(have, collections.deque):
                have.append(rec)
            else:
                index[key] = collections.deque((have, rec))
        if closed is None and isinstance(rec, Conn):
            closed = rec.closed
        self.closed.append((closed or 0.0, rec))
        if len(self.closed) > self.max:
            self._unindex(self.closed.popleft()[1])
            self.evicted += 1

    def lookup(self, addr: str, port: int) -> list[Conn]:
        key = _endpoint_key(addr, port)
        have = None if key is None else self.index.get(key)
        if have is None:
            return []
        recs = have if isinstance(have, collections.deque) else (have,)
        return [r if isinstance(r, Conn) or self.decode is None else self.decode(r)
                for r in recs]

    def prune(self, now: float) -> None:
        horizon = now - self.keep
        while self.closed and self.closed[0][0] < horizon:
            self._unindex(self.closed.popleft()[1])

    def _unindex(self, rec: bytes | Conn) -> None:
        index = self.index
        for key in _rec_keys(rec):
            have = index.get(key)
            if have is None:
                continue
            if not isinstance(have, collections.deque):
                if have is rec:
                    del index[key]
                continue
            if have[0] is rec:
                have.popleft()
            else:
                with contextlib.suppress(ValueError):
                    have.remove(rec)
            if len(have) == 1:
                index[key] = have[0]
            elif not have:
                del index[key]


_C_OFF = {name: getattr(_ConnT, name).offset for name in ("sport", "saddr", "last_ts")}
_PORTS = struct.Struct("<HHH")  # sport, dport, family (contiguous in conn_t)
_TCP_HEAD = struct.Struct("<Q8xHHH")  # from last_ts: last_ts, (pid, nstates), sport, dport, family
_V4_ADDRS = struct.Struct(">I12xI")  # from saddr: the IPv4 saddr and daddr, as ints
assert _C_OFF["sport"] - _C_OFF["last_ts"] == 16


def _key_of(family: int, addr: bytes, port: int) -> int:
    """The int an endpoint is indexed by: address bytes and port, IPv4-mapped as IPv4."""
    if family == socket.AF_INET:
        return int.from_bytes(addr[:4], "big") << 16 | port
    if addr[:12] == b"\0" * 10 + b"\xff\xff":
        return int.from_bytes(addr[12:16], "big") << 16 | port
    return 1 << 160 | int.from_bytes(addr[:16], "big") << 16 | port


def _rec_keys(rec: bytes | Conn) -> set[int]:
    if isinstance(rec, Conn):
        return {k for k in (_endpoint_key(rec.local_address, rec.local_port)
                            if rec.local_address and rec.local_port else None,
                            _endpoint_key(rec.remote_address, rec.remote_port)
                            if rec.remote_address and rec.remote_port else None)
                if k is not None}
    raw = rec
    sport, dport, family = _PORTS.unpack_from(raw, _C_OFF["sport"])
    o = _C_OFF["saddr"]
    keys = set()
    if sport:
        keys.add(_key_of(family, raw[o:o + 16], sport))
    if dport:
        keys.add(_key_of(family, raw[o + 16:o + 32], dport))
    return keys


def _endpoint_key(addr: str, port: int) -> int | None:
    raw = _addr_key(addr)
    if raw is None:
        return None
    if raw[4:] == bytes(12) and "." in addr:
        return _key_of(socket.AF_INET, raw, port)
    return _key_of(socket.AF_INET6, raw, port)


def _addr_text(family: int, raw: Any) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, bytes(raw)[:4])
    text = socket.inet_ntop(socket.AF_INET6, bytes(raw))
    # a dual-stack listener ([::]) sees IPv4 peers as ::ffff:a.b.c.d
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def _addr_key(addr: str) -> bytes | None:
    """The 16 bytes the kernel's endpoint map keys this address by (IPv4: 4 + 12 zeros)."""
    try:
        return socket.inet_pton(socket.AF_INET, addr) + bytes(12)
    except OSError:
        pass
    try:
        return socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return None


# ---- the tracer ---------------------------------------------------------------------------
class EbpfTracer(ProcfsTracer):
    mode = "ebpf"

    def __init__(self, settings: TracerSettings | None = None) -> None:
        super().__init__(None)
        self.settings = s = settings or TracerSettings()
        self.cache = ProcessCache(s.keep_seconds, s.max_processes, s.process_cache_mb << 20)
        self.conns = ConnCache(s.keep_seconds, s.max_connections,
                               lambda raw: self._conn(_ConnT.from_buffer_copy(raw)))
        self.bpf: Any = None
        self._failed: Any = None
        self._traced: Any = None
        self._socks: Any = None
        self._sock_bits = sock_bits(s.max_connections)
        self._lookup_batch: Any = None
        self._ep_mem: mmap.mmap | None = None
        self._slot_lock = threading.Lock()
        self._slot_buf = ((ct.c_uint32 * SOCK_WAYS)(), ct.create_string_buffer(
            _CONN_SIZE * SOCK_WAYS), ct.c_uint32(), ct.c_uint32(), ct.c_uint32())
        self._slow_fds: list[int] = []  # the slow-syscall pair, attached on the first watch()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._mono_to_epoch = 0.0
        # cgroup v2 id -> container, trusted only on a pure v2 host (on hybrid hosts the v1
        # hierarchies, which the id does not cover, may name the container)
        self._cgroups: dict[int, str | None] | None = \
            {} if Path("/sys/fs/cgroup/cgroup.controllers").exists() else None
        self.events = collections.Counter()  # kind name -> events handled
        self._argv: dict[int, list[str] | None] = {}  # tid -> argv sent at its execve entry
        self.errors = 0  # events we could not decode or apply
        self._syscall_names: dict[int, str] = {}
        self._tcp_bytes = False  # set at start: the setting, and the kernel has the tracepoints
        self.tcp_hook = ""  # set at start: which hook sees TCP state changes

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        bcc = _import_bcc()
        s = self.settings
        text = "".join((BPF_DIR / name).read_text(encoding="utf-8") for name in BPF_SOURCES)
        cflags, why_classic = probe_cflags(s)
        self._tcp_bytes = "-DNO_TCP_BYTES" not in cflags
        if why_classic is None:
            self.tcp_hook = "raw tracepoint inet_sock_set_state (socket offsets from BTF)"
        else:
            self.tcp_hook = "tracepoint sock:inet_sock_set_state"
            log.info("tracer: TCP state changes through the classic tracepoint: %s", why_classic)
        self.bpf = bcc.BPF(text=text.encode(), cflags=cflags)
        _release_compiler_memory()
        self._failed = self.bpf[b"failed"]
        self._traced = self.bpf[b"traced"]
        # read on every log line that names an address and port: mapped, a lookup is a memory
        # read (its 2 MB count in our RSS, though the kernel holds them either way)
        self._ep_mem = mmap.mmap(self.bpf[b"endpoints"].map_fd, _EP_SLOT.size << self._sock_bits,
                                 mmap.MAP_SHARED, mmap.PROT_READ)
        self._socks = self.bpf[b"socks"]
        self._lookup_batch = bcc.libbcc.lib.bpf_lookup_batch
        self._mono_to_epoch = time.time() - time.monotonic()
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        self._seed()  # after attaching: a process started in between is seen by both
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="logly-tracer", daemon=True)
        self._thread.start()
        log.info("tracer: eBPF attached (%d tracepoints, %d raw tracepoints; TCP: %s)",
                 len(self.bpf.tracepoint_fds), len(self.bpf.raw_tracepoint_fds), self.tcp_hook)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for fd in self._slow_fds:
                os.close(fd)
            self._slow_fds = []
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
            self._failed = self._traced = self._socks = None
        if self._ep_mem is not None:
            self._ep_mem.close()
            self._ep_mem = None

    def _seed(self) -> None:
        for pid in live_pids():
            if pid in self.cache.procs:
                continue
            info = read_process(pid)
            if info is not None:
                with self._lock:
                    self.cache.procs.setdefault(pid, info)

    def _poll(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(self.settings.drain_ms / 1000):
            self.sync()
            now = time.monotonic()
            if now - last_prune >= 1.0:
                epoch = now + self._mono_to_epoch
                with self._lock:
                    self.cache.prune(epoch)
                    self.conns.prune(epoch)
                last_prune = now

    def sync(self) -> None:
        """Handle every event the ring buffer holds now. The link hook calls this first, so a
        line is linked against everything the kernel saw before the line was stored."""
        if self.bpf is None:
            return
        with self._drain_lock:  # the poll thread and the hook's thread: one reader at a time
            try:
                self.bpf.ring_buffer_consume()
            except Exception:  # keep going: one bad read must not stop the tracer
                self.errors += 1
                log.exception("tracer: ring buffer read failed")

    # ---- events -------------------------------------------------------------------------------
    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        try:
            kind = ct.c_uint32.from_address(data).value
            with self._lock:
                if kind == EV_EXEC:
                    self._exec(ct.cast(data, ct.POINTER(_ExecEv)).contents)
                elif kind == EV_ARGV:
                    self._on_argv(data)
                elif kind == EV_FORK:
                    self._fork(ct.cast(data, ct.POINTER(_ForkEv)).contents)
                elif kind == EV_EXIT:
                    self._exit(ct.cast(data, ct.POINTER(_ExitEv)).contents)
                elif kind == EV_TCP:
                    self._tcp(data)
                elif kind == EV_SLOW:
                    self._slow(ct.cast(data, ct.POINTER(_SlowEv)).contents)
            self.events[EVENT_NAMES.get(kind, "other")] += 1
        except Exception:
            self.errors += 1
            log.exception("tracer: could not handle an event")
        return 0

    def _epoch(self, ns: int) -> float:
        return ns / 1e9 + self._mono_to_epoch

    def _on_argv(self, data: int) -> None:
        h = ct.cast(data, ct.POINTER(_ArgvEv)).contents
        raw = ct.string_at(data + _ARGV_HDR, min(h.len, MAXARGS * ARGLEN))
        argv = [_arg(a) for a in raw.split(b"\0")[:h.argc]]
        if h.truncated:
            argv.append("…")
        pending = self._argv
        pending.pop(h.tid, None)  # a failed execve's argv: this one replaces it
        pending[h.tid] = argv or None
        if len(pending) > MAX_PENDING_ARGV:
            del pending[next(iter(pending))]

    def _fork(self, e: _ForkEv) -> None:
        parent = self.cache.get(e.ppid)
        info = ProcInfo(pid=e.pid, ppid=e.ppid, uid=e.uid, comm=_text(e.comm),
                        start=self._epoch(e.ts), source="ebpf")
        if parent is not None:  # a fork runs the parent's program until it execs
            info.exe, info.argv, info.container = parent.exe, parent.argv, parent.container
        self.cache.put(info)

    def _exec(self, e: _ExecEv) -> None:
        info = self.cache.get(e.pid)
        when = self._epoch(e.ts)
        if info is None or info.exit is not None:
            # its fork came before we attached (or was lost): /proc still knows the parent
            info = read_process(e.pid) if info is None else None
            if info is None:
                info = ProcInfo(pid=e.pid, start=when)
            self.cache.put(info)
        info.uid = e.uid
        info.comm = _text(e.comm)
        info.exe = _text(e.filename) or None
        self.cache.set_argv(info, self._argv.pop(e.old_pid, None))
        info.source = "ebpf"
        info.container = self._container(e.pid, e.cgroup, info.container)
        if e.old_pid != e.pid:  # a thread called exec: it became the leader
            self.cache.drop(e.old_pid)

    def _container(self, pid: int, cgroup: int, inherited: str | None) -> str | None:
        cache = self._cgroups
        if cache is not None and cgroup in cache:
            return cache[cgroup]
        found = container_of(pid)
        if found is None and not Path(f"/proc/{pid}").exists():
            return inherited  # already gone: its parent's is the best guess
        if cache is not None:
            if len(cache) > 4096:
                cache.clear()
            cache[cgroup] = found
        return found

    def _exit(self, e: _ExitEv) -> None:
        when = self._epoch(e.ts)
        if self._argv:
            self._argv.pop(e.tid, None)  # its last execve failed
        if e.tid != e.pid:
            self.cache.drop(e.tid)  # the thread's own entry (threads are forks too)
        if e.group_dead:
            self.cache.mark_exit(e.pid, when, e.code if e.has_code else None)

    def _tcp(self, data: int) -> None:
        # one of these per closed socket, tens of thousands a second on a busy server: the
        # record is kept as bytes (decoded if a lookup ever finds it), an IPv4 one's keys made
        # from one unpack
        raw = ct.string_at(data + _TCP_C, _CONN_SIZE)
        last_ts, sport, dport, family = _TCP_HEAD.unpack_from(raw, _C_OFF["last_ts"])
        keys = None
        if family == socket.AF_INET:  # as _key_of makes them
            saddr, daddr = _V4_ADDRS.unpack_from(raw, _C_OFF["saddr"])
            keys = [saddr << 16 | sport] if sport else []
            if dport:
                keys.append(daddr << 16 | dport)
        self.conns.add(raw, last_ts / 1e9 + self._mono_to_epoch, keys)

    def _conn(self, c: _ConnT) -> Conn:
        n = min(c.nstates, MAX_STATES)
        first = self._epoch(c.first_ts)
        states = [(first, TCP_STATES.get(c.first_old, str(c.first_old)))]
        states += [(self._epoch(c.ts[i]), TCP_STATES.get(c.states[i], str(c.states[i])))
                   for i in range(n)]
        if c.nstates > n:
            states.append((self._epoch(c.last_ts), f"+{c.nstates - n} more"))
        last = self._epoch(c.last_ts)
        return Conn(key=c.skaddr, pid=c.pid or None, comm=_text(c.comm) or None,
                    local_address=_addr_text(c.family, c.saddr) if c.sport else None,
                    local_port=c.sport or None,
                    remote_address=_addr_text(c.family, c.daddr) if c.dport else None,
                    remote_port=c.dport or None, states=states, first=first, last=last,
                    closed=last if states[-1][1] == "CLOSE" else None,
                    bytes_sent=c.bytes_sent if self._tcp_bytes else None,
                    bytes_recv=c.bytes_recv if self._tcp_bytes else None)

    def _live_conns(self, addr: str, port: int) -> list[Conn]:
        raw = _addr_key(addr)
        mem = self._ep_mem
        if raw is None or mem is None:
            return []
        out: list[Conn] = []
        base = _ep_set(raw, port, self._sock_bits) * _EP_SLOT.size
        for a, p, _remote, _pad, sk in _EP_SLOT.iter_unpack(
                mem[base:base + _EP_SLOT.size * SOCK_WAYS]):
            if not sk or p != port or a != raw:
                continue
            # (a slot is claimed before its endpoint is written: the record must agree)
            conn = self._sock_record(sk)
            if conn is not None and _endpoint_key(addr, port) in _rec_keys(bytes(conn)):
                out.append(self._conn(conn))
        return out

    def _sock_record(self, sk: int) -> _ConnT | None:
        """A live socket's record: in one of the slots of its set in the kernel's table, read
        in one batch lookup (one syscall, without the per-call Python of bcc's tables)."""
        base = _sock_set(sk, self._sock_bits)
        with self._slot_lock:
            keys, values, count, after, start = self._slot_buf
            count.value = SOCK_WAYS
            start.value = base - 1  # (a batch starts after the index it is given)
            if self._lookup_batch(self._socks.map_fd, ct.byref(start) if base else None,
                                  ct.byref(after), keys, values, ct.byref(count)) < 0 \
                    and ct.get_errno() != errno.ENOENT:
                return None
            slots = ct.string_at(values, count.value * _CONN_SIZE)
        for off in range(0, len(slots), _CONN_SIZE):
            if int.from_bytes(slots[off:off + 8], "little") == sk:
                return _ConnT.from_buffer_copy(slots, off)
        return None

    def _slow(self, e: _SlowEv) -> None:
        info = self.cache.get(e.pid)
        if info is not None and len(info.slow) < 32:
            info.slow.append({"syscall": self._syscall_name(e.nr), "ret": e.ret,
                              "ms": round(e.duration_ns / 1e6, 3), "at": self._epoch(e.ts)})

    # ---- lookups ------------------------------------------------------------------------------
    def process(self, pid: int) -> ProcInfo | None:
        return self.cache.get(pid)

    def known(self, pid: int) -> bool:
        return pid in self.cache.procs or pid in self.cache.previous

    def process_at(self, pid: int, when: float, slack: float = 2.0) -> ProcInfo | None:
        return self.cache.at(pid, when, slack)

    def connections(self, addr: str, port: int) -> list[Conn]:
        """Sockets with this endpoint (remote: a server's view; local: a client's), closed ones
        from the cache, live ones read from the kernel's maps now."""
        addr = norm_addr(addr)
        with self._lock:
            found = self.conns.lookup(addr, port)
        if self._ep_mem is not None:
            seen = {c.key for c in found}
            found += [c for c in self._live_conns(addr, port) if c.key not in seen]
        return found

    def failed_syscalls(self, pid: int) -> dict[str, int]:
        """{"openat:EACCES": 3, ...} for this process, read from the kernel map now."""
        if self._failed is None:
            return {}
        try:
            raw = self._failed[self._failed.Key(pid)]
        except KeyError:
            return {}
        val = ct.cast(ct.byref(raw), ct.POINTER(_Fail)).contents
        out: dict[str, int] = {}
        for slot in val.s:
            if slot.count:
                name = f"{self._syscall_name(slot.nr)}:{errno.errorcode.get(slot.err, slot.err)}"
                out[name] = out.get(name, 0) + int(slot.count)
        if val.other:
            out["other"] = int(val.other)
        return out

    def watch(self, pid: int) -> None:
        """Time this process's syscalls from now on (slow ones are kept with the process)."""
        if self._traced is None or not self.settings.slow_syscalls:
            return
        with contextlib.suppress(Exception):  # (an LRU map: never full)
            self._traced[self._traced.Key(pid)] = self._traced.Leaf(1)
        if not self._slow_fds:
            with self._lock:
                if not self._slow_fds and self.bpf is not None:
                    self._attach_slow()

    def _attach_slow(self) -> None:
        """The sys_enter/sys_exit pair that times traced pids' syscalls: two more programs on
        every syscall of the machine, so attached only once there is a pid to time. Exit
        first: a syscall whose entry was not seen is skipped, never timed from a stale start.
        (Not through BCC's attach_raw_tracepoint, which allows one program per tracepoint.)"""
        bcc = _import_bcc()
        for tp, fn in ((b"sys_exit", b"slow_exit"), (b"sys_enter", b"slow_enter")):
            prog = self.bpf.load_func(fn, bcc.BPF.RAW_TRACEPOINT)
            fd = bcc.libbcc.lib.bpf_attach_raw_tracepoint(prog.fd, tp)
            if fd < 0:
                log.warning("tracer: cannot attach the slow-syscall probe to %s", tp.decode())
                return
            self._slow_fds.append(fd)

    def _syscall_name(self, nr: int) -> str:
        name = self._syscall_names.get(nr)
        if name is None:
            from bcc.syscall import syscall_name

            name = self._syscall_names[nr] = _text(syscall_name(nr))
        return name

    def lost(self) -> dict[str, int]:
        """Events the ring buffer had no room for, by kind (kernel counters)."""
        if self.bpf is None:
            return {}
        table = self.bpf[b"lost"]
        return {name: int(table[table.Key(k)].value) for k, name in KIND_NAMES.items()}

    def missed(self) -> dict[str, int | None]:
        """Runs of each probe the kernel skipped, by program: a probe that fires inside itself
        on one CPU (a packet's softirq changing a socket's state while the probe runs) is not
        run again. The kernel counts these per program (fdinfo's recursion_misses, 5.12+;
        None where it does not)."""
        if self.bpf is None:
            return {}
        out: dict[str, int | None] = {}
        for name, fn in list(self.bpf.funcs.items()):
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}", "rb") as f:
                    info = f.read()
            except OSError:
                continue
            at = info.find(b"recursion_misses:")
            key = name.decode() if isinstance(name, bytes) else str(name)
            out[key] = int(info[at + 17:].split(None, 1)[0]) if at >= 0 else None
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            procs, exited = len(self.cache.procs), len(self.cache.exited)
            conns = len(self.conns.closed)
        return {
            "mode": self.mode, "reason": None, "events": dict(self.events),
            "lost": self.lost(), "missed_runs": self.missed(), "errors": self.errors,
            "processes": procs,
            "exited_kept": exited, "closed_connections_kept": conns,
            "evicted": self.cache.evicted + self.conns.evicted,
        }
