"""How-to "Write a power driver" (docs/how-to/power-driver.md), as one program.

A driver for a BMC with a small JSON-over-HTTPS API. The HTTP call is one
injected function, so the test plays the BMC. tests/unit/test_docs_snippets.py
runs it: ``python docs/snippets/power_driver.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from cloudha import (
    BasePowerDriver,
    FenceOutcome,
    Host,
    OobmConfig,
    OutOfBandManager,
    PowerFencer,
    PowerOperation,
    PowerState,
    ProbeAuthError,
    ProbeTimeout,
    StaticOobmConfigs,
    Vm,
)
from cloudha.oobm.power import PowerCommandError, PowerResult
from cloudha.testing import FakeClock, check_fencer, check_power_driver

# One HTTP call: (method, url, user, password, body, timeout) -> (status, JSON body).
# Yours wraps requests or urllib with TLS verification on.
Http = Callable[
    [str, str, str, str, Mapping[str, Any] | None, float], tuple[int, Mapping[str, Any]]
]

# --8<-- [start:driver]

# What each operation asks of this BMC. OFF must be immediate: fencing relies on it.
ACTIONS = {
    PowerOperation.ON: "on",
    PowerOperation.OFF: "force-off",  # never a graceful shutdown
    PowerOperation.CYCLE: "power-cycle",
    PowerOperation.RESET: "hard-reset",
    PowerOperation.SOFT: "acpi-shutdown",
}
STATES = {"on": PowerState.ON, "off": PowerState.OFF}


class AcmeBmcDriver(BasePowerDriver):
    """Power driver ``acme``: ``POST /power {"action": ...}``, ``GET /power``."""

    name = "acme"  # what OobmConfig.driver refers to (lower case)

    def __init__(self, http: Http) -> None:
        self.http = http

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        port = f":{config.port}" if config.port is not None else ""
        url = f"https://{config.address}{port}/power"
        if operation is PowerOperation.STATUS:
            body = self._call(config, "GET", url, None, timeout)
            state = STATES.get(str(body.get("state")), PowerState.UNKNOWN)
            return PowerResult(operation, True, state, f"power is {body.get('state')}")
        body = self._call(config, "POST", url, {"action": ACTIONS[operation]}, timeout)
        return PowerResult(operation, True, message=str(body.get("message", "accepted")))

    def _call(
        self,
        config: OobmConfig,
        method: str,
        url: str,
        body: Mapping[str, Any] | None,
        timeout: float,
    ) -> Mapping[str, Any]:
        where = f"acme BMC {config.address}"  # never the password, in any message
        try:
            status, answer = self.http(method, url, config.username, config.password, body, timeout)
        except TimeoutError as exc:
            raise ProbeTimeout(f"{where}: no answer within {timeout:g}s") from exc
        # An OSError (refused, unreachable) becomes ProbeConnectionError in the base class.
        if status in (401, 403):
            raise ProbeAuthError(f"{where} refused user {config.username!r}")
        if status >= 300:
            raise PowerCommandError(
                f"{where}: {method} answered {status} {answer.get('message', '')}"
            )
        return answer


# --8<-- [end:driver]


class AcmeBmcs:
    """The BMCs the test plays, behind the driver's one HTTP function."""

    def __init__(self) -> None:
        self.power: dict[str, str] = {}  # address -> "on" / "off"
        self.passwords: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, address: str, password: str, power: str = "on") -> None:
        self.power[address] = power
        self.passwords[address] = password

    def http(
        self,
        method: str,
        url: str,
        user: str,
        password: str,
        body: Mapping[str, Any] | None,
        timeout: float,
    ) -> tuple[int, Mapping[str, Any]]:
        address = url.removeprefix("https://").split("/")[0].split(":")[0]
        with self.lock:
            if address not in self.power:
                raise TimeoutError  # nothing answers there
            if password != self.passwords[address]:
                return 401, {"message": "bad credentials"}
            if method == "GET":
                return 200, {"state": self.power[address]}
            action = (body or {}).get("action")
            if action in ("force-off", "acpi-shutdown"):
                self.power[address] = "off"
            elif action in ("on", "power-cycle", "hard-reset"):
                self.power[address] = "on"
            else:
                return 400, {"message": f"unknown action {action}"}
            return 202, {"message": f"{action} accepted"}


SECRET = "bmc-s3cret"

# --8<-- [start:contract]


def check_the_contract() -> None:
    bmcs = AcmeBmcs()
    bmcs.add("10.1.0.2", SECRET)
    driver = AcmeBmcDriver(bmcs.http)
    # Switches this (test) BMC off and on, reads it back, tries a wrong password and
    # an address where nothing answers; fails listing every broken rule.
    check_power_driver(
        driver,
        OobmConfig("acme", "10.1.0.2", "admin", SECRET, host_id="h2"),
        unreachable=OobmConfig("acme", "10.1.0.99", "admin", SECRET),
    )


# --8<-- [end:contract]
# --8<-- [start:fencing]


def fence_with_it() -> str:
    clock = FakeClock()
    bmcs = AcmeBmcs()
    bmcs.add("10.1.0.2", SECRET)
    configs = StaticOobmConfigs()
    configs.set("h2", OobmConfig("acme", "10.1.0.2", "admin", SECRET, host_id="h2"))
    oobm = OutOfBandManager(clock=clock, configs=configs, drivers=[AcmeBmcDriver(bmcs.http)])
    fencer = PowerFencer(clock, oobm=oobm, timeout=30)
    check_fencer(fencer, secrets=[SECRET])  # the power fencer over this driver keeps its contract
    result = fencer.fence_off(Vm("vm1", host_id="h2"), Host("h2", cluster="c1"))
    assert result.outcome is FenceOutcome.FENCED  # OFF sent, and read back Off
    assert bmcs.power["10.1.0.2"] == "off"
    assert oobm.power_state("h2") is PowerState.OFF
    return f"h2: {result.outcome} ({result.reason})"


# --8<-- [end:fencing]


def main() -> str:
    check_the_contract()
    return fence_with_it()


if __name__ == "__main__":
    print(main())
