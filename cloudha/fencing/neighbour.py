"""Fencing through neighbours: proof from Up hosts of the same cluster.

:class:`KVMFenceBuilder` takes no power action. On KVM, "fencing" means an
Up neighbour proves through the shared-storage heartbeat that the host is
dead (spec §5): a host whose heartbeat went stale has stopped writing, and
a host whose writer arms a watchdog is reset before that (docs/heartbeat.md),
so its VMs no longer run. Without a watchdog (``Host.watchdog`` false) a
stale heartbeat proves nothing (:func:`~cloudha.investigators.support.stale_proof`)
and the builder does not fence. A host with no pool that carries a
heartbeat cannot be fenced this way either.

:class:`XenServerFenceBuilder` asks Up XenServer neighbours to fence the VM
(their agents act on the shared pool). :class:`VMwareFenceBuilder` never
applies: vCenter owns VMware HA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from cloudha.clock import Clock
from cloudha.commands import answer_verdict, check_on_host, fence
from cloudha.errors import ProbeError
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.investigators.base import Verdict
from cloudha.investigators.support import (
    list_neighbours,
    list_zone_witnesses,
    sighting_proof,
    stale_proof,
)
from cloudha.model import Host, HypervisorType, Vm
from cloudha.ports import (
    AgentGateway,
    AgentSightings,
    Answer,
    Command,
    HostDirectory,
    StoragePoolDirectory,
)

__all__ = ["KVMFenceBuilder", "VMwareFenceBuilder", "XenServerFenceBuilder"]

log = logging.getLogger(__name__)

_KVM = (HypervisorType.KVM, HypervisorType.LXC)


class _NeighbourFencer(BaseFenceBuilder):
    """Shared plumbing: send a command to neighbours until one proves the fence, within budget."""

    def __init__(
        self,
        clock: Clock,
        *,
        directory: HostDirectory,
        gateway: AgentGateway,
        command_timeout: float,
        timeout: float,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        if not command_timeout > 0:
            raise ValueError(f"{self.name}: command_timeout must be positive")
        self.directory = directory
        self.gateway = gateway
        self.command_timeout = float(command_timeout)

    def _ask(
        self,
        witnesses: Sequence[Host],
        command: Command,
        deadline: float,
        proves: Callable[[Answer], tuple[bool, str]],
        asked: dict[str, str],
    ) -> Host | None:
        """Send ``command`` to each witness in turn until one's answer ``proves`` the fence.

        Each command gets its own limit, within the fencer's ``deadline``;
        what each witness said (or that it was not asked) goes in ``asked``.
        """
        for witness in witnesses:
            budget = min(self.command_timeout, deadline - self.clock.monotonic())
            if budget <= 0:
                asked[witness.id] = "not asked: out of time"
                return None
            try:
                answer = self.gateway.send(witness, command, timeout=budget)
            except ProbeError as exc:
                asked[witness.id] = f"no answer: {exc}"
                continue
            proved, said = proves(answer)
            asked[witness.id] = said
            if proved:
                return witness
        return None


def _stale_heartbeat(answer: Answer) -> tuple[bool, str]:
    verdict, reason = answer_verdict(answer)
    return verdict is Verdict.DEAD, f"{verdict}: {reason}"


def _fenced(answer: Answer) -> tuple[bool, str]:
    return answer.result, f"{'fenced' if answer.result else 'refused'}: {answer.details}"


class KVMFenceBuilder(_NeighbourFencer):
    """Up KVM neighbours prove through the storage heartbeat that the host is dead.

    Neighbours of the host's cluster are asked first, in id order, then up
    to ``zone_witnesses`` Up KVM hosts of other clusters that mount one of
    the host's HA pools (a whole silent cluster has no neighbour left). The
    first DEAD answer fences; ALIVE, UNKNOWN and silence move on. Without an
    HA pool, or when a stale heartbeat of the host proves nothing (no
    watchdog, :func:`~cloudha.investigators.support.stale_proof`), the
    answer is NOT_FENCED without asking anyone: there is no way to prove
    death safely, and the next fencer (a BMC power-off) must act.

    Args:
        clock: the time source.
        directory: the host inventory.
        gateway: sends the heartbeat check to neighbours' agents.
        pools: which pools each host mounts.
        command_timeout: limit on each neighbour's answer, in seconds.
        timeout: limit on the whole attempt, in seconds.
        fail_on_one_pool: ``kvm.ha.fence.on.storage.heartbeat.failure``.
        zone_witnesses: hosts outside the cluster that may be asked.
        self_fence: ``reboot.host.and.alert.management.on.heartbeat.timeout``
            (only the reason of a refusal depends on it).
        stale_bound: the heartbeat's stale bound for the host's pools
            (:meth:`~cloudha.heartbeat.HeartbeatTiming.stale_after`, given the
            number of pools); with it, a host heard from within the bound
            (its ``last_ping``, or ``sightings``) is not fenced by a stale
            heartbeat (:func:`~cloudha.investigators.support.sighting_proof`).
        sightings: when the server last heard from each agent.
    """

    name = "KVMFenceBuilder"

    def __init__(
        self,
        clock: Clock,
        *,
        directory: HostDirectory,
        gateway: AgentGateway,
        pools: StoragePoolDirectory,
        command_timeout: float,
        timeout: float,
        fail_on_one_pool: bool = False,
        zone_witnesses: int = 3,
        self_fence: bool = True,
        stale_bound: Callable[[int], float] | None = None,
        sightings: AgentSightings | None = None,
    ) -> None:
        super().__init__(
            clock,
            directory=directory,
            gateway=gateway,
            command_timeout=command_timeout,
            timeout=timeout,
        )
        self.pools = pools
        self.fail_on_one_pool = fail_on_one_pool
        self.zone_witnesses = zone_witnesses
        self.self_fence = self_fence
        self.stale_bound = stale_bound
        self.sightings = sightings

    def supports(self, vm: Vm, host: Host) -> bool:
        return host.hypervisor in _KVM

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        deadline = self.clock.monotonic() + self.timeout
        ha_pools = [p.id for p in self.pools.pools_for_host(host) if p.supports_ha]
        if not ha_pools:
            return self.not_fenced(
                f"{host.id} has no storage pool that carries a heartbeat: "
                "no way to prove it is dead",
                pools=[],
            )
        proof = stale_proof(host, self_fence=self.self_fence)
        if self.stale_bound is not None:
            proof = sighting_proof(
                host,
                proof,
                now=self.clock.now().timestamp(),
                bound=self.stale_bound(len(ha_pools)),
                sightings=self.sightings,
            )
        if not proof.proves_death:
            return self.not_fenced(
                f"a stale heartbeat would prove nothing: {proof.reason}", pools=ha_pools
            )
        command = check_on_host(host, fail_on_one_pool=self.fail_on_one_pool)
        asked: dict[str, str] = {}
        witnesses = list(list_neighbours(self.directory, host, hypervisors=_KVM))
        witnesses += list_zone_witnesses(
            self.directory,
            self.pools,
            host,
            ha_pools,
            exclude={w.id for w in witnesses},
            limit=self.zone_witnesses,
        )
        prover = self._ask(witnesses, command, deadline, _stale_heartbeat, asked)
        if prover is not None:
            return self.fenced(
                f"{prover.id} proved {host.id}'s storage heartbeat stale",
                pools=ha_pools,
                proved_by=prover.id,
                neighbours=asked,
            )
        if not witnesses:
            return self.not_fenced(
                f"no Up neighbour of {host.id} can read its heartbeat", pools=ha_pools
            )
        return self.not_fenced(
            f"no neighbour could prove {host.id} dead ({len(asked)} asked)",
            pools=ha_pools,
            neighbours=asked,
        )


class XenServerFenceBuilder(_NeighbourFencer):
    """Up XenServer neighbours of the cluster fence the VM off the host (FenceCommand)."""

    name = "XenServerFenceBuilder"

    def supports(self, vm: Vm, host: Host) -> bool:
        return host.hypervisor is HypervisorType.XEN_SERVER

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        deadline = self.clock.monotonic() + self.timeout
        command = fence(vm, host)
        asked: dict[str, str] = {}
        witnesses = list_neighbours(self.directory, host, hypervisors=(HypervisorType.XEN_SERVER,))
        prover = self._ask(witnesses, command, deadline, _fenced, asked)
        if prover is not None:
            return self.fenced(
                f"{prover.id} fenced {vm.name} off {host.id}", proved_by=prover.id, neighbours=asked
            )
        return self.not_fenced(
            f"no XenServer neighbour fenced {vm.name} off {host.id} ({len(asked)} asked)",
            neighbours=asked,
        )


class VMwareFenceBuilder(BaseFenceBuilder):
    """Never applies: VMware fencing belongs to vCenter (spec §5)."""

    name = "VMwareFenceBuilder"

    def __init__(self, clock: Clock, *, timeout: float = 1.0) -> None:
        super().__init__(clock, timeout=timeout)

    def supports(self, vm: Vm, host: Host) -> bool:
        return False

    def _fence(self, vm: Vm, host: Host) -> FenceResult:  # pragma: no cover - never called
        return self.not_applicable("vCenter fences VMware hosts")
