"""Test support for the storage heartbeat: an in-memory pool and a recording self-fencer."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable

from cloudha.clock import Clock

__all__ = ["MemoryStorage", "RecordingSelfFencer"]


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
