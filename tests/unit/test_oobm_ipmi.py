"""The IPMI power drivers without a BMC.

ipmitool: its command line, environment, output parsing and error classes.
pyghmi: its error classes and the time limit its worker thread enforces.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import pytest
from pyghmi.exceptions import IpmiException

from cloudha.errors import (
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
)
from cloudha.oobm.ipmi import IpmiCommand, PyghmiDriver, classify_ipmi_error, pyghmi_command
from cloudha.oobm.ipmitool import (
    IpmitoolDriver,
    classify_failure,
    parse_power_status,
)
from cloudha.oobm.power import (
    OobmConfig,
    PowerCommandError,
    PowerDriver,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.redact import redact
from cloudha.settings import Settings

PASSWORD = "Top-Secret-pw-42"


def _config(**overrides: Any) -> OobmConfig:
    fields: dict[str, Any] = {
        "driver": "ipmitool",
        "address": "10.0.0.5",
        "username": "admin",
        "password": PASSWORD,
        "host_id": "h1",
    }
    fields.update(overrides)
    return OobmConfig(**fields)


@pytest.fixture(autouse=True)
def _no_password_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert PASSWORD not in caplog.text


# ---------------------------------------------------------------------------
# ipmitool


@attrs.define
class FakeRun:
    """A stand-in for subprocess.run that records its calls."""

    returncode: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    raises: BaseException | None = None
    calls: list[tuple[list[str], dict[str, Any]]] = attrs.Factory(list)

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((list(argv), kwargs))
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(list(argv), self.returncode, self.stdout, self.stderr)


def _ipmitool(run: FakeRun, **kwargs: Any) -> IpmitoolDriver:
    return IpmitoolDriver(run=run, **kwargs)


def test_ipmitool_is_a_power_driver() -> None:
    driver = IpmitoolDriver()
    assert isinstance(driver, PowerDriver)
    assert driver.name == "ipmitool"
    assert (driver.path, driver.interface, driver.retries) == ("/usr/bin/ipmitool", "lanplus", 1)


@pytest.mark.parametrize(
    ("operation", "word"),
    [
        (PowerOperation.ON, "on"),
        (PowerOperation.OFF, "off"),
        (PowerOperation.CYCLE, "cycle"),
        (PowerOperation.RESET, "reset"),
        (PowerOperation.SOFT, "soft"),
        (PowerOperation.STATUS, "status"),
    ],
)
def test_ipmitool_argv(operation: PowerOperation, word: str) -> None:
    argv = IpmitoolDriver().argv(_config(), operation, 60.0)
    assert argv == [
        "/usr/bin/ipmitool",
        "-I",
        "lanplus",
        "-R",
        "1",
        "-N",
        "30",
        "-v",
        "-H",
        "10.0.0.5",
        "-p",
        "623",
        "-U",
        "admin",
        "-E",
        "chassis",
        "power",
        word,
    ]
    assert not any(PASSWORD in arg for arg in argv)
    assert "-P" not in argv


def test_ipmitool_argv_uses_settings_and_port() -> None:
    settings = Settings(
        outofbandmanagement_ipmitool_path="/opt/bin/ipmitool",
        outofbandmanagement_ipmitool_interface="lan",
        outofbandmanagement_ipmitool_retries=3,
    )
    driver = IpmitoolDriver.from_settings(settings)
    argv = driver.argv(_config(port=6230), PowerOperation.STATUS, 24.0)
    assert argv[:7] == ["/opt/bin/ipmitool", "-I", "lan", "-R", "3", "-N", "2"]
    assert argv[argv.index("-p") + 1] == "6230"


@pytest.mark.parametrize(
    ("retries", "timeout", "per_try"),
    [
        (1, 60.0, 30),  # 1 retry: a silent BMC costs N * 2
        (1, 2.0, 1),
        (1, 0.5, 1),  # never below 1
        (2, 60.0, 10),  # N * 6
        (3, 60.0, 5),  # N * 12
        (0, 60.0, 3),  # ipmitool's default of 4 retries: N * 20
    ],
)
def test_ipmitool_per_try_timeout(retries: int, timeout: float, per_try: int) -> None:
    assert IpmitoolDriver(retries=retries).per_try_timeout(timeout) == per_try


def test_ipmitool_passes_the_password_in_the_environment_only() -> None:
    run = FakeRun(stdout=b"Chassis Power is on\n")
    before = dict(os.environ)
    result = _ipmitool(run).execute(_config(), PowerOperation.STATUS, timeout=7.5)
    assert result == PowerResult(PowerOperation.STATUS, True, PowerState.ON, "Chassis Power is on")
    [(argv, kwargs)] = run.calls
    assert not any(PASSWORD in arg for arg in argv)
    assert "-E" in argv
    assert kwargs["env"]["IPMI_PASSWORD"] == PASSWORD
    assert kwargs["env"]["LC_ALL"] == "C"
    assert set(kwargs["env"]) == {"PATH", "LC_ALL", "IPMI_PASSWORD"}
    assert kwargs["timeout"] == 7.5
    assert kwargs["capture_output"] is True
    assert kwargs["stdin"] == subprocess.DEVNULL
    assert kwargs.get("shell", False) is False
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    ("stdout", "state"),
    [
        ("Chassis Power is on\n", PowerState.ON),
        ("Chassis Power is off\n", PowerState.OFF),
        ("  Chassis Power is off  \r\n", PowerState.OFF),
        ("Discovered IPMB address 0x0\nChassis Power is on\n", PowerState.ON),
        ("Chassis Power is ON\n", PowerState.UNKNOWN),
        ("chassis power is on\n", PowerState.UNKNOWN),
        ("Chassis Power is on\nChassis Power is off\n", PowerState.UNKNOWN),
        ("Chassis Power is unknown\n", PowerState.UNKNOWN),
        ("", PowerState.UNKNOWN),
        ("Chassis Power is onward", PowerState.UNKNOWN),
    ],
)
def test_parse_power_status(stdout: str, state: PowerState) -> None:
    assert parse_power_status(stdout) is state


def test_ipmitool_status_off() -> None:
    run = FakeRun(stdout=b"Chassis Power is off\n")
    result = _ipmitool(run).execute(_config(), PowerOperation.STATUS, timeout=5)
    assert (result.success, result.state) == (True, PowerState.OFF)


def test_ipmitool_status_garbage_is_unknown_and_not_a_success() -> None:
    run = FakeRun(stdout=b"Chassis Power is sideways\n")
    result = _ipmitool(run).execute(_config(), PowerOperation.STATUS, timeout=5)
    assert result == PowerResult(
        PowerOperation.STATUS, False, PowerState.UNKNOWN, "Chassis Power is sideways"
    )


@pytest.mark.parametrize(
    ("operation", "stdout"),
    [
        (PowerOperation.OFF, b"Chassis Power Control: Down/Off\n"),
        (PowerOperation.ON, b"Chassis Power Control: Up/On\n"),
        (PowerOperation.CYCLE, b"Chassis Power Control: Cycle\n"),
        (PowerOperation.RESET, b"Chassis Power Control: Reset\n"),
        (PowerOperation.SOFT, b"Chassis Power Control: Soft\n"),
    ],
)
def test_ipmitool_controls_report_no_state(operation: PowerOperation, stdout: bytes) -> None:
    result = _ipmitool(FakeRun(stdout=stdout)).execute(_config(), operation, timeout=5)
    assert result == PowerResult(operation, True, None, stdout.decode().strip())


_VERBOSE = "Loading IANA PEN Registry...\nUsing best available cipher suite 3\n\n"
_NO_SESSION = "Error: Unable to establish IPMI v2 / RMCP+ session\n"


@pytest.mark.parametrize(
    ("output", "error"),
    [
        # What ipmitool 1.8.19 -v prints against the fake BMC:
        (_VERBOSE + "> RAKP 2 HMAC is invalid\n" + _NO_SESSION, ProbeAuthError),
        (
            _VERBOSE + "RAKP 2 message indicates an error : unauthorized name\n" + _NO_SESSION,
            ProbeAuthError,
        ),
        (
            "Loading IANA PEN Registry...\nGet Auth Capabilities error\n"
            "Error issuing Get Channel Authentication Capabilities request\n" + _NO_SESSION,
            ProbeTimeout,
        ),
        ("> Error: no response from RAKP 1 message\n" * 4 + _NO_SESSION, ProbeTimeout),
        # Other texts:
        ("> RAKP 4 message has invalid integrity check value\n" + _NO_SESSION, ProbeAuthError),
        ("RAKP 2 message indicates an error : unauthorized role requested\n", ProbeAuthError),
        ("Get Session Challenge command failed: Invalid user name\n", ProbeAuthError),
        (
            "Activate Session command failed\nError: Unable to establish LAN session\n",
            ProbeAuthError,
        ),
        (
            "Set Chassis Power Control to Down/Off failed: Insufficient privilege level\n",
            ProbeAuthError,
        ),
        (_NO_SESSION, ProbeTimeout),
        ("Error: Unable to establish LAN session\n", ProbeTimeout),
        ("No response from remote controller\n", ProbeTimeout),
        ("Address lookup for bmc.invalid failed\n" + _NO_SESSION, ProbeConnectionError),
        ("Could not open socket!\n", ProbeConnectionError),
        (
            "RAKP 2 message indicates an error : insufficient resources for session\n"
            + _NO_SESSION,
            ProbeConnectionError,
        ),
        (
            "Set Chassis Power Control to Cycle failed: Command not supported in present state\n",
            PowerCommandError,
        ),
        ("Invalid chassis power command: sideways\n", PowerCommandError),
        ("", PowerCommandError),
    ],
)
def test_classify_failure(output: str, error: type[ProbeError]) -> None:
    assert classify_failure(output) is error


def test_ipmitool_failure_raises_the_classified_error_without_the_password() -> None:
    run = FakeRun(
        returncode=1,
        stderr=(_VERBOSE + f"> RAKP 2 HMAC is invalid ({PASSWORD})\n" + _NO_SESSION).encode(),
    )
    with pytest.raises(ProbeAuthError) as caught:
        _ipmitool(run).execute(_config(), PowerOperation.OFF, timeout=5)
    message = str(caught.value)
    assert PASSWORD not in message
    assert "***" in message
    assert "RAKP 2 HMAC is invalid" in message
    assert "exit status 1" in message
    assert "Loading IANA" not in message  # -v chatter is left out
    assert caught.value.host_id == "h1"


def test_ipmitool_refused_command_is_a_power_command_error() -> None:
    run = FakeRun(returncode=1, stderr=b"Unable to set Chassis Power Control to Cycle\n")
    with pytest.raises(PowerCommandError, match="Chassis Power Control"):
        _ipmitool(run).execute(_config(), PowerOperation.CYCLE, timeout=5)


def test_ipmitool_timeout_is_a_probe_timeout() -> None:
    expired = subprocess.TimeoutExpired(
        ["ipmitool"], 2.0, output=b"", stderr=f"Loading IANA PEN Registry...\n{PASSWORD}".encode()
    )
    run = FakeRun(raises=expired)
    with pytest.raises(ProbeTimeout) as caught:
        _ipmitool(run).execute(_config(), PowerOperation.STATUS, timeout=2)
    assert "within 2 s" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.host_id == "h1"


def test_ipmitool_missing_program_is_a_connection_error() -> None:
    run = FakeRun(raises=FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(ProbeConnectionError, match="'/nowhere/ipmitool' was not found"):
        _ipmitool(run, path="/nowhere/ipmitool").execute(_config(), PowerOperation.ON, timeout=5)


def test_ipmitool_unrunnable_program_is_a_connection_error() -> None:
    run = FakeRun(raises=PermissionError(13, "Permission denied"))
    with pytest.raises(ProbeConnectionError, match="Permission denied"):
        _ipmitool(run).execute(_config(), PowerOperation.ON, timeout=5)


def test_ipmitool_real_subprocess_timeout_kills_the_program(tmp_path: Any) -> None:
    """With the real subprocess.run, a program that hangs is killed at the timeout."""
    script = tmp_path / "hang"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(ProbeTimeout):
        IpmitoolDriver(path=str(script)).execute(_config(), PowerOperation.STATUS, timeout=0.3)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "kwargs",
    [{"path": ""}, {"interface": ""}, {"retries": -1}, {"retries": True}, {"retries": 1.5}],
)
def test_ipmitool_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ipmitool"):
        IpmitoolDriver(**kwargs)


def test_redact() -> None:
    assert redact(f"a {PASSWORD} b {PASSWORD}", PASSWORD) == "a *** b ***"
    assert redact("text", "") == "text"
    assert redact("pass-word", "pass", "pass-word") == "***"


def test_ipmitool_repr_has_no_password() -> None:
    assert "IpmitoolDriver(path='/usr/bin/ipmitool'" in repr(IpmitoolDriver())


# ---------------------------------------------------------------------------
# pyghmi


@attrs.define
class FakeCommand:
    """An IpmiCommand stand-in."""

    power: str = "on"
    set_power_answer: Mapping[str, Any] | None = None
    raw_answer: Mapping[str, Any] = attrs.Factory(
        lambda: {"netfn": 1, "command": 2, "code": 0, "data": b""}
    )
    fail_with: BaseException | None = None
    logout_fails: bool = False
    calls: list[tuple[Any, ...]] = attrs.Factory(list)

    def get_power(self) -> Mapping[str, Any]:
        self.calls.append(("get_power",))
        if self.fail_with is not None:
            raise self.fail_with
        return {"powerstate": self.power}

    def set_power(self, powerstate: str, wait: bool = False) -> Mapping[str, Any]:
        self.calls.append(("set_power", powerstate, wait))
        if self.fail_with is not None:
            raise self.fail_with
        if self.set_power_answer is not None:
            return self.set_power_answer
        return {"pendingpowerstate": powerstate}

    def raw_command(self, netfn: int, command: int, data: Sequence[int] = ()) -> Mapping[str, Any]:
        self.calls.append(("raw_command", netfn, command, tuple(data)))
        return self.raw_answer

    def logout(self) -> None:
        self.calls.append(("logout",))
        if self.logout_fails:
            raise IpmiException("Session no longer connected")


@attrs.define
class FakeFactory:
    """A CommandFactory stand-in: hands out ``command``, or raises, or blocks."""

    command: FakeCommand = attrs.Factory(FakeCommand)
    raises: BaseException | None = None
    gate: threading.Event | None = None
    entered: threading.Event = attrs.Factory(threading.Event)
    logins: list[tuple[str, int, str]] = attrs.Factory(list)

    def __call__(self, *, address: str, port: int, username: str, password: str) -> IpmiCommand:
        self.logins.append((address, port, username))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.raises is not None:
            raise self.raises
        return self.command


def _pyghmi(factory: FakeFactory) -> PyghmiDriver:
    return PyghmiDriver(command_factory=factory)


def _ipmi_config(**overrides: Any) -> OobmConfig:
    return _config(driver="ipmi", **overrides)


def _wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_pyghmi_is_a_power_driver() -> None:
    driver = PyghmiDriver()
    assert isinstance(driver, PowerDriver)
    assert driver.name == "ipmi"
    assert driver.lingering == 0


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        ("on", PowerResult(PowerOperation.STATUS, True, PowerState.ON, "power is on")),
        ("off", PowerResult(PowerOperation.STATUS, True, PowerState.OFF, "power is off")),
        (
            "sideways",
            PowerResult(PowerOperation.STATUS, False, PowerState.UNKNOWN, "power is 'sideways'"),
        ),
    ],
)
def test_pyghmi_status(power: str, expected: PowerResult) -> None:
    factory = FakeFactory(FakeCommand(power=power))
    assert _pyghmi(factory).execute(_ipmi_config(), PowerOperation.STATUS, timeout=5) == expected
    assert factory.command.calls == [("get_power",), ("logout",)]
    assert factory.logins == [("10.0.0.5", 623, "admin")]


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        (PowerOperation.ON, ("set_power", "on", False)),
        (PowerOperation.OFF, ("set_power", "off", False)),
        (PowerOperation.SOFT, ("set_power", "shutdown", False)),
        (PowerOperation.RESET, ("set_power", "reset", False)),
        (PowerOperation.CYCLE, ("raw_command", 0, 2, (2,))),
    ],
)
def test_pyghmi_controls(operation: PowerOperation, call: tuple[Any, ...]) -> None:
    factory = FakeFactory()
    result = _pyghmi(factory).execute(_ipmi_config(port=6230), operation, timeout=5)
    assert (result.operation, result.success, result.state) == (operation, True, None)
    assert factory.command.calls == [call, ("logout",)]
    assert factory.logins == [("10.0.0.5", 6230, "admin")]


def test_pyghmi_off_when_already_off() -> None:
    factory = FakeFactory(FakeCommand(set_power_answer={"powerstate": "off"}))
    result = _pyghmi(factory).execute(_ipmi_config(), PowerOperation.OFF, timeout=5)
    assert result == PowerResult(PowerOperation.OFF, True, None, "power is already off")


def test_pyghmi_cycle_refused() -> None:
    command = FakeCommand(
        raw_answer={"error": "Command not supported in present state", "code": 0xD5}
    )
    with pytest.raises(PowerCommandError, match="not supported in present state"):
        _pyghmi(FakeFactory(command)).execute(_ipmi_config(), PowerOperation.CYCLE, timeout=5)
    assert command.calls[-1] == ("logout",)


def test_pyghmi_cycle_refused_for_privilege_is_an_auth_error() -> None:
    command = FakeCommand(
        raw_answer={"error": "Insufficient privilege level or firmware firewall", "code": 0xD4}
    )
    with pytest.raises(ProbeAuthError):
        _pyghmi(FakeFactory(command)).execute(_ipmi_config(), PowerOperation.CYCLE, timeout=5)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        # What pyghmi 1.6.19 says against the fake BMC:
        ("Incorrect password provided", ProbeAuthError),
        ("Unauthorized name in RAKP2", ProbeAuthError),
        (None, ProbeTimeout),  # a login that got no answer
        ("Session no longer connected", ProbeTimeout),
        # Other texts:
        ("", ProbeTimeout),
        ("None", ProbeTimeout),
        ("timeout", ProbeTimeout),
        ("Timeout while processing command", ProbeTimeout),
        ("Invalid RAKP4 integrity code (wrong Kg?)", ProbeAuthError),
        ("Unauthorized role or privilege level requested", ProbeAuthError),
        (
            "Insufficient privilege level or firmware firewall while requesting privelege "
            "level 4 for b'admin'",
            ProbeAuthError,
        ),
        ("MD5 required but not enabled/available on target BMC", ProbeAuthError),
        ("Invalid username length", ProbeAuthError),
        ("Unable to transmit to specified address", ProbeConnectionError),
        (
            "Insufficient resources to create new session (wait for existing sessions to timeout)",
            ProbeConnectionError,
        ),
        ("Command not supported in present state", PowerCommandError),
        ("Invalid data field in request", PowerCommandError),
        ("No Cipher suite match with proposed security algorithms", PowerCommandError),
    ],
)
def test_classify_ipmi_error(message: str | None, error: type[ProbeError]) -> None:
    assert classify_ipmi_error(message) is error


@pytest.mark.parametrize(
    ("raised", "error", "text"),
    [
        (IpmiException("Incorrect password provided"), ProbeAuthError, "Incorrect password"),
        (IpmiException("Unauthorized name in RAKP2"), ProbeAuthError, "Unauthorized name"),
        (IpmiException(None), ProbeTimeout, "no answer from the BMC"),
        (IpmiException("Session no longer connected"), ProbeTimeout, "no longer connected"),
        (socket.gaierror(-2, "Name or service not known"), ProbeConnectionError, "gaierror"),
        (ConnectionRefusedError(111, "Connection refused"), ProbeConnectionError, "refused"),
        (
            struct.error("pack expected 32 items for packing (got 20)"),
            PowerCommandError,
            "struct.error",
        ),
        (AssertionError(), PowerCommandError, "AssertionError"),
    ],
)
def test_pyghmi_login_failures(raised: BaseException, error: type[ProbeError], text: str) -> None:
    factory = FakeFactory(raises=raised)
    with pytest.raises(error, match=text) as caught:
        _pyghmi(factory).execute(_ipmi_config(), PowerOperation.STATUS, timeout=5)
    assert caught.value.host_id == "h1"
    assert caught.value.__cause__ is None


def test_pyghmi_errors_never_show_the_password() -> None:
    factory = FakeFactory(raises=IpmiException(f"Incorrect password provided: {PASSWORD}"))
    with pytest.raises(ProbeAuthError) as caught:
        _pyghmi(factory).execute(_ipmi_config(), PowerOperation.STATUS, timeout=5)
    assert PASSWORD not in str(caught.value)
    assert "***" in str(caught.value)


def test_pyghmi_logs_out_after_a_failure_and_ignores_logout_errors() -> None:
    command = FakeCommand(fail_with=IpmiException("Node Busy"), logout_fails=True)
    with pytest.raises(PowerCommandError, match="Node Busy"):
        _pyghmi(FakeFactory(command)).execute(_ipmi_config(), PowerOperation.OFF, timeout=5)
    assert command.calls == [("set_power", "off", False), ("logout",)]


def test_pyghmi_logout_error_after_success_is_ignored() -> None:
    command = FakeCommand(logout_fails=True)
    result = _pyghmi(FakeFactory(command)).execute(_ipmi_config(), PowerOperation.STATUS, timeout=5)
    assert result.state is PowerState.ON


def test_pyghmi_enforces_the_timeout_with_a_worker_thread() -> None:
    gate = threading.Event()
    factory = FakeFactory(gate=gate)
    driver = _pyghmi(factory)
    started = time.monotonic()
    try:
        with pytest.raises(ProbeTimeout, match=r"no answer within 0\.2 s") as caught:
            driver.execute(_ipmi_config(), PowerOperation.OFF, timeout=0.2)
        assert time.monotonic() - started < 1.5
        assert caught.value.host_id == "h1"
        assert driver.lingering == 1
    finally:
        gate.set()
    assert _wait_until(lambda: driver.lingering == 0)


def test_pyghmi_serialises_one_bmc_and_skips_abandoned_work() -> None:
    gate = threading.Event()
    factory = FakeFactory(gate=gate)
    driver = _pyghmi(factory)
    first_done = threading.Event()

    def first() -> None:
        with pytest.raises(ProbeTimeout):
            driver.execute(_ipmi_config(), PowerOperation.OFF, timeout=0.5)
        first_done.set()

    worker = threading.Thread(target=first)
    worker.start()
    try:
        assert factory.entered.wait(5)
        # The first call holds this BMC: the second one times out waiting for its turn.
        with pytest.raises(ProbeTimeout):
            driver.execute(_ipmi_config(), PowerOperation.STATUS, timeout=0.2)
        assert first_done.wait(5)
    finally:
        gate.set()
        worker.join(5)
    assert _wait_until(lambda: driver.lingering == 0)
    # Only the first call ever logged in; the abandoned second one did nothing.
    assert factory.logins == [("10.0.0.5", 623, "admin")]
    assert factory.command.calls == [("set_power", "off", False), ("logout",)]


def test_pyghmi_other_bmcs_are_not_held_up() -> None:
    gate = threading.Event()
    factory = FakeFactory(gate=gate)
    driver = _pyghmi(factory)
    try:
        with pytest.raises(ProbeTimeout):
            driver.execute(_ipmi_config(), PowerOperation.STATUS, timeout=0.1)
        gate.set()
        # Same factory, other address: its own lock.
        result = driver.execute(_ipmi_config(address="10.0.0.6"), PowerOperation.STATUS, timeout=5)
        assert result.state is PowerState.ON
    finally:
        gate.set()
    assert _wait_until(lambda: driver.lingering == 0)


def test_pyghmi_command_hands_bytes_to_pyghmi(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyghmi.ipmi import command as ipmi_command

    made: list[dict[str, Any]] = []

    class Session:
        def __init__(self) -> None:
            self.logged_out = False

        def logout(self) -> None:
            self.logged_out = True

    class Command:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            self.ipmi_session = Session()

        def get_power(self) -> dict[str, str]:
            return {"powerstate": "off"}

        def set_power(self, powerstate: str, wait: bool = False) -> dict[str, Any]:
            return {"pendingpowerstate": powerstate, "wait": wait}

        def raw_command(self, netfn: int, command: int, data: tuple[int, ...]) -> dict[str, Any]:
            return {"netfn": netfn + 1, "command": command, "code": 0, "data": data}

    monkeypatch.setattr(ipmi_command, "Command", Command)
    session = pyghmi_command(address="bmc", port=6230, username="admin", password=PASSWORD)
    assert made == [{"bmc": "bmc", "userid": b"admin", "password": PASSWORD.encode(), "port": 6230}]
    assert session.get_power() == {"powerstate": "off"}
    assert session.set_power("reset") == {"pendingpowerstate": "reset", "wait": False}
    assert session.raw_command(0, 2, [2])["data"] == (2,)
    session.logout()


def test_pyghmi_rejects_bad_timeouts() -> None:
    driver = _pyghmi(FakeFactory())
    with pytest.raises(ValueError, match="timeout"):
        driver.execute(_ipmi_config(), PowerOperation.STATUS, timeout=0)
