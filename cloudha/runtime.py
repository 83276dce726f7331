"""Threads that drive the pure components on real time.

A :class:`Pump` calls a ``tick()`` function in its own thread, waits the
number of seconds the tick returns with ``clock.wait(stop_event, seconds)``
(never ``time.sleep``), and stops promptly when asked. Threads come from an
injected ``thread_factory`` so the embedding application decides how they
are made (daemon flags, names, instrumentation).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import attrs

from cloudha.clock import Clock
from cloudha.errors import LifecycleError

__all__ = ["Loop", "Pump", "PumpState", "ThreadFactory"]

log = logging.getLogger(__name__)


class ThreadFactory(Protocol):
    """Makes a thread; ``threading.Thread`` fits."""

    def __call__(self, *, target: Callable[[], None], name: str, daemon: bool) -> threading.Thread:
        """A thread, not yet started, that runs ``target``."""


@attrs.frozen
class Loop:
    """One loop of a component, as data: run by a :class:`Pump` or by the simulator.

    Attributes:
        name: the loop's (and its thread's) name.
        tick: does one round of work; returns seconds until the next round.
        wake_on_work: the loop should run at once when HA work is added
            (an HA worker), not only when its delay ends.
    """

    name: str
    tick: Callable[[], float]
    wake_on_work: bool = False


class PumpState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Pump:
    """Runs ``tick`` repeatedly in a thread, sleeping what it returns.

    Args:
        name: the thread's name.
        tick: does one round of work and returns seconds until the next.
        clock: used to wait.
        error_delay: seconds to wait after a tick raised (the error is logged).
        thread_factory: makes the thread (``threading.Thread`` by default).
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], float],
        *,
        clock: Clock,
        error_delay: float = 1.0,
        thread_factory: ThreadFactory = threading.Thread,
    ) -> None:
        self.name = name
        self._tick = tick
        self._clock = clock
        self._error_delay = error_delay
        self._factory = thread_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = PumpState.NEW
        self.ticks = 0

    def start(self) -> None:
        """Start the thread; a pump starts once."""
        if self.state is not PumpState.NEW:
            raise LifecycleError(f"pump {self.name!r} is {self.state.value}; it starts only once")
        self._thread = self._factory(target=self._run, name=self.name, daemon=True)
        self.state = PumpState.RUNNING
        self._thread.start()

    def wake(self) -> None:
        """End the current wait at once: the next tick runs now."""
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to stop and wait for it (up to ``timeout`` seconds)."""
        if self.state is PumpState.NEW:
            self.state = PumpState.STOPPED
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise LifecycleError(f"pump {self.name!r} did not stop within {timeout}s")
        self.state = PumpState.STOPPED

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if self._stop.is_set():  # a stop between the check above and the clear
                break
            try:
                delay = self._tick()
            except Exception:
                log.exception("%s: tick failed", self.name)
                delay = self._error_delay
            self.ticks += 1
            self._clock.wait(self._wake, delay)
