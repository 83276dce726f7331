"""Threads that drive the pure components on real time.

A :class:`Pump` calls a ``tick()`` function in its own thread, waits the
number of seconds the tick returns with ``clock.wait(stop_event, seconds)``
(never ``time.sleep``), and stops promptly when asked; :meth:`Pump.wake`
cuts the current wait short (new work for idle workers). Threads come from
an injected ``thread_factory`` so the embedding application decides how they
are made (daemon flags, names, instrumentation).

A :class:`Loop` names a tick function a component wants run: the component
says *what* runs (:meth:`HighAvailabilityManager.loops
<cloudha.ha.manager.HighAvailabilityManager.loops>`), the embedder (real
threads through :class:`Pump`, or a simulator on virtual time) says *how*.
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
    """A periodic job of a component, to be run by a :class:`Pump` or a simulator.

    Attributes:
        name: the thread's name (``HA-Worker-0``...).
        tick: does one round and returns the seconds until the next round
            (0.0: run again at once). It should not raise; if it does, the
            runner logs it and waits its error delay.
        wake_on_work: True for loops that new work should wake at once
            (worker loops); the component calls its waker after committing
            new work.
        first_delay: seconds to wait before the first tick (0.0: tick at once).
    """

    name: str
    tick: Callable[[], float]
    wake_on_work: bool = False
    first_delay: float = 0.0

    def pump(
        self,
        *,
        clock: Clock,
        error_delay: float = 1.0,
        thread_factory: ThreadFactory = threading.Thread,
    ) -> Pump:
        """A (not yet started) :class:`Pump` that runs this loop on real threads."""
        return Pump(
            self.name,
            self.tick,
            clock=clock,
            error_delay=error_delay,
            thread_factory=thread_factory,
            first_delay=self.first_delay,
            wakeable=self.wake_on_work,
        )


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
        first_delay: seconds to wait before the first tick.
        wakeable: whether :meth:`wake` cuts waits short. A pump that is not
            waits on its stop event alone and ignores :meth:`wake`.

    :meth:`wake` ends the current wait at once (or, during a tick, makes the
    next wait end at once), so a wake-up is never lost; :meth:`stop` does too.
    """

    def __init__(
        self,
        name: str,
        tick: Callable[[], float],
        *,
        clock: Clock,
        error_delay: float = 1.0,
        thread_factory: ThreadFactory = threading.Thread,
        first_delay: float = 0.0,
        wakeable: bool = True,
    ) -> None:
        self.name = name
        self._tick = tick
        self._clock = clock
        self._error_delay = error_delay
        self._factory = thread_factory
        self._first_delay = first_delay
        self._stop = threading.Event()
        # A pump that cannot be woken waits on its stop event itself.
        self._wake = threading.Event() if wakeable else self._stop
        self.wakeable = wakeable
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

    @property
    def thread(self) -> threading.Thread | None:
        """The pump's thread (None before :meth:`start`)."""
        return self._thread

    def wake(self) -> None:
        """Cut the current wait short: the next tick runs at once (no-op unless wakeable)."""
        if self.wakeable:
            self._wake.set()

    def request_stop(self) -> None:
        """Ask the thread to stop, without waiting for it (see :meth:`join`)."""
        self._stop.set()
        self._wake.set()
        self.state = PumpState.STOPPED

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True when it has (or never ran)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to stop and wait for it (up to ``timeout`` seconds)."""
        if self.state is PumpState.NEW:
            self.state = PumpState.STOPPED
            return
        self.request_stop()
        if not self.join(timeout):
            raise LifecycleError(f"pump {self.name!r} did not stop within {timeout}s")

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until woken; True when the pump is stopping."""
        if self._stop.is_set():
            return True
        if seconds > 0:
            self._clock.wait(self._wake, seconds)
        return self._stop.is_set()

    def _run(self) -> None:
        if self._first_delay > 0 and self._pause(self._first_delay):
            return
        while not self._stop.is_set():
            if self.wakeable:
                # Cleared before the tick: a wake-up during the tick ends the next wait.
                self._wake.clear()
            try:
                delay = self._tick()
            except Exception:
                log.exception("%s: tick failed", self.name)
                delay = self._error_delay
            self.ticks += 1
            if self._pause(delay):
                break
