"""The HA manager: schedules VM HA work and runs the workers that carry it out.

:class:`HighAvailabilityManager` is CloudStack's ``HighAvailabilityManagerImpl``
(spec §3.3-§3.7) over a :class:`~cloudha.ports.WorkStore` (the SQL
:class:`~cloudha.ha.store.SqlWorkStore` in production):

* the scheduling API (:meth:`~HighAvailabilityManager.schedule_restart_for_vms_on_host`,
  :meth:`~HighAvailabilityManager.schedule_restart`,
  :meth:`~HighAvailabilityManager.schedule_stop`,
  :meth:`~HighAvailabilityManager.schedule_migration`,
  :meth:`~HighAvailabilityManager.schedule_destroy`, cancellation and the
  pending-work questions) writes rows and wakes the workers;
* :meth:`~HighAvailabilityManager.process_next` claims one due work and
  carries it out (``processWork``): restart, migrate, stop or destroy, as
  the pure functions of :mod:`cloudha.ha.decisions` decide; the handlers
  here carry out the effects. The workers are the
  :meth:`~HighAvailabilityManager.loops` (``ha.workers`` of them on
  :meth:`~HighAvailabilityManager.work_tick`, and the cleanup), which
  :meth:`~HighAvailabilityManager.start` runs on :class:`~cloudha.runtime.Pump`
  threads; tests and the simulator call them directly on virtual time.
  Alerts and evidence go through one :class:`~cloudha.ha.notifier.Notifier`,
  which never raises.

Deliberate differences from CloudStack (docs/design/differences.md), each tested:

* one clock in float seconds: ``time.between.failures`` is an hour when it
  says 3600, both for the "recent failure" window and for the cleanup;
* look-ups of a VM's other HA works filter on the work *type* (CloudStack
  filters the ``vm_type`` column with "HA" and so never finds any);
* the VM snapshot the work compares against is retaken after the worker's
  own actions on the VM (its forced stop, a failed start) and after an
  exception, and only then, so a VM changed by the worker itself is
  retried, not given up (CloudStack #13510), even after a crash between
  the stop and the start, while a change by anybody else still ends the
  work;
* before every action outside the database (fence, stop, start, migrate,
  destroy) the worker checks that it still holds the work: a worker stuck
  long enough to lose its claim acts no further;
* a restart needs a DEAD verdict from the investigators or a confirmed fence
  (:meth:`~cloudha.fencing.chain.FenceChain.fence_off`); a work scheduled
  without investigation whose forced stop failed is investigated anyway;
* each start carries the claim's fencing token (``generation``), so a late
  or duplicate worker cannot start the VM twice;
* VMs in state Error are not restarted (CloudStack #13785); a VM the work
  already stopped, found Investigating again after a server restart, is
  restarted (CloudStack ends that work and leaves the VM down);
* a work that uses up ``vm.ha.migration.max.retries`` ends in step Error
  with an alert, not silently in Done; a row edited by hand to values
  cloudha does not know, a work for an unknown VM (but a Destroy) or an
  unknown host is logged, marked Error and alerted, and the queue goes on;
* :meth:`~HighAvailabilityManager.stop` hands this server's unfinished works
  back at once (CloudStack waits for the server's next start).
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

import attrs
import tenacity

from cloudha.clock import Clock
from cloudha.errors import (
    CloudHAError,
    ConfigurationError,
    LifecycleError,
    ProbeError,
    StoreUnavailableError,
)
from cloudha.evidence import EvidenceSink
from cloudha.fencing.chain import FenceChain
from cloudha.ha.decisions import (
    DECISIONS,
    NEEDS_HISTORY,
    DestroyVm,
    Fence,
    Finish,
    GiveUp,
    Inputs,
    MigrateVm,
    Outcome,
    Policy,
    Proceed,
    Restart,
    Retry,
    StopVm,
    alert_type,
    conclude,
    decide_fence,
    decide_last_look,
    decide_no_room,
    decide_start,
    decide_start_failed,
    decide_started,
    decide_verdict,
    host_is_down,
    is_cancellable,
    retry_interval,
    start_plan,
    vm_missing,
)
from cloudha.ha.notifier import Notifier
from cloudha.ha.orchestrator import (
    InsufficientCapacityError,
    Planner,
    StartParams,
    UnknownVmError,
    VmOrchestrator,
)
from cloudha.ha.work import (
    StaleWorkError,
    Step,
    UnreadableWorkError,
    Work,
    WorkType,
)
from cloudha.investigators.base import HOST_HA_BRIDGE
from cloudha.investigators.chain import InvestigatorChain
from cloudha.model import (
    HA_PRIORITY_LIMIT,
    AlertType,
    Host,
    HostType,
    HypervisorType,
    ReasonType,
    Vm,
    VmState,
)
from cloudha.ports import AlertSink, HostDirectory, MigrationFailureSink, WorkStore
from cloudha.runtime import Loop, Pump, ThreadFactory
from cloudha.settings import Settings
from cloudha.status import Status

__all__ = [
    "CANCELLABLE_REASONS",
    "SYSTEM_VM_PRIORITY",
    "HighAvailabilityManager",
    "WorkResult",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_O = TypeVar("_O", bound=Finish | Retry)

CANCELLABLE_REASONS: Final = frozenset(
    {ReasonType.HOST_MAINTENANCE, ReasonType.HOST_DOWN, ReasonType.HOST_DEGRADED}
)
"""Reasons whose Investigating works are cancelled when their host is found Up again."""

SYSTEM_VM_PRIORITY: Final = 2 * HA_PRIORITY_LIMIT + 1
"""Added to a system VM's work priority, so every system VM comes before every user VM."""

_NO_HA_HYPERVISORS: Final = frozenset({HypervisorType.VMWARE, HypervisorType.HYPERV})
_STOP_TYPES: Final = frozenset({WorkType.STOP, WorkType.CHECK_STOP, WorkType.FORCE_STOP})
_UNREADABLE_LIMIT: Final = 1000
_DB_ATTEMPTS: Final = 5


class WorkResult(enum.Enum):
    """What processing one work ended in."""

    DONE = "Done"
    CANCELLED = "Cancelled"
    ERROR = "Error"
    RESCHEDULED = "Rescheduled"
    GAVE_UP = "GaveUp"
    LOST = "Lost"
    """The claim was taken away meanwhile (released, claimed again): nothing was written."""

    def __str__(self) -> str:
        return self.value


def _pause(clock: Clock, idle: threading.Event, seconds: float) -> None:
    clock.wait(idle, seconds)


def _restart_priority(vm: Vm) -> int:
    return (SYSTEM_VM_PRIORITY if vm.type.is_system else 0) + vm.ha_priority


class HighAvailabilityManager:
    """VM HA work queue of one management server (spec §3).

    Args:
        server_id: this management server's id (``mgmt_server_id`` of its claims).
        store: the work queue; several managers (processes, servers) may share it.
        orchestrator: the VM manager that finds, stops, starts, migrates and
            destroys VMs.
        directory: the host table.
        investigators: asked whether a host is Up (:meth:`investigate`) and
            whether a VM is alive (:meth:`process_next`).
        fence_chain: fences a VM off its host when the investigators cannot tell.
        settings: global settings (the §3.8 keys).
        clock: the only source of time.
        alerts: where operator alerts go.
        evidence: where ``ha_work`` evidence goes (one record per step change).
        zone_settings: per-zone overrides for the zone-scoped keys
            (``vm.ha.enabled``, ``vm.ha.alerts.enabled``); a zone not listed
            uses ``settings``.
        resource_manager: told when a migration off a host finds no room
            (spec §3.7 ``migrateAwayFailed``); None: only the alert.
        thread_factory: makes the worker and cleanup threads.

    Thread-safe: scheduling calls and :meth:`process_next` may run from any
    number of threads. Exceptions from the orchestrator during scheduling
    propagate to the caller (nothing is written then), except a forced stop
    that :meth:`schedule_restart` makes itself (logged; the work is then
    investigated before any restart).
    """

    def __init__(
        self,
        *,
        server_id: str,
        store: WorkStore,
        orchestrator: VmOrchestrator,
        directory: HostDirectory,
        investigators: InvestigatorChain,
        fence_chain: FenceChain,
        settings: Settings,
        clock: Clock,
        alerts: AlertSink,
        evidence: EvidenceSink | None = None,
        zone_settings: Mapping[str, Settings] | None = None,
        resource_manager: MigrationFailureSink | None = None,
        thread_factory: ThreadFactory = threading.Thread,
    ) -> None:
        if not isinstance(server_id, str) or not server_id:
            raise ConfigurationError("server_id must be a non-empty string", key="server_id")
        self.server_id = server_id
        self.store = store
        self.orchestrator = orchestrator
        self.directory = directory
        self.investigators = investigators
        self.fence_chain = fence_chain
        self.settings = settings
        self.clock = clock
        self.notifier = Notifier(alerts, evidence, clock, server_id)
        # HA works of VMs that crashed alone on an Up host, by work id: that host (in place).
        self._in_place: dict[int, str] = {}
        self._in_place_lock = threading.Lock()
        """Where every alert and piece of ``ha_work`` evidence goes; it never raises."""
        self._zone_settings = dict(zone_settings or {})
        self.resource_manager = resource_manager
        self._factory = thread_factory
        self._pumps: list[Pump] = []
        self.on_work_added: Callable[[], None] | None = None
        """Called (after this server's own pumps are woken) whenever new work is
        committed or works are released: a simulator sets it to wake its
        virtual workers. It must not raise (an exception is logged)."""
        self._state = "new"
        self._lock = threading.Lock()

    # -- settings ---------------------------------------------------------------

    def settings_for_zone(self, zone: str | None) -> Settings:
        """The settings that hold in ``zone`` (the overrides given, else the global ones)."""
        if zone is None:
            return self.settings
        return self._zone_settings.get(zone, self.settings)

    def _zone_of(self, vm: Vm | None, host_id: str | None = None) -> str | None:
        if vm is not None and vm.zone is not None:
            return vm.zone
        for candidate in (
            host_id,
            None if vm is None else vm.host_id,
            None if vm is None else vm.last_host_id,
        ):
            if candidate is not None:
                host = self.directory.find_host(candidate)
                if host is not None:
                    return host.zone
        return None

    def _ha_enabled(self, zone: str | None) -> bool:
        return self.settings_for_zone(zone).vm_ha_enabled

    def _ha_disabled_alert(self, zone: str | None, what: str) -> None:
        log.warning("VM HA is disabled in zone %s: %s", zone, what)
        if self.settings_for_zone(zone).vm_ha_alerts_enabled:
            self._alert(AlertType.HA_ACTION, f"VM HA is disabled in zone {zone}", what, zone=zone)

    @property
    def alerts(self) -> AlertSink:
        """The alert sink (the notifier's; assigning replaces it)."""
        return self.notifier.alerts

    @alerts.setter
    def alerts(self, sink: AlertSink) -> None:
        self.notifier.alerts = sink

    def _alert(
        self,
        type: AlertType,
        subject: str,
        body: str = "",
        *,
        host: Host | None = None,
        zone: str | None = None,
    ) -> None:
        self.notifier.alert(type, subject, body, host=host, zone=zone)

    def _emit(
        self, work: Work, step: Step | str, reason: str, **details: str | int | float
    ) -> None:
        self.notifier.work(work, step, reason, **details)

    # -- hosts -----------------------------------------------------------------

    def investigate(self, host_id: str | None) -> Status | None:
        """Host-level investigation (spec §3.3): Up, Down, Disconnected, Alert or None.

        An unknown host is ``Alert``; a host whose zone has VM HA disabled is
        ``Alert`` (with an alert when ``vm.ha.alerts.enabled``); otherwise
        the investigator chain's first decisive outcome, None when no
        investigator could tell.
        """
        host = None if host_id is None else self.directory.find_host(host_id)
        if host is None:
            return Status.ALERT
        if not self._ha_enabled(host.zone):
            self._ha_disabled_alert(host.zone, f"host {host.id} was not investigated")
            return Status.ALERT
        return self.investigators.investigate_host(host).status

    # -- reading the store -----------------------------------------------------

    def _claim_lost(self, work: Work, when: str) -> None:
        """Record that a write about ``work`` was refused: the claim is no longer ours."""
        self.notifier.evidence(
            "ownership_lost",
            vm=work.instance_id,
            host=work.host_id,
            reason=(
                f"HA work {work.id} ({work.type}) was released or claimed by another "
                f"management server {when}"
            ),
            work=work.id,
            generation=work.generation,
        )

    def _quarantine(self, exc: UnreadableWorkError) -> None:
        log.error(
            "HA work %s cannot be read (%s); marking it Error so the queue goes on",
            exc.work_id,
            exc,
        )
        self.store.mark_error(exc.work_id)
        self.notifier.evidence(
            "ha_work", reason=f"unreadable row: {exc}", work=exc.work_id, step=str(Step.ERROR)
        )

    def _read(self, query: Callable[[], _T]) -> _T:
        """Run a store query, marking hand-edited rows Error until it reads cleanly."""
        for _ in range(_UNREADABLE_LIMIT):
            try:
                return query()
            except UnreadableWorkError as exc:
                self._quarantine(exc)
        return query()

    def _db(self, call: Callable[[], _T]) -> _T:
        """Run a store call, retrying transient database errors with backoff on our clock."""
        idle = threading.Event()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(_DB_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(StoreUnavailableError),
            sleep=functools.partial(_pause, self.clock, idle),
            before_sleep=lambda state: log.warning(
                "database error (attempt %d), retrying: %s",
                state.attempt_number,
                None if state.outcome is None else state.outcome.exception(),
            ),
            reraise=True,
        )
        return retrying(call)

    # -- scheduling (spec §3.4) --------------------------------------------------

    def _can_schedule_new(self, work: Work) -> bool:
        """CloudStack ``canScheduleNew(time.between.failures)``, in seconds."""
        return work.time_to_try + self.settings.time_between_failures < self._now()

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def schedule_restart_for_vms_on_host(
        self, host: Host, *, investigate: bool, reason: ReasonType
    ) -> None:
        """Schedule an HA restart for every VM on ``host`` (spec §3.4).

        Only Routing hosts; never VMware or Hyper-V hosts (their own HA
        does it). A VM whose latest pending HA work still has attempts left,
        or failed less than ``time.between.failures`` ago, is skipped; system
        VMs are scheduled before user VMs; VMs that cannot restart on another
        server (local storage) and VMs that have meanwhile moved are skipped.
        One ``Host is down`` alert lists the HA-enabled VMs, unless every VM
        was skipped (a duplicate call).
        """
        if host.type is not HostType.ROUTING:
            return
        if host.hypervisor in _NO_HA_HYPERVISORS:
            log.info("host %s is %s: its own HA restarts its VMs", host.id, host.hypervisor)
            return
        if not self._ha_enabled(host.zone):
            self._ha_disabled_alert(host.zone, f"VMs of host {host.id} were not scheduled")
            return
        vms = self.orchestrator.list_vms_on_host(host.id)
        latest: dict[str, Work] = {}
        for work in self._read(lambda: self.store.pending_ha_for_host(host.id)):
            latest[work.instance_id] = work  # oldest first: the last one wins
        max_retries = self.settings.vm_ha_migration_max_retries
        chosen: list[Vm] = []
        for vm in vms:
            previous = latest.get(vm.id)
            if previous is not None and (
                previous.tried < max_retries or not self._can_schedule_new(previous)
            ):
                log.info("%s already has HA work %s; skipped", vm.id, previous)
                continue
            chosen.append(vm)
        if not chosen:
            return
        chosen.sort(key=lambda v: (not v.type.is_system, -v.ha_priority, v.id))
        force = self.settings.force_ha
        names = [v.name for v in chosen if force or v.ha_enabled]
        self._alert(
            AlertType.HOST,
            f"Host is down, {host.name} ({host.id})",
            "HA-enabled VMs to restart: " + (", ".join(names) if names else "none"),
            host=host,
        )
        history: dict[str, list[Work]] = {vm.id: [] for vm in chosen}
        for work in self._read(lambda: self.store.works_for_vms(history)):
            history[work.instance_id].append(work)
        for vm in chosen:
            if not self.orchestrator.can_restart_on_another_server(vm):
                log.info("%s has local storage: it cannot be restarted elsewhere", vm.id)
                continue
            current = self.orchestrator.find_vm(vm.id)
            if current is None:
                continue
            if current.host_id is not None and current.host_id != host.id:
                log.info("%s is now on host %s; skipped", vm.id, current.host_id)
                continue
            self._schedule_restart(current, investigate, reason, history[vm.id])

    def schedule_restart(
        self, vm: Vm, *, investigate: bool, reason: ReasonType = ReasonType.UNKNOWN
    ) -> Work | None:
        """Schedule an HA restart of ``vm`` (spec §3.4 ``scheduleRestart``); the work, or None.

        ``investigate=False`` means the caller knows the VM is not running
        (maintenance, a degraded host): the VM is force-stopped at once and
        the work starts at step Scheduled. Otherwise the worker first asks the
        investigators and, if needed, fences (step Investigating).
        """
        return self._schedule_restart(vm, investigate, reason, None)

    def _schedule_restart(
        self,
        vm: Vm,
        investigate: bool,
        reason: ReasonType,
        history: Sequence[Work] | None,
    ) -> Work | None:
        """``schedule_restart``; ``history``: the VM's works when the caller read them already."""
        zone = self._zone_of(vm)
        if not self._ha_enabled(zone):
            self._ha_disabled_alert(zone, f"VM {vm.id} was not scheduled for a restart")
            return None
        if vm.state is VmState.ERROR:
            log.warning("%s is in state Error: not scheduled for an HA restart", vm.id)
            return None
        step = Step.INVESTIGATING if investigate else Step.SCHEDULED
        stopped = False
        if vm.host_id is None:
            stopped = True
            if not self._stop_for_schedule(vm):
                step = Step.INVESTIGATING
        if vm.hypervisor in _NO_HA_HYPERVISORS:
            return None
        if not investigate:
            if not (self.settings.force_ha or vm.ha_enabled):
                self._alert(
                    alert_type(vm.type),
                    f"VM {vm.name} ({vm.id}) stopped unexpectedly",
                    f"host {vm.host_id or vm.last_host_id}; the VM is not HA-enabled",
                    zone=zone,
                )
            stopped = True
            if not self._stop_for_schedule(vm):
                step = Step.INVESTIGATING
        if stopped:
            # The work compares against the VM as our own stop left it.
            vm = self.orchestrator.find_vm(vm.id) or vm
        tried = self._inherited_tries(vm.id, history)
        host_id = vm.host_id or vm.last_host_id
        work = self._db(
            lambda: self.store.add(
                vm.id,
                WorkType.HA,
                vm.state,
                vm_type=vm.type,
                step=step,
                host_id=host_id,
                reason=reason,
                tried=tried,
                updated=vm.updated,
                priority=_restart_priority(vm),
            )
        )
        self._emit(work, step, f"scheduled ({reason})")
        self.wakeup()
        return work

    def _stop_for_schedule(self, vm: Vm) -> bool:
        try:
            self.orchestrator.advance_stop(vm, force=True)
        except CloudHAError as exc:
            log.warning("forced stop of %s failed (%s); the work investigates first", vm.id, exc)
            return False
        return True

    def _inherited_tries(self, vm_id: str, history: Sequence[Work] | None) -> int:
        """Attempts of a recent failed restart of the VM (spec §3.4 step 5)."""
        if history is None:
            history = self._read(lambda: self.store.works_for_vm(vm_id))
        for work in reversed(history):
            if work.type is WorkType.HA and work.tried > 0 and not self._can_schedule_new(work):
                return work.tried
        return 0

    def schedule_stop(
        self, vm: Vm, host_id: str | None, type: WorkType, reason: ReasonType
    ) -> bool:
        """Schedule a Stop, CheckStop or ForceStop of ``vm``; False when one is already queued."""
        if type not in _STOP_TYPES:
            raise ValueError(f"schedule_stop takes Stop, CheckStop or ForceStop, not {type}")
        zone = self._zone_of(vm, host_id)
        if not self._ha_enabled(zone):
            self._ha_disabled_alert(zone, f"{type} of VM {vm.id} was not scheduled")
            return False
        if self._db(lambda: self.store.has_been_scheduled(vm.id, type)):
            return False
        return self._add(vm, type, host_id, reason)

    def schedule_migration(self, vm: Vm, reason: ReasonType) -> bool:
        """Schedule a migration of ``vm`` off its host; False when it has no host or HA is off."""
        if vm.host_id is None:
            return False
        zone = self._zone_of(vm)
        if not self._ha_enabled(zone):
            self._ha_disabled_alert(zone, f"migration of VM {vm.id} was not scheduled")
            return False
        return self._add(vm, WorkType.MIGRATION, vm.host_id, reason)

    def schedule_destroy(self, vm: Vm, host_id: str | None, reason: ReasonType) -> bool:
        """Schedule the destruction of ``vm``; False when VM HA is off in its zone."""
        zone = self._zone_of(vm, host_id)
        if not self._ha_enabled(zone):
            self._ha_disabled_alert(zone, f"destruction of VM {vm.id} was not scheduled")
            return False
        return self._add(vm, WorkType.DESTROY, host_id, reason)

    def _add(self, vm: Vm, type: WorkType, host_id: str | None, reason: ReasonType) -> bool:
        work = self._db(
            lambda: self.store.add(
                vm.id,
                type,
                vm.state,
                vm_type=vm.type,
                host_id=host_id,
                reason=reason,
                updated=vm.updated,
                priority=_restart_priority(vm),
            )
        )
        self._emit(work, Step.SCHEDULED, f"scheduled ({reason})")
        self.wakeup()
        return True

    def cancel_destroy(self, vm: Vm) -> int:
        """Delete the VM's queued (untaken) Destroy works; how many."""
        return self._db(lambda: self.store.delete_untaken(vm.id, WorkType.DESTROY))

    def cancel_scheduled_migrations(self, host: Host) -> int:
        """Cancel the host's queued migrations (Stop works for Storage hosts); how many."""
        types = [WorkType.STOP] if host.type is HostType.STORAGE else [WorkType.MIGRATION]
        return self._db(lambda: self.store.cancel_untaken(host.id, types, self.server_id))

    def has_pending_ha_work(self, vm_id: str) -> bool:
        """True while the VM has an HA (restart) work that is not Done, Cancelled or Error."""
        works = self._read(lambda: self.store.pending_for_vm(vm_id))
        return any(w.type is WorkType.HA for w in works)

    def ha_work_owns_vm(self, vm_id: str, up_host_id: str) -> bool:
        """True while the VM has a pending HA work that ``up_host_id`` being Up does not end.

        An Investigating work of a cancellable reason (:data:`CANCELLABLE_REASONS`)
        on ``up_host_id`` is cancelled once it is processed (``checkAndCancelWorkIfNeeded``):
        it does not own the VM, and a VM sync of that host must still stop a VM
        the host came back without (and :meth:`on_vm_powered_off` schedules the
        restart that supersedes the old work).
        """
        works = self._read(lambda: self.store.pending_for_vm(vm_id))
        return any(
            w.type is WorkType.HA
            and not (w.host_id == up_host_id and is_cancellable(w, CANCELLABLE_REASONS))
            for w in works
        )

    def has_pending_migrations_work(self, vm_id: str) -> bool:
        """True while the VM has a pending migration with attempts left."""
        works = self._read(lambda: self.store.pending_for_vm(vm_id))
        limit = self.settings.vm_ha_migration_max_retries
        return any(w.type is WorkType.MIGRATION and w.tried <= limit for w in works)

    def on_vm_powered_off(
        self, vm: Vm, up_host_id: str | None = None, *, in_place: bool = False
    ) -> Work | None:
        """A VM was found powered off behind our back on an Up host (``ha.vm.restart.hostup``).

        Schedules an investigated restart of an HA VM that has no pending HA
        work; otherwise does nothing and returns None. ``up_host_id``: the
        host seen Up that did not report the VM (a VM sync). A cancellable
        Investigating work on that host does not count as pending
        (:meth:`ha_work_owns_vm`): the new work supersedes it, so the VM is
        restarted even when that work is never cancelled (its host's
        investigation cannot say Up, e.g. no neighbour to ask) and ends as
        "the VM has been changed" instead.

        ``in_place``: the VM crashed alone on ``up_host_id``, which stayed
        Up and connected (a VM sync of a ping report): with
        ``cloudha.vm.restart.in.place`` its restart tries that host first
        (:attr:`StartParams.prefer_host`), elsewhere when it has no room. The
        wish is kept in memory: after a management server restart the VM
        restarts wherever the planner puts it.
        """
        if not self.settings.ha_vm_restart_hostup:
            return None
        if not (vm.ha_enabled or self.settings.force_ha):
            return None
        if up_host_id is None:
            if self.has_pending_ha_work(vm.id):
                return None
        elif self.ha_work_owns_vm(vm.id, up_host_id):
            return None
        work = self.schedule_restart(vm, investigate=True, reason=ReasonType.UNKNOWN)
        if (
            work is not None
            and in_place
            and up_host_id is not None
            and self.settings.cloudha_vm_restart_in_place
        ):
            with self._in_place_lock:
                self._in_place[work.id] = up_host_id
        return work

    # -- processing (spec §3.5-§3.7) -------------------------------------------------

    def process_next(self) -> WorkResult | None:
        """Claim one due work and carry it out; None when nothing was due.

        A hand-edited row that cannot be read is marked Error
        (:attr:`WorkResult.ERROR`); an exception from a handler reschedules
        the work with its type's interval.
        """
        try:
            work = self._db(lambda: self.store.claim(self.server_id))
        except UnreadableWorkError as exc:
            self._quarantine(exc)
            return WorkResult.ERROR
        if work is None:
            return None
        return self.process(work)

    def process(self, work: Work) -> WorkResult:
        """Carry out one claimed ``work`` (CloudStack ``processWork``).

        The decisions are the pure functions of :mod:`cloudha.ha.decisions`
        (the first one from :data:`~cloudha.ha.decisions.DECISIONS`, by work
        type); this method and its handlers read their inputs and carry out
        the effects they ask for.
        """
        holder = _Holder(work)
        policy = Policy.from_settings(self.settings)
        try:
            vm = self.orchestrator.find_vm(work.instance_id)
            outcome: Outcome
            if vm is None:
                outcome = vm_missing(work)
            elif not self._ha_enabled(self._zone_of(vm, work.host_id)):
                outcome = Retry(
                    "VM HA is disabled in the VM's zone",
                    at=self._now() + retry_interval(work.type, policy),
                )
            elif self._cancelled_by_host_up(work, vm):
                outcome = Finish(f"host {work.host_id} is Up again", Step.CANCELLED)
            else:
                outcome = self._decide_and_act(holder, vm, policy)
        except StaleWorkError:
            log.warning("%s: our claim was taken away while we worked on it", work)
            self._claim_lost(work, "while this server worked on it; it acts no further")
            return WorkResult.LOST
        except Exception as exc:
            log.exception("%s failed", work)
            holder.acted = True  # it may have failed half-way through an action on the VM
            # A port that does not answer (ProbeError) is waited for, never given up on.
            outcome = Retry(
                f"failed: {type(exc).__name__}: {exc}",
                at=self._now() + retry_interval(work.type, policy),
                waits=isinstance(exc, ProbeError),
            )
        try:
            result = self._conclude(holder.work, outcome, acted=holder.acted, policy=policy)
        except StaleWorkError:
            log.warning("%s: our claim was taken away before we could record %s", work, outcome)
            self._claim_lost(work, f"before this server could record {outcome.reason!r}")
            return WorkResult.LOST
        except UnreadableWorkError as exc:  # the row was edited by hand while we held it
            self._quarantine(exc)
            return WorkResult.ERROR
        return result

    def _decide_and_act(self, holder: _Holder, vm: Vm, policy: Policy) -> Outcome:
        """The work type's decision, then the handler of the action it asks for."""
        work = holder.work
        others: Sequence[Work] = ()
        host = None
        if work.type in NEEDS_HISTORY:
            others = self._read(lambda: self.store.works_for_vm(work.instance_id))
            host = None if work.host_id is None else self.directory.find_host(work.host_id)
        decision = DECISIONS[work.type](
            Inputs(work=work, vm=vm, host=host, policy=policy, now=self._now(), others=others)
        )
        match decision:
            case Finish() | Retry():
                return self._decided(decision)
            case Restart():
                return self._restart(holder, vm, host, decision, policy)
            case MigrateVm():
                return self._migrate(holder, vm, decision, policy)
            case StopVm():
                return self._stop_vm(holder, vm, decision, policy)
            case DestroyVm():
                return self._destroy_vm(holder, vm, decision, policy)
        raise AssertionError(f"no handler for decision {decision!r}")  # pragma: no cover

    def _decided(self, outcome: _O) -> _O:
        """An outcome as decided: its alert, if any, goes out now."""
        self.notifier.notice(outcome.notice)
        return outcome

    def _snapshot(self, work: Work) -> tuple[VmState | None, int | None]:
        try:
            vm = self.orchestrator.find_vm(work.instance_id)
        except Exception:
            log.exception("could not re-read VM %s", work.instance_id)
            return None, None
        return (None, None) if vm is None else (vm.state, vm.updated)

    def _conclude(self, work: Work, outcome: Outcome, *, acted: bool, policy: Policy) -> WorkResult:
        """Record the outcome as :func:`~cloudha.ha.decisions.conclude` says.

        ``acted``: retake the VM snapshot the work compares against. Only
        after this worker's own actions (a stop, a failed start) or an
        exception: the next attempt must not take them for somebody else's
        change (CloudStack #13510). A change by anybody else while the work
        waited (an operator's stop during a failed fence) stays visible and
        ends the work.
        """
        record = conclude(work, outcome, acted=acted, policy=policy)
        if isinstance(record, Finish | GiveUp):
            with self._in_place_lock:
                self._in_place.pop(work.id, None)  # the work ends: so does its in-place wish
        if isinstance(record, Finish):
            step = record.step
            self._db(lambda: self.store.finish(work, step))
            if record.started_on is not None:
                self._emit(work, step, record.reason, started_on=record.started_on)
            else:
                self._emit(work, step, record.reason)
            if step is Step.ERROR:
                log.error("%s ended in Error: %s", work, record.reason)
            self.notifier.notice(record.notice)
            return {
                Step.DONE: WorkResult.DONE,
                Step.CANCELLED: WorkResult.CANCELLED,
            }.get(step, WorkResult.ERROR)
        state, updated = self._snapshot(work) if record.refresh else (None, None)
        if isinstance(record, GiveUp):
            self._db(
                lambda: self.store.finish(
                    work, Step.ERROR, attempt=True, previous_state=state, updated=updated
                )
            )
            self._emit(work, Step.ERROR, record.reason)
            self.notifier.notice(attrs.evolve(record.notice, host=self._alert_host(work)))
            return WorkResult.GAVE_UP
        at = record.at
        self._db(lambda: self.store.reschedule(work, at, previous_state=state, updated=updated))
        self._emit(work, "Rescheduled", record.reason, retry_in=round(at - self._now(), 3))
        return WorkResult.RESCHEDULED

    def _alert_host(self, work: Work) -> Host | None:
        """``work``'s host for an alert's zone and pod; None when the directory cannot say."""
        if work.host_id is None:
            return None
        try:
            return self.directory.find_host(work.host_id)
        except Exception as exc:
            # NOTE: the work is already recorded in Error; the alert goes without the host.
            log.warning("%s: host %s not read for the alert: %s", work, work.host_id, exc)
            return None

    def _cancelled_by_host_up(self, work: Work, vm: Vm) -> bool:
        """``checkAndCancelWorkIfNeeded``: an Investigating work whose host is Up again.

        Only while the VM is still placed on a host: a VM on no host was
        stopped already (by this work before a server restart marked it
        Investigating again, by a hand-over that knew it dead, by a VM sync),
        and cancelling its work would leave it Stopped for good although its
        host is back; the work goes on and restarts it (cloudha's fix).
        """
        return (
            vm.host_id is not None
            and is_cancellable(work, CANCELLABLE_REASONS)
            and self.investigate(work.host_id) is Status.UP
        )

    def _confirm(self, holder: _Holder, *, on_vm: bool = True) -> None:
        """Before an action with effects outside the database: is the work still ours?

        A worker stuck long enough to lose its claim (handed back by
        :meth:`stop`, released by :meth:`on_server_left` on another server,
        claimed again) must not fence, stop, start or destroy anything on
        the strength of it: :class:`StaleWorkError` ends the attempt as
        :attr:`WorkResult.LOST`. Starts are guarded twice: the orchestrator
        also refuses a stale fencing token. ``on_vm``: the action is on the
        VM itself (a stop, a start...), not on its host (a fence), so the
        attempt retakes the VM's snapshot when it is rescheduled.
        """
        self._db(lambda: self.store.confirm(holder.work))
        holder.acted = holder.acted or on_vm

    # -- the handlers: the effects the decisions ask for -------------------------------

    def _restart(
        self, holder: _Holder, vm: Vm, host: Host | None, plan: Restart, policy: Policy
    ) -> Outcome:
        """An HA restart (:func:`~cloudha.ha.decisions.decide_ha`): prove or stop, then start."""
        if plan.first == "prove":
            assert host is not None
            proof = self._prove_dead(holder, vm, host, policy)
            if proof is not None:
                return proof
        elif plan.first == "stop":
            self._stopping(holder)
            self.orchestrator.advance_stop(vm, force=True)
        if plan.first != "start":
            # The stop is ours: record the VM as it left it, so that an attempt
            # after a crash or a lost claim does not take it for a change.
            state, updated = self._snapshot(holder.work)
            holder.work = self._db(
                lambda: self.store.update_step(
                    holder.work, Step.SCHEDULED, previous_state=state, updated=updated
                )
            )
            self._emit(holder.work, Step.SCHEDULED, "the VM is stopped; restarting it")
        return self._start(holder, host, plan.removed, policy)

    def _prove_dead(self, holder: _Holder, vm: Vm, host: Host, policy: Policy) -> Outcome | None:
        """Investigate, fence if needed, and stop: None when the VM may be restarted."""
        result = self.investigators.investigate_vm(vm, host)
        step = decide_verdict(
            result.verdict,
            result.decided_by,
            vm,
            host,
            policy,
            self._now(),
            deferred=result.decided_by == HOST_HA_BRIDGE,
        )
        if isinstance(step, Fence):
            held = self._last_look(host, policy)
            if held is not None:
                return self._decided(held)
            self._confirm(holder, on_vm=False)
            fenced = self.fence_chain.fence_off(vm, host)
            step = decide_fence(fenced.fenced, fenced.reason, vm, host, policy, self._now())
        if not isinstance(step, Proceed):
            return self._decided(step)
        self._emit(holder.work, Step.FENCING, step.why)
        self._stopping(holder)
        self.orchestrator.advance_stop(vm, force=True)
        return None

    def _stopping(self, holder: _Holder) -> None:
        """Record step Stopping before the HA stop: :meth:`_confirm`, made durable.

        Should this server die, stop or lose the work between the stop and
        recording the VM as the stop left it, the work's next attempt (here
        after a restart, or on another server) knows the stop may be its own
        (:func:`~cloudha.ha.decisions.decide_ha`) rather than ending the work
        as "changed" with the VM left down. Raises :class:`StaleWorkError`
        when the work is no longer ours.
        """
        holder.work = self._db(lambda: self.store.update_step(holder.work, Step.STOPPING))
        holder.acted = True

    def _last_look(self, host: Host, policy: Policy) -> Retry | None:
        """Investigate a Down host once more right before a fence (:func:`decide_last_look`).

        The Down verdict may be minutes old: a fence is carried out only while
        no investigator finds the host alive.
        """
        if host.status is not Status.DOWN:
            return None
        look = self.investigators.investigate_host(host)
        reason = next(
            (f.reason for f in look.findings if f.source == look.decided_by), "no finding"
        )
        return decide_last_look(look.verdict, look.decided_by, reason, host, policy, self._now())

    def _start(self, holder: _Holder, host: Host | None, removed: bool, policy: Policy) -> Outcome:
        work = holder.work
        vm = self.orchestrator.find_vm(work.instance_id)
        blocked = decide_start(vm, policy)
        if blocked is not None:
            return blocked
        assert vm is not None
        host_down = host_is_down(host, removed)
        elsewhere = not host_down or self.orchestrator.can_restart_on_another_server(vm)
        plan = start_plan(work, host_down, elsewhere)
        if isinstance(plan, Finish):
            return plan
        with self._in_place_lock:
            prefer = self._in_place.pop(work.id, None)
        if plan.host_down:
            prefer = None  # its host is no longer Up: the usual planner, the host avoided
        if prefer is not None:
            self._emit(
                work,
                Step.SCHEDULED,
                f"the VM crashed alone on Up host {prefer}: restarting it there first",
                in_place=prefer,
            )
        params = StartParams(
            ha_tag=self.settings.ha_tag,
            ha_operation=True,
            generation=work.generation,
            avoid_hosts=plan.avoid_hosts,
            prefer_host=prefer,
        )
        self._confirm(holder)
        try:
            try:
                target = self.orchestrator.advance_start(vm, params, Planner.DEFAULT)
            except InsufficientCapacityError as first:
                log.info("%s: %s; trying the HA planner", work, first)
                target = self.orchestrator.advance_start(vm, params, Planner.HA)
        except UnknownVmError:
            return Finish("the VM no longer exists")
        except CloudHAError as exc:
            error = f"{type(exc).__name__}: {exc}"
            waits = isinstance(exc, InsufficientCapacityError | ProbeError)
            return self._decided(
                decide_start_failed(error, vm, host, policy, self._now(), waits=waits)
            )
        started = self.orchestrator.find_vm(vm.id)
        return self._decided(decide_started(started, target, vm, work, host, policy, self._now()))

    def _migrate(self, holder: _Holder, vm: Vm, plan: MigrateVm, policy: Policy) -> Outcome:
        """Migrate a VM off its host for maintenance (spec §3.7)."""
        holder.work = self._db(lambda: self.store.update_step(holder.work, Step.MIGRATING))
        try:
            target = self.orchestrator.migrate_away(vm, plan.source)
        except InsufficientCapacityError as exc:
            host = self.directory.find_host(plan.source)
            outcome = self._decided(
                decide_no_room(str(exc), vm, plan.source, host, policy, self._now())
            )
            if self.resource_manager is not None:
                try:
                    self.resource_manager.migrate_away_failed(plan.source, vm)
                except Exception:
                    log.exception("resource manager failed on migrate_away_failed(%s)", vm.id)
            return outcome
        return Finish(f"migrated to host {target}")

    def _stop_vm(self, holder: _Holder, vm: Vm, plan: StopVm, policy: Policy) -> Outcome:
        """Stop, CheckStop or ForceStop (spec §3.7)."""
        self._confirm(holder)
        try:
            self.orchestrator.advance_stop(vm, force=plan.force)
        except (CloudHAError, TimeoutError) as exc:
            if isinstance(exc, UnknownVmError):
                return Finish("the VM no longer exists")
            return Retry(f"stop failed: {exc}", at=self._now() + policy.stop_retry_interval)
        return Finish("stopped")

    def _destroy_vm(self, holder: _Holder, vm: Vm, plan: DestroyVm, policy: Policy) -> Outcome:
        """Destroy (spec §3.7); console proxies and secondary storage VMs are expunged."""
        self._confirm(holder)
        try:
            if plan.stop_first:
                self.orchestrator.advance_stop(vm, force=True)
            if not plan.destroy:
                return Finish("the VM is being expunged")
            self.orchestrator.destroy(vm, expunge=plan.expunge)
        except UnknownVmError:
            return Finish("the VM no longer exists")
        except CloudHAError as exc:
            return Retry(f"destroy failed: {exc}", at=self._now() + policy.stop_retry_interval)
        return Finish("expunged" if plan.expunge else "destroyed")

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Release this server's old claims, mark due works Investigating, start the workers.

        Runs each of :meth:`loops` on a :class:`~cloudha.runtime.Pump`: the
        ``ha.workers`` threads named ``HA-Worker-<i>`` and the cleanup thread
        ``HA-Cleanup`` (every ``time.between.cleanup``). :meth:`wakeup`
        wakes the worker pumps.
        """
        with self._lock:
            if self._state != "new":
                raise LifecycleError(f"HA manager {self.server_id} is {self._state}")
            self._state = "running"
        self.recover()
        self._pumps = [
            loop.pump(clock=self.clock, thread_factory=self._factory) for loop in self.loops()
        ]
        for pump in self._pumps:
            pump.start()

    def loops(self) -> list[Loop]:
        """What :meth:`start` runs, for an embedder (or simulator) that drives its own threads.

        ``ha.workers`` loops ``HA-Worker-<i>`` on :meth:`work_tick` (woken by
        new work: ``wake_on_work``), then ``HA-Cleanup`` on
        :meth:`cleanup_tick`, whose first round is one ``time.between.cleanup``
        after the start. Call :meth:`recover` before running them.
        """
        workers = [
            Loop(f"HA-Worker-{index}", self.work_tick, wake_on_work=True)
            for index in range(self.settings.ha_workers)
        ]
        cleanup = Loop(
            "HA-Cleanup",
            self.cleanup_tick,
            wake_on_work=False,
            first_delay=self.settings.time_between_cleanup,
        )
        return [*workers, cleanup]

    def work_tick(self) -> float:
        """One worker round: claim one due work and process it.

        Returns 0.0 after processing one (there may be more), else the idle
        delay ``time.to.sleep``. Never raises: a failure to claim is logged
        and counts as idle.
        """
        try:
            busy = self.process_next() is not None
        except Exception:
            log.exception("HA worker %s: claiming failed", threading.current_thread().name)
            busy = False
        return 0.0 if busy else float(self.settings.time_to_sleep)

    def cleanup_tick(self) -> float:
        """One cleanup round (:meth:`cleanup`); returns ``time.between.cleanup``. Never raises."""
        try:
            deleted = self.cleanup()
            log.info("HA cleanup deleted %d finished works", deleted)
        except Exception:
            log.exception("HA cleanup failed")
        return float(self.settings.time_between_cleanup)

    def recover(self) -> tuple[int, int]:
        """Take up after a previous run of this server: what :meth:`start` does first.

        Releases the works this server id still holds (its previous process
        died holding them) and marks every due unclaimed work Investigating,
        so nothing is restarted before the investigators and fencers have
        looked again. Returns ``(released, marked)``. Call it yourself when
        you drive :meth:`process_next` from your own threads.
        """
        released = self._db(lambda: self.store.release_server(self.server_id))
        marked = self._db(self.store.mark_pending_as_investigating)
        log.info(
            "HA manager %s: %d works released, %d marked Investigating",
            self.server_id,
            released,
            marked,
        )
        return released, marked

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the workers, then hand this server's unfinished works back (step Investigating).

        Raises :class:`~cloudha.errors.LifecycleError` when a worker did not
        stop within ``timeout`` seconds (its work is handed back anyway; the
        fencing token keeps it from starting a VM another server restarts).
        """
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        for pump in self._pumps:
            pump.request_stop()
        stuck = []
        # One deadline for all the threads, not ``timeout`` each. Joining is
        # the runtime edge: the wall clock, not the injected one, bounds it.
        deadline = None if timeout is None else time.monotonic() + timeout
        for pump in self._pumps:
            if not pump.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
                stuck.append(pump.name)
        self._db(lambda: self.store.mark_server_pending_as_investigating(self.server_id))
        released = self._db(lambda: self.store.release_server(self.server_id))
        log.info("HA manager %s stopped; %d works handed back", self.server_id, released)
        if stuck:
            raise LifecycleError(f"HA threads did not stop within {timeout}s: {stuck}")

    def on_server_left(self, server_id: str) -> int:
        """Another management server left the cluster: release its works; how many."""
        if server_id == self.server_id:
            raise ValueError("on_server_left() is for other servers, not this one")
        released = self._db(lambda: self.store.release_server(server_id))
        if released:
            log.warning("management server %s left: %d HA works released", server_id, released)
            self.wakeup()
        return released

    def wakeup(self) -> None:
        """Wake idle workers (called after every committed schedule and release).

        Wakes this server's worker pumps (after :meth:`start`), then calls
        :attr:`on_work_added` when set.
        """
        for pump in self._pumps:
            pump.wake()
        waker = self.on_work_added
        if waker is not None:
            try:
                waker()
            except Exception:
                log.exception("HA manager %s: on_work_added failed", self.server_id)

    def cleanup(self) -> int:
        """Delete Done and Cancelled works older than ``time.between.failures``; how many."""
        return self._db(lambda: self.store.cleanup(self.settings.time_between_failures))

    @property
    def threads(self) -> Sequence[threading.Thread]:
        """The worker and cleanup threads (empty before :meth:`start`)."""
        return tuple(p.thread for p in self._pumps if p.thread is not None)

    def __repr__(self) -> str:
        return f"HighAvailabilityManager({self.server_id!r}, {self.store!r})"


@attrs.define
class _Holder:
    """The latest version of the claimed work while a handler advances its step."""

    work: Work
    acted: bool = False
    """Whether this attempt did (or may have done) something to the VM itself."""
