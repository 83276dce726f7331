"""Fencing through the hypervisor: destroy the VM's domain and read it back.

:class:`LibvirtFencer` talks to the host's hypervisor directly (libvirt),
bypassing the agent. It is the fencer for a host whose agent went silent
while its hypervisor still answers: the host is not dead, so no
storage-heartbeat proof will come, but the one VM to be restarted elsewhere
can be stopped where it is.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from cloudha.clock import Clock
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.model import Host, HypervisorType, Vm
from cloudha.ports import DomainState, HypervisorControl

__all__ = ["LibvirtFencer"]

log = logging.getLogger(__name__)

_STOPPED = (DomainState.SHUTOFF, DomainState.MISSING)


class LibvirtFencer(BaseFenceBuilder):
    """Destroy the VM's domain on a host whose hypervisor still answers, then read it back.

    Applicable when a host is reachable by libvirt but its agent is not (the
    usual case where the hypervisor investigator found the host ALIVE but
    unreachable). It proves only that *this VM* is not running on *that
    host*; the host itself may well be alive, with its other VMs running.

    Steps, all within ``timeout``:

    1. read the domain's state (``before``);
    2. destroy it (an immediate hard stop, never a graceful shutdown); a
       domain already shut off or missing is left alone;
    3. read the state back (``after``).

    Outcomes:

    * FENCED when ``after`` is Shutoff, or Missing: a hypervisor that has no
      domain of that name cannot be running the VM. Evidence: ``domain``,
      ``before``, ``after``, ``action`` (``"destroy"`` when a destroy was
      sent, ``"none"`` when the domain was already stopped) and ``proof``.
    * NOT_FENCED when the domain is still Running (or in a transitional
      state) after the destroy, or when the hypervisor does not answer
      (a :class:`~cloudha.errors.ProbeError`: timeout, refused, bad
      credentials), or when the time ran out between the two steps.
    * NOT_APPLICABLE for hosts of other hypervisors than ``hypervisors``.

    The domain name is ``vm.name`` (CloudStack's instance name, as the
    agent defines it).

    Args:
        clock: the time source.
        control: the hypervisor connection (e.g.
            :class:`cloudha.transport.libvirt.LibvirtHypervisorProbe`); it
            enforces each call's timeout.
        timeout: limit on the whole attempt (both calls), in seconds.
        hypervisors: the hypervisors handled (default KVM and LXC).
    """

    name = "LibvirtFencer"

    def __init__(
        self,
        clock: Clock,
        *,
        control: HypervisorControl,
        timeout: float,
        hypervisors: Collection[HypervisorType] = (HypervisorType.KVM, HypervisorType.LXC),
    ) -> None:
        super().__init__(clock, timeout=timeout)
        self.control = control
        self.hypervisors = frozenset(hypervisors)

    def supports(self, vm: Vm, host: Host) -> bool:
        return host.hypervisor in self.hypervisors

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        deadline = self.clock.monotonic() + self.timeout
        domain = vm.name
        before = self.control.domain_state(host, domain, timeout=self.timeout)
        left = deadline - self.clock.monotonic()
        if left <= 0:
            return self.not_fenced(
                f"no time left to destroy {domain} on {host.id} after reading its state",
                domain=domain,
                before=before.value,
            )
        after = self.control.destroy_domain(host, domain, timeout=left)
        action = "none" if before in _STOPPED else "destroy"
        if action == "destroy" and after in _STOPPED:
            log.info(
                "%s: destroyed domain %s on host %s (now %s)",
                self.name,
                domain,
                host.id,
                after.value,
            )
        evidence = {
            "domain": domain,
            "before": before.value,
            "after": after.value,
            "action": action,
        }
        if after is DomainState.MISSING:
            done = "destroyed and now " if action == "destroy" else ""
            return self.fenced(
                f"domain {domain} {done}unknown to the hypervisor on {host.id}: "
                "it cannot run there",
                proof="the hypervisor has no such domain",
                **evidence,
            )
        if after is DomainState.SHUTOFF:
            if action == "none":
                reason = f"domain {domain} was already shut off on {host.id}"
            else:
                reason = f"domain {domain} destroyed on {host.id} and read back shut off"
            return self.fenced(reason, proof="domain read back Shutoff", **evidence)
        log.warning(
            "%s: domain %s on host %s is %s after destroy", self.name, domain, host.id, after.value
        )
        return self.not_fenced(
            f"domain {domain} on {host.id} is still {after.value} after destroy", **evidence
        )
