"""CloudStack's SimpleInvestigator: ask the VM's own host for the VM's power state."""

from __future__ import annotations

from cloudha.commands import answer_power_state, check_vm
from cloudha.errors import ProbeError
from cloudha.investigators.base import Finding, Verdict
from cloudha.investigators.support import AgentInvestigatorBase
from cloudha.model import Host, Vm, VmPowerState

__all__ = ["AgentCheckInvestigator"]


class AgentCheckInvestigator(AgentInvestigatorBase):
    """``SimpleInvestigator``: the VM's power state, as its host's agent reports it.

    * Hosts: never judged (UNKNOWN); the direct CheckHealth has already asked.
    * VMs: PowerOn is ALIVE, PowerOff is DEAD (the agent answered and says the
      VM is off). An unreachable agent, a failed command or any other power
      state (PowerUnknown, PowerReportMissing) is UNKNOWN; CloudStack read
      those as "not running", which could restart a VM that still runs.
    """

    name = "SimpleInvestigator"

    def _agent_alive(self, host: Host) -> Finding:
        return self.unknown("the agent check does not judge hosts")

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        answer = self.send(host, check_vm(vm))
        if isinstance(answer, ProbeError):
            return self.unknown(f"agent on {host.id} did not answer: {answer}")
        state = answer_power_state(answer)
        if state is VmPowerState.POWER_ON:
            return self.finding(
                Verdict.ALIVE,
                f"agent on {host.id} reports {vm.name} PowerOn",
                power_state=str(state),
            )
        if state is VmPowerState.POWER_OFF:
            return self.finding(
                Verdict.DEAD,
                f"agent on {host.id} reports {vm.name} PowerOff",
                power_state=str(state),
            )
        shown = "no power state" if state is None else str(state)
        return self.unknown(f"agent on {host.id} answered with {shown}", details=answer.details)
