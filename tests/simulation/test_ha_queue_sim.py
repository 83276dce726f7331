"""The real HA manager and its SQL work queue inside the simulator."""

from __future__ import annotations

from typing import Any

import pytest

from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.orchestrator import VmOrchestrator
from cloudha.ports import HAScheduler
from cloudha.testing import Simulation, parse_scenario, simulate
from cloudha.testing.simulator import WORK_SECONDS
from tests.simulation.support import CLEAN, down_time, events


def scenario(
    faults: list[dict[str, Any]],
    *,
    capacity: int | None = None,
    vms: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
    until: float = 3600,
) -> dict[str, Any]:
    hosts = []
    for i in range(1, 4):
        host: dict[str, Any] = {"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": "ipmi"}
        if capacity is not None:
            host["capacity"] = capacity
        hosts.append(host)
    return {
        "settings": settings or {},
        "hosts": hosts,
        "vms": vms
        or [
            {"id": "vm2a", "host": "h2", "ha": True},
            {"id": "vm2b", "host": "h2", "ha": True},
            {"id": "vm1", "host": "h1", "ha": True},
        ],
        "faults": faults,
        "run": {"until": until, "seed": 3},
    }


CRASH = [{"at": 300, "kind": "host_crash", "target": "h2"}]


def test_a_management_server_crash_between_claim_and_processing_loses_nothing() -> None:
    down = down_time(simulate(scenario(CRASH)), "h2")
    # The server dies while its workers hold the claims (half-way through
    # WORK_SECONDS), and comes back two minutes later.
    doc = simulate(
        scenario(
            [
                *CRASH,
                {"at": down + WORK_SECONDS / 2, "kind": "ms_crash"},
                {"at": down + 120, "kind": "ms_restart"},
            ]
        )
    )
    assert down_time(doc, "h2") == down
    # Nothing was processed before the crash (the works were scheduled as
    # proven stopped: the BMC read h2 Off); after the restart the claims are
    # released, looked at again from scratch and restarted, each once.
    for vm in ("vm2a", "vm2b"):
        steps = [(e["step"], e["t"]) for e in events(doc, "ha_work", vm=vm)]
        assert steps[0] == ("Scheduled", down)
        assert all(t >= down + 120 for _step, t in steps[1:]), steps
        assert steps[-1][0] == "Done"
        (start,) = events(doc, "vm_state", vm=vm, state="Running")
        assert start["host"] in {"h1", "h3"}
        assert doc["final"]["vms"][vm]["state"] == "Running"
    assert doc["invariants"] == CLEAN


def test_the_lost_work_checker_sees_claims_that_a_restarted_server_never_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CloudStack's bug class: a server restarts without handing back what its
    # previous run held. The invariant must catch it.
    down = down_time(simulate(scenario(CRASH)), "h2")
    monkeypatch.setattr(HighAvailabilityManager, "recover", lambda self: (0, 0))
    doc = simulate(
        scenario(
            [
                *CRASH,
                {"at": down + WORK_SECONDS / 2, "kind": "ms_crash"},
                {"at": down + 120, "kind": "ms_restart"},
            ]
        )
    )
    assert doc["invariants"]["lost_work"] == 2
    assert doc["invariants"]["unrecovered_ha_vm"] == 2


def test_a_crash_with_no_restart_keeps_the_work_in_the_database() -> None:
    down = down_time(simulate(scenario(CRASH)), "h2")
    doc = simulate(scenario([*CRASH, {"at": down + WORK_SECONDS / 2, "kind": "ms_crash"}]))
    assert [e["step"] for e in events(doc, "ha_work", vm="vm2a")] == ["Scheduled"]
    assert doc["invariants"]["lost_work"] == 0  # held, not lost: the server may come back


def test_system_vms_and_higher_priorities_are_restarted_first_when_workers_are_scarce() -> None:
    doc = simulate(
        scenario(
            CRASH,
            settings={"ha.workers": 1},
            vms=[
                {"id": "u1", "host": "h2", "ha": True},
                {"id": "u2", "host": "h2", "ha": True, "priority": 5},
                {"id": "router", "host": "h2", "ha": True, "type": "DomainRouter"},
                {"id": "proxy", "host": "h2", "ha": True, "type": "ConsoleProxy"},
            ],
        )
    )
    order = [e["vm"] for e in events(doc, "vm_state", state="Running")]
    # System VMs first (then by id), then user VMs by priority.
    assert order == ["proxy", "router", "u2", "u1"]
    times = [e["t"] for e in events(doc, "vm_state", state="Running")]
    assert times == sorted(times)
    assert times[-1] - times[0] == pytest.approx(3 * WORK_SECONDS)  # one worker, one at a time


def test_without_room_the_restart_waits_and_succeeds_once_a_host_comes_back() -> None:
    # Capacity 1 per host: h1 and h3 are full, so h2's VM cannot restart until
    # h2 itself is back (restart.retry.interval later, each attempt re-checks).
    doc = simulate(
        scenario(
            [*CRASH, {"at": 1500, "kind": "host_recover", "target": "h2"}],
            capacity=1,
            vms=[
                {"id": "vm1", "host": "h1", "ha": True},
                {"id": "vm2", "host": "h2", "ha": True},
                {"id": "vm3", "host": "h3", "ha": True},
            ],
            settings={"restart.retry.interval": 300},
            until=4000,
        )
    )
    steps = [e["step"] for e in events(doc, "ha_work", vm="vm2")]
    assert steps[:2] == ["Scheduled", "Rescheduled"]  # proven stopped: the BMC read h2 Off
    assert "Rescheduled" in steps
    assert steps[-1] == "Done"
    (start,) = events(doc, "vm_state", vm="vm2", state="Running")
    assert start["host"] == "h2"
    assert start["t"] > 1500 + 60  # after h2 booted and was Up again
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["lost_work"] == 0


def test_with_no_room_anywhere_the_work_waits_for_room_and_the_vm_is_not_unrecovered() -> None:
    doc = simulate(
        scenario(
            CRASH,
            capacity=1,
            vms=[
                {"id": "vm1", "host": "h1", "ha": True},
                {"id": "vm2", "host": "h2", "ha": True},
                {"id": "vm3", "host": "h3", "ha": True},
            ],
            settings={"restart.retry.interval": 300, "vm.ha.migration.max.retries": 3},
        )
    )
    # Waiting for room never uses the attempts up: more than 3, none gives up.
    attempts = [e for e in events(doc, "ha_work", vm="vm2") if e["step"] == "Rescheduled"]
    assert len(attempts) > 3
    assert all("InsufficientCapacityError" in e["reason"] for e in attempts)
    assert not [e for e in events(doc, "ha_work", vm="vm2") if e["step"] == "Error"]
    assert doc["final"]["vms"]["vm2"]["state"] == "Stopped"
    # No capacity existed elsewhere, so this is not counted as a failure of HA.
    assert doc["invariants"]["unrecovered_ha_vm"] == 0


def test_the_simulated_orchestrator_is_a_vm_orchestrator() -> None:
    sim = Simulation(parse_scenario(scenario(CRASH)))
    assert isinstance(sim.orchestrator, VmOrchestrator)
    assert isinstance(sim.scheduler, HAScheduler)
