"""The BMC as a witness: a host whose power the BMC reads Off is dead.

A host that lost power, or that was switched off, cannot run a VM. Its BMC,
which runs on standby power, can say so within a second, long before a
storage heartbeat goes stale. Power On, on the other hand, says nothing of
the OS: a hung or crashed kernel keeps the power on. So:

===============================================  ==========
the BMC                                          finding
===============================================  ==========
answers STATUS Off, and the power-state machine  DEAD
holds Off after it
answers STATUS On                                UNKNOWN
answers without a power state                    UNKNOWN
is silent, refuses the credentials, or fails     UNKNOWN
the host has no out-of-band management           UNKNOWN
===============================================  ==========

The state is read back through the :class:`~cloudha.oobm.manager.OutOfBandManager`,
so the reading also drives the spec §8 power-state machine (what fencing and
``cloudha dump`` see) and a refused password raises its alert.
"""

from __future__ import annotations

from typing import Any

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.investigators.base import BaseInvestigator, Finding, Verdict
from cloudha.model import Host
from cloudha.oobm.manager import OobmNotConfigured, OutOfBandManager
from cloudha.oobm.power import PowerOperation, PowerState

__all__ = ["BMCInvestigator"]


class BMCInvestigator(BaseInvestigator):
    """``BMCInvestigator``: ask the host's BMC for its power state.

    DEAD only for a power state read Off (see the module table); everything
    else is UNKNOWN, so the chain goes on to the other witnesses. Its DEAD
    is physical proof (``death_proof``): the chain asks it even after a
    heartbeat witness decided Disconnected, so its place in
    ``ha.investigators.order`` (CloudStack's default does not list it: it
    comes after the listed ones) matters only for cost. A VM witness asked
    after it (the hypervisor investigator) can still overrule the DEAD, as
    for any host-level witness.

    Args:
        clock: stamps the findings.
        oobm: the out-of-band manager that holds the BMC configurations and drivers.
        timeout: limit on the STATUS call, in seconds.
    """

    name = "BMCInvestigator"
    death_proof = True

    def __init__(self, clock: Clock, *, oobm: OutOfBandManager, timeout: float) -> None:
        super().__init__(clock)
        if not timeout > 0:
            raise ConfigurationError(
                f"BMCInvestigator timeout must be positive, got {timeout!r}",
                key="timeout",
                value=repr(timeout),
            )
        self.oobm = oobm
        self.timeout = timeout

    def supports(self, host: Host) -> bool:
        """Any host, as long as some power driver is installed (no BMC is contacted)."""
        return bool(self.oobm.driver_names)

    def _agent_alive(self, host: Host) -> Finding:
        try:
            result = self.oobm.execute(host, PowerOperation.STATUS, timeout=self.timeout)
        except OobmNotConfigured:
            return self.unknown("host has no out-of-band management")
        except ConfigurationError as exc:
            return self.unknown(f"BMC not usable: {exc}", error=type(exc).__name__)
        except ProbeError as exc:
            return self.unknown(f"BMC did not answer: {exc}", error=type(exc).__name__)
        held = self.oobm.power_state(host.id)
        evidence: dict[str, Any] = {
            "power": None if result.state is None else result.state.value,
            "power_state_machine": None if held is None else held.value,
        }
        if not result.success or result.state is None:
            return self.unknown(
                f"BMC answered without a power state: {result.message or 'no message'}",
                **evidence,
            )
        if result.state is PowerState.OFF and held is PowerState.OFF:
            return self.finding(
                Verdict.DEAD, "BMC reads the power Off", no_vm_runs=True, **evidence
            )
        if result.state is PowerState.ON:
            return self.unknown("BMC reads the power On, which is no proof of life", **evidence)
        return self.unknown(f"BMC reads the power {result.state}", **evidence)
