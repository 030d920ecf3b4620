"""Correlation and error classification: ingest cost, and a generated day with planted incidents.

    python bench/correlate.py                        # 1M lines
    python bench/correlate.py --lines 200000 --seed 7
    python bench/correlate.py --lines 1000000 --json bench/out/correlate.json

One generated day of mixed syslog (sshd, PAM, sudo, cron, systemd, kernel UFW drops, useradd,
fail2ban) with background noise: internet hosts trying one user name once, scanners that only
connect, UFW drops of a few ports, admins logging in from their usual addresses, cron jobs,
units starting and stopping, the odd mistyped password and weak-key client. Planted among it:
one instance of each incident the correlation rules are meant to find.

The same file is ingested twice into fresh databases, hooks off then on, and the throughput of
each is reported with the slowdown (target <= 20%). Then every planted incident is looked up
(a trace for its key, with its step, at its severity) and every other trace is counted as a
false positive. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAY = datetime(2026, 11, 24, tzinfo=UTC)
HOST = "web1"
INVALID = ["admin", "test", "oracle", "ubuntu", "user", "guest", "postgres", "git", "ftp",
           "pi", "support", "mysql", "hadoop", "deployer", "www", "nagios", "minecraft"]


def stamp(t: float) -> str:
    return (DAY + timedelta(seconds=t)).strftime("%b %d %H:%M:%S")  # day 24: no padding


def sys_line(t: float, prog: str, msg: str) -> tuple[float, str]:
    return t, f"{stamp(t)} {HOST} {prog}: {msg}"


def f2b_line(t: float, msg: str) -> tuple[float, str]:
    when = (DAY + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S,000")
    return t, f"{when} fail2ban.actions        [812]: NOTICE  [sshd] {msg}"


def rand_ip(rng: random.Random) -> str:
    while True:
        a = rng.randrange(1, 224)
        if a not in (10, 127, 192, 198, 203, 172):
            return f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def attempt(t: float, ip: str, user: str, pid: int, valid: bool) -> list[tuple[float, str]]:
    """One password attempt as sshd writes it (Debian 12, OpenSSH 9.2)."""
    port = 30000 + pid % 30000
    if valid:
        return [sys_line(t, f"sshd[{pid}]", f"Failed password for {user} from {ip} port {port} "
                                            "ssh2"),
                sys_line(t + 2, f"sshd[{pid}]", f"Connection closed by authenticating user "
                                                f"{user} {ip} port {port} [preauth]")]
    return [sys_line(t, f"sshd[{pid}]", f"Invalid user {user} from {ip} port {port}"),
            sys_line(t + 2, f"sshd[{pid}]", f"Failed password for invalid user {user} from "
                                            f"{ip} port {port} ssh2"),
            sys_line(t + 3, f"sshd[{pid}]", f"Connection closed by invalid user {user} {ip} "
                                            f"port {port} [preauth]")]


def ufw(t: float, ip: str, port: int) -> tuple[float, str]:
    return sys_line(t, "kernel", f"[{812345 + t:.6f}] [UFW BLOCK] IN=eth0 OUT= "
                    "MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 "
                    f"SRC={ip} DST=192.0.2.10 LEN=44 TOS=0x00 PREC=0x00 TTL=242 ID=54321 "
                    f"PROTO=TCP SPT=44321 DPT={port} WINDOW=1024 RES=0x00 SYN URGP=0")


# (name, key kind, key, step, severity)
def planted(rng: random.Random) -> tuple[list[tuple[float, str]], list[tuple]]:
    out: list[tuple[float, str]] = []
    exp: list[tuple] = []
    pid = 900000

    def t_at(hour: float) -> float:
        return hour * 3600 + rng.randrange(600)

    # 1 brute force on root from one address
    t = t_at(1)
    for i in range(25):
        out += attempt(t + i * 4, "203.0.113.10", "root", pid + i, True)
    exp.append(("brute force", "ip", "203.0.113.10", "brute-force", "medium"))
    # 2 password spray: one address, many user names
    t = t_at(2)
    for i, u in enumerate(INVALID):
        out += attempt(t + i * 15, "203.0.113.20", u, pid + 100 + i, False)
    exp.append(("password spray", "ip", "203.0.113.20", "password-spray", "medium"))
    # 3 distributed attack on an existing user from 12 addresses, one try each
    t = t_at(3)
    for i in range(12):
        out += attempt(t + i * 120, f"198.51.100.{100 + i}", "deploy", pid + 200 + i, True)
    exp.append(("distributed attack", "user", "deploy", "distributed-attack", "high"))
    # 4 success after failures (critical)
    t = t_at(4)
    for i in range(8):
        out += attempt(t + i * 6, "203.0.113.40", "admin2", pid + 300 + i, True)
    out.append(sys_line(t + 60, f"sshd[{pid + 399}]", "Accepted password for admin2 from "
                        "203.0.113.40 port 50111 ssh2"))
    exp.append(("login after failures", "ip", "203.0.113.40", "login-after-failures",
                "critical"))
    # 5 bob logs in from a new address (he used 192.0.2.50 all day)
    t = t_at(16)
    out.append(sys_line(t, f"sshd[{pid + 500}]", "Accepted publickey for bob from 203.0.113.50 "
                        "port 51000 ssh2: ED25519 SHA256:Bb0bKeyFingerprintAAAAAAAAAAAAAAAAAAA"))
    exp.append(("new address login", "user+ip", "bob 203.0.113.50", "new-address-login", "low"))
    # 6 sudo: not in sudoers; repeated wrong passwords
    t = t_at(9)
    out.append(sys_line(t, "sudo", "   carol : user NOT in sudoers ; TTY=pts/3 ; "
                        "PWD=/home/carol ; USER=root ; COMMAND=/bin/bash"))
    exp.append(("not in sudoers", "user", "carol", "not-in-sudoers", "medium"))
    for i in range(3):
        out.append(sys_line(t + 100 + i * 20, "sudo", "    dave : 3 incorrect password "
                            "attempts ; TTY=pts/4 ; PWD=/home/dave ; USER=root ; "
                            "COMMAND=/usr/bin/su"))
    exp.append(("sudo failures", "user", "dave", "sudo-failures", "medium"))
    # 7 UID 0 account, user put into sudo
    t = t_at(11)
    out.append(sys_line(t, "useradd[700001]", "new user: name=toor, UID=0, GID=0, home=/root, "
                        "shell=/bin/bash, from=/dev/pts/1"))
    exp.append(("uid 0 account", "user", "toor", "uid0-account", "critical"))
    out.append(sys_line(t + 30, "usermod[700002]", "add 'eve' to group 'sudo'"))
    out.append(sys_line(t + 30, "usermod[700002]", "add 'eve' to shadow group 'sudo'"))
    exp.append(("added to sudo", "user", "eve", "admin-group", "high"))
    # 8 recidive
    t = t_at(5)
    out += [f2b_line(t, "Ban 203.0.113.80"), f2b_line(t + 600, "Unban 203.0.113.80"),
            f2b_line(t + 5000, "Ban 203.0.113.80")]
    exp.append(("recidive", "ip", "203.0.113.80", "recidive", "high"))
    # 9 scan followed by a login attempt
    t = t_at(6)
    out.append(sys_line(t, f"sshd[{pid + 900}]", "Did not receive identification string from "
                        "203.0.113.90 port 40000"))
    out += attempt(t + 600, "203.0.113.90", "test", pid + 901, False)
    exp.append(("scan then login", "ip", "203.0.113.90", "scan-then-login", "medium"))
    # 10 error burst: a unit failing again and again
    t = t_at(13)
    for i in range(6):
        out.append(sys_line(t + i * 40, "systemd[1]", "backup.service: Main process exited, "
                            "code=exited, status=2/INVALIDARGUMENT"))
    exp.append(("error burst", "host+program", f"{HOST} backup.service", "error-burst",
                "medium"))
    # 11 disk I/O error (critical), 12 OOM kill (high): one kernel trace, worst severity wins
    t = t_at(14)
    out.append(sys_line(t, "kernel", "[900001.5] I/O error, dev sdb, sector 77824 op "
                        "0x0:(READ) flags 0x0 phys_seg 1 prio class 2"))
    out.append(sys_line(t + 30, "kernel", "[900031.5] Out of memory: Killed process 4242 (java) "
                        "total-vm:4823104kB, anon-rss:2017852kB, file-rss:0kB, shmem-rss:0kB, "
                        "UID:1000 pgtables:4392kB oom_score_adj:0"))
    exp.append(("disk I/O error + OOM", "host+program", f"{HOST} kernel", "serious-error",
                "critical"))
    # 13 slow brute force: 30 attempts, one every 30 s (CrowdSec's ssh-slow-bf sample rate)
    t = t_at(18)
    for i in range(30):
        out.append(sys_line(t + i * 30, f"sshd[{pid + 1300 + i}]", "Failed password for root "
                            f"from 203.0.113.130 port {41000 + i} ssh2"))
    exp.append(("slow brute force", "ip", "203.0.113.130", "slow-brute-force", "low"))
    # 14 port scan
    t = t_at(20)
    for i in range(60):
        out.append(ufw(t + i * 0.3, "203.0.113.140", 1 + i * 7))
    exp.append(("port scan", "ip", "203.0.113.140", "port-scan", "low"))
    return out, exp


def noise(rng: random.Random, n: int) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    pid = 10000
    session = 100
    while len(out) < n:
        t = rng.uniform(0, 86399)
        pid += 1
        r = rng.random()
        if r < 0.30:  # one internet host, one try, gone
            out += attempt(t, rand_ip(rng), rng.choice(INVALID), pid, False)
        elif r < 0.42:  # connects and leaves (a scanner)
            ip = rand_ip(rng)
            out.append(sys_line(t, f"sshd[{pid}]", f"Connection closed by {ip} port "
                                f"{rng.randrange(1024, 65535)} [preauth]"))
        elif r < 0.55:  # UFW drops, one or two ports
            ip = rand_ip(rng)
            for _ in range(rng.randrange(1, 3)):
                out.append(ufw(t, ip, rng.choice((23, 445, 3389, 8080, 5900))))
        elif r < 0.75:  # cron every few minutes
            out.append(sys_line(t, f"CRON[{pid}]", "pam_unix(cron:session): session opened for "
                                "user root(uid=0) by (uid=0)"))
            out.append(sys_line(t, f"CRON[{pid}]", "(root) CMD (command -v debian-sa1 > "
                                "/dev/null && debian-sa1 1 1)"))
            out.append(sys_line(t + 1, f"CRON[{pid}]", "pam_unix(cron:session): session closed "
                                "for user root"))
        elif r < 0.80:  # admins at work from their usual addresses
            user, ip = rng.choice((("alice", "192.0.2.44"), ("bob", "192.0.2.50")))
            session += 1
            out += [
                sys_line(t, f"sshd[{pid}]", f"Accepted publickey for {user} from {ip} port "
                         f"{rng.randrange(30000, 60000)} ssh2: ED25519 SHA256:K3yFingerprint"),
                sys_line(t, f"sshd[{pid}]", f"pam_unix(sshd:session): session opened for user "
                         f"{user}(uid=1000) by {user}(uid=0)"),
                sys_line(t, "systemd-logind[512]", f"New session {session} of user {user}."),
                sys_line(t + 5, "sudo", f"   {user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root "
                         "; COMMAND=/usr/bin/systemctl status nginx"),
                sys_line(t + 600, f"sshd[{pid}]", f"pam_unix(sshd:session): session closed for "
                         f"user {user}"),
                sys_line(t + 600, "systemd-logind[512]", f"Removed session {session}."),
            ]
        else:  # systemd going about its day
            unit = rng.choice(("apt-daily.service", "logrotate.service", "man-db.service",
                               "phpsessionclean.service"))
            out += [sys_line(t, "systemd[1]", f"Starting {unit} - Daily job..."),
                    sys_line(t + 2, "systemd[1]", f"{unit}: Deactivated successfully."),
                    sys_line(t + 2, "systemd[1]", f"Finished {unit} - Daily job.")]
    # what happens a few times a day whatever the traffic: typos, an old client
    for _ in range(6):  # a password typo, then the right one
        t = rng.uniform(0, 86000)
        pid += 1
        out += attempt(t, "192.0.2.44", "alice", pid, True)
        out.append(sys_line(t + 8, f"sshd[{pid}]", "Accepted password for alice from "
                            "192.0.2.44 port 50000 ssh2"))
    for _ in range(4):  # an old client with an RSA key
        out.append(sys_line(rng.uniform(0, 86000), f"sshd[{pid}]", "userauth_pubkey: key type "
                            "ssh-rsa not in PubkeyAcceptedAlgorithms [preauth]"))
    for _ in range(4):  # one mistyped sudo password
        out.append(sys_line(rng.uniform(0, 86000), "sudo", "   alice : 1 incorrect password "
                            "attempt ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
                            "COMMAND=/bin/ls"))
    return out


def generate(path: Path, lines: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    inc, expected = planted(rng)
    rows = noise(rng, max(0, lines - len(inc))) + inc
    rows.sort(key=lambda r: r[0])
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(r[1] + "\n" for r in rows)
    os.utime(path, (DAY.timestamp() + 2 * 86400,) * 2)  # year-less stamps: 2026
    return expected


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the parser process)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ingest(db: Path, log: Path, hooks: list) -> tuple[float, int]:
    from logly.ingest import ingest_input
    from logly.parsers.rules import RuleSet
    from logly.sources.files import open_input
    from logly.store.sqlite import SQLiteStore

    store = SQLiteStore(db)
    store.init()
    inp = open_input(str(log))
    t0 = time.perf_counter()
    try:
        s = ingest_input(store, RuleSet.load(), inp, hooks=hooks)
    finally:
        inp.close()
    secs = time.perf_counter() - t0
    store.close()
    return secs, s.lines


def timed(hooks: list) -> tuple[list, list[float]]:
    spent = [0.0] * len(hooks)

    def wrap(i: int, hook: Any) -> Any:
        def run(conn: Any, rows: Any, first_id: int) -> Any:
            # CPU time of this thread: what the hooks cost, not what other processes took
            t0 = time.thread_time()
            got = hook(conn, rows, first_id)
            spent[i] += time.thread_time() - t0
            return got
        # as the hook runs in ingest: before the insert, handing it the batch's traces
        run.before_insert = getattr(hook, "before_insert", False)  # type: ignore[attr-defined]
        return run
    return [wrap(i, h) for i, h in enumerate(hooks)], spent


def check(db: Path, expected: list[tuple]) -> tuple[list[dict], list[dict]]:
    import sqlite3

    con = sqlite3.connect(db)
    traces = [dict(zip(("id", "severity", "pattern", "ip", "user", "title", "events", "c"), r,
                       strict=True))
              for r in con.execute("SELECT id, severity, pattern, ip_address, user, title, "
                                   "event_count, causality FROM event_traces")]
    con.close()
    for t in traces:
        c = json.loads(t.pop("c"))
        t["key"], t["steps"] = c["key"], [s["pattern"] for s in c["steps"]]
    group_of = {"ip": "address", "user": None, "user+ip": "login", "host+program": "errors"}
    used: set[int] = set()
    table = []
    for name, kind, key, step, sev in expected:
        hits = [t for t in traces if t["key"] == key and step in t["steps"]
                and (group_of[kind] is None or t["pattern"] == group_of[kind])]
        found = hits[0] if hits else None
        for t in traces:  # every trace about a planted key is that incident's
            if t["key"] == key:
                used.add(t["id"])
        table.append({"incident": name, "key": key, "step": step, "expected": sev,
                      "found": found["severity"] if found else None,
                      "trace": found["id"] if found else None,
                      "events": found["events"] if found else 0,
                      "ok": bool(found and found["severity"] == sev)})
    fps = [t for t in traces if t["id"] not in used]
    return table, fps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs; the best counts")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from logly.tracer.correlate import make_hooks

    class Cfg:
        sections: dict = {}

    with tempfile.TemporaryDirectory(prefix="logly-bench-") as d:
        tmp = Path(d)
        log = tmp / "day.log"
        t0 = time.perf_counter()
        expected = generate(log, args.lines, args.seed)
        print(f"generated {args.lines:,} lines ({log.stat().st_size / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - t0:,.1f} s")
        # off and on alternate; the best of each counts (other work on the machine only adds)
        offs, ons, inside, cpu_off, cpu_on = [], [], [], [], []
        for r in range(args.rounds):
            for db in tmp.glob("*.db*"):
                db.unlink()
            c0 = cpu_seconds()
            off, n = ingest(tmp / "off.db", log, [])
            c1 = cpu_seconds()
            hooks, spent = timed(make_hooks(Cfg()))
            on, _ = ingest(tmp / "on.db", log, hooks)
            c2 = cpu_seconds()
            offs.append(off)
            ons.append(on)
            inside.append(sum(spent))
            cpu_off.append(c1 - c0)
            cpu_on.append(c2 - c1)
            print(f"round {r + 1}: off {n / off:,.0f} lines/s, on {n / on:,.0f} lines/s, "
                  f"in hooks {sum(spent):.2f} s CPU (classify {spent[0]:.2f}, correlate "
                  f"{spent[1]:.2f}); CPU off {c1 - c0:.1f} s, on {c2 - c1:.1f} s")
        off, on, hook_s = min(offs), min(ons), min(inside)
        cpu_slowdown = (min(cpu_on) - min(cpu_off)) / min(cpu_off) * 100
        slowdown = (on - off) / off * 100
        print(f"ingest, hooks off: {n / off:>10,.0f} lines/s ({off:,.1f} s)")
        print(f"ingest, hooks on : {n / on:>10,.0f} lines/s ({on:,.1f} s)")
        print(f"slowdown (wall clock, best of {args.rounds}): {slowdown:+.1f}% (target <= 20%; "
              "on a shared machine this swings with the other load, see the CPU figures)")
        print(f"CPU time inside the hooks: {hook_s / n * 1e6:.2f} us/line, "
              f"{hook_s / min(cpu_off) * 100:.1f}% of the hooks-off ingest's CPU time")
        print(f"CPU time of the whole ingest (writer + parser), best of {args.rounds}: off "
              f"{min(cpu_off):.1f} s, on {min(cpu_on):.1f} s: {cpu_slowdown:+.1f}% (the "
              "figure that does not depend on what else runs on the machine)")
        table, fps = check(tmp / "on.db", expected)
        import sqlite3

        con = sqlite3.connect(tmp / "on.db")
        n_err = con.execute("SELECT count(*) FROM error_traces").fetchone()[0]
        n_tr = con.execute("SELECT count(*) FROM event_traces").fetchone()[0]
        n_linked = con.execute("SELECT count(*) FROM log_events WHERE trace_id IS NOT NULL"
                               ).fetchone()[0]
        con.close()
    print(f"\n{n_tr} traces, {n_linked:,} events linked to one, {n_err:,} error classes stored")
    print("\n| incident | key | step | expected | found | events | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['incident']} | {r['key']} | {r['step']} | {r['expected']} | "
              f"{r['found'] or '-'} | {r['events']} | {'yes' if r['ok'] else 'NO'} |")
    print(f"\nfalse positives (traces about no planted incident): {len(fps)}")
    for t in fps[:20]:
        print(f"  {t['severity']:8} {t['pattern']:12} {t['key']}: {t['title']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "lines": n, "off_lines_per_s": n / off, "on_lines_per_s": n / on,
            "slowdown_percent": slowdown, "hook_us_per_line": hook_s / n * 1e6,
            "cpu_slowdown_percent": cpu_slowdown,
            "incidents": table,
            "false_positives": [{k: t[k] for k in ("severity", "pattern", "key", "title")}
                                for t in fps]}, indent=2))


if __name__ == "__main__":
    main()
