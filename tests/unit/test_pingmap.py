"""PingMap semantics (spec §2.2) and thread safety."""

from __future__ import annotations

import threading

import pytest

from cloudha import HostType, PingMap
from cloudha.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def test_connect_ping_behind(clock: FakeClock) -> None:
    pm = PingMap(clock)
    assert pm.connect("a")
    assert pm.connect("b")
    clock.advance(10)
    assert pm.ping_by("b")
    clock.advance(5)
    assert pm.behind(14) == ["a"]
    assert pm.behind(20) == []
    assert pm.behind(4) == ["a", "b"]
    assert len(pm) == 2
    assert pm.last_ping("b") == 1010.0


def test_behind_is_strictly_older(clock: FakeClock) -> None:
    pm = PingMap(clock)
    pm.connect("a")
    clock.advance(150)
    assert pm.behind(150) == []  # exactly at the deadline: not older
    clock.advance(0.001)
    assert pm.behind(150) == ["a"]


def test_ping_does_not_resurrect(clock: FakeClock) -> None:
    pm = PingMap(clock)
    assert not pm.ping_by("ghost")
    assert len(pm) == 0
    pm.connect("a")
    assert pm.disconnect("a")
    assert not pm.ping_by("a")
    assert "a" not in pm
    assert not pm.disconnect("a")


@pytest.mark.parametrize("host_type", [HostType.TRAFFIC_MONITOR, HostType.SECONDARY_STORAGE])
def test_unmonitored_types(clock: FakeClock, host_type: HostType) -> None:
    pm = PingMap(clock)
    assert not pm.connect("x", host_type)
    assert len(pm) == 0


def test_reconnect_refreshes(clock: FakeClock) -> None:
    pm = PingMap(clock)
    pm.connect("a")
    clock.advance(200)
    assert pm.behind(150) == ["a"]
    pm.connect("a")
    assert pm.behind(150) == []
    assert len(pm) == 1


def test_next_deadline_skips_hosts_already_behind(clock: FakeClock) -> None:
    pm = PingMap(clock)
    assert pm.next_deadline(150) is None
    pm.connect("old")
    clock.advance(100)
    pm.connect("new")
    assert pm.next_deadline(150) == 1150.0
    clock.advance(60)  # old is behind now
    assert pm.next_deadline(150) == 1250.0
    pm.ping_by("old")
    assert pm.next_deadline(150) == 1250.0


def test_behind_reads_only_the_front_even_with_many_hosts(clock: FakeClock) -> None:
    pm = PingMap(clock)
    for i in range(5000):
        pm.connect(f"h{i}")
    clock.advance(200)
    for i in range(130, 5000):
        pm.ping_by(f"h{i}")
    behind = pm.behind(150)
    assert behind == [f"h{i}" for i in range(130)]  # crosses the doubling copy (64, 128, 256)
    assert pm.next_deadline(150) == 1350.0


def test_concurrent_pings_and_disconnects_never_resurrect() -> None:
    from cloudha import SystemClock

    pm = PingMap(SystemClock())
    hosts = [f"h{i}" for i in range(2000)]
    for h in hosts:
        pm.connect(h)
    gone = set(hosts[::2])
    start = threading.Barrier(4)

    def pinger() -> None:
        start.wait()
        for _ in range(20):
            for h in hosts:
                pm.ping_by(h)

    def disconnector() -> None:
        start.wait()
        for h in gone:
            pm.disconnect(h)

    def watcher() -> None:
        start.wait()
        for _ in range(200):
            pm.behind(0.0)
            pm.next_deadline(10.0)

    threads = [threading.Thread(target=f) for f in (pinger, pinger, disconnector, watcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert set(pm.hosts()) == set(hosts) - gone
    assert len(pm) == len(hosts) - len(gone)
    # Order is by last ping: behind(0) lists every monitored host.
    assert sorted(pm.behind(-1.0)) == sorted(set(hosts) - gone)
