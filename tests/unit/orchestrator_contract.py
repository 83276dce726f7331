"""A contract check shared by every :class:`~cloudha.ha.orchestrator.VmOrchestrator`.

``check_orchestrator(make)`` is run by the unit tests of the in-memory fake
and by the integration tests of the libvirt adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

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

__all__ = ["Make", "check_orchestrator"]

Make = Callable[[], tuple[VmOrchestrator, str, Sequence[str]]]
"""Returns ``(orchestrator, vm_id, host_ids)``: a fresh VM (no generation used
yet) Running on ``host_ids[0]``; at least two hosts, each with room for one
more VM and no tag restriction; the VM can restart on another server."""


def _vm(orch: VmOrchestrator, vm_id: str) -> Vm:
    vm = orch.find_vm(vm_id)
    assert vm is not None, vm_id
    return vm


def check_orchestrator(make: Make) -> None:
    """Fail with an assertion error when ``make()``'s orchestrator breaks the port's contract."""
    orch, vm_id, hosts = make()
    assert isinstance(orch, VmOrchestrator)
    assert len(hosts) >= 2
    first, others = hosts[0], set(hosts[1:])

    # Look-ups.
    vm = _vm(orch, vm_id)
    assert (vm.id, vm.state, vm.host_id) == (vm_id, VmState.RUNNING, first)
    assert orch.find_vm("contract-no-such-vm") is None
    assert vm_id in [v.id for v in orch.list_vms_on_host(first)]
    assert all(v.host_id == first for v in orch.list_vms_on_host(first))
    assert orch.list_vms_on_host("contract-no-such-host") == []
    assert orch.can_restart_on_another_server(vm) is True

    # A forced stop: Stopped, off its host, counter moved; a second stop changes nothing.
    orch.advance_stop(vm, force=True)
    stopped = _vm(orch, vm_id)
    assert (stopped.state, stopped.host_id, stopped.last_host_id) == (VmState.STOPPED, None, first)
    assert stopped.updated > vm.updated
    assert vm_id not in [v.id for v in orch.list_vms_on_host(first)]
    orch.advance_stop(stopped, force=True)
    assert _vm(orch, vm_id).updated == stopped.updated

    # Nowhere to go: capacity error, VM stays Stopped, the generation is not used.
    with pytest.raises(InsufficientCapacityError) as no_room:
        orch.advance_start(
            stopped, StartParams(generation=1, avoid_hosts=frozenset(hosts)), Planner.HA
        )
    assert no_room.value.vm_id == vm_id
    assert _vm(orch, vm_id).state is VmState.STOPPED

    # Start with generation 1 away from the first host.
    host = orch.advance_start(
        stopped, StartParams(generation=1, avoid_hosts=frozenset({first})), Planner.DEFAULT
    )
    assert host in others
    running = _vm(orch, vm_id)
    assert (running.state, running.host_id) == (VmState.RUNNING, host)
    assert running.updated > stopped.updated
    assert vm_id in [v.id for v in orch.list_vms_on_host(host)]

    # A duplicate of generation 1 is stale; nothing changes.
    with pytest.raises(StaleGenerationError) as stale:
        orch.advance_start(running, StartParams(generation=1), Planner.DEFAULT)
    assert (stale.value.vm_id, stale.value.generation, stale.value.highest) == (vm_id, 1, 1)
    assert _vm(orch, vm_id) == running
    # A newer generation while the VM runs: refused, nothing changes.
    with pytest.raises(ConcurrentOperationError):
        orch.advance_start(running, StartParams(generation=2), Planner.DEFAULT)
    assert _vm(orch, vm_id) == running

    # Stop gracefully, then a newer generation starts it again; the old ones stay stale.
    orch.advance_stop(running, force=False)
    assert _vm(orch, vm_id).state is VmState.STOPPED
    with pytest.raises(StaleGenerationError):
        orch.advance_start(running, StartParams(generation=1), Planner.HA)
    again = orch.advance_start(running, StartParams(generation=2), Planner.HA)
    assert again in hosts
    assert _vm(orch, vm_id).host_id == again
    orch.advance_stop(_vm(orch, vm_id), force=True)

    # Unknown VMs.
    ghost = Vm("contract-no-such-vm")
    with pytest.raises(UnknownVmError):
        orch.advance_stop(ghost, force=True)
    with pytest.raises(UnknownVmError):
        orch.advance_start(ghost, StartParams(generation=1), Planner.DEFAULT)

    # A second, fresh VM has generations of its own.
    orch2, vm2, hosts2 = make()
    assert vm2 != vm_id or orch2 is not orch
    orch2.advance_stop(_vm(orch2, vm2), force=True)
    assert orch2.advance_start(_vm(orch2, vm2), StartParams(generation=1), Planner.DEFAULT) in (
        hosts2
    )
    orch2.advance_stop(_vm(orch2, vm2), force=True)

    _check_migrate_away(make)
    _check_destroy(make)


def _ids_on(orch: VmOrchestrator, host_id: str) -> list[str]:
    return [v.id for v in orch.list_vms_on_host(host_id)]


def _check_migrate_away(make: Make) -> None:
    orch, vm_id, hosts = make()
    first = hosts[0]
    vm = _vm(orch, vm_id)

    # From a host the VM does not run on: refused, nothing changes.
    for wrong in ("contract-no-such-host", hosts[1]):
        with pytest.raises(ConcurrentOperationError) as wrong_source:
            orch.migrate_away(vm, wrong)
        assert wrong_source.value.vm_id == vm_id
        assert _vm(orch, vm_id) == vm

    # A Running VM moves to another host and keeps running there.
    target = orch.migrate_away(vm, first)
    assert target in hosts
    assert target != first
    moved = _vm(orch, vm_id)
    assert (moved.state, moved.host_id) == (VmState.RUNNING, target)
    assert moved.updated > vm.updated
    assert vm_id in _ids_on(orch, target)
    assert vm_id not in _ids_on(orch, first)

    # The old source is wrong now; the new one works (back to a host other than it).
    with pytest.raises(ConcurrentOperationError):
        orch.migrate_away(moved, first)
    assert _vm(orch, vm_id) == moved
    back = orch.migrate_away(moved, target)
    assert back != target
    assert _vm(orch, vm_id).host_id == back

    # A Stopped VM is not migrated, whatever the source.
    orch.advance_stop(_vm(orch, vm_id), force=True)
    stopped = _vm(orch, vm_id)
    for source in (back, first):
        with pytest.raises(ConcurrentOperationError):
            orch.migrate_away(stopped, source)
    assert _vm(orch, vm_id) == stopped

    with pytest.raises(UnknownVmError):
        orch.migrate_away(Vm("contract-no-such-vm"), first)


def _check_destroy(make: Make) -> None:
    # A running VM: stopped, Destroyed, off its host; destroying it again changes nothing.
    orch, vm_id, hosts = make()
    first = hosts[0]
    running = _vm(orch, vm_id)
    orch.destroy(running, expunge=False)
    destroyed = _vm(orch, vm_id)
    assert (destroyed.state, destroyed.host_id) == (VmState.DESTROYED, None)
    assert destroyed.updated > running.updated
    assert vm_id not in _ids_on(orch, first)
    orch.destroy(destroyed, expunge=False)
    assert _vm(orch, vm_id) == destroyed
    # Stopping a Destroyed VM changes nothing: it does not run, and stays Destroyed.
    orch.advance_stop(destroyed, force=True)
    assert _vm(orch, vm_id) == destroyed
    # A Destroyed VM is neither started nor migrated.
    with pytest.raises(ConcurrentOperationError):
        orch.advance_start(destroyed, StartParams(generation=1), Planner.HA)
    with pytest.raises(ConcurrentOperationError):
        orch.migrate_away(destroyed, first)
    assert _vm(orch, vm_id) == destroyed
    # Expunging a Destroyed VM: gone; it is then unknown.
    orch.destroy(destroyed, expunge=True)
    assert orch.find_vm(vm_id) is None
    for host in hosts:
        assert vm_id not in _ids_on(orch, host)
    with pytest.raises(UnknownVmError):
        orch.destroy(destroyed, expunge=True)

    # Expunging a running VM at once.
    orch2, vm2, hosts2 = make()
    orch2.destroy(_vm(orch2, vm2), expunge=True)
    assert orch2.find_vm(vm2) is None
    assert vm2 not in _ids_on(orch2, hosts2[0])

    # A Stopped VM is destroyed too.
    orch3, vm3, _hosts3 = make()
    orch3.advance_stop(_vm(orch3, vm3), force=True)
    stopped = _vm(orch3, vm3)
    orch3.destroy(stopped, expunge=False)
    after = _vm(orch3, vm3)
    assert (after.state, after.host_id) == (VmState.DESTROYED, None)
    assert after.updated > stopped.updated

    ghost = Vm("contract-no-such-vm")
    for expunge in (False, True):
        with pytest.raises(UnknownVmError):
            orch3.destroy(ghost, expunge=expunge)
