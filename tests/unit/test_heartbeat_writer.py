"""The heartbeat writer: its plan, its driver, its self-fencer (spec §6.2, its differences)."""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import attrs
import pytest

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError
from cloudha.heartbeat import (
    HeartbeatChecker,
    HeartbeatTiming,
    HeartbeatWriter,
    SelfFence,
    SelfFencer,
    Sleep,
    SysrqSelfFencer,
    Write,
    WriterAction,
    format_heartbeat,
    heartbeat_path,
    parse_heartbeat,
    writer_plan,
)
from cloudha.investigators.base import Verdict
from cloudha.model import Pool
from cloudha.testing.clock import FakeClock
from cloudha.testing.heartbeat import MemoryStorage, RecordingSelfFencer

T0 = 1_700_000_000.0
IP = "10.0.0.5"
TIMING = HeartbeatTiming()  # 60 s rounds, 5 tries, 10 s retry sleep, 60 s write timeout
P1 = Pool("nfs1", "/mnt/nfs1")
P2 = Pool("nfs2", "/mnt/nfs2")

Plan = Generator[WriterAction, bool | None, None]


def plan_of(
    pools: Sequence[Pool], *, reboot: bool = True, timing: HeartbeatTiming = TIMING
) -> Plan:
    return writer_plan(lambda: pools, timing, reboot_on_failure=reboot)


def script(plan: Plan, answers: Sequence[bool], steps: int) -> list[WriterAction]:
    """Drive ``plan`` for ``steps`` actions, answering Writes from ``answers`` in order."""
    pending = list(answers)
    seen: list[WriterAction] = []
    answer: bool | None = None
    for _ in range(steps):
        try:
            action = plan.send(answer)
        except StopIteration:
            break
        seen.append(action)
        answer = pending.pop(0) if isinstance(action, Write) else None
    return seen


# -- writer_plan -----------------------------------------------------------


def test_success_on_the_first_try_then_a_round_sleep() -> None:
    assert script(plan_of([P1]), [True, True], 4) == [
        Write(P1, 1),
        Sleep(60.0, "round"),
        Write(P1, 1),
        Sleep(60.0, "round"),
    ]


def test_retries_with_sleeps_then_success() -> None:
    assert script(plan_of([P1]), [False, False, True], 6) == [
        Write(P1, 1),
        Sleep(10.0, "retry"),
        Write(P1, 2),
        Sleep(10.0, "retry"),
        Write(P1, 3),
        Sleep(60.0, "round"),
    ]


def test_exhausted_tries_self_fence_and_end_the_plan() -> None:
    timing = HeartbeatTiming(max_tries=3)
    actions = script(plan_of([P1, P2], timing=timing), [False] * 3, 10)
    assert actions[:5] == [
        Write(P1, 1),
        Sleep(10.0, "retry"),
        Write(P1, 2),
        Sleep(10.0, "retry"),
        Write(P1, 3),
    ]
    (fence,) = actions[5:]
    assert fence == SelfFence(
        P1, "could not write the heartbeat to pool nfs1 (/mnt/nfs1) in 3 tries"
    )


def test_exhausted_tries_without_reboot_log_and_go_on(caplog: pytest.LogCaptureFixture) -> None:
    timing = HeartbeatTiming(max_tries=2)
    with caplog.at_level(logging.ERROR, logger="cloudha.heartbeat"):
        actions = script(plan_of([P1, P2], reboot=False, timing=timing), [False, False, True], 5)
    assert actions == [
        Write(P1, 1),
        Sleep(10.0, "retry"),
        Write(P1, 2),
        Write(P2, 1),
        Sleep(60.0, "round"),
    ]
    assert "could not write the heartbeat to pool nfs1" in caplog.text
    assert "not rebooting" in caplog.text


def test_single_try_has_no_retry_sleep() -> None:
    timing = HeartbeatTiming(max_tries=1)
    assert script(plan_of([P1], timing=timing), [False], 3) == [
        Write(P1, 1),
        SelfFence(P1, "could not write the heartbeat to pool nfs1 (/mnt/nfs1) in 1 tries"),
    ]


def test_every_pool_each_round() -> None:
    assert script(plan_of([P1, P2]), [True, False, True, True, True], 8) == [
        Write(P1, 1),
        Write(P2, 1),
        Sleep(10.0, "retry"),
        Write(P2, 2),
        Sleep(60.0, "round"),
        Write(P1, 1),
        Write(P2, 1),
        Sleep(60.0, "round"),
    ]


def test_empty_pool_list_just_sleeps_rounds() -> None:
    assert script(plan_of([]), [], 2) == [Sleep(60.0, "round"), Sleep(60.0, "round")]


def test_pools_are_read_again_every_round() -> None:
    rounds = iter([[P1], [P1, P2], []])
    calls: list[int] = []

    def pools() -> list[Pool]:
        calls.append(1)
        return next(rounds)

    plan = writer_plan(pools, TIMING, reboot_on_failure=True)
    assert script(plan, [True, True, True], 6) == [
        Write(P1, 1),
        Sleep(60.0, "round"),
        Write(P1, 1),
        Write(P2, 1),
        Sleep(60.0, "round"),
        Sleep(60.0, "round"),
    ]
    assert len(calls) == 3


def test_a_write_must_be_answered_with_a_bool() -> None:
    plan = plan_of([P1])
    assert next(plan) == Write(P1, 1)
    with pytest.raises(TypeError, match="answer Write with True or False, got None"):
        plan.send(None)


# -- a discrete-event driver: the writer and a checker on virtual time ------


WriteOutcome = Callable[[Write, float], tuple[float, bool]]
"""(write, start time) -> (time the attempt ends, whether it wrote)."""


@attrs.define
class Run:
    fenced: list[float] = attrs.field(factory=list)
    checks: list[tuple[float, Verdict]] = attrs.field(factory=list)
    stamps: dict[str, list[tuple[float, float]]] = attrs.field(factory=dict)
    """pool id -> [(time the write became visible, the stamp written)]."""

    def max_age(self, pool_id: str) -> float:
        """The oldest the heartbeat ever got while the writer lived (just before each update)."""
        stamps = self.stamps[pool_id]
        return max(later[0] - earlier[1] for earlier, later in itertools.pairwise(stamps))


def simulate(
    pools: Sequence[Pool],
    outcome: WriteOutcome,
    *,
    until: float,
    timing: HeartbeatTiming = TIMING,
    reboot: bool = True,
    check_every: float = 5.0,
) -> Run:
    """Run the writer plan and a checker on a FakeClock until ``until`` (absolute)."""
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    checker = HeartbeatChecker(storage, clock, timing)
    run = Run(stamps={pool.id: [] for pool in pools})
    queue: list[tuple[float, int, Callable[[], None]]] = []
    counter = itertools.count()

    def at(when: float, action: Callable[[], None]) -> None:
        heapq.heappush(queue, (when, next(counter), action))

    def check() -> None:
        if all(run.stamps.values()):  # once every pool has a first heartbeat
            run.checks.append((clock.monotonic(), checker.check(pools, IP).verdict))

    plan = writer_plan(lambda: pools, timing, reboot_on_failure=reboot)

    def step(answer: bool | None) -> None:
        try:
            action = plan.send(answer)
        except StopIteration:
            return
        now = clock.monotonic()
        if isinstance(action, Write):
            end, ok = outcome(action, now)
            if ok:
                pool = action.pool

                def visible(stamp: float = now) -> None:
                    storage.put(heartbeat_path(pool.mount_point, IP), format_heartbeat(stamp))
                    run.stamps[pool.id].append((clock.monotonic(), stamp))
                    step(True)

                at(end - 0.001, check)  # the oldest moment, just before the update
                at(end, visible)
            else:
                at(end, lambda: step(False))
        elif isinstance(action, Sleep):
            at(now + action.seconds, lambda: step(None))
        else:
            run.fenced.append(now)

    at(T0, lambda: step(None))
    tick = T0
    while tick < until:
        at(tick, check)
        tick += check_every
    while queue and queue[0][0] <= until:
        when, _, action = heapq.heappop(queue)
        clock.set(max(when, clock.monotonic()))
        action()
    return run


def fast_writes(write: Write, start: float) -> tuple[float, bool]:
    return start, True


def outage(begin: float, end: float) -> WriteOutcome:
    """The writer cannot reach the storage in [begin, end): a write then hangs until the
    storage is back (success) or until its timeout (failure), whichever comes first."""

    def outcome(write: Write, start: float) -> tuple[float, bool]:
        if begin <= start < end:
            if end < start + TIMING.write_timeout:
                return end, True
            return start + TIMING.write_timeout, False
        return start, True

    return outcome


def test_healthy_writer_is_always_alive() -> None:
    run = simulate([P1], fast_writes, until=T0 + 1000)
    assert run.fenced == []
    assert {verdict for _, verdict in run.checks} == {Verdict.ALIVE}
    assert run.max_age("nfs1") == pytest.approx(60.0)


@pytest.mark.parametrize("phase", [0.0, 0.5, 7.0, 30.0, 59.0, 59.9, 60.0, 61.0, 100.0, 339.0])
def test_outage_shorter_than_the_retry_budget_never_self_fences_nor_looks_stale(
    phase: float,
) -> None:
    begin = T0 + 120 + phase  # the writer writes at T0, T0+60, T0+120, ...
    end = begin + TIMING.write_budget - 1
    run = simulate([P1], outage(begin, end), until=end + 400, check_every=3.0)
    assert run.fenced == []
    assert len(run.checks) > 250
    assert {verdict for _, verdict in run.checks} == {Verdict.ALIVE}
    assert run.max_age("nfs1") <= TIMING.stale_after(1) - TIMING.clock_skew
    assert run.stamps["nfs1"][-1][0] > end  # it kept writing afterwards


def test_longer_outage_self_fences_exactly_once_before_any_checker_sees_it_dead() -> None:
    begin = T0 + 60  # exactly when the second round's first attempt starts
    end = begin + TIMING.write_budget + 1
    run = simulate([P1], outage(begin, end), until=T0 + 2000)
    assert run.fenced == [begin + TIMING.write_budget]
    dead = [when for when, verdict in run.checks if verdict is Verdict.DEAD]
    assert dead
    assert min(dead) > run.fenced[0]
    last_stamp = run.stamps["nfs1"][-1][1]
    assert min(dead) > last_stamp + TIMING.stale_after(1)


@pytest.mark.parametrize("phase", [0.0, 13.0, 59.0, 75.0, 150.0])
def test_permanent_outage_self_fences_before_a_checker_can_see_it_dead(phase: float) -> None:
    begin = T0 + 120 + phase
    run = simulate([P1, P2], outage(begin, float("inf")), until=T0 + 1500, check_every=2.0)
    assert len(run.fenced) == 1
    dead = [when for when, verdict in run.checks if verdict is Verdict.DEAD]
    assert dead
    assert min(dead) >= run.fenced[0] + TIMING.clock_skew
    assert all(verdict is Verdict.ALIVE for when, verdict in run.checks if when < run.fenced[0])


def test_long_outage_without_reboot_keeps_trying_and_recovers() -> None:
    begin, end = T0 + 60, T0 + 1000
    run = simulate([P1], outage(begin, end), until=T0 + 1500, reboot=False)
    assert run.fenced == []
    assert Verdict.DEAD in {verdict for _, verdict in run.checks}
    assert run.checks[-1][1] is Verdict.ALIVE


def test_slowest_live_writer_stays_within_the_bound_and_needs_the_write_timeout_term() -> None:
    # Two pools; every round, on each pool, four attempts hang until their timeout and
    # the fifth succeeds just before its own: the slowest a live writer can be.
    slack = 0.5

    def slowest(write: Write, start: float) -> tuple[float, bool]:
        if write.attempt < TIMING.max_tries:
            return start + TIMING.write_timeout, False
        return start + TIMING.write_timeout - slack, True

    run = simulate([P1, P2], slowest, until=T0 + 4000, check_every=5.0)
    assert run.fenced == []
    assert {verdict for _, verdict in run.checks} == {Verdict.ALIVE}
    worst = max(run.max_age("nfs1"), run.max_age("nfs2"))
    bound = TIMING.stale_after(2) - TIMING.clock_skew
    assert worst == pytest.approx(bound - 3 * slack)
    # without the trailing write_timeout, this writer would be declared dead
    assert worst > TIMING.frequency + 2 * TIMING.write_budget + TIMING.clock_skew


# -- HeartbeatWriter -------------------------------------------------------


class StopAfterWaits:
    """A Clock over a FakeClock that sets ``stop`` on its ``n``-th wait."""

    def __init__(self, clock: FakeClock, stop: threading.Event, n: int) -> None:
        self.clock = clock
        self.stop = stop
        self.n = n
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def now(self) -> dt.datetime:
        return self.clock.now()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if len(self.waits) >= self.n:
            self.stop.set()
        return self.clock.wait(event, seconds)


def make_writer(
    storage: MemoryStorage,
    clock: Clock,
    *,
    pools: Sequence[Pool] | Callable[[], Sequence[Pool]] = (P1, P2),
    reboot: bool = True,
    fencer: SelfFencer | None = None,
    timing: HeartbeatTiming = TIMING,
) -> HeartbeatWriter:
    return HeartbeatWriter(
        storage=storage,
        clock=clock,
        timing=timing,
        host_ip=IP,
        pools=pools,
        reboot_on_failure=reboot,
        self_fencer=fencer if fencer is not None else RecordingSelfFencer(),
    )


def test_run_writes_every_pool_each_round_until_stopped() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    storage.on_write = lambda path, data: stop.set() if storage.writes == 6 else None
    writer = make_writer(storage, clock)
    writer.run(stop)
    assert storage.writes == 6  # three rounds of two pools
    assert clock.monotonic() == T0 + 2 * TIMING.frequency
    for pool in (P1, P2):
        data, mtime = storage.files[heartbeat_path(pool.mount_point, IP)]
        assert parse_heartbeat(data) == int(T0 + 120)
        assert mtime == T0 + 120
    assert writer.last_success == {"nfs1": T0 + 120, "nfs2": T0 + 120}


def test_run_returns_at_once_when_already_stopped() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    stop.set()
    make_writer(storage, clock).run(stop)
    assert storage.writes == 0
    assert clock.monotonic() == T0


def test_run_self_fences_once_and_ends_when_every_try_fails() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    storage.fail_writes = True
    fencer = RecordingSelfFencer()
    writer = make_writer(storage, clock, fencer=fencer)
    writer.run(threading.Event())
    assert fencer.calls == ["could not write the heartbeat to pool nfs1 (/mnt/nfs1) in 5 tries"]
    assert clock.monotonic() == T0 + 4 * TIMING.retry_sleep
    assert writer.last_success == {}


def test_run_without_reboot_keeps_going_until_stopped() -> None:
    fake = FakeClock(T0)
    storage = MemoryStorage(fake)
    storage.failing_prefixes.add("/mnt/nfs1/")
    stop = threading.Event()
    clock = StopAfterWaits(fake, stop, n=10)
    fencer = RecordingSelfFencer()
    writer = make_writer(storage, clock, reboot=False, fencer=fencer)
    writer.run(stop)
    assert fencer.calls == []
    assert clock.waits == [10.0, 10.0, 10.0, 10.0, 60.0] * 2
    assert list(writer.last_success) == ["nfs2"]


def test_pools_may_be_a_callable() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    storage.on_write = lambda path, data: stop.set()
    make_writer(storage, clock, pools=lambda: [P2]).run(stop)
    assert list(storage.files) == ["/mnt/nfs2/KVMHA/hb-10.0.0.5"]


def test_writer_validates_the_host_ip_and_defaults_to_sysrq() -> None:
    clock = FakeClock(T0)
    with pytest.raises(ConfigurationError) as info:
        HeartbeatWriter(storage=MemoryStorage(), clock=clock, timing=TIMING, host_ip="x", pools=[])
    assert info.value.key == "host_ip"
    writer = HeartbeatWriter(
        storage=MemoryStorage(), clock=clock, timing=TIMING, host_ip="FD00::0:1", pools=[]
    )
    assert writer.host_ip == "fd00::1"
    assert isinstance(writer.self_fencer, SysrqSelfFencer)
    assert "fd00::1" in repr(writer)


def test_write_once_reports_storage_failures(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    writer = make_writer(storage, clock)
    assert writer.write_once(P1) is True
    storage.fail_writes = True
    with caplog.at_level(logging.ERROR, logger="cloudha.heartbeat"):
        assert writer.write_once(P1) is False
    assert "heartbeat write to pool nfs1 (/mnt/nfs1/KVMHA/hb-10.0.0.5) failed" in caplog.text
    assert "simulated storage outage" in caplog.text


def test_write_once_counts_an_unexpected_exception_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryStorage):
        def write_atomic(self, path: str, data: bytes) -> None:
            raise RuntimeError("driver bug")

    clock = FakeClock(T0)
    writer = make_writer(Broken(clock), clock)
    with caplog.at_level(logging.ERROR, logger="cloudha.heartbeat"):
        assert writer.write_once(P1) is False
    assert "driver bug" in caplog.text


def _workers(pool: Pool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"cloudha-heartbeat-write-{pool.id}"]


def test_write_once_times_out_on_a_hung_write_and_does_not_pile_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(T0)
    release = threading.Event()
    storage = MemoryStorage(clock, hang_writes=release)
    timing = HeartbeatTiming(write_timeout=0.05)
    writer = make_writer(storage, clock, timing=timing)
    try:
        with caplog.at_level(logging.ERROR, logger="cloudha.heartbeat"):
            assert writer.write_once(P1) is False
            assert writer.write_once(P1) is False
        assert "timed out after 0.05 s" in caplog.text
        assert "the previous write is still hung after 0.05 s more" in caplog.text
        assert len(_workers(P1)) == 1  # the second attempt started no write
        assert storage.writes == 0
    finally:
        release.set()
    for worker in _workers(P1):
        worker.join(5)
    assert storage.writes == 1  # the hung write finished once released
    assert writer.last_success == {}
    storage.hang_writes = None
    assert writer.write_once(P1) is True
    assert storage.writes == 2
    assert writer.last_success == {"nfs1": T0}


def test_an_attempt_waits_for_a_hung_write_then_writes_afresh() -> None:
    clock = FakeClock(T0)
    release = threading.Event()
    storage = MemoryStorage(clock, hang_writes=release)
    writer = make_writer(storage, clock, timing=HeartbeatTiming(write_timeout=0.2))
    assert writer.write_once(P1) is False
    clock.advance(10)
    timer = threading.Timer(0.02, release.set)
    timer.start()
    try:
        assert writer.write_once(P1) is True  # the stuck write ends during this attempt
    finally:
        release.set()
        timer.join()
    assert storage.writes == 2
    data, _ = storage.files[heartbeat_path(P1.mount_point, IP)]
    assert parse_heartbeat(data) == T0 + 10  # the fresh stamp, not the hung one


def test_no_time_left_after_a_hung_write_fails_the_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Slow:
        """A Clock whose monotonic time jumps 1 s at each reading."""

        def __init__(self) -> None:
            self.fake = FakeClock(T0)

        def monotonic(self) -> float:
            self.fake.advance(1)
            return self.fake.monotonic()

        def now(self) -> dt.datetime:
            return self.fake.now()

        def wait(self, event: threading.Event, seconds: float) -> bool:
            return self.fake.wait(event, seconds)

    release = threading.Event()
    storage = MemoryStorage(hang_writes=release)
    writer = make_writer(storage, Slow(), timing=HeartbeatTiming(write_timeout=0.05))
    assert writer.write_once(P1) is False
    release.set()
    for worker in _workers(P1):
        worker.join(5)
    with caplog.at_level(logging.ERROR, logger="cloudha.heartbeat"):
        assert writer.write_once(P1) is False
    assert "no time left after the previous hung write" in caplog.text
    storage.hang_writes = None
    assert writer.write_once(P1) is True


# -- self-fencers ----------------------------------------------------------


def test_recording_self_fencer_is_a_self_fencer() -> None:
    fencer = RecordingSelfFencer()
    assert isinstance(fencer, SelfFencer)
    assert isinstance(SysrqSelfFencer(), SelfFencer)
    fencer.self_fence("a")
    assert fencer.calls == ["a"]
    assert "1" in repr(fencer)


def test_sysrq_self_fencer_syncs_then_writes_b(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trigger = tmp_path / "sysrq-trigger"
    trigger.write_bytes(b"")
    synced = threading.Event()
    fencer = SysrqSelfFencer(str(trigger), 1.0, sync=synced.set)
    with caplog.at_level(logging.CRITICAL, logger="cloudha.heartbeat"):
        fencer.self_fence("pool nfs1 unwritable")
    assert synced.is_set()
    assert trigger.read_bytes() == b"b"
    assert "pool nfs1 unwritable" in caplog.text
    assert caplog.records[0].levelno == logging.CRITICAL
    assert "sysrq-trigger" in repr(fencer)


def test_sysrq_self_fencer_does_not_wait_forever_for_sync(tmp_path: Path) -> None:
    trigger = tmp_path / "sysrq-trigger"
    hung = threading.Event()

    def hung_sync() -> None:
        hung.wait()

    fencer = SysrqSelfFencer(str(trigger), sync_wait=0.01, sync=hung_sync)
    try:
        fencer.self_fence("reason")
        assert trigger.read_bytes() == b"b"
    finally:
        hung.set()


def test_sysrq_self_fencer_logs_and_raises_when_the_trigger_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fencer = SysrqSelfFencer(str(tmp_path / "missing" / "trigger"), 0.5, sync=lambda: None)
    with (
        caplog.at_level(logging.CRITICAL, logger="cloudha.heartbeat"),
        pytest.raises(FileNotFoundError),
    ):
        fencer.self_fence("reason")
    assert "cannot reset this host" in caplog.text


def test_sysrq_self_fencer_rejects_a_negative_wait() -> None:
    with pytest.raises(ValueError, match="sync_wait"):
        SysrqSelfFencer(sync_wait=-1)
