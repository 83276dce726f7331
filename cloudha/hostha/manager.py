"""The Host-HA manager: CloudStack's ``HAManagerImpl`` poll loop (spec §7.5).

Every :data:`POLL_INTERVAL` seconds (CloudStack's fixed 4 s) :meth:`HAManager.tick`
walks the ``ha_config`` rows this server may process (unowned or its own),
validates each (host present, Host-HA enabled, provider eligible) and moves
its state: health checks for Available, Suspect, Degraded and Fenced hosts;
an activity check for a Suspect host at most every
``kvm.ha.activity.check.interval``; a periodic recheck of a Degraded host;
retries of recovery and fencing; the wait of a Recovered host. Checks,
recoveries and fences run on four bounded executors (``ha.max.*``), each
call within its provider's limit.

A host Host-HA owns (:meth:`HAManager.owns`: enabled, in a state other than
Disabled or Ineligible) is looked after by Host-HA alone: the fast path
(fence on suspicion) stands aside, and VM-HA follows Host-HA's verdict
through :class:`~cloudha.hostha.bridge.HostHAInvestigator` (CloudStack's
``isVMAliveOnHost`` / ``getHostStatus``). When Host-HA has reset a host
(Recovered) or fenced it (Fenced), ``on_down`` hands the host and its VMs
to VM-HA: the host is declared Down and its VMs restart elsewhere.

Deliberate differences from CloudStack, each a bug report there:

* no overlapping recoveries or fences of one host, and no second check of
  one kind while one is in flight (CloudStack starts a RESET on every poll
  while a slow one runs);
* a check whose result arrives after the state moved on is dropped, never
  applied to the new state (#8326, ``NoTransitionException Checking via
  HealthCheckFailed``);
* a Fenced host that becomes ineligible (in maintenance) stays Fenced: the
  table has no ``Fenced + Ineligible`` and CloudStack's attempt left the VMs
  unrestarted (#11627);
* Fencing cannot last for ever (#13589): a fence that fails falls back to
  the provider's proof without the BMC (the storage heartbeat), and when
  that fails too the operator is alerted once per fencing, while the retries go on;
* a host left in Checking (a restart while its activity check ran) gets a
  new activity check; CloudStack leaves it there for good;
* an activity check that raised, or could not tell, is no sample of "no
  activity".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, HACheckError
from cloudha.evidence import Recorder
from cloudha.hostha.config import HAConfig, SqlHAConfigStore
from cloudha.hostha.counter import HAResourceCounter
from cloudha.hostha.executor import BoundedExecutor, InlineExecutor
from cloudha.hostha.fsm import HA_TRANSITIONS, HAEvent, HAState, ha_transition
from cloudha.model import AlertType, Host
from cloudha.ports import Alert, AlertSink, HAProvider, HostDirectory, TaskExecutor
from cloudha.runtime import ThreadFactory
from cloudha.settings import Settings

__all__ = ["CLUSTER", "POLL_INTERVAL", "ZONE", "HAExecutors", "HAManager"]

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_INTERVAL = 4.0
"""Seconds between two polls (CloudStack's ``HAManagerBgPollTask`` fixed delay)."""

CLUSTER = "Cluster"
"""The ``ha_config`` resource type of a cluster's Host-HA switch (CloudStack keeps it as the
cluster detail ``resourceHAEnabled``)."""
ZONE = "Zone"
"""The resource type of a zone's Host-HA switch."""

_HEALTH_CHECKED = frozenset({HAState.AVAILABLE, HAState.SUSPECT, HAState.DEGRADED, HAState.FENCED})
_NOT_OWNED = frozenset({None, HAState.DISABLED, HAState.INELIGIBLE})

OnDown = Callable[[str, str, bool], None]
"""``on_down(host_id, reason, no_vm_runs)``: Host-HA reset or fenced the host; VM-HA takes it."""


@attrs.frozen
class HAExecutors:
    """The four executors: health checks, activity checks, recoveries, fences."""

    health: TaskExecutor
    activity: TaskExecutor
    recovery: TaskExecutor
    fence: TaskExecutor

    @classmethod
    def inline(cls, clock: Clock) -> HAExecutors:
        """Everything in the caller's thread, limits judged by ``clock`` (the simulator)."""
        run = InlineExecutor(clock)
        return cls(run, run, run, run)

    @classmethod
    def bounded(
        cls, settings: Settings, *, thread_factory: ThreadFactory = threading.Thread
    ) -> HAExecutors:
        """Thread pools sized by ``ha.max.concurrent.*`` and ``ha.max.pending.*``."""

        def pool(name: str, workers: int, pending: int) -> BoundedExecutor:
            return BoundedExecutor(
                f"HostHA-{name}", workers=workers, pending=pending, thread_factory=thread_factory
            )

        return cls(
            health=pool(
                "Health",
                settings.ha_max_concurrent_health_check_operations,
                settings.ha_max_pending_health_check_operations,
            ),
            activity=pool(
                "Activity",
                settings.ha_max_concurrent_activity_check_operations,
                settings.ha_max_pending_activity_check_operations,
            ),
            recovery=pool(
                "Recovery",
                settings.ha_max_concurrent_recovery_operations,
                settings.ha_max_pending_recovery_operations,
            ),
            fence=pool(
                "Fence",
                settings.ha_max_concurrent_fence_operations,
                settings.ha_max_pending_fence_operations,
            ),
        )

    def shutdown(self, timeout: float) -> None:
        for executor in {
            id(e): e for e in (self.health, self.activity, self.recovery, self.fence)
        }.values():
            executor.shutdown(timeout)


class HAManager:
    """Host-HA for the hosts of one management server (see the module docstring).

    Args:
        server_id: this management server (the owner it writes into ``ha_config``).
        store: the ``ha_config`` table.
        directory: the host inventory.
        providers: the providers, by their :attr:`~cloudha.ports.HAProvider.name`.
        clock: the only source of time.
        alerts: operator alerts (``ALERT.HA_ACTION``).
        recorder: where ``ha_state``, ``host_ha_recovery`` and ``host_ha_fence``
            evidence goes.
        executors: where checks, recoveries and fences run.
        on_down: called when Host-HA reset or fenced a host.
    """

    def __init__(
        self,
        *,
        server_id: str,
        store: SqlHAConfigStore,
        directory: HostDirectory,
        providers: Iterable[HAProvider],
        clock: Clock,
        alerts: AlertSink,
        recorder: Recorder,
        executors: HAExecutors,
        on_down: OnDown,
    ) -> None:
        self.server_id = server_id
        self.store = store
        self.follows: Callable[[Host], bool] | None = None
        """In a group of management servers: whether this server owns ``host``'s row. Then
        the host's owner runs its Host-HA, whatever server last wrote its ``ha_config``
        row (host ownership moves on takeover and rebalancing); None: CloudStack's
        "first writer wins" on ``ha_config.mgmt_server_id``."""
        self.directory = directory
        self.providers: Mapping[str, HAProvider] = {p.name: p for p in providers}
        self.clock = clock
        self.alerts = alerts
        self.recorder = recorder
        self.executors = executors
        self.on_down = on_down
        self._counters: dict[str, HAResourceCounter] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._fence_alerted: set[str] = set()
        self._lock = threading.RLock()

    # -- the operator's side ------------------------------------------------------

    def configure(self, host_id: str, provider: str) -> HAConfig:
        """Give ``host_id`` a Host-HA configuration with ``provider`` (disabled until
        :meth:`enable`).

        Raises:
            ConfigurationError: no such host, no such provider, or a provider
                for another kind of host; each names the host and the provider.
        """
        host = self.directory.find_host(host_id)
        if host is None:
            raise ConfigurationError(
                f"no host {host_id!r} in the directory", key="host", value=host_id
            )
        found = self.providers.get(provider)
        if found is None:
            raise ConfigurationError(
                f"no Host-HA provider {provider!r} (known: {sorted(self.providers)})",
                key="provider",
                value=provider,
            )
        if not found.supports(host):
            raise ConfigurationError(
                f"Host-HA provider {provider!r} does not support"
                f" {host.hypervisor} host {host_id!r}",
                key="provider",
                value=provider,
            )
        config = self.store.configure(host_id, provider)
        if config.state is None:
            config = self._move(config, HAEvent.DISABLED, "configured") or config
        return config

    def enable(self, host_id: str) -> HAConfig:
        """Switch Host-HA on for a configured host: Disabled → Available.

        Raises:
            ConfigurationError: the host has no Host-HA configuration.
        """
        config = self.store.set_enabled(host_id, True)
        if config is None:
            raise ConfigurationError(
                f"host {host_id!r} has no Host-HA configuration; configure it first",
                key="host",
                value=host_id,
            )
        if config.state in (None, HAState.DISABLED):
            config = self._move(config, HAEvent.ENABLED, "Host-HA enabled") or config
        return config

    def disable(self, host_id: str) -> HAConfig | None:
        """Switch Host-HA off for a host: Disabled, counters forgotten; the row, if any."""
        config = self.store.set_enabled(host_id, False)
        if config is not None and config.state is not HAState.DISABLED:
            config = self._move(config, HAEvent.DISABLED, "Host-HA disabled") or config
        self._forget(host_id)
        return config

    def set_scope_enabled(self, resource_type: str, scope_id: str, enabled: bool) -> int:
        """Switch Host-HA on or off for a whole cluster (:data:`CLUSTER`) or zone (:data:`ZONE`).

        A switch never set is on. Switching off moves every configured host
        of the scope to Disabled at once; switching on lets the next poll
        bring the hosts that are enabled themselves back to Available. The
        number of hosts moved.

        Raises:
            ConfigurationError: ``resource_type`` is neither.
        """
        if resource_type not in (CLUSTER, ZONE):
            raise ConfigurationError(
                f"Host-HA can be switched for a {CLUSTER} or a {ZONE}, not {resource_type!r}",
                key="resource_type",
                value=resource_type,
            )
        if self.store.find(scope_id, resource_type=resource_type) is None:
            self.store.configure(scope_id, "", resource_type=resource_type)
        self.store.set_enabled(scope_id, enabled, resource_type=resource_type)
        if enabled:
            return 0
        moved = 0
        for config in self.store.list():
            host = self.directory.find_host(config.resource_id)
            in_scope = (
                host is not None
                and (host.cluster if resource_type == CLUSTER else host.zone) == scope_id
            )
            if in_scope and config.state not in (None, HAState.DISABLED):
                done = self._move(config, HAEvent.DISABLED, f"Host-HA disabled for {scope_id}")
                moved += done is not None
                self._forget(config.resource_id)
        return moved

    def _scope_off(self, host: Host) -> str | None:
        """Why ``host``'s cluster or zone has Host-HA switched off; None when it has not."""
        for resource_type, scope_id in ((ZONE, host.zone), (CLUSTER, host.cluster)):
            if scope_id is None:
                continue
            switch = self.store.find(scope_id, resource_type=resource_type)
            if switch is not None and not switch.enabled:
                return f"Host-HA is disabled for {resource_type.lower()} {scope_id}"
        return None

    # -- the bridge to VM-HA ------------------------------------------------------

    def config_of(self, host_id: str) -> HAConfig | None:
        """The host's ``ha_config`` row, or None (also when the store does not answer)."""
        try:
            return self.store.find(host_id)
        except Exception as exc:
            log.warning("Host-HA config of %s unreadable: %s", host_id, exc)
            return None

    def owns(self, host: Host) -> bool:
        """Whether Host-HA looks after ``host`` (CloudStack ``isHAEligible``): its
        configuration is enabled and its state is neither Disabled nor Ineligible.

        A store that does not answer owns nothing: the regular path goes on.
        """
        config = self.config_of(host.id)
        if config is None or not config.enabled or config.state in _NOT_OWNED:
            return False
        try:
            return self._scope_off(host) is None
        except Exception as exc:
            log.warning("Host-HA switches of %s unreadable: %s", host.id, exc)
            return False

    # -- the poll loop ------------------------------------------------------------

    def tick(self) -> float:
        """One poll over every row this server may process; seconds until the next."""
        try:
            configs = self.store.list()
        except Exception as exc:
            log.warning("Host-HA poll: ha_config unreadable: %s", exc)
            return POLL_INTERVAL
        for config in configs:
            if self.follows is None and not config.owned_by(self.server_id):
                continue
            try:
                self._poll(config)
            except Exception:
                log.exception("Host-HA poll of %s failed", config.resource_id)
        return POLL_INTERVAL

    def stop(self, timeout: float) -> None:
        """Stop the executors and free this server's rows (CloudStack ``expireServerOwnership``)."""
        self.executors.shutdown(timeout)
        try:
            self.store.expire_ownership(self.server_id)
        except Exception:
            log.exception("freeing the Host-HA rows of %s failed", self.server_id)

    def _poll(self, config: HAConfig) -> None:
        host = self.directory.find_host(config.resource_id)
        if host is None:
            if config.enabled:
                self.store.set_enabled(config.resource_id, False)
            if config.state is not HAState.DISABLED:
                self._move(config, HAEvent.DISABLED, "the host is no longer in the directory")
            self._forget(config.resource_id)
            return
        if self.follows is not None and not self.follows(host):
            self._forget(host.id)  # another management server of the group owns the host
            return
        if not config.enabled:
            if config.state is not HAState.DISABLED:
                self._move(config, HAEvent.DISABLED, "Host-HA is disabled for the host")
            self._forget(host.id)
            return
        off = self._scope_off(host)
        if off is not None:
            if config.state is not HAState.DISABLED:
                self._move(config, HAEvent.DISABLED, off)
            self._forget(host.id)
            return
        if config.state in (None, HAState.DISABLED):
            moved = self._move(config, HAEvent.ENABLED, "Host-HA is enabled for the host")
            if moved is None:
                return
            config = moved
        provider = self.providers.get(config.provider or "")
        why = self._ineligible(host, provider)
        if why is not None:
            if config.state not in (HAState.INELIGIBLE, HAState.FENCED):
                # NOTE: a Fenced host stays Fenced (no Fenced + Ineligible, #11627).
                self._move(config, HAEvent.INELIGIBLE, why)
            return
        assert provider is not None
        if config.state is HAState.INELIGIBLE:
            moved = self._move(config, HAEvent.ELIGIBLE, "the provider can act on the host again")
            if moved is None:
                return
            config = moved
        self._steps(host, config, provider)

    def _ineligible(self, host: Host, provider: HAProvider | None) -> str | None:
        if provider is None:
            return "no such Host-HA provider"
        try:
            eligible = provider.supports(host) and provider.is_eligible(host)
        except Exception as exc:
            log.exception("Host-HA provider %s: eligibility of %s raised", provider.name, host.id)
            return f"eligibility check raised {type(exc).__name__}: {exc}"
        return None if eligible else f"{provider.name} cannot act on the host now"

    def _steps(self, host: Host, config: HAConfig, provider: HAProvider) -> None:
        """Spec §7.5 poll steps 4-9, each on the state the step before left."""
        cfg = provider.config
        counter = self._counter(host.id)
        now = self.clock.monotonic()
        if config.state in _HEALTH_CHECKED:
            self._submit("health", host, lambda: self._health_check(host, provider))
            found = self.store.find(host.id)
            if found is None:
                return
            config = found
        state = config.state
        if state is HAState.SUSPECT:
            with self._lock:
                due = counter.can_perform_activity_check(cfg.activity_check_interval, now)
            if due:
                self._move(config, HAEvent.PERFORM_ACTIVITY_CHECK, "the host is suspect")
        elif state is HAState.CHECKING:
            # A check lost with a restart: check again (CloudStack waits for ever).
            self._submit_activity(host, provider)
        elif state is HAState.DEGRADED:
            with self._lock:
                due = counter.can_recheck_activity(cfg.degraded_max_period, now)
            if due:
                self._move(
                    config, HAEvent.PERIODIC_RECHECK_RESOURCE_ACTIVITY, "degraded long enough"
                )
        elif state is HAState.RECOVERING:
            with self._lock:
                attempts = counter.recovery_attempts
            if attempts >= cfg.recover_failure_threshold:
                self._move(
                    config,
                    HAEvent.RECOVERY_OPERATION_THRESHOLD_EXCEEDED,
                    f"{attempts} recoveries failed",
                )
            else:
                self._move(config, HAEvent.RETRY_RECOVERY, "recovery not done yet")
        elif state is HAState.RECOVERED:
            with self._lock:
                counter.mark_recovery_started(now)
                done = counter.can_exit_recovery(cfg.recover_wait_period, now)
            if done and self._move(
                config, HAEvent.RECOVERY_WAIT_PERIOD_TIMEOUT, "the recovery wait is over"
            ):
                with self._lock:
                    counter.mark_recovery_completed()
        elif state is HAState.FENCING:
            self._move(config, HAEvent.RETRY_FENCING, "not fenced yet")

    # -- transitions ----------------------------------------------------------------

    def _move(self, config: HAConfig, event: HAEvent, reason: str) -> HAConfig | None:
        """Apply ``event``; the row after it, or None when another writer got there first.

        After a successful transition, entering Checking, Recovering or
        Fencing (or retrying them) starts the task of that state.
        """
        target = ha_transition(config.state, event)
        written = self.store.transition(config, event, self.server_id)
        if written is None:
            if target is not config.state or config.mgmt_server_id != self.server_id:
                log.info(
                    "Host-HA %s: %s not applied, the row changed meanwhile",
                    config.resource_id,
                    event,
                )
                return None
            written = config  # the owner's self-transition: nothing to write
        if written.state is not config.state:
            self.recorder.emit(
                "ha_state",
                host=config.resource_id,
                reason=reason,
                **{
                    "from": None if config.state is None else config.state.value,
                    "to": target.value,
                    "event": event.value,
                },
            )
        self._entered(written)
        return written

    def _entered(self, config: HAConfig) -> None:
        if config.state not in (HAState.CHECKING, HAState.RECOVERING, HAState.FENCING):
            return
        host = self.directory.find_host(config.resource_id)
        provider = self.providers.get(config.provider or "")
        if host is None or provider is None:
            return
        if config.state is HAState.CHECKING:
            self._submit_activity(host, provider)
        elif config.state is HAState.RECOVERING:
            counter = self._counter(host.id)
            with self._lock:
                ready = (
                    counter.recovery_attempts < provider.config.recover_failure_threshold
                    and counter.can_attempt_recovery()
                )
                if ready:
                    counter.recovery_begun()
            if ready and not self._submit("recovery", host, lambda: self._recover(host, provider)):
                with self._lock:
                    counter.recovery_in_flight = False
        else:
            counter = self._counter(host.id)
            with self._lock:
                ready = counter.can_attempt_fencing()
                if ready:
                    counter.fence_begun()
            if ready and not self._submit("fence", host, lambda: self._fence(host, provider)):
                with self._lock:
                    counter.fence_in_flight = False

    def _submit_activity(self, host: Host, provider: HAProvider) -> None:
        self._submit("activity", host, lambda: self._activity_check(host, provider))

    def _submit(self, kind: str, host: Host, task: Callable[[], None]) -> bool:
        """Run ``task`` on the ``kind`` executor unless one of that kind runs for the host."""
        key = (host.id, kind)
        with self._lock:
            if key in self._in_flight:
                return False
            self._in_flight.add(key)

        def run() -> None:
            try:
                task()
            finally:
                with self._lock:
                    self._in_flight.discard(key)

        executor: TaskExecutor = getattr(self.executors, kind)
        try:
            accepted = executor.submit(run)
        except Exception:
            log.exception("Host-HA %s task of %s could not be submitted", kind, host.id)
            accepted = False
        if not accepted:
            with self._lock:
                self._in_flight.discard(key)
        return accepted

    def _call(self, kind: str, host: Host, fn: Callable[[], T], timeout: float) -> T | None:
        """``fn`` within ``timeout`` on the ``kind`` executor; None when it raised or timed out."""
        executor: TaskExecutor = getattr(self.executors, kind)
        try:
            return executor.call(fn, timeout)
        except HACheckError:
            raise
        except Exception as exc:
            log.warning("Host-HA %s of %s failed: %s: %s", kind, host.id, type(exc).__name__, exc)
            return None

    def _current(self, host_id: str) -> HAConfig | None:
        config = self.store.find(host_id)
        if config is None or not config.enabled:
            return None
        if self.follows is None:
            return config if config.owned_by(self.server_id) else None
        host = self.directory.find_host(host_id)
        return config if host is not None and self.follows(host) else None

    def _late(self, config: HAConfig, event: HAEvent, what: str) -> bool:
        """A result the state has moved past (CloudStack #8326): dropped, and said so."""
        if (config.state, event) in HA_TRANSITIONS:
            return False
        log.info(
            "Host-HA %s: %s result dropped, the host is %s now",
            config.resource_id,
            what,
            config.state,
        )
        return True

    # -- the tasks --------------------------------------------------------------------

    def _health_check(self, host: Host, provider: HAProvider) -> None:
        healthy = self._call(
            "health",
            host,
            lambda: provider.is_healthy(host),
            provider.config.health_check_timeout,
        )
        config = self._current(host.id)
        if config is None:
            return
        event = HAEvent.HEALTH_CHECK_PASSED if healthy else HAEvent.HEALTH_CHECK_FAILED
        if self._late(config, event, "health check"):
            return
        reason = "health check passed" if healthy else "health check failed"
        self._move(config, event, reason)
        counter = self._counter(host.id)
        with self._lock:
            if healthy:
                counter.reset_after_health()
                self._fence_alerted.discard(host.id)
            else:
                counter.mark_suspected(self.clock.monotonic())

    def _activity_check(self, host: Host, provider: HAProvider) -> None:
        cfg = provider.config
        counter = self._counter(host.id)
        mono = self.clock.monotonic()
        with self._lock:
            since = counter.suspect_time(mono)
        suspect_epoch = self.clock.now().timestamp() - (mono - since)
        try:
            activity = self._call(
                "activity",
                host,
                lambda: provider.has_activity(host, suspect_epoch),
                cfg.activity_check_timeout,
            )
        except HACheckError as exc:
            config = self._current(host.id)
            if config is not None and not self._late(config, HAEvent.INELIGIBLE, "activity check"):
                self._move(config, HAEvent.INELIGIBLE, f"activity cannot be checked: {exc}")
            with self._lock:
                counter.reset_activity()
            return
        config = self._current(host.id)
        if config is None or config.state is not HAState.CHECKING:
            if config is not None:
                log.info("Host-HA %s: activity result dropped, now %s", host.id, config.state)
            return
        with self._lock:
            counter.record_activity_check(failed=activity is False)
            checks, failures = counter.activity_checks, counter.activity_failures
            if not counter.has_enough_samples(cfg.activity_check_max_attempts):
                event = HAEvent.TOO_FEW_ACTIVITY_CHECK_SAMPLES
            elif counter.activity_threshold_exceeded(cfg.activity_check_failure_ratio):
                event = HAEvent.ACTIVITY_CHECK_FAILURE_OVER_THRESHOLD_RATIO
            else:
                event = HAEvent.ACTIVITY_CHECK_FAILURE_UNDER_THRESHOLD_RATIO
            if event is not HAEvent.TOO_FEW_ACTIVITY_CHECK_SAMPLES:
                counter.reset_activity()
            if event is HAEvent.ACTIVITY_CHECK_FAILURE_UNDER_THRESHOLD_RATIO:
                counter.mark_degraded(self.clock.monotonic())
        said = {True: "activity seen", False: "no activity", None: "cannot tell"}[activity]
        self._move(
            config,
            event,
            f"{said}; {failures} of {checks} samples without activity (needs"
            f" {cfg.activity_check_max_attempts}, ratio {cfg.activity_check_failure_ratio:g})",
        )

    def _recover(self, host: Host, provider: HAProvider) -> None:
        counter = self._counter(host.id)
        try:
            done = self._call(
                "recovery", host, lambda: provider.recover(host), provider.config.recover_timeout
            )
        finally:
            with self._lock:
                counter.recovery_ended()
        done = bool(done)
        self.recorder.emit(
            "host_ha_recovery",
            host=host.id,
            reason="reset through out-of-band management"
            if done
            else "the recovery (reset) failed",
            recovered=done,
            provider=provider.name,
        )
        self._alert(host, f"HA Recovery of host {host.id} " + ("performed" if done else "failed"))
        if not done:
            return
        config = self._current(host.id)
        if config is None or self._late(config, HAEvent.RECOVERED, "recovery"):
            return
        if self._move(config, HAEvent.RECOVERED, "the host was reset") is not None:
            self._hand_over(host, "Host-HA reset the host: its VMs died with the reset", True)

    def _fence(self, host: Host, provider: HAProvider) -> None:
        counter = self._counter(host.id)
        fenced = proven = False
        try:
            fenced = bool(
                self._call(
                    "fence", host, lambda: provider.fence(host), provider.config.fence_timeout
                )
            )
            if not fenced:
                proven = bool(
                    self._call(
                        "fence",
                        host,
                        lambda: provider.proves_dead(host),
                        provider.config.health_check_timeout,
                    )
                )
        finally:
            with self._lock:
                counter.fence_ended(fenced=fenced or proven)
        if fenced:
            how = "the power was read back Off"
        elif proven:
            how = "the fence failed, but the storage heartbeat proves the host dead"
        else:
            how = "the fence failed and nothing proves the host dead; retried every poll"
        self.recorder.emit(
            "host_ha_fence",
            host=host.id,
            reason=how,
            fenced=fenced,
            proven=proven,
            provider=provider.name,
        )
        if not (fenced or proven):
            with self._lock:
                first = host.id not in self._fence_alerted
                self._fence_alerted.add(host.id)
            if first:
                self._alert(host, f"HA Fencing of host {host.id} failed", how)
            return
        with self._lock:
            self._fence_alerted.discard(host.id)
        self._alert(host, f"HA Fencing of host {host.id} performed", how)
        config = self._current(host.id)
        if config is None or self._late(config, HAEvent.FENCED, "fence"):
            return
        if self._move(config, HAEvent.FENCED, how) is not None:
            self._hand_over(host, f"Host-HA fenced the host: {how}", fenced)

    # -- helpers ----------------------------------------------------------------------

    def _hand_over(self, host: Host, reason: str, no_vm_runs: bool) -> None:
        try:
            self.on_down(host.id, reason, no_vm_runs)
        except Exception:
            # NOTE: the host stays Recovered/Fenced; the Host-HA bridge makes its next
            # investigation Down, so the VMs still get their HA.
            log.exception("handing %s over to VM-HA failed", host.id)

    def _alert(self, host: Host, subject: str, body: str = "") -> None:
        try:
            self.alerts.send(
                Alert(AlertType.HA_ACTION, subject, body, host.id, zone=host.zone, pod=host.pod)
            )
        except Exception:
            log.exception("alert %r failed", subject)

    def _counter(self, host_id: str) -> HAResourceCounter:
        with self._lock:
            found = self._counters.get(host_id)
            if found is None:
                found = self._counters[host_id] = HAResourceCounter()
            return found

    def _forget(self, host_id: str) -> None:
        with self._lock:
            self._counters.pop(host_id, None)
            self._fence_alerted.discard(host_id)

    def __repr__(self) -> str:
        return f"HAManager({self.server_id!r}, providers={sorted(self.providers)})"
