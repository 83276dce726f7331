"""Both IPMI power drivers against a real (fake) BMC speaking IPMI 2.0 / RMCP+ on loopback.

The BMC is pyghmi's server in a subprocess (:mod:`tests.integration.fakebmc`);
the ``ipmitool`` driver runs the real ``/usr/bin/ipmitool``, the ``ipmi``
driver the real pyghmi client. Every test also checks that the password
never shows in the log (at DEBUG) or in an error message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudha.errors import ProbeAuthError, ProbeConnectionError, ProbeError, ProbeTimeout
from cloudha.oobm.ipmi import PyghmiDriver
from cloudha.oobm.ipmitool import IpmitoolDriver
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.testing import check_power_driver
from tests.integration import fakebmc
from tests.integration.fakebmc import FakeBmcServer, free_udp_port

pytestmark = pytest.mark.integration

fake_bmc = fakebmc.fake_bmc
"""A BMC of each test's own (the fixture of :mod:`tests.integration.fakebmc`)."""

IPMITOOL = "/usr/bin/ipmitool"
WRONG_PASSWORD = "Wrong-pw-9k3m"

_FACTORIES: dict[str, Callable[[], BasePowerDriver]] = {
    "ipmitool": lambda: IpmitoolDriver(path=IPMITOOL),
    "ipmi": PyghmiDriver,
}


@pytest.fixture(scope="module", autouse=True)
def _ipmitool_installed() -> None:
    if not os.access(IPMITOOL, os.X_OK):
        pytest.fail(f"{IPMITOOL} is missing: apt-get install -y --no-install-recommends ipmitool")


@pytest.fixture(params=sorted(_FACTORIES))
def driver(request: pytest.FixtureRequest) -> BasePowerDriver:
    """Each driver in turn (a new instance per test)."""
    name: str = request.param
    return _FACTORIES[name]()


@pytest.fixture(autouse=True)
def _no_password_in_logs(
    caplog: pytest.LogCaptureFixture, fake_bmc: FakeBmcServer
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for secret in (fake_bmc.password, WRONG_PASSWORD):
        assert secret not in caplog.text


def _config(driver: BasePowerDriver, bmc: FakeBmcServer, **overrides: object) -> OobmConfig:
    return bmc.config(driver=driver.name, **overrides)


def _status(driver: BasePowerDriver, config: OobmConfig) -> PowerResult:
    return driver.execute(config, PowerOperation.STATUS, timeout=5)


def _read_back(
    driver: BasePowerDriver, config: OobmConfig, want: PowerState, within: float = 5.0
) -> PowerState | None:
    """Poll STATUS until it reads ``want`` (or ``within`` passes); the last state read."""
    deadline = time.monotonic() + within
    state = None
    while time.monotonic() < deadline:
        state = _status(driver, config).state
        if state is want:
            break
        time.sleep(0.05)
    return state


def _check_secret_free(exc: BaseException, bmc: FakeBmcServer) -> None:
    for secret in (bmc.password, WRONG_PASSWORD):
        assert secret not in str(exc)
        assert secret not in repr(exc)


def test_status_reads_on(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    result = _status(driver, _config(driver, fake_bmc))
    assert result.operation is PowerOperation.STATUS
    assert result.success
    assert result.state is PowerState.ON
    assert fake_bmc.history() == []


def test_status_reads_off(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    fake_bmc.set_power_state("off")
    result = _status(driver, _config(driver, fake_bmc))
    assert (result.success, result.state) == (True, PowerState.OFF)


def test_off_powers_off(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc)
    result = driver.execute(config, PowerOperation.OFF, timeout=5)
    assert result.success
    assert result.state is None  # the caller reads the state back
    assert _read_back(driver, config, PowerState.OFF) is PowerState.OFF
    assert fake_bmc.power_state() == "off"
    assert fake_bmc.history() == ["off"]


def test_on_powers_on(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    fake_bmc.set_power_state("off")
    config = _config(driver, fake_bmc)
    result = driver.execute(config, PowerOperation.ON, timeout=5)
    assert (result.success, result.state) == (True, None)
    assert _read_back(driver, config, PowerState.ON) is PowerState.ON
    assert fake_bmc.history() == ["on"]


def test_cycle_ends_on(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc)
    result = driver.execute(config, PowerOperation.CYCLE, timeout=5)
    assert (result.success, result.state) == (True, None)
    assert fake_bmc.history() == ["cycle"]
    assert _read_back(driver, config, PowerState.ON) is PowerState.ON


def test_reset_is_accepted(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc)
    result = driver.execute(config, PowerOperation.RESET, timeout=5)
    assert (result.success, result.state) == (True, None)
    assert fake_bmc.history() == ["reset"]
    assert _status(driver, config).state is PowerState.ON


def test_soft_is_accepted(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc)
    result = driver.execute(config, PowerOperation.SOFT, timeout=5)
    assert (result.success, result.state) == (True, None)
    assert fake_bmc.history() == ["soft"]
    assert _read_back(driver, config, PowerState.OFF) is PowerState.OFF


def test_wrong_password_is_an_auth_error_at_once(
    driver: BasePowerDriver, fake_bmc: FakeBmcServer
) -> None:
    config = _config(driver, fake_bmc, password=WRONG_PASSWORD)
    started = time.monotonic()
    with pytest.raises(ProbeAuthError) as caught:
        driver.execute(config, PowerOperation.STATUS, timeout=10)
    assert time.monotonic() - started < 5
    assert caught.value.host_id == "bmc-host"
    _check_secret_free(caught.value, fake_bmc)


def test_wrong_password_then_right_password(
    driver: BasePowerDriver, fake_bmc: FakeBmcServer
) -> None:
    with pytest.raises(ProbeAuthError):
        _status(driver, _config(driver, fake_bmc, password=WRONG_PASSWORD))
    assert _status(driver, _config(driver, fake_bmc)).state is PowerState.ON
    with pytest.raises(ProbeAuthError):
        driver.execute(
            _config(driver, fake_bmc, password=WRONG_PASSWORD), PowerOperation.OFF, timeout=5
        )
    assert fake_bmc.history() == []


def test_wrong_user_is_an_auth_error(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc, username="nobody")
    started = time.monotonic()
    with pytest.raises(ProbeAuthError) as caught:
        driver.execute(config, PowerOperation.STATUS, timeout=10)
    assert time.monotonic() - started < 5
    _check_secret_free(caught.value, fake_bmc)


def test_paused_bmc_times_out_and_recovers(
    driver: BasePowerDriver, fake_bmc: FakeBmcServer
) -> None:
    config = _config(driver, fake_bmc)
    fake_bmc.pause()
    started = time.monotonic()
    with pytest.raises(ProbeTimeout) as caught:
        driver.execute(config, PowerOperation.STATUS, timeout=2)
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4
    assert caught.value.host_id == "bmc-host"
    _check_secret_free(caught.value, fake_bmc)
    fake_bmc.resume()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert _status(driver, config).state is PowerState.ON
            break
        except ProbeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_nothing_listening(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc, port=free_udp_port())
    started = time.monotonic()
    with pytest.raises((ProbeTimeout, ProbeConnectionError)) as caught:
        driver.execute(config, PowerOperation.OFF, timeout=2)
    assert time.monotonic() - started < 4
    _check_secret_free(caught.value, fake_bmc)


def test_bmc_restart_does_not_poison_later_calls(
    driver: BasePowerDriver, fake_bmc: FakeBmcServer
) -> None:
    config = _config(driver, fake_bmc)
    assert _status(driver, config).state is PowerState.ON
    fake_bmc.restart(power="off")
    started = time.monotonic()
    assert _status(driver, config).state is PowerState.OFF
    assert time.monotonic() - started < 2


def test_concurrent_calls_on_one_bmc(driver: BasePowerDriver, fake_bmc: FakeBmcServer) -> None:
    config = _config(driver, fake_bmc)
    results: list[PowerResult | BaseException] = []
    lock = threading.Lock()

    def ask() -> None:
        try:
            outcome: PowerResult | BaseException = _status(driver, config)
        except ProbeError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 6
    assert all(isinstance(r, PowerResult) and r.state is PowerState.ON for r in results), results


def _ipmitool_children() -> list[int]:
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if ppid == me and cmdline.split(b"\0")[0] == IPMITOOL.encode():
            found.append(int(entry.name))
    return found


def test_ipmitool_password_is_not_on_the_command_line(fake_bmc: FakeBmcServer) -> None:
    driver = IpmitoolDriver(path=IPMITOOL)
    config = _config(driver, fake_bmc)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            driver.execute(config, PowerOperation.STATUS, timeout=3)
        except BaseException as exc:
            outcome.append(exc)

    fake_bmc.pause()
    worker = threading.Thread(target=run)
    worker.start()
    seen: dict[int, tuple[bytes, bytes]] = {}
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and not seen:
        for pid in _ipmitool_children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            seen[pid] = (cmdline, environ)
        time.sleep(0.01)
    worker.join(10)
    assert seen, "no ipmitool process was seen while the BMC was silent"
    for cmdline, environ in seen.values():
        argv = cmdline.split(b"\0")
        assert fake_bmc.password.encode() not in cmdline
        assert b"-E" in argv
        assert b"-P" not in argv
        # The password travels in the environment of that one process only.
        assert f"IPMI_PASSWORD={fake_bmc.password}".encode() in environ.split(b"\0")
    assert "IPMI_PASSWORD" not in os.environ
    assert len(outcome) == 1
    assert isinstance(outcome[0], ProbeTimeout)


def test_ipmitool_missing_program(fake_bmc: FakeBmcServer, tmp_path: Path) -> None:
    driver = IpmitoolDriver(path=str(tmp_path / "no-ipmitool"))
    with pytest.raises(ProbeConnectionError, match="no-ipmitool"):
        driver.execute(_config(driver, fake_bmc), PowerOperation.STATUS, timeout=2)


def test_the_driver_keeps_the_power_driver_contract(
    driver: BasePowerDriver, fake_bmc: FakeBmcServer
) -> None:
    """cloudha.testing's contract checker, as a plugin author would run it, on a real BMC."""
    check_power_driver(
        driver,
        _config(driver, fake_bmc),
        unreachable=_config(driver, fake_bmc, port=free_udp_port()),
        timeout=3.0,
    )
