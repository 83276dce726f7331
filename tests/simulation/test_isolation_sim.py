"""Isolation-aware self-fencing on the simulator: a storage outage reboots nobody whose agent
is connected; a partitioned host is reset by its lease, an isolated one at once."""

from __future__ import annotations

from typing import Any

from cloudha.testing import simulate
from tests.simulation.support import CLEAN, events


def three_hosts(
    faults: list[dict[str, Any]], *, until: float = 2400, watchdog: bool = True, **settings: Any
) -> dict[str, Any]:
    """Three healthy KVM hosts on one pool, each with two HA VMs (and a watchdog)."""
    return {
        "settings": settings,
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["p1"], "oobm": "ipmi", "watchdog": watchdog}
            for i in (1, 2, 3)
        ],
        "vms": [
            {"id": f"vm{i}{j}", "host": f"h{i}", "ha": True} for i in (1, 2, 3) for j in (1, 2)
        ],
        "faults": faults,
        "run": {"until": until, "seed": 7},
    }


OUTAGE = [
    {"at": 300, "kind": "storage_outage", "target": "p1"},
    {"at": 900, "kind": "storage_heal", "target": "p1"},
]


def test_a_ten_minute_outage_of_the_only_pool_reboots_nobody_and_fences_nothing() -> None:
    # The measurement: CloudStack (and cloudha before) reset all three hosts and
    # lost their six HA VMs, although the management server reached every agent.
    doc = simulate(three_hosts(OUTAGE))
    assert events(doc, "self_fence") == []
    assert events(doc, "watchdog_reset") == []
    assert events(doc, "fence") == []
    assert events(doc, "host_status") == []
    for vm, state in doc["final"]["vms"].items():
        assert state == {"state": "Running", "host": f"h{vm[2]}"}
    faults = events(doc, "storage_fault")
    assert {e["host"] for e in faults} == {"h1", "h2", "h3"}
    assert {e["link"] for e in faults} == {"connected"}
    assert all(300 <= e["t"] <= 900 + 400 for e in faults)
    assert doc["invariants"] == CLEAN


def test_the_same_outage_without_isolation_awareness_resets_every_host() -> None:
    doc = simulate(three_hosts(OUTAGE, **{"cloudha.isolation.aware": False}))
    # their watchdogs, which nothing renews, fire before the writers' retry budgets end
    assert {e["host"] for e in events(doc, "watchdog_reset")} == {"h1", "h2", "h3"}


def test_a_host_partitioned_from_the_server_during_the_outage_is_reset_by_its_lease() -> None:
    # h2 loses the management server at 400 s while p1 is out: its isolation address
    # answers, so its writer does not reset it, but nothing renews its lease any more.
    faults = [
        {"at": 300, "kind": "storage_outage", "target": "p1"},
        {"at": 400, "kind": "mgmt_partition", "target": "h2"},
        {"at": 900, "kind": "storage_heal", "target": "p1"},
        {"at": 1800, "kind": "mgmt_heal", "target": "h2"},
    ]
    doc = simulate(three_hosts(faults, until=3600))
    assert events(doc, "self_fence") == []
    (reset,) = events(doc, "watchdog_reset", host="h2")
    assert 400 < reset["t"] <= 400 + 460
    partitioned = [e for e in events(doc, "storage_fault", host="h2") if e["link"] == "partitioned"]
    assert partitioned
    assert not events(doc, "watchdog_reset", host="h1")
    assert doc["invariants"] == CLEAN
    # h2's VMs died with the reset and run again (elsewhere, or on h2 once it is back)
    for vm in ("vm21", "vm22"):
        assert doc["final"]["vms"][vm]["state"] == "Running"


def test_an_isolated_host_resets_itself_once_its_retry_budget_is_spent() -> None:
    # Without a watchdog the writer's own reset is all there is: an isolated host (its
    # agent lost the server, the isolation address is silent) still resets itself.
    faults = [
        {"at": 300, "kind": "host_isolation", "target": "h2"},
        {"at": 1500, "kind": "host_heal", "target": "h2"},
    ]
    doc = simulate(
        three_hosts(faults, until=3600, watchdog=False, **{"cloudha.fence.on.suspicion": False})
    )
    fenced, *again = events(doc, "self_fence", host="h2")  # and again after each boot
    assert "isolation address is silent" in fenced["reason"]
    assert all(e["t"] < 1500 + 400 for e in again)
    assert 300 + 340 <= fenced["t"] <= 300 + 400
    assert doc["invariants"] == CLEAN


def test_a_host_without_a_watchdog_partitioned_from_the_server_stays_up() -> None:
    # Its stale heartbeat proves nothing (no watchdog), so nothing needs it reset.
    faults = [
        {"at": 300, "kind": "storage_outage", "target": "p1"},
        {"at": 400, "kind": "mgmt_partition", "target": "h2"},
        {"at": 1200, "kind": "storage_heal", "target": "p1"},
        {"at": 1300, "kind": "mgmt_heal", "target": "h2"},
    ]
    doc = simulate(three_hosts(faults, until=3000, watchdog=False))
    assert events(doc, "self_fence") == []
    assert doc["final"]["vms"]["vm21"] == {"state": "Running", "host": "h2"}
    assert doc["invariants"] == CLEAN
