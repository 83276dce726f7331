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

    @property
    def watchdog_limit(self) -> float:
        """What a watchdog's timeout plus its reset margin must stay strictly below.

        ``stale_after(1) - clock_skew = frequency + write_budget + write_timeout``
        (460 s with the defaults).

        Why. A pool's heartbeat shows the stamp of its last successful write,
        taken no earlier than that attempt started (``a``); a checker with
        any number of pools (its bound is at least ``stale_after(1)``, its
        clock at most ``clock_skew`` ahead) sees it stale no earlier than
        ``a + watchdog_limit``. The writer pets only after a round that
        wrote every pool, at ``t``; the watchdog has reset the host by
        ``t + timeout + reset_margin``. So the host is gone before any
        checker calls the heartbeat stale when ``(t - a) + timeout +
        reset_margin < watchdog_limit`` for the round's first successful
        attempt: :meth:`may_pet` checks that at each pet, and
        :meth:`check_watchdog` that a round written at once can pet at all.
        """
        return self.stale_after(1) - self.clock_skew

    def may_pet(self, round_age: float, timeout: float, reset_margin: float) -> bool:
        """May the writer pet its watchdog ``round_age`` seconds after the round's first write?

        ``round_age + timeout + reset_margin < watchdog_limit``: a pet later
        than that would let the host outlive the heartbeat written first in
        the round, so the writer skips it and the watchdog resets the host.
        """
        return round_age + timeout + reset_margin < self.watchdog_limit

    def check_watchdog(self, timeout: float, reset_margin: float) -> None:
        """Can a watchdog of ``timeout`` seconds guarantee self-fencing with this timing?

        Two conditions: ``timeout + reset_margin < watchdog_limit`` (see
        there: otherwise a hung host may still run when its heartbeat is
        called stale) and ``timeout > frequency`` (a writer pets once a
        round, so a shorter watchdog would reset every healthy host).

        Raises:
            ConfigurationError: naming the keys (``cloudha.watchdog.timeout``,
                ``cloudha.watchdog.reset.margin`` and the heartbeat keys).
        """
        for key, value in (
            ("cloudha.watchdog.timeout", timeout),
            ("cloudha.watchdog.reset.margin", reset_margin),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"{key} must be a finite number of seconds > 0, got {value!r}",
                    key=key,
                    value=value,
                )
        limit = self.watchdog_limit
        if not timeout + reset_margin < limit:
            raise ConfigurationError(
                f"cloudha.watchdog.timeout ({timeout:g} s) + cloudha.watchdog.reset.margin"
                f" ({reset_margin:g} s) must be below {limit:g} s, the heartbeat's stale bound"
                " less the clock skew (kvm.heartbeat.update.frequency + kvm.heartbeat.update"
                ".max.tries x heartbeat.update.timeout + (max.tries - 1) x kvm.heartbeat"
                ".update.retry.sleep + heartbeat.update.timeout): a hung host could still run"
                " when its heartbeat is called stale",
                key="cloudha.watchdog.timeout",
                value=timeout,
            )
        if not timeout > self.frequency:
            raise ConfigurationError(
                f"cloudha.watchdog.timeout ({timeout:g} s) must be longer than"
                f" kvm.heartbeat.update.frequency ({self.frequency:g} s): the writer pets"
                " the watchdog once a round, so it would reset a healthy host",
                key="cloudha.watchdog.timeout",
                value=timeout,
            )
