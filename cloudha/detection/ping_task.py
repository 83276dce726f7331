"""PingTask: the management server pings a directly managed host (spec §2.2).

Hosts whose hypervisor is driven from the management server (XenServer,
VMware, Hyper-V, the simulator ...) do not ping by themselves. Every
``ping.interval`` a PingTask asks the host's resource for its current
status; when the resource gives no answer it asks again up to
``host.ping.retry.count`` times, ``host.ping.retry.timer`` apart, and if
there is still no answer it just logs: the missing ping is what makes the
host fall behind. A successful answer goes to the command listeners, which
refresh the ping map.

``tick()`` does one attempt and returns the delay until the next one, so the
same object runs in a thread (:class:`~cloudha.runtime.Pump`) or on virtual
time in the simulator. Ticks keep a fixed rate: the next round starts one
interval after the previous round started, not after it finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cloudha.clock import Clock
from cloudha.errors import ProbeError
from cloudha.model import Host
from cloudha.ports import DirectAgentResource, PingReport
from cloudha.settings import Settings

__all__ = ["PingTask"]

log = logging.getLogger(__name__)


class PingTask:
    """Periodic status probe of one directly managed host.

    Args:
        host: the host to probe.
        resource: its management-server-side resource.
        on_ping: called with each successful report (``AgentManager.ping_received``).
        settings: ``ping.interval``, ``host.ping.retry.count``, ``host.ping.retry.timer``.
        clock: the time source.
    """

    def __init__(
        self,
        host: Host,
        resource: DirectAgentResource,
        on_ping: Callable[[PingReport], object],
        *,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.host = host
        self.resource = resource
        self.on_ping = on_ping
        self.settings = settings
        self.clock = clock
        self._round_started: float | None = None
        self._retries_left = 0
        self.failures = 0

    def tick(self) -> float:
        """One probe attempt; returns seconds until the next attempt."""
        now = self.clock.monotonic()
        if self._round_started is None or self._retries_left == 0:
            self._round_started = now
            self._retries_left = self.settings.host_ping_retry_count
        else:
            self._retries_left -= 1
        report = self._probe()
        if report is not None:
            self._retries_left = 0
            self.on_ping(report)
        elif self._retries_left > 0:
            return self.settings.host_ping_retry_timer
        else:
            self.failures += 1
            log.info("unable to get current status of %s", self.host.id)
        next_round = self._round_started + self.settings.ping_interval
        return max(0.0, next_round - self.clock.monotonic())

    def _probe(self) -> PingReport | None:
        try:
            return self.resource.current_status(self.host)
        except ProbeError as exc:
            log.debug("status probe of %s failed: %s", self.host.id, exc)
            return None
        except Exception:
            log.exception("status probe of %s raised", self.host.id)
            return None
