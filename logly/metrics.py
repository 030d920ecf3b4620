"""System and network metric samples (psutil), stored as rates for the aggregates and report.

The kernel exposes counters (bytes, packets, errors, drops, disk I/O) that only grow, except
when they do not: an interface that goes down and up, a driver reload, a container's network
namespace recreated. A sample is the difference to the previous sample of the same counter; a
counter that went backwards was reset, so what it reads now is what accrued since the reset
(undercounting at most one interval, never a huge negative or wrapped rate). psutil already
undoes 32-bit wraps (`nowrap=True`).

The first sample after start has nothing to compare with: its rates and deltas are NULL
(`system_metrics.disk_*_bps`, `network_metrics.*_ps`). The aggregates multiply each rate by the
gap to the previous sample, so downtime is not filled with made-up traffic.

Per interface rows plus one row with interface "all" (all but loopback, and the connection
counts by TCP state as JSON), which is what the hourly aggregates read.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from logly.store.aggregates import ts
from logly.store.sqlite import SQLiteStore

Clock = Callable[[], datetime]
NET_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout",
              "dropin", "dropout")


def counter_delta(new: int, old: int) -> int:
    """Growth of a monotonic counter; a counter that went backwards restarted from zero."""
    return new - old if new >= old else new


@dataclass
class Sample:
    system: dict[str, Any]
    network: list[dict[str, Any]]


class MetricsSampler:
    """Keeps the previous counters between samples; `psutil_mod` is swappable for tests."""

    def __init__(self, clock: Clock, disk_path: str | Path = "/",
                 psutil_mod: Any = None) -> None:
        if psutil_mod is None:
            import psutil as psutil_mod
        self.ps = psutil_mod
        self.clock = clock
        self.disk_path = str(disk_path)
        self._last: datetime | None = None
        self._net: dict[str, Any] = {}
        self._disk: Any = None
        # cpu_percent(None) measures since the previous call; the first call has no previous
        # one and returns a meaningless 0.0, so it is spent here
        self.ps.cpu_percent(interval=None)

    def _disk_counters(self) -> Any:
        try:
            return self.ps.disk_io_counters(nowrap=True)
        except (OSError, RuntimeError):  # containers without /proc/diskstats
            return None

    def _connections(self) -> dict[str, int] | None:
        try:
            conns = self.ps.net_connections(kind="inet")
        except (self.ps.AccessDenied, OSError):
            return None
        return dict(sorted(Counter(c.status for c in conns).items()))

    def sample(self) -> Sample:
        now = self.clock()
        gap = (now - self._last).total_seconds() if self._last else None
        if gap is not None and gap <= 0:
            gap = None  # clock stepped back: no rate is better than a wrong one
        mem = self.ps.virtual_memory()
        try:
            disk_percent = self.ps.disk_usage(self.disk_path).percent
        except OSError:
            disk_percent = None
        disk = self._disk_counters()
        read_bps = write_bps = None
        if gap and disk is not None and self._disk is not None:
            read_bps = counter_delta(disk.read_bytes, self._disk.read_bytes) / gap
            write_bps = counter_delta(disk.write_bytes, self._disk.write_bytes) / gap
        try:
            load = os.getloadavg()
        except OSError:
            load = (None, None, None)
        stamp = ts(now)
        system = {
            "timestamp": stamp, "cpu_percent": self.ps.cpu_percent(interval=None),
            "memory_percent": mem.percent, "memory_used": int(mem.used),
            "disk_percent": disk_percent, "disk_read_bps": read_bps, "disk_write_bps": write_bps,
            "load_1": load[0], "load_5": load[1], "load_15": load[2],
        }

        counters = self.ps.net_io_counters(pernic=True, nowrap=True)
        rows, total = [], dict.fromkeys(NET_FIELDS, 0)
        have_total = False
        for name in sorted(counters):
            cur, prev = counters[name], self._net.get(name)
            row: dict[str, Any] = {"timestamp": stamp, "interface": name, "connections": None}
            if gap and prev is not None:
                delta = {f: counter_delta(getattr(cur, f), getattr(prev, f)) for f in NET_FIELDS}
                row.update(_rates(delta, gap))
                if name != "lo":
                    have_total = True
                    for f in NET_FIELDS:
                        total[f] += delta[f]
            else:  # new interface or first sample: nothing to compare with
                row.update(_rates(None, None))
            rows.append(row)
        all_row = {"timestamp": stamp, "interface": "all",
                   "connections": json.dumps(self._connections())}
        all_row.update(_rates(total if have_total else None, gap))
        rows.append(all_row)

        self._last, self._net, self._disk = now, dict(counters), disk
        return Sample(system, rows)


def _rates(delta: dict[str, int] | None, gap: float | None) -> dict[str, Any]:
    if delta is None or not gap:
        return {"bytes_sent_ps": None, "bytes_recv_ps": None, "packets_sent_ps": None,
                "packets_recv_ps": None, "errors_in": None, "errors_out": None,
                "drops_in": None, "drops_out": None}
    return {
        "bytes_sent_ps": delta["bytes_sent"] / gap, "bytes_recv_ps": delta["bytes_recv"] / gap,
        "packets_sent_ps": delta["packets_sent"] / gap,
        "packets_recv_ps": delta["packets_recv"] / gap,
        # errors and drops are rare: counts in the interval read better than fractions/s
        "errors_in": delta["errin"], "errors_out": delta["errout"],
        "drops_in": delta["dropin"], "drops_out": delta["dropout"],
    }


_SYSTEM_COLS = ("timestamp", "cpu_percent", "memory_percent", "memory_used", "disk_percent",
                "disk_read_bps", "disk_write_bps", "load_1", "load_5", "load_15")
_NET_COLS = ("timestamp", "interface", "bytes_sent_ps", "bytes_recv_ps", "packets_sent_ps",
             "packets_recv_ps", "errors_in", "errors_out", "drops_in", "drops_out",
             "connections")


def record_sample(store: SQLiteStore, sampler: MetricsSampler) -> Sample:
    """Take one sample and store it in one short transaction."""
    s = sampler.sample()
    with store._write() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO system_metrics ({', '.join(_SYSTEM_COLS)}) "
            f"VALUES ({', '.join('?' for _ in _SYSTEM_COLS)})",
            tuple(s.system[c] for c in _SYSTEM_COLS))
        conn.exec_driver_sql(
            f"INSERT INTO network_metrics ({', '.join(_NET_COLS)}) "
            f"VALUES ({', '.join('?' for _ in _NET_COLS)})",
            [tuple(r[c] for c in _NET_COLS) for r in s.network])
    return s
