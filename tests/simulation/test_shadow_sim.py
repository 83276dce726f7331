"""Shadow mode: every check and decision runs, nothing is executed, the evidence says what
would have been done (``"shadow": true``)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudha.testing import simulate
from tests.simulation.support import CLEAN, events

SHADOW = {"cloudha.shadow": True}


def three_hosts(faults: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["p1"], "oobm": "ipmi"} for i in (1, 2, 3)
        ],
        "vms": [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in (1, 2, 3)],
        "faults": faults,
        "run": {"until": 2400, "seed": 3},
    }


def acted(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What was executed: fences, power actions, HA works, VM moves, resets."""
    return [
        e
        for e in doc["events"]
        if e["kind"] in ("fence", "power", "ha_work", "watchdog_reset")
        or (e["kind"] == "vm_state" and e.get("state") == "Running")
        or (e["kind"] == "self_fence" and not e.get("shadow"))
        or (e["kind"] == "suspicion" and e.get("outcome") == "FENCED")
    ]


@pytest.mark.parametrize("kind", ["host_crash", "host_hang"])
def test_shadow_mode_during_a_failure_moves_no_vm_and_shows_what_it_would_do(kind: str) -> None:
    doc = simulate(three_hosts([{"at": 300, "kind": kind, "target": "h2"}], SHADOW))
    assert acted(doc) == []
    assert doc["final"]["vms"]["vm2"] == {"state": "Stopped", "host": "h2"}
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h1"}
    (would,) = [e for e in events(doc, "ha_scheduled", host="h2") if e.get("shadow")][:1]
    assert "would be scheduled for restart" in would["reason"]
    assert doc["ha_scheduled"] == []  # nothing reached the HA scheduler
    if kind == "host_hang":
        fences = [e for e in events(doc, "suspicion", host="h2") if e.get("shadow")]
        assert fences
        assert fences[0]["outcome"] == "would fence"
        restarts = [e for e in events(doc, "escalation", host="h2") if e.get("shadow")]
        assert restarts
        assert restarts[0]["level"] == "agent.restart"
    assert doc["invariants"] == CLEAN


def test_the_same_crash_without_shadow_mode_moves_the_vm() -> None:
    doc = simulate(three_hosts([{"at": 300, "kind": "host_crash", "target": "h2"}], {}))
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"
    assert doc["final"]["vms"]["vm2"]["host"] != "h2"
    assert not [e for e in doc["events"] if e.get("shadow")]


def test_shadow_writers_do_not_reset_their_hosts() -> None:
    # An isolated host's writer would reset it; in shadow mode it records so and goes on.
    faults = [
        {"at": 300, "kind": "host_isolation", "target": "h2"},
        {"at": 1500, "kind": "host_heal", "target": "h2"},
    ]
    settings = {**SHADOW, "cloudha.isolation.address": ""}
    doc = simulate(three_hosts(faults, settings))
    resets = events(doc, "self_fence", host="h2")
    assert resets
    assert all(e.get("shadow") is True for e in resets)
    assert "shadow mode: would reset the host" in resets[0]["reason"]
    assert events(doc, "watchdog_reset") == []
    assert doc["final"]["hosts"]["h2"]["power"] == "On"
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}
    assert doc["invariants"] == CLEAN


def test_shadow_host_ha_checks_but_never_resets_or_fences() -> None:
    scenario = three_hosts([{"at": 300, "kind": "host_hang", "target": "h2"}], SHADOW)
    for host in scenario["hosts"]:
        host["ha_provider"] = True
    doc = simulate(scenario)
    shadowed = [e for e in doc["events"] if e["kind"].startswith("host_ha_") and e.get("shadow")]
    assert shadowed
    assert {e["kind"] for e in shadowed} <= {"host_ha_recovery", "host_ha_fence"}
    assert acted(doc) == []
    assert doc["invariants"] == CLEAN
