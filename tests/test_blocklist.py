"""Blocklists: plain and FireHOL netset files, exact lookups at every edge, reload on change,
missing and broken files, and the hook putting list membership into the score."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logly.config import load_config
from logly.store.sqlite import SQLiteStore
from logly.tracer.blocklist import Blocklists, NetSet, parse_entry, parse_list
from logly.tracer.reputation import make_hook
from tests.test_reputation import LogWriter, ensure_ip_commands, ingest

# The head of a real FireHOL netset (firehol_level1.netset), then entries in its style.
FIREHOL = """\
#
# firehol_level1
#
# ipv4 hash:net ipset
#
# A firewall blacklist composed from IP lists, providing
# maximum protection with minimum false positives.
#
# Source URL: https://iplists.firehol.org/files/firehol_level1.netset
#
# Maintainer      : FireHOL
# Category        : attacks
#
0.0.0.0/8
1.10.16.0/20
5.188.10.0/23
198.51.100.64/27
203.0.113.128/25
"""

PLAIN = """\
; a hand-kept list
198.51.100.7          # seen 2026-11-20
2001:db8:bad::/48
192.0.2.10-192.0.2.20
192.0.2.21
not-an-address
10.0.0.0/33
"""


def test_parse_entry_forms() -> None:
    assert parse_entry("192.0.2.7") == (4, 0xC0000207, 0xC0000207)
    assert parse_entry("192.0.2.0/24") == (4, 0xC0000200, 0xC00002FF)
    assert parse_entry("192.0.2.77/24") == (4, 0xC0000200, 0xC00002FF)  # host bits: network
    assert parse_entry("192.0.2.1-192.0.2.3") == (4, 0xC0000201, 0xC0000203)
    lo = int(ipaddress.ip_address("2001:db8::"))
    assert parse_entry("2001:db8::/32") == (6, lo, lo + (1 << 96) - 1)
    for bad in ("192.0.2", "192.0.2.1/33", "192.0.2.9-192.0.2.1", "x", "192.0.2.1/a",
                "1.2.3.4-::1", "01.2.3.4"):
        with pytest.raises(ValueError):
            parse_entry(bad)


def test_firehol_and_plain_lists_with_comments_and_bad_lines() -> None:
    nets, bad = parse_list(FIREHOL, "level1")
    assert bad == [] and len(nets) == 5
    assert "1.10.31.255" in nets and "1.10.32.0" not in nets and "1.10.15.255" not in nets
    assert "198.51.100.64" in nets and "198.51.100.95" in nets and "198.51.100.96" not in nets
    assert "203.0.113.255" in nets and "203.0.113.127" not in nets
    nets, bad = parse_list(PLAIN, "mine")
    assert len(nets) == 4
    assert [b.split(": ", 1)[0] for b in bad] == ["mine:6", "mine:7"]
    assert "198.51.100.7" in nets and "198.51.100.8" not in nets
    assert "192.0.2.9" not in nets and "192.0.2.10" in nets and "192.0.2.21" in nets
    assert "192.0.2.22" not in nets
    assert "2001:db8:bad:ffff::1" in nets and "2001:db8:bae::" not in nets
    assert "garbage" not in nets and "" not in nets


def test_merged_intervals_agree_with_a_brute_force_check() -> None:
    """Overlapping, nested and adjacent entries merge; every lookup matches ipaddress."""
    rng = random.Random(3)
    nets = []
    for _ in range(400):
        base = rng.choice((0x0A000000, 0xC0A80000, 0xCB007100))
        prefix = rng.randrange(20, 33)
        nets.append(ipaddress.ip_network((base + rng.randrange(1 << 16), prefix), strict=False))
    s = NetSet.from_strings(str(n) for n in nets)
    assert len(s.v4_starts) < 400  # merging happened
    assert all(a <= b for a, b in zip(s.v4_starts, s.v4_ends, strict=True))
    assert all(b + 1 < a for b, a in zip(s.v4_ends, s.v4_starts[1:], strict=False))
    probes = [ipaddress.ip_address(n.network_address + d) for n in nets for d in (-1, 0)]
    probes += [ipaddress.ip_address(int(n.broadcast_address) + d) for n in nets
               for d in (0, 1)]
    probes += [ipaddress.ip_address(rng.randrange(1 << 32)) for _ in range(2000)]
    for p in probes:
        assert (str(p) in s) == any(p in n for n in nets), p


def test_large_list_loads_and_looks_up(tmp_path: Path) -> None:
    """100k entries: one file, loaded once, every entry found, neighbours not."""
    rng = random.Random(11)
    addrs = sorted({rng.randrange(1 << 24, 0xDF000000) for _ in range(100_000)})
    path = tmp_path / "big.netset"
    path.write_text("# big\n" + "\n".join(str(ipaddress.ip_address(a)) for a in addrs) + "\n")
    bl = Blocklists([path])
    assert len(bl) == len(addrs)
    present = set(addrs)
    for a in rng.sample(addrs, 500):
        assert bl.lookup(str(ipaddress.ip_address(a))) == ["big"]
        if a + 1 not in present:
            assert bl.lookup(str(ipaddress.ip_address(a + 1))) == []


def test_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "drop.txt"
    path.write_text("198.51.100.7\n")
    bl = Blocklists([path], check_seconds=0)
    assert bl.lookup("198.51.100.7") == ["drop"]
    assert bl.refresh() is False  # unchanged: not read again
    path.write_text("203.0.113.0/24\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert bl.refresh() is True
    assert bl.lookup("198.51.100.7") == [] and bl.lookup("203.0.113.9") == ["drop"]


def test_reload_is_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("198.51.100.7\n")
    bl = Blocklists([path], check_seconds=3600)
    path.write_text("203.0.113.1\n")
    os.utime(path, (1, 1))
    assert bl.refresh() is False and bl.lookup("198.51.100.7") == ["l"]
    assert bl.refresh(force=True) is True and bl.lookup("203.0.113.1") == ["l"]


def test_missing_file_is_reported_once_and_picked_up_later(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later.netset"
    other = tmp_path / "ok.netset"
    other.write_text("198.51.100.0/24\n")
    with caplog.at_level(logging.WARNING, logger="logly.blocklist"):
        bl = Blocklists([path, other], check_seconds=0)
        for _ in range(5):
            bl.refresh()
    warnings = [r for r in caplog.records if "later.netset" in r.getMessage()]
    assert len(warnings) == 1 and "treated as empty" in warnings[0].getMessage()
    assert bl.lookup("198.51.100.1") == ["ok"]  # the other list works
    path.write_text("198.51.100.1\n")
    assert bl.refresh() is True
    assert bl.lookup("198.51.100.1") == ["later", "ok"]
    path.unlink()
    assert bl.refresh() is True and bl.lookup("198.51.100.1") == ["ok"]


def test_bad_lines_are_reported_once_with_file_and_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mine.list"
    path.write_text(PLAIN)
    with caplog.at_level(logging.WARNING, logger="logly.blocklist"):
        bl = Blocklists([path], check_seconds=0)
        bl.refresh()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and f"{path}:6" in msgs[0] and "2 lines skipped" in msgs[0]
    assert bl.status()[0]["entries"] == 4 and bl.status()[0]["skipped_lines"] == 2


def test_same_name_in_two_directories_stays_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.netset").write_text("198.51.100.1\n")
    (tmp_path / "b" / "x.netset").write_text("198.51.100.1\n")
    bl = Blocklists([tmp_path / "a" / "x.netset", tmp_path / "b" / "x.netset"])
    assert bl.lookup("198.51.100.1") == ["x", "x#2"]


def test_listed_address_scores_and_ip_names_the_list(tmp_path: Path, cli: Callable) -> None:
    lst = tmp_path / "firehol_level1.netset"
    lst.write_text(FIREHOL)
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f'[reputation]\nblocklists = ["{lst}"]\n')
    w = LogWriter(datetime.now(UTC) - timedelta(hours=1))
    w.valid_user_failures("198.51.100.70", "root", 1)  # in 198.51.100.64/27
    w.valid_user_failures("198.51.100.20", "root", 1)  # not listed
    w.login("203.0.113.200", "alice")  # listed, but did nothing wrong here
    log = tmp_path / "auth.log"
    log.write_text("\n".join(w.auth) + "\n")
    store = SQLiteStore(tmp_path / "b.db")
    store.init()
    ingest(store, [log], [make_hook(load_config(cfg))])
    ensure_ip_commands()
    r = cli("ip", "198.51.100.70", "--json", "--db", str(store.path), "--config", str(cfg))
    rep = json.loads(r.out)
    assert rep["blocklists"] == ["firehol_level1"]
    ev = {e["feature"]: e for e in rep["evidence"]}
    assert ev["blocklists"]["points"] == 25 and "firehol_level1" in ev["blocklists"]["text"]
    assert rep["verdict"] == "suspicious"
    r = cli("ip", "198.51.100.20", "--json", "--db", str(store.path), "--config", str(cfg))
    assert json.loads(r.out)["blocklists"] == []
    r = cli("ip", "203.0.113.200", "--db", str(store.path), "--config", str(cfg))
    assert r.code == 0 and "firehol_level1" in r.out and "suspicious" in r.out
