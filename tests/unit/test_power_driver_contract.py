"""check_power_driver: the power-driver contract, on the fake driver and on drivers breaking it."""

from __future__ import annotations

import pytest

from cloudha.errors import ProbeConnectionError
from cloudha.oobm.power import BasePowerDriver, OobmConfig, PowerOperation, PowerResult, PowerState
from cloudha.testing import FakeBmc, FakePowerDriver, check_power_driver

SECRET = "s3cret-Pw"


def _configs(driver: str = "fake") -> tuple[OobmConfig, OobmConfig, OobmConfig]:
    on = OobmConfig(driver, "10.9.0.1", "admin", SECRET, host_id="h1")
    gone = OobmConfig(driver, "10.9.0.2", "admin", SECRET, host_id="h2")
    wrong = OobmConfig(driver, "10.9.0.1", "admin", "not-it", host_id="h1")
    return on, gone, wrong


def test_the_fake_driver_keeps_the_contract() -> None:
    driver = FakePowerDriver()
    bmc = driver.add("10.9.0.1", FakeBmc(password=SECRET))
    on, gone, wrong = _configs()
    check_power_driver(driver, on, unreachable=gone, wrong_password=wrong, timeout=1.0)
    assert bmc.power == "on"  # left as found: OFF, then ON
    assert PowerOperation.OFF in bmc.calls
    assert PowerOperation.ON in bmc.calls


class _Graceful(BasePowerDriver):
    """Breaks four rules: OFF leaves the power on (a graceful request), an unreachable BMC
    raises RuntimeError, a refused password is not an auth error, and its message shows it."""

    name = "graceful"

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        if config.address != "10.9.0.1":
            raise RuntimeError("no route")
        if config.password != SECRET:
            raise ProbeConnectionError(f"login refused for password {config.password}")
        if operation is PowerOperation.STATUS:
            return PowerResult(operation, True, PowerState.ON)
        return PowerResult(operation, True)


def test_a_driver_breaking_the_contract_is_told_every_broken_rule() -> None:
    on, gone, wrong = _configs("graceful")
    with pytest.raises(AssertionError) as caught:
        check_power_driver(_Graceful(), on, unreachable=gone, wrong_password=wrong, timeout=0.2)
    text = str(caught.value)
    assert "OFF read back On, not Off" in text
    assert "shows a password" in text
    assert "not a ProbeError" in text
    assert "not ProbeAuthError" in text


def test_a_name_that_is_not_lower_case_is_refused_first() -> None:
    driver = FakePowerDriver(name="Fake")
    on, gone, _ = _configs("Fake")
    with pytest.raises(AssertionError, match="lower-case"):
        check_power_driver(driver, on, unreachable=gone)
