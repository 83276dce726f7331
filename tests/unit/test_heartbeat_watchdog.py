"""The writer's watchdog: the timing relation, the plan's pets, the driver, the Linux adapter."""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cloudha.errors import ConfigurationError
from cloudha.heartbeat import (
    HeartbeatTiming,
    HeartbeatWriter,
    LinuxWatchdog,
    Pet,
    SelfFence,
    Sleep,
    Write,
    WriterAction,
    writer_plan,
)
from cloudha.heartbeat.watchdog import WDIOC_GETTIMEOUT, WDIOC_KEEPALIVE, WDIOC_SETTIMEOUT
from cloudha.model import Pool
from cloudha.ports import Watchdog
from cloudha.testing import FakeClock, FakeWatchdog, MemoryStorage, RecordingSelfFencer
from cloudha.testing import check_watchdog as check_watchdog_contract

T0 = 1_700_000_000.0
IP = "10.0.0.5"
TIMING = HeartbeatTiming()  # 60 s rounds, 5 tries, 10 s retry sleep, 60 s write timeout, 5 s skew
P1 = Pool("nfs1", "/mnt/nfs1")
P2 = Pool("nfs2", "/mnt/nfs2")


# -- the ioctl numbers ------------------------------------------------------------


def test_ioctl_numbers_are_the_kernels() -> None:
    # include/uapi/linux/watchdog.h on the asm-generic layout
    assert WDIOC_KEEPALIVE == 0x80045705
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707


# -- the timing relation -----------------------------------------------------------


def test_watchdog_limit_is_the_one_pool_stale_bound_less_the_skew() -> None:
    assert TIMING.watchdog_limit == 460.0
    assert TIMING.watchdog_limit == TIMING.stale_after(1) - TIMING.clock_skew
    assert TIMING.may_pet(0.0, 300.0, 30.0)
    assert TIMING.may_pet(129.9, 300.0, 30.0)
    assert not TIMING.may_pet(130.0, 300.0, 30.0)  # strictly below


def test_check_watchdog_accepts_the_defaults() -> None:
    TIMING.check_watchdog(300.0, 30.0)
    TIMING.check_watchdog(429.0, 30.0)


@pytest.mark.parametrize(
    ("timeout", "margin", "words"),
    [
        (430.0, 30.0, "cloudha.watchdog.timeout (430 s) + cloudha.watchdog.reset.margin (30 s)"),
        (600.0, 1.0, "must be below 460 s"),
        (60.0, 1.0, "must be longer than kvm.heartbeat.update.frequency (60 s)"),
        (0.0, 1.0, "cloudha.watchdog.timeout must be a finite number of seconds > 0"),
        (100.0, float("nan"), "cloudha.watchdog.reset.margin must be a finite number"),
        (True, 1.0, "cloudha.watchdog.timeout must be"),
    ],
)
def test_check_watchdog_names_the_keys(timeout: float, margin: float, words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TIMING.check_watchdog(timeout, margin)
    assert words in str(caught.value)
    assert caught.value.key in {"cloudha.watchdog.timeout", "cloudha.watchdog.reset.margin"}


def test_unsafe_timeout_names_the_heartbeat_keys_too() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TIMING.check_watchdog(450.0, 30.0)
    message = str(caught.value)
    for key in (
        "kvm.heartbeat.update.frequency",
        "heartbeat.update.timeout",
        "kvm.heartbeat.update.retry.sleep",
        "max.tries",
    ):
        assert key in message


# -- the plan ----------------------------------------------------------------------


def drive(
    pools: Sequence[Pool], answers: Sequence[bool], steps: int, *, reboot: bool = False
) -> list[WriterAction]:
    plan = writer_plan(lambda: pools, TIMING, reboot_on_failure=reboot, watchdog=True)
    pending = list(answers)
    seen: list[WriterAction] = []
    answer: bool | None = None
    for _ in range(steps):
        action = plan.send(answer)
        seen.append(action)
        answer = pending.pop(0) if isinstance(action, Write) else None
    return seen


def test_plan_pets_after_a_round_that_wrote_every_pool() -> None:
    seen = drive([P1, P2], [True, True, True, True], 8)
    assert seen == [
        Write(P1, 1),
        Write(P2, 1),
        Pet(),
        Sleep(60.0, "round"),
        Write(P1, 1),
        Write(P2, 1),
        Pet(),
        Sleep(60.0, "round"),
    ]


def test_plan_does_not_pet_after_a_round_with_a_pool_unwritten() -> None:
    # Armed by a first full round; a later round with P2 unwritten gives no pet.
    seen = drive([P1, P2], [True, True] + [True] + [False] * 5 + [True, True], 19)
    rounds = [i for i, action in enumerate(seen) if action == Sleep(60.0, "round")]
    second_round = seen[rounds[0] + 1 : rounds[1] + 1]
    assert seen[: rounds[0]] == [Write(P1, 1), Write(P2, 1), Pet()]
    assert Pet() not in second_round
    assert not any(isinstance(a, SelfFence) for a in second_round)  # reboot is off
    assert seen[rounds[1] + 1 :][:3] == [Write(P1, 1), Write(P2, 1), Pet()]


def test_plan_resets_the_host_when_its_first_round_fails_before_the_watchdog_is_armed() -> None:
    # Arming restarts any countdown a previous writer left running, so a writer
    # that cannot write its first heartbeat must not arm: it resets the host.
    seen = drive([P1, P2], [True] + [False] * 5, 11)
    fence = seen[-1]
    assert isinstance(fence, SelfFence)
    assert fence.pool == P2
    assert "not armed yet" in fence.reason
    assert Pet() not in seen


def test_plan_does_not_pet_without_pools_nor_without_a_watchdog() -> None:
    assert drive([], [], 3) == [Sleep(60.0, "round")] * 3
    plain = writer_plan(lambda: [P1], TIMING, reboot_on_failure=True)
    assert [plain.send(None), plain.send(True)] == [Write(P1, 1), Sleep(60.0, "round")]


# -- safety: a host that stops petting is reset before its heartbeat is stale ------------


WriteOutcome = Callable[[Write, float], tuple[float, bool]]


def run_until_hang(
    pools: Sequence[Pool], outcome: WriteOutcome, hang_at: float, timeout: float, margin: float
) -> tuple[dict[str, float], float | None, int]:
    """Drive the plan with pets guarded by may_pet until the host hangs at ``hang_at``.

    Returns each pool's last stamp, the last pet and how many pets were skipped.
    """
    plan = writer_plan(lambda: pools, TIMING, reboot_on_failure=False, watchdog=True)
    queue: list[tuple[float, int, Callable[[], None]]] = []
    counter = itertools.count()
    stamps: dict[str, float] = {}
    state: dict[str, float | None] = {"round": None, "pet": T0}  # arming counts as a pet
    skipped = [0]

    def at(when: float, action: Callable[[], None]) -> None:
        heapq.heappush(queue, (when, next(counter), action))

    def step(answer: bool | None, now: float) -> None:
        action = plan.send(answer)
        if isinstance(action, Write):
            end, ok = outcome(action, now)
            if ok:
                if state["round"] is None:
                    state["round"] = now
                pool_id = action.pool.id

                def visible() -> None:
                    stamps[pool_id] = now
                    step(True, end)

                at(end, visible)
            else:
                at(end, lambda: step(False, end))
        elif isinstance(action, Pet):
            started = state["round"]
            assert started is not None
            if TIMING.may_pet(now - started, timeout, margin):
                state["pet"] = now
            else:
                skipped[0] += 1
            state["round"] = None
            step(None, now)
        elif isinstance(action, Sleep):
            if action.reason == "round":
                state["round"] = None
            at(now + action.seconds, lambda: step(None, now + action.seconds))

    at(T0, lambda: step(None, T0))
    while queue and queue[0][0] < hang_at:
        _, _, action = heapq.heappop(queue)
        action()
    return stamps, state["pet"], skipped[0]


def slow_storage(seconds: float, failing_until: float = 0.0) -> WriteOutcome:
    """Every write takes ``seconds``; before ``failing_until`` each one times out."""

    def outcome(write: Write, start: float) -> tuple[float, bool]:
        if start < failing_until:
            return start + TIMING.write_timeout, False
        return start + seconds, True

    return outcome


@pytest.mark.parametrize("hang_after", [1.0, 59.0, 61.0, 200.0, 333.3, 1000.0, 1799.0])
@pytest.mark.parametrize(
    "outcome",
    [slow_storage(0.0), slow_storage(55.0), slow_storage(59.9, failing_until=T0 + 500)],
    ids=["fast", "slow", "outage-then-slow"],
)
@pytest.mark.parametrize("pools", [[P1], [P1, P2]], ids=["one-pool", "two-pools"])
def test_a_hung_host_is_reset_before_any_checker_calls_its_heartbeat_stale(
    hang_after: float, outcome: WriteOutcome, pools: Sequence[Pool]
) -> None:
    timeout, margin = 400.0, 30.0  # close to the limit: the pet guard has to work
    TIMING.check_watchdog(timeout, margin)
    stamps, last_pet, _ = run_until_hang(pools, outcome, T0 + hang_after, timeout, margin)
    assert last_pet is not None
    reset_by = last_pet + timeout + margin
    for pool in pools:
        stamp = stamps.get(pool.id)
        if stamp is None:
            continue  # no heartbeat at all: UNKNOWN to every checker, never stale
        # the earliest real time a checker (any pool count, clock skew ahead) sees it stale
        stale_from = stamp + TIMING.stale_after(1) - TIMING.clock_skew
        assert reset_by < stale_from, (pool.id, stamp, last_pet)


def test_the_pet_guard_skips_pets_that_would_outlive_the_first_write() -> None:
    # two pools, each write takes 55 s: the round's first write is 110 s old at the pet
    _, _, skipped = run_until_hang([P1, P2], slow_storage(55.0), T0 + 2000, 400.0, 30.0)
    assert skipped > 0
    _, _, none_skipped = run_until_hang([P1, P2], slow_storage(55.0), T0 + 2000, 300.0, 30.0)
    assert none_skipped == 0


# -- the driver ----------------------------------------------------------------------


def make_writer(
    storage: MemoryStorage,
    clock: FakeClock,
    watchdog: Watchdog | None,
    *,
    reboot: bool = True,
    pools: Sequence[Pool] = (P1, P2),
    timeout: float = 300.0,
    margin: float = 30.0,
) -> HeartbeatWriter:
    return HeartbeatWriter(
        storage=storage,
        clock=clock,
        timing=TIMING,
        host_ip=IP,
        pools=pools,
        reboot_on_failure=reboot,
        self_fencer=RecordingSelfFencer(),
        watchdog=watchdog,
        watchdog_timeout=timeout,
        reset_margin=margin,
    )


def test_writer_arms_pets_each_round_and_disarms_on_a_clean_stop() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    storage.on_write = lambda path, data: stop.set() if storage.writes == 6 else None
    dog = FakeWatchdog(clock)
    writer = make_writer(storage, clock, dog)
    writer.run(stop)
    # armed by the first full round (at T0), petted by the second; stopped in the third
    assert dog.calls == [("arm", 300), ("keepalive",), ("close", True)]
    assert dog.timeout == 300.0
    assert writer.last_pet == T0 + 60
    assert not dog.overdue()


def test_writer_does_not_pet_while_a_pool_cannot_be_written() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()

    def on_write(path: str, data: bytes) -> None:
        if storage.writes == 2:  # the first round wrote both pools: armed
            storage.failing_prefixes.add("/mnt/nfs2/")
        if storage.writes == 6:
            stop.set()

    storage.on_write = on_write
    dog = FakeWatchdog(clock)
    writer = make_writer(storage, clock, dog, reboot=False)
    writer.run(stop)
    assert dog.calls == [("arm", 300), ("close", True)]  # armed, never petted again
    assert writer.last_pet == T0
    # four rounds: the first, then three with nfs2 failing and no pet
    assert clock.monotonic() == T0 + TIMING.frequency + 3 * (
        4 * TIMING.retry_sleep + TIMING.frequency
    )
    assert storage.writes == 6


def test_writer_leaves_the_watchdog_armed_when_it_self_fences() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()

    def on_write(path: str, data: bytes) -> None:
        if storage.writes == 2:  # armed by the first round, then every write fails
            storage.fail_writes = True

    storage.on_write = on_write
    dog = FakeWatchdog(clock)
    writer = make_writer(storage, clock, dog)
    writer.run(stop)
    assert dog.calls == [("arm", 300), ("close", False)]


def test_writer_that_cannot_write_its_first_round_resets_without_arming() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    storage.fail_writes = True
    dog = FakeWatchdog(clock)
    writer = make_writer(storage, clock, dog, reboot=False)
    writer.run(threading.Event())
    assert dog.calls == []  # a countdown left by an earlier writer is not restarted
    fencer = writer.self_fencer
    assert isinstance(fencer, RecordingSelfFencer)
    assert len(fencer.calls) == 1
    assert "not armed yet" in fencer.calls[0]


def test_writer_skips_a_pet_whose_round_started_too_long_ago() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()

    def on_write(path: str, data: bytes) -> None:
        if path.startswith("/mnt/nfs1/"):
            clock.advance(140.0)  # the second pool's write starts 140 s after the first's
        if storage.writes == 4:
            stop.set()

    storage.on_write = on_write
    dog = FakeWatchdog(clock)
    writer = make_writer(storage, clock, dog)
    writer.run(stop)
    # the first round may not arm either: a countdown started 140 s after its
    # oldest write would end after that write is stale (140 + 300 + 30 >= 460)
    assert dog.calls == []
    assert writer.skipped_pets == 1


def test_writer_goes_on_when_a_pet_fails(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    storage.on_write = lambda path, data: stop.set() if storage.writes == 6 else None
    dog = FakeWatchdog(clock, fail_keepalive=True)
    writer = make_writer(storage, clock, dog)
    writer.run(stop)
    assert storage.writes == 6
    assert writer.last_pet == T0  # the arming; the second round's pet failed
    assert "cannot pet the watchdog" in caplog.text


def test_writer_refuses_an_unsafe_watchdog_timeout_at_construction() -> None:
    clock = FakeClock(T0)
    with pytest.raises(ConfigurationError, match=r"cloudha\.watchdog\.timeout \(440 s\)"):
        make_writer(MemoryStorage(clock), clock, FakeWatchdog(clock), timeout=440.0)
    # without a watchdog the values are not used, so not checked
    make_writer(MemoryStorage(clock), clock, None, timeout=440.0)


def test_writer_refuses_a_watchdog_running_longer_than_asked() -> None:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    dog = FakeWatchdog(clock, effective=600.0)
    writer = make_writer(storage, clock, dog)
    with pytest.raises(ConfigurationError, match="600 s countdown"):
        writer.run(threading.Event())
    assert dog.calls == [("arm", 300), ("close", True)]
    assert storage.writes == 2  # armed after the first round


def test_fake_watchdog_expires_on_demand() -> None:
    clock = FakeClock(T0)
    dog = FakeWatchdog(clock)
    fired: list[bool] = []
    dog.on_expire = lambda: fired.append(True)
    dog.arm(10)
    clock.advance(9.0)
    assert not dog.overdue()
    clock.advance(1.0)
    assert dog.overdue()
    dog.expire()
    assert fired == [True]
    with pytest.raises(OSError, match="simulated watchdog failure"):
        dog.keepalive()
    check_watchdog_contract(FakeWatchdog)


# -- the Linux adapter, through a fake device --------------------------------------------


class FakeDevice:
    """A regular file as /dev/watchdog, with the watchdog ioctls emulated."""

    def __init__(
        self,
        path: Path,
        *,
        settable: bool = True,
        readable: bool = True,
        rounds_to: int | None = None,
    ) -> None:
        self.path = path
        path.write_bytes(b"")
        self.settable = settable
        self.readable = readable
        self.rounds_to = rounds_to
        self.timeout = 60
        self.requests: list[tuple[int, int]] = []
        self.open_fds: set[int] = set()

    def opener(self, path: str) -> int:
        assert path == str(self.path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.open_fds.add(fd)
        return fd

    def closer(self, fd: int) -> None:
        self.open_fds.discard(fd)
        os.close(fd)

    def ioctl(self, fd: int, request: int, buffer: bytearray) -> int:
        assert fd in self.open_fds
        (value,) = struct.unpack("i", bytes(buffer))
        self.requests.append((request, value))
        if request == WDIOC_SETTIMEOUT:
            if not self.settable:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            self.timeout = self.rounds_to if self.rounds_to is not None else value
            buffer[:] = struct.pack("i", self.timeout)
            return 0
        if request == WDIOC_GETTIMEOUT:
            if not self.readable:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            buffer[:] = struct.pack("i", self.timeout)
            return 0
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def watchdog(self) -> LinuxWatchdog:
        return LinuxWatchdog(
            str(self.path), opener=self.opener, ioctl=self.ioctl, closer=self.closer
        )

    def written(self) -> bytes:
        return self.path.read_bytes()


def test_linux_watchdog_sets_the_timeout_pets_by_writing_and_closes_with_v(
    tmp_path: Path,
) -> None:
    device = FakeDevice(tmp_path / "watchdog")
    dog = device.watchdog()
    assert dog.arm(45) == 45.0
    assert device.requests == [(WDIOC_SETTIMEOUT, 45), (WDIOC_GETTIMEOUT, 0)]
    dog.keepalive()
    dog.keepalive()
    assert device.written() == b"\0\0"
    dog.close(disarm=True)
    assert device.written() == b"\0\0V"
    assert device.open_fds == set()
    dog.close(disarm=True)  # twice is harmless
    with pytest.raises(RuntimeError):
        dog.keepalive()


def test_linux_watchdog_closed_armed_never_writes_v(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = FakeDevice(tmp_path / "watchdog")
    dog = device.watchdog()
    dog.arm(45)
    dog.keepalive()
    dog.close(disarm=False)
    assert device.written() == b"\0"
    assert device.open_fds == set()
    assert "closed without disarming" in caplog.text


def test_linux_watchdog_reads_the_drivers_timeout_when_it_cannot_be_set(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "watchdog", settable=False)
    device.timeout = 30
    dog = device.watchdog()
    assert dog.arm(45) == 30.0  # shorter than asked is safe
    dog.close(disarm=True)


def test_linux_watchdog_uses_the_set_answer_when_the_timeout_cannot_be_read(
    tmp_path: Path,
) -> None:
    device = FakeDevice(tmp_path / "watchdog", readable=False, rounds_to=40)
    dog = device.watchdog()
    assert dog.arm(45) == 40.0
    dog.close(disarm=True)


@pytest.mark.parametrize(
    ("device_kw", "words"),
    [
        ({"settable": False, "readable": False}, "cannot read its timeout"),
        ({"rounds_to": 64}, "uses a 64 s timeout where 45 s was asked"),
    ],
)
def test_linux_watchdog_refuses_a_timeout_it_cannot_trust_and_disarms(
    tmp_path: Path, device_kw: dict[str, object], words: str
) -> None:
    device = FakeDevice(tmp_path / "watchdog", **device_kw)  # type: ignore[arg-type]
    dog = device.watchdog()
    with pytest.raises(ConfigurationError, match=words):
        dog.arm(45)
    assert device.written() == b"V"
    assert device.open_fds == set()
    assert not dog.armed


def test_linux_watchdog_on_a_regular_file_with_the_real_ioctl(tmp_path: Path) -> None:
    # fcntl.ioctl on a plain file fails with ENOTTY: the timeout cannot be checked
    path = tmp_path / "not-a-watchdog"
    path.write_bytes(b"")
    dog = LinuxWatchdog(str(path))
    with pytest.raises(ConfigurationError, match="cannot read its timeout"):
        dog.arm(30)
    assert path.read_bytes() == b"V"


def test_linux_watchdog_rejects_fractional_timeouts_and_missing_devices(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="whole number of seconds"):
        LinuxWatchdog(str(tmp_path / "x")).arm(2.5)
    with pytest.raises(FileNotFoundError):
        LinuxWatchdog(str(tmp_path / "missing")).arm(30)


def test_linux_watchdog_meets_the_contract(tmp_path: Path) -> None:
    device = FakeDevice(tmp_path / "watchdog")
    check_watchdog_contract(device.watchdog)
