"""MonitorTask: finds hosts behind on ping, on their own deadlines.

CloudStack's AgentMonitor wakes every ``ping.interval`` and scans the whole
ping map, so a host is noticed up to one interval after its deadline
(``last ping + ping.timeout x ping.interval``). :class:`MonitorTask` instead
sleeps until the earliest deadline in the map (plus a small resolution that
coalesces wake-ups), so each host is examined when its own deadline passes.
Each host's deadline comes from :class:`~cloudha.detection.deadlines.HostDeadlines`
(its timeout with jitter and grace multiplier, its start grace, or the
earlier moment its phi reaches ``cloudha.phi.threshold``), kept by the ping
map; ``behind_on_ping`` says which one fired (``detector``) with the host's
``timeout``, and ``phi`` with ``phi_threshold`` when the phi detector is on.

A host examined and left monitored (Up after all, or not determined yet) is
examined again one ``ping.interval`` later, as in CloudStack. Each round
also rechecks hosts left in Alert (or re-adopted after a restart) and
retries failed hand-overs of Down hosts to the HA scheduler when they are due.

``tick()`` is pure bookkeeping around :class:`~cloudha.detection.agents.AgentManager`
and returns how long to sleep; the thread that calls it lives in
:mod:`cloudha.runtime`, and the simulator calls it on virtual time.
"""

from __future__ import annotations

import logging

from cloudha.detection.agents import AgentManager
from cloudha.detection.decisions import monitor_event_for
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.evidence import JSONValue
from cloudha.status import Event

__all__ = ["MonitorTask"]

log = logging.getLogger(__name__)


class MonitorTask:
    """Deadline-driven examination of hosts behind on ping.

    Args:
        agents: the agent manager whose ping map is watched.
        resolution: how late (seconds) a deadline may be noticed, to coalesce
            wake-ups when thousands of hosts ping; by default 1% of the ping
            timeout (1.5 s with CloudStack's defaults).
    """

    def __init__(self, agents: AgentManager, *, resolution: float | None = None) -> None:
        self.agents = agents
        timeout = agents.settings.behind_on_ping_timeout
        self.resolution = timeout / 100 if resolution is None else resolution
        if not self.resolution > 0:
            raise ConfigurationError(
                f"MonitorTask resolution must be > 0 seconds, got {resolution!r}",
                key="resolution",
                value=resolution,
            )
        self._recheck_at: dict[str, float] = {}
        self._maintenance_at: float | None = None
        self.examined = 0

    def tick(self) -> float:
        """Examine every host whose deadline passed; return seconds until the next tick."""
        agents = self.agents
        clock = agents.clock
        ping_map = agents.ping_map
        interval = agents.settings.ping_interval
        now = clock.monotonic()
        behind = ping_map.overdue()
        recheck = self._recheck_at
        still_behind = set(behind)
        for host_id in [h for h in recheck if h not in still_behind]:
            del recheck[host_id]
        for host_id in behind:
            if recheck.get(host_id, now) > now:
                continue
            try:
                kept = self.examine(host_id)
            except ProbeError as exc:
                # A port that does not answer (an orchestrator outage) is no bug: no traceback.
                log.warning("examining %s: %s; examined again in %gs", host_id, exc, interval)
                kept = host_id in ping_map
            except Exception:
                # NOTE: one host's failure must not stop the monitor for the others.
                log.exception("examining %s failed", host_id)
                kept = host_id in ping_map
            if kept:
                recheck[host_id] = now + interval
            else:
                recheck.pop(host_id, None)
        if self._maintenance_at is None or now >= self._maintenance_at:
            # Once per ping.interval, as CloudStack's fixed-delay monitor round.
            self._maintenance_at = now + interval
            try:
                agents.check_maintenance()
            except Exception:
                log.exception("maintenance check failed")
        try:
            agents.recheck_alerted()
        except Exception:
            log.exception("re-investigating hosts in Alert failed")
        try:
            agents.retry_hand_overs()
        except Exception:
            log.exception("retrying hand-overs to the HA scheduler failed")
        return self.next_delay()

    def next_delay(self) -> float:
        """Seconds from now until the next deadline or re-examination (at most one interval)."""
        agents = self.agents
        now = agents.clock.monotonic()
        interval = agents.settings.ping_interval
        wake = now + interval
        deadline = agents.ping_map.next_due()
        if deadline is not None:
            wake = min(wake, deadline + self.resolution)
        if self._recheck_at:
            wake = min(wake, min(self._recheck_at.values()))
        recheck = agents.next_recheck_at()
        if recheck is not None:
            wake = min(wake, recheck)
        hand_over = agents.next_hand_over_at()
        if hand_over is not None:
            wake = min(wake, hand_over)
        if self._maintenance_at is not None and self.agents.maintenance is not None:
            wake = min(wake, self._maintenance_at)
        return max(wake - now, self.resolution)

    def examine(self, host_id: str) -> bool:
        """Handle one host behind on ping (spec §2.3); True if it stays monitored."""
        agents = self.agents
        self.examined += 1
        ping_map = agents.ping_map
        last = ping_map.last_ping(host_id)
        timeout = ping_map.timeout(host_id)
        held = ping_map.held(host_id)
        phi = ping_map.phi(host_id)
        host = agents.directory.find_host(host_id)
        since = None if last is None else agents.clock.monotonic() - last
        if host is None:  # removed from the inventory: stop watching it
            agents.disconnect_without_investigation(host_id, Event.SHUTDOWN_REQUESTED)
            return False
        event, investigate = monitor_event_for(host.resource_state, host.type)
        if timeout is None:
            timeout = agents.settings.behind_on_ping_timeout
        phi_fields: dict[str, JSONValue] = {}
        detector = "grace" if held else "timeout"
        detail = f"timeout {timeout:.1f}s"
        if held:
            detail = f"start grace {agents.deadlines.start_grace(host_id):.1f}s"
        detection = agents.deadlines.phi
        if phi is not None and detection is not None:
            phi_fields = {"phi": round(phi, 2), "phi_threshold": detection.threshold}
            if not held and since is not None and since <= timeout:
                detector = "phi"
                detail = f"phi {phi:.2f} >= {detection.threshold:g}, timeout {timeout:.1f}s"
        agents.recorder.emit(
            "behind_on_ping",
            host=host_id,
            reason="behind on ping" if since is None else f"no ping for {since:.1f}s ({detail})",
            since_last_ping=None if since is None else round(since, 3),
            investigate=investigate,
            timeout=round(timeout, 3),
            detector=detector,
            **phi_fields,
        )
        if investigate:
            agents.disconnect_with_investigation(host_id, event)
        else:
            agents.disconnect_without_investigation(host_id, event)
        return host_id in agents.ping_map
