"""When each host is behind on ping: fixed timeout, jitter, grace multiplier, phi.

One policy, :class:`HostDeadlines`, gives every host in the ping map its own
deadline, computed when it connects and at each of its pings (O(1)):

* **The fixed timeout** of a host is::

      timeout_h = (ping.interval + epsilon_h) x ping.timeout x cloudha.ping.grace.multiplier

  the issue's "(period + epsilon) x grace multiplier", where CloudStack's own
  multiplier ``ping.timeout`` stays as it is and ``cloudha.ping.grace.multiplier``
  stretches it further (swarmkit's ``GracePeriodMultiplier``). ``epsilon_h``
  is drawn once per host, uniformly in ``[0, cloudha.ping.jitter x ping.interval]``
  (the jitter is a fraction of the interval, so it scales with it), from a
  ``random.Random`` seeded with the management server id and the host id (or
  an injected one): the same host gets the same epsilon from the same server
  on every run, the simulator stays deterministic for a seed, and hosts that
  connected together (a restart) do not all fall due at one instant. With
  the defaults (jitter 0, multiplier 1.0) it is CloudStack's
  ``ping.timeout x ping.interval``, 150 s.
* **phi accrual** (:mod:`cloudha.detection.phi`, ``cloudha.phi.enabled``)
  can only bring a host's deadline *earlier*, never later: the deadline is
  ``last ping + max(ping.interval, min(timeout_h, crossing_h))`` where
  ``crossing_h`` is when the host's phi reaches ``cloudha.phi.threshold``.
  Detection only triggers an investigation; verdicts still come from the
  investigators, so an early trigger costs an investigation, never a wrong
  verdict, and the fixed timeout still bounds how late a host is noticed.
  No host is behind before one ``ping.interval`` since its last ping (its
  next ping is not even due).
* **The start grace**: a host that enters the ping map at a start or
  takeover without a connected agent (``AgentManager.mark_hosts_as_disconnected``)
  is UNKNOWN and held for :data:`START_GRACE_FACTOR` x ``timeout_h``
  (swarmkit's doubled grace after a leadership change), until its agent
  connects or pings.

:attr:`HostDeadlines.floor` is a lower bound of every deadline minus the
host's last ping; the ping map relies on it to find the hosts behind without
scanning all of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, final

from cloudha.detection.phi import PhiAccrualDetector
from cloudha.errors import ConfigurationError

if TYPE_CHECKING:
    from cloudha.settings import Settings

__all__ = ["START_GRACE_FACTOR", "HostDeadlines"]

START_GRACE_FACTOR = 2.0
"""A host not connected at a start or takeover waits this many of its timeouts (swarmkit: 2)."""


def _seeded(seed: str) -> Callable[[str], random.Random]:
    def rng_for(host_id: str) -> random.Random:
        # A str seed is hashed with SHA-512: the same on every run and platform.
        return random.Random(f"{seed}/{host_id}")

    return rng_for


@final
class HostDeadlines:
    """Every host's fixed timeout and the optional phi detector (see the module docstring).

    Args:
        interval: ``ping.interval``, seconds.
        timeout: ``ping.timeout``, the multiplier of the interval.
        grace_multiplier: ``cloudha.ping.grace.multiplier`` (>= 1).
        jitter: the largest epsilon in seconds (>= 0): ``cloudha.ping.jitter``
            x ``ping.interval``.
        phi: the phi accrual detector, or None (fixed timeout only).
        seed: seeds the per-host epsilon (the management server id).
        rng_for: host id -> the ``random.Random`` its epsilon is drawn from;
            by default one seeded with ``seed`` and the host id.

    Thread-safe: nothing here changes after construction.
    """

    __slots__ = (
        "_base",
        "_rng_for",
        "floor",
        "grace_multiplier",
        "interval",
        "jitter",
        "phi",
        "timeout",
    )

    def __init__(
        self,
        *,
        interval: float,
        timeout: float,
        grace_multiplier: float = 1.0,
        jitter: float = 0.0,
        phi: PhiAccrualDetector | None = None,
        seed: str = "",
        rng_for: Callable[[str], random.Random] | None = None,
    ) -> None:
        for name, value, low in (
            ("interval", interval, 0.0),
            ("timeout", timeout, 0.0),
            ("grace_multiplier", grace_multiplier, 0.0),
        ):
            if not (isinstance(value, int | float) and low < value < float("inf")):
                raise ConfigurationError(
                    f"HostDeadlines {name} must be a finite number > 0, got {value!r}",
                    key=name,
                    value=value,
                )
        if not (isinstance(jitter, int | float) and 0.0 <= jitter < float("inf")):
            raise ConfigurationError(
                f"HostDeadlines jitter must be a finite number >= 0, got {jitter!r}",
                key="jitter",
                value=jitter,
            )
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.grace_multiplier = float(grace_multiplier)
        self.jitter = float(jitter)
        self.phi = phi
        self._rng_for = rng_for if rng_for is not None else _seeded(seed)
        base = self.interval * self.timeout * self.grace_multiplier
        self._base = base
        self.floor = min(self.interval, base) if phi is not None else base
        """No host's deadline is less than this many seconds after its last ping."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        seed: str = "",
        rng_for: Callable[[str], random.Random] | None = None,
    ) -> HostDeadlines:
        """The policy of ``ping.*``, ``cloudha.ping.*`` and ``cloudha.phi.*``."""
        return cls(
            interval=settings.ping_interval,
            timeout=settings.ping_timeout,
            grace_multiplier=settings.cloudha_ping_grace_multiplier,
            jitter=settings.cloudha_ping_jitter * settings.ping_interval,
            phi=PhiAccrualDetector.from_settings(settings),
            seed=seed,
            rng_for=rng_for,
        )

    @property
    def base_timeout(self) -> float:
        """The fixed timeout of a host whose epsilon is 0."""
        return self._base

    def epsilon(self, host_id: str) -> float:
        """The host's seeded epsilon in ``[0, jitter]`` seconds (0 without jitter)."""
        if self.jitter == 0.0:
            return 0.0
        return self._rng_for(host_id).uniform(0.0, self.jitter)

    def timeout_for(self, host_id: str) -> float:
        """The host's fixed timeout: ``(interval + epsilon) x ping.timeout x multiplier``."""
        if self.jitter == 0.0:
            return self._base  # one float shared by every cell of the ping map
        return (self.interval + self.epsilon(host_id)) * self.timeout * self.grace_multiplier

    def start_grace(self, host_id: str) -> float:
        """How long a host UNKNOWN at a start is held: ``START_GRACE_FACTOR x timeout``."""
        return START_GRACE_FACTOR * self.timeout_for(host_id)
