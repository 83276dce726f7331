"""The ``ipmi`` power driver: IPMI 2.0 over LAN in Python, with pyghmi.

pyghmi is the ``cloudha[ipmi]`` extra: this module imports without it, and
building a :class:`PyghmiDriver` then raises
:class:`~cloudha.errors.MissingExtraError`. pyghmi itself loads when the
driver is built (:mod:`pyghmi.exceptions`) and with the first session (the rest).

Operations map to pyghmi's :class:`pyghmi.ipmi.command.Command`:

========  ===================================================================
STATUS    ``get_power()["powerstate"]`` ("on" / "off")
ON        ``set_power("on")``
OFF       ``set_power("off")`` (immediate; pyghmi sends nothing if already off)
SOFT      ``set_power("shutdown")`` (ACPI soft shutdown)
RESET     ``set_power("reset")``
CYCLE     chassis control 02h "power cycle" (``raw_command``); pyghmi has no name for it
========  ===================================================================

``set_power`` is never asked to wait: the caller reads the state back.

Time: pyghmi's session machinery has its own long timeouts (a silent BMC
costs about 5 s per login, a BMC that dies mid-session much more), so every
call runs in a daemon worker thread and the caller waits for it at most
``timeout`` seconds, then raises :class:`~cloudha.errors.ProbeTimeout`. The
worker is *abandoned*, not killed: it ends when pyghmi gives up.
:attr:`PyghmiDriver.lingering` counts such workers.

Sessions: each operation logs in, does its work and logs out, so no session
outlives it. pyghmi caches sessions process-wide; a cached session to a BMC
that restarted since makes the next call hang for many seconds, and a failed
login must not stand in the way of the next one. Operations on one BMC
(address and port) run one at a time, because pyghmi would hand a concurrent
operation the same cached session, and the first logout would end it under
the other. A worker that was
abandoned before its turn came does nothing.

pyghmi quirks handled here (pyghmi 1.6): credentials are handed to it as
bytes, because with ``str`` credentials its session cache never finds (nor
forgets) a session it is logging in and a second ``Command`` for the same BMC
waits for ever. pyghmi is not patched: against a BMC built on pyghmi's own
server (e.g. virtualbmc), which accepts a SHA-256 cipher-suite proposal and
then speaks SHA-1, the login fails (``struct.error`` in ``_got_rakp2``, seen
here as :class:`~cloudha.oobm.power.PowerCommandError`); use the
``ipmitool`` driver for such BMCs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from cloudha._extras import lazy_module, require
from cloudha.deadline import DeadlineExceeded, DeadlineRunner, Ticket
from cloudha.errors import (
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
    import pyghmi.exceptions as pyghmi_exceptions
else:
    pyghmi_exceptions = lazy_module("pyghmi.exceptions", "ipmi", "the ipmi power driver")

__all__ = [
    "DEFAULT_IPMI_PORT",
    "CommandFactory",
    "IpmiCommand",
    "PyghmiDriver",
    "classify_ipmi_error",
    "pyghmi_command",
]

log = logging.getLogger(__name__)

DEFAULT_IPMI_PORT: Final = 623
"""The IPMI-over-LAN (RMCP) UDP port used when a config has none."""

_SET_POWER: Final = {
    PowerOperation.ON: "on",
    PowerOperation.OFF: "off",
    PowerOperation.SOFT: "shutdown",
    PowerOperation.RESET: "reset",
}
_CHASSIS_NETFN: Final = 0x00
_CHASSIS_CONTROL: Final = 0x02
_POWER_CYCLE: Final = 0x02

_MAX_MESSAGE = 500

# Lower-case fragments of pyghmi's IpmiException messages, most specific class first.
_AUTH_MARKERS: Final = (
    "incorrect password",  # RAKP 2 HMAC mismatch
    "unauthorized name",  # RAKP 2 status 0x0d: unknown user
    "invalid username length",
    "unauthorized role",
    "invalid role",
    "insufficient privilege",  # completion code 0xd4
    "privelege level",  # sic: "... while requesting privelege level 4 for admin"
    "privilege level",
    "wrong kg",  # "Invalid RAKP4 integrity code (wrong Kg?)"
    "integrity code",
    "md5 required",  # IPMI 1.5 BMC without MD5 authentication
)
_CONNECTION_MARKERS: Final = (
    "unable to transmit",  # the address does not resolve
    "insufficient resources",  # the BMC has no free session
    "name or service not known",
    "no route to host",
    "network is unreachable",
)
_TIMEOUT_MARKERS: Final = (
    "timeout",
    "timed out",
    "no longer connected",  # the session died waiting for an answer
    "no response",
    "unable to establish",
    "failed to initialize",
)
_SILENT_MESSAGES: Final = ("", "none")
"""What pyghmi says when a login got no answer at all (its message is None)."""


class IpmiCommand(Protocol):
    """What the driver needs of one IPMI session (a wrapped pyghmi ``Command``).

    Methods are called from one worker thread, in this order: one power
    method, then :meth:`logout` (also after a failure). They raise pyghmi's
    ``IpmiException`` (or any exception) on failure.
    """

    def get_power(self) -> Mapping[str, Any]:
        """``{"powerstate": "on" | "off"}``."""

    def set_power(self, powerstate: str, wait: bool = False) -> Mapping[str, Any]:
        """Ask for ``powerstate`` (on, off, shutdown, reset) without waiting."""

    def raw_command(self, netfn: int, command: int, data: Sequence[int] = ()) -> Mapping[str, Any]:
        """Send one IPMI request; the answer may hold ``error`` and ``code``."""

    def logout(self) -> None:
        """Close the session."""


class CommandFactory(Protocol):
    """Opens an IPMI session (logs in); raises on failure like pyghmi does."""

    def __call__(self, *, address: str, port: int, username: str, password: str) -> IpmiCommand:
        """A logged-in session to ``address:port``."""


class _PyghmiCommand:
    """:class:`IpmiCommand` over a pyghmi ``Command``."""

    def __init__(self, command: Any) -> None:
        self._command = command

    def get_power(self) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._command.get_power()
        return answer

    def set_power(self, powerstate: str, wait: bool = False) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._command.set_power(powerstate, wait=wait)
        return answer

    def raw_command(self, netfn: int, command: int, data: Sequence[int] = ()) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._command.raw_command(
            netfn=netfn, command=command, data=tuple(data)
        )
        return answer

    def logout(self) -> None:
        self._command.ipmi_session.logout()


def pyghmi_command(*, address: str, port: int, username: str, password: str) -> IpmiCommand:
    """The default :class:`CommandFactory`: log in with pyghmi.

    Raises:
        pyghmi.exceptions.IpmiException: the login failed.
        OSError: e.g. the address does not resolve.
        MissingExtraError: pyghmi is not installed.
    """
    ipmi_command = require("pyghmi.ipmi.command", "ipmi", "the ipmi power driver")

    # NOTE: bytes on purpose (see the module docstring): pyghmi 1.6 compares
    # the cached sessions' encoded credentials with the ones given.
    return _PyghmiCommand(
        ipmi_command.Command(
            bmc=address,
            userid=username.encode("utf-8"),
            password=password.encode("utf-8"),
            port=port,
        )
    )


def classify_ipmi_error(message: str | None) -> type[ProbeError]:
    """The error class for a pyghmi failure message.

    * :class:`~cloudha.errors.ProbeAuthError`: ``Incorrect password
      provided``, ``Unauthorized name in RAKP2``, a refused role or privilege
      level, a wrong Kg, a BMC without the authentication type needed.
    * :class:`~cloudha.errors.ProbeConnectionError`: the address cannot be
      sent to, or the BMC has no free session.
    * :class:`~cloudha.errors.ProbeTimeout`: no answer (pyghmi's login
      timeout has no message: ``None`` or empty), ``timeout``, ``Session no
      longer connected``.
    * :class:`~cloudha.oobm.power.PowerCommandError` otherwise (the BMC
      answered with an error completion code, e.g. ``Command not supported
      in present state``).
    """
    text = (message or "").strip().lower()
    if text in _SILENT_MESSAGES:
        return ProbeTimeout
    if any(marker in text for marker in _AUTH_MARKERS):
        return ProbeAuthError
    if any(marker in text for marker in _CONNECTION_MARKERS):
        return ProbeConnectionError
    if any(marker in text for marker in _TIMEOUT_MARKERS):
        return ProbeTimeout
    return PowerCommandError


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__.removeprefix("_")
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _scrub(text: str, secret: str) -> str:
    text = " ".join(redact(text, secret).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class _Refused(Exception):
    """The BMC answered a raw request with an error completion code."""


class PyghmiDriver(BasePowerDriver):
    """Power operations with pyghmi (driver name ``ipmi``).

    Thread-safe; operations on one BMC run one at a time (see the module
    docstring), so a caller may spend part of its ``timeout`` waiting for
    another caller's operation on the same BMC. A call never takes longer
    than ``timeout`` (plus thread start-up).

    Results: STATUS succeeds with On or Off; any other power state pyghmi
    reports is a result with ``success=False`` and state Unknown. Other
    operations succeed when the BMC accepted the request and carry no state
    (``state=None``): the caller reads the state back with STATUS.

    Errors: :class:`~cloudha.errors.ProbeTimeout` (no answer within
    ``timeout``, or pyghmi timed out), :class:`~cloudha.errors.ProbeAuthError`,
    :class:`~cloudha.errors.ProbeConnectionError` and
    :class:`~cloudha.oobm.power.PowerCommandError`, as
    :func:`classify_ipmi_error` sorts pyghmi's messages; any other exception
    from pyghmi is a PowerCommandError. Messages never hold the password.

    Args:
        command_factory: opens a session; :func:`pyghmi_command` unless a test
            injects a stand-in.

    Raises:
        MissingExtraError: pyghmi is not installed (``pip install 'cloudha[ipmi]'``).
    """

    name = "ipmi"

    def __init__(self, *, command_factory: CommandFactory | None = None) -> None:
        require("pyghmi.exceptions", "ipmi", "the ipmi power driver")
        if command_factory is None:
            command_factory = pyghmi_command
        self._factory = command_factory
        self._lock = threading.Lock()
        self._bmc_locks: dict[tuple[str, int], threading.Lock] = {}
        self._runner = DeadlineRunner("ipmi")

    @property
    def lingering(self) -> int:
        """Workers abandoned on a timeout that have not returned yet."""
        return self._runner.lingering

    def _bmc_lock(self, key: tuple[str, int]) -> threading.Lock:
        with self._lock:
            return self._bmc_locks.setdefault(key, threading.Lock())

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        port = config.port if config.port is not None else DEFAULT_IPMI_PORT
        where = f"ipmi {operation} of BMC {config.address}:{port}"
        deadline = time.monotonic() + timeout
        log.debug("%s as user %r (timeout %.3g s)", where, config.username, timeout)
        try:
            return self._runner.run(
                lambda ticket: self._work(ticket, config, port, operation, deadline, where),
                timeout,
                label=where,
            )
        except DeadlineExceeded:
            raise ProbeTimeout(
                f"{where}: no answer within {timeout:.3g} s", host_id=config.host_id
            ) from None
        except Exception as exc:
            raise self._map_error(exc, config, where) from None

    def _work(
        self,
        ticket: Ticket[PowerResult],
        config: OobmConfig,
        port: int,
        operation: PowerOperation,
        deadline: float,
        where: str,
    ) -> PowerResult:
        """In the worker: one operation at a time per BMC; skipped if the caller gave up."""
        lock = self._bmc_lock((config.address, port))
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ProbeTimeout(
                f"{where}: an earlier operation on this BMC has not finished",
                host_id=config.host_id,
            )
        try:
            if ticket.abandoned:
                raise ProbeTimeout(f"{where}: abandoned before it started", host_id=config.host_id)
            return self._operate(config, port, operation)
        finally:
            lock.release()

    def _operate(self, config: OobmConfig, port: int, operation: PowerOperation) -> PowerResult:
        session = self._factory(
            address=config.address, port=port, username=config.username, password=config.password
        )
        try:
            if operation is PowerOperation.STATUS:
                power = session.get_power().get("powerstate")
                state = {"on": PowerState.ON, "off": PowerState.OFF}.get(str(power))
                if state is None:
                    return PowerResult(operation, False, PowerState.UNKNOWN, f"power is {power!r}")
                return PowerResult(operation, True, state, f"power is {power}")
            if operation is PowerOperation.CYCLE:
                answer = session.raw_command(
                    netfn=_CHASSIS_NETFN, command=_CHASSIS_CONTROL, data=(_POWER_CYCLE,)
                )
                if "error" in answer:
                    raise _Refused(str(answer["error"]))
                return PowerResult(operation, True, None, "power cycle requested")
            answer = session.set_power(_SET_POWER[operation], wait=False)
            if "powerstate" in answer:
                # pyghmi found the power already in the state asked and sent nothing.
                return PowerResult(
                    operation, True, None, f"power is already {answer['powerstate']}"
                )
            return PowerResult(operation, True, None, f"power {_SET_POWER[operation]} requested")
        finally:
            try:
                session.logout()
            except Exception as exc:
                log.debug("logging out of BMC %s failed: %s", config.address, type(exc).__name__)

    @staticmethod
    def _map_error(exc: BaseException, config: OobmConfig, where: str) -> BaseException:
        if isinstance(exc, ProbeError):
            return exc
        if isinstance(exc, _Refused | pyghmi_exceptions.PyghmiException):
            raw = exc.args[0] if exc.args else None
            message = None if raw is None else _scrub(str(raw), config.password)
            error = classify_ipmi_error(message)
            return error(
                f"{where} failed: {message or 'no answer from the BMC'}", host_id=config.host_id
            )
        if isinstance(exc, OSError):
            return ProbeConnectionError(
                f"{where} failed: {_type_name(exc)}: {_scrub(str(exc), config.password)}",
                host_id=config.host_id,
            )
        if isinstance(exc, Exception):
            return PowerCommandError(
                f"{where} failed inside pyghmi: {_type_name(exc)}: "
                f"{_scrub(str(exc), config.password)}",
                host_id=config.host_id,
            )
        return exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
