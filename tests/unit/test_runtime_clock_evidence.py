"""Pump lifecycle, FakeClock and the evidence log."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from cloudha import Evidence, EvidenceLog, LifecycleError, Pump, Recorder, SystemClock
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
