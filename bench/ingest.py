"""`logly ingest` against `fail2ban-regex` on the same generated auth.log, in one run.

    python bench/ingest.py                          # 1M lines
    python bench/ingest.py --lines 200000 --runs 3 --json bench/out/ingest.json

The log is deterministic for a seed: sshd conversations (failures, invalid users, preauth
closes, accepted keys and passwords, kex errors, `message repeated`), PAM, sudo, su, CRON,
systemd-logind and UFW kernel lines, from a few hundred attacking addresses among legitimate
users. Both tools read the same file; Logly parses and stores every line in a fresh SQLite
database, fail2ban-regex matches its Debian `sshd` filter (Debian package `fail2ban`).

Peak RSS is the largest resident size of any process of the command (wait4's ru_maxrss covers
the command and the children it waited for) and, sampled every 20 ms, the sum over its
process tree (Logly parses a large file in forked processes while the caller writes), both as
RSS (a page shared after the fork counts in every process) and as PSS (it counts once). CPU s
is user + system time of the command and its children. Not a test: the figures depend on the
machine; run it several times on a busy one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path

import psutil

FILTER = "/etc/fail2ban/filter.d/sshd.conf"
USERS = ("alice", "bob", "carol", "deploy", "backup")
GUESSES = ("root", "admin", "test", "oracle", "ubuntu", "pi", "postgres", "git", "user",
           "guest", "ftp", "mysql", "support", "nagios", "hadoop", "jenkins")


def _attackers(rng: random.Random, n: int) -> list[str]:
    nets = ("45.", "61.", "103.", "185.", "193.", "218.", "222.")
    out = [f"{rng.choice(nets)}{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
           for _ in range(n - n // 10)]
    out += [f"2001:db8:{rng.randrange(0x10000):x}::{rng.randrange(1, 0x10000):x}"
            for _ in range(n // 10)]
    return out


def generate(path: Path, lines: int, seed: int = 7, attackers: int = 400) -> dict[str, int]:
    """Write `lines` lines; returns how many of each kind were written."""
    rng = random.Random(seed)
    bad = _attackers(rng, attackers)
    good = [f"198.51.100.{i}" for i in range(1, 40)]
    t = 1_763_942_400.0  # 2025-11-24 00:00 UTC; the file's year comes from --year
    pid = 20_000
    kinds: dict[str, int] = {}
    out: list[str] = []
    written = 0

    def emit(prog: str, p: int | None, msg: str) -> None:
        nonlocal t, written
        t += rng.random() * 0.05
        stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(t))
        out.append(f"{stamp} web1 {prog}[{p}]: {msg}\n" if p else f"{stamp} web1 {prog}: {msg}\n")
        written += 1

    with open(path, "w", encoding="utf-8") as fh:
        while written < lines:
            pid += 1
            port = rng.randrange(1024, 65535)
            r = rng.random()
            if r < 0.55:  # a brute-force conversation
                ip = rng.choice(bad)
                user = rng.choice(GUESSES)
                sshd = rng.choice(("sshd", "sshd-session"))
                if rng.random() < 0.4:
                    emit(sshd, pid, f"Invalid user {user} from {ip} port {port}")
                    kinds["invalid_user"] = kinds.get("invalid_user", 0) + 1
                    emit(sshd, pid, "pam_unix(sshd:auth): check pass; user unknown")
                    emit(sshd, pid, f"pam_unix(sshd:auth): authentication failure; logname= "
                                    f"uid=0 euid=0 tty=ssh ruser= rhost={ip}")
                    emit(sshd, pid, f"Failed password for invalid user {user} from {ip} port "
                                    f"{port} ssh2")
                else:
                    emit(sshd, pid, f"pam_unix(sshd:auth): authentication failure; logname= "
                                    f"uid=0 euid=0 tty=ssh ruser= rhost={ip}  user={user}")
                    emit(sshd, pid, f"Failed password for {user} from {ip} port {port} ssh2")
                    if rng.random() < 0.3:
                        emit(sshd, pid, "message repeated 2 times: [ Failed password for "
                                        f"{user} from {ip} port {port} ssh2]")
                kinds["auth_failure"] = kinds.get("auth_failure", 0) + 1
                emit(sshd, pid, f"Connection closed by authenticating user {user} {ip} port "
                                f"{port} [preauth]")
            elif r < 0.62:  # scanners and broken clients
                ip = rng.choice(bad)
                msg = rng.choice((
                    f"Did not receive identification string from {ip} port {port}",
                    f"banner exchange: Connection from {ip} port {port}: invalid format",
                    f"Unable to negotiate with {ip} port {port}: no matching key exchange "
                    "method found. Their offer: diffie-hellman-group1-sha1 [preauth]",
                    f"Connection reset by {ip} port {port} [preauth]",
                ))
                emit("sshd", pid, msg)
                kinds["scan"] = kinds.get("scan", 0) + 1
            elif r < 0.70:  # legitimate logins
                ip, user = rng.choice(good), rng.choice(USERS)
                how = rng.choice(("publickey", "password"))
                emit("sshd", pid, f"Accepted {how} for {user} from {ip} port {port} ssh2"
                     + (": ED25519 SHA256:Xb1rRKyTW3aKVpQ2Yu2dG3bKkOMcAD5H8bW9uD7sA0E"
                        if how == "publickey" else ""))
                emit("sshd", pid, f"pam_unix(sshd:session): session opened for user {user}"
                                  f"(uid=1000) by (uid=0)")
                emit("systemd-logind", 612, f"New session {pid} of user {user}.")
                emit("sshd", pid, f"pam_unix(sshd:session): session closed for user {user}")
                emit("systemd-logind", 612, f"Session {pid} logged out. Waiting for "
                                            "processes to exit.")
            elif r < 0.78:
                user = rng.choice(USERS)
                emit("sudo", None, f"   {user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; "
                                   f"COMMAND=/usr/bin/systemctl restart nginx")
                emit("sudo", None, f"pam_unix(sudo:session): session opened for user "
                                   f"root(uid=0) by {user}(uid=1000)")
                emit("sudo", None, "pam_unix(sudo:session): session closed for user root")
            elif r < 0.90:
                emit("CRON", pid, "pam_unix(cron:session): session opened for user root(uid=0) "
                                  "by (uid=0)")
                emit("CRON", pid, "(root) CMD (command -v debian-sa1 > /dev/null && "
                                  "debian-sa1 1 1)")
                emit("CRON", pid, "pam_unix(cron:session): session closed for user root")
            elif r < 0.97:
                ip = rng.choice(bad)
                emit("kernel", None, f"[UFW BLOCK] IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:"
                                     f"65:43:21:08:00 SRC={ip if ':' not in ip else '45.1.2.3'} "
                                     f"DST=192.0.2.10 LEN=44 TOS=0x00 PREC=0x00 TTL=241 "
                                     f"ID=54321 PROTO=TCP SPT={port} DPT=3389 WINDOW=1024 RES=0x00"
                                     " SYN URGP=0")
            else:
                user = rng.choice(USERS)
                emit("su", pid, f"(to root) {user} on pts/1")
                emit("su", pid, f"pam_unix(su:session): session opened for user root(uid=0) "
                                f"by {user}(uid=1000)")
            if len(out) >= 10_000:
                fh.writelines(out)
                out.clear()
        fh.writelines(out[: max(0, len(out) - (written - lines))])
    return kinds


def _pss(pid: int) -> int:
    """Proportional set size: a page shared by n processes (a forked parser shares the
    caller's) counts 1/n in each, so the sum over a process tree counts it once; RSS summed
    counts it in every process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float | int | str]:
    """Wall time, peak RSS of any one process, peak RSS summed over the process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tree_peak = tree_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak, tree_pss
        try:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                total = pss = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                        pss += _pss(p.pid)
                tree_peak = max(tree_peak, total)
                tree_pss = max(tree_pss, pss)
                done.wait(0.02)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN, growing monotonically,
    # so run each command in a fresh helper process to read its own maximum
    return {"wall_s": wall, "code": proc.returncode, "tree_peak_mb": tree_peak / 2**20,
            "tree_pss_mb": tree_pss / 2**20,
            "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")}


def run_isolated(cmd: list[str], env: dict[str, str]) -> dict[str, float | int | str]:
    """measure() in a forked process, so ru_maxrss of RUSAGE_CHILDREN is this command's own."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res = measure(cmd, env)
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        res["max_proc_mb"] = ru.ru_maxrss / 1024
        res["cpu_s"] = ru.ru_utime + ru.ru_stime
        os.write(w, json.dumps(res).encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def floor(log: Path, db: Path) -> dict[str, float]:
    """What each side of `logly ingest --no-enrich` costs alone, in this process: the parser's
    work (parse_batches, then marshal for the hand-off) and the writer's (write_batch with the
    indexes ingest keeps, then the index rebuild), by CPU time. Their sum spread over every CPU,
    or the writer alone if that is longer (one SQLite writer), bounds the wall time of any
    split of the same work on this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from logly.ingest import BULK_DROP_INDEXES, _decode_batch, _encode_batch, parse_batches
    from logly.parsers.rules import RuleSet
    from logly.sources.files import open_input
    from logly.store.sqlite import SQLiteStore

    store = SQLiteStore(db)
    store.init()
    inp = open_input(str(log))
    file_id, _ = store.open_source(inp.identity, inp.path, inp.kind, inp.device, inp.inode)
    store.drop_event_indexes(BULK_DROP_INDEXES)
    parse = write = 0.0
    lines = 0
    batches = parse_batches(inp, RuleSet.load(), file_id, 0, tz=UTC, year=2025)
    while True:
        t = time.process_time()
        b = next(batches, None)
        if b is None:
            break
        b = _decode_batch(_encode_batch(b))  # the hand-off, as ingest's processes make it
        t2 = time.process_time()
        store.write_batch(file_id, b.rows, b.unparsed, b.next_offset, b.lines)
        write += time.process_time() - t2
        parse += t2 - t
        lines += b.lines
    t = time.process_time()
    store.ensure_indexes()
    write += time.process_time() - t
    store.close()
    cpus = len(os.sched_getaffinity(0))
    best = max(write, (parse + write) / cpus)
    return {"lines": lines, "parse_us": parse / lines * 1e6, "write_us": write / lines * 1e6,
            "cpus": cpus, "best_lines_s": lines / best}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1, help="repeat each tool; the best run counts")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="write the generated log here and keep it")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip timing the parser's and the writer's work each alone")
    args = ap.parse_args()

    logly = shutil.which("logly") or str(Path(sys.executable).with_name("logly"))
    f2b = shutil.which("fail2ban-regex")
    with tempfile.TemporaryDirectory(prefix="logly-bench-") as tmp:
        log = args.keep or Path(tmp) / "auth.log"
        t0 = time.perf_counter()
        kinds = generate(log, args.lines, args.seed)
        print(f"generated {args.lines:,} lines ({log.stat().st_size / 2**20:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f}s: {kinds}")
        env = {**os.environ, "LOGLY_TIMEZONE": "UTC"}
        # "logly" is parse + store (--no-enrich), what fail2ban-regex's job compares with;
        # "logly+enrich" adds reputation, error classes and correlation, as `ingest` does
        # by default; "logly --jobs 2" parses a block at a time in two processes
        variants = {"logly": ["--no-enrich"], "logly --jobs 2": ["--no-enrich", "--jobs", "2"],
                    "logly+enrich": []}
        results: dict[str, list[dict]] = {**{v: [] for v in variants}, "fail2ban-regex": []}
        for i in range(args.runs):
            for name, extra in variants.items():
                db = Path(tmp) / f"bench{i}.db"
                res = run_isolated([logly, "ingest", str(log), "--db", str(db), "--year",
                                    "2025", "--tz", "UTC", "--config", "/dev/null", *extra], env)
                if res["code"] != 0:
                    print(res["stderr"], file=sys.stderr)
                    return 1
                db.unlink()
                results[name].append(res)
            if f2b:
                res = run_isolated([f2b, str(log), FILTER], env)
                m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched", res["stdout"])
                res["matched"] = int(m.group(3)) if m else -1
                results["fail2ban-regex"].append(res)
        print(f"\n{'tool':<16}{'wall s':>9}{'lines/s':>12}{'CPU s':>8}{'peak RSS MB':>13}"
              f"{'tree RSS MB':>13}{'tree PSS MB':>13}")
        best: dict[str, dict] = {}
        for tool, runs in results.items():
            if not runs:
                print(f"{tool:<16}  not installed (apt-get install fail2ban)")
                continue
            b = min(runs, key=lambda x: x["wall_s"])
            best[tool] = b
            print(f"{tool:<16}{b['wall_s']:>9.2f}{args.lines / b['wall_s']:>12,.0f}"
                  f"{b['cpu_s']:>8.1f}{max(x['max_proc_mb'] for x in runs):>13.0f}"
                  f"{max(x['tree_peak_mb'] for x in runs):>13.0f}"
                  f"{max(x['tree_pss_mb'] for x in runs):>13.0f}")
        if "fail2ban-regex" in best:
            for name in variants:
                ratio = best["fail2ban-regex"]["wall_s"] / best[name]["wall_s"]
                print(f"{name} runs at {ratio:.2f}x fail2ban-regex's lines/s (target >= 5x)")
            print(f"fail2ban-regex matched {best['fail2ban-regex']['matched']:,} lines")
        if not args.no_floor:
            fl = floor(log, Path(tmp) / "floor.db")
            print(f"\nEach side alone (CPU): parser {fl['parse_us']:.2f} us/line (with the "
                  f"hand-off's marshal), writer {fl['write_us']:.2f} us/line (indexes included)."
                  f"\nOn {fl['cpus']} CPUs no split of that work beats "
                  f"{fl['best_lines_s']:,.0f} lines/s", end="")
            if "fail2ban-regex" in best:
                f2b_rate = args.lines / best["fail2ban-regex"]["wall_s"]
                print(f" = {fl['best_lines_s'] / f2b_rate:.2f}x fail2ban-regex; 5x needs "
                      f"parser + writer <= {fl['cpus'] / (5 * f2b_rate) * 1e6:.2f} us/line",
                      end="")
            print()
            results["floor"] = [fl]
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            for runs in results.values():
                for x in runs:
                    x.pop("stdout", None), x.pop("stderr", None)
            args.json.write_text(json.dumps({"lines": args.lines, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
