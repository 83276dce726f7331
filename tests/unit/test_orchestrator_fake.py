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
