"""Time, injected.

Decision logic never reads the system clock: it is given a :class:`Clock`.
``monotonic()`` orders events and measures intervals; ``now()`` is wall time
for what is persisted or shared between management servers (the host row's
``last_ping``); ``wait()`` is the only way a cloudha thread pauses.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol, final, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What cloudha needs from time.

    Implementations must be thread-safe. ``monotonic()`` never goes backwards.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def now(self) -> dt.datetime:
        """The current wall time, timezone-aware (UTC)."""

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Block until ``event`` is set or ``seconds`` pass; return ``event.is_set()``."""


@final
class SystemClock:
    """The real clock: :func:`time.monotonic`, UTC wall time, ``Event.wait``."""

    # The builtin itself, not a wrapper: the ping map calls it once per ping.
    monotonic = staticmethod(time.monotonic)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"
