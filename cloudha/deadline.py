"""Calls that must not hold their caller past a deadline.

Some libraries cloudha drives cannot be told to give up (libvirt has no
connect timeout, pyghmi retries on its own schedule, a stuck TCP read).
:class:`DeadlineRunner` runs such a call on a daemon thread and waits at
most the timeout; when the timeout passes the worker is **abandoned**: the
caller gets :class:`DeadlineExceeded`, the worker finishes on its own (it
must release its own resources), its late result is dropped, and
:attr:`DeadlineRunner.lingering` counts it until it returns. Daemon threads
never hold up the interpreter's exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, final

__all__ = ["DeadlineExceeded", "DeadlineRunner", "Ticket"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call did not finish in time; its worker was abandoned."""


@final
class Ticket(Generic[T]):
    """One call's hand-over between its worker and its caller."""

    __slots__ = ("_abandoned", "_done", "_error", "_finished", "_lock", "_result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished = False
        self._abandoned = False
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def abandoned(self) -> bool:
        """True once the caller stopped waiting: a worker that has not acted yet may skip."""
        with self._lock:
            return self._abandoned


@final
class DeadlineRunner:
    """Runs calls on daemon threads, each waited for at most its timeout; thread-safe.

    Args:
        name: prefix of the worker threads' names and of log lines.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._lingering = 0

    @property
    def lingering(self) -> int:
        """Abandoned workers that have not returned yet."""
        with self._lock:
            return self._lingering

    def run(self, work: Callable[[Ticket[T]], T], timeout: float, *, label: str) -> T:
        """Run ``work(ticket)`` on a daemon thread; wait at most ``timeout`` seconds.

        Returns what ``work`` returned, or raises what it raised (without the
        worker's traceback frames, so they keep nothing alive).

        Raises:
            DeadlineExceeded: ``work`` had not finished within ``timeout``.
        """
        ticket: Ticket[T] = Ticket()
        worker = threading.Thread(
            target=self._work, args=(ticket, work, label), name=f"{self.name}:{label}", daemon=True
        )
        worker.start()
        ticket._done.wait(max(0.0, timeout))
        with ticket._lock:
            if not ticket._finished:
                ticket._abandoned = True
                with self._lock:
                    self._lingering += 1
                log.warning(
                    "%s %s did not finish within %.3g s; its worker is left to finish on its own",
                    self.name,
                    label,
                    timeout,
                )
                raise DeadlineExceeded(f"{label}: no answer within {timeout:.3g} s")
        if ticket._error is not None:
            raise ticket._error
        return ticket._result  # type: ignore[return-value]

    def _work(self, ticket: Ticket[T], work: Callable[[Ticket[T]], T], label: str) -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work(ticket)
        except BaseException as exc:
            error = exc.with_traceback(None)
        with ticket._lock:
            ticket._result = result
            ticket._error = error
            ticket._finished = True
            ticket._done.set()
            abandoned = ticket._abandoned
        if abandoned:
            with self._lock:
                self._lingering -= 1
            log.info(
                "abandoned %s %s returned late (%s)",
                self.name,
                label,
                "ok" if error is None else type(error).__name__,
            )
