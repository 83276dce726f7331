"""Ping-based witnesses: CloudStack's PingInvestigator and ManagementIPSysVMInvestigator.

A ping that answers proves something is up; a ping that does not proves
nothing (the network may be at fault), so neither witness ever says DEAD.
"""

from __future__ import annotations

from cloudha.clock import Clock
from cloudha.commands import ping_test
from cloudha.errors import ProbeError
from cloudha.investigators.base import Finding, Verdict
from cloudha.investigators.support import AgentInvestigatorBase
from cloudha.model import Host, HypervisorType, Vm, VmType
from cloudha.ports import AgentGateway, Command, HostDirectory, VmNetworkDirectory
from cloudha.status import Status

__all__ = ["ManagementIPInvestigator", "PingInvestigator"]

_ROUTER_LOCAL = (HypervisorType.XEN_SERVER, HypervisorType.KVM)


class _PingBase(AgentInvestigatorBase):
    def __init__(
        self,
        clock: Clock,
        *,
        directory: HostDirectory,
        gateway: AgentGateway,
        timeout: float,
        networks: VmNetworkDirectory | None = None,
    ) -> None:
        super().__init__(clock, directory=directory, gateway=gateway, timeout=timeout)
        self.networks = networks

    def answered(self, via: Host, command: Command) -> bool:
        reply = self.send(via, command)
        return not isinstance(reply, ProbeError) and reply.result


class PingInvestigator(_PingBase):
    """``PingInvestigator`` (CloudStack's ``UserVmDomRInvestigator``).

    * Hosts: every other Up routing host of the pod pings the host's private
      address; the first that gets an answer makes the host ALIVE but
      unreachable (Disconnected: the machine is up, its agent is not).
    * User VMs: for each guest address, each router of that network pings it
      (from the router's host for XenServer/KVM VMs, otherwise from every Up
      routing host of the router's pod); the first answer is ALIVE.
    * Otherwise UNKNOWN; never DEAD.
    """

    name = "PingInvestigator"

    def _agent_alive(self, host: Host) -> Finding:
        if not host.private_ip:
            return self.unknown(f"{host.id} has no private address to ping")
        tried: list[str] = []
        for via in self.neighbours(host, scope="pod"):
            tried.append(via.id)
            if self.answered(via, ping_test(host.private_ip)):
                return self.finding(
                    Verdict.ALIVE,
                    f"{via.id} can ping {host.private_ip}; the agent on {host.id} is down",
                    reachable=False,
                    pinged_from=via.id,
                )
        return self.unknown(f"no Up host of pod {host.pod} got a ping answer", tried=tried)

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        if vm.type is not VmType.USER:
            return self.unknown("the ping investigator checks user VMs only")
        if self.networks is None:
            return self.unknown("no VM network directory configured")
        tried: list[str] = []
        for nic in self.networks.guest_nics(vm):
            for router in nic.routers:
                for via in self._router_vantage_points(vm, router.host_id, router.pod, host):
                    tried.append(f"{router.id}@{via.id}")
                    if self.answered(via, ping_test(nic.ip, router_ip=router.private_ip)):
                        return self.finding(
                            Verdict.ALIVE,
                            f"router {router.id} can ping {nic.ip}",
                            router=router.id,
                            pinged_from=via.id,
                        )
        return self.unknown(f"no router got a ping answer from {vm.name}", tried=tried)

    def _router_vantage_points(
        self, vm: Vm, router_host_id: str, router_pod: str, vm_host: Host
    ) -> list[Host]:
        if vm.hypervisor in _ROUTER_LOCAL:
            router_host = self.directory.find_host(router_host_id)
            return [router_host] if router_host is not None else []
        pod_hosts = self.directory.list_hosts(pod=router_pod)
        return sorted(
            (h for h in pod_hosts if h.status is Status.UP and h.id != vm_host.id),
            key=lambda h: h.id,
        )


class ManagementIPInvestigator(_PingBase):
    """``ManagementIPSysVMInvestigator``: ping a system VM's management address.

    Every other Up routing host of the VM host's pod pings each management
    address of the VM; the first answer is ALIVE. Hosts are never judged,
    and user VMs are not either (CloudStack only logged that it should stop
    for them).
    """

    name = "ManagementIPSysVMInvestigator"

    def _agent_alive(self, host: Host) -> Finding:
        return self.unknown("the management-address investigator does not judge hosts")

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        if not vm.type.is_system:
            return self.unknown("only system VMs have a management address")
        if self.networks is None:
            return self.unknown("no VM network directory configured")
        addresses = list(self.networks.management_ips(vm))
        if not addresses:
            return self.unknown(f"{vm.name} has no management address")
        tried: list[str] = []
        for ip in addresses:
            for via in self.neighbours(host, scope="pod"):
                tried.append(f"{ip}@{via.id}")
                if self.answered(via, ping_test(ip)):
                    return self.finding(
                        Verdict.ALIVE, f"{via.id} can ping {vm.name} at {ip}", pinged_from=via.id
                    )
        return self.unknown(f"nobody got a ping answer from {vm.name}", tried=tried)
