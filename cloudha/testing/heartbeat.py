"""Test support for the storage heartbeat: an in-memory pool, a recording self-fencer
and a fake watchdog."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable

from cloudha.clock import Clock
from cloudha.heartbeat.watchdog import BaseWatchdog

__all__ = ["FakeWatchdog", "MemoryStorage", "RecordingSelfFencer", "check_watchdog"]


class RecordingSelfFencer:
    """A :class:`~cloudha.heartbeat.SelfFencer` that only records each reason in :attr:`calls`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def self_fence(self, reason: str) -> None:
        with self._lock:
            self.calls.append(reason)

    def __repr__(self) -> str:
        return f"RecordingSelfFencer(calls={len(self.calls)})"


class MemoryStorage:
    """A dict-backed :class:`~cloudha.heartbeat.StorageAccess`.

    Attributes:
        files: path → (content, mtime in epoch seconds). Tests may edit it.
        clock: gives the mtime of each write (``clock.now()``); mtime 0.0 without one.
        fail_reads: every read and mtime raises ``OSError(EIO)``.
        fail_writes: every write raises ``OSError(EIO)``.
        failing_prefixes: paths starting with one of these fail reads and writes
            (an outage of one pool).
        hang_writes: when set to an Event, each write blocks until the event is
            set (a hung NFS server), then proceeds.
        on_write: called with (path, data) after each successful write.
        writes: the number of successful writes.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        files: dict[str, tuple[bytes, float]] | None = None,
        failing_prefixes: Iterable[str] = (),
        hang_writes: threading.Event | None = None,
    ) -> None:
        self.files: dict[str, tuple[bytes, float]] = dict(files or {})
        self.clock = clock
        self.fail_reads = False
        self.fail_writes = False
        self.failing_prefixes: set[str] = set(failing_prefixes)
        self.hang_writes = hang_writes
        self.on_write: Callable[[str, bytes], None] | None = None
        self.writes = 0
        self._lock = threading.Lock()

    def put(self, path: str, data: bytes, mtime: float | None = None) -> None:
        """Store ``data`` at ``path`` directly (no failure, no hang); mtime defaults to now."""
        with self._lock:
            self.files[path] = (data, self._now() if mtime is None else mtime)

    def _now(self) -> float:
        return self.clock.now().timestamp() if self.clock is not None else 0.0

    def _check(self, path: str, failing: bool) -> None:
        if failing or any(path.startswith(prefix) for prefix in self.failing_prefixes):
            raise OSError(errno.EIO, "simulated storage outage", path)

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        self._check(path, self.fail_reads)
        with self._lock:
            found = self.files.get(path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return found[0][:max_bytes]

    def mtime(self, path: str) -> float:
        self._check(path, self.fail_reads)
        with self._lock:
            found = self.files.get(path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return found[1]

    def write_atomic(self, path: str, data: bytes) -> None:
        if self.hang_writes is not None:
            self.hang_writes.wait()
        self._check(path, self.fail_writes)
        with self._lock:
            self.files[path] = (bytes(data), self._now())
            self.writes += 1
        if self.on_write is not None:
            self.on_write(path, data)

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self.files)} files)"


class FakeWatchdog(BaseWatchdog):
    """A :class:`~cloudha.ports.Watchdog` that records what it is asked and never resets anything.

    Attributes:
        calls: ``("arm", timeout)``, ``("keepalive",)`` and ``("close", disarm)``
            in order.
        effective: the timeout :meth:`arm` reports (None: the one asked).
        fail_keepalive: every pet raises ``OSError(EIO)``.
        armed_at, last_pet: ``clock.monotonic()`` of the arming and of the
            last pet (None before; 0.0 without a clock).
        expired: :meth:`expire` was called; pets then fail.
        on_expire: called by :meth:`expire` (a test stops its writer there:
            the host would be reset).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        effective: float | None = None,
        fail_keepalive: bool = False,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.effective = effective
        self.fail_keepalive = fail_keepalive
        self.calls: list[tuple[object, ...]] = []
        self.armed_at: float | None = None
        self.last_pet: float | None = None
        self.expired = False
        self.on_expire: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def _now(self) -> float:
        return self.clock.monotonic() if self.clock is not None else 0.0

    @property
    def pets(self) -> int:
        """How many pets succeeded."""
        with self._lock:
            return sum(1 for call in self.calls if call == ("keepalive",))

    @property
    def disarmed(self) -> bool:
        """Closed with the magic close."""
        with self._lock:
            return ("close", True) in self.calls

    def overdue(self) -> bool:
        """Armed, not disarmed, and not petted for its timeout: a real one would have fired."""
        if self.timeout is None or self.disarmed:
            return False
        start = self.last_pet if self.last_pet is not None else self.armed_at
        assert start is not None
        return self._now() - start >= self.timeout

    def expire(self) -> None:
        """The countdown ran out: record it, call :attr:`on_expire`; later pets fail."""
        with self._lock:
            self.expired = True
            self.calls.append(("expire",))
        if self.on_expire is not None:
            self.on_expire()

    def _arm(self, timeout: int) -> float:
        with self._lock:
            self.calls.append(("arm", timeout))
            self.armed_at = self._now()
        return float(timeout if self.effective is None else self.effective)

    def _keepalive(self) -> None:
        if self.fail_keepalive or self.expired:
            raise OSError(errno.EIO, "simulated watchdog failure")
        with self._lock:
            self.calls.append(("keepalive",))
            self.last_pet = self._now()

    def _close(self, *, disarm: bool) -> None:
        with self._lock:
            self.calls.append(("close", disarm))

    def __repr__(self) -> str:
        return f"FakeWatchdog(timeout={self.timeout!r}, calls={len(self.calls)})"


def check_watchdog(make: Callable[[], object], *, timeout: int = 30) -> None:
    """Check fresh watchdogs from ``make()`` against :class:`~cloudha.ports.Watchdog`'s contract.

    Each check uses a new instance (a real device may only be opened by
    one holder at a time, and each instance is closed with the magic
    close): ``arm`` returns a positive float no longer than asked and a
    second ``arm`` raises; ``keepalive`` works while armed and raises
    before ``arm`` and after ``close``; ``close`` twice is harmless.

    Raises:
        AssertionError: listing every broken rule.
    """
    from cloudha.ports import Watchdog

    problems: list[str] = []

    def fresh() -> Watchdog:
        dog = make()
        if not isinstance(dog, Watchdog):
            raise AssertionError(f"{dog!r} has not arm, keepalive and close")
        return dog

    dog = fresh()
    try:
        effective = dog.arm(timeout)
        if not isinstance(effective, float) or not 0 < effective <= timeout:
            problems.append(f"arm({timeout}) returned {effective!r}: not a float in (0, {timeout}]")
        dog.keepalive()
        try:
            dog.arm(timeout)
        except Exception:
            pass
        else:
            problems.append("a second arm() did not raise")
    finally:
        dog.close(disarm=True)
    dog.close(disarm=True)
    try:
        dog.keepalive()
    except Exception:
        pass
    else:
        problems.append("keepalive() after close() did not raise")
    unarmed = fresh()
    try:
        unarmed.keepalive()
    except Exception:
        pass
    else:
        problems.append("keepalive() before arm() did not raise")
    finally:
        unarmed.close(disarm=True)
    if problems:
        raise AssertionError("watchdog contract broken:\n  " + "\n  ".join(problems))


class ScriptedIsolationProbe:
    """An :class:`~cloudha.ports.IsolationProbe` whose answers a test sets.

    Attributes:
        acknowledged: what :meth:`acknowledged_at` returns (epoch seconds, or None).
        answers: what :meth:`isolation_answers` returns.
        pings: how many times the isolation address was asked.
    """

    def __init__(self, acknowledged: float | None = None, answers: bool | None = None) -> None:
        self.acknowledged = acknowledged
        self.answers = answers
        self.pings = 0

    def acknowledged_at(self) -> float | None:
        return self.acknowledged

    def isolation_answers(self) -> bool | None:
        self.pings += 1
        return self.answers


def check_isolation_probe(probe: object) -> None:
    """Check ``probe`` against :class:`~cloudha.ports.IsolationProbe`'s contract.

    Both methods exist and answer without raising; :meth:`acknowledged_at`
    gives None or a finite number of epoch seconds, :meth:`isolation_answers`
    None or a bool.

    Raises:
        AssertionError: naming the broken rule.
    """
    from cloudha.ports import IsolationProbe

    assert isinstance(probe, IsolationProbe), f"{probe!r} is not an IsolationProbe"
    acknowledged = probe.acknowledged_at()
    assert acknowledged is None or (
        isinstance(acknowledged, int | float)
        and not isinstance(acknowledged, bool)
        and acknowledged == acknowledged
        and abs(acknowledged) != float("inf")
    ), f"acknowledged_at() gave {acknowledged!r}: not None or finite epoch seconds"
    answers = probe.isolation_answers()
    assert answers is None or isinstance(answers, bool), (
        f"isolation_answers() gave {answers!r}: not None or a bool"
    )
