"""The HA manager (spec §3.3-§3.7, with docs/design/differences.md), branch by branch.

Every test runs on a :class:`FakeClock` and an in-memory SQLite work store,
except the lifecycle tests at the end, which use real threads, the system
clock and a SQLite file.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from cloudha import EvidenceLog, Host, Settings, Status
from cloudha.clock import Clock, SystemClock
from cloudha.errors import (
    CloudHAError,
    ConfigurationError,
    LifecycleError,
    ProbeConnectionError,
    ProbeTimeout,
    StoreError,
    StoreUnavailableError,
)
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.chain import FenceChain, InlineRunner
from cloudha.ha.manager import SYSTEM_VM_PRIORITY, HighAvailabilityManager, WorkResult
from cloudha.ha.orchestrator import (
    InsufficientCapacityError,
    Planner,
    StartParams,
)
from cloudha.ha.store import Step, Work, WorkStore, WorkType, create_schema, op_ha_work
from cloudha.investigators.base import Verdict
from cloudha.investigators.chain import InvestigatorChain
from cloudha.model import AlertType, HostType, HypervisorType, ReasonType, Vm, VmState, VmType
from cloudha.ports import Alert
from cloudha.ports import WorkStore as WorkStorePort
from cloudha.testing import (
    FakeClock,
    FakeOrchestratorHost,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    InMemoryWorkStore,
    OrchestratorCall,
    RecordingAlertSink,
    RecordingMigrationFailures,
    ScriptedFencer,
    ScriptedInvestigator,
)

T0 = 1_000_000.0
Hook = Callable[[str], None]


# -- an orchestrator with hooks ------------------------------------------------------


class HookedOrchestrator(InMemoryOrchestrator):
    """The in-memory fake, plus one-shot hooks run before a method does its work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks: dict[str, list[Hook]] = {}

    def before(self, method: str, hook: Hook) -> None:
        self.hooks.setdefault(method, []).append(hook)

    def _fire(self, method: str, vm_id: str) -> None:
        hooks = self.hooks.get(method)
        if hooks:
            hooks.pop(0)(vm_id)

    def find_vm(self, vm_id: str) -> Vm | None:
        self._fire("find_vm", vm_id)
        return super().find_vm(vm_id)

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        self._fire("advance_stop", vm.id)
        super().advance_stop(vm, force=force)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        self._fire("advance_start", vm.id)
        return super().advance_start(vm, params, planner)

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        self._fire("can_restart_on_another_server", vm.id)
        return super().can_restart_on_another_server(vm)

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        self._fire("migrate_away", vm.id)
        return super().migrate_away(vm, source_host_id)

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        self._fire("destroy", vm.id)
        super().destroy(vm, expunge=expunge)

    def remove_vm(self, vm_id: str) -> None:
        """The VM disappears behind the manager's back (deleted by someone else)."""
        with self._lock:
            self._vms.pop(vm_id, None)


# -- the world -------------------------------------------------------------------------


@attrs.define
class Env:
    clock: FakeClock
    engine: sa.Engine
    store: WorkStore
    directory: InMemoryHostDirectory
    orch: HookedOrchestrator
    inv: ScriptedInvestigator
    fencer: ScriptedFencer
    alerts: RecordingAlertSink
    evidence: EvidenceLog
    manager: HighAvailabilityManager

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def vm(self, vm_id: str = "vm1") -> Vm:
        vm = self.orch.find_vm(vm_id)
        assert vm is not None
        return vm

    def host(self, host_id: str = "h1") -> Host:
        host = self.directory.find_host(host_id)
        assert host is not None
        return host

    def set_host(self, host_id: str, **changes: Any) -> None:
        self.directory.add(attrs.evolve(self.host(host_id), **changes))

    def change_vm(self, vm_id: str = "vm1", **changes: Any) -> None:
        self.orch.add_vm(attrs.evolve(self.vm(vm_id), **changes))

    def work(self, work_id: int) -> Work:
        work = self.store.get(work_id)
        assert work is not None
        return work

    def restart(
        self, vm_id: str = "vm1", *, investigate: bool = True, reason: ReasonType | None = None
    ) -> Work:
        work = self.manager.schedule_restart(
            self.vm(vm_id),
            investigate=investigate,
            reason=reason or (ReasonType.HOST_DOWN if investigate else ReasonType.UNKNOWN),
        )
        assert work is not None
        return work

    def add(self, vm_id: str, type: WorkType, **kwargs: Any) -> Work:
        """A work row as another component (or an earlier run) would have written it."""
        vm = self.orch.find_vm(vm_id)
        kwargs.setdefault("host_id", "h1")
        if vm is not None:
            kwargs.setdefault("vm_type", vm.type)
            kwargs.setdefault("updated", vm.updated)
        state = vm.state if vm is not None else VmState.RUNNING
        return self.store.add(vm_id, type, kwargs.pop("previous_state", state), **kwargs)

    def calls(self, method: str) -> list[OrchestratorCall]:
        return [c for c in self.orch.calls if c.method == method]

    def steps(self, work_id: int) -> list[str]:
        return [
            str(r.details["step"])
            for r in self.evidence.records(kind="ha_work")
            if r.details.get("work") == work_id
        ]

    def reasons(self, work_id: int) -> list[str]:
        return [
            r.reason
            for r in self.evidence.records(kind="ha_work")
            if r.details.get("work") == work_id
        ]

    def process_all(self) -> list[WorkResult]:
        results = []
        while (result := self.manager.process_next()) is not None:
            results.append(result)
        return results


def make_engine(url: str = "sqlite://") -> sa.Engine:
    if url == "sqlite://":
        return sa.create_engine(
            url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    return sa.create_engine(url)


def make_env(
    *,
    hosts: Sequence[Host] | None = None,
    vms: Iterable[Vm] | None = None,
    settings: Settings | None = None,
    zone_settings: dict[str, Settings] | None = None,
    fence: FenceOutcome = FenceOutcome.FENCED,
    script: dict[str, Verdict] | None = None,
    orch_hosts: Sequence[FakeOrchestratorHost] | None = None,
    server_id: str = "ms1",
) -> Env:
    clock = FakeClock(T0)
    engine = make_engine()
    create_schema(engine)
    store = WorkStore(engine, clock)
    directory = InMemoryHostDirectory(
        hosts
        if hosts is not None
        else [Host("h1", status=Status.DOWN), Host("h2", status=Status.UP)]
    )
    orch = HookedOrchestrator(
        orch_hosts
        if orch_hosts is not None
        else [FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2")],
        vms if vms is not None else [Vm("vm1", host_id="h1", ha_enabled=True)],
    )
    inv = ScriptedInvestigator(clock, script=script)
    fencer = ScriptedFencer(clock, default=fence)
    alerts = RecordingAlertSink()
    evidence = EvidenceLog()
    manager = HighAvailabilityManager(
        server_id=server_id,
        store=store,
        orchestrator=orch,
        directory=directory,
        investigators=InvestigatorChain([inv]),
        fence_chain=FenceChain([fencer], clock=clock, runner=InlineRunner(clock)),
        settings=settings or Settings(),
        clock=clock,
        alerts=alerts,
        evidence=evidence,
        zone_settings=zone_settings,
    )
    return Env(clock, engine, store, directory, orch, inv, fencer, alerts, evidence, manager)


@pytest.fixture
def env() -> Env:
    return make_env()


HA_OFF = {"z1": Settings.from_mapping({"vm.ha.enabled": False})}
HA_AND_ALERTS_OFF = {
    "z1": Settings.from_mapping({"vm.ha.enabled": False, "vm.ha.alerts.enabled": False})
}


# -- schedule_restart_for_vms_on_host (spec §3.4) ---------------------------------------


@pytest.mark.parametrize("host_type", [HostType.STORAGE, HostType.SECONDARY_STORAGE_VM])
def test_host_scheduling_ignores_non_routing_hosts(host_type: HostType) -> None:
    env = make_env(hosts=[Host("h1", type=host_type, status=Status.DOWN)])
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("vm1") == []
    assert env.alerts.alerts == []
    assert env.calls("list_vms_on_host") == []


@pytest.mark.parametrize("hypervisor", [HypervisorType.VMWARE, HypervisorType.HYPERV])
def test_host_scheduling_ignores_vmware_and_hyperv_hosts(hypervisor: HypervisorType) -> None:
    env = make_env(hosts=[Host("h1", hypervisor=hypervisor, status=Status.DOWN)])
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("vm1") == []
    assert env.alerts.alerts == []


def test_host_scheduling_with_vm_ha_disabled_in_the_zone_alerts_and_schedules_nothing() -> None:
    env = make_env(zone_settings=HA_OFF)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("vm1") == []
    (alert,) = env.alerts.alerts
    assert (alert.type, alert.subject, alert.zone) == (
        AlertType.HA_ACTION,
        "VM HA is disabled in zone z1",
        "z1",
    )


def test_host_scheduling_with_vm_ha_and_its_alerts_disabled_is_silent() -> None:
    env = make_env(zone_settings=HA_AND_ALERTS_OFF)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("vm1") == []
    assert env.alerts.alerts == []


def test_host_scheduling_puts_system_vms_first_then_higher_ha_priority() -> None:
    vms = [
        Vm("u-low", host_id="h1", ha_enabled=True),
        Vm("u-high", host_id="h1", ha_enabled=True, ha_priority=5),
        Vm("r1", type=VmType.DOMAIN_ROUTER, host_id="h1", ha_enabled=True),
        Vm("r2", type=VmType.DOMAIN_ROUTER, host_id="h1", ha_enabled=True, ha_priority=3),
        Vm("s1", type=VmType.SECONDARY_STORAGE_VM, host_id="h1", ha_enabled=True),
    ]
    env = make_env(vms=vms)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    scheduled = [r.vm for r in env.evidence.records(kind="ha_work")]
    assert scheduled == ["r2", "r1", "s1", "u-high", "u-low"]
    assert env.store.works_for_vm("r2")[0].priority == SYSTEM_VM_PRIORITY + 3
    assert env.store.works_for_vm("u-high")[0].priority == 5
    # The claim order follows: every system VM before every user VM.
    claimed = []
    while (work := env.store.claim("probe")) is not None:
        claimed.append(work.instance_id)
    assert claimed == ["r2", "r1", "s1", "u-high", "u-low"]


def test_host_scheduling_twice_skips_vms_with_a_pending_work_and_does_not_alert_again(
    env: Env,
) -> None:
    host = env.host()
    env.manager.schedule_restart_for_vms_on_host(
        host, investigate=True, reason=ReasonType.HOST_DOWN
    )
    env.manager.schedule_restart_for_vms_on_host(
        host, investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert len(env.store.works_for_vm("vm1")) == 1
    assert env.alerts.subjects() == ["Host is down, h1 (h1)"]


@pytest.mark.parametrize(
    ("failed_ago", "rescheduled"),
    [(3600 + 300, True), (3600 - 300, False)],
)
def test_host_scheduling_after_a_pending_work_used_up_its_attempts(
    env: Env, failed_ago: float, rescheduled: bool
) -> None:
    old = env.add("vm1", WorkType.HA, tried=5, time_to_try=env.now - failed_ago)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    works = env.store.works_for_vm("vm1")
    if rescheduled:
        assert [w.id for w in works] == [old.id, old.id + 1]
        assert works[1].tried == 0  # the old failure is outside time.between.failures
    else:
        assert [w.id for w in works] == [old.id]
        assert env.alerts.alerts == []


def test_host_scheduling_inherits_the_tries_of_a_recent_failed_work_of_each_vm() -> None:
    # The history of every VM of the host is read in one query; each VM
    # inherits from its own recent failure only.
    env = make_env(
        vms=[
            Vm("vm1", host_id="h1", ha_enabled=True),
            Vm("vm2", host_id="h1", ha_enabled=True),
            Vm("vm3", host_id="h1", ha_enabled=True),
        ]
    )
    env.add("vm1", WorkType.HA, step=Step.ERROR, tried=3, time_to_try=env.now - 600)
    env.add("vm2", WorkType.HA, step=Step.ERROR, tried=2, time_to_try=env.now - 2 * 3600)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    latest = {vm: env.store.works_for_vm(vm)[-1] for vm in ("vm1", "vm2", "vm3")}
    assert {vm: (w.step, w.tried) for vm, w in latest.items()} == {
        "vm1": (Step.INVESTIGATING, 3),
        "vm2": (Step.INVESTIGATING, 0),
        "vm3": (Step.INVESTIGATING, 0),
    }


def test_host_scheduling_skips_a_vm_whose_pending_work_has_attempts_left(env: Env) -> None:
    old = env.add("vm1", WorkType.HA, tried=4, time_to_try=env.now - 10 * 3600)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert [w.id for w in env.store.works_for_vm("vm1")] == [old.id]


@pytest.mark.parametrize(
    ("force_ha", "body"),
    [(False, "HA-enabled VMs to restart: vm1"), (True, "HA-enabled VMs to restart: vm1, vm2")],
)
def test_host_down_alert_lists_the_ha_enabled_vms(force_ha: bool, body: str) -> None:
    env = make_env(
        vms=[Vm("vm1", host_id="h1", ha_enabled=True), Vm("vm2", host_id="h1")],
        settings=Settings(force_ha=force_ha),
    )
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    (alert,) = env.alerts.alerts
    assert (alert.type, alert.subject, alert.body, alert.host_id) == (
        AlertType.HOST,
        "Host is down, h1 (h1)",
        body,
        "h1",
    )
    # The non-HA VM gets a work too: restart() ends it (it stays stopped).
    assert len(env.store.works_for_vm("vm2")) == 1


def test_host_scheduling_skips_local_storage_vms(env: Env) -> None:
    env.orch.add_vm(Vm("local", host_id="h1", ha_enabled=True), local_storage=True)
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("local") == []
    assert len(env.store.works_for_vm("vm1")) == 1
    assert env.alerts.alerts[0].body == "HA-enabled VMs to restart: local, vm1"


def test_host_scheduling_skips_a_vm_that_moved_to_another_host(env: Env) -> None:
    env.orch.before("can_restart_on_another_server", lambda _vm: env.change_vm(host_id="h2"))
    env.manager.schedule_restart_for_vms_on_host(
        env.host(), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.store.works_for_vm("vm1") == []


# -- schedule_restart (spec §3.4) -----------------------------------------------------


def test_schedule_restart_with_vm_ha_disabled_alerts_and_returns_none() -> None:
    env = make_env(zone_settings=HA_OFF)
    assert env.manager.schedule_restart(env.vm(), investigate=True) is None
    assert env.store.works_for_vm("vm1") == []
    assert env.alerts.subjects() == ["VM HA is disabled in zone z1"]


def test_schedule_restart_rejects_a_vm_in_state_error(env: Env) -> None:
    env.change_vm(state=VmState.ERROR)
    assert env.manager.schedule_restart(env.vm(), investigate=False) is None
    assert env.store.works_for_vm("vm1") == []
    assert env.calls("advance_stop") == []


def test_schedule_restart_of_a_vm_without_host_force_stops_it_first(env: Env) -> None:
    env.change_vm(state=VmState.STARTING, host_id=None, last_host_id="h1")
    work = env.restart(investigate=True)
    (stop,) = env.calls("advance_stop")
    assert (stop.force, stop.outcome) == (True, "ok")
    assert env.vm().state is VmState.STOPPED
    assert (work.host_id, work.step) == ("h1", Step.INVESTIGATING)
    # The work compares against the VM as our own stop left it, so it restarts it.
    assert (work.previous_state, work.updated) == (VmState.STOPPED, env.vm().updated)
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")


@pytest.mark.parametrize("hypervisor", [HypervisorType.VMWARE, HypervisorType.HYPERV])
def test_schedule_restart_of_a_vmware_or_hyperv_vm_does_nothing(
    env: Env, hypervisor: HypervisorType
) -> None:
    env.change_vm(hypervisor=hypervisor)
    assert env.manager.schedule_restart(env.vm(), investigate=False) is None
    assert env.store.works_for_vm("vm1") == []
    assert env.vm().state is VmState.RUNNING


@pytest.mark.parametrize(
    ("vm_type", "alert_type"),
    [
        (VmType.USER, AlertType.USERVM),
        (VmType.DOMAIN_ROUTER, AlertType.DOMAIN_ROUTER),
        (VmType.CONSOLE_PROXY, AlertType.CONSOLE_PROXY),
        (VmType.SECONDARY_STORAGE_VM, AlertType.SSVM),
    ],
)
def test_schedule_restart_without_investigation_of_a_non_ha_vm(
    vm_type: VmType, alert_type: AlertType
) -> None:
    env = make_env(vms=[Vm("vm1", type=vm_type, host_id="h1", updated=4)])
    work = env.restart(investigate=False)
    (alert,) = env.alerts.alerts
    assert (alert.type, alert.subject) == (alert_type, "VM vm1 (vm1) stopped unexpectedly")
    assert [c.force for c in env.calls("advance_stop")] == [True]
    # The work records the VM as the forced stop left it.
    assert (work.step, work.previous_state, work.updated, work.host_id) == (
        Step.SCHEDULED,
        VmState.STOPPED,
        5,
        "h1",
    )


def test_schedule_restart_without_investigation_of_an_ha_vm_does_not_alert(env: Env) -> None:
    work = env.restart(investigate=False)
    assert env.alerts.alerts == []
    assert work.step is Step.SCHEDULED
    assert env.vm().state is VmState.STOPPED


def test_schedule_restart_without_investigation_whose_stop_fails_investigates(env: Env) -> None:
    env.orch.fail_next_stop()
    work = env.restart(investigate=False)
    assert work.step is Step.INVESTIGATING
    assert (work.previous_state, work.updated) == (VmState.RUNNING, 0)
    assert env.vm().state is VmState.RUNNING


def test_schedule_restart_inherits_the_tries_of_a_recent_failed_work(env: Env) -> None:
    env.add("vm1", WorkType.HA, step=Step.ERROR, tried=3, time_to_try=env.now)
    env.clock.advance(3000)
    assert env.restart().tried == 3


def test_schedule_restart_does_not_inherit_the_tries_of_an_old_failed_work(env: Env) -> None:
    env.add("vm1", WorkType.HA, step=Step.ERROR, tried=3, time_to_try=env.now)
    env.clock.advance(3601)
    assert env.restart().tried == 0


def test_schedule_restart_does_not_inherit_tries_from_other_work_types(env: Env) -> None:
    env.add("vm1", WorkType.MIGRATION, step=Step.ERROR, tried=3, time_to_try=env.now)
    assert env.restart().tried == 0


def test_schedule_restart_records_the_vm_snapshot() -> None:
    vm = Vm("r1", type=VmType.DOMAIN_ROUTER, host_id="h1", updated=7, ha_priority=4)
    env = make_env(vms=[vm])
    work = env.restart("r1", reason=ReasonType.HOST_DEGRADED)
    assert env.work(work.id) == work
    assert (
        work.type,
        work.step,
        work.previous_state,
        work.updated,
        work.host_id,
        work.priority,
        work.vm_type,
        work.reason,
        work.tried,
        work.mgmt_server_id,
        work.time_to_try,
    ) == (
        WorkType.HA,
        Step.INVESTIGATING,
        VmState.RUNNING,
        7,
        "h1",
        SYSTEM_VM_PRIORITY + 4,
        VmType.DOMAIN_ROUTER,
        ReasonType.HOST_DEGRADED,
        0,
        None,
        T0,
    )
    assert env.steps(work.id) == ["Investigating"]


# -- the other scheduling calls ----------------------------------------------------------


@pytest.mark.parametrize("type", [WorkType.STOP, WorkType.CHECK_STOP, WorkType.FORCE_STOP])
def test_schedule_stop(env: Env, type: WorkType) -> None:
    vm = env.vm()
    assert env.manager.schedule_stop(vm, "h1", type, ReasonType.HOST_MAINTENANCE) is True
    assert env.manager.schedule_stop(vm, "h1", type, ReasonType.HOST_MAINTENANCE) is False
    (work,) = env.store.works_for_vm("vm1")
    assert (work.type, work.step, work.host_id, work.tried, work.reason) == (
        type,
        Step.SCHEDULED,
        "h1",
        0,
        ReasonType.HOST_MAINTENANCE,
    )
    # Once the first one is taken, another may be queued.
    assert env.store.claim("ms2") is not None
    assert env.manager.schedule_stop(vm, "h1", type, ReasonType.HOST_MAINTENANCE) is True


def test_schedule_stop_refuses_other_work_types(env: Env) -> None:
    with pytest.raises(ValueError, match="Stop, CheckStop or ForceStop"):
        env.manager.schedule_stop(env.vm(), "h1", WorkType.HA, ReasonType.UNKNOWN)


def test_schedule_stop_migration_and_destroy_refuse_when_vm_ha_is_disabled() -> None:
    env = make_env(zone_settings=HA_OFF)
    vm = env.vm()
    assert env.manager.schedule_stop(vm, "h1", WorkType.STOP, ReasonType.UNKNOWN) is False
    assert env.manager.schedule_migration(vm, ReasonType.HOST_MAINTENANCE) is False
    assert env.manager.schedule_destroy(vm, "h1", ReasonType.UNKNOWN) is False
    assert env.store.works_for_vm("vm1") == []
    assert env.alerts.subjects() == ["VM HA is disabled in zone z1"] * 3


def test_schedule_migration(env: Env) -> None:
    env.change_vm(host_id=None)
    assert env.manager.schedule_migration(env.vm(), ReasonType.HOST_MAINTENANCE) is False
    env.change_vm(host_id="h1", updated=3)
    assert env.manager.schedule_migration(env.vm(), ReasonType.HOST_MAINTENANCE) is True
    (work,) = env.store.works_for_vm("vm1")
    assert (work.type, work.step, work.host_id, work.updated) == (
        WorkType.MIGRATION,
        Step.SCHEDULED,
        "h1",
        3,
    )


def test_schedule_and_cancel_destroy(env: Env) -> None:
    vm = env.vm()
    assert env.manager.schedule_destroy(vm, "h1", ReasonType.UNKNOWN) is True
    assert env.manager.schedule_destroy(vm, "h1", ReasonType.UNKNOWN) is True
    taken = env.store.claim("ms2")
    assert taken is not None
    assert env.manager.cancel_destroy(vm) == 1
    assert [w.id for w in env.store.works_for_vm("vm1")] == [taken.id]
    assert taken.type is WorkType.DESTROY


def test_cancel_scheduled_migrations_cancels_the_hosts_untaken_migrations(env: Env) -> None:
    queued = env.add("vm1", WorkType.MIGRATION)
    taken = env.add("vm1", WorkType.MIGRATION)
    other_host = env.add("vm1", WorkType.MIGRATION, host_id="h2")
    stop = env.add("vm1", WorkType.STOP)
    env.store.claim("ms2")  # takes `queued` (lowest id)
    env.store.claim("ms2")  # takes `taken`
    queued2 = env.add("vm1", WorkType.MIGRATION)
    env.clock.advance(5)
    assert env.manager.cancel_scheduled_migrations(env.host()) == 1
    cancelled = env.work(queued2.id)
    assert (cancelled.step, cancelled.mgmt_server_id) == (Step.CANCELLED, "ms1")
    assert cancelled.taken is not None
    assert cancelled.taken.timestamp() == T0 + 5
    for untouched in (queued, taken, other_host, stop):
        assert env.work(untouched.id).step is Step.SCHEDULED


def test_cancel_scheduled_migrations_of_a_storage_host_cancels_stop_works() -> None:
    env = make_env(hosts=[Host("s1", type=HostType.STORAGE)])
    stop = env.add("vm1", WorkType.STOP, host_id="s1")
    migration = env.add("vm1", WorkType.MIGRATION, host_id="s1")
    assert env.manager.cancel_scheduled_migrations(env.host("s1")) == 1
    assert env.work(stop.id).step is Step.CANCELLED
    assert env.work(migration.id).step is Step.SCHEDULED


def test_has_pending_ha_work(env: Env) -> None:
    assert env.manager.has_pending_ha_work("vm1") is False
    env.add("vm1", WorkType.MIGRATION)
    assert env.manager.has_pending_ha_work("vm1") is False
    env.restart()
    assert env.manager.has_pending_ha_work("vm1") is True
    assert env.manager.process_next() is WorkResult.DONE  # the migration: the VM moved away
    env.set_host("h1", status=Status.UP)
    env.inv.script["vm1"] = Verdict.ALIVE
    env.process_all()
    assert env.manager.has_pending_ha_work("vm1") is False


@pytest.mark.parametrize(("tried", "pending"), [(0, True), (5, True), (6, False)])
def test_has_pending_migrations_work_counts_only_works_with_attempts_left(
    env: Env, tried: int, pending: bool
) -> None:
    env.add("vm1", WorkType.MIGRATION, tried=tried)
    env.add("vm1", WorkType.HA)
    assert env.manager.has_pending_migrations_work("vm1") is pending
    assert env.manager.has_pending_migrations_work("vm2") is False


def test_on_vm_powered_off_schedules_an_investigated_restart(env: Env) -> None:
    work = env.manager.on_vm_powered_off(env.vm())
    assert work is not None
    assert (work.step, work.reason) == (Step.INVESTIGATING, ReasonType.UNKNOWN)
    # A second report finds the pending work and does nothing.
    assert env.manager.on_vm_powered_off(env.vm()) is None
    assert len(env.store.works_for_vm("vm1")) == 1


@pytest.mark.parametrize(
    ("settings", "ha_enabled", "scheduled"),
    [
        (Settings(ha_vm_restart_hostup=False), True, False),
        (Settings(), False, False),
        (Settings(force_ha=True), False, True),
    ],
)
def test_on_vm_powered_off_conditions(
    settings: Settings, ha_enabled: bool, scheduled: bool
) -> None:
    env = make_env(settings=settings, vms=[Vm("vm1", host_id="h1", ha_enabled=ha_enabled)])
    assert (env.manager.on_vm_powered_off(env.vm()) is not None) is scheduled
    assert len(env.store.works_for_vm("vm1")) == int(scheduled)


# -- investigate(host_id) (spec §3.3) ------------------------------------------------------


def test_investigate_an_unknown_host_is_alert(env: Env) -> None:
    assert env.manager.investigate("nope") is Status.ALERT
    assert env.manager.investigate(None) is Status.ALERT
    assert env.inv.asked == []


def test_investigate_with_vm_ha_disabled_is_alert_with_an_alert() -> None:
    env = make_env(zone_settings=HA_OFF, script={"h1": Verdict.DEAD})
    assert env.manager.investigate("h1") is Status.ALERT
    assert env.alerts.subjects() == ["VM HA is disabled in zone z1"]
    assert env.inv.asked == []


@pytest.mark.parametrize(
    ("verdict", "status"),
    [(Verdict.ALIVE, Status.UP), (Verdict.DEAD, Status.DOWN), (Verdict.UNKNOWN, None)],
)
def test_investigate_returns_the_chains_outcome(verdict: Verdict, status: Status | None) -> None:
    env = make_env(script={"h1": verdict})
    assert env.manager.investigate("h1") is status
    assert env.inv.asked == ["h1"]
    assert env.alerts.alerts == []


# -- restart (spec §3.6) ----------------------------------------------------------------------


def test_restart_superseded_by_a_newer_ha_work_is_done(env: Env) -> None:
    first = env.restart()
    second = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.work(first.id).step is Step.DONE
    assert env.reasons(first.id)[-1] == f"superseded by HA work {second.id}"
    assert env.calls("advance_stop") == []
    # The newer one does the restart.
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().host_id == "h2"


def test_restart_while_another_ha_work_of_the_vm_runs_is_rescheduled(env: Env) -> None:
    running = env.restart()
    assert env.store.claim("ms2") is not None
    mine = env.add("vm1", WorkType.HA, step=Step.INVESTIGATING)
    # `mine` is newer, so `running` is not its successor; it must wait for it.
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    work = env.work(mine.id)
    assert (work.time_to_try, work.tried, work.mgmt_server_id) == (T0 + 60, 1, None)
    assert env.work(running.id).mgmt_server_id == "ms2"
    assert env.vm().state is VmState.RUNNING


def test_restart_ignores_newer_and_running_works_of_other_types(env: Env) -> None:
    env.add("vm1", WorkType.MIGRATION, priority=10)
    running = env.store.claim("ms2")  # a migration of the VM, taken and not finished
    assert running is not None
    assert running.type is WorkType.MIGRATION
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    env.add("vm1", WorkType.STOP, priority=-1)  # newer, but not an HA work
    assert env.manager.process_next() is WorkResult.DONE
    assert env.work(work.id).step is Step.DONE
    assert env.reasons(work.id)[-1] == "started on host h2"
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")


@pytest.mark.parametrize(
    "type", [WorkType.HA, WorkType.MIGRATION, WorkType.STOP, WorkType.FORCE_STOP]
)
def test_a_work_for_an_unknown_vm_is_logged_marked_error_and_the_queue_goes_on(
    env: Env, type: WorkType, caplog: pytest.LogCaptureFixture
) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    bad = env.add("ghost", type, step=Step.INVESTIGATING, host_id="h1", priority=10)
    good = env.restart()
    assert env.manager.process_next() is WorkResult.ERROR
    assert env.work(bad.id).step is Step.ERROR
    assert env.reasons(bad.id) == ["unknown VM 'ghost'"]
    assert "unknown VM 'ghost'" in caplog.text
    assert any("ghost" in subject and "Error" in subject for subject in env.alerts.subjects())
    assert env.manager.process_next() is WorkResult.DONE
    assert env.work(good.id).step is Step.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")


def test_a_destroy_of_a_vm_that_no_longer_exists_is_done(env: Env) -> None:
    work = env.add("ghost", WorkType.DESTROY)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id) == ["the VM no longer exists"]


@pytest.mark.parametrize(
    "reason", [ReasonType.HOST_DOWN, ReasonType.HOST_MAINTENANCE, ReasonType.HOST_DEGRADED]
)
def test_restart_is_cancelled_when_the_host_is_up_again(reason: ReasonType) -> None:
    env = make_env(script={"h1": Verdict.ALIVE})
    work = env.restart(reason=reason)
    assert env.manager.process_next() is WorkResult.CANCELLED
    assert env.work(work.id).step is Step.CANCELLED
    assert env.calls("advance_stop") == []
    assert env.vm().host_id == "h1"


def test_restart_for_reason_unknown_is_not_cancelled_by_a_host_up(env: Env) -> None:
    env.inv.script.update({"h1": Verdict.ALIVE, "vm1": Verdict.ALIVE})
    work = env.restart(reason=ReasonType.UNKNOWN)
    # Not cancelled: the VM is asked about, found alive on a host still Down
    # in the host table, and looked at again later.
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.work(work.id).time_to_try == T0 + 60


@pytest.mark.parametrize(
    "change", [{"state": VmState.STOPPING}, {"updated": 9}], ids=["state", "updated"]
)
def test_restart_of_a_changed_vm_is_done(env: Env, change: dict[str, Any]) -> None:
    work = env.restart()
    env.change_vm(**change)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1].startswith("the VM has been changed")
    assert env.calls("advance_stop") == env.calls("advance_start") == []


def test_restart_of_a_vm_in_state_error_is_done(env: Env) -> None:
    work = env.restart()
    env.change_vm(state=VmState.ERROR)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1] == "the VM is in state Error"
    assert env.calls("advance_start") == []


def test_restart_of_a_vm_now_on_another_host_is_done(env: Env) -> None:
    work = env.restart()
    env.change_vm(host_id="h2")
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1] == "the VM is now on host h2"
    assert env.calls("advance_stop") == []


def test_restart_for_an_unknown_host_ends_in_error(env: Env) -> None:
    env.change_vm(host_id="h9")
    work = env.restart()
    assert env.manager.process_next() is WorkResult.ERROR
    assert env.work(work.id).step is Step.ERROR
    assert env.calls("advance_stop") == []


def test_restart_of_a_dead_vm_stops_and_starts_it_without_fencing(env: Env) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.fencer.calls == []
    assert [(c.method, c.force) for c in env.orch.calls if c.method.startswith("advance")] == [
        ("advance_stop", True),
        ("advance_start", None),
    ]
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert env.steps(work.id) == ["Investigating", "Fencing", "Scheduled", "Done"]
    assert env.reasons(work.id)[1] == "the VM is dead (Scripted)"
    assert env.alerts.subjects() == ["HA starting VM: vm1 (vm1)"]
    assert env.work(work.id).step is Step.DONE


def test_restart_of_an_alive_vm_on_an_up_host_is_done(env: Env) -> None:
    env.set_host("h1", status=Status.UP)
    env.inv.script["vm1"] = Verdict.ALIVE
    env.restart(reason=ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("advance_stop") == []
    assert env.vm().host_id == "h1"


@pytest.mark.parametrize("status", [Status.DOWN, Status.ALERT, Status.DISCONNECTED])
def test_restart_of_an_alive_vm_on_a_host_not_up_is_looked_at_again(status: Status) -> None:
    env = make_env(script={"vm1": Verdict.ALIVE})
    env.set_host("h1", status=status)
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    row = env.work(work.id)
    assert (row.time_to_try, row.tried, row.step) == (T0 + 60, 1, Step.INVESTIGATING)
    assert env.calls("advance_stop") == []
    assert env.fencer.calls == []


def test_restart_when_the_investigators_cannot_tell_fences_then_restarts(env: Env) -> None:
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.fencer.calls == [("vm1", "h1")]
    assert env.reasons(work.id)[1] == "fenced by level 0 (ScriptedFencer)"
    assert env.vm().host_id == "h2"


def test_a_down_host_that_shows_life_before_its_fence_is_not_fenced(env: Env) -> None:
    # The VM cannot be judged (fence needed), but the host, Down since the
    # verdict, is found alive (cut off from us, so not Up) when looked at again
    # right before the fence: no fence, look again later.
    env.inv.script["h1"] = Verdict.ALIVE
    env.inv.unreachable.add("h1")
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.fencer.calls == []
    assert env.calls("advance_stop") == env.calls("advance_start") == []
    row = env.work(work.id)
    assert (row.time_to_try, row.step) == (T0 + 60, Step.INVESTIGATING)
    assert env.reasons(work.id)[-1] == (
        "not fenced: host h1 shows life since it was declared Down (Scripted: scripted ALIVE)"
    )
    env.inv.script["h1"] = Verdict.DEAD  # dead again: the fence goes on
    env.clock.advance(60)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.fencer.calls == [("vm1", "h1")]
    assert env.vm().host_id == "h2"


@pytest.mark.parametrize("fence", [FenceOutcome.NOT_FENCED, FenceOutcome.NOT_APPLICABLE])
def test_restart_that_could_not_fence_alerts_and_retries_later(fence: FenceOutcome) -> None:
    env = make_env(fence=fence)
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    (alert,) = [a for a in env.alerts.alerts if a.subject.startswith("Unable to restart")]
    assert alert.subject == "Unable to restart vm1 (vm1) which was running on host h1"
    assert alert.type is AlertType.USERVM
    row = env.work(work.id)
    assert (row.time_to_try, row.tried, row.step) == (T0 + 600, 1, Step.INVESTIGATING)
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h1")
    assert env.calls("advance_stop") == env.calls("advance_start") == []


def test_restart_off_a_removed_host_stops_the_vm_without_investigation(env: Env) -> None:
    env.set_host("h1", status=Status.REMOVED)
    env.inv.script["vm1"] = Verdict.ALIVE  # would block the restart if it were asked
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.fencer.calls == []
    assert [c.force for c in env.calls("advance_stop")] == [True]
    assert env.vm().host_id == "h2"
    assert env.steps(work.id) == ["Investigating", "Scheduled", "Done"]
    (start,) = env.calls("advance_start")
    assert start.params is not None
    assert start.params.avoid_hosts == {"h1"}


def test_restart_of_a_non_ha_vm_leaves_it_stopped() -> None:
    env = make_env(vms=[Vm("vm1", host_id="h1")], script={"vm1": Verdict.DEAD})
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.STOPPED
    assert env.calls("advance_start") == []
    assert env.reasons(work.id)[-1] == "the VM is not HA-enabled: it stays stopped"


def test_restart_with_force_ha_restarts_a_non_ha_vm() -> None:
    env = make_env(
        vms=[Vm("vm1", host_id="h1")],
        script={"vm1": Verdict.DEAD},
        settings=Settings(force_ha=True),
    )
    env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")


def test_restart_of_a_local_storage_vm_whose_host_is_down_is_done(env: Env) -> None:
    env.orch.add_vm(env.vm(), local_storage=True)
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.STOPPED
    assert env.calls("advance_start") == []
    assert env.reasons(work.id)[-1] == "the VM cannot run on another host (local storage)"


def test_restart_of_a_local_storage_vm_whose_host_is_up_starts_it_there() -> None:
    env = make_env(hosts=[Host("h1", status=Status.UP), Host("h2", status=Status.UP)])
    env.orch.add_vm(env.vm(), local_storage=True)
    env.restart(investigate=False, reason=ReasonType.HOST_MAINTENANCE)
    assert env.manager.process_next() is WorkResult.DONE
    (start,) = env.calls("advance_start")
    assert start.params is not None
    assert start.params.avoid_hosts == frozenset()
    assert env.vm().host_id == "h1"


def test_restart_start_params() -> None:
    env = make_env(
        settings=Settings(ha_tag="ha-only"),
        orch_hosts=[
            FakeOrchestratorHost("h1", tags={"ha-only"}),
            FakeOrchestratorHost("h2"),
            FakeOrchestratorHost("h3", tags={"ha-only"}),
        ],
        script={"vm1": Verdict.DEAD},
    )
    env.store.next_generation("vm1")  # an earlier restart used generation 1
    work = env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    (start,) = env.calls("advance_start")
    assert start.params == StartParams(
        ha_tag="ha-only", ha_operation=True, generation=2, avoid_hosts={"h1"}
    )
    assert start.planner is Planner.DEFAULT
    assert env.work(work.id).generation == 2
    assert env.orch.highest_generation("vm1") == 2
    assert env.vm().host_id == "h3"


def test_restart_retries_once_with_the_ha_planner_after_insufficient_capacity(env: Env) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    env.orch.fail_next_start()
    env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert [(c.planner, c.outcome) for c in env.calls("advance_start")] == [
        (Planner.DEFAULT, "InsufficientCapacityError"),
        (Planner.HA, "h2"),
    ]
    assert [s.planner for s in env.orch.starts] == [Planner.HA]


def test_restart_whose_both_starts_fail_is_rescheduled_with_a_fresh_snapshot(env: Env) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    env.orch.set_host_up("h2", False)
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert [(c.planner, c.outcome) for c in env.calls("advance_start")] == [
        (Planner.DEFAULT, "InsufficientCapacityError"),
        (Planner.HA, "InsufficientCapacityError"),
    ]
    assert "Unable to restart vm1 (vm1)" in env.alerts.subjects()
    row = env.work(work.id)
    assert (row.step, row.time_to_try, row.tried, row.previous_state, row.updated) == (
        Step.SCHEDULED,
        T0 + 600,
        1,
        VmState.STOPPED,
        1,
    )
    # The next attempt (no investigation again: the VM is stopped) succeeds.
    env.orch.set_host_up("h2", True)
    env.clock.advance(600)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().host_id == "h2"


def test_a_failed_start_that_changed_the_vm_is_retried_not_given_up(env: Env) -> None:
    """CloudStack #13510: the worker's own failed start bumps ``updated``."""

    def failing_start(vm_id: str) -> None:
        env.change_vm(vm_id, updated=env.vm(vm_id).updated + 1)
        raise InsufficientCapacityError(vm_id, reason="start failed half-way")

    env.orch.before("advance_start", failing_start)
    env.orch.before("advance_start", failing_start)
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.work(work.id).updated == env.vm().updated == 3
    assert env.manager.process_next() is None
    env.clock.advance(600)
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert env.reasons(work.id)[-1] == "started on host h2"


def test_restart_gives_up_after_the_maximum_attempts_with_an_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(settings=Settings(vm_ha_migration_max_retries=3), script={"vm1": Verdict.DEAD})

    def refused(vm: Vm, params: StartParams, planner: Planner) -> str:
        raise CloudHAError("the orchestrator refused the start")

    monkeypatch.setattr(env.orch, "advance_start", refused)
    work = env.restart()
    results = []
    for _ in range(4):
        results.append(env.manager.process_next())
        env.clock.advance(600)
    assert results == [WorkResult.RESCHEDULED, WorkResult.RESCHEDULED, WorkResult.GAVE_UP, None]
    row = env.work(work.id)
    assert (row.step, row.tried) == (Step.ERROR, 3)
    gave_up = [a for a in env.alerts.alerts if a.subject.startswith("HA gave up")]
    assert [(a.subject, a.type, a.host_id) for a in gave_up] == [
        ("HA gave up on VM vm1 (HA)", AlertType.USERVM, "h1")
    ]
    assert env.steps(work.id)[-1] == "Error"
    assert env.vm().state is VmState.STOPPED


def test_a_restart_waiting_for_room_never_gives_up_and_starts_once_a_host_has_room() -> None:
    env = make_env(settings=Settings(vm_ha_migration_max_retries=3), script={"vm1": Verdict.DEAD})
    env.orch.set_host_up("h2", False)
    work = env.restart()
    results = []
    for _ in range(6):
        results.append(env.manager.process_next())
        env.clock.advance(600)
    assert results == [WorkResult.RESCHEDULED] * 6
    assert env.work(work.id).tried == 6
    assert not [a for a in env.alerts.alerts if a.subject.startswith("HA gave up")]
    assert [a.subject for a in env.alerts.alerts].count("Unable to restart vm1 (vm1)") == 6
    env.orch.set_host_up("h2", True)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.RUNNING
    assert env.vm().host_id == "h2"


def test_a_work_that_meets_an_orchestrator_outage_waits_for_it_and_never_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(settings=Settings(vm_ha_migration_max_retries=3), script={"vm1": Verdict.DEAD})
    work = env.restart()
    real_find = env.orch.find_vm

    def outage(vm_id: str) -> Vm | None:
        raise ProbeConnectionError("the VM orchestrator does not answer")

    monkeypatch.setattr(env.orch, "find_vm", outage)
    for _ in range(5):
        assert env.manager.process_next() is WorkResult.RESCHEDULED
        env.clock.advance(600)
    assert env.work(work.id).step is not Step.ERROR
    monkeypatch.setattr(env.orch, "find_vm", real_find)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.RUNNING
    # A bug (anything but a port that does not answer) still uses the attempts up.
    bug = make_env(settings=Settings(vm_ha_migration_max_retries=2), script={"vm1": Verdict.DEAD})
    bug.restart()

    def broken(vm_id: str) -> Vm | None:
        raise KeyError("bug")

    monkeypatch.setattr(bug.orch, "find_vm", broken)
    assert bug.manager.process_next() is WorkResult.RESCHEDULED
    bug.clock.advance(600)
    assert bug.manager.process_next() is WorkResult.GAVE_UP


def test_a_start_refused_for_a_stale_generation_is_rescheduled_not_doubled(env: Env) -> None:
    """Another worker starts the VM between our checks and our start."""

    def other_worker_starts(vm_id: str) -> None:
        generation = env.store.next_generation(vm_id)
        InMemoryOrchestrator.advance_start(
            env.orch,
            env.vm(vm_id),
            StartParams(generation=generation, avoid_hosts={"h1"}),
            Planner.DEFAULT,
        )

    env.orch.before("advance_start", other_worker_starts)
    work = env.restart(investigate=False, reason=ReasonType.HOST_MAINTENANCE)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert [c.outcome for c in env.calls("advance_start")] == ["h2", "StaleGenerationError"]
    assert len(env.orch.starts) == 1
    env.clock.advance(600)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1] == "the VM is now on host h2"
    assert len(env.orch.starts) == 1


# -- process_next (spec §3.5) ---------------------------------------------------------------


def test_process_next_with_nothing_due_returns_none(env: Env) -> None:
    assert env.manager.process_next() is None
    env.add("vm1", WorkType.STOP, time_to_try=T0 + 100)
    assert env.manager.process_next() is None
    env.clock.advance(99)
    assert env.manager.process_next() is None
    env.clock.advance(1)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.STOPPED


@pytest.mark.parametrize(
    ("type", "interval"),
    [
        (WorkType.MIGRATION, 120),
        (WorkType.HA, 700),
        (WorkType.STOP, 800),
        (WorkType.CHECK_STOP, 800),
        (WorkType.FORCE_STOP, 800),
        (WorkType.DESTROY, 800),
    ],
)
def test_process_with_vm_ha_disabled_in_the_zone_reschedules(type: WorkType, interval: int) -> None:
    # Three different intervals, so each type is seen to use its own (spec §3.5).
    settings = Settings.from_mapping(
        {"migrate.retry.interval": 120, "restart.retry.interval": 700, "stop.retry.interval": 800}
    )
    env = make_env(settings=settings, zone_settings=HA_OFF, script={"vm1": Verdict.DEAD})
    work = env.add("vm1", type)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    row = env.work(work.id)
    assert (row.time_to_try, row.tried, row.mgmt_server_id, row.step) == (
        T0 + interval,
        1,
        None,
        Step.SCHEDULED,
    )
    assert env.vm() == Vm("vm1", host_id="h1", ha_enabled=True)


def test_process_with_vm_ha_disabled_in_the_vms_own_zone() -> None:
    env = make_env(
        vms=[Vm("vm1", host_id="h1", ha_enabled=True, zone="z2")],
        zone_settings={"z2": HA_OFF["z1"]},
    )
    work = env.add("vm1", WorkType.STOP)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.work(work.id).time_to_try == T0 + 600


def test_a_scheduled_work_is_not_cancelled_when_its_host_is_up(env: Env) -> None:
    # Spec §3.6 step 3: only works still Investigating are cancelled; a
    # Scheduled one (the VM was already found dead and stopped) goes on.
    env.inv.script["h1"] = Verdict.ALIVE
    env.set_host("h1", status=Status.UP)
    env.change_vm(state=VmState.STOPPED, host_id=None, last_host_id="h1")
    work = env.add("vm1", WorkType.HA, step=Step.SCHEDULED, reason=ReasonType.HOST_DOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1].startswith("started on host")
    assert env.vm().state is VmState.RUNNING


def test_an_investigating_work_of_a_stopped_vm_is_not_cancelled_when_its_host_is_up(
    env: Env,
) -> None:
    # The VM was stopped already (this work before a server restart marked it
    # Investigating again, or a hand-over that knew it dead): "host is Up
    # again" must not cancel the work and leave the VM Stopped for good.
    env.inv.script["h1"] = Verdict.ALIVE
    env.set_host("h1", status=Status.UP)
    env.change_vm(state=VmState.STOPPED, host_id=None, last_host_id="h1")
    work = env.add("vm1", WorkType.HA, step=Step.INVESTIGATING, reason=ReasonType.HOST_DOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1].startswith("started on host")
    assert env.vm().state is VmState.RUNNING


def test_a_migration_error_other_than_capacity_reschedules_with_the_migration_interval() -> None:
    env, work = migration_env()

    def boom(_vm_id: str) -> None:
        raise ProbeTimeout("libvirt did not answer", host_id="h1")

    env.orch.before("migrate_away", boom)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    row = env.work(work.id)
    assert (row.time_to_try, row.tried) == (T0 + env.manager.settings.migrate_retry_interval, 1)
    assert env.reasons(work.id)[-1].startswith("failed: ProbeTimeout")
    assert env.alerts.alerts == []  # only a lack of room is alerted as such


def test_a_handler_exception_reschedules_with_a_fresh_snapshot(env: Env) -> None:
    def boom(_vm_id: str) -> None:
        raise RuntimeError("orchestrator bug")

    env.orch.before("advance_start", boom)
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    row = env.work(work.id)
    assert (row.step, row.time_to_try, row.tried, row.previous_state, row.updated) == (
        Step.SCHEDULED,
        T0 + 600,
        1,
        VmState.STOPPED,
        1,
    )
    assert env.reasons(work.id)[-1] == "failed: RuntimeError: orchestrator bug"
    env.clock.advance(600)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().host_id == "h2"


def test_a_hand_edited_row_is_marked_error_and_the_queue_goes_on(env: Env) -> None:
    bad = env.add("vm0", WorkType.STOP, priority=10)
    good = env.add("vm1", WorkType.STOP)
    with env.engine.begin() as conn:
        conn.execute(sa.update(op_ha_work).where(op_ha_work.c.id == bad.id).values(type="Reboot"))
    assert env.manager.process_next() is WorkResult.ERROR
    with env.engine.begin() as conn:
        step = conn.execute(
            sa.select(op_ha_work.c.step).where(op_ha_work.c.id == bad.id)
        ).scalar_one()
    assert step == "Error"
    assert env.manager.process_next() is WorkResult.DONE
    assert env.work(good.id).step is Step.DONE
    assert env.manager.process_next() is None
    (record,) = [r for r in env.evidence.records(kind="ha_work") if r.details["work"] == bad.id]
    assert record.reason == f"unreadable row: op_ha_work row {bad.id}: unknown type 'Reboot'"


def test_a_row_edited_by_hand_to_an_unknown_step_is_marked_error_and_the_queue_goes_on(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    bad = env.add("vm0", WorkType.STOP, priority=10)
    good = env.add("vm1", WorkType.STOP)
    with env.engine.begin() as conn:
        conn.execute(
            sa.update(op_ha_work).where(op_ha_work.c.id == bad.id).values(step="Pondering")
        )
    assert env.manager.process_next() is WorkResult.ERROR
    assert f"HA work {bad.id} cannot be read" in caplog.text
    assert env.manager.process_next() is WorkResult.DONE
    assert env.work(good.id).step is Step.DONE
    assert env.work(bad.id).step is Step.ERROR


def test_a_row_edited_by_hand_while_a_worker_holds_it_is_marked_error(env: Env) -> None:
    work = env.add("vm1", WorkType.STOP)

    def edit(_vm_id: str) -> None:
        with env.engine.begin() as conn:
            conn.execute(sa.update(op_ha_work).where(op_ha_work.c.id == work.id).values(type="Nap"))

    env.orch.before("advance_stop", edit)
    assert env.manager.process_next() is WorkResult.ERROR
    with env.engine.begin() as conn:
        step = conn.execute(
            sa.select(op_ha_work.c.step).where(op_ha_work.c.id == work.id)
        ).scalar_one()
    assert step == "Error"
    assert env.manager.process_next() is None  # nothing left claimed or due


def test_a_hand_edited_row_of_a_vm_does_not_block_its_later_restarts(env: Env) -> None:
    # An old row of vm1 edited to an unknown type: it is quarantined once, and
    # scheduling and restarting vm1 (and the host's other VMs) go on.
    env.orch.add_vm(Vm("vm2", host_id="h1", ha_enabled=True))
    old = env.add("vm1", WorkType.HA, step=Step.DONE)
    with env.engine.begin() as conn:
        conn.execute(sa.update(op_ha_work).where(op_ha_work.c.id == old.id).values(type="Reboot"))
    env.manager.schedule_restart_for_vms_on_host(
        env.host("h1"), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert env.process_all() == [WorkResult.DONE, WorkResult.DONE]
    assert (env.vm("vm1").state, env.vm("vm1").host_id) == (VmState.RUNNING, "h2")
    assert (env.vm("vm2").state, env.vm("vm2").host_id) == (VmState.RUNNING, "h2")
    quarantined = [r for r in env.evidence.records(kind="ha_work") if r.details["work"] == old.id]
    assert [r.details["step"] for r in quarantined] == ["Error"]


def test_a_stopped_vm_marked_investigating_again_by_recover_is_still_restarted() -> None:
    # No room at first: fenced, stopped, then the start fails (step Scheduled).
    # The server restarts (recover() marks due works Investigating); the VM,
    # stopped by us and on no host now, is restarted without a second fence.
    env = make_env(orch_hosts=[FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2", capacity=0)])
    work = env.restart()
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.work(work.id).step is Step.SCHEDULED
    assert (env.vm().state, env.vm().host_id) == (VmState.STOPPED, None)
    env.orch.add_host(FakeOrchestratorHost("h2", capacity=5))
    env.clock.advance(env.manager.settings.restart_retry_interval)
    assert env.manager.recover() == (0, 1)
    assert env.work(work.id).step is Step.INVESTIGATING
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert len(env.fencer.calls) == 1


def test_a_crash_between_our_stop_and_the_start_still_restarts_the_vm(env: Env) -> None:
    # The worker proves the VM dead and stops it, then its server dies before
    # the start (here: the claim is handed back just then). The restarted
    # server must not take the worker's own stop for somebody else's change.
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    env.orch.before("find_vm", lambda _vm: None)  # the claim's first read
    env.orch.before("find_vm", lambda _vm: None)  # the snapshot after our stop

    def server_dies(_vm_id: str) -> None:
        env.store.release_server("ms1")

    env.orch.before("find_vm", server_dies)  # the start's read
    assert env.manager.process_next() is WorkResult.LOST
    assert env.orch.starts == ()
    row = env.work(work.id)
    assert (row.step, row.previous_state, row.updated) == (
        Step.SCHEDULED,
        VmState.STOPPED,
        env.vm().updated,
    )
    assert env.manager.recover() == (0, 1)
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert len(env.orch.starts) == 1


class _Crash(BaseException):
    """The process dies here: nothing after it runs, no handler sees it."""


@pytest.mark.parametrize("back", ["restart", "another server"])
def test_a_crash_right_after_our_stop_still_restarts_the_vm(env: Env, back: str) -> None:
    # The worker proves the VM dead and stops it; its server dies before it
    # records the VM as the stop left it (the snapshot's read). The work comes
    # back (the server restarts, or another one takes over): the VM, Stopped
    # on no host, is taken for this work's own stop and restarted, not ended
    # as "changed" with the VM left down.
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    env.orch.before("find_vm", lambda _vm: None)  # the claim's first read

    def server_dies(_vm_id: str) -> None:
        raise _Crash

    env.orch.before("find_vm", server_dies)  # the snapshot after our stop
    with pytest.raises(_Crash):
        env.manager.process_next()
    assert (env.vm().state, env.vm().host_id) == (VmState.STOPPED, None)
    row = env.work(work.id)
    assert (row.step, row.previous_state) == (Step.STOPPING, VmState.RUNNING)
    if back == "restart":
        assert env.manager.recover() == (1, 0)  # released; Stopping is kept
    else:
        assert env.store.release_server("ms1") == 1  # a survivor's on_server_left("ms1")
    assert env.work(work.id).step is Step.STOPPING
    assert env.manager.process_next() is WorkResult.DONE
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert len(env.orch.starts) == 1
    assert len(env.fencer.calls) == 0  # proved dead by the investigator; never fenced


def test_a_change_by_somebody_else_while_the_work_waits_ends_it() -> None:
    # An operator stops the VM while the fence is tried; the fence fails and
    # the work waits. The next attempt sees the change and leaves the VM
    # alone (CloudStack's guard): only our own actions retake the snapshot.
    env = make_env(fence=FenceOutcome.NOT_FENCED)
    work = env.restart()

    def operator_stops(_vm_id: str) -> None:
        env.change_vm(state=VmState.STOPPED, host_id=None, updated=env.vm().updated + 1)

    env.orch.before("find_vm", lambda _vm: None)  # the claim's first read
    env.orch.before("find_vm", operator_stops)  # before the reschedule's read
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert (env.work(work.id).previous_state, env.work(work.id).updated) == (
        VmState.RUNNING,
        work.updated,
    )
    env.clock.advance(env.manager.settings.restart_retry_interval)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1].startswith("the VM has been changed")
    assert env.orch.starts == ()
    assert env.vm().state is VmState.STOPPED


def test_a_claim_taken_away_meanwhile_is_lost_and_writes_nothing(env: Env) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    work = env.restart()
    reclaimed: list[Work] = []

    def server_left(_vm_id: str) -> None:
        env.store.release_server("ms1")
        again = env.store.claim("ms2")
        assert again is not None
        reclaimed.append(again)

    env.orch.before("advance_start", server_left)
    assert env.manager.process_next() is WorkResult.LOST
    row = env.work(work.id)
    assert row == reclaimed[0]
    assert (row.mgmt_server_id, row.step, row.tried) == ("ms2", Step.SCHEDULED, 0)
    assert env.steps(work.id)[-1] != "Done"


# -- migrate (spec §3.7) -----------------------------------------------------------------------


def migration_env(**kwargs: Any) -> tuple[Env, Work]:
    env = make_env(hosts=[Host("h1", status=Status.UP), Host("h2", status=Status.UP)], **kwargs)
    assert env.manager.schedule_migration(env.vm(), ReasonType.HOST_MAINTENANCE)
    (work,) = env.store.works_for_vm("vm1")
    return env, work


def test_migrate_moves_the_vm_and_records_step_migrating() -> None:
    env, work = migration_env()
    seen: list[Step] = []
    env.orch.before("migrate_away", lambda _vm: seen.append(env.work(work.id).step))
    assert env.manager.process_next() is WorkResult.DONE
    assert seen == [Step.MIGRATING]
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert env.work(work.id).step is Step.DONE
    assert env.reasons(work.id)[-1] == "migrated to host h2"


def test_migrate_is_cancelled_when_the_host_is_up_again() -> None:
    env = make_env(script={"h1": Verdict.ALIVE})
    work = env.add(
        "vm1", WorkType.MIGRATION, step=Step.INVESTIGATING, reason=ReasonType.HOST_MAINTENANCE
    )
    assert env.manager.process_next() is WorkResult.CANCELLED
    assert env.work(work.id).step is Step.CANCELLED
    assert env.calls("migrate_away") == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"state": VmState.STOPPED, "host_id": None}, "the VM is stopped"),
        ({"host_id": "h2"}, "the VM already runs on host h2"),
    ],
)
def test_migrate_of_a_stopped_or_moved_vm_is_done(change: dict[str, Any], reason: str) -> None:
    env, work = migration_env()
    env.change_vm(**change)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1] == reason
    assert env.calls("migrate_away") == []


def test_migrate_without_room_alerts_and_retries_after_the_migrate_interval() -> None:
    env, work = migration_env()
    env.orch.fail_next_migration(error=InsufficientCapacityError("vm1", reason="full"))
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    row = env.work(work.id)
    assert (row.step, row.time_to_try, row.tried) == (Step.MIGRATING, T0 + 120, 1)
    (alert,) = env.alerts.alerts
    assert (alert.type, alert.subject, alert.host_id) == (
        AlertType.HOST,
        "Unable to migrate vm1 (vm1) away from host h1",
        "h1",
    )
    assert env.vm().host_id == "h1"


def test_migrate_without_room_tells_the_resource_manager() -> None:
    env, _work = migration_env()
    failures = RecordingMigrationFailures()
    env.manager.resource_manager = failures
    env.orch.fail_next_migration(error=InsufficientCapacityError("vm1", reason="full"))
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert failures.failures == [("h1", "vm1")]


def test_a_failing_resource_manager_does_not_stop_the_migration_work() -> None:
    env, work = migration_env()

    class Broken:
        def migrate_away_failed(self, host_id: str, vm: Vm) -> None:
            raise RuntimeError("resource manager down")

    env.manager.resource_manager = Broken()
    env.orch.fail_next_migration(error=InsufficientCapacityError("vm1", reason="full"))
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    assert env.work(work.id).time_to_try == T0 + env.manager.settings.migrate_retry_interval


def test_migrate_without_a_source_host_ends_in_error() -> None:
    env, work = migration_env()
    env.store.delete([work.id])
    env.change_vm(state=VmState.MIGRATING)
    bad = env.add("vm1", WorkType.MIGRATION, host_id=None)
    assert env.manager.process_next() is WorkResult.ERROR
    assert env.work(bad.id).step is Step.ERROR


# -- stopVM (spec §3.7) -------------------------------------------------------------------------


@pytest.mark.parametrize("type", [WorkType.STOP, WorkType.CHECK_STOP, WorkType.FORCE_STOP])
def test_stop_is_cancelled_when_the_host_is_up_again(type: WorkType) -> None:
    env = make_env(script={"h1": Verdict.ALIVE})
    work = env.add("vm1", type, step=Step.INVESTIGATING, reason=ReasonType.HOST_DOWN)
    assert env.manager.process_next() is WorkResult.CANCELLED
    assert env.work(work.id).step is Step.CANCELLED
    assert env.vm().state is VmState.RUNNING


@pytest.mark.parametrize(
    ("type", "force"),
    [(WorkType.STOP, False), (WorkType.CHECK_STOP, False), (WorkType.FORCE_STOP, True)],
)
def test_stop_types_stop_with_their_force_flag(env: Env, type: WorkType, force: bool) -> None:
    assert env.manager.schedule_stop(env.vm(), "h1", type, ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert [c.force for c in env.calls("advance_stop")] == [force]
    assert env.vm().state is VmState.STOPPED


@pytest.mark.parametrize("type", [WorkType.CHECK_STOP, WorkType.FORCE_STOP])
@pytest.mark.parametrize(
    "change",
    [{"state": VmState.STARTING}, {"updated": 3}, {"host_id": "h2"}],
    ids=["state", "updated", "host"],
)
def test_check_and_force_stop_of_a_changed_vm_are_done(
    env: Env, type: WorkType, change: dict[str, Any]
) -> None:
    assert env.manager.schedule_stop(env.vm(), "h1", type, ReasonType.UNKNOWN)
    env.change_vm(**change)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("advance_stop") == []


def test_plain_stop_ignores_changes(env: Env) -> None:
    assert env.manager.schedule_stop(env.vm(), "h1", WorkType.STOP, ReasonType.UNKNOWN)
    env.change_vm(updated=3, host_id="h2")
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.STOPPED


def test_a_failed_stop_is_retried_after_the_stop_interval(env: Env) -> None:
    env.orch.fail_next_stop(error=ProbeTimeout("h1 does not answer", host_id="h1"))
    assert env.manager.schedule_stop(env.vm(), "h1", WorkType.FORCE_STOP, ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    (work,) = env.store.works_for_vm("vm1")
    assert (work.time_to_try, work.tried) == (T0 + 600, 1)
    env.clock.advance(600)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().state is VmState.STOPPED


# -- destroyVM (spec §3.7) -----------------------------------------------------------------------


def test_destroy_a_vm_that_no_longer_exists_is_done(env: Env) -> None:
    env.add("ghost", WorkType.DESTROY)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("destroy") == []


def test_destroy_is_cancelled_when_the_host_is_up_again() -> None:
    env = make_env(script={"h1": Verdict.ALIVE})
    work = env.add("vm1", WorkType.DESTROY, step=Step.INVESTIGATING, reason=ReasonType.HOST_DOWN)
    assert env.manager.process_next() is WorkResult.CANCELLED
    assert env.work(work.id).step is Step.CANCELLED
    assert env.calls("destroy") == []


@pytest.mark.parametrize("vm_type", [VmType.SECONDARY_STORAGE_VM, VmType.CONSOLE_PROXY])
def test_destroy_expunges_ssvm_and_console_proxy(vm_type: VmType) -> None:
    env = make_env(vms=[Vm("vm1", type=vm_type, state=VmState.DESTROYED)])
    work = env.add("vm1", WorkType.DESTROY, host_id=None)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.orch.find_vm("vm1") is None
    assert env.reasons(work.id)[-1] == "expunged"


def test_destroy_of_an_already_destroyed_user_vm_is_done() -> None:
    env = make_env(vms=[Vm("vm1", state=VmState.DESTROYED)])
    env.add("vm1", WorkType.DESTROY, host_id=None)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("destroy") == []
    assert env.vm().state is VmState.DESTROYED


def test_destroy_of_a_running_vm_force_stops_it_first(env: Env) -> None:
    assert env.manager.schedule_destroy(env.vm(), "h1", ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert [
        (c.method, c.force) for c in env.orch.calls if c.method in ("advance_stop", "destroy")
    ] == [
        ("advance_stop", True),
        ("destroy", None),
    ]
    assert env.vm().state is VmState.DESTROYED


def test_destroy_of_a_stopped_vm_does_not_stop_it(env: Env) -> None:
    env.change_vm(state=VmState.STOPPED, host_id=None, last_host_id="h1")
    assert env.manager.schedule_destroy(env.vm(), "h1", ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("advance_stop") == []
    assert env.vm().state is VmState.DESTROYED


def test_destroy_of_an_expunging_vm_is_done_without_destroying(env: Env) -> None:
    env.change_vm(state=VmState.EXPUNGING, host_id=None)
    assert env.manager.schedule_destroy(env.vm(), None, ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.calls("destroy") == []
    assert env.vm().state is VmState.EXPUNGING


def test_destroy_whose_host_does_not_answer_is_retried_after_the_stop_interval(env: Env) -> None:
    env.orch.fail_next_stop(error=ProbeTimeout("h1 does not answer", host_id="h1"))
    assert env.manager.schedule_destroy(env.vm(), "h1", ReasonType.UNKNOWN)
    assert env.manager.process_next() is WorkResult.RESCHEDULED
    (work,) = env.store.works_for_vm("vm1")
    assert (work.time_to_try, work.tried) == (T0 + 600, 1)
    assert env.vm().state is VmState.RUNNING
    assert env.calls("destroy") == []


# -- lifecycle ------------------------------------------------------------------------------------


class IdleThreads:
    """A thread factory whose threads do nothing: start() without workers running."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, *, target: Callable[[], None], name: str, daemon: bool) -> threading.Thread:
        self.names.append(name)
        return threading.Thread(target=lambda: None, name=name, daemon=daemon)


def threaded_manager(
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    settings: Settings | None = None,
    orch: HookedOrchestrator | None = None,
    thread_factory: Any = threading.Thread,
) -> tuple[HighAvailabilityManager, WorkStore, HookedOrchestrator]:
    clock = clock or SystemClock()
    engine = make_engine(f"sqlite:///{tmp_path / 'ha.db'}")
    # The store first: every connection, the schema's included, is then opened
    # with its hooks (WAL, busy timeout). A connection pooled before them makes
    # a later connection's switch to WAL fail with "database is locked" while
    # a worker holds a transaction.
    store = WorkStore(engine, clock)
    create_schema(engine)
    directory = InMemoryHostDirectory(
        [Host("h1", status=Status.DOWN), Host("h2", status=Status.UP)]
    )
    orch = orch or HookedOrchestrator(
        [FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2")],
        [Vm("vm1", host_id="h1", ha_enabled=True)],
    )
    manager = HighAvailabilityManager(
        server_id="ms1",
        store=store,
        orchestrator=orch,
        directory=directory,
        investigators=InvestigatorChain(
            [ScriptedInvestigator(clock, script={"vm1": Verdict.DEAD})]
        ),
        fence_chain=FenceChain([ScriptedFencer(clock)], clock=clock, runner=InlineRunner(clock)),
        settings=settings or Settings(ha_workers=2, time_to_sleep=3600),
        clock=clock,
        alerts=RecordingAlertSink(),
        thread_factory=thread_factory,
    )
    return manager, store, orch


def another_server(
    manager: HighAvailabilityManager,
    server_id: str,
    *,
    store: WorkStorePort | None = None,
    clock: Clock | None = None,
    thread_factory: Any = threading.Thread,
) -> HighAvailabilityManager:
    """A manager of another (or a restarted) server over ``manager``'s store and world."""
    return HighAvailabilityManager(
        server_id=server_id,
        store=store or manager.store,
        orchestrator=manager.orchestrator,
        directory=manager.directory,
        investigators=manager.investigators,
        fence_chain=manager.fence_chain,
        settings=manager.settings,
        clock=clock or manager.clock,
        alerts=manager.alerts,
        thread_factory=thread_factory,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_start_releases_stale_claims_marks_due_works_and_names_its_threads(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    threads = IdleThreads()
    manager, store, _ = threaded_manager(tmp_path, clock=clock, thread_factory=threads)
    stale = store.add("vm1", WorkType.HA, VmState.RUNNING)
    assert store.claim("ms1") is not None
    other = store.add("vm4", WorkType.HA, VmState.RUNNING)
    assert store.claim("ms2") is not None
    due = store.add("vm2", WorkType.HA, VmState.RUNNING)
    future = store.add("vm3", WorkType.HA, VmState.RUNNING, time_to_try=T0 + 60)
    manager.start()
    try:
        assert threads.names == ["HA-Worker-0", "HA-Worker-1", "HA-Cleanup"]
        assert [t.name for t in manager.threads] == threads.names
        rows = {w.id: store.get(w.id) for w in (stale, due, future, other)}
        assert {i: (w.mgmt_server_id, w.step) for i, w in rows.items() if w is not None} == {
            stale.id: (None, Step.INVESTIGATING),
            due.id: (None, Step.INVESTIGATING),
            future.id: (None, Step.SCHEDULED),
            other.id: ("ms2", Step.SCHEDULED),
        }
        with pytest.raises(LifecycleError):
            manager.start()
    finally:
        manager.stop()


def test_workers_woken_by_scheduling_restart_the_vm(tmp_path: Path) -> None:
    manager, store, orch = threaded_manager(tmp_path)
    manager.start()
    try:
        workers = [t for t in manager.threads if t.name.startswith("HA-Worker-")]
        assert [t.name for t in workers] == ["HA-Worker-0", "HA-Worker-1"]
        assert all(t.is_alive() for t in manager.threads)
        time.sleep(0.2)  # let the workers find nothing and go to sleep for an hour
        vm = orch.find_vm("vm1")
        assert vm is not None
        work = manager.schedule_restart(vm, investigate=True, reason=ReasonType.HOST_DOWN)
        assert work is not None
        wait_until(lambda: (row := store.get(work.id)) is not None and row.step is Step.DONE)
        assert [(s.vm_id, s.host_id) for s in orch.starts] == [("vm1", "h2")]
    finally:
        manager.stop()
    assert not any(t.is_alive() for t in manager.threads)


def test_stop_hands_back_the_works_this_server_holds(tmp_path: Path) -> None:
    manager, store, _ = threaded_manager(tmp_path)
    manager.start()
    held = store.add("vm9", WorkType.HA, VmState.RUNNING)  # no wake-up: workers keep sleeping
    assert store.claim("ms1") is not None
    manager.stop()
    row = store.get(held.id)
    assert row is not None
    assert (row.mgmt_server_id, row.taken, row.step) == (None, None, Step.INVESTIGATING)
    assert not any(t.is_alive() for t in manager.threads)


def test_stop_with_several_stuck_workers_waits_one_timeout_in_all(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)
    vms = [Vm(f"vm{i}", host_id="h1", ha_enabled=True) for i in range(4)]
    orch = HookedOrchestrator([FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2")], vms)

    def stuck(_vm_id: str) -> None:
        entered.release()
        release.wait(10)

    manager, _store, _ = threaded_manager(
        tmp_path, orch=orch, settings=Settings(ha_workers=4, time_to_sleep=3600)
    )
    for vm in vms:
        manager.schedule_restart(vm, investigate=True, reason=ReasonType.HOST_DOWN)
        orch.before("find_vm", stuck)
    manager.start()
    try:
        for _ in vms:
            assert entered.acquire(timeout=5)
        started = time.monotonic()
        with pytest.raises(LifecycleError) as info:
            manager.stop(timeout=0.5)
        elapsed = time.monotonic() - started
        assert all(f"HA-Worker-{i}" in str(info.value) for i in range(4))
        assert elapsed < 0.5 + 1.0  # one timeout for the four, not four
    finally:
        release.set()
        for thread in manager.threads:
            thread.join(5)


def test_stop_with_a_stuck_worker_raises_and_still_hands_its_work_back(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Event()
    orch = HookedOrchestrator(
        [FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2")],
        [Vm("vm1", host_id="h1", ha_enabled=True)],
    )

    def stuck(_vm_id: str) -> None:
        entered.set()
        release.wait(10)

    manager, store, _ = threaded_manager(
        tmp_path, orch=orch, settings=Settings(ha_workers=1, time_to_sleep=3600)
    )
    work = manager.schedule_restart(
        orch.find_vm("vm1") or Vm("?"), investigate=True, reason=ReasonType.HOST_DOWN
    )
    assert work is not None
    orch.before("find_vm", stuck)
    manager.start()
    assert entered.wait(5)
    with pytest.raises(LifecycleError, match="HA-Worker-0"):
        manager.stop(timeout=0.2)
    row = store.get(work.id)
    assert row is not None
    assert (row.mgmt_server_id, row.step) == (None, Step.INVESTIGATING)
    release.set()
    for thread in manager.threads:
        thread.join(5)
    # The late worker acted no further on the work it no longer holds: it
    # neither stopped nor started the VM, nor recorded anything.
    row = store.get(work.id)
    assert row is not None
    assert (row.mgmt_server_id, row.step) == (None, Step.INVESTIGATING)
    assert [c.method for c in orch.calls if c.method != "find_vm"] == []
    assert orch.starts == ()
    vm = orch.find_vm("vm1")
    assert vm is not None
    assert (vm.state, vm.host_id) == (VmState.RUNNING, "h1")
    # So the next server finds the VM as scheduled and restarts it elsewhere.
    other = another_server(manager, "ms2")
    assert other.process_next() is WorkResult.DONE
    vm = orch.find_vm("vm1")
    assert vm is not None
    assert (vm.state, vm.host_id) == (VmState.RUNNING, "h2")
    assert len(orch.starts) == 1


def test_on_server_left_releases_another_servers_claims(env: Env) -> None:
    work = env.add("vm1", WorkType.STOP)
    assert env.store.claim("ms2") is not None
    assert env.manager.on_server_left("ms2") == 1
    row = env.work(work.id)
    assert (row.mgmt_server_id, row.taken) == (None, None)
    assert env.manager.on_server_left("ms3") == 0
    with pytest.raises(ValueError, match="other servers"):
        env.manager.on_server_left("ms1")


def test_cleanup_deletes_finished_works_older_than_time_between_failures(env: Env) -> None:
    old_done = env.add("vm1", WorkType.STOP)
    env.manager.process_next()
    old_cancelled = env.add("vm1", WorkType.MIGRATION, step=Step.INVESTIGATING)
    env.manager.cancel_scheduled_migrations(env.host())
    old_error = env.add("vm1", WorkType.HA, step=Step.ERROR)
    env.clock.advance(1800)
    recent_done = env.add("vm2", WorkType.STOP)
    env.manager.process_next()
    pending = env.add("vm1", WorkType.DESTROY, time_to_try=T0 + 10_000)
    assert env.manager.cleanup() == 0
    env.clock.advance(1801)
    assert env.manager.cleanup() == 2
    kept = {w.id for w in env.store.works_for_vm("vm1") + env.store.works_for_vm("vm2")}
    assert kept == {old_error.id, recent_done.id, pending.id}
    assert {old_done.id, old_cancelled.id}.isdisjoint(kept)


class CapturingThreads(IdleThreads):
    """Like IdleThreads, but keeps each thread's target to run by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[str, Callable[[], None]] = {}

    def __call__(self, *, target: Callable[[], None], name: str, daemon: bool) -> threading.Thread:
        self.targets[name] = target
        return super().__call__(target=target, name=name, daemon=daemon)


class PeriodsClock:
    """A fake clock whose waits each pass the whole period; the ``periods``-th wait ends."""

    def __init__(self, start: float, periods: int) -> None:
        self.fake = FakeClock(start)
        self.periods = periods
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.fake.monotonic()

    def now(self) -> dt.datetime:
        return self.fake.now()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if len(self.waits) >= self.periods:
            event.set()
        return self.fake.wait(event, seconds)


def test_the_cleanup_thread_deletes_finished_works_every_time_between_cleanup() -> None:
    settings = Settings.from_mapping({"time.between.cleanup": 7200, "time.between.failures": 3600})
    env = make_env(settings=settings)
    done = env.add("vm1", WorkType.STOP)
    env.manager.process_next()
    assert env.work(done.id).step is Step.DONE
    clock = PeriodsClock(T0, periods=2)
    threads = CapturingThreads()
    manager = another_server(
        env.manager, "ms1", store=WorkStore(env.engine, clock), clock=clock, thread_factory=threads
    )
    manager.start()
    threads.targets["HA-Cleanup"]()  # one period passes, it cleans, the second wait ends it
    assert clock.waits == [7200, 7200]
    assert env.store.get(done.id) is None
    manager.stop()


# -- odds and ends ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type", "method"),
    [
        (WorkType.HA, "advance_start"),
        (WorkType.FORCE_STOP, "advance_stop"),
        (WorkType.DESTROY, "destroy"),
    ],
)
def test_a_vm_that_vanishes_during_the_operation_ends_the_work(
    env: Env, type: WorkType, method: str
) -> None:
    env.inv.script["vm1"] = Verdict.DEAD
    if type is WorkType.HA:
        work = env.restart()
    else:
        # A Destroy of a Stopped VM goes straight to destroy().
        state = VmState.STOPPED if type is WorkType.DESTROY else VmState.RUNNING
        work = env.add("vm1", type, previous_state=state)
    env.orch.before(method, env.orch.remove_vm)
    assert env.manager.process_next() is WorkResult.DONE
    assert env.reasons(work.id)[-1] == "the VM no longer exists"
    assert env.orch.starts == ()


class BrokenAlertSink:
    def send(self, alert: Alert) -> None:
        raise OSError("mail server down")


def test_a_failing_alert_sink_does_not_stop_the_restart(env: Env) -> None:
    env.manager.alerts = BrokenAlertSink()
    env.inv.script["vm1"] = Verdict.DEAD
    env.restart()
    assert env.manager.process_next() is WorkResult.DONE
    assert env.vm().host_id == "h2"


class BrokenEvidenceSink:
    def record(self, evidence: object) -> None:
        raise OSError("disk full")


def test_a_failing_evidence_sink_does_not_stop_the_restart() -> None:
    env = make_env(script={"vm1": Verdict.DEAD})
    manager = HighAvailabilityManager(
        server_id="ms1",
        store=env.store,
        orchestrator=env.orch,
        directory=env.directory,
        investigators=InvestigatorChain([env.inv]),
        fence_chain=FenceChain([env.fencer], clock=env.clock, runner=InlineRunner(env.clock)),
        settings=Settings(),
        clock=env.clock,
        alerts=BrokenAlertSink(),
        evidence=BrokenEvidenceSink(),
    )
    work = manager.schedule_restart(env.vm(), investigate=True, reason=ReasonType.HOST_DOWN)
    assert work is not None
    assert manager.process_next() is WorkResult.DONE
    assert env.vm().host_id == "h2"
    assert env.work(work.id).step is Step.DONE


def test_a_transient_database_error_is_retried_on_the_managers_clock(env: Env) -> None:
    # The fault comes from the driver, under the SQL adapter, which turns it
    # into StoreUnavailableError: the manager knows nothing of SQLAlchemy.
    env.add("vm1", WorkType.FORCE_STOP)
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    failures = [locked]

    def flaky(*_args: Any) -> None:
        if failures:
            raise failures.pop()

    sa.event.listen(env.engine, "before_cursor_execute", flaky)
    try:
        assert env.manager.process_next() is WorkResult.DONE
    finally:
        sa.event.remove(env.engine, "before_cursor_execute", flaky)
    assert failures == []
    assert env.now > T0  # the back-off waited on the fake clock, not in real time
    assert env.vm().state is VmState.STOPPED


def test_a_store_that_stays_unavailable_fails_after_the_retries(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def down(server_id: str) -> Work | None:
        nonlocal calls
        calls += 1
        raise StoreUnavailableError("connection refused")

    monkeypatch.setattr(env.store, "claim", down)
    with pytest.raises(StoreUnavailableError):
        env.manager.process_next()
    assert calls == 5
    assert env.manager.work_tick() == float(env.manager.settings.time_to_sleep)


def test_a_permanent_store_error_is_not_retried(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    def broken(server_id: str) -> Work | None:
        nonlocal calls
        calls += 1
        raise StoreError("no such table: op_ha_work")

    monkeypatch.setattr(env.store, "claim", broken)
    with pytest.raises(StoreError):
        env.manager.process_next()
    assert (calls, env.now) == (1, T0)


def test_lifecycle_states(env: Env) -> None:
    env.manager.stop()  # never started: nothing to do
    with pytest.raises(LifecycleError):
        env.manager.start()
    with pytest.raises(ConfigurationError):
        HighAvailabilityManager(
            server_id="",
            store=env.store,
            orchestrator=env.orch,
            directory=env.directory,
            investigators=InvestigatorChain([env.inv]),
            fence_chain=FenceChain([env.fencer], clock=env.clock),
            settings=Settings(),
            clock=env.clock,
            alerts=env.alerts,
        )


# -- the loop API (work_tick, cleanup_tick, loops, on_work_added) ---------------------------------


def test_work_tick_processes_one_work_then_reports_the_idle_delay() -> None:
    env = make_env(settings=Settings(time_to_sleep=42))
    first = env.add("vm1", WorkType.FORCE_STOP)
    assert env.manager.work_tick() == 0.0
    assert env.work(first.id).step is Step.DONE
    assert env.manager.work_tick() == 42.0  # nothing due


def test_work_tick_never_raises_when_claiming_fails(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(server_id: str) -> Work | None:
        raise RuntimeError("store broken")

    monkeypatch.setattr(env.store, "claim", broken)
    assert env.manager.work_tick() == float(env.manager.settings.time_to_sleep)


def test_cleanup_tick_cleans_and_returns_time_between_cleanup() -> None:
    settings = Settings.from_mapping({"time.between.cleanup": 7200, "time.between.failures": 60})
    env = make_env(settings=settings)
    done = env.add("vm1", WorkType.STOP)
    env.manager.process_next()
    env.clock.advance(61)
    assert env.manager.cleanup_tick() == 7200.0
    assert env.store.get(done.id) is None


def test_loops_are_the_workers_then_the_cleanup() -> None:
    settings = Settings.from_mapping({"ha.workers": 3, "time.between.cleanup": 900})
    env = make_env(settings=settings)
    loops = env.manager.loops()
    assert [(lp.name, lp.wake_on_work, lp.first_delay) for lp in loops] == [
        ("HA-Worker-0", True, 0.0),
        ("HA-Worker-1", True, 0.0),
        ("HA-Worker-2", True, 0.0),
        ("HA-Cleanup", False, 900.0),
    ]
    assert loops[0].tick == env.manager.work_tick
    assert loops[-1].tick == env.manager.cleanup_tick


def test_on_work_added_is_called_after_the_work_is_committed(env: Env) -> None:
    seen: list[list[int]] = []
    env.manager.on_work_added = lambda: seen.append([w.id for w in env.store.pending_for_vm("vm1")])
    work = env.restart()
    assert seen == [[work.id]]  # the row was already there when the waker ran
    assert env.manager.schedule_stop(env.vm(), "h1", WorkType.STOP, ReasonType.UNKNOWN)
    assert len(seen) == 2


def test_a_failing_on_work_added_does_not_fail_the_scheduling(env: Env) -> None:
    def broken() -> None:
        raise RuntimeError("simulator gone")

    env.manager.on_work_added = broken
    work = env.restart()
    assert env.work(work.id).step is Step.INVESTIGATING


# -- the manager on the in-memory store -------------------------------------------------------


def test_the_manager_runs_on_the_in_memory_store_quarantine_included() -> None:
    env = make_env(script={"vm1": Verdict.DEAD})
    store = InMemoryWorkStore(env.clock)
    manager = another_server(env.manager, "ms1", store=store)
    bad = store.add("vm9", WorkType.HA, VmState.RUNNING)
    store.corrupt(bad.id, "type", "Teleport")
    work = manager.schedule_restart(env.vm(), investigate=True, reason=ReasonType.HOST_DOWN)
    assert work is not None
    # The hand-edited row comes first (lower id): it is marked Error, the queue goes on.
    assert manager.process_next() is WorkResult.ERROR
    assert manager.process_next() is WorkResult.DONE
    assert manager.process_next() is None
    assert env.vm().host_id == "h2"
    done = store.get(work.id)
    assert done is not None
    assert (done.step, done.generation) == (Step.DONE, 1)
    assert store.pending_for_vm("vm9") == []
