"""Freshness on the simulator: a paused or isolated management server judges nobody."""

from __future__ import annotations

from typing import Any

from cloudha.testing import simulate
from tests.simulation.support import CLEAN, events


def four_hosts(
    faults: list[dict[str, Any]], *, until: float = 3000, **settings: Any
) -> dict[str, Any]:
    return {
        "settings": settings,
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["p1"], "oobm": "ipmi"} for i in (1, 2, 3, 4)
        ],
        "vms": [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in (1, 2, 3, 4)],
        "faults": faults,
        "run": {"until": until, "seed": 3},
    }


def judged(doc: dict[str, Any], start: float, end: float) -> list[dict[str, Any]]:
    """Verdicts and actions about hosts between ``start`` and ``end``."""
    kinds = ("investigation", "fence", "ha_scheduled", "suspicion", "power")
    return [
        e
        for e in doc["events"]
        if (e["kind"] in kinds and start <= e["t"] < end)
        or (
            e["kind"] == "host_status"
            and e.get("to") in ("Down", "Alert")
            and start <= e["t"] < end
        )
    ]


def test_a_paused_server_wakes_with_every_ping_stale_and_judges_nobody_until_fresh() -> None:
    doc = simulate(four_hosts([{"at": 400, "kind": "ms_pause"}, {"at": 1000, "kind": "ms_resume"}]))
    (stale,) = [e for e in events(doc, "freshness") if e["t"] == 1000.0 and "held" not in e]
    assert stale["fresh"] is False
    assert "a pause" in stale["reason"]
    assert stale["pinged"] == 0
    held = [e for e in events(doc, "freshness") if e.get("held") == "investigation"]
    assert {e["host"] for e in held} == {"h1", "h2", "h3", "h4"}
    resumed = [e for e in events(doc, "freshness") if e.get("judging") is True and e["t"] > 1000]
    assert resumed
    assert judged(doc, 1000, resumed[0]["t"]) == []
    assert events(doc, "fence") == []
    assert all(e["to"] not in ("Down", "Alert") for e in events(doc, "host_status"))
    for vm, state in doc["final"]["vms"].items():
        assert state == {"state": "Running", "host": f"h{vm[2]}"}
    assert doc["invariants"] == CLEAN


def test_a_host_that_died_during_the_pause_is_judged_once_the_view_is_fresh() -> None:
    faults = [
        {"at": 400, "kind": "ms_pause"},
        {"at": 500, "kind": "host_crash", "target": "h2"},
        {"at": 1000, "kind": "ms_resume"},
    ]
    doc = simulate(four_hosts(faults))
    resumed = min(
        e["t"] for e in events(doc, "freshness") if e.get("judging") is True and e["t"] > 1000
    )
    (down,) = events(doc, "host_status", host="h2", to="Down")
    assert down["t"] >= resumed
    assert judged(doc, 1000, resumed) == []
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"
    assert doc["final"]["vms"]["vm2"]["host"] != "h2"
    assert doc["invariants"] == CLEAN


def test_an_isolated_management_server_acts_on_nobody() -> None:
    faults = [{"at": 400, "kind": "ms_isolation"}, {"at": 1600, "kind": "ms_heal"}]
    doc = simulate(four_hosts(faults))
    stopped = [e for e in events(doc, "freshness") if e.get("judging") is False and e["t"] > 400]
    assert stopped
    assert "monitored hosts pinged" in stopped[0]["reason"]
    assert events(doc, "fence") == []
    assert events(doc, "suspicion") == []
    assert events(doc, "ha_scheduled") == []
    assert all(e["to"] != "Down" for e in events(doc, "host_status"))
    for vm, state in doc["final"]["vms"].items():
        assert state == {"state": "Running", "host": f"h{vm[2]}"}
    assert doc["invariants"] == CLEAN
    alerts = [e for e in events(doc, "freshness") if e.get("judging") is True and e["t"] > 1600]
    assert alerts  # judging again after the heal


def test_without_freshness_the_paused_server_judges_at_once() -> None:
    faults = [
        {"at": 400, "kind": "ms_pause"},
        {"at": 500, "kind": "host_crash", "target": "h2"},
        {"at": 1000, "kind": "ms_resume"},
    ]
    doc = simulate(four_hosts(faults, **{"cloudha.freshness.enabled": False}))
    assert events(doc, "freshness") == []
    assert [e for e in events(doc, "investigation") if e["t"] == 1000.0]
