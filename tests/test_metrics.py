"""Metric samples: rates from counters, counter resets, first samples without rates, the "all"
row with connection counts, and storing a real psutil sample."""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from logly.metrics import MetricsSampler, counter_delta, record_sample
from logly.store.sqlite import SQLiteStore

Net = namedtuple("Net", "bytes_sent bytes_recv packets_sent packets_recv errin errout "
                        "dropin dropout")
Disk = namedtuple("Disk", "read_bytes write_bytes")
Conn = namedtuple("Conn", "status")


class FakePsutil:
    """Counters the test sets; the rest of psutil's surface the sampler uses."""

    AccessDenied = PermissionError

    def __init__(self) -> None:
        self.net: dict[str, Net] = {}
        self.disk = Disk(0, 0)
        self.conns = [Conn("ESTABLISHED"), Conn("ESTABLISHED"), Conn("LISTEN")]

    def cpu_percent(self, interval: float | None = None) -> float:
        return 12.5

    def virtual_memory(self) -> SimpleNamespace:
        return SimpleNamespace(percent=40.0, used=4_000_000)

    def disk_usage(self, path: str) -> SimpleNamespace:
        return SimpleNamespace(percent=55.0)

    def disk_io_counters(self, nowrap: bool = True) -> Disk:
        return self.disk

    def net_io_counters(self, pernic: bool = True, nowrap: bool = True) -> dict[str, Net]:
        return dict(self.net)

    def net_connections(self, kind: str = "inet") -> list[Conn]:
        return self.conns


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def by_iface(sample) -> dict:  # type: ignore[no-untyped-def]
    return {r["interface"]: r for r in sample.network}


def test_counter_delta_treats_a_smaller_value_as_a_reset() -> None:
    assert counter_delta(150, 100) == 50
    assert counter_delta(30, 1_000_000) == 30


def test_rates_from_counters_with_a_reset_and_a_new_interface() -> None:
    ps, clock = FakePsutil(), Clock()
    ps.net = {"eth0": Net(1000, 2000, 10, 20, 0, 0, 0, 0), "lo": Net(5, 5, 1, 1, 0, 0, 0, 0)}
    ps.disk = Disk(10_000, 20_000)
    sampler = MetricsSampler(clock, psutil_mod=ps)

    first = sampler.sample()
    assert by_iface(first)["eth0"]["bytes_sent_ps"] is None  # nothing to compare with yet
    assert by_iface(first)["all"]["bytes_sent_ps"] is None
    assert first.system["disk_read_bps"] is None and first.system["cpu_percent"] == 12.5

    clock.now += timedelta(seconds=10)
    ps.net = {"eth0": Net(6000, 4000, 60, 40, 1, 0, 2, 0), "lo": Net(1005, 5, 2, 1, 0, 0, 0, 0)}
    ps.disk = Disk(30_000, 20_000)
    second = by_iface(sampler.sample())
    assert second["eth0"]["bytes_sent_ps"] == 500.0 and second["eth0"]["bytes_recv_ps"] == 200.0
    assert second["eth0"]["errors_in"] == 1 and second["eth0"]["drops_in"] == 2
    # "all" leaves loopback out and carries the connection counts by state
    assert second["all"]["bytes_sent_ps"] == 500.0
    assert json.loads(second["all"]["connections"]) == {"ESTABLISHED": 2, "LISTEN": 1}

    clock.now += timedelta(seconds=10)
    # eth0 was reset (driver reload): it counts from zero again; wlan0 just appeared
    ps.net = {"eth0": Net(300, 100, 3, 1, 0, 0, 0, 0), "lo": Net(1005, 5, 2, 1, 0, 0, 0, 0),
              "wlan0": Net(9_999_999, 0, 0, 0, 0, 0, 0, 0)}
    third = sampler.sample()
    rows = by_iface(third)
    assert rows["eth0"]["bytes_sent_ps"] == 30.0  # 300 bytes since the reset, over 10 s
    assert rows["wlan0"]["bytes_sent_ps"] is None  # new: no made-up 1 MB/s
    assert rows["all"]["bytes_sent_ps"] == 30.0
    assert third.system["disk_read_bps"] == 0.0


def test_a_clock_step_back_gives_no_rate() -> None:
    ps, clock = FakePsutil(), Clock()
    ps.net = {"eth0": Net(0, 0, 0, 0, 0, 0, 0, 0)}
    sampler = MetricsSampler(clock, psutil_mod=ps)
    sampler.sample()
    clock.now -= timedelta(seconds=5)
    assert by_iface(sampler.sample())["eth0"]["bytes_sent_ps"] is None


def test_a_real_sample_is_stored(store: SQLiteStore) -> None:
    pytest.importorskip("psutil")
    sampler = MetricsSampler(lambda: datetime.now(UTC), disk_path=store.path.parent)
    record_sample(store, sampler)
    record_sample(store, sampler)
    with store.engine.connect() as conn:
        sys_rows = conn.exec_driver_sql(
            "SELECT cpu_percent, memory_percent, disk_percent, load_1 FROM system_metrics"
        ).all()
        alls = conn.exec_driver_sql(
            "SELECT bytes_sent_ps, connections FROM network_metrics WHERE interface = 'all' "
            "ORDER BY id").all()
    assert len(sys_rows) == 2 and all(0 <= r[1] <= 100 for r in sys_rows)
    assert alls[0][0] is None and alls[1][0] is not None
