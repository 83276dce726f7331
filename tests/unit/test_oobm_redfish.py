"""RedfishDriver with a fake sushy object tree (no network).

The fakes stand in for what ``sushy.Sushy`` returns: a service root with a
system collection and systems that take ``reset_system`` and ``refresh``.
Failures are the exceptions sushy and requests really raise, built by hand.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
)
from cloudha.oobm.power import (
    OobmConfig,
    PowerCommandError,
    PowerDriver,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.oobm.redfish import RedfishDriver
from cloudha.settings import Settings

PASSWORD = "uNiT-pw-93xz"
SYSTEM_ID = "node-1"
SYSTEM_PATH = f"/redfish/v1/Systems/{SYSTEM_ID}"
ALL_RESETS = frozenset(sushy.ResetType)
URL = "https://10.0.0.9/redfish/v1/Systems"


def config(**overrides: Any) -> OobmConfig:
    values: dict[str, Any] = {
        "driver": "redfish",
        "address": "10.0.0.9",
        "username": "admin",
        "password": PASSWORD,
        "host_id": "h-1",
        "options": {"system": SYSTEM_ID},
    }
    values.update(overrides)
    return OobmConfig(**values)


# -- fakes ---------------------------------------------------------------------


class FakeResponse:
    """Just what sushy's HTTPError reads from a response."""

    def __init__(self, status_code: int, message: str = "refused") -> None:
        self.status_code = status_code
        self.message = message

    def json(self) -> dict[str, Any]:
        return {"error": {"code": "Base.1.0.GeneralError", "message": self.message}}


def http_error(status: int, message: str = "refused") -> Exception:
    """The exception sushy raises for an HTTP answer with ``status``."""
    response = FakeResponse(status, message)
    try:
        sushy_exc.raise_for_response("POST", URL, response)
    except sushy_exc.HTTPError as exc:
        raised: Exception = exc
        return raised
    raise AssertionError(f"sushy raised nothing for HTTP {status}")


def transport_error(inner: BaseException) -> Exception:
    """What sushy's connector raises when requests fails with ``inner``."""
    wrapped: Exception = sushy_exc.ConnectionError(url=URL, error=inner)
    wrapped.__context__ = inner
    return wrapped


def refused() -> Exception:
    return transport_error(
        requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    )


class FakeSystem:
    """A ComputerSystem: power state, allowed reset types, scripted reset failures."""

    def __init__(self, path: str, power: str = "On", allowed: frozenset[Any] = ALL_RESETS) -> None:
        self.path = path
        self.power = power
        self.allowed = allowed
        self.resets: list[Any] = []
        self.reset_errors: list[Exception] = []
        self.refreshes = 0

    @property
    def json(self) -> dict[str, Any]:
        return {"Id": self.path.rsplit("/", 1)[-1], "PowerState": self.power}

    def get_allowed_reset_system_values(self) -> set[Any]:
        return set(self.allowed)

    def reset_system(self, value: Any) -> None:
        self.resets.append(value)
        if self.reset_errors:
            raise self.reset_errors.pop(0)

    def refresh(self) -> None:
        self.refreshes += 1


class FakeCollection:
    def __init__(self, members: list[str]) -> None:
        self.members_identities = tuple(members)


class FakeRoot:
    def __init__(self, service: FakeService) -> None:
        self.service = service

    def get_system_collection(self) -> FakeCollection:
        return FakeCollection(list(self.service.systems))

    def get_system(self, path: str) -> FakeSystem:
        self.service.asked.append(path)
        try:
            return self.service.systems[path]
        except KeyError:
            response = FakeResponse(404)
            raise sushy_exc.ResourceNotFoundError("GET", path, response) from None


class FakeService:
    """A sushy factory: records each call, raises scripted errors, then serves its systems."""

    def __init__(self, *systems: FakeSystem) -> None:
        self.systems = {s.path: s for s in systems}
        self.calls: list[tuple[str, Any, Any]] = []
        self.errors: list[BaseException] = []
        self.asked: list[str] = []
        self.block: threading.Event | None = None

    def __call__(self, base_url: str, *, auth: Any, connector: Any) -> FakeRoot:
        self.calls.append((base_url, auth, connector))
        if self.block is not None:
            self.block.wait(30)
        if self.errors:
            raise self.errors.pop(0)
        return FakeRoot(self)


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem(SYSTEM_PATH)


@pytest.fixture
def service(system: FakeSystem) -> FakeService:
    return FakeService(system)


@pytest.fixture
def driver(service: FakeService) -> RedfishDriver:
    made = RedfishDriver(sushy_factory=service)
    made.retry_wait = 0.01
    return made


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Connectors closed during the test."""
    closed: list[object] = []
    original = sushy_connector.Connector.close

    def close(self: Any) -> None:
        closed.append(self)
        original(self)

    monkeypatch.setattr(sushy_connector.Connector, "close", close)
    return closed


def execute(driver: RedfishDriver, operation: PowerOperation, **overrides: Any) -> PowerResult:
    return driver.execute(config(**overrides), operation, timeout=5.0)


# -- the driver as a PowerDriver -----------------------------------------------


def test_is_a_power_driver_named_redfish() -> None:
    driver = RedfishDriver()

    assert isinstance(driver, PowerDriver)
    assert driver.name == "redfish"
    assert driver.verify is True
    assert driver.use_https is True
    assert driver.retries == 2


# -- operations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "reset_type"),
    [
        (PowerOperation.ON, "On"),
        (PowerOperation.OFF, "ForceOff"),
        (PowerOperation.CYCLE, "PowerCycle"),
        (PowerOperation.RESET, "ForceRestart"),
        (PowerOperation.SOFT, "GracefulShutdown"),
    ],
)
def test_operations_map_to_reset_types(
    driver: RedfishDriver, system: FakeSystem, operation: PowerOperation, reset_type: str
) -> None:
    result = execute(driver, operation)

    assert system.resets == [sushy.ResetType(reset_type)]
    assert result == PowerResult(operation, True, None, f"ResetType {reset_type} accepted")


def test_off_is_a_forced_power_off_never_a_graceful_shutdown(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    execute(driver, PowerOperation.OFF)

    assert system.resets == [sushy.ResetType.FORCE_OFF]
    assert sushy.ResetType.GRACEFUL_SHUTDOWN not in system.resets


def test_status_sends_no_reset(driver: RedfishDriver, system: FakeSystem) -> None:
    execute(driver, PowerOperation.STATUS)

    assert system.resets == []


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("On", PowerState.ON),
        ("PoweringOn", PowerState.ON),
        ("Off", PowerState.OFF),
        ("PoweringOff", PowerState.OFF),
        ("Paused", PowerState.UNKNOWN),
        ("Exploded", PowerState.UNKNOWN),
        ("", PowerState.UNKNOWN),
    ],
)
def test_status_maps_the_power_state(
    driver: RedfishDriver, system: FakeSystem, raw: str, state: PowerState
) -> None:
    system.power = raw

    result = execute(driver, PowerOperation.STATUS)

    shown = raw or "absent"
    assert result == PowerResult(PowerOperation.STATUS, True, state, f"PowerState {shown}")


def test_a_reset_type_the_system_does_not_offer_is_a_command_error(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    system.allowed = frozenset({sushy.ResetType.ON, sushy.ResetType.FORCE_OFF})

    with pytest.raises(PowerCommandError) as info:
        execute(driver, PowerOperation.CYCLE)

    assert "does not allow ResetType PowerCycle" in str(info.value)
    assert "(it allows: ForceOff, On)" in str(info.value)
    assert info.value.host_id == "h-1"
    assert system.resets == []


# -- 409 Conflict ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "power", "state", "message"),
    [
        (PowerOperation.OFF, "Off", PowerState.OFF, "already off"),
        (PowerOperation.SOFT, "Off", PowerState.OFF, "already off"),
        (PowerOperation.ON, "On", PowerState.ON, "already on"),
    ],
)
def test_409_on_a_system_already_there_is_success(
    driver: RedfishDriver,
    system: FakeSystem,
    operation: PowerOperation,
    power: str,
    state: PowerState,
    message: str,
) -> None:
    system.power = power
    system.reset_errors = [http_error(409, "the system is already in that state")]

    result = execute(driver, operation)

    assert result == PowerResult(operation, True, state, message)
    assert system.refreshes == 1  # read back, not assumed


@pytest.mark.parametrize("power", ["On", "PoweringOff", "Paused"])
def test_409_on_off_with_a_system_not_off_is_a_command_error(
    driver: RedfishDriver, system: FakeSystem, power: str
) -> None:
    system.power = power
    system.reset_errors = [http_error(409)]

    with pytest.raises(PowerCommandError) as info:
        execute(driver, PowerOperation.OFF)

    assert "409 Conflict" in str(info.value)
    assert f"PowerState {power}" in str(info.value)
    assert system.refreshes == 1


def test_409_on_on_with_a_system_off_is_a_command_error(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    system.power = "Off"
    system.reset_errors = [http_error(409)]

    with pytest.raises(PowerCommandError, match="409 Conflict"):
        execute(driver, PowerOperation.ON)


@pytest.mark.parametrize("operation", [PowerOperation.RESET, PowerOperation.CYCLE])
def test_409_on_other_operations_is_a_command_error_without_read_back(
    driver: RedfishDriver, system: FakeSystem, operation: PowerOperation
) -> None:
    system.power = "Off"
    system.reset_errors = [http_error(409)]

    with pytest.raises(PowerCommandError, match="HTTP 409"):
        execute(driver, operation)

    assert system.refreshes == 0


# -- error classification ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (http_error(401), ProbeAuthError, "refused user 'admin' (HTTP 401)"),
        (http_error(403), ProbeAuthError, "refused user 'admin' (HTTP 403)"),
        (http_error(500, "BMC busy"), PowerCommandError, "HTTP 500"),
        (http_error(400, "bad reset"), PowerCommandError, "HTTP 400"),
        (http_error(404), PowerCommandError, "HTTP 404"),
        (refused(), ProbeConnectionError, "Connection refused"),
        (
            transport_error(
                requests.exceptions.ConnectionError(
                    socket.gaierror(-2, "Name or service not known")
                )
            ),
            ProbeConnectionError,
            "Name or service not known",
        ),
        (
            transport_error(requests.exceptions.ReadTimeout("Read timed out.")),
            ProbeTimeout,
            "in time",
        ),
        (
            transport_error(requests.exceptions.ConnectTimeout("Connect timed out.")),
            ProbeTimeout,
            "in time",
        ),
        (
            transport_error(
                requests.exceptions.SSLError(
                    ssl.SSLCertVerificationError(
                        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
                    )
                )
            ),
            ProbeConnectionError,
            "could not be verified",
        ),
        (
            transport_error(
                requests.exceptions.SSLError(ssl.SSLError(1, "[SSL] wrong version number"))
            ),
            ProbeConnectionError,
            "redfish.use.https=false",
        ),
        (
            requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0),
            PowerCommandError,
            "not a usable Redfish answer",
        ),
        (
            sushy_exc.MissingActionError(action="#ComputerSystem.Reset", resource=SYSTEM_PATH),
            PowerCommandError,
            "#ComputerSystem.Reset",
        ),
        (ConnectionResetError(104, "reset by peer"), ProbeConnectionError, "reset by peer"),
        (RuntimeError("sushy bug"), PowerCommandError, "RuntimeError: sushy bug"),
    ],
)
def test_failures_are_classified(
    service: FakeService, error: Exception, expected: type[ProbeError], words: str
) -> None:
    driver = RedfishDriver(sushy_factory=service, retries=0)
    service.errors = [error]

    with pytest.raises(ProbeError) as info:
        execute(driver, PowerOperation.OFF)

    assert type(info.value) is expected
    assert words in str(info.value)
    assert info.value.host_id == "h-1"
    assert "https://10.0.0.9/redfish/v1" in str(info.value)


def test_a_tls_verification_failure_names_the_ignore_ssl_setting(service: FakeService) -> None:
    driver = RedfishDriver(sushy_factory=service)
    service.errors = [
        transport_error(
            requests.exceptions.SSLError(
                ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")
            )
        )
    ]

    with pytest.raises(ProbeConnectionError) as info:
        execute(driver, PowerOperation.STATUS)

    assert "redfish.ignore.ssl" in str(info.value)
    assert len(service.calls) == 1  # not retried


def test_failures_during_the_reset_are_classified_too(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    system.reset_errors = [http_error(401)]

    with pytest.raises(ProbeAuthError):
        execute(driver, PowerOperation.OFF)


# -- system selection ------------------------------------------------------------


def test_the_only_system_is_used_without_the_option(
    driver: RedfishDriver, service: FakeService, system: FakeSystem
) -> None:
    execute(driver, PowerOperation.OFF, options={})

    assert service.asked == [SYSTEM_PATH]
    assert system.resets == [sushy.ResetType.FORCE_OFF]


def test_several_systems_without_the_option_is_an_error_naming_them() -> None:
    service = FakeService(FakeSystem("/redfish/v1/Systems/a"), FakeSystem("/redfish/v1/Systems/b"))
    driver = RedfishDriver(sushy_factory=service)

    with pytest.raises(PowerCommandError) as info:
        execute(driver, PowerOperation.OFF, options={})

    message = str(info.value)
    assert "'h-1'" in message
    assert "2 systems (/redfish/v1/Systems/a, /redfish/v1/Systems/b)" in message
    assert "'system' option" in message
    assert service.asked == []
    assert len(service.calls) == 1  # not retried


def test_no_system_at_all_is_an_error() -> None:
    driver = RedfishDriver(sushy_factory=FakeService())

    with pytest.raises(PowerCommandError, match=r"lists 0 systems \(none\)"):
        execute(driver, PowerOperation.STATUS, options={"system": "  "})


@pytest.mark.parametrize(
    ("option", "path"),
    [
        (SYSTEM_ID, SYSTEM_PATH),
        (SYSTEM_PATH, SYSTEM_PATH),
        (SYSTEM_PATH + "/", SYSTEM_PATH),
        (" node-1 ", SYSTEM_PATH),
        ("a b/../c", "/redfish/v1/Systems/a%20b%2F..%2Fc"),
    ],
)
def test_the_system_option_is_an_id_or_a_path(
    driver: RedfishDriver, service: FakeService, option: str, path: str
) -> None:
    service.systems[path] = service.systems.get(path) or FakeSystem(path)

    execute(driver, PowerOperation.STATUS, options={"system": option})

    assert service.asked == [path]


def test_an_unknown_system_is_a_command_error(driver: RedfishDriver) -> None:
    with pytest.raises(PowerCommandError, match="HTTP 404"):
        execute(driver, PowerOperation.STATUS, options={"system": "ghost"})


# -- retries -------------------------------------------------------------------------


def test_connection_failures_are_retried(driver: RedfishDriver, service: FakeService) -> None:
    service.errors = [refused(), refused()]

    result = execute(driver, PowerOperation.STATUS)

    assert result.state is PowerState.ON
    assert len(service.calls) == 3


def test_retries_stop_after_the_configured_number(service: FakeService) -> None:
    driver = RedfishDriver(sushy_factory=service, retries=2)
    driver.retry_wait = 0.01
    service.errors = [refused() for _ in range(10)]

    with pytest.raises(ProbeConnectionError, match="Connection refused") as info:
        execute(driver, PowerOperation.STATUS)

    assert len(service.calls) == 3
    assert type(info.value) is ProbeConnectionError
    assert info.value.__cause__ is not None


def test_no_retries_when_retries_is_zero(service: FakeService) -> None:
    driver = RedfishDriver(sushy_factory=service, retries=0)
    service.errors = [refused(), refused()]

    with pytest.raises(ProbeConnectionError):
        execute(driver, PowerOperation.STATUS)

    assert len(service.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        http_error(401),
        http_error(404),
        http_error(500),
        transport_error(requests.exceptions.ReadTimeout("Read timed out.")),
        transport_error(requests.exceptions.SSLError(ssl.SSLError(1, "handshake failure"))),
    ],
)
def test_no_retry_after_auth_http_tls_or_timeout_failures(
    driver: RedfishDriver, service: FakeService, error: Exception
) -> None:
    service.errors = [error]

    with pytest.raises(ProbeError):
        execute(driver, PowerOperation.STATUS)

    assert len(service.calls) == 1


def test_retries_are_bounded_by_the_timeout(service: FakeService) -> None:
    driver = RedfishDriver(sushy_factory=service, retries=1000)
    driver.retry_wait = 0.05
    service.errors = [refused() for _ in range(1000)]
    started = time.monotonic()

    with pytest.raises(ProbeConnectionError):
        driver.execute(config(), PowerOperation.STATUS, timeout=0.5)

    assert time.monotonic() - started < 0.5 + 1.0  # not 1000 * 0.05 s; slack for a loaded machine
    assert 2 <= len(service.calls) <= 11


def test_a_reset_that_may_have_reached_the_bmc_is_not_sent_again(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    system.reset_errors = [refused()]

    with pytest.raises(ProbeConnectionError):
        execute(driver, PowerOperation.RESET)

    assert system.resets == [sushy.ResetType.FORCE_RESTART]


def test_a_reset_that_never_left_is_retried(
    driver: RedfishDriver, service: FakeService, system: FakeSystem
) -> None:
    service.errors = [refused()]

    execute(driver, PowerOperation.RESET)

    assert system.resets == [sushy.ResetType.FORCE_RESTART]
    assert len(service.calls) == 2


def test_an_idempotent_off_is_sent_again_after_a_connection_failure(
    driver: RedfishDriver, system: FakeSystem
) -> None:
    system.reset_errors = [refused()]

    result = execute(driver, PowerOperation.OFF)

    assert result.success
    assert system.resets == [sushy.ResetType.FORCE_OFF] * 2


def test_retries_are_logged(
    driver: RedfishDriver, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.errors = [refused()]

    with caplog.at_level(logging.INFO, logger="cloudha.oobm.redfish"):
        execute(driver, PowerOperation.STATUS)

    assert "retry 1 of 2" in caplog.text


# -- time bound, connections --------------------------------------------------------


def test_the_whole_operation_is_bounded_by_the_timeout(
    driver: RedfishDriver, service: FakeService
) -> None:
    service.block = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(ProbeTimeout, match=r"within 0\.3s") as info:
            driver.execute(config(), PowerOperation.OFF, timeout=0.3)
        elapsed = time.monotonic() - started
    finally:
        service.block.set()
        # The worker left behind finishes now; let it, so it does not close
        # its connector in the middle of another test.
        give_up = time.monotonic() + 5
        while driver.lingering and time.monotonic() < give_up:
            time.sleep(0.01)
        assert driver.lingering == 0

    assert 0.3 <= elapsed < 0.3 + 1.0
    assert info.value.host_id == "h-1"


def test_each_attempt_gets_a_fresh_connector_closed_after(
    driver: RedfishDriver, service: FakeService, closes: list[object]
) -> None:
    service.errors = [refused()]

    execute(driver, PowerOperation.OFF)

    connectors = [connector for _, _, connector in service.calls]
    assert len(connectors) == 2
    assert all(isinstance(c, sushy_connector.Connector) for c in connectors)
    assert closes == connectors


def test_basic_auth_is_used_not_a_redfish_session(
    driver: RedfishDriver, service: FakeService
) -> None:
    execute(driver, PowerOperation.STATUS)

    (_, auth, _), *_ = service.calls
    assert type(auth) is sushy_auth.BasicAuth


@pytest.mark.parametrize(
    ("address", "port", "use_https", "url"),
    [
        ("10.0.0.9", None, True, "https://10.0.0.9"),
        ("bmc.example", 8443, True, "https://bmc.example:8443"),
        ("10.0.0.9", 8000, False, "http://10.0.0.9:8000"),
        ("fd00::9", 443, True, "https://[fd00::9]:443"),
        ("[fd00::9]", None, True, "https://[fd00::9]"),
    ],
)
def test_urls(
    service: FakeService, address: str, port: int | None, use_https: bool, url: str
) -> None:
    driver = RedfishDriver(sushy_factory=service, use_https=use_https)

    execute(driver, PowerOperation.STATUS, address=address, port=port)

    assert service.calls[0][0] == url
    assert driver.service_url(config(address=address, port=port)) == url + "/redfish/v1"


# -- settings and construction --------------------------------------------------------


def test_from_default_settings_verifies_certificates(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        driver = RedfishDriver.from_settings(Settings())

    assert driver.verify is True
    assert driver.use_https is True
    assert driver.retries == 2
    assert caplog.records == []


def test_from_settings_with_a_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here\n")

    driver = RedfishDriver.from_settings(Settings(), ca_bundle=bundle)

    assert driver.verify == str(bundle)


def test_ignore_ssl_turns_verification_off_with_one_warning(
    caplog: pytest.LogCaptureFixture, service: FakeService
) -> None:
    settings = Settings(redfish_ignore_ssl=True, redfish_use_https=False, redfish_retries=5)

    with caplog.at_level(logging.DEBUG, logger="cloudha.oobm.redfish"):
        driver = RedfishDriver.from_settings(settings, ca_bundle="/does/not/matter")
        execute(RedfishDriver(sushy_factory=service, verify=False), PowerOperation.STATUS)

    assert driver.verify is False
    assert driver.use_https is False
    assert driver.retries == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per driver made, none per operation
    assert all("redfish.ignore.ssl" in r.getMessage() for r in warnings)


def test_settings_keys_drive_from_settings() -> None:
    settings = Settings.from_mapping({"redfish.ignore.ssl": True, "redfish.retries": 0})

    driver = RedfishDriver.from_settings(settings)

    assert driver.verify is False
    assert driver.retries == 0


@pytest.mark.parametrize("retries", [-1, True, 1.5])
def test_bad_retries_are_refused(retries: Any) -> None:
    with pytest.raises(ConfigurationError, match="retries"):
        RedfishDriver(retries=retries)


@pytest.mark.parametrize("verify", ["", "/no/such/ca-bundle.pem"])
def test_a_missing_ca_bundle_is_refused(verify: str) -> None:
    with pytest.raises(ConfigurationError, match="CA bundle"):
        RedfishDriver(verify=verify)


# -- secrets ----------------------------------------------------------------------------


def test_the_password_is_scrubbed_from_messages_and_logs(
    service: FakeService, system: FakeSystem, caplog: pytest.LogCaptureFixture
) -> None:
    driver = RedfishDriver(sushy_factory=service, retries=0)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for error in [
        http_error(500, f"bad password {PASSWORD}"),
        RuntimeError(f"Authorization: Basic {token}"),
        transport_error(requests.exceptions.ConnectionError(f"refused for {PASSWORD}")),
    ]:
        service.errors = [error]
        with pytest.raises(ProbeError) as info:
            execute(driver, PowerOperation.OFF)
        texts.append(str(info.value))
    texts.append(repr(execute(driver, PowerOperation.STATUS)))

    assert all(PASSWORD not in text and token not in text for text in texts)
    assert "***" in texts[0]
    assert "***" in texts[1]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cloudha"))
    assert PASSWORD not in ours
    assert token not in ours
