"""CloudStack's KVMInvestigator: the storage heartbeat, read by the host and its neighbours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudha.clock import Clock
from cloudha.commands import check_on_host
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators.base import Finding, Verdict
from cloudha.investigators.support import (
    AgentInvestigatorBase,
    StaleProof,
    judge_stale,
    list_zone_witnesses,
    sighting_proof,
    stale_proof,
)
from cloudha.model import Host, HypervisorType, Vm
from cloudha.ports import (
    AgentGateway,
    AgentSightings,
    Command,
    HostDirectory,
    StoragePoolDirectory,
)
from cloudha.status import Status

__all__ = ["KVMInvestigator"]

_KVM = (HypervisorType.KVM, HypervisorType.LXC)


class KVMInvestigator(AgentInvestigatorBase):
    """``KVMInvestigator``: ask the host, then its Up neighbours, about its heartbeat.

    The aggregation is CloudStack's (spec §4), on explicit verdicts:

    1. The host itself is asked to check its own heartbeat. Any answer means
       the host is running: its verdict DEAD gives *Down*, anything else *Up*.
       No answer gives *Disconnected*.
    2. Unless the host answered (it is then Up, whatever the neighbours
       would say, so they are not asked), every other Up KVM/LXC host of the
       cluster is asked in turn; ALIVE stops the loop, DEAD is remembered,
       UNKNOWN is skipped.
    3. If the host is Disconnected or Down: a neighbour's ALIVE makes it
       Disconnected (ALIVE, unreachable), a neighbour's DEAD makes it Down.
       Otherwise the host's own result stands: Up is ALIVE; Down is DEAD; a
       Disconnected host nobody could judge is UNKNOWN with
       ``reachable=False``, which the chain reads as Disconnected.

    One addition to CloudStack: when no neighbour of the cluster gave a
    decisive answer (a whole rack or cluster lost at once), up to
    ``zone_witnesses`` Up KVM hosts of other clusters that mount one of the
    host's HA pools (zone-wide storage) are asked the same way. CloudStack
    leaves such hosts in Alert for ever.

    A host with no HA-capable pool cannot be judged (UNKNOWN), as in
    CloudStack ("has no NFS storage").

    Every heartbeat verdict, the host's own and its neighbours', goes
    through :func:`~cloudha.investigators.support.stale_proof` first: a
    stale heartbeat of a host without a watchdog is UNKNOWN, not DEAD (a
    hung or isolated host may resume), so such a host is never Down by its
    heartbeat alone.

    Args:
        pools: which pools each host mounts.
        fail_on_one_pool: ``kvm.ha.fence.on.storage.heartbeat.failure``.
        zone_witnesses: how many hosts outside the cluster may be asked
            (0: the cluster only, as CloudStack).
        self_fence: ``reboot.host.and.alert.management.on.heartbeat.timeout``
            (only the reason of a stale heartbeat that proves nothing
            depends on it).
        timing: the writers' heartbeat timing. When given, a stale heartbeat
            proves nothing while the host's ``last_ping`` (set when its agent
            connected, or an investigation found it Up) is no older than
            ``timing.stale_after(len(ha_pools))``: a host that came back (a
            reboot) runs a writer whose first round may not have reached a
            pool yet (an earlier pool may use its whole retry budget), so
            the stamp left by its previous life says nothing of the live
            host. None: CloudStack's rule, the stamp alone.
        sightings: when this server last heard from each agent; with
            ``timing``, a host heard from within the stale bound is not
            proved dead by its heartbeat either (its writer may renew its
            lease on the agent's link: :func:`~cloudha.investigators.support.sighting_proof`).
    """

    name = "KVMInvestigator"

    def __init__(
        self,
        clock: Clock,
        *,
        directory: HostDirectory,
        gateway: AgentGateway,
        pools: StoragePoolDirectory,
        timeout: float,
        fail_on_one_pool: bool = False,
        zone_witnesses: int = 3,
        self_fence: bool = True,
        timing: HeartbeatTiming | None = None,
        sightings: AgentSightings | None = None,
    ) -> None:
        super().__init__(clock, directory=directory, gateway=gateway, timeout=timeout)
        self.self_fence = self_fence
        self.timing = timing
        self.sightings = sightings
        if zone_witnesses < 0:
            raise ValueError(f"zone_witnesses must be >= 0, got {zone_witnesses!r}")
        self.pools = pools
        self.fail_on_one_pool = fail_on_one_pool
        self.zone_witnesses = zone_witnesses

    def supports(self, host: Host) -> bool:
        return host.hypervisor in _KVM

    def _agent_alive(self, host: Host) -> Finding:
        ha_pools = [p.id for p in self.pools.pools_for_host(host) if p.supports_ha]
        if not ha_pools:
            return self.unknown(f"{host.id} has no storage pool that carries a heartbeat")
        command = check_on_host(host, fail_on_one_pool=self.fail_on_one_pool)
        proof = self._proof(host, len(ha_pools))

        asked: dict[str, str] = {}
        own = self._judged(host, command, asked, proof)
        host_said = asked.pop(host.id)
        if own is None:
            host_status = Status.DISCONNECTED
        else:
            host_status = Status.DOWN if own is Verdict.DEAD else Status.UP

        neighbour_status: Status | None = None
        neighbour_id: str | None = None
        if host_status is not Status.UP:  # an answering host is Up whatever neighbours say
            cluster = self.neighbours(host, hypervisors=_KVM)
            neighbour_status, neighbour_id = self._ask(cluster, command, asked, proof)
            if neighbour_status is None:
                zone = self._zone_witnesses(host, set(ha_pools), exclude=set(asked) | {host.id})
                neighbour_status, neighbour_id = self._ask(zone, command, asked, proof)

        evidence: dict[str, Any] = {"pools": ha_pools, "host": host_said, "neighbours": asked}
        if host_status in (Status.DISCONNECTED, Status.DOWN):
            if neighbour_status is Status.UP:
                return self.finding(
                    Verdict.ALIVE,
                    f"{neighbour_id} sees {host.id}'s heartbeat; its agent is unreachable",
                    reachable=False,
                    **evidence,
                )
            if neighbour_status is Status.DOWN:
                return self.finding(
                    Verdict.DEAD, f"{neighbour_id} sees {host.id}'s heartbeat stale", **evidence
                )
        if host_status is Status.UP:
            return self.finding(
                Verdict.ALIVE,
                f"{host.id} answered its own heartbeat check",
                reachable=True,
                **evidence,
            )
        if host_status is Status.DOWN:
            return self.finding(
                Verdict.DEAD, f"{host.id} reports its own heartbeat stale", **evidence
            )
        return self.finding(
            Verdict.UNKNOWN,
            f"neither {host.id} nor a neighbour could judge its heartbeat",
            reachable=False,
            **evidence,
        )

    def _proof(self, host: Host, pools: int) -> StaleProof:
        """:func:`stale_proof`; no proof while ``host`` came back too recently (``timing``)."""
        proof = stale_proof(host, self_fence=self.self_fence)
        if self.timing is None:
            return proof
        return sighting_proof(
            host,
            proof,
            now=self.clock.now().timestamp(),
            bound=self.timing.stale_after(pools),
            sightings=self.sightings,
        )

    def _judged(
        self, via: Host, command: Command, asked: dict[str, str], proof: StaleProof
    ) -> Verdict | None:
        """:meth:`opinion`, with a stale heartbeat judged by ``proof``."""
        verdict = self.opinion(via, command, asked)
        if verdict is not Verdict.DEAD or proof.proves_death:
            return verdict
        said = asked[via.id].partition(": ")[2]
        verdict, reason = judge_stale(verdict, said, proof)
        asked[via.id] = f"{verdict}: {reason}"
        return verdict

    def _ask(
        self,
        witnesses: Sequence[Host],
        command: Command,
        asked: dict[str, str],
        proof: StaleProof,
    ) -> tuple[Status | None, str | None]:
        """CloudStack's neighbour loop: stop at the first ALIVE, remember the last DEAD."""
        status: Status | None = None
        decided_by: str | None = None
        for witness in witnesses:
            verdict = self._judged(witness, command, asked, proof)
            if verdict is None or verdict is Verdict.UNKNOWN:
                continue
            decided_by = witness.id
            if verdict is Verdict.ALIVE:
                return Status.UP, decided_by
            status = Status.DOWN
        return status, decided_by

    def _zone_witnesses(self, host: Host, pools: set[str], *, exclude: set[str]) -> list[Host]:
        """Up KVM hosts outside the cluster that mount one of ``host``'s HA pools."""
        return list_zone_witnesses(
            self.directory, self.pools, host, pools, exclude=exclude, limit=self.zone_witnesses
        )

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        found = self.is_agent_alive(host)
        if found.verdict is Verdict.ALIVE and found.reachable is not False:
            return self.finding(
                Verdict.ALIVE,
                f"{host.id} is Up, so {vm.name} is taken to run there",
                host=found.reason,
            )
        return self.unknown(f"{host.id} is not known to be Up ({found.reason})")
