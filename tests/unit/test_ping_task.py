"""PingTask: direct-agent status probes with retries (spec §2.2)."""

from __future__ import annotations

from cloudha import Host, PingReport, PingTask, ProbeTimeout, Settings
from cloudha.testing import FakeClock, FakeDirectAgentResource


class Flaky:
    """Fails the first ``failures`` probes, then answers."""

    def __init__(self, failures: int, *, raising: bool = False) -> None:
        self.failures = failures
        self.raising = raising
        self.calls: list[float] = []

    def current_status(self, host: Host) -> PingReport | None:
        self.calls.append(0.0)
        if len(self.calls) <= self.failures:
            if self.raising:
                raise ProbeTimeout("no answer", host_id=host.id)
            return None
        return PingReport(host.id)


def drive(task: PingTask, clock: FakeClock, until: float) -> list[float]:
    times = []
    while clock.monotonic() < until:
        times.append(clock.monotonic())
        clock.advance(task.tick())
    return times


def test_success_reports_every_interval_at_fixed_rate() -> None:
    clock = FakeClock()
    got: list[tuple[float, str]] = []
    resource = FakeDirectAgentResource({"x1": True})
    task = PingTask(
        Host("x1"),
        resource,
        lambda r: got.append((clock.monotonic(), r.host_id)),
        settings=Settings(),
        clock=clock,
    )
    times = drive(task, clock, 300)
    assert times == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert [h for _, h in got] == ["x1"] * 5


def test_retries_count_times_timer_apart_then_gives_up_until_next_round() -> None:
    clock = FakeClock()
    settings = Settings.from_mapping({"host.ping.retry.count": 2, "host.ping.retry.timer": 5})
    resource = Flaky(failures=100)
    got: list[PingReport] = []
    task = PingTask(Host("x1"), resource, got.append, settings=settings, clock=clock)
    times = drive(task, clock, 61)
    assert times == [0.0, 5.0, 10.0, 60.0]
    assert got == []
    assert task.failures == 1


def test_retry_succeeds_and_round_keeps_its_rate() -> None:
    clock = FakeClock()
    settings = Settings.from_mapping({"host.ping.retry.count": 3, "host.ping.retry.timer": 5})
    resource = Flaky(failures=1, raising=True)
    got: list[PingReport] = []
    task = PingTask(Host("x1"), resource, got.append, settings=settings, clock=clock)
    times = drive(task, clock, 130)
    assert times == [0.0, 5.0, 60.0, 120.0]
    assert len(got) == 3
    assert task.failures == 0


def test_no_retry_by_default() -> None:
    clock = FakeClock()
    task = PingTask(Host("x1"), Flaky(failures=1), lambda r: None, settings=Settings(), clock=clock)
    assert drive(task, clock, 61) == [0.0, 60.0]
    assert task.failures == 1


def test_resource_bug_counts_as_no_answer() -> None:
    class Broken:
        def current_status(self, host: Host) -> PingReport | None:
            raise KeyError("bug")

    clock = FakeClock()
    task = PingTask(Host("x1"), Broken(), lambda r: None, settings=Settings(), clock=clock)
    assert task.tick() == 60.0
    assert task.failures == 1
