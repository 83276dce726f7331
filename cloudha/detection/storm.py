"""Storm protection: suspicion-based fences are paced, and held when a whole domain goes silent.

A fence on suspicion (docs/suspicion.md) powers a host off because every
witness lost it, not because anything proved it dead. When many hosts of one
failure domain are lost at once, the likelier cause is the network or the
observer (a top-of-rack switch, a partition, a deaf management server), and
fencing them all would turn a network blip into an outage. Kubernetes stops
evicting pods from a zone whose share of unready nodes passes its
``unhealthy-zone-threshold`` (55 %) and slows evictions down before that;
oVirt skips fencing when more than 50 % of a cluster's hosts are
non-responsive. :class:`StormGuard` does both, per failure domain:

* **full-disruption stop**: when more than ``cloudha.storm.disruption.threshold``
  (50 %, oVirt's default, just under Kubernetes' 55 %) of a domain's hosts are
  silent (not Up), nothing in it is fenced on suspicion and an alert says why;
* **fence budget**: at most ``max(1, floor(cloudha.storm.fence.budget * size))``
  suspicion fences per domain per ``cloudha.storm.fence.window`` (10 % per
  300 s; Kubernetes evicts at 0.1 node/s in a healthy zone, about 10 % of a
  300-node zone per 5 minutes). A dead rack is thus recovered at a bounded
  pace: its hosts stay in Alert, rechecked every ``ping.interval``, and each
  recheck spends the budget as it frees.

The domains are ``cloudha.storm.domains`` (cluster, pod, zone; ``rack`` for hosts
whose row carries a rack label). A host in several domains must pass every
one. Proof is never held back: a BMC that reads the power Off, a storage
heartbeat proved stale, a confirmed Host-HA verdict are not suspicion, and
the guard is only asked by the fast path.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Sequence

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError
from cloudha.evidence import Recorder
from cloudha.model import AlertType, Host, HostType, ResourceState
from cloudha.ports import Alert, AlertSink, HostDirectory
from cloudha.settings import Settings
from cloudha.status import Status

__all__ = ["DOMAINS", "Admission", "StormGuard"]

log = logging.getLogger(__name__)

DOMAINS = ("cluster", "pod", "zone", "rack")
"""The failure domains ``cloudha.storm.domains`` may name."""


@attrs.frozen
class Admission:
    """Whether one more suspicion fence of a host may go ahead, and why."""

    allowed: bool
    reason: str
    domains: tuple[dict[str, object], ...] = ()
    rule: str | None = None
    """``"budget"`` or ``"disruption"`` when held."""


class StormGuard:
    """Paces suspicion fences per failure domain and stops them in a silent domain.

    Args:
        settings: ``cloudha.storm.*``.
        clock: the time source (the budget's window).
        directory: the hosts of each domain.
        recorder: where ``storm`` records go.
        alerts: where the full-disruption alert goes (once per domain per window).
        last_seen: when this server last heard from each host's agent (wall
            epoch seconds, :class:`~cloudha.detection.Sightings`). A host is
            silent when its row is not Up, or when it has not been heard from
            for ``ping.timeout - 1`` intervals (it will be behind on ping
            within one more): hosts of a domain that fell silent together are
            examined one after the other, and the first must already see the rest.

    Raises:
        ConfigurationError: (from :class:`~cloudha.settings.Settings`) for an
            unknown domain name.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        directory: HostDirectory,
        recorder: Recorder,
        alerts: AlertSink,
        *,
        last_seen: Callable[[str], float] | None = None,
    ) -> None:
        unknown = [d for d in settings.cloudha_storm_domains if d not in DOMAINS]
        if unknown:
            raise ConfigurationError(
                f"cloudha.storm.domains: unknown domain {unknown[0]!r}"
                f" (known: {', '.join(DOMAINS)})",
                key="cloudha.storm.domains",
                value=unknown[0],
            )
        self.domains: Sequence[str] = settings.cloudha_storm_domains
        self.budget = settings.cloudha_storm_fence_budget
        self.window = settings.cloudha_storm_fence_window
        self.threshold = settings.cloudha_storm_disruption_threshold
        self.clock = clock
        self.directory = directory
        self.recorder = recorder
        self.alerts = alerts
        self.last_seen = last_seen
        self.silent_after = settings.behind_on_ping_timeout - settings.ping_interval
        self._spent: dict[tuple[str, str], collections.deque[float]] = {}
        self._alerted: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def _members(self, kind: str, name: str, host: Host) -> list[Host]:
        if kind == "cluster":
            hosts = self.directory.list_hosts(cluster=name)
        elif kind == "pod":
            hosts = self.directory.list_hosts(pod=name)
        elif kind == "zone":
            hosts = self.directory.list_hosts(zone=name)
        else:
            hosts = [h for h in self.directory.list_hosts(zone=host.zone) if h.rack == name]
        return [
            h
            for h in hosts
            if h.type is HostType.ROUTING and h.resource_state is not ResourceState.MAINTENANCE
        ]

    @staticmethod
    def _name(kind: str, host: Host) -> str | None:
        return {"cluster": host.cluster, "pod": host.pod, "zone": host.zone, "rack": host.rack}[
            kind
        ]

    def admit(self, host: Host) -> Admission:
        """May ``host`` be fenced on suspicion now? Recorded (``storm``) when held."""
        now = self.clock.monotonic()
        looked: list[dict[str, object]] = []
        for kind in self.domains:
            name = self._name(kind, host)
            if name is None:
                continue
            members = self._members(kind, name, host)
            size = max(len(members), 1)
            silent = sum(1 for h in members if self._silent(h))
            allowance = max(1, math.floor(self.budget * size)) if self.budget > 0 else 0
            with self._lock:
                spent = self._spent.setdefault((kind, name), collections.deque())
                while spent and now - spent[0] >= self.window:
                    spent.popleft()
                used = len(spent)
                next_at = spent[0] + self.window if spent else now
            facts: dict[str, object] = {
                "domain": kind,
                "name": name,
                "size": len(members),
                "silent": silent,
                "threshold": self.threshold,
                "budget": allowance,
                "spent": used,
                "window": self.window,
            }
            looked.append(facts)
            if self.threshold < 1.0 and silent / size > self.threshold:
                reason = (
                    f"{kind} {name}: {silent} of {len(members)} hosts are silent, more than"
                    f" {self.threshold:.0%}: taken for a network or observer fault, nothing"
                    " there is fenced on suspicion"
                )
                self._alert_once(kind, name, host, reason, now)
                return self._held(host, reason, looked, "disruption")
            if used >= allowance:
                reason = (
                    f"{kind} {name}: the fence budget is spent ({used} of {allowance} suspicion"
                    f" fences in {self.window:g} s); the next may go at t={next_at:g}"
                )
                return self._held(host, reason, looked, "budget")
        return Admission(True, "within every domain's budget", tuple(looked))

    def _silent(self, host: Host) -> bool:
        if host.status is not Status.UP:
            return True
        if self.last_seen is None:
            return False
        return self.clock.now().timestamp() - self.last_seen(host.id) > self.silent_after

    def spend(self, host: Host) -> None:
        """``host`` was fenced on suspicion: one fence of each of its domains' budgets."""
        now = self.clock.monotonic()
        with self._lock:
            for kind in self.domains:
                name = self._name(kind, host)
                if name is not None:
                    self._spent.setdefault((kind, name), collections.deque()).append(now)

    def _held(
        self, host: Host, reason: str, looked: list[dict[str, object]], rule: str
    ) -> Admission:
        self.recorder.emit("storm", host=host.id, reason=reason, rule=rule, domains=looked)
        return Admission(False, reason, tuple(looked), rule)

    def _alert_once(self, kind: str, name: str, host: Host, reason: str, now: float) -> None:
        with self._lock:
            last = self._alerted.get((kind, name))
            if last is not None and now - last < self.window:
                return
            self._alerted[(kind, name)] = now
        try:
            self.alerts.send(
                Alert(
                    AlertType.HA_ACTION,
                    f"cloudha holds suspicion fences in {kind} {name}",
                    reason,
                    host_id=host.id,
                    zone=host.zone,
                    pod=host.pod,
                )
            )
        except Exception:
            log.exception("alert sink failed (storm protection)")
