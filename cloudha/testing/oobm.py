"""A fake BMC fleet behind a power driver, for tests of fencing and out-of-band management."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import final

import attrs

from cloudha.errors import ProbeAuthError, ProbeConnectionError, ProbeTimeout
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerCommandError,
    PowerOperation,
    PowerResult,
    PowerState,
)

__all__ = ["FakeBmc", "FakePowerDriver"]


@attrs.define
class FakeBmc:
    """One simulated BMC.

    Attributes:
        password: the password it accepts.
        power: "on" or "off".
        silent: it does not answer (every call times out).
        ignore_off: it accepts OFF but the power stays on (a lying BMC).
        conflict_when_off: it refuses OFF on a host already off (Redfish's 409).
        calls: operations received, in order.
        on_off: called after the power went off (e.g. to stop the host's VMs).
    """

    password: str = "password"
    power: str = "on"
    silent: bool = False
    ignore_off: bool = False
    conflict_when_off: bool = False
    calls: list[PowerOperation] = attrs.Factory(list)
    on_off: Callable[[], None] | None = None


@final
class FakePowerDriver(BasePowerDriver):
    """A power driver over :class:`FakeBmc` objects keyed by address.

    Time does not pass: a silent BMC raises ProbeTimeout at once, unless
    ``advance`` is given (a callable the driver calls with the timeout, e.g.
    ``FakeClock.advance``), so fencers see time spent.

    Args:
        name: the driver name configs refer to.
        advance: moves virtual time by the seconds a silent BMC makes the caller wait.
    """

    def __init__(
        self, name: str = "fake", *, advance: Callable[[float], None] | None = None
    ) -> None:
        self.name = name
        self.bmcs: dict[str, FakeBmc] = {}
        self.advance = advance
        self._lock = threading.Lock()

    def add(self, address: str, bmc: FakeBmc | None = None) -> FakeBmc:
        """Put a BMC at ``address`` and return it."""
        bmc = bmc if bmc is not None else FakeBmc()
        with self._lock:
            self.bmcs[address] = bmc
        return bmc

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        with self._lock:
            bmc = self.bmcs.get(config.address)
        if bmc is None:
            raise ProbeConnectionError(f"nothing answers at {config.address}")
        bmc.calls.append(operation)
        if bmc.silent:
            if self.advance is not None:
                self.advance(timeout)
            raise ProbeTimeout(f"BMC {config.address} silent for {timeout:g}s")
        if config.password != bmc.password:
            raise ProbeAuthError(f"BMC {config.address} refused user {config.username!r}")
        if operation is PowerOperation.STATUS:
            state = PowerState.ON if bmc.power == "on" else PowerState.OFF
            return PowerResult(operation, True, state, f"Chassis Power is {bmc.power}")
        if operation in (PowerOperation.OFF, PowerOperation.SOFT):
            if bmc.power == "off" and bmc.conflict_when_off:
                raise PowerCommandError(f"BMC {config.address}: 409 Conflict (already off)")
            if not bmc.ignore_off and bmc.power != "off":
                bmc.power = "off"
                if bmc.on_off is not None:
                    bmc.on_off()
            return PowerResult(operation, True)
        if operation is PowerOperation.ON:
            bmc.power = "on"
            return PowerResult(operation, True)
        if operation in (PowerOperation.CYCLE, PowerOperation.RESET):
            if bmc.on_off is not None:
                bmc.on_off()
            bmc.power = "on"
            return PowerResult(operation, True)
        raise PowerCommandError(f"unsupported operation {operation}")  # pragma: no cover
