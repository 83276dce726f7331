"""Out-of-band management of hosts: power operations, the power-state machine, fence readiness.

:class:`OutOfBandManager` finds a host's BMC configuration through an
:class:`OobmConfigSource`, runs power operations through the matching
:class:`~cloudha.oobm.power.PowerDriver`, and keeps for every host

* its power state, driven by the spec §8 state machine from every outcome;
* its *fence readiness*: whether, at the last check, the BMC answered a
  STATUS with the configured credentials, i.e. whether the host could be
  power-fenced now. :meth:`OutOfBandManager.sync` (run every
  ``outofbandmanagement.background.task.execution.interval`` by
  :class:`OobmSyncTask`) refreshes it for every configured host, so a dead
  BMC or a changed password is found before the day it is needed.

An authentication failure raises an ``ALERT.OOBM_AUTH_ERROR`` alert, at most
once per host per day. Passwords never reach logs, alerts or evidence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, final, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.errors import CloudHAError, ConfigurationError, NoTransitionError, ProbeError
from cloudha.evidence import Recorder
from cloudha.model import AlertType, Host
from cloudha.oobm.power import (
    OobmConfig,
    PowerDriver,
    PowerEvent,
    PowerOperation,
    PowerResult,
    PowerState,
    next_power_state,
    power_event,
)
from cloudha.ports import Alert, AlertSink
from cloudha.settings import Settings

__all__ = [
    "OobmConfigSource",
    "OobmNotConfigured",
    "OobmSyncTask",
    "OutOfBandManager",
    "Readiness",
    "StaticOobmConfigs",
]

log = logging.getLogger(__name__)

_ANSWERED: Mapping[PowerState, str] = {
    state: f"BMC answered: power is {state}" for state in (PowerState.ON, PowerState.OFF)
}
"""A ready host's readiness reason, per power state (formatted once: a sync checks every host)."""

AUTH_ALERT_INTERVAL = 86_400.0
"""Seconds between two authentication alerts for the same host."""


class OobmNotConfigured(CloudHAError):
    """The host has no (enabled) out-of-band management."""


@runtime_checkable
class OobmConfigSource(Protocol):
    """Where each host's BMC configuration lives (the orchestrator's OOBM table).

    ``oobm_config`` returns None for a host without out-of-band management,
    or whose management is disabled (for the host, its cluster or its zone).
    """

    def oobm_config(self, host: Host) -> OobmConfig | None:
        """The BMC configuration of ``host``, or None."""


@final
class StaticOobmConfigs:
    """An in-memory :class:`OobmConfigSource`: host id → config; thread-safe."""

    def __init__(self, configs: Mapping[str, OobmConfig] | None = None) -> None:
        self._configs: dict[str, OobmConfig] = dict(configs or {})
        self._lock = threading.Lock()

    def set(self, host_id: str, config: OobmConfig | None) -> None:
        """Configure (or, with None, remove) ``host_id``'s BMC."""
        with self._lock:
            if config is None:
                self._configs.pop(host_id, None)
            else:
                self._configs[host_id] = config

    def oobm_config(self, host: Host) -> OobmConfig | None:
        with self._lock:
            return self._configs.get(host.id)

    def host_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)


@attrs.frozen
class Readiness:
    """Whether a host could be power-fenced at the last check.

    Attributes:
        host_id: the host.
        ready: True when the BMC answered STATUS with the configured credentials.
        power_state: the power state read (None when the check failed).
        reason: one sentence: what was seen.
        checked_at: ``clock.monotonic()`` of the check.
        driver: the driver's name (None when the host has no configuration).
        error: the error class name when the check failed.
    """

    host_id: str
    ready: bool
    power_state: PowerState | None
    reason: str
    checked_at: float
    driver: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "host": self.host_id,
            "ready": self.ready,
            "power_state": None if self.power_state is None else self.power_state.value,
            "reason": self.reason,
            "checked_at": round(self.checked_at, 3),
        }
        if self.driver is not None:
            out["driver"] = self.driver
        if self.error is not None:
            out["error"] = self.error
        return out


class OutOfBandManager:
    """Power operations on hosts through their BMCs, with state and readiness.

    Args:
        clock: the time source.
        configs: each host's BMC configuration.
        drivers: the power drivers, looked up by lower-case ``name``.
        settings: ``outofbandmanagement.*`` (action timeout, pool size).
        alerts: where authentication alerts go.
        recorder: where readiness changes are recorded (kind ``fence_readiness``).

    Thread-safe: power operations on different hosts run concurrently.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        configs: OobmConfigSource,
        drivers: Iterable[PowerDriver],
        settings: Settings | None = None,
        alerts: AlertSink | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.clock = clock
        self.configs = configs
        self.settings = settings if settings is not None else Settings()
        self.alerts = alerts
        self.recorder = recorder
        self._drivers: dict[str, PowerDriver] = {}
        for driver in drivers:
            if not isinstance(driver, PowerDriver):
                raise ConfigurationError(
                    f"{driver!r} is not a power driver (needs name and execute)",
                    key="oobm drivers",
                    value=repr(driver),
                )
            key = driver.name.lower()
            if key in self._drivers:
                raise ConfigurationError(
                    f"two power drivers are named {key!r}", key="oobm drivers", value=key
                )
            self._drivers[key] = driver
        self._lock = threading.Lock()
        self._states: dict[str, PowerState] = {}
        self._readiness: dict[str, Readiness] = {}
        self._auth_alerted: dict[str, float] = {}

    @property
    def driver_names(self) -> list[str]:
        return sorted(self._drivers)

    def config(self, host: Host) -> OobmConfig | None:
        """``host``'s BMC configuration, or None."""
        return self.configs.oobm_config(host)

    def configured(self, host: Host) -> bool:
        """True when ``host`` has out-of-band management (no BMC is contacted)."""
        return self.configs.oobm_config(host) is not None

    def driver_for(self, host: Host, config: OobmConfig) -> PowerDriver:
        """The driver ``config`` names.

        Raises:
            ConfigurationError: no such driver; the message names the host and
                the drivers available.
        """
        driver = self._drivers.get(config.driver.lower())
        if driver is None:
            raise ConfigurationError(
                f"host {host.id}: out-of-band driver {config.driver!r} is not available "
                f"(have: {', '.join(self.driver_names) or 'none'})",
                key="driver",
                value=config.driver,
            )
        return driver

    def execute(
        self, host: Host, operation: PowerOperation, *, timeout: float | None = None
    ) -> PowerResult:
        """Run ``operation`` on ``host``'s BMC.

        ``timeout`` defaults to ``outofbandmanagement.action.timeout``. The
        outcome drives the power-state machine (a STATUS result with its
        state; any failure as AuthError or Unknown).

        Raises:
            OobmNotConfigured: the host has no out-of-band management.
            ConfigurationError: its driver is not available.
            ProbeError: the BMC failed (ProbeAuthError, ProbeTimeout, ...).
        """
        config = self.configs.oobm_config(host)
        if config is None:
            raise OobmNotConfigured(f"host {host.id} has no out-of-band management")
        return self._execute(host, config, operation, timeout)

    def _execute(
        self, host: Host, config: OobmConfig, operation: PowerOperation, timeout: float | None
    ) -> PowerResult:
        """:meth:`execute` with ``host``'s configuration already read."""
        driver = self.driver_for(host, config)
        limit = self.settings.outofbandmanagement_action_timeout if timeout is None else timeout
        try:
            result = driver.execute(config, operation, timeout=limit)
        except ProbeError as exc:
            if exc.host_id is None:
                exc.host_id = host.id
            self._drive(host, power_event(exc))
            if power_event(exc) is PowerEvent.AUTH_ERROR:
                self._auth_alert(host, config, exc)
            raise
        if operation is PowerOperation.STATUS or not result.success:
            self._drive(host, power_event(result))
        return result

    def power_state(self, host_id: str) -> PowerState | None:
        """The state the power-state machine holds for ``host_id`` (None: never known)."""
        with self._lock:
            return self._states.get(host_id)

    def check_readiness(self, host: Host, *, timeout: float | None = None) -> Readiness:
        """Ask ``host``'s BMC for its power state and record whether fencing would work now."""
        return self._check(host, self.configs.oobm_config(host), timeout)

    def _check(self, host: Host, config: OobmConfig | None, timeout: float | None) -> Readiness:
        """:meth:`check_readiness` with ``host``'s configuration already read."""
        now = self.clock.monotonic()
        if config is None:
            found = Readiness(host.id, False, None, "no out-of-band management", now)
        else:
            try:
                result = self._execute(host, config, PowerOperation.STATUS, timeout)
            except (ProbeError, ConfigurationError) as exc:
                found = Readiness(
                    host.id,
                    False,
                    None,
                    f"BMC check failed: {exc}",
                    now,
                    driver=config.driver,
                    error=type(exc).__name__,
                )
            else:
                if result.success and result.state in (PowerState.ON, PowerState.OFF):
                    found = Readiness(
                        host.id,
                        True,
                        result.state,
                        _ANSWERED[result.state],
                        now,
                        driver=config.driver,
                    )
                else:
                    found = Readiness(
                        host.id,
                        False,
                        result.state,
                        f"BMC answered without a power state: {result.message or 'no message'}",
                        now,
                        driver=config.driver,
                        error="UnknownPowerState",
                    )
        self._remember(found)
        return found

    def readiness(self, host_id: str) -> Readiness | None:
        """The last readiness check of ``host_id``, or None if never checked."""
        with self._lock:
            return self._readiness.get(host_id)

    def readiness_report(self) -> dict[str, Readiness]:
        """The last readiness check of every host checked, by host id."""
        with self._lock:
            return dict(sorted(self._readiness.items()))

    def sync(self, hosts: Iterable[Host], *, parallel: bool = True) -> list[Readiness]:
        """Check readiness of every host in ``hosts`` that has out-of-band management.

        Runs up to ``outofbandmanagement.sync.poolsize`` checks at once (one
        after the other with ``parallel=False``); each is bounded by the
        action timeout, so the call is bounded too.
        """
        configured = [(h, self.configs.oobm_config(h)) for h in hosts]
        targets = [h for h, config in configured if config is not None]
        if not parallel or len(targets) <= 1:
            # One after the other: each host's configuration as just read.
            return [self._check(h, config, None) for h, config in configured if config is not None]
        workers = min(self.settings.outofbandmanagement_sync_poolsize, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloudha-oobm") as pool:
            return list(pool.map(self.check_readiness, targets))

    def explain(self, host: Host) -> dict[str, Any]:
        """What cloudha knows about ``host``'s fence path (JSON-able, no secrets)."""
        config = self.configs.oobm_config(host)
        readiness = self.readiness(host.id)
        state = self.power_state(host.id)
        return {
            "host": host.id,
            "configured": config is not None,
            "bmc": None if config is None else config.describe(),
            "power_state": None if state is None else state.value,
            "readiness": None if readiness is None else readiness.to_dict(),
        }

    # -- internals -------------------------------------------------------------

    def _drive(self, host: Host, event: PowerEvent) -> None:
        with self._lock:
            current = self._states.get(host.id)
            try:
                self._states[host.id] = next_power_state(current, event)
            except NoTransitionError:
                log.debug("host %s: power state %s ignores %s", host.id, current, event)

    def _remember(self, found: Readiness) -> None:
        with self._lock:
            before = self._readiness.get(found.host_id)
            self._readiness[found.host_id] = found
        changed = before is None or before.ready != found.ready
        if changed:
            level = logging.INFO if found.ready else logging.WARNING
            log.log(level, "fence path of host %s: %s", found.host_id, found.reason)
            if self.recorder is not None:
                details = found.to_dict()
                details.pop("host")
                details.pop("reason")
                self.recorder.emit(
                    "fence_readiness", host=found.host_id, reason=found.reason, **details
                )

    def _auth_alert(self, host: Host, config: OobmConfig, exc: ProbeError) -> None:
        now = self.clock.monotonic()
        with self._lock:
            last = self._auth_alerted.get(host.id)
            if last is not None and now - last < AUTH_ALERT_INTERVAL:
                return
            self._auth_alerted[host.id] = now
        log.warning("host %s: BMC %s refused the credentials: %s", host.id, config, exc)
        if self.alerts is not None:
            self.alerts.send(
                Alert(
                    AlertType.OOBM_AUTH_ERROR,
                    f"Out-of-band management authentication failed for host {host.id}",
                    f"BMC {config} ({config.driver}) refused the configured credentials: {exc}",
                    host_id=host.id,
                    zone=host.zone,
                    pod=host.pod,
                )
            )


class OobmSyncTask:
    """The background readiness check: call :meth:`tick` when it says.

    Args:
        manager: the out-of-band manager.
        hosts: returns the hosts this management server owns.
    """

    def __init__(self, manager: OutOfBandManager, hosts: Callable[[], Iterable[Host]]) -> None:
        self.manager = manager
        self.hosts = hosts

    @property
    def interval(self) -> float:
        return self.manager.settings.outofbandmanagement_background_task_execution_interval

    def tick(self) -> float:
        """Check every configured host once; return seconds until the next tick."""
        try:
            self.manager.sync(self.hosts())
        except Exception:
            log.exception("out-of-band readiness sync failed; trying again next interval")
        return self.interval

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set (waits through the manager's clock)."""
        while not stop.is_set():
            delay = self.tick()
            if self.manager.clock.wait(stop, delay):
                return
