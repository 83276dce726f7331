"""Storm protection on the simulator: a dead rack is fenced at the budgeted pace; a cluster
gone silent behind its switch is not fenced on suspicion at all."""

from __future__ import annotations

from typing import Any

from cloudha.testing import simulate
from tests.simulation.support import CLEAN, events

HANG_AT = 600.0


def fleet(
    faults: list[dict[str, Any]],
    *,
    until: float,
    watchdog: bool = True,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """200 KVM hosts: 5 clusters of 40 on one zone-wide pool, racks r0..r4 across clusters."""
    hosts = [
        {
            "id": f"c{c}h{i:02d}",
            "cluster": f"c{c}",
            "pools": ["nfs1"],
            "oobm": "ipmi",
            "capacity": 8,
            "rack": f"r{i % 5}",
            "watchdog": watchdog,
        }
        for c in range(5)
        for i in range(40)
    ]
    vms = [{"id": f"vm-{h['id']}", "host": h["id"], "ha": True} for h in hosts]
    return {
        "settings": settings or {},
        "hosts": hosts,
        "vms": vms,
        "faults": faults,
        "run": {"until": until, "seed": 5},
    }


def test_a_hung_rack_of_40_in_200_is_fenced_at_the_budgeted_pace_and_recovered() -> None:
    rack = [f"c{c}h{i:02d}" for c in range(5) for i in range(40) if i % 5 == 2]
    assert len(rack) == 40
    faults = [{"at": HANG_AT, "kind": "host_hang", "target": h} for h in rack]
    # No watchdogs: only the fences bring these hosts down (a watchdog would reset the
    # ones still held, as it should, before their turn).
    doc = simulate(fleet(faults, until=2400, watchdog=False))
    fenced = [
        e for e in events(doc, "suspicion") if e.get("outcome") == "FENCED" and e["host"] in rack
    ]
    assert {e["host"] for e in fenced} == set(rack)
    # Each cluster of 40 may lose 4 hosts per 300 s window to suspicion fences.
    for cluster in range(5):
        times = sorted(e["t"] for e in fenced if e["host"].startswith(f"c{cluster}"))
        for i, t in enumerate(times):
            assert sum(1 for u in times[: i + 1] if t - u < 300) <= 4
    held = [e for e in events(doc, "storm") if e["rule"] == "budget"]
    assert held
    assert all(e["t"] - HANG_AT < 300 + 300 for e in fenced)  # two windows for 8 per cluster
    for host in rack:
        vm = doc["final"]["vms"][f"vm-{host}"]
        assert vm["state"] == "Running"
        assert vm["host"] != host
    assert doc["invariants"] == CLEAN


def test_a_cluster_silent_behind_its_switch_is_not_fenced_on_suspicion() -> None:
    # c0's top-of-rack switch fails: 24 of its 40 hosts lose every network (their
    # storage too) while their BMCs still answer. 60 % of the cluster is silent: taken
    # for a network fault, nobody there is fenced on suspicion, and an alert says why.
    cut = [f"c0h{i:02d}" for i in range(24)]
    faults = [{"at": HANG_AT, "kind": "host_isolation", "target": h} for h in cut]
    faults += [{"at": 1500.0, "kind": "host_heal", "target": h} for h in cut]
    doc = simulate(fleet(faults, until=2400, settings={"cloudha.isolation.address": ""}))
    assert not [e for e in events(doc, "suspicion") if e.get("outcome") == "FENCED"]
    held = [e for e in events(doc, "storm") if e["rule"] == "disruption"]
    assert held
    assert "cluster c0" in held[0]["reason"]
    assert doc["invariants"] == CLEAN


def test_a_whole_rack_silent_behind_its_switch_triggers_the_full_disruption_stop() -> None:
    # Rack r0 (8 hosts in each of the 5 clusters) loses its top-of-rack switch: every
    # network of its 40 hosts, their BMCs still answering. Each cluster is only 20 %
    # silent, so its other hosts can be asked and the fast path would fence them all;
    # with racks among the domains, the rack is 100 % silent: nothing is fenced.
    rack = [f"c{c}h{i:02d}" for c in range(5) for i in range(40) if i % 5 == 0]
    faults = [{"at": HANG_AT, "kind": "host_isolation", "target": h} for h in rack]
    faults += [{"at": 1500.0, "kind": "host_heal", "target": h} for h in rack]
    domains = {"cloudha.storm.domains": ["cluster", "pod", "zone", "rack"]}
    doc = simulate(fleet(faults, until=2400, watchdog=False, settings=domains))
    assert not [e for e in events(doc, "suspicion") if e.get("outcome") == "FENCED"]
    held = [e for e in events(doc, "storm") if e["rule"] == "disruption"]
    assert {e["host"] for e in held} <= set(rack)
    assert held
    assert "rack r0: 40 of 40 hosts are silent" in held[0]["reason"]
    assert doc["invariants"] == CLEAN
    # Without the rack domain the same outage is fenced host by host, at the budget's pace.
    doc = simulate(fleet(faults, until=2400, watchdog=False))
    fenced = [e for e in events(doc, "suspicion") if e.get("outcome") == "FENCED"]
    assert fenced
    assert doc["invariants"] == CLEAN
