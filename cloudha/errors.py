"""The cloudha exception tree.

::

    CloudHAError
     ├── ConfigurationError (+ValueError)      bad settings, scenario or plugin wiring
     │    ├── ScenarioError                    a simulator scenario file is wrong
     │    └── MissingExtraError                an adapter's optional dependency is not installed
     ├── NoTransitionError                     a state machine has no such transition
 ├── HACheckError                          a Host-HA check cannot apply to the host at all
     ├── LifecycleError (+RuntimeError)        start/stop misuse
     ├── StoreError                            the HA work store failed (a bug or bad schema)
     │    ├── StoreUnavailableError            a transient fault (connection lost, locked): retry
     │    ├── StaleWorkError                   the work is no longer the caller's claim
     │    ├── UnreadableWorkError              a row holds a value cloudha does not know
     │    ├── UnknownWorkError (+LookupError)  no work with this id (an operator's retry/cancel)
     │    └── WorkRefusedError                 an operator's retry/cancel of a work was refused
     └── ProbeError                            a probe of a host failed (infrastructure fault)
          ├── ProbeTimeout (+TimeoutError)
          ├── ProbeConnectionError (+ConnectionError)
          └── ProbeAuthError

Every error keeps the structured facts it was raised with as attributes, so
callers never parse messages.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CloudHAError",
    "ConfigurationError",
    "HACheckError",
    "LifecycleError",
    "MissingExtraError",
    "NoTransitionError",
    "ProbeAuthError",
    "ProbeConnectionError",
    "ProbeError",
    "ProbeHostKeyError",
    "ProbeTimeout",
    "ScenarioError",
    "StoreError",
    "StoreUnavailableError",
]


class CloudHAError(Exception):
    """Base class of every error cloudha raises on purpose."""


class ConfigurationError(CloudHAError, ValueError):
    """A setting, a scenario entry or a plugin is wrong.

    Attributes:
        key: the setting or scenario key at fault, when there is one.
        value: the offending value, when it is safe to show.
        source: where the value came from (a file path, ``environment``...).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: Any = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.source = source


class ScenarioError(ConfigurationError):
    """A simulator scenario is wrong; ``line`` is its 1-based line when known."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: Any = None,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, key=key, value=value, source=source)
        self.line = line


class MissingExtraError(ConfigurationError):
    """An adapter was built without the extra that installs its dependency.

    The message names the adapter, the distribution and the command that
    installs it (``pip install 'cloudha[ssh]'``).

    Attributes:
        extra: the cloudha extra to install (``ssh``, ``libvirt``, ``ipmi``,
            ``redfish``, ``postgres``, ``metrics``).
        module: the module that could not be imported.
    """

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message)
        self.extra = extra
        self.module = module


class NoTransitionError(CloudHAError):
    """A state machine has no transition for ``(current, event)``."""

    def __init__(self, current: object, event: object) -> None:
        shown = "initial state" if current is None else repr(str(current))
        super().__init__(f"no transition from {shown} on event {str(event)!r}")
        self.current = current
        self.event = event


class HACheckError(CloudHAError):
    """A Host-HA activity check cannot apply to the host (CloudStack ``HACheckerException``).

    Not a verdict: the host becomes Ineligible, and the regular VM-HA path
    (investigators, fence chain) looks after it again.
    """

    def __init__(self, message: str, *, host_id: str) -> None:
        super().__init__(message)
        self.host_id = host_id


class LifecycleError(CloudHAError, RuntimeError):
    """A component was used in the wrong lifecycle state (e.g. started twice)."""


class ProbeError(CloudHAError):
    """A probe could not get an answer from ``host_id``.

    Investigators turn it into an UNKNOWN verdict; it is never a DEAD one.
    """

    def __init__(self, message: str, *, host_id: str | None = None) -> None:
        super().__init__(message)
        self.host_id = host_id


class ProbeTimeout(ProbeError, TimeoutError):
    """The probe did not finish in time."""


class ProbeConnectionError(ProbeError, ConnectionError):
    """The probe could not connect."""


class ProbeAuthError(ProbeError):
    """The probe was refused its credentials."""


class ProbeHostKeyError(ProbeAuthError):
    """The server's host key is unknown or does not match the known_hosts entry."""


class StoreError(CloudHAError):
    """The HA work store could not do what was asked.

    The SQL adapter raises it for database errors that retrying will not
    fix (a missing table, a constraint violated); ``__cause__`` is the
    driver's exception. :class:`~cloudha.ha.work.StaleWorkError` and
    :class:`~cloudha.ha.work.UnreadableWorkError` are subclasses.
    """


class StoreUnavailableError(StoreError):
    """A transient store fault (connection lost or refused, database locked, deadlock).

    The HA manager retries the call with backoff on its clock; ``__cause__``
    is the driver's exception.
    """
