"""A Redfish power driver over the ``sushy`` client library.

:class:`RedfishDriver` runs one :class:`~cloudha.oobm.power.PowerOperation`
against a BMC's Redfish service (``https://<address>[:port]/redfish/v1``) by
posting ``ComputerSystem.Reset`` or reading the system's ``PowerState``:

======== =====================================================
ON       ``On``
OFF      ``ForceOff`` (an immediate power-off, never a graceful
         shutdown: fencing must not wait for a guest OS)
CYCLE    ``PowerCycle``
RESET    ``ForceRestart``
SOFT     ``GracefulShutdown``
STATUS   ``PowerState``: On/PoweringOn → On, Off/PoweringOff →
         Off, anything else → Unknown
======== =====================================================

CloudStack maps OFF to ``GracefulShutdown``; a BMC then refuses OFF on a host
that is already off with 409 Conflict and fencing never ends (spec §10 item
10). Here a 409 on ON, OFF or SOFT is followed by a read-back of the power
state: a system already in the wanted state is a success.

sushy (which brings ``requests``) is the ``redfish`` extra (``pip install
'cloudha[redfish]'``): this module imports without it, and building a
:class:`RedfishDriver` then raises :class:`~cloudha.errors.MissingExtraError`.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import tenacity

from cloudha._extras import lazy_module, require
from cloudha.deadline import DeadlineExceeded, DeadlineRunner
from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
)
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerCommandError,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.redact import redact

if TYPE_CHECKING:
    import requests
    import sushy
    from sushy import auth as sushy_auth
    from sushy import connector as sushy_connector
    from sushy import exceptions as sushy_exc

    from cloudha.settings import Settings
else:
    _WHAT = "the Redfish power driver"
    requests = lazy_module("requests", "redfish", _WHAT)
    sushy = lazy_module("sushy", "redfish", _WHAT)
    sushy_auth = lazy_module("sushy.auth", "redfish", _WHAT)
    sushy_connector = lazy_module("sushy.connector", "redfish", _WHAT)
    sushy_exc = lazy_module("sushy.exceptions", "redfish", _WHAT)

__all__ = ["SYSTEMS_PATH", "RedfishDriver", "SushyFactory"]

log = logging.getLogger(__name__)

SYSTEMS_PATH: Final = "/redfish/v1/Systems/"
"""Where a bare system id given as the ``system`` option is looked up."""

_RESET_TYPES: Final[dict[PowerOperation, str]] = {
    PowerOperation.ON: "On",
    PowerOperation.OFF: "ForceOff",
    PowerOperation.CYCLE: "PowerCycle",
    PowerOperation.RESET: "ForceRestart",
    PowerOperation.SOFT: "GracefulShutdown",
}

_POWER_STATES: Final[dict[str, PowerState]] = {
    "On": PowerState.ON,
    "PoweringOn": PowerState.ON,
    "Off": PowerState.OFF,
    "PoweringOff": PowerState.OFF,
}

_CONFLICT_TARGET: Final[dict[PowerOperation, str]] = {
    PowerOperation.ON: "On",
    PowerOperation.OFF: "Off",
    PowerOperation.SOFT: "Off",
}
"""Operations for which a 409 Conflict may mean "already there", and where "there" is."""

_IDEMPOTENT: Final = frozenset(
    {PowerOperation.ON, PowerOperation.OFF, PowerOperation.SOFT, PowerOperation.STATUS}
)
"""Operations that may be sent again when the first request's fate is unknown."""

_GRACE: Final = 0.5
"""Seconds past ``timeout`` the caller waits for the worker's own, more precise, outcome."""

_MIN_REQUEST_TIMEOUT: Final = 0.05


class SushyFactory(Protocol):
    """Builds a sushy service root (``sushy.Sushy`` by default).

    Called once per attempt with the base URL (scheme and authority only),
    the authentication object and the connector the driver made (it carries
    the TLS verification setting and the per-request timeout; the driver
    closes it). Fakes in tests stand in for the whole sushy object tree.
    """

    def __call__(self, base_url: str, *, auth: Any, connector: Any) -> Any:
        """Return a root object with ``get_system_collection()`` and ``get_system(path)``."""


def _sushy_root(base_url: str, *, auth: Any, connector: Any) -> Any:
    return sushy.Sushy(base_url, auth=auth, connector=connector)


class _Retry(Exception):
    """Internal: an attempt failed in a way a new attempt may cure."""

    def __init__(self, error: ProbeError) -> None:
        super().__init__(str(error))
        self.error = error


class _StopAt(tenacity.stop.stop_base):
    """Stop retrying when the next attempt would start after ``deadline`` (monotonic)."""

    def __init__(self, deadline: float, wait: float) -> None:
        self.deadline = deadline
        self.wait = wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + self.wait >= self.deadline


class RedfishDriver(BasePowerDriver):
    """Power operations over Redfish with the ``sushy`` client.

    Contract (besides :class:`~cloudha.oobm.power.PowerDriver`'s):

    * ``execute`` returns or raises within ``timeout`` seconds plus half a
      second, whatever the BMC does: the work runs in a daemon worker
      thread, each HTTP request gets the time left as its timeout, and a
      worker still stuck (slow DNS, a BMC dribbling bytes) is left behind to
      finish on its own.
    * The system is ``config.options["system"]`` (an id, or a path such as
      ``/redfish/v1/Systems/<id>``); without it the service must list
      exactly one system.
    * After a connection failure (refused, reset, name not resolved) the
      whole operation is tried again up to ``retries`` more times while time
      is left, 0.2 s apart; never after an authentication failure, a TLS
      failure, a timeout or an HTTP error. CYCLE and RESET are not sent
      again once their reset request went out, since a BMC may have acted
      on it.
    * HTTP basic authentication, one fresh HTTP session per attempt, closed
      afterwards: no Redfish session and no socket outlives an operation.
    * The password is scrubbed from every message this driver produces.

    Args:
        use_https: talk HTTPS (``redfish.use.https``); plain HTTP otherwise.
        verify: True to check the BMC's certificate against the system CA
            store, a path to a CA bundle file or directory to check it
            against, or False to skip the check (``redfish.ignore.ssl``;
            logged as a warning once, when the driver is made).
        retries: retries after a connection failure (``redfish.retries``).
        sushy_factory: builds the sushy service root (tests pass fakes).

    Raises:
        MissingExtraError: sushy is not installed (``pip install 'cloudha[redfish]'``).
        ConfigurationError: ``retries`` is negative or ``verify`` names a
            CA bundle that does not exist.
    """

    name = "redfish"

    retry_wait: float = 0.2
    """Seconds between attempts (a class attribute so tests can shorten it)."""

    def __init__(
        self,
        *,
        use_https: bool = True,
        verify: bool | str | os.PathLike[str] = True,
        retries: int = 2,
        sushy_factory: SushyFactory | None = None,
    ) -> None:
        require("sushy", "redfish", "the Redfish power driver")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"redfish: retries must be a non-negative integer, got {retries!r}",
                key="redfish.retries",
                value=retries,
            )
        checked: bool | str
        if isinstance(verify, bool):
            checked = verify
        else:
            checked = os.fspath(verify)
            if not checked or not os.path.exists(checked):
                raise ConfigurationError(
                    f"redfish: CA bundle {checked!r} does not exist",
                    key="redfish CA bundle",
                    value=checked,
                )
        self.use_https = bool(use_https)
        self.retries = retries
        self._verify: bool | str = checked
        self._factory: SushyFactory = sushy_factory if sushy_factory is not None else _sushy_root
        self._runner = DeadlineRunner("redfish")
        if checked is False:
            log.warning(
                "redfish: TLS certificates of Redfish BMCs are NOT verified "
                "(redfish.ignore.ssl is true); anyone on the path can pose as a BMC"
            )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, ca_bundle: str | os.PathLike[str] | None = None
    ) -> RedfishDriver:
        """A driver set up from ``redfish.use.https``, ``.ignore.ssl`` and ``.retries``.

        Certificates are verified (against ``ca_bundle`` when given, else
        the system CA store) unless ``redfish.ignore.ssl`` is true.
        """
        verify: bool | str | os.PathLike[str]
        if settings.redfish_ignore_ssl:
            verify = False
        else:
            verify = ca_bundle if ca_bundle is not None else True
        return cls(
            use_https=settings.redfish_use_https,
            verify=verify,
            retries=settings.redfish_retries,
        )

    @property
    def lingering(self) -> int:
        """Workers abandoned on a timeout that have not returned yet."""
        return self._runner.lingering

    @property
    def verify(self) -> bool | str:
        """True, False or the CA bundle path: what certificate checks are made."""
        return self._verify

    def base_url(self, config: OobmConfig) -> str:
        """``scheme://address[:port]`` of ``config``'s BMC (no credentials)."""
        host = config.address
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        port = f":{config.port}" if config.port is not None else ""
        return f"{'https' if self.use_https else 'http'}://{host}{port}"

    def service_url(self, config: OobmConfig) -> str:
        """The Redfish service root of ``config``'s BMC, for messages."""
        return f"{self.base_url(config)}/redfish/v1"

    # -- the operation --------------------------------------------------------

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        deadline = time.monotonic() + timeout
        try:
            return self._runner.run(
                lambda _ticket: self._run(config, operation, deadline),
                timeout + _GRACE,
                label=f"{operation} of {config.address}",
            )
        except DeadlineExceeded:
            raise ProbeTimeout(
                f"redfish BMC {self.service_url(config)}: no answer to {operation} "
                f"within {timeout:g}s",
                host_id=config.host_id,
            ) from None

    def _run(self, config: OobmConfig, operation: PowerOperation, deadline: float) -> PowerResult:
        """All attempts, in the worker thread."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.info(
                "redfish BMC %s: %s; retry %d of %d",
                self.service_url(config),
                exc,
                state.attempt_number,
                self.retries,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1) | _StopAt(deadline, self.retry_wait),
            wait=tenacity.wait_fixed(self.retry_wait),
            retry=tenacity.retry_if_exception_type(_Retry),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, config, operation, deadline)
        except _Retry as exc:
            raise exc.error from exc.error.__cause__

    def _attempt(
        self, config: OobmConfig, operation: PowerOperation, deadline: float
    ) -> PowerResult:
        """One attempt: a fresh HTTP session, the requests, the session closed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeTimeout(
                f"redfish BMC {self.service_url(config)}: out of time before {operation}",
                host_id=config.host_id,
            )
        base_url = self.base_url(config)
        connector = sushy_connector.Connector(
            base_url,
            verify=self._verify,
            # One try per request inside sushy (our retries are above it),
            # and one immediate retry of a GET answered 5xx.
            server_side_retries=1,
            server_side_retries_delay=0,
            default_request_timeout=max(left, _MIN_REQUEST_TIMEOUT),
        )
        # Basic auth, not a Redfish session: a session is a resource on the
        # BMC that must be deleted afterwards, and a dying BMC (the very case
        # fencing is about) would leak it, or refuse new ones once its few
        # session slots are full.
        auth = sushy_auth.BasicAuth(username=config.username, password=config.password)
        posted = False
        try:
            root = self._factory(base_url, auth=auth, connector=connector)
            system = self._system(root, config)
            if operation is PowerOperation.STATUS:
                raw = _raw_power_state(system)
                shown = raw or "absent"
                return PowerResult(operation, True, _map_power_state(raw), f"PowerState {shown}")
            reset_type = _RESET_TYPES[operation]
            posted = True
            return self._reset(system, config, operation, reset_type)
        except ProbeError:
            raise
        except Exception as exc:
            error = self._classify(exc, config, operation)
            error.__cause__ = exc
            transient = type(error) is ProbeConnectionError and _connection_failure(exc)
            if transient and (operation in _IDEMPOTENT or not posted):
                raise _Retry(error) from exc
            raise error from exc
        finally:
            connector.close()

    def _system(self, root: Any, config: OobmConfig) -> Any:
        """The sushy System the config designates (see the class contract)."""
        wanted = (config.options.get("system") or "").strip()
        if wanted:
            if wanted.startswith("/"):
                path = wanted.rstrip("/")
            else:
                path = SYSTEMS_PATH + urllib.parse.quote(wanted, safe="")
        else:
            members = list(root.get_system_collection().members_identities)
            if len(members) != 1:
                listed = ", ".join(str(m) for m in members) or "none"
                of_host = f" of host {config.host_id!r}" if config.host_id else ""
                raise PowerCommandError(
                    f"redfish BMC {self.service_url(config)}{of_host} lists "
                    f"{len(members)} systems ({listed}); set the 'system' option to one of them",
                    host_id=config.host_id,
                )
            path = str(members[0])
        return root.get_system(path)

    def _reset(
        self, system: Any, config: OobmConfig, operation: PowerOperation, reset_type: str
    ) -> PowerResult:
        value = sushy.ResetType(reset_type)
        allowed = system.get_allowed_reset_system_values()
        if value not in allowed:
            offered = ", ".join(sorted(str(v.value) for v in allowed)) or "none"
            raise PowerCommandError(
                f"redfish BMC {self.service_url(config)}: the system does not allow "
                f"ResetType {reset_type} for {operation} (it allows: {offered})",
                host_id=config.host_id,
            )
        try:
            system.reset_system(value)
        except sushy_exc.HTTPError as exc:
            target = _CONFLICT_TARGET.get(operation)
            if exc.status_code != 409 or target is None:
                raise
            system.refresh()
            raw = _raw_power_state(system)
            if raw != target:
                raise PowerCommandError(
                    f"redfish BMC {self.service_url(config)} refused {reset_type} with "
                    f"409 Conflict and the system reads back PowerState {raw}",
                    host_id=config.host_id,
                ) from exc
            log.info(
                "redfish BMC %s: %s answered 409 Conflict; the system is already %s",
                self.service_url(config),
                reset_type,
                raw,
            )
            return PowerResult(operation, True, _map_power_state(raw), f"already {target.lower()}")
        return PowerResult(operation, True, None, f"ResetType {reset_type} accepted")

    def _classify(
        self, exc: Exception, config: OobmConfig, operation: PowerOperation
    ) -> ProbeError:
        """The ProbeError for a failure of sushy or requests (messages scrubbed)."""
        where = f"redfish BMC {self.service_url(config)}"
        host_id = config.host_id

        def text(value: object) -> str:
            return _scrub(_trim(str(value)), config)

        if isinstance(exc, sushy_exc.AccessError):
            return ProbeAuthError(
                f"{where} refused user {config.username!r} (HTTP {exc.status_code})",
                host_id=host_id,
            )
        if isinstance(exc, sushy_exc.HTTPError):
            return PowerCommandError(
                f"{where}: {operation} failed with HTTP {exc.status_code}: {text(exc.message)}",
                host_id=host_id,
            )
        if isinstance(exc, sushy_exc.InvalidParameterValueError):
            return PowerCommandError(
                f"{where}: the system does not allow ResetType {_RESET_TYPES.get(operation)} "
                f"for {operation}: {text(exc)}",
                host_id=host_id,
            )
        if isinstance(exc, json.JSONDecodeError) or (
            isinstance(exc, ValueError) and not isinstance(exc, requests.RequestException)
        ):  # e.g. a body that is not JSON
            return PowerCommandError(
                f"{where}: not a usable Redfish answer to {operation}: {text(exc)}",
                host_id=host_id,
            )
        if isinstance(exc, sushy_exc.ConnectionError | requests.RequestException):
            return self._classify_transport(exc, config, operation)
        if isinstance(exc, sushy_exc.SushyError):
            return PowerCommandError(f"{where}: {operation} failed: {text(exc)}", host_id=host_id)
        if isinstance(exc, OSError):
            return ProbeConnectionError(
                f"{where}: {type(exc).__name__}: {text(exc)}", host_id=host_id
            )
        log.warning(
            "%s: unexpected %s during %s: %s", where, type(exc).__name__, operation, text(exc)
        )
        return PowerCommandError(
            f"{where}: {operation} failed: {type(exc).__name__}: {text(exc)}", host_id=host_id
        )

    def _classify_transport(
        self, exc: Exception, config: OobmConfig, operation: PowerOperation
    ) -> ProbeError:
        where = f"redfish BMC {self.service_url(config)}"
        host_id = config.host_id
        chain = list(_chain(exc))
        detail = _scrub(_trim(str(_low_level_error(chain) or exc)), config)
        if any(isinstance(e, requests.exceptions.SSLError | ssl.SSLError) for e in chain):
            if any(_is_verification_failure(e) for e in chain):
                return ProbeConnectionError(
                    f"{where}: the TLS certificate could not be verified ({detail}); give the "
                    "BMC's CA bundle, or set redfish.ignore.ssl=true to skip the check",
                    host_id=host_id,
                )
            return ProbeConnectionError(
                f"{where}: TLS handshake failed ({detail}); if the BMC speaks plain HTTP, "
                "set redfish.use.https=false",
                host_id=host_id,
            )
        if any(isinstance(e, requests.exceptions.Timeout | TimeoutError) for e in chain):
            return ProbeTimeout(
                f"{where}: no answer to {operation} in time ({detail})", host_id=host_id
            )
        return ProbeConnectionError(f"{where}: cannot connect ({detail})", host_id=host_id)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and exceptions carried in their args/reason."""
    seen: set[int] = set()
    todo: collections.deque[BaseException] = collections.deque([exc])
    while todo:
        current = todo.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _low_level_error(chain: list[BaseException]) -> BaseException | None:
    """The socket/TLS error under requests' and urllib3's wrappers, if there is one."""
    found = [
        e
        for e in chain
        if type(e).__module__ in ("builtins", "socket", "ssl")
        and isinstance(e, OSError)
        and not isinstance(e, TimeoutError)  # urllib3's own words say which timeout
    ]
    return found[-1] if found else None


def _connection_failure(exc: BaseException) -> bool:
    """True for a failure to reach the BMC that a new attempt may cure.

    Refused, reset or unresolved: yes. A TLS failure (configuration) or a
    timeout (the time is spent): no.
    """
    chain = list(_chain(exc))
    if any(
        isinstance(e, requests.exceptions.SSLError | ssl.SSLError | requests.exceptions.Timeout)
        for e in chain
    ):
        return False
    return any(isinstance(e, requests.exceptions.ConnectionError) for e in chain)


def _is_verification_failure(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _raw_power_state(system: Any) -> str:
    """The system's PowerState as the BMC wrote it ("" when absent)."""
    raw_json = getattr(system, "json", None)
    if isinstance(raw_json, dict) and isinstance(raw_json.get("PowerState"), str):
        return str(raw_json["PowerState"])
    state = getattr(system, "power_state", None)
    value = getattr(state, "value", state)
    return value if isinstance(value, str) else ""


def _map_power_state(raw: str) -> PowerState:
    return _POWER_STATES.get(raw, PowerState.UNKNOWN)


def _trim(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scrub(text: str, config: OobmConfig) -> str:
    """``text`` with the password (and the basic-auth token that contains it) masked."""
    if not config.password:
        return text
    token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
    return redact(text, token, config.password)
