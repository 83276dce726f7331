"""Out-of-band power management: operations, power states and the driver extension point.

A :class:`PowerDriver` talks to one kind of BMC (IPMI, Redfish ...). It is
handed an :class:`OobmConfig` (address, port, credentials) and one
:class:`PowerOperation`, and answers with a :class:`PowerResult` or raises a
:class:`~cloudha.errors.ProbeError` subclass:

* :class:`~cloudha.errors.ProbeAuthError` when the BMC refused the credentials;
* :class:`~cloudha.errors.ProbeTimeout` when it did not answer in time;
* :class:`~cloudha.errors.ProbeConnectionError` when it could not be reached;
* :class:`PowerCommandError` when it answered but refused or failed the operation.

:func:`power_event` turns either into the event of spec §8 and
:func:`next_power_state` is the power-state machine those events drive.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from cloudha.errors import (
    NoTransitionError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
)

__all__ = [
    "BasePowerDriver",
    "OobmConfig",
    "PowerCommandError",
    "PowerDriver",
    "PowerEvent",
    "PowerOperation",
    "PowerResult",
    "PowerState",
    "next_power_state",
    "power_event",
]

log = logging.getLogger(__name__)


class PowerOperation(enum.Enum):
    """What a BMC can be asked (spec §8)."""

    ON = "ON"
    """Power on."""
    OFF = "OFF"
    """Power down at once, without a clean OS shutdown (what fencing needs)."""
    CYCLE = "CYCLE"
    """Off for at least a second, then on."""
    RESET = "RESET"
    """Hard reset."""
    SOFT = "SOFT"
    """ACPI soft shutdown (the OS may ignore it)."""
    STATUS = "STATUS"
    """Read the chassis power state."""

    def __str__(self) -> str:
        return self.value


class PowerState(enum.Enum):
    """A host's power state as out-of-band management knows it."""

    ON = "On"
    OFF = "Off"
    UNKNOWN = "Unknown"
    DISABLED = "Disabled"

    def __str__(self) -> str:
        return self.value


class PowerEvent(enum.Enum):
    """What a power operation's outcome says about the power state (spec §8)."""

    ON = "On"
    OFF = "Off"
    AUTH_ERROR = "AuthError"
    UNKNOWN = "Unknown"
    ENABLED = "Enabled"
    DISABLED = "Disabled"

    def __str__(self) -> str:
        return self.value


_FROM_ANY = (PowerState.ON, PowerState.OFF, PowerState.UNKNOWN, PowerState.DISABLED)
_TRANSITIONS: Mapping[tuple[PowerState | None, PowerEvent], PowerState] = {
    # Initial (no state yet).
    (None, PowerEvent.ON): PowerState.ON,
    (None, PowerEvent.OFF): PowerState.OFF,
    (None, PowerEvent.UNKNOWN): PowerState.UNKNOWN,
    (None, PowerEvent.AUTH_ERROR): PowerState.UNKNOWN,
    (None, PowerEvent.DISABLED): PowerState.DISABLED,
    **{(s, PowerEvent.ON): PowerState.ON for s in _FROM_ANY},
    **{(s, PowerEvent.OFF): PowerState.OFF for s in _FROM_ANY},
    **{(s, PowerEvent.UNKNOWN): PowerState.UNKNOWN for s in _FROM_ANY},
    **{
        (s, PowerEvent.AUTH_ERROR): PowerState.UNKNOWN
        for s in (PowerState.ON, PowerState.OFF, PowerState.DISABLED)
    },
    **{
        (s, PowerEvent.DISABLED): PowerState.DISABLED
        for s in (PowerState.ON, PowerState.OFF, PowerState.UNKNOWN)
    },
}


def next_power_state(current: PowerState | None, event: PowerEvent) -> PowerState:
    """The power-state machine of spec §8.

    ``current`` is None for a host whose state was never known. ``Enabled``
    has no transition, and neither have ``AuthError`` from Unknown or
    ``Disabled`` from Disabled:

    Raises:
        NoTransitionError: ``event`` is not allowed in ``current``.
    """
    try:
        return _TRANSITIONS[(current, event)]
    except KeyError:
        raise NoTransitionError(current, event) from None


@attrs.frozen
class OobmConfig:
    """How to reach one host's BMC.

    The password is never part of ``repr()``, ``str()`` or :meth:`describe`,
    so a config can be logged or put in evidence as it is.

    Attributes:
        driver: the driver's name (``ipmitool``, ``ipmi``, ``redfish`` ...).
        address: the BMC's address (IP or host name).
        username: the BMC user.
        password: the BMC password.
        port: the BMC's port; None means the protocol's default.
        host_id: the host this BMC controls (for errors and evidence).
        options: driver-specific extras (e.g. a Redfish system id); no secrets.
    """

    driver: str
    address: str
    username: str
    password: str = attrs.field(repr=False)
    port: int | None = None
    host_id: str | None = None
    options: Mapping[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        where = f"out-of-band management of host {self.host_id!r}" if self.host_id else "OobmConfig"
        if not self.driver:
            raise ValueError(f"{where}: 'driver' must not be empty")
        if not self.address:
            raise ValueError(f"{where}: 'address' must not be empty")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"{where}: 'port' must be 1..65535, got {self.port!r}")

    def describe(self) -> dict[str, Any]:
        """A JSON-able description without the password."""
        out: dict[str, Any] = {"driver": self.driver, "address": self.address}
        if self.port is not None:
            out["port"] = self.port
        out["username"] = self.username
        return out

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.driver}://{self.username}@{self.address}{port}"


class PowerCommandError(ProbeError):
    """The BMC answered but refused or failed the operation."""


@attrs.frozen
class PowerResult:
    """A power operation's outcome.

    Attributes:
        operation: what was asked.
        success: True when the BMC accepted (or, for STATUS, answered) it.
        state: the power state the BMC reported, if it reported one (always
            for a successful STATUS).
        message: the BMC's words, trimmed; never credentials.
    """

    operation: PowerOperation
    success: bool
    state: PowerState | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"operation": self.operation.value, "success": self.success}
        if self.state is not None:
            out["state"] = self.state.value
        if self.message:
            out["message"] = self.message
        return out


def power_event(outcome: PowerResult | BaseException) -> PowerEvent:
    """The spec §8 event for a driver's outcome.

    An authentication failure is AuthError; a failure, or a success without a
    power state, is Unknown; otherwise the reported state (On or Off).
    """
    if isinstance(outcome, ProbeAuthError):
        return PowerEvent.AUTH_ERROR
    if isinstance(outcome, BaseException) or not outcome.success:
        return PowerEvent.UNKNOWN
    if outcome.state is PowerState.ON:
        return PowerEvent.ON
    if outcome.state is PowerState.OFF:
        return PowerEvent.OFF
    return PowerEvent.UNKNOWN


@runtime_checkable
class PowerDriver(Protocol):
    """Talks to one kind of BMC.

    Contract:
        * ``name`` is the driver's lower-case name, the one an
          :class:`OobmConfig` refers to.
        * ``execute`` returns within ``timeout`` seconds (plus a little) and
          is called from several threads at once.
        * A STATUS result that succeeds carries the state (On, Off or
          Unknown when the BMC said something else).
        * OFF means an immediate power-off (never a graceful shutdown).
        * Failures are :class:`~cloudha.errors.ProbeError` subclasses:
          ProbeAuthError, ProbeTimeout, ProbeConnectionError or
          :class:`PowerCommandError`; never another exception for a BMC that
          misbehaves.
        * The password never reaches a log, an exception message, a process
          list or a result.
    """

    name: str

    def execute(
        self, config: OobmConfig, operation: PowerOperation, *, timeout: float
    ) -> PowerResult:
        """Run ``operation`` against ``config``'s BMC."""


class BasePowerDriver(abc.ABC):
    """Template for power drivers: subclasses implement :meth:`_execute`.

    :meth:`execute` checks its arguments, calls the hook, maps an
    :class:`OSError` from the hook to
    :class:`~cloudha.errors.ProbeConnectionError`, and checks the hook
    returned a :class:`PowerResult` for the operation asked.
    """

    name: str = "base"

    def execute(
        self, config: OobmConfig, operation: PowerOperation, *, timeout: float
    ) -> PowerResult:
        if not isinstance(operation, PowerOperation):
            raise TypeError(f"{self.name}: operation must be a PowerOperation, got {operation!r}")
        if not timeout > 0:
            raise ValueError(f"{self.name}: timeout must be positive, got {timeout!r}")
        try:
            result = self._execute(config, operation, timeout)
        except ProbeError as exc:
            if exc.host_id is None:
                exc.host_id = config.host_id
            raise
        except OSError as exc:
            raise ProbeConnectionError(
                f"{self.name} BMC {config.address}: {type(exc).__name__}: {exc}",
                host_id=config.host_id,
            ) from exc
        if not isinstance(result, PowerResult) or result.operation is not operation:
            raise TypeError(
                f"{type(self).__name__}._execute returned {result!r} for {operation}, "
                "not a PowerResult of that operation"
            )
        return result

    @abc.abstractmethod
    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        """Do the work; raise ProbeError subclasses for BMC failures."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
