"""Fencing by power: switch the host off through its BMC and read the state back.

The proof is the power state read back Off, not the BMC's acceptance of the
command: a BMC may accept OFF and do nothing, or refuse OFF because the host
is already off (CloudStack issue #13376, where Redfish's 409 left a host in
Fencing for ever). So:

1. read the power state; already Off is FENCED at once;
2. send OFF (an immediate power-off, never a graceful shutdown); a refusal
   or error does not stop the attempt, the read-back decides;
3. read the state back every ``poll_interval`` until it says Off (FENCED)
   or the time is up (NOT_FENCED). A BMC that has answered nothing at all
   (STATUS, OFF and the first read-back failed) is not polled further: the
   next fence level is more useful than more silence.

Every BMC call is bounded by what is left of the fencer's ``timeout``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeAuthError, ProbeError
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.model import Host, Vm
from cloudha.oobm.manager import OutOfBandManager
from cloudha.oobm.power import PowerOperation, PowerState

__all__ = ["PowerFencer"]

log = logging.getLogger(__name__)


class PowerFencer(BaseFenceBuilder):
    """Power the host off through out-of-band management, confirmed by read-back.

    NOT_APPLICABLE for hosts without out-of-band management.

    Args:
        clock: the time source (the read-back waits through it).
        oobm: the out-of-band manager.
        timeout: limit on the whole attempt, in seconds
            (``outofbandmanagement.action.timeout`` is a good value).
        poll_interval: seconds between read-backs.
    """

    name = "PowerFencer"

    def __init__(
        self,
        clock: Clock,
        *,
        oobm: OutOfBandManager,
        timeout: float,
        poll_interval: float = 2.0,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        if not poll_interval > 0:
            raise ValueError(f"{self.name}: poll_interval must be positive, got {poll_interval!r}")
        self.oobm = oobm
        self.poll_interval = float(poll_interval)
        self._never = threading.Event()

    def supports(self, vm: Vm, host: Host) -> bool:
        return self.oobm.configured(host)

    def power_off(self, host: Host) -> FenceResult:
        """Fence the whole ``host`` (no VM in particular): what :meth:`fence_off` does.

        FENCED only once the power is read back Off; NOT_APPLICABLE without
        out-of-band management.
        """
        if not self.oobm.configured(host):
            return self._attempt(host, None)
        return self._attempt(host, lambda: self._power_off(host))

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        return self._power_off(host)

    def _power_off(self, host: Host) -> FenceResult:
        deadline = self.clock.monotonic() + self.timeout
        steps: list[dict[str, Any]] = []

        def call(operation: PowerOperation) -> PowerState | None:
            """Run one operation within the deadline; the state it reported, if any."""
            left = deadline - self.clock.monotonic()
            if left <= 0:
                steps.append({"operation": operation.value, "error": "out of time"})
                return None
            try:
                result = self.oobm.execute(host, operation, timeout=left)
            except ProbeAuthError:
                raise
            except (ProbeError, ConfigurationError) as exc:
                steps.append({"operation": operation.value, "error": f"{exc}"})
                return None
            steps.append(result.to_dict())
            return result.state if result.success else None

        try:
            if call(PowerOperation.STATUS) is PowerState.OFF:
                return self.fenced(f"{host.id} is already powered off", steps=steps)
            call(PowerOperation.OFF)
            while True:
                if call(PowerOperation.STATUS) is PowerState.OFF:
                    return self.fenced(f"{host.id} powered off and read back Off", steps=steps)
                if not any("error" not in step for step in steps):
                    return self.not_fenced(
                        f"the BMC of {host.id} does not answer", steps=steps, error="no answer"
                    )
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    break
                self.clock.wait(self._never, min(self.poll_interval, left))
        except ProbeAuthError as exc:
            return self.not_fenced(
                f"the BMC of {host.id} refused the credentials: {exc}",
                steps=steps,
                error="ProbeAuthError",
            )
        return self.not_fenced(
            f"{host.id} was not read back Off within {self.timeout:g}s", steps=steps
        )
