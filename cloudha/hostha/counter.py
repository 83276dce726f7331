"""Host-HA's per-resource counters (CloudStack ``HAResourceCounter``, spec §7.5).

What the poll loop remembers about one resource between rounds: the activity
samples and failures of the current Checking series, the recovery attempts,
when the resource became suspect, when it was last activity-checked, when it
turned Degraded, when its recovery started, and whether a recovery or a fence
is in flight. In memory, per management server, driven by the injected
clock's ``monotonic()`` seconds (passed in as ``now``): pure bookkeeping, no I/O.

One deliberate difference from CloudStack: :meth:`HAResourceCounter.can_attempt_recovery`
is what the manager asks before it starts a recovery (CloudStack has it and
never calls it, so every poll during a slow recovery started another RESET).
"""

from __future__ import annotations

import attrs

__all__ = ["HAResourceCounter"]


@attrs.define
class HAResourceCounter:
    """The counters of one resource (see the module docstring)."""

    activity_checks: int = 0
    activity_failures: int = 0
    recovery_attempts: int = 0
    suspect_since: float | None = None
    last_activity_check: float | None = None
    degraded_since: float | None = None
    recovery_started: float | None = None
    recovery_in_flight: bool = False
    fence_in_flight: bool = False

    # -- suspicion and activity ----------------------------------------------------

    def mark_suspected(self, now: float) -> None:
        """A health check failed: the resource is suspect from ``now`` (the first failure)."""
        if self.suspect_since is None:
            self.suspect_since = now

    def suspect_time(self, now: float) -> float:
        """Since when activity must be absent (the first failed health check; ``now`` if none)."""
        return now if self.suspect_since is None else self.suspect_since

    def record_activity_check(self, *, failed: bool) -> None:
        """One activity sample; ``failed``: no activity was seen (the resource looks dead)."""
        self.activity_checks += 1
        if failed:
            self.activity_failures += 1

    def has_enough_samples(self, needed: int) -> bool:
        """``kvm.ha.activity.check.max.attempts`` samples taken in this series."""
        return self.activity_checks >= needed

    def activity_threshold_exceeded(self, ratio: float) -> bool:
        """More failed samples than ``ratio`` x the samples taken (CloudStack's strict >)."""
        return self.activity_failures > self.activity_checks * ratio

    def reset_activity(self) -> None:
        """Start a new series of activity samples."""
        self.activity_checks = 0
        self.activity_failures = 0

    def can_perform_activity_check(self, interval: float, now: float) -> bool:
        """Never checked, or more than ``interval`` s ago; stamps ``now`` when True."""
        last = self.last_activity_check
        if last is None or now - last > interval:
            self.last_activity_check = now
            return True
        return False

    # -- degraded ------------------------------------------------------------------

    def mark_degraded(self, now: float) -> None:
        self.degraded_since = now

    def can_recheck_activity(self, period: float, now: float) -> bool:
        """Never degraded, or degraded more than ``period`` s ago."""
        return self.degraded_since is None or now - self.degraded_since > period

    # -- recovery and fencing ------------------------------------------------------

    def can_attempt_recovery(self) -> bool:
        """No recovery in flight: never two recoveries of one resource at once."""
        return not self.recovery_in_flight

    def recovery_begun(self) -> None:
        self.recovery_in_flight = True

    def recovery_ended(self) -> None:
        """A recovery finished (either way): one more attempt, a new activity series."""
        self.recovery_in_flight = False
        self.recovery_attempts += 1
        self.reset_activity()

    def mark_recovery_started(self, now: float) -> None:
        """The resource is Recovered: start the wait (first call only)."""
        if self.recovery_started is None:
            self.recovery_started = now

    def can_exit_recovery(self, wait: float, now: float) -> bool:
        """Recovered more than ``wait`` s ago (``kvm.ha.recover.wait.period``)."""
        return self.recovery_started is not None and now - self.recovery_started > wait

    def mark_recovery_completed(self) -> None:
        self.recovery_started = None

    def can_attempt_fencing(self) -> bool:
        """No fence in flight."""
        return not self.fence_in_flight

    def fence_begun(self) -> None:
        self.fence_in_flight = True

    def fence_ended(self, *, fenced: bool) -> None:
        self.fence_in_flight = False
        if fenced:
            self.recovery_attempts = 0

    def reset_after_health(self) -> None:
        """A health check passed: no suspicion, no series, no attempts."""
        self.suspect_since = None
        self.reset_activity()
        self.recovery_attempts = 0
