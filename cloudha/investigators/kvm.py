"""CloudStack's KVMInvestigator: the storage heartbeat, read by the host and its neighbours."""

from __future__ import annotations

from typing import Any

from cloudha.clock import Clock
from cloudha.commands import check_on_host
from cloudha.investigators.base import Finding, Verdict
from cloudha.investigators.support import AgentInvestigatorBase
from cloudha.model import Host, HypervisorType, Vm
from cloudha.ports import AgentGateway, HostDirectory, StoragePoolDirectory
from cloudha.status import Status

__all__ = ["KVMInvestigator"]

_KVM = (HypervisorType.KVM, HypervisorType.LXC)


class KVMInvestigator(AgentInvestigatorBase):
    """``KVMInvestigator``: ask the host, then its Up neighbours, about its heartbeat.

    The aggregation is CloudStack's (spec §4), on explicit verdicts:

    1. The host itself is asked to check its own heartbeat. Any answer means
       the host is running: its verdict DEAD gives *Down*, anything else *Up*.
       No answer gives *Disconnected*.
    2. Every other Up KVM/LXC host of the cluster is asked in turn; ALIVE
       stops the loop, DEAD is remembered, UNKNOWN is skipped.
    3. If the host is Disconnected or Down: a neighbour's ALIVE makes it
       Disconnected (ALIVE, unreachable), a neighbour's DEAD makes it Down.
       Otherwise the host's own result stands: Up is ALIVE; Down is DEAD; a
       Disconnected host nobody could judge is UNKNOWN with
       ``reachable=False``, which the chain reads as Disconnected.

    A host with no HA-capable pool cannot be judged (UNKNOWN), as in
    CloudStack ("has no NFS storage").

    Args:
        pools: which pools each host mounts.
        fail_on_one_pool: ``kvm.ha.fence.on.storage.heartbeat.failure``.
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
    ) -> None:
        super().__init__(clock, directory=directory, gateway=gateway, timeout=timeout)
        self.pools = pools
        self.fail_on_one_pool = fail_on_one_pool

    def supports(self, host: Host) -> bool:
        return host.hypervisor in _KVM

    def _agent_alive(self, host: Host) -> Finding:
        ha_pools = [p.id for p in self.pools.pools_for_host(host) if p.supports_ha]
        if not ha_pools:
            return self.unknown(f"{host.id} has no storage pool that carries a heartbeat")
        command = check_on_host(host, fail_on_one_pool=self.fail_on_one_pool)

        asked: dict[str, str] = {}
        own = self.opinion(host, command, asked)
        host_said = asked.pop(host.id)
        if own is None:
            host_status = Status.DISCONNECTED
        else:
            host_status = Status.DOWN if own is Verdict.DEAD else Status.UP

        neighbour_status: Status | None = None
        neighbour_id: str | None = None
        for neighbour in self.neighbours(host, hypervisors=_KVM):
            verdict = self.opinion(neighbour, command, asked)
            if verdict is None or verdict is Verdict.UNKNOWN:
                continue
            neighbour_status = Status.UP if verdict is Verdict.ALIVE else Status.DOWN
            neighbour_id = neighbour.id
            if verdict is Verdict.ALIVE:
                break

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

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        found = self.is_agent_alive(host)
        if found.verdict is Verdict.ALIVE and found.reachable is not False:
            return self.finding(
                Verdict.ALIVE,
                f"{host.id} is Up, so {vm.name} is taken to run there",
                host=found.reason,
            )
        return self.unknown(f"{host.id} is not known to be Up ({found.reason})")
