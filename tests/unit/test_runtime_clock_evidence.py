"""Pump lifecycle, FakeClock and the evidence log."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

import pytest

from cloudha import Evidence, EvidenceLog, LifecycleError, Pump, Recorder, SystemClock
from cloudha.runtime import Loop
from cloudha.testing import FakeClock


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(10)
    assert clock.monotonic() == 10.0
    assert clock.now() == dt.datetime(1970, 1, 1, 0, 0, 10, tzinfo=dt.UTC)
    clock.advance(5)
    assert clock.monotonic() == 15.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(1)
    event = threading.Event()
    assert not clock.wait(event, 30)
    assert clock.monotonic() == 45.0
    event.set()
    assert clock.wait(event, 30)
    assert clock.monotonic() == 45.0


def test_pump_runs_ticks_and_stops_promptly() -> None:
    ran = threading.Event()
    count = 0

    def tick() -> float:
        nonlocal count
        count += 1
        if count >= 3:
            ran.set()
        return 0.001

    pump = Pump("test-pump", tick, clock=SystemClock())
    pump.start()
    assert ran.wait(5)
    pump.stop()
    assert pump.ticks >= 3
    with pytest.raises(LifecycleError):
        pump.start()


def test_pump_survives_a_failing_tick() -> None:
    calls = 0
    done = threading.Event()

    def tick() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        done.set()
        return 10.0

    pump = Pump("failing", tick, clock=SystemClock(), error_delay=0.001)
    pump.start()
    assert done.wait(5)
    pump.stop()  # wakes the 10 s wait at once
    assert calls == 2


def test_evidence_log_keeps_filters_and_notifies() -> None:
    log = EvidenceLog(capacity=2)
    clock = FakeClock(3)
    seen: list[Evidence] = []
    unsubscribe = log.subscribe(seen.append)
    rec = Recorder(log, clock, "ms1")
    rec.emit("a", host="h1", reason="first", x=1)
    rec.emit("b", host="h2")
    unsubscribe()
    rec.emit("a", host="h1")
    assert len(log) == 2
    assert [r.kind for r in log.records()] == ["b", "a"]
    assert len(seen) == 2
    assert seen[0].to_event() == {
        "t": 3.0,
        "kind": "a",
        "host": "h1",
        "x": 1,
        "reason": "first",
        "actor": "ms1",
    }


def test_pump_wake_cuts_the_wait_short_and_is_not_lost_during_a_tick() -> None:
    ticks: list[float] = []
    second = threading.Event()
    inside = threading.Event()
    release = threading.Event()

    def tick() -> float:
        ticks.append(time.monotonic())
        if len(ticks) == 1:
            inside.set()
            release.wait(5)  # a wake-up arrives while the tick runs
        if len(ticks) == 2:
            second.set()
        return 3600.0

    pump = Pump("wakeable", tick, clock=SystemClock())
    pump.start()
    assert inside.wait(5)
    pump.wake()
    release.set()
    assert second.wait(5)  # the hour-long wait after the first tick ended at once
    pump.stop(timeout=5)
    assert len(ticks) == 2


def test_pump_that_is_not_wakeable_ignores_wake_and_honours_its_first_delay() -> None:
    clock = FakeClock(0)
    ticked: list[float] = []
    pump: Pump

    def tick() -> float:
        ticked.append(clock.monotonic())
        pump.wake()  # no effect: the pump waits on its stop event only
        if len(ticked) == 3:
            pump.request_stop()
        return 50.0

    targets: list[Callable[[], None]] = []

    def factory(*, target: Callable[[], None], name: str, daemon: bool) -> threading.Thread:
        targets.append(target)
        return threading.Thread(target=lambda: None, name=name, daemon=daemon)

    pump = Pump(
        "cleanup", tick, clock=clock, first_delay=100.0, wakeable=False, thread_factory=factory
    )
    pump.start()
    targets[0]()  # the pump's loop, run here on the fake clock
    assert ticked == [100.0, 150.0, 200.0]


def test_loop_makes_a_pump_with_its_name_first_delay_and_wakeability() -> None:
    loop = Loop("HA-Cleanup", lambda: 1.0, wake_on_work=False, first_delay=7.0)
    pump = loop.pump(clock=SystemClock())
    assert (pump.name, pump.wakeable, pump._first_delay) == ("HA-Cleanup", False, 7.0)
    assert Loop("w", lambda: 0.0, wake_on_work=True).pump(clock=SystemClock()).wakeable
