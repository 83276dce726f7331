"""The shared "wait at most the timeout, abandon the worker" runner."""

from __future__ import annotations

import threading
import time

import pytest

from cloudha.deadline import DeadlineExceeded, DeadlineRunner, Ticket


def wait_until(predicate: object, limit: float = 5.0) -> bool:
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def test_results_and_errors_come_back_to_the_caller() -> None:
    runner = DeadlineRunner("t")
    assert runner.run(lambda _t: 42, 5, label="answer") == 42

    def boom(_t: Ticket[int]) -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError) as info:
        runner.run(boom, 5, label="boom")
    assert info.value.__traceback__ is not None
    assert runner.lingering == 0


def test_a_stuck_call_is_abandoned_on_time_and_counted_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = DeadlineRunner("t")
    release = threading.Event()
    seen: list[bool] = []

    def stuck(ticket: Ticket[str]) -> str:
        release.wait(10)
        seen.append(ticket.abandoned)
        return "late"

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"stuck: no answer within 0\.1 s"):
        runner.run(stuck, 0.1, label="stuck")
    assert time.monotonic() - started < 1.0
    assert runner.lingering == 1
    assert "t stuck did not finish within 0.1 s" in caplog.text
    release.set()
    assert wait_until(lambda: runner.lingering == 0)
    assert seen == [True]
    assert isinstance(DeadlineExceeded("x"), TimeoutError)
