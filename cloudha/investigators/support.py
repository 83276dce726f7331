"""Shared plumbing for investigators that ask agents: neighbours and safe sends."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import attrs

from cloudha.clock import Clock
from cloudha.commands import answer_verdict
from cloudha.errors import ProbeError
from cloudha.investigators.base import BaseInvestigator, Verdict
from cloudha.model import Host, HostType, HypervisorType
from cloudha.ports import (
    AgentGateway,
    AgentSightings,
    Answer,
    Command,
    HostDirectory,
    StoragePoolDirectory,
)
from cloudha.status import Status

__all__ = [
    "AgentInvestigatorBase",
    "StaleProof",
    "judge_stale",
    "list_neighbours",
    "list_zone_witnesses",
    "sighting_proof",
    "stale_proof",
]

log = logging.getLogger(__name__)


class AgentInvestigatorBase(BaseInvestigator):
    """A :class:`BaseInvestigator` that asks host agents through the gateway.

    Args:
        clock: time source for findings.
        directory: the host inventory (to find neighbours).
        gateway: sends commands to agents.
        timeout: limit on each command, in seconds.
    """

    def __init__(
        self, clock: Clock, *, directory: HostDirectory, gateway: AgentGateway, timeout: float
    ) -> None:
        super().__init__(clock)
        if timeout <= 0:
            raise ValueError(f"{type(self).__name__}: timeout must be positive, got {timeout!r}")
        self.directory = directory
        self.gateway = gateway
        self.timeout = timeout

    def send(self, host: Host, command: Command) -> Answer | ProbeError:
        """Send ``command`` to ``host``; a probe failure is returned, not raised."""
        try:
            return self.gateway.send(host, command, timeout=self.timeout)
        except ProbeError as exc:
            log.debug("%s: %s to %s failed: %s", self.name, command.name, host.id, exc)
            return exc

    def opinion(self, via: Host, command: Command, asked: dict[str, str]) -> Verdict | None:
        """Send a heartbeat check to ``via``; None if it did not answer.

        What ``via`` said (or that it did not answer) is recorded in ``asked``.
        """
        reply = self.send(via, command)
        if isinstance(reply, ProbeError):
            asked[via.id] = f"no answer: {reply}"
            return None
        verdict, reason = answer_verdict(reply)
        asked[via.id] = f"{verdict}: {reason}"
        return verdict

    def neighbours(
        self,
        host: Host,
        *,
        scope: str = "cluster",
        hypervisors: Collection[HypervisorType] | None = None,
        statuses: Collection[Status] = (Status.UP,),
    ) -> Sequence[Host]:
        """Other routing hosts of ``host``'s cluster (or pod); see :func:`list_neighbours`."""
        return list_neighbours(
            self.directory, host, scope=scope, hypervisors=hypervisors, statuses=statuses
        )


def list_neighbours(
    directory: HostDirectory,
    host: Host,
    *,
    scope: str = "cluster",
    hypervisors: Collection[HypervisorType] | None = None,
    statuses: Collection[Status] = (Status.UP,),
) -> Sequence[Host]:
    """Other routing hosts of ``host``'s cluster (or pod) in one of ``statuses``.

    Sorted by id so the order of asking is stable.
    """
    if scope == "cluster":
        if host.cluster is None:
            return []
        candidates = directory.list_hosts(cluster=host.cluster)
    elif scope == "pod":
        candidates = directory.list_hosts(pod=host.pod, zone=host.zone)
    else:
        raise ValueError(f"scope must be 'cluster' or 'pod', got {scope!r}")
    chosen = [
        h
        for h in candidates
        if h.id != host.id
        and h.type is HostType.ROUTING
        and h.status in statuses
        and (hypervisors is None or h.hypervisor in hypervisors)
    ]
    return sorted(chosen, key=lambda h: h.id)


def list_zone_witnesses(
    directory: HostDirectory,
    pools: StoragePoolDirectory,
    host: Host,
    pool_ids: Collection[str],
    *,
    exclude: Collection[str],
    limit: int,
) -> list[Host]:
    """Up KVM/LXC routing hosts outside ``host``'s cluster that mount one of ``pool_ids``.

    At most ``limit``, sorted by id; ``exclude`` lists host ids to leave out.
    They can read ``host``'s storage heartbeat when its whole cluster is silent.
    """
    if limit <= 0:
        return []
    wanted = set(pool_ids)
    found: list[Host] = []
    for other in sorted(directory.list_hosts(zone=host.zone), key=lambda h: h.id):
        if (
            other.id in exclude
            or other.id == host.id
            or other.cluster == host.cluster
            or other.status is not Status.UP
            or other.hypervisor not in (HypervisorType.KVM, HypervisorType.LXC)
            or other.type is not HostType.ROUTING
        ):
            continue
        if wanted & {p.id for p in pools.pools_for_host(other) if p.supports_ha}:
            found.append(other)
            if len(found) == limit:
                break
    return found


@attrs.frozen
class StaleProof:
    """Whether a stale storage heartbeat proves its host dead, and why (see :func:`stale_proof`)."""

    proves_death: bool
    reason: str


def stale_proof(host: Host, *, self_fence: bool) -> StaleProof:
    """The one rule turning a stale heartbeat of ``host`` into a verdict.

    A stale heartbeat shows that the writer stopped writing. That proves
    the host (and so its VMs) dead only if the writer cannot outlive its
    lease: its host is reset before the heartbeat can be called stale.
    That holds when ``host.watchdog`` is true (the writer arms a watchdog
    whose timeout and reset margin stay below the stale bound,
    :meth:`~cloudha.heartbeat.HeartbeatTiming.check_watchdog`).

    The writer's own self-fence (``self_fence``:
    ``reboot.host.and.alert.management.on.heartbeat.timeout``) is not
    enough on its own, however its deadline compares with the stale
    bound: it is the writer that resets the host, so a host that hangs
    (the writer does not run), whose writer died or was stopped, skips it,
    and resumes later with its VMs. Only an isolated host with a running
    writer would be covered, and a checker cannot tell isolation from a
    hang. So without a watchdog a stale heartbeat is UNKNOWN, and
    recovery needs a confirmed fence (a BMC power-off) instead.

    Returns:
        ``proves_death`` and a reason that says why not when it does not.
    """
    if host.watchdog:
        return StaleProof(True, f"{host.id}'s heartbeat writer arms a watchdog")
    if self_fence:
        why = (
            f"{host.id} has no watchdog and its writer's self-fence cannot act while the"
            " host is hung or the writer is dead: a hung host may resume with its VMs"
        )
    else:
        why = (
            f"{host.id} has no watchdog and self-fencing is off: a hung or isolated host"
            " may resume with its VMs"
        )
    return StaleProof(False, why)


def sighting_proof(
    host: Host,
    proof: StaleProof,
    *,
    now: float,
    bound: float,
    sightings: AgentSightings | None = None,
) -> StaleProof:
    """``proof``, unless the host was seen alive within the stale ``bound`` (seconds).

    Seen alive: its row's ``last_ping`` (set when its agent connected, or an
    investigation found it Up), or the last connect or ping of its agent
    that this management server received (``sightings``). A heartbeat
    writer renews its lease on its agent's connection while its heartbeat
    cannot be written (isolation-aware self-fencing,
    :mod:`cloudha.heartbeat.isolation`), and a host that came back (a
    reboot) runs a writer whose first round may not have reached a pool
    yet: either way a host heard from within the bound may still run,
    whatever the stamp on the pool says. ``now`` is wall-clock epoch seconds.
    """
    if not proof.proves_death:
        return proof
    seen = host.last_ping
    source = "connected or was found Up"
    if sightings is not None:
        pinged = sightings.last_seen(host.id)
        if pinged > seen:
            seen, source = pinged, "was last heard from by its agent"
    since = now - seen
    if since <= bound:
        return StaleProof(
            False,
            f"{host.id} {source} {since:.1f} s ago, within the {bound:g} s stale bound: a"
            " stale heartbeat proves nothing yet (its writer may live on its agent's link,"
            " or not have written since)",
        )
    return proof


def judge_stale(verdict: Verdict, reason: str, proof: StaleProof) -> tuple[Verdict, str]:
    """A heartbeat verdict as evidence: DEAD (stale) stays DEAD only when ``proof`` allows it.

    ALIVE and UNKNOWN pass unchanged; DEAD without proof becomes UNKNOWN,
    its reason saying what was seen and why it proves nothing.
    """
    if verdict is not Verdict.DEAD or proof.proves_death:
        return verdict, reason
    return Verdict.UNKNOWN, f"{reason}; stale is no proof: {proof.reason}"
