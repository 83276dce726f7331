"""The in-memory VM orchestrator fake and the orchestrator port's value types."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import pytest

from cloudha.errors import CloudHAError, ProbeTimeout
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
    VmOrchestrator,
)
from cloudha.model import Vm, VmState
from cloudha.testing.orchestrator import FakeOrchestratorHost, InMemoryOrchestrator, StartRecord
from tests.unit.orchestrator_contract import check_orchestrator


def stopped(vm_id: str = "vm-1", last: str | None = "h1") -> Vm:
    return Vm(vm_id, state=VmState.STOPPED, last_host_id=last, ha_enabled=True)


def fake(
    *hosts: FakeOrchestratorHost,
    vms: Sequence[Vm] = (),
    reserved_tag: str | None = None,
    local_storage: Sequence[str] = (),
) -> InMemoryOrchestrator:
    return InMemoryOrchestrator(
        hosts or [FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2")],
        vms,
        reserved_tag=reserved_tag,
        local_storage=local_storage,
    )


def test_the_fake_meets_the_contract() -> None:
    def make() -> tuple[VmOrchestrator, str, Sequence[str]]:
        orch = InMemoryOrchestrator(
            [FakeOrchestratorHost("h1", capacity=2), FakeOrchestratorHost("h2", capacity=1)],
            [Vm("vm-1", host_id="h1", ha_enabled=True)],
        )
        return orch, "vm-1", ["h1", "h2"]

    check_orchestrator(make)


def test_start_params_validate_the_generation() -> None:
    assert StartParams(generation=3, avoid_hosts={"h1"}).avoid_hosts == frozenset({"h1"})
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="generation"):
            StartParams(generation=bad)  # type: ignore[arg-type]
    assert StartParams(generation=1).ha_operation is True
    assert str(Planner.HA) == "HA"


def test_errors_keep_their_facts() -> None:
    e = InsufficientCapacityError("vm-1", scope="cluster", reason="full")
    assert (e.vm_id, e.scope, e.reason) == ("vm-1", "cluster", "full")
    s = StaleGenerationError("vm-1", generation=2, highest=3)
    assert (s.generation, s.highest) == (2, 3)
    assert isinstance(UnknownVmError("x"), LookupError)
    for err in (e, s, ConcurrentOperationError("vm-1"), UnknownVmError("x")):
        assert isinstance(err, CloudHAError)


def test_capacity_is_a_per_host_vm_count() -> None:
    orch = fake(
        FakeOrchestratorHost("h1", capacity=1),
        FakeOrchestratorHost("h2", capacity=1),
        vms=[Vm("busy", host_id="h1"), stopped("a"), stopped("b")],
    )
    assert orch.advance_start(stopped("a"), StartParams(generation=1), Planner.DEFAULT) == "h2"
    with pytest.raises(InsufficientCapacityError) as exc:
        orch.advance_start(stopped("b"), StartParams(generation=1), Planner.HA)
    assert exc.value.vm_id == "b"
    assert orch.highest_generation("b") == 0
    orch.advance_stop(Vm("busy"), force=True)  # frees h1
    assert orch.running_count("h1") == 0
    assert orch.advance_start(stopped("b"), StartParams(generation=1), Planner.HA) == "h1"
    assert [v.id for v in orch.list_vms_on_host("h1")] == ["b"]


def test_down_hosts_and_avoided_hosts_take_no_start() -> None:
    orch = fake(vms=[stopped()])
    orch.set_host_up("h1", False)
    with pytest.raises(InsufficientCapacityError):
        orch.advance_start(stopped(), StartParams(generation=1, avoid_hosts={"h2"}), Planner.HA)
    assert orch.advance_start(stopped(), StartParams(generation=1), Planner.HA) == "h2"


def test_ha_tag_selects_tagged_hosts_and_reserved_hosts_stay_out_otherwise() -> None:
    orch = fake(
        FakeOrchestratorHost("h1"),
        FakeOrchestratorHost("h2", tags={"ha"}),
        FakeOrchestratorHost("h3"),
        vms=[stopped("a"), stopped("b")],
        reserved_tag="ha",
    )
    assert (
        orch.advance_start(stopped("a"), StartParams(ha_tag="ha", generation=1), Planner.HA) == "h2"
    )
    assert (
        orch.advance_start(
            stopped("b"),
            StartParams(generation=1, avoid_hosts={"h1"}),
            Planner.HA,
        )
        == "h3"
    )
    orch.advance_stop(Vm("a"), force=True)
    with pytest.raises(InsufficientCapacityError):
        orch.advance_start(stopped("a"), StartParams(ha_tag="gpu", generation=2), Planner.HA)


def test_armed_start_failure_hits_the_default_planner_only() -> None:
    orch = fake(vms=[stopped()])
    orch.fail_next_start(scope="cluster", reason="threshold")
    # The HA planner neither fails nor consumes the armed failure.
    assert orch.advance_start(stopped(), StartParams(generation=1), Planner.HA) == "h1"
    orch.advance_stop(Vm("vm-1"), force=True)
    # A stale start does not consume it either.
    with pytest.raises(StaleGenerationError):
        orch.advance_start(stopped(), StartParams(generation=1), Planner.DEFAULT)
    with pytest.raises(InsufficientCapacityError) as exc:
        orch.advance_start(stopped(), StartParams(generation=2), Planner.DEFAULT)
    assert (exc.value.vm_id, exc.value.scope, exc.value.reason) == ("vm-1", "cluster", "threshold")
    # The HA fallback retries with the same generation.
    assert orch.advance_start(stopped(), StartParams(generation=2), Planner.HA) == "h1"
    assert orch.starts == (
        StartRecord("vm-1", 1, "h1", Planner.HA),
        StartRecord("vm-1", 2, "h1", Planner.HA),
    )
    outcomes = [(c.method, c.planner, c.outcome) for c in orch.calls if c.method == "advance_start"]
    assert outcomes == [
        ("advance_start", Planner.HA, "h1"),
        ("advance_start", Planner.DEFAULT, "StaleGenerationError"),
        ("advance_start", Planner.DEFAULT, "InsufficientCapacityError"),
        ("advance_start", Planner.HA, "h1"),
    ]


def test_armed_stop_failures_leave_the_vm_alone() -> None:
    vm = Vm("vm-1", host_id="h1", updated=4)
    orch = fake(vms=[vm])
    orch.fail_next_stop()
    orch.fail_next_stop(error=ProbeTimeout("h1 silent", host_id="h1"))
    with pytest.raises(ConcurrentOperationError):
        orch.advance_stop(vm, force=True)
    with pytest.raises(ProbeTimeout):
        orch.advance_stop(vm, force=False)
    assert orch.find_vm("vm-1") == vm
    orch.advance_stop(vm, force=False)
    after = orch.find_vm("vm-1")
    assert after is not None
    assert (after.state, after.host_id, after.last_host_id, after.updated) == (
        VmState.STOPPED,
        None,
        "h1",
        5,
    )
    stops = [(c.force, c.outcome) for c in orch.calls if c.method == "advance_stop"]
    assert stops == [(True, "ConcurrentOperationError"), (False, "ProbeTimeout"), (False, "ok")]


def test_local_storage_vms_cannot_restart_elsewhere() -> None:
    orch = fake(vms=[Vm("a"), Vm("b")], local_storage=["b"])
    orch.add_vm(Vm("c"), local_storage=True)
    assert [orch.can_restart_on_another_server(Vm(i)) for i in "abc"] == [True, False, False]


def test_racing_starts_of_one_generation_start_once() -> None:
    orch = fake(vms=[stopped()])
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(generation: int) -> None:
        barrier.wait()
        try:
            result = orch.advance_start(stopped(), StartParams(generation=generation), Planner.HA)
        except (StaleGenerationError, ConcurrentOperationError) as exc:
            result = type(exc).__name__
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(1,)) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert Counter(outcomes) == {"h1": 1, "StaleGenerationError": threads_n - 1}
    assert len(orch.starts) == 1


def test_many_workers_with_increasing_generations_never_start_a_generation_twice() -> None:
    orch = fake(vms=[Vm("vm-1", host_id="h1")])
    generations = 40
    workers = 6
    barrier = threading.Barrier(workers)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for generation in range(1, generations + 1):
            vm = orch.find_vm("vm-1")
            assert vm is not None
            orch.advance_stop(vm, force=True)
            try:
                orch.advance_start(vm, StartParams(generation=generation), Planner.DEFAULT)
                outcome = "started"
            except (StaleGenerationError, ConcurrentOperationError) as exc:
                outcome = type(exc).__name__
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    started = [record.generation for record in orch.starts]
    assert started == sorted(set(started))  # strictly increasing: never one twice
    assert counts["started"] == len(started) >= 1
    assert sum(counts.values()) == generations * workers
    assert orch.highest_generation("vm-1") == started[-1]
    vm = orch.find_vm("vm-1")
    assert vm is not None
    stops_and_starts = sum(
        1 for c in orch.calls if c.outcome not in ("ok", "missing") or c.method == "advance_stop"
    )
    assert stops_and_starts >= generations * workers
    # updated moved once per real state change
    state_changes = len(started) + sum(
        1 for c in orch.calls if c.method == "advance_stop" and c.outcome == "ok"
    )
    assert vm.updated <= state_changes


def test_migrate_away_picks_the_first_other_up_host_with_room_outside_reserved_hosts() -> None:
    orch = fake(
        FakeOrchestratorHost("h1"),
        FakeOrchestratorHost("h2", tags={"ha"}),
        FakeOrchestratorHost("h3", capacity=1),
        FakeOrchestratorHost("h4"),
        FakeOrchestratorHost("h5"),
        vms=[Vm("vm-1", host_id="h1", updated=3), Vm("busy", host_id="h3")],
        reserved_tag="ha",
    )
    orch.set_host_up("h4", False)
    # h2 is reserved for HA, h3 is full, h4 is down.
    assert orch.migrate_away(Vm("vm-1"), "h1") == "h5"
    after = orch.find_vm("vm-1")
    assert after is not None
    assert (after.state, after.host_id, after.last_host_id, after.updated) == (
        VmState.RUNNING,
        "h5",
        "h5",
        4,
    )
    assert (orch.running_count("h1"), orch.running_count("h5")) == (0, 1)
    assert orch.highest_generation("vm-1") == 0  # a migration is not a restart


def test_migrate_away_without_room_raises_and_leaves_the_vm_running_on_the_source() -> None:
    vm = Vm("vm-1", host_id="h1", updated=2)
    orch = fake(
        FakeOrchestratorHost("h1"),
        FakeOrchestratorHost("h2", capacity=1),
        vms=[vm, Vm("busy", host_id="h2")],
    )
    with pytest.raises(InsufficientCapacityError) as exc:
        orch.migrate_away(vm, "h1")
    assert exc.value.vm_id == "vm-1"
    assert orch.find_vm("vm-1") == vm
    assert orch.running_count("h1") == 1
    # Room appears: the migration goes through.
    orch.destroy(Vm("busy"), expunge=True)
    assert orch.migrate_away(vm, "h1") == "h2"


def test_armed_migration_failures_leave_the_vm_on_its_source_and_are_recorded() -> None:
    vm = Vm("vm-1", host_id="h1", updated=7)
    orch = fake(vms=[vm, Vm("off", state=VmState.STOPPED)])
    orch.fail_next_migration()
    orch.fail_next_migration(error=ProbeTimeout("h2 silent", host_id="h2"))
    # Refused calls do not consume the armed failures.
    with pytest.raises(UnknownVmError):
        orch.migrate_away(Vm("ghost"), "h1")
    with pytest.raises(ConcurrentOperationError):
        orch.migrate_away(vm, "h2")
    with pytest.raises(ConcurrentOperationError):
        orch.migrate_away(Vm("off"), "h1")
    with pytest.raises(InsufficientCapacityError) as armed:
        orch.migrate_away(vm, "h1")
    assert (armed.value.vm_id, armed.value.reason) == ("vm-1", "armed failure")
    with pytest.raises(ProbeTimeout):
        orch.migrate_away(vm, "h1")
    assert orch.find_vm("vm-1") == vm
    assert orch.migrate_away(vm, "h1") == "h2"
    migrations = [(c.target, c.source, c.outcome) for c in orch.calls if c.method == "migrate_away"]
    assert migrations == [
        ("ghost", "h1", "UnknownVmError"),
        ("vm-1", "h2", "ConcurrentOperationError"),
        ("off", "h1", "ConcurrentOperationError"),
        ("vm-1", "h1", "InsufficientCapacityError"),
        ("vm-1", "h1", "ProbeTimeout"),
        ("vm-1", "h1", "h2"),
    ]


def test_destroy_force_stops_a_running_vm_and_expunge_removes_it() -> None:
    orch = fake(
        FakeOrchestratorHost("h1", capacity=1),
        vms=[Vm("vm-1", host_id="h1", updated=1), stopped("vm-2")],
        local_storage=["vm-2"],
    )
    assert orch.running_count("h1") == 1
    orch.destroy(Vm("vm-1"), expunge=False)
    gone = orch.find_vm("vm-1")
    assert gone is not None
    assert (gone.state, gone.host_id, gone.last_host_id, gone.updated) == (
        VmState.DESTROYED,
        None,
        "h1",
        2,
    )
    assert orch.running_count("h1") == 0
    orch.destroy(gone, expunge=False)  # again: nothing changes
    assert orch.find_vm("vm-1") == gone
    # A Destroyed VM is not "stopped": it cannot start, its room is free for others.
    with pytest.raises(ConcurrentOperationError):
        orch.advance_start(gone, StartParams(generation=1), Planner.HA)
    orch.destroy(gone, expunge=True)
    orch.destroy(stopped("vm-2"), expunge=True)
    assert orch.find_vm("vm-1") is None
    assert orch.find_vm("vm-2") is None
    assert orch.list_vms_on_host("h1") == []
    assert orch.can_restart_on_another_server(Vm("vm-2")) is True
    with pytest.raises(UnknownVmError):
        orch.destroy(Vm("vm-1"), expunge=False)
    destroys = [(c.target, c.expunge, c.outcome) for c in orch.calls if c.method == "destroy"]
    assert destroys == [
        ("vm-1", False, "ok"),
        ("vm-1", False, "ok"),
        ("vm-1", True, "ok"),
        ("vm-2", True, "ok"),
        ("vm-1", False, "UnknownVmError"),
    ]


def test_an_expunged_vm_keeps_its_fencing_tokens_when_added_again() -> None:
    orch = fake(vms=[stopped()])
    orch.advance_start(stopped(), StartParams(generation=3), Planner.HA)
    orch.destroy(stopped(), expunge=True)
    orch.add_vm(stopped())
    with pytest.raises(StaleGenerationError):
        orch.advance_start(stopped(), StartParams(generation=3), Planner.HA)


def test_destroy_of_a_running_vm_consumes_armed_stop_failures_and_changes_nothing() -> None:
    vm = Vm("vm-1", host_id="h1", updated=4)
    orch = fake(vms=[vm, stopped("vm-2")])
    orch.fail_next_stop(error=ProbeTimeout("h1 silent", host_id="h1"))
    # A Stopped VM needs no stop: the armed failure is not consumed.
    orch.destroy(stopped("vm-2"), expunge=False)
    with pytest.raises(ProbeTimeout):
        orch.destroy(vm, expunge=True)
    assert orch.find_vm("vm-1") == vm
    assert orch.running_count("h1") == 1
    orch.destroy(vm, expunge=True)
    assert orch.find_vm("vm-1") is None
    assert orch.running_count("h1") == 0
    destroys = [(c.target, c.outcome) for c in orch.calls if c.method == "destroy"]
    assert destroys == [("vm-2", "ok"), ("vm-1", "ProbeTimeout"), ("vm-1", "ok")]


def test_racing_migrations_move_the_vm_once() -> None:
    orch = fake(
        FakeOrchestratorHost("h1"),
        FakeOrchestratorHost("h2"),
        FakeOrchestratorHost("h3"),
        vms=[Vm("vm-1", host_id="h1")],
    )
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            result = orch.migrate_away(Vm("vm-1"), "h1")
        except ConcurrentOperationError as exc:
            result = type(exc).__name__
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert Counter(outcomes) == {"h2": 1, "ConcurrentOperationError": threads_n - 1}
    after = orch.find_vm("vm-1")
    assert after is not None
    assert (after.host_id, after.updated) == ("h2", 1)
