"""The Host-HA manager's bounded executors (CloudStack's health, activity, recovery and
fence pools, ``ha.max.*``; spec §7.5).

A :class:`~cloudha.ports.TaskExecutor` takes a task or refuses it when it is
full, and runs one call under a time limit. Two implementations:

* :class:`BoundedExecutor`: ``workers`` threads (``ha.max.concurrent.*``)
  over a queue of at most ``pending`` tasks (``ha.max.pending.*``). A full
  queue refuses the task (``submit`` returns False); the manager's next poll
  offers it again. CloudStack runs it in the poller's own thread instead
  (``CallerRunsPolicy``), which stalls every other host's poll behind one
  slow BMC.
* :class:`InlineExecutor`: runs tasks in the caller's thread and judges the
  time limit by the injected clock (tests and the simulator).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar, final

from cloudha.clock import Clock
from cloudha.deadline import DeadlineExceeded, DeadlineRunner
from cloudha.errors import ConfigurationError
from cloudha.runtime import ThreadFactory

__all__ = ["BoundedExecutor", "InlineExecutor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@final
class InlineExecutor:
    """Runs every task at once in the caller's thread (never full).

    A call that moved ``clock`` past its limit counts as timed out
    (:class:`TimeoutError`), its result dropped.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def submit(self, task: Callable[[], None]) -> bool:
        task()
        return True

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        started = self.clock.monotonic()
        result = fn()
        took = self.clock.monotonic() - started
        if took > timeout:
            raise TimeoutError(f"took {took:g}s, more than its {timeout:g}s")
        return result

    def shutdown(self, timeout: float) -> None:
        """Nothing runs in the background."""


_STOP = object()


@final
class BoundedExecutor:
    """``workers`` threads over a queue of at most ``pending`` tasks.

    Args:
        name: names the threads (``<name>-<n>``) and the log lines.
        workers: threads running tasks (at least 1).
        pending: tasks that may wait (at least 1); more are refused.
        thread_factory: makes the threads (started on the first task).
    """

    def __init__(
        self,
        name: str,
        *,
        workers: int,
        pending: int,
        thread_factory: ThreadFactory = threading.Thread,
    ) -> None:
        for key, value in (("workers", workers), ("pending", pending)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"{name}: {key} must be a whole number >= 1, got {value!r}",
                    key=key,
                    value=value,
                )
        self.name = name
        self.threads = workers
        self.pending = pending
        self._factory = thread_factory
        self._queue: queue.Queue[object] = queue.Queue(maxsize=pending)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._deadline = DeadlineRunner(name)

    def submit(self, task: Callable[[], None]) -> bool:
        """Queue ``task``; False when the queue is full or the executor stopped."""
        with self._lock:
            if self._stopped:
                return False
            try:
                self._queue.put_nowait(task)
            except queue.Full:
                log.warning("%s: %d tasks pending already; task refused", self.name, self.pending)
                return False
            if not self._threads:
                for index in range(self.threads):
                    thread = self._factory(
                        target=self._work, name=f"{self.name}-{index}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
        return True

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn``, giving up after ``timeout`` wall seconds (:class:`TimeoutError`)."""
        try:
            return self._deadline.run(lambda _ticket: fn(), timeout, label=self.name)
        except DeadlineExceeded:
            raise TimeoutError(f"no answer within {timeout:g}s") from None

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is _STOP:
                return
            try:
                task()  # type: ignore[operator]
            except Exception:
                log.exception("%s: task raised", self.name)

    def shutdown(self, timeout: float) -> None:
        """Refuse new tasks, let the queued ones finish, join the threads within ``timeout``."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join(timeout)
