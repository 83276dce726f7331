"""Ask the host's hypervisor directly (libvirt), bypassing the agent."""

from __future__ import annotations

from collections.abc import Collection

from cloudha.clock import Clock
from cloudha.investigators.base import BaseInvestigator, Finding, Verdict, Witness
from cloudha.model import Host, HypervisorType, Vm
from cloudha.ports import DomainState, HypervisorProbe

__all__ = ["HypervisorInvestigator"]


class HypervisorInvestigator(BaseInvestigator):
    """A witness that talks to the hypervisor itself (new in cloudha).

    * Hosts: if the hypervisor answers, the machine is running: ALIVE, and
      unreachable (the agent is what stopped answering), which the chain
      reads as Disconnected, so its VMs are not restarted elsewhere. If it
      does not answer, UNKNOWN: silence is not death. When it reports
      running domains the finding is VM-level (:attr:`Witness.VM`): it is
      a ``vm_witness``, and the chain lets it overrule a heartbeat's DEAD.
    * VMs: the hypervisor's own view of the domain named ``vm.name``:
      running (or paused) is ALIVE; shut off, crashed or not defined is DEAD;
      transitional states are UNKNOWN.

    Args:
        probe: the hypervisor connection (e.g.
            :class:`cloudha.transport.libvirt.LibvirtHypervisorProbe`).
        timeout: limit on each probe; the probe enforces it.
        hypervisors: the hypervisors this witness judges (default KVM, LXC).
    """

    name = "LibvirtInvestigator"
    vm_witness = True

    def __init__(
        self,
        clock: Clock,
        *,
        probe: HypervisorProbe,
        timeout: float,
        hypervisors: Collection[HypervisorType] = (HypervisorType.KVM, HypervisorType.LXC),
    ) -> None:
        super().__init__(clock)
        if timeout <= 0:
            raise ValueError(f"{type(self).__name__}: timeout must be positive, got {timeout!r}")
        self.probe = probe
        self.timeout = timeout
        self.hypervisors = frozenset(hypervisors)

    def supports(self, host: Host) -> bool:
        return host.hypervisor in self.hypervisors

    def _agent_alive(self, host: Host) -> Finding:
        report = self.probe.probe_host(host, timeout=self.timeout)
        running = report.running_domains > 0
        shown = f", {report.running_domains} domain(s) running" if running else ""
        return self.finding(
            Verdict.ALIVE,
            f"the hypervisor on {host.id} answers{shown}; its agent does not",
            reachable=False,
            witness=Witness.VM if running else Witness.HOST,
            no_vm_runs=not running,
            uri=report.uri,
            hostname=report.hostname,
            running_domains=report.running_domains,
        )

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        state = self.probe.domain_state(host, vm.name, timeout=self.timeout)
        shown = f"the hypervisor on {host.id} reports {vm.name} {state.value}"
        if state is DomainState.RUNNING:
            return self.finding(Verdict.ALIVE, shown, domain_state=state.value)
        if state in (DomainState.SHUTOFF, DomainState.MISSING):
            return self.finding(Verdict.DEAD, shown, domain_state=state.value)
        return self.unknown(shown, domain_state=state.value)
