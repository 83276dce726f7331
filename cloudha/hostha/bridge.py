"""The bridge from Host-HA to VM-HA (CloudStack ``isVMAliveOnHost`` / ``getHostStatus``,
spec §7.5): an investigator that speaks for Host-HA about the hosts it owns.

The management server puts :class:`HostHAInvestigator` first in the chain.
It supports only the hosts Host-HA owns (:meth:`~cloudha.hostha.HAManager.owns`),
so the chain is unchanged for every other host. For an owned host:

* **Fenced** (and the host has not connected since the fence): DEAD, with
  ``no_vm_runs`` when the fence read the power back Off. The host is Down
  and its VMs are restarted.
* **any other state**: the host is Host-HA's to judge. Its finding is
  UNKNOWN with ``reachable=False`` (Disconnected): the host stays in Alert,
  watched, until Host-HA resets or fences it. The chain still asks the
  death-proof witnesses (the BMC reading the power Off), as for every host.
  CloudStack answers *Up* for Suspect and Checking, which brought such a
  host back Up and cancelled its VM-HA works (its PR #13088).
* **VMs**: Fenced → DEAD; otherwise the VM is taken to run where it is
  (ALIVE): an HA work on it waits and looks again, without using up its
  retries, until Host-HA decides.

A Fenced state older than the host's last connect is stale (the host was
powered on again and its agent connected before the next health check):
it proves nothing, and the finding is UNKNOWN like the other states.
"""

from __future__ import annotations

from cloudha.hostha.config import HAConfig
from cloudha.hostha.fsm import HAState
from cloudha.hostha.manager import HAManager
from cloudha.investigators.base import HOST_HA_BRIDGE, BaseInvestigator, Finding, Verdict
from cloudha.model import Host, Vm

__all__ = ["HOST_HA_BRIDGE", "HostHAInvestigator"]


class HostHAInvestigator(BaseInvestigator):
    """Host-HA's verdict on the hosts it owns (see the module docstring)."""

    name = HOST_HA_BRIDGE

    def __init__(self, manager: HAManager) -> None:
        super().__init__(manager.clock)
        self.manager = manager

    def supports(self, host: Host) -> bool:
        return self.manager.owns(host)

    def _fenced(self, host: Host, config: HAConfig | None) -> bool:
        """``config`` is Fenced and nothing since says the host came back."""
        if config is None or config.state is not HAState.FENCED:
            return False
        fenced_at = config.update_time.timestamp() if config.update_time is not None else None
        return fenced_at is None or host.last_ping <= fenced_at

    def _agent_alive(self, host: Host) -> Finding:
        config = self.manager.config_of(host.id)
        if self._fenced(host, config):
            return self.finding(
                Verdict.DEAD,
                f"Host-HA fenced {host.id}",
                no_vm_runs=True,
                ha_state=HAState.FENCED.value,
            )
        state = "unknown" if config is None or config.state is None else config.state.value
        return self.finding(
            Verdict.UNKNOWN,
            f"Host-HA owns {host.id} ({state}): it resets or fences the host",
            reachable=False,
            ha_state=state,
        )

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        if self._fenced(host, self.manager.config_of(host.id)):
            return self.finding(Verdict.DEAD, f"Host-HA fenced {host.id}: {vm.name} is dead")
        return self.finding(
            Verdict.ALIVE,
            f"Host-HA owns {host.id}: {vm.name} is taken to run there until Host-HA decides",
        )
