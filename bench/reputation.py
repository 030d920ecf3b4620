"""What IP reputation costs: ingest with reputation + GeoIP + a 100k-entry blocklist against
all three off, and how fast `logly ip` answers on a large database.

    python bench/reputation.py                                  # 500k lines; 10M-event DB
    python bench/reputation.py --lines 200000 --events 1000000  # quicker
    python bench/reputation.py --skip-db --json bench/out/reputation.json
    python bench/reputation.py --skip-db --serial --runs 3      # one process: steadier
    python bench/reputation.py --events 10000000 --keep /tmp/rep10m.db   # reuse the big DB
    python bench/reputation.py --skip-ingest --keep /tmp/rep10m.db --new-process-only --repeat 20

Part 1 writes one auth.log with bench/ingest.py's generator (sshd conversations from a few
hundred attacking addresses, PAM, sudo, cron, UFW...) and ingests it twice into fresh
databases through `logly.ingest.ingest_input`, exactly as `logly ingest` does: once with no
hook, once with the reputation hook built from a config naming a generated 100k-entry FireHOL
style netset and MaxMind's GeoLite2 City and ASN test databases (../shared/geoip). The order
alternates over --runs. The hook's own time is measured too (wall time inside the hook).

Part 2 builds a database of --events events directly (executemany through
SQLiteStore.write_batch with the reputation hook, no parsing) from --addresses addresses with
a heavy-tailed distribution, then times `logly ip` in-process (`logly.cli.main`, JSON out,
after one warm-up call so imports are not counted) for the busiest address, a typical one, a
/64, a /24 and an address never seen, and `logly ips --top 20`; the query alone
(`ip_report` on an open store); and, what issue 5 asks (50 ms on 10M events), each of those
as a new process, the way a shell runs it: the `logly` console script next to this Python
(else `python -c` calling the same `logly.cli_entry.main`), JSON and table, two warm-up runs
(page cache, bytecode cache), then the median of --repeat runs of wall time, with the
child's CPU time and a bare `python -c pass` for scale. PYTHONDONTWRITEBYTECODE is dropped
from the children's environment: an installed package has its bytecode compiled, and
without it every run compiles Logly's modules anew. The machine may be busy with other
work: medians, and the CPU time says how much of the wall time was waiting.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import ipaddress
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GEO = REPO.parent / "shared" / "geoip"

from logly.config import load_config  # noqa: E402
from logly.ingest import ingest_input  # noqa: E402
from logly.parsers.rules import RuleSet  # noqa: E402
from logly.sources.files import open_input  # noqa: E402
from logly.store.sqlite import SQLiteStore  # noqa: E402
from logly.tracer.reputation import Reputation  # noqa: E402


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_ingest", REPO / "bench" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.generate


def write_blocklist(path: Path, entries: int, seed: int = 3) -> None:
    """FireHOL-style: a comment header, then addresses and CIDRs (v4 and some v6)."""
    rng = random.Random(seed)
    lines = ["#", "# bench_level1 (generated)", "#", "# ipv4 hash:net ipset", "#"]
    for i in range(entries):
        if i % 10 == 0:
            plen = rng.randrange(16, 29)
            net = ipaddress.ip_network((rng.randrange(1 << 24, 0xDF000000), plen), strict=False)
            lines.append(str(net))
        elif i % 50 == 1:
            lines.append(f"2001:db8:{rng.randrange(0x10000):x}::/48")
        else:
            lines.append(str(ipaddress.ip_address(rng.randrange(1 << 24, 0xDF000000))))
    path.write_text("\n".join(lines) + "\n")


class TimedHook:
    """The reputation hook, with the wall time and the CPU time spent inside it added up (on a
    busy machine the two differ: wall time includes waiting for a core)."""

    def __init__(self, hook: Reputation) -> None:
        self.hook, self.seconds, self.cpu_seconds, self.calls = hook, 0.0, 0.0, 0
        self.before_insert = hook.before_insert  # runs where it runs in ingest

    def __call__(self, conn, rows, first_id) -> None:  # type: ignore[no-untyped-def]
        t, c = time.perf_counter(), time.thread_time()
        self.hook(conn, rows, first_id)
        self.seconds += time.perf_counter() - t
        self.cpu_seconds += time.thread_time() - c
        self.calls += 1


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (the parser process)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ingest_once(log: Path, db: Path, rules: RuleSet, hooks: list, serial: bool = False
                ) -> dict:
    if db.exists():
        db.unlink()
    store = SQLiteStore(db)
    store.init()
    inp = open_input(str(log))
    t, cpu = time.perf_counter(), _cpu()
    try:
        s = ingest_input(store, rules, inp, year=2025, hooks=hooks,
                         parallel=False if serial else None)
    finally:
        inp.close()
    seconds = time.perf_counter() - t
    cpu = _cpu() - cpu
    with store.engine.connect() as conn:
        reps = conn.exec_driver_sql("SELECT count(*) FROM ip_reputation").scalar_one()
    store.close()
    return {"lines": s.lines, "events": s.events, "seconds": round(seconds, 2),
            "lines_per_second": round(s.lines / seconds), "cpu_seconds": round(cpu, 2),
            "reputation_rows": reps}


def part1(args: argparse.Namespace, work: Path) -> dict:
    log = work / "auth.log"
    t = time.perf_counter()
    _generator()(log, args.lines, attackers=args.attackers)
    print(f"generated {args.lines:,} lines ({log.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    bl = work / "bench_level1.netset"
    write_blocklist(bl, args.blocklist)
    cfg = work / "logly.toml"
    cfg.write_text(f'[reputation]\nblocklists = ["{bl}"]\n'
                   f'geoip_city = "{GEO / "GeoLite2-City-Test.mmdb"}"\n'
                   f'geoip_asn = "{GEO / "GeoLite2-ASN-Test.mmdb"}"\n'
                   'allowlist = ["198.51.100.0/26"]\n')
    rules = RuleSet.load()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    hook_seconds = []
    for i in range(args.runs):
        for mode in (("off", "on") if i % 2 == 0 else ("on", "off")):
            hooks: list = []
            timed = None
            if mode == "on":
                t = time.perf_counter()
                rep = Reputation.from_config(load_config(cfg))
                load = time.perf_counter() - t
                assert len(rep.blocklists) == args.blocklist, len(rep.blocklists)
                assert rep.geoip is not None and rep.geoip.enabled
                timed = TimedHook(rep)
                hooks = [timed]
            r = ingest_once(log, work / f"{mode}.db", rules, hooks, args.serial)
            if timed:
                r["hook_seconds"] = round(timed.seconds, 2)
                r["hook_cpu_seconds"] = round(timed.cpu_seconds, 2)
                r["hook_cpu_us_per_line"] = round(timed.cpu_seconds / r["lines"] * 1e6, 2)
                r["hook_calls"] = timed.calls
                r["setup_seconds"] = round(load, 2)  # blocklist parse + GeoIP open
                hook_seconds.append(timed.seconds)
            runs[mode].append(r)
            print(f"  {mode:>3}: {r}", flush=True)
    off = statistics.median(r["lines_per_second"] for r in runs["off"])
    on = statistics.median(r["lines_per_second"] for r in runs["on"])
    # pairwise (each "on" against the "off" run next to it) is less exposed to drift in load
    pairs = [round((a["seconds"] / b["seconds"] - 1) * 100, 1)
             for a, b in zip(runs["on"], runs["off"], strict=True)]
    cpu_off = statistics.median(r["cpu_seconds"] for r in runs["off"])
    cpu_on = statistics.median(r["cpu_seconds"] for r in runs["on"])
    return {"lines": args.lines, "attackers": args.attackers, "blocklist_entries": args.blocklist,
            "serial": args.serial,
            "runs": runs, "off_lines_per_second": off, "on_lines_per_second": on,
            "slowdown_percent": round((off - on) * 100 / off, 1),
            "pairwise_slowdown_percent": pairs,
            "cpu_overhead_percent": round((cpu_on - cpu_off) * 100 / cpu_off, 1)}


# ---- part 2: a big database -------------------------------------------------------------------
ACTIONS = (("auth_failure", 50), ("invalid_user", 20), ("preauth_disconnect", 15),
           ("scan", 4), ("firewall_block", 6), ("auth_success", 2), ("connection", 3))


def build_db(db: Path, events: int, addresses: int, batch: int = 50_000) -> dict:
    rng = random.Random(9)
    v4 = [f"{rng.choice((45, 61, 103, 185, 193, 218, 222))}.{rng.randrange(256)}."
          f"{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(addresses * 9 // 10)]
    v6 = [f"2001:db8:{rng.randrange(64):x}:{rng.randrange(4):x}::{rng.randrange(1, 0xffff):x}"
          for _ in range(addresses - len(v4))]
    pool = v4 + v6
    rng.shuffle(pool)
    # heavy tail: weight 1/rank, so the busiest address sends ~1/ln(n) of everything
    cum, total = [], 0.0
    for i in range(len(pool)):
        total += 1.0 / (i + 1)
        cum.append(total)
    acts = [a for a, w in ACTIONS for _ in range(w)]
    users = ["root", "admin", "test", "oracle", "ubuntu", "git", "postgres"] + \
        [f"u{i}" for i in range(500)]
    metas = {"auth_failure": '{"method": "password", "proto": "ssh2", "rule": "sshd/failed"}',
             "invalid_user": '{"rule": "sshd/invalid-user"}',
             "preauth_disconnect": '{"rule": "sshd/preauth-closed"}',
             "scan": '{"rule": "sshd/scan-no-ident"}',
             "firewall_block": '{"firewall": "ufw", "rule": "kernel/ufw-block"}',
             "auth_success": '{"method": "publickey", "rule": "sshd/accepted"}',
             "connection": '{"rule": "sshd/connection"}'}
    store = SQLiteStore(db)
    store.init()
    rep = TimedHook(Reputation.from_config(None))
    fid, _ = store.open_source("bench-big", "/var/log/auth.log")
    store.drop_event_indexes()  # as `logly ingest` does for a large load
    start = datetime.now(UTC) - timedelta(days=30)
    step = 30 * 86400 / events
    t0 = time.perf_counter()
    choices = rng.choices
    done = 0
    while done < events:
        n = min(batch, events - done)
        ips = choices(pool, cum_weights=cum, k=n)
        rows = []
        for j in range(n):
            k = done + j
            a = acts[k % len(acts)]
            ts = (start + timedelta(seconds=k * step)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            port = 1000 + k % 60 if a == "firewall_block" else 1024 + k % 60000
            rows.append((ts, "syslog", "web1", "kernel" if a == "firewall_block" else "sshd",
                         None if a == "firewall_block" else 1000 + k % 30000,
                         "warning", "ssh", a, f"synthetic {a} {k}", ips[j],
                         None if a in ("scan", "firewall_block", "connection")
                         else users[k % len(users)], port, metas[a], fid, k * 100))
        store.write_batch(fid, rows, [], (done + n) * 100, n, hooks=[rep])
        done += n
        if done % 1_000_000 == 0 or done == events:
            print(f"  {done:,} events, {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    store.ensure_indexes()
    with store.engine.connect() as conn:
        reps = conn.exec_driver_sql("SELECT count(*) FROM ip_reputation").scalar_one()
    store.close()
    return {"events": events, "addresses": len(pool), "reputation_rows": reps,
            "build_seconds": round(t1 - t0, 1), "hook_seconds": round(rep.seconds, 1),
            "index_seconds": round(time.perf_counter() - t1, 1),
            "size_mb": round(db.stat().st_size / 1e6)}


def _cli_main():  # type: ignore[no-untyped-def]
    from logly.cli import app, main
    from logly.cli_ip import register

    if not any(c.name == "ip" for c in app.registered_commands):
        register(app)
    return main


def _stats(times: list[float]) -> dict:
    first, rest = times[0], sorted(times[1:])
    return {"first_ms": round(first, 1), "median_ms": round(statistics.median(rest), 1),
            "p95_ms": round(rest[max(0, int(len(rest) * 0.95) - 1)], 1),
            "max_ms": round(rest[-1], 1)}


def time_cli(main, argv: list[str], repeat: int) -> dict:  # type: ignore[no-untyped-def]
    """`logly ...` in-process: typer, config, model file, a new engine, query, output."""
    times, code = [], None
    for _ in range(repeat + 1):  # the first call warms imports and the page cache
        buf = io.StringIO()
        t = time.perf_counter()
        with redirect_stdout(buf), redirect_stderr(io.StringIO()):
            code = main(argv)
        times.append((time.perf_counter() - t) * 1000)
    return {"exit": int(code), **_stats(times), "bytes": len(buf.getvalue())}


def time_library(db: Path, target: str, repeat: int) -> dict:
    """The query alone (`ip_report` on an open store), as the daemon or an API would call it."""
    from logly.tracer.reputation import load_for_cli
    from logly.tracer.reputation_query import ip_report, parse_target

    store = SQLiteStore(db)
    rep = load_for_cli(None)
    times, found = [], None
    for _ in range(repeat + 1):
        t = time.perf_counter()
        found = ip_report(store, rep, parse_target(target), datetime.now(UTC))
        times.append((time.perf_counter() - t) * 1000)
    store.close()
    return {"found": found is not None, **_stats(times)}


TARGET_MS = 50.0


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "160"
    return env


def logly_command() -> tuple[list[str], str]:
    """The installed console script if it starts at logly.cli_entry, else the same via -c."""
    script = Path(sys.executable).parent / "logly"
    if script.is_file() and "logly.cli_entry" in script.read_text(errors="replace"):
        return [str(script)], str(script)
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            "from logly.cli_entry import main; sys.exit(main())")
    return [sys.executable, "-c", code], "python -c 'from logly.cli_entry import main'"


def time_process(argv: list[str], repeat: int, warm: int = 2) -> dict:
    """Wall and CPU time of a new process, median over `repeat` runs after `warm` runs."""
    env, walls, cpus, code, out = _child_env(), [], [], None, b""
    for i in range(warm + repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env, cwd=tempfile.gettempdir())
        wall = (time.perf_counter() - t) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        code, out = proc.returncode, proc.stdout
        if i >= warm:
            walls.append(wall)
            cpus.append((after.ru_utime - before.ru_utime
                         + after.ru_stime - before.ru_stime) * 1000)
    walls.sort()
    return {"exit": code, "median_ms": round(statistics.median(walls), 1),
            "min_ms": round(walls[0], 1), "p90_ms": round(walls[int(len(walls) * 0.9) - 1], 1),
            "cpu_median_ms": round(statistics.median(cpus), 1), "bytes": len(out),
            "runs": repeat}


def new_processes(cases: dict[str, list[str]], base: list[str], repeat: int) -> dict:
    cmd, shown = logly_command()
    repeat = max(repeat, 10)
    out = {"command": shown, "target_ms": TARGET_MS,
           "python_pass": time_process([sys.executable, "-c", "pass"], repeat)}
    print(f"  new process ({shown}), median of {repeat} runs, target {TARGET_MS:g} ms:",
          flush=True)
    print(f"  {'case':>18} {'exit':>4} {'median':>7} {'min':>6} {'p90':>6} {'cpu':>6}",
          flush=True)
    p = out["python_pass"]
    print(f"  {'python -c pass':>18} {p['exit']:>4} {p['median_ms']:>7} {p['min_ms']:>6} "
          f"{p['p90_ms']:>6} {p['cpu_median_ms']:>6}", flush=True)
    for name, argv in cases.items():
        for fmt, extra in (("json", ["--json"]), ("table", [])):
            r = time_process(cmd + [a for a in argv if a != "--json"] + extra + base, repeat)
            out[f"{name}_{fmt}"] = r
            verdict = "ok" if r["median_ms"] <= TARGET_MS else "OVER"
            print(f"  {name + ' ' + fmt:>18} {r['exit']:>4} {r['median_ms']:>7} "
                  f"{r['min_ms']:>6} {r['p90_ms']:>6} {r['cpu_median_ms']:>6}  {verdict}",
                  flush=True)
    return out


def part2(args: argparse.Namespace, work: Path) -> dict:
    db = Path(args.keep) if args.keep else work / "big.db"
    built = None
    if not db.exists():
        print(f"building {args.events:,} events ...", flush=True)
        built = build_db(db, args.events, args.addresses)
        print(f"  {built}", flush=True)
    store = SQLiteStore(db)
    with store.engine.connect() as conn:
        events = conn.exec_driver_sql("SELECT max(id) FROM log_events").scalar_one()
        busiest = conn.exec_driver_sql(
            "SELECT address FROM ip_reputation WHERE address NOT LIKE '%/%' "
            "ORDER BY json_extract(counts, '$.events') DESC LIMIT 1").scalar_one()
        rows = conn.exec_driver_sql("SELECT count(*) FROM ip_reputation").scalar_one()
        typical = conn.exec_driver_sql(
            "SELECT address FROM ip_reputation WHERE address NOT LIKE '%/%' "
            "LIMIT 1 OFFSET ?", (rows // 2,)).scalar_one()
        net = conn.exec_driver_sql("SELECT address FROM ip_reputation WHERE address LIKE "
                                   "'%/64' LIMIT 1").scalar()
        busiest_events = conn.exec_driver_sql(
            "SELECT count(*) FROM log_events WHERE ip_address = ?", (busiest,)).scalar_one()
    store.close()
    v4 = busiest if ":" not in busiest else "45.1.2.3"
    cidr = str(ipaddress.ip_network(f"{v4}/24", strict=False))
    main = _cli_main()
    cfg = work / "empty.toml"
    cfg.write_text("")
    base = ["--db", str(db), "--config", str(cfg)]
    cases = {"busiest": ["ip", busiest, "--json"], "typical": ["ip", typical, "--json"],
             "never_seen": ["ip", "192.0.2.123", "--json"], "cidr_24": ["ip", cidr, "--json"],
             "busiest_table": ["ip", busiest]}
    if net:
        cases["net_64"] = ["ip", net, "--json"]
    cases["ips_top20"] = ["ips", "--top", "20", "--json"]
    head = {"db": str(db), "events": events, "reputation_rows": rows, "built": built,
            "busiest": busiest, "busiest_events": busiest_events, "typical": typical}
    if args.new_process_only:
        return {**head, "new_process": new_processes(
            {k: v for k, v in cases.items() if k != "busiest_table"}, base, args.repeat)}
    results, library = {}, {}
    for name, argv in cases.items():
        results[name] = time_cli(main, argv + base, args.repeat)
        print(f"  {name:>13}: {results[name]}", flush=True)
        if argv[0] == "ip" and "--json" in argv:
            library[name] = time_library(db, argv[1], args.repeat)
            print(f"  {'':>13}  query alone: {library[name]}", flush=True)
    procs = new_processes({k: v for k, v in cases.items() if k != "busiest_table"}, base,
                          args.repeat)
    return {**head, "in_process": results, "query_alone": library, "new_process": procs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=500_000)
    ap.add_argument("--attackers", type=int, default=400)
    ap.add_argument("--blocklist", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--serial", action="store_true",
                    help="Parse and store in one process (as for small inputs): the wall "
                         "time then follows CPU time, which a busy machine disturbs less.")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--addresses", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--keep", help="Big database path: reused if it exists, else built there.")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-db", action="store_true")
    ap.add_argument("--new-process-only", action="store_true",
                    help="Part 2: only `logly ip`/`ips` as new processes.")
    ap.add_argument("--json", help="Also write the results here.")
    args = ap.parse_args()
    out: dict = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="logly-rep-") as tmp:
        work = Path(tmp)
        if not args.skip_ingest:
            print("part 1: ingest, reputation off vs on", flush=True)
            out["ingest"] = part1(args, work)
            i = out["ingest"]
            print(f"off {i['off_lines_per_second']:,} lines/s, on {i['on_lines_per_second']:,} "
                  f"lines/s: slowdown {i['slowdown_percent']}% (pairwise "
                  f"{i['pairwise_slowdown_percent']}), CPU overhead "
                  f"{i['cpu_overhead_percent']}%", flush=True)
        if not args.skip_db:
            print("part 2: `logly ip` latency", flush=True)
            out["ip"] = part2(args, work)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
