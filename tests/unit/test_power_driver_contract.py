"""cloudha.testing.check_power_driver: it passes a good driver and names what a bad one breaks."""

from __future__ import annotations

import pytest

from cloudha.oobm.power import BasePowerDriver, OobmConfig, PowerOperation, PowerResult, PowerState
from cloudha.testing import FakeBmc, FakePowerDriver, check_power_driver

CONFIG = OobmConfig("fake", "bmc-1", "admin", "password", host_id="h1")
NOWHERE = OobmConfig("fake", "bmc-none", "admin", "password")


def fleet() -> FakePowerDriver:
    driver = FakePowerDriver()
    driver.add("bmc-1", FakeBmc())
    return driver


def test_a_driver_that_keeps_the_contract_passes_and_the_bmc_is_left_on() -> None:
    driver = fleet()
    check_power_driver(driver, CONFIG, unreachable=NOWHERE)
    assert driver.bmcs["bmc-1"].power == "on"
    assert PowerOperation.OFF in driver.bmcs["bmc-1"].calls


def test_a_silent_bmc_is_reported() -> None:
    driver = fleet()
    driver.bmcs["bmc-1"].silent = True
    with pytest.raises(AssertionError, match="did not succeed"):
        check_power_driver(driver, CONFIG)


def test_a_graceful_off_is_not_an_immediate_off() -> None:
    driver = fleet()
    driver.bmcs["bmc-1"].ignore_off = True  # accepts OFF, the power stays on
    with pytest.raises(AssertionError, match="right after OFF read On, not Off"):
        check_power_driver(driver, CONFIG)


class Wrapping(BasePowerDriver):
    """A driver over a FakePowerDriver (final), to break one rule at a time."""

    name = "fake"

    def __init__(self) -> None:
        self.inner = fleet()

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        return self.inner.execute(config, operation, timeout=timeout)


class Leaky(Wrapping):
    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        result = super()._execute(config, operation, timeout)
        return PowerResult(result.operation, result.success, result.state, config.password)


def test_a_password_in_a_result_is_reported() -> None:
    driver = Leaky()
    with pytest.raises(AssertionError, match="the result contains the password"):
        check_power_driver(driver, CONFIG)


class Careless(Wrapping):
    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        if operation is PowerOperation.STATUS and config.password != "password":
            raise ValueError("login failed")  # not a ProbeError
        if operation is PowerOperation.STATUS and config.address == "bmc-none":
            return PowerResult(operation, True, PowerState.ON)  # answers for nobody
        return super()._execute(config, operation, timeout)


def test_other_exceptions_and_answers_from_nowhere_are_reported() -> None:
    driver = Careless()
    with pytest.raises(AssertionError) as failed:
        check_power_driver(driver, CONFIG, unreachable=NOWHERE)
    message = str(failed.value)
    assert "raised ValueError: login failed (raise a ProbeError)" in message
    assert "did not raise ProbeAuthError" in message
    assert "unreachable BMC did not raise" in message


def test_a_name_that_is_not_lower_case_is_refused() -> None:
    driver = fleet()
    driver.name = "Fake"
    with pytest.raises(AssertionError, match="lower-case"):
        check_power_driver(driver, CONFIG)
