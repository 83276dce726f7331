"""The storage heartbeat's timing, and the staleness bound derived from it."""

from __future__ import annotations

import math

import attrs

from cloudha.errors import ConfigurationError
from cloudha.settings import Settings

__all__ = ["HeartbeatTiming"]


@attrs.frozen
class HeartbeatTiming:
    """How the writer paces itself, and when a checker may call a heartbeat stale.

    Attributes (float seconds, from the §6.1 agent properties):
        frequency: the sleep between rounds (``kvm.heartbeat.update.frequency``).
        max_tries: write attempts per pool per round (``kvm.heartbeat.update.max.tries``).
        retry_sleep: the sleep between failed attempts (``kvm.heartbeat.update.retry.sleep``).
        write_timeout: how long one attempt may take (``heartbeat.update.timeout``).
        clock_skew: how far apart the writer's and a checker's clocks may be.

    Raises:
        ConfigurationError: naming the field, for a duration that is not a
            finite number > 0 (``clock_skew`` may be 0) or ``max_tries`` < 1.
    """

    frequency: float = 60.0
    max_tries: int = 5
    retry_sleep: float = 10.0
    write_timeout: float = 60.0
    clock_skew: float = 5.0

    def __attrs_post_init__(self) -> None:
        for name in ("frequency", "retry_sleep", "write_timeout", "clock_skew"):
            value = getattr(self, name)
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value >= 0 if name == "clock_skew" else value > 0)
            )
            if not ok:
                bound = ">= 0" if name == "clock_skew" else "> 0"
                raise ConfigurationError(
                    f"heartbeat timing: {name} must be a finite number {bound} (seconds),"
                    f" got {value!r}",
                    key=name,
                    value=value,
                )
            object.__setattr__(self, name, float(value))
        if not isinstance(self.max_tries, int) or isinstance(self.max_tries, bool):
            ok_tries = False
        else:
            ok_tries = self.max_tries >= 1
        if not ok_tries:
            raise ConfigurationError(
                f"heartbeat timing: max_tries must be an integer >= 1, got {self.max_tries!r}",
                key="max_tries",
                value=self.max_tries,
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, clock_skew: float = 5.0) -> HeartbeatTiming:
        """The timing of the §6.1 agent properties in ``settings``."""
        return cls(
            frequency=settings.kvm_heartbeat_update_frequency,
            max_tries=settings.kvm_heartbeat_update_max_tries,
            retry_sleep=settings.kvm_heartbeat_update_retry_sleep,
            write_timeout=settings.heartbeat_update_timeout,
            clock_skew=clock_skew,
        )

    @property
    def write_budget(self) -> float:
        """The longest one pool's tries in one round can take.

        ``max_tries * write_timeout + (max_tries - 1) * retry_sleep``: every
        attempt runs into its timeout, with a retry sleep between attempts
        (340 s with the defaults).
        """
        return self.max_tries * self.write_timeout + (self.max_tries - 1) * self.retry_sleep

    def stale_after(self, pools: int = 1) -> float:
        """The age above which a heartbeat proves its writer stopped.

        ``frequency + max(pools, 1) * write_budget + write_timeout + clock_skew``
        (465 s for one pool with the defaults).

        Why this is the bound. A live writer stamps a heartbeat with the time
        an attempt *starts*; the file shows that stamp once the attempt
        *finishes*, at most ``write_timeout`` later. Between the start of one
        successful attempt on a pool and the start of the next, the writer
        at most finishes that attempt (``write_timeout``), spends the rest of
        the round on the other pools (each may use its whole budget), sleeps
        ``frequency``, goes through the pools before this one (whole
        budgets) and makes this pool's first ``max_tries - 1`` attempts fail
        (``write_budget - write_timeout``): ``frequency + pools * write_budget``
        in all. The checker may read just before the next attempt finishes
        (``write_timeout`` more), and its clock may differ from the writer's
        by ``clock_skew``. So a writer that uses its whole retry budget in
        every round, with every write as slow as allowed, is never seen as
        stale; and a writer that fails a pool's every try self-fences no
        later than ``stale_after - clock_skew`` after its last stamp.

        ``pools`` is the number of HA pools the *writer* goes through; a
        checker that only knows its own pools uses their count.
        """
        return (
            self.frequency
            + max(pools, 1) * self.write_budget
            + self.write_timeout
            + (self.clock_skew)
        )
