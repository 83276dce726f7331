"""CloudStack's VMwareInvestigator: vCenter owns HA, so cloudha never decides."""

from __future__ import annotations

from cloudha.investigators.base import BaseInvestigator, Finding, Verdict
from cloudha.model import Host, HypervisorType, Vm

__all__ = ["VMwareInvestigator"]


class VMwareInvestigator(BaseInvestigator):
    """``VMwareInvestigator``: a VMware host is always Disconnected, its VMs alive.

    vSphere HA restarts VMware VMs itself; cloudha must not. The host finding
    is UNKNOWN with ``reachable=False``, which the chain reads as
    Disconnected, so the host goes to Alert and is never declared Down.
    """

    name = "VMwareInvestigator"

    def supports(self, host: Host) -> bool:
        return host.hypervisor is HypervisorType.VMWARE

    def _agent_alive(self, host: Host) -> Finding:
        return self.finding(Verdict.UNKNOWN, "VMware hosts are left to vSphere HA", reachable=False)

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        return self.finding(Verdict.ALIVE, "VMware VMs are left to vSphere HA")
