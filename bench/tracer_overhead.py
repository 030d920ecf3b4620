"""What the eBPF tracer costs: workload slowdown, tracer CPU and RSS, events lost. One run.

    sudo .venv/bin/python bench/tracer_overhead.py [--rounds 8] [--execs 1000] [--connects 6000]
    sudo .venv/bin/python bench/tracer_overhead.py --components [--rounds 8]
    sudo .venv/bin/python bench/tracer_overhead.py --prog-time

Workloads, each timed with the tracer's probes off and on:
  exec     fork+exec of /bin/true with a few arguments, one after another (posix_spawn + wait)
  connect  TCP connect/accept/close on 127.0.0.1, one after another
  send     64-byte round trips over one loopback TCP connection (4 syscalls each)
The tracer runs in a child process of its own (as the daemon's thread would), so its CPU and
RSS are its own; the probes' in-kernel cost lands on the workload, which is what the slowdown
measures. It is started once; between blocks its probes are detached and re-attached, so
the rounds can be short and many: each round runs an off block and an on block, in
alternating order (off-on, on-off, ...), and every ratio is reported several ways: the ratio
of the medians, the median of the per-round (paired) ratios, the best-of, and the workload's
CPU time (its own and its children's: the probes run in its context, and other tenants of
this 2-core VM move CPU time much less than wall time). Nothing is dropped.
Then a paced run: 1,000 execs/s for --paced-seconds with the tracer on; every exec must arrive
(lost counters 0, exec events >= execs made). Targets: <= 5% slowdown, 0 lost at 1,000
execs/s, tracer RSS <= 100 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARGV = ["/bin/true", "--logly-bench", "some-argument", "another one"]


# ---- the tracer, in its own process ------------------------------------------------------------
class Probes:
    """Detach and re-attach the probes a BCC object has attached (by BCC's autoload names), so
    one loaded tracer can be switched off and on between timed blocks."""

    def __init__(self, b: Any) -> None:
        self.b = b
        self.tps = list(b.tracepoint_fds)
        self.raw = list(b.raw_tracepoint_fds)

    def off(self) -> None:
        for tp in self.tps:
            if tp in self.b.tracepoint_fds:
                self.b.detach_tracepoint(tp)
        for tp in self.raw:
            if tp in self.b.raw_tracepoint_fds:
                self.b.detach_raw_tracepoint(tp)

    def on(self) -> None:
        for tp in self.tps:
            if tp not in self.b.tracepoint_fds:
                self.b.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))
        for tp in self.raw:
            if tp not in self.b.raw_tracepoint_fds:
                self.b.attach_raw_tracepoint(tp=tp, fn_name=b"raw_tracepoint__" + tp)


def tracer_child() -> None:
    sys.path.insert(0, str(REPO))
    from logly.tracer.ebpf import EbpfTracer, TracerSettings

    t = EbpfTracer(TracerSettings(failed_syscalls=os.environ.get("BENCH_NO_FAILED") != "1",
                                  drain_ms=float(os.environ.get("BENCH_DRAIN_MS", "50"))))
    t.start()
    probes = Probes(t.bpf)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "stats":
            since = float(arg or 0)
            t.sync()  # (with a long --drain-ms, the events are handled here)
            ru = resource.getrusage(resource.RUSAGE_SELF)
            st = t.stats()
            with open("/proc/self/status", encoding="ascii") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            print(json.dumps({"cpu": ru.ru_utime + ru.ru_stime, "rss_kb": rss,
                              "events": st["events"],
                              "lost": st["lost"], "errors": st["errors"],
                              "probes": len(probes.tps) + len(probes.raw),
                              "bench_execs": sum(
                                  1 for c in (t.cache.procs, t.cache.previous)
                                  for p in c.values()
                                  if p.argv == ARGV and (p.start or 0) >= since)}), flush=True)
        elif cmd in ("on", "off"):
            t.sync()  # what the probes sent before going off is handled now
            getattr(probes, cmd)()
            print("ok", flush=True)
        elif cmd == "quit":
            break
    t.stop()


class Tracer:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, __file__, "--tracer-child"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let the /proc seed scan finish before timing anything

    def _ask(self, cmd: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline()

    def stats(self, since: float = 0.0) -> dict:
        """Counters; bench_execs: bench processes started since `since` (epoch)."""
        return json.loads(self._ask(f"stats {since}"))

    def switch(self, on: bool) -> None:
        assert self._ask("on" if on else "off").strip() == "ok"

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        self.p.wait(timeout=30)


# ---- workloads ---------------------------------------------------------------------------------
def _cpu() -> float:
    """CPU seconds of this process and its reaped children: the probes run in the workload's
    context, so their cost lands here, and other tenants of the machine barely move it."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    c0, t0 = _cpu(), time.perf_counter()
    fn(n)
    return time.perf_counter() - t0, _cpu() - c0


def exec_workload(n: int) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    for _ in range(n):
        pid = os.posix_spawn(ARGV[0], ARGV, env)
        os.waitpid(pid, 0)


def connect_workload(n: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    addr = srv.getsockname()
    for _ in range(n):
        c = socket.create_connection(addr)
        a, _ = srv.accept()
        c.close()
        a.close()
    srv.close()


def send_workload(n: int) -> None:
    """n round trips of 64 bytes over one loopback TCP connection: 4 syscalls each, so what
    the per-syscall probes (failed syscalls, TCP bytes) cost shows at its largest."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    msg = b"x" * 64
    for _ in range(n):
        c.send(msg)
        a.recv(64)
        a.send(msg)
        c.recv(64)
    for s in (c, a, srv):
        s.close()


def paced_execs(rate: int, seconds: float) -> int:
    env = {"PATH": "/usr/bin:/bin"}
    pending: list[int] = []
    made = 0
    t0 = time.perf_counter()
    total = int(rate * seconds)
    while made < total:
        due = t0 + made / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        pending.append(os.posix_spawn(ARGV[0], ARGV, env))
        made += 1
        if len(pending) >= 64:
            for pid in pending:
                os.waitpid(pid, 0)
            pending.clear()
    for pid in pending:
        os.waitpid(pid, 0)
    achieved = made / (time.perf_counter() - t0)
    print(f"paced: {made} execs at {achieved:,.0f}/s (asked {rate}/s)")
    return made


def hook_cost(n: int = 100_000) -> None:
    """Per-row cost of the link hook for rows that find nothing (the vast majority)."""
    sys.path.insert(0, str(REPO))
    from logly.tracer.ebpf import EbpfTracer
    from logly.tracer.link import make_hook

    t = EbpfTracer()
    t.start()
    try:
        hook = make_hook(t)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        host = socket.gethostname()
        base = (ts, "auth", host, "sshd", None, "info", "sshd", "auth_failure", "m", None, None,
                None, None, 1, 0)
        cases = {
            "no pid, no address": [base] * n,
            "pid not traced": [base[:4] + (4_000_000 + i,) + base[5:] for i in range(n)],
            "address+port, no socket": [base[:9] + ("198.51.100.7",) + base[10:11]
                                        + (1024 + i % 60000,) + base[12:] for i in range(n)],
        }
        for name, rows in cases.items():
            t0 = time.perf_counter()
            hook(None, rows, 1)  # nothing matches: the connection is never touched
            dt = time.perf_counter() - t0
            print(f"link hook, {name}: {dt / n * 1e6:.2f} µs/row ({n:,} rows)")
        linked_cost(t, base)
    finally:
        t.stop()


def linked_cost(t: Any, base: tuple, n: int = 5000) -> None:
    """Rows that do link (pids of live processes), in real write_batch transactions."""
    import tempfile

    from logly.store.sqlite import SQLiteStore
    from logly.tracer.link import make_hook

    pids = sorted(t.cache.procs)[:50]
    rows = [base[:4] + (pids[i % len(pids)],) + base[5:] for i in range(n)]
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "b.db")
        store.init()
        fid, _ = store.open_source("bench", "bench")
        timings = {}
        for name, hooks in (("without hook", []), ("with hook", [make_hook(t)])):
            t0 = time.perf_counter()
            for i in range(0, n, 500):
                store.write_batch(fid, rows[i:i + 500], [], i, 500, hooks=hooks)
            timings[name] = time.perf_counter() - t0
        with store.engine.connect() as conn:
            traces = conn.exec_driver_sql("SELECT count(*) FROM event_traces").scalar_one()
            procs = conn.exec_driver_sql("SELECT count(*) FROM process_traces").scalar_one()
        store.close()
    extra = (timings["with hook"] - timings["without hook"]) / n * 1e6
    print(f"linked rows ({n:,} rows from {len(pids)} live processes): store "
          f"{timings['without hook']:.3f}s without the hook, {timings['with hook']:.3f}s with: "
          f"+{extra:.0f} µs per linked row ({traces} traces, {procs} process rows)")


EMPTY = {  # the floor: an empty program on each kind of hook the tracer uses
    "empty tracepoint raw_syscalls:sys_exit":
        "TRACEPOINT_PROBE(raw_syscalls, sys_exit) { return 0; }",
    "empty raw tracepoint sys_exit": "RAW_TRACEPOINT_PROBE(sys_exit) { return 0; }",
    "empty tracepoint syscalls:sys_enter_execve":
        "TRACEPOINT_PROBE(syscalls, sys_enter_execve) { return 0; }",
    "empty inet_sock_set_state": "TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }",
    "empty raw tracepoint inet_sock_set_state":
        "RAW_TRACEPOINT_PROBE(inet_sock_set_state) { return 0; }",
}


def components(rounds: int, execs: int, connects: int, only: str = "") -> None:
    """Where the in-kernel cost comes from: each probe set alone (and empty programs on the
    same hooks, the floor), against no probes, by the workload's CPU time. Every variant is
    loaded once, then attached only for its own block; the blocks of a round run in a random
    order, and each variant is compared with the no-probe block of the same round (paired)."""
    sys.path.insert(0, str(REPO))
    from logly.tracer.ebpf import BPF_DIR, TracerSettings, _import_bcc, probe_cflags, sock_offsets

    bcc = _import_bcc()
    src = {n: (BPF_DIR / f"{n}.c").read_text() for n in ("common", "syscalls", "process", "tcp")}
    flags, _ = probe_cflags(TracerSettings())  # the raw TCP probe when the BTF allows it
    classic = [f for f in flags if f not in sock_offsets()[0]]
    variants: dict[str, tuple[str, list[str]]] = {  # name: (source, compile flags)
        "all probes": (src["common"] + src["syscalls"] + src["process"] + src["tcp"], flags),
        "process probes": (src["common"] + src["syscalls"] + src["process"],
                           [*flags, "-DNO_FAILED"]),
        "failed-syscall probe": (src["common"] + src["syscalls"], flags),
        # what the tracer adds once the link hook watches a pid (not the workload's own)
        "slow-syscall pair, a pid watched": (
            src["common"] + src["syscalls"].replace("int slow_", "static int slow_")
            + "RAW_TRACEPOINT_PROBE(sys_enter) { return slow_enter(ctx); }\n"
            "RAW_TRACEPOINT_PROBE(sys_exit) { return slow_exit(ctx); }\n",
            [*flags, "-DNO_FAILED", "-DSLOW_NS=10000000ULL"]),
        "tcp probe": (src["common"] + src["tcp"], flags),
        "tcp probe without byte counts": (src["common"] + src["tcp"], [*flags, "-DNO_TCP_BYTES"]),
        "tcp probe, classic tracepoint": (src["common"] + src["tcp"], classic),
        **{k: (v, flags) for k, v in EMPTY.items()},
    }
    if only:  # a comma-separated list of substrings of the variants' names
        variants = {k: v for k, v in variants.items()
                    if any(w.strip() in k for w in only.split(","))}
    loaded: dict[str, Probes] = {}
    for name, (text, cflags) in variants.items():
        b = bcc.BPF(text=text.encode(), cflags=cflags)
        if "events" in text:  # drained after each block (untimed): nothing is lost
            b[b"events"].open_ring_buffer(lambda _c, _d, _s: 0)
        if "slow" in name:  # pid 1 is watched
            b[b"traced"][b[b"traced"].Key(1)] = b[b"traced"].Leaf(1)
        loaded[name] = Probes(b)
        loaded[name].off()
    names = ["no probes", *variants]
    cpu: dict[str, dict[str, list[float]]] = {k: {"exec": [], "connect": []} for k in names}
    rng = random.Random(4)
    exec_workload(200)
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            pr = loaded.get(name)
            if pr is not None:
                pr.on()
            cpu[name]["exec"].append(timed(exec_workload, execs)[1])
            cpu[name]["connect"].append(timed(connect_workload, connects)[1])
            if pr is not None:
                pr.off()
                with contextlib.suppress(Exception):
                    pr.b.ring_buffer_consume()
    base = cpu["no probes"]
    print(f"workload CPU vs no probes, {rounds} rounds of {execs} execs and {connects} "
          "connects: paired median / ratio of medians / ratio of minimums")
    for name, by in cpu.items():
        cells = []
        for w in ("exec", "connect"):
            med, paired, best = _ratios(base[w], by[w])
            cells.append(f"{w} {paired:+5.1f}% {med:+5.1f}% {best:+5.1f}%")
        print(f"{name:42s} " + "  |  ".join(cells))
    print(f"no probes, median CPU per block: exec {statistics.median(base['exec']):.3f}s "
          f"connect {statistics.median(base['connect']):.3f}s")


def _prog_stats(fds: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(run time ns, runs) per BPF program, from its fd's fdinfo (kernel.bpf_stats_enabled)."""
    out = {}
    for name, fd in fds.items():
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            info = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        out[name] = (int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
    return out


def prog_time(execs: int, connects: int, sends: int) -> None:
    """The probes' own run time, per program and per workload operation, as the kernel counts
    it (kernel.bpf_stats_enabled, on only for this mode: it adds ~20 ns per run itself). The
    tracer runs in this process here: only the programs' time is read, not the slowdown."""
    sys.path.insert(0, str(REPO))
    from logly.tracer.ebpf import EbpfTracer, TracerSettings

    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("1")
    t = EbpfTracer(TracerSettings())
    try:
        t.start()
        assert t.bpf is not None
        fds = {name.decode(): fn.fd for name, fn in t.bpf.funcs.items()}
        for w, fn, n in (("exec", exec_workload, execs), ("connect", connect_workload, connects),
                         ("send", send_workload, sends)):
            s0 = _prog_stats(fds)
            fn(n)
            s1 = _prog_stats(fds)
            total = 0
            for name in fds:
                ns, runs = s1[name][0] - s0[name][0], s1[name][1] - s0[name][1]
                total += ns
                if runs:
                    print(f"{w:8s} {name:45s} {runs / n:7.1f} runs/op {ns / runs:6.0f} ns/run")
            print(f"{w:8s} all probes: {total / n / 1000:.2f} µs of program time per operation")
    finally:
        t.stop()
        knob.write_text(before)


def _ratios(off: list[float], on: list[float]) -> tuple[float, float, float]:
    """(ratio of medians, median of paired ratios, best-of ratio), as slowdowns in %."""
    return (100 * (statistics.median(on) / statistics.median(off) - 1),
            100 * statistics.median(b / a - 1 for a, b in zip(off, on, strict=True)),
            100 * (min(on) / min(off) - 1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracer-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--execs", type=int, default=1000)
    ap.add_argument("--connects", type=int, default=6000)
    ap.add_argument("--sends", type=int, default=20000, help="64-byte round trips per block")
    ap.add_argument("--paced-rate", type=int, default=1000)
    ap.add_argument("--paced-seconds", type=float, default=5.0)
    ap.add_argument("--no-failed-syscalls", action="store_true",
                    help="tracer without the raw_syscalls:sys_exit probe ([tracer] "
                    "failed_syscalls = false), to see what that probe costs")
    ap.add_argument("--drain-ms", type=float, default=50.0,
                    help="the tracer's drain period ([tracer] drain_ms); a long one (10000) "
                    "leaves its Python idle during the timed blocks (it drains between them), "
                    "to tell its interference on this small VM from the probes' in-kernel cost")
    ap.add_argument("--components", action="store_true",
                    help="only the A/B of each probe set (and empty programs) by workload CPU")
    ap.add_argument("--prog-time", action="store_true",
                    help="only the probes' own run time per program and per operation "
                    "(kernel.bpf_stats_enabled)")
    ap.add_argument("--only", default="", help="with --components: the variants whose names "
                    "contain one of these comma-separated words")
    a = ap.parse_args()
    if a.tracer_child:
        tracer_child()
        return 0
    if os.geteuid() != 0:
        print("needs root (eBPF)", file=sys.stderr)
        return 2
    if a.prog_time:
        prog_time(a.execs, a.connects, a.sends)
        return 0
    if a.components:
        components(a.rounds, a.execs // 5, a.connects // 3, a.only)
        return 0
    if a.no_failed_syscalls:
        os.environ["BENCH_NO_FAILED"] = "1"  # read by the tracer child
    os.environ["BENCH_DRAIN_MS"] = str(a.drain_ms)

    times: dict[str, dict[str, list[float]]] = {w: {"off": [], "on": []}
                                                for w in ("exec", "connect", "send")}
    cpus: dict[str, dict[str, list[float]]] = {w: {"off": [], "on": []}
                                               for w in ("exec", "connect", "send")}

    def run(phase: str) -> None:
        for w, fn, n in (("exec", exec_workload, a.execs),
                         ("connect", connect_workload, a.connects),
                         ("send", send_workload, a.sends)):
            wall, used = timed(fn, n)
            times[w][phase].append(wall)
            cpus[w][phase].append(used)

    cpu: list[float] = []
    wall_on: list[float] = []
    rss: list[int] = []
    lost_total = 0
    tr = Tracer()
    nprobes = tr.stats()["probes"]
    tr.switch(False)
    exec_workload(200)  # warm caches (page cache, dentries) before the first timed round
    connect_workload(1000)
    send_workload(2000)
    for r in range(a.rounds):
        # alternate the order (off-on, on-off, ...) so drift and ordering effects cancel out
        for phase in (("off", "on") if r % 2 == 0 else ("on", "off")):
            if phase == "off":
                run("off")
                continue
            tr.switch(True)
            before = tr.stats()
            t0 = time.perf_counter()
            run("on")
            time.sleep(0.2)  # let the poll thread drain before reading its counters
            after = tr.stats()
            wall_on.append(time.perf_counter() - t0)
            tr.switch(False)
            cpu.append(after["cpu"] - before["cpu"])
            rss.append(after["rss_kb"])
            lost_round = sum(after["lost"].values()) - sum(before["lost"].values())
            lost_total += lost_round
        print(f"round {r + 1}: exec off {times['exec']['off'][-1]:.3f}s on "
              f"{times['exec']['on'][-1]:.3f}s | connect off {times['connect']['off'][-1]:.3f}s"
              f" on {times['connect']['on'][-1]:.3f}s | send off {times['send']['off'][-1]:.3f}s"
              f" on {times['send']['on'][-1]:.3f}s | tracer cpu {cpu[-1]:.2f}s "
              f"rss {rss[-1] / 1024:.0f} MB lost {lost_round}")

    # this VM's run-to-run noise is large (other sessions share its 2 cores): the median shows
    # the typical cost, the paired ratio cancels drift, the best-of (least disturbed runs) and
    # the CPU time the intrinsic one
    print(f"{a.rounds} rounds, {nprobes} probes attached when on")
    for w, n in (("exec", a.execs), ("connect", a.connects), ("send", a.sends)):
        off, on = statistics.median(times[w]["off"]), statistics.median(times[w]["on"])
        med, paired, best = _ratios(times[w]["off"], times[w]["on"])
        cmed, cpaired, _ = _ratios(cpus[w]["off"], cpus[w]["on"])
        print(f"{w:8s} {n} ops/block: median off {off:.3f}s ({n / off:,.0f}/s) on {on:.3f}s "
              f"({n / on:,.0f}/s) | wall slowdown: median {med:+.1f}%, paired {paired:+.1f}%, "
              f"best-of {best:+.1f}% | workload CPU: median {cmed:+.1f}%, paired "
              f"{cpaired:+.1f}%")
    print(f"tracer CPU while on: {sum(cpu) / sum(wall_on) * 100:.1f}% of one core "
          f"({sum(cpu):.2f}s over {sum(wall_on):.2f}s); lost while on: {lost_total}")
    print(f"tracer RSS: {max(rss) / 1024:.1f} MB (max over rounds)")

    hook_cost()

    tr.switch(True)
    before = tr.stats()
    t_paced = time.time()
    made = paced_execs(a.paced_rate, a.paced_seconds)
    time.sleep(0.5)
    after = tr.stats(t_paced)
    tr.close()
    lost = {k: after["lost"][k] - before["lost"].get(k, 0) for k in after["lost"]}
    got = after["events"].get("exec", 0) - before["events"].get("exec", 0)
    print(f"paced: exec events handled {got} for {made} execs; bench execs in cache "
          f"{after['bench_execs']}; lost {lost}; decode errors {after['errors']}; "
          f"tracer RSS {after['rss_kb'] / 1024:.1f} MB; "
          f"tracer CPU {after['cpu'] - before['cpu']:.2f}s")
    return 0 if sum(lost.values()) == 0 and after["bench_execs"] >= made else 1


if __name__ == "__main__":
    raise SystemExit(main())
