"""A clock that only moves when told to."""

from __future__ import annotations

import datetime as dt
import math
import threading
from typing import final

__all__ = ["FakeClock"]


@final
class FakeClock:
    """Virtual time for tests and the simulator.

    ``monotonic()`` starts at ``start`` and moves only through :meth:`advance`
    or :meth:`wait`; ``now()`` is the same number of seconds after the Unix
    epoch, in UTC, so ``clock.now().timestamp() == clock.monotonic()``.
    :meth:`wait` does not block: it advances the clock by the full timeout
    (unless the event is already set) and returns ``event.is_set()``.
    """

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"FakeClock start must be a finite number, got {start!r}")
        self._time = float(start)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._time

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._time, dt.UTC)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if not seconds >= 0:
            raise ValueError(f"FakeClock cannot go backwards (advance({seconds!r}))")
        with self._lock:
            self._time += seconds

    def set(self, when: float) -> None:
        """Move time forward to ``when`` (never backwards)."""
        with self._lock:
            if when < self._time:
                raise ValueError(f"FakeClock cannot go backwards from {self._time} to {when}")
            self._time = float(when)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.advance(max(0.0, seconds))
        return event.is_set()

    def __repr__(self) -> str:
        return f"FakeClock({self._time!r})"
