"""RedfishDriver against a real Redfish service: sushy-emulator over libvirt (loopback only).

The emulator runs in the test process over HTTPS with basic auth (see
:mod:`tests.integration.redfish`); its system is a libvirt ``test:///default``
domain the test can inspect directly.

sushy-emulator's libvirt backend answers ``ForceOff`` on a domain that is
already off with 204 (it does nothing), not 409 Conflict, so the 409
read-back path is covered by the unit tests with fakes.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from cloudha.errors import ProbeAuthError, ProbeConnectionError, ProbeError, ProbeTimeout
from cloudha.oobm.power import PowerCommandError, PowerOperation, PowerResult, PowerState
from cloudha.oobm.redfish import RedfishDriver
from cloudha.settings import Settings
from tests.integration.redfish import (
    RedfishBmc,
    redfish_bmc,  # noqa: F401
)

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


@pytest.fixture
def driver(redfish_bmc: RedfishBmc) -> RedfishDriver:  # noqa: F811
    """A driver that trusts the emulator's self-signed certificate."""
    return RedfishDriver(verify=str(redfish_bmc.ca_path))


def run(
    driver: RedfishDriver, bmc: RedfishBmc, operation: PowerOperation, **overrides: object
) -> PowerResult:
    return driver.execute(bmc.config(**overrides), operation, timeout=TIMEOUT)


def test_status_reads_on(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    result = run(driver, redfish_bmc, PowerOperation.STATUS)

    assert result == PowerResult(PowerOperation.STATUS, True, PowerState.ON, "PowerState On")


def test_off_forces_the_domain_off_and_off_again_succeeds(
    driver: RedfishDriver,
    redfish_bmc: RedfishBmc,  # noqa: F811
) -> None:
    result = run(driver, redfish_bmc, PowerOperation.OFF)

    assert result.success
    assert result.message == "ResetType ForceOff accepted"
    assert redfish_bmc.domain.isActive() == 0
    assert run(driver, redfish_bmc, PowerOperation.STATUS).state is PowerState.OFF

    # The emulator answers ForceOff on an off system with 204, not 409.
    again = run(driver, redfish_bmc, PowerOperation.OFF)

    assert again.success
    assert redfish_bmc.domain.isActive() == 0
    assert run(driver, redfish_bmc, PowerOperation.STATUS).state is PowerState.OFF


def test_on_starts_the_domain(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    redfish_bmc.domain.destroy()
    assert run(driver, redfish_bmc, PowerOperation.STATUS).state is PowerState.OFF

    result = run(driver, redfish_bmc, PowerOperation.ON)

    assert result.success
    assert redfish_bmc.domain.isActive() == 1
    assert run(driver, redfish_bmc, PowerOperation.STATUS).state is PowerState.ON


def test_reset_restarts_the_domain(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    result = run(driver, redfish_bmc, PowerOperation.RESET)

    assert result.success
    assert result.message == "ResetType ForceRestart accepted"
    assert redfish_bmc.domain.isActive() == 1  # destroyed and started again


def test_soft_shuts_the_domain_down(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    result = run(driver, redfish_bmc, PowerOperation.SOFT)

    assert result.success
    assert result.message == "ResetType GracefulShutdown accepted"
    assert redfish_bmc.domain.isActive() == 0


def test_cycle_is_refused_when_the_system_does_not_offer_power_cycle(
    driver: RedfishDriver,
    redfish_bmc: RedfishBmc,  # noqa: F811
) -> None:
    with pytest.raises(PowerCommandError, match="does not allow ResetType PowerCycle") as info:
        run(driver, redfish_bmc, PowerOperation.CYCLE)

    assert info.value.host_id == "rf-host-1"
    assert redfish_bmc.domain.isActive() == 1


def test_system_may_be_given_as_a_path(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    result = run(
        driver, redfish_bmc, PowerOperation.STATUS, options={"system": redfish_bmc.system_path}
    )

    assert result.state is PowerState.ON


def test_several_systems_without_the_option_is_an_error_naming_them(
    driver: RedfishDriver,
    redfish_bmc: RedfishBmc,  # noqa: F811
) -> None:
    # test:///default also has its own domain "test": two systems.
    with pytest.raises(PowerCommandError) as info:
        run(driver, redfish_bmc, PowerOperation.STATUS, options={})

    message = str(info.value)
    assert redfish_bmc.system_path in message
    assert "'system' option" in message
    assert "rf-host-1" in message


def test_unknown_system_is_a_command_error(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    with pytest.raises(PowerCommandError, match="HTTP 404"):
        run(driver, redfish_bmc, PowerOperation.STATUS, options={"system": "no-such-system"})


def test_bad_password_is_an_auth_error(driver: RedfishDriver, redfish_bmc: RedfishBmc) -> None:  # noqa: F811
    with pytest.raises(ProbeAuthError, match="HTTP 401") as info:
        run(driver, redfish_bmc, PowerOperation.OFF, password="wrong-password")

    assert info.value.host_id == "rf-host-1"
    assert redfish_bmc.domain.isActive() == 1


def test_default_verification_rejects_the_self_signed_certificate(
    redfish_bmc: RedfishBmc,  # noqa: F811
) -> None:
    driver = RedfishDriver.from_settings(Settings())

    assert driver.verify is True
    started = time.monotonic()
    with pytest.raises(ProbeConnectionError) as info:
        driver.execute(redfish_bmc.config(), PowerOperation.STATUS, timeout=TIMEOUT)

    assert "could not be verified" in str(info.value)
    assert "redfish.ignore.ssl" in str(info.value)
    assert time.monotonic() - started < 2.0  # a TLS failure is not retried


def test_ca_bundle_from_settings_verifies_the_certificate(
    redfish_bmc: RedfishBmc,  # noqa: F811
) -> None:
    driver = RedfishDriver.from_settings(Settings(), ca_bundle=redfish_bmc.ca_path)

    result = driver.execute(redfish_bmc.config(), PowerOperation.STATUS, timeout=TIMEOUT)

    assert result.state is PowerState.ON


def test_ignore_ssl_skips_verification_and_says_so(
    redfish_bmc: RedfishBmc,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudha.oobm.redfish"):
        driver = RedfishDriver.from_settings(Settings(redfish_ignore_ssl=True))
        first = driver.execute(redfish_bmc.config(), PowerOperation.STATUS, timeout=TIMEOUT)
        second = driver.execute(redfish_bmc.config(), PowerOperation.STATUS, timeout=TIMEOUT)

    assert driver.verify is False
    assert first.state is second.state is PowerState.ON
    warned = [r for r in caplog.records if "redfish.ignore.ssl" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].levelno == logging.WARNING


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts: TCP connects, nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_nothing_listening_is_a_connection_error_after_retries(
    redfish_bmc: RedfishBmc,  # noqa: F811
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = RedfishDriver(verify=str(redfish_bmc.ca_path), retries=2)
    started = time.monotonic()
    with (
        caplog.at_level(logging.INFO, logger="cloudha.oobm.redfish"),
        pytest.raises(ProbeConnectionError, match="cannot connect") as info,
    ):
        driver.execute(redfish_bmc.config(port=closed_port), PowerOperation.OFF, timeout=5.0)

    elapsed = time.monotonic() - started
    assert not isinstance(info.value, ProbeTimeout)
    assert elapsed < 3.0
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


def test_a_bmc_that_never_answers_times_out_in_time(
    redfish_bmc: RedfishBmc,  # noqa: F811
    silent_port: int,
) -> None:
    driver = RedfishDriver(verify=str(redfish_bmc.ca_path))
    started = time.monotonic()
    with pytest.raises(ProbeTimeout):
        driver.execute(redfish_bmc.config(port=silent_port), PowerOperation.STATUS, timeout=2.0)

    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 2.0 + 2.0


def test_the_password_reaches_no_log_and_no_message(
    driver: RedfishDriver,
    redfish_bmc: RedfishBmc,  # noqa: F811
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for operation in (PowerOperation.STATUS, PowerOperation.OFF, PowerOperation.ON):
        texts.append(repr(run(driver, redfish_bmc, operation)))
    attempts: list[tuple[RedfishDriver, dict[str, object]]] = [
        (driver, {"password": redfish_bmc.password + "-wrong"}),
        (driver, {"port": closed_port}),
        (driver, {"options": {}}),
        (RedfishDriver(), {}),  # certificate not trusted
    ]
    for failing, overrides in attempts:
        with pytest.raises(ProbeError) as info:
            failing.execute(redfish_bmc.config(**overrides), PowerOperation.OFF, timeout=TIMEOUT)
        texts.extend([str(info.value), repr(info.value)])
        cause = info.value.__cause__
        while cause is not None:
            texts.append(str(cause))
            cause = cause.__cause__

    assert caplog.records  # DEBUG logging did run (sushy, urllib3, the emulator)
    assert redfish_bmc.password not in caplog.text
    for text in texts:
        assert redfish_bmc.password not in text
