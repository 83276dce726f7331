"""CloudStack's XenServerInvestigator: neighbours' opinion, where "alive" means "don't know"."""

from __future__ import annotations

from cloudha.commands import check_on_host
from cloudha.investigators.base import Finding, Verdict
from cloudha.investigators.support import AgentInvestigatorBase
from cloudha.model import Host, HypervisorType
from cloudha.status import Status

__all__ = ["XenServerInvestigator"]


class XenServerInvestigator(AgentInvestigatorBase):
    """``XenServerInvestigator``: ask the other XenServer hosts of the cluster.

    Neighbours in Up or Connecting are asked in turn. The first decisive
    answer ends the investigation: DEAD gives DEAD; ALIVE gives UNKNOWN,
    on purpose, because XAPI on a live host may be the thing that is broken,
    so "alive" from a neighbour is not taken as "Up". UNKNOWN answers and
    unreachable neighbours are skipped. VMs are never judged.
    """

    name = "XenServerInvestigator"

    def supports(self, host: Host) -> bool:
        return host.hypervisor is HypervisorType.XEN_SERVER

    def _agent_alive(self, host: Host) -> Finding:
        command = check_on_host(host, fail_on_one_pool=False)
        asked: dict[str, str] = {}
        for neighbour in self.neighbours(
            host,
            hypervisors=(HypervisorType.XEN_SERVER,),
            statuses=(Status.UP, Status.CONNECTING),
        ):
            verdict = self.opinion(neighbour, command, asked)
            if verdict is Verdict.DEAD:
                return self.finding(
                    Verdict.DEAD, f"{neighbour.id} finds {host.id} dead", neighbours=asked
                )
            if verdict is Verdict.ALIVE:
                return self.unknown(
                    f"{neighbour.id} finds {host.id} alive, which XenServer cannot trust",
                    neighbours=asked,
                )
        return self.unknown(f"no neighbour of {host.id} could decide", neighbours=asked)
