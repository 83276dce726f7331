"""CloudStack's Host-HA in the simulator: hosts with ``ha_provider = true`` (spec §7).

On such a host Host-HA owns recovery and fencing: the fast path stands aside,
and VM-HA follows Host-HA's verdict (the bridge). The BMC witness still reads
a crashed host's power Off at once: that is proof, not a fence.
"""

from __future__ import annotations

from typing import Any

import pytest

from cloudha import Settings
from cloudha.testing import simulate

from .support import CLEAN, events, first_restart

FAULT_AT = 100.0
PING_TIMEOUT = Settings().behind_on_ping_timeout
CRASH_TARGET = PING_TIMEOUT * 1.02 + 10


def cluster(
    faults: list[dict[str, Any]],
    *,
    oobm: str = "ipmi",
    watchdog: bool = True,
    until: float = 3600,
    seed: int = 1,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "settings": settings or {},
        "hosts": [
            {
                "id": f"h{i}",
                "cluster": "c1",
                "pools": ["nfs1"],
                "oobm": oobm,
                "ha_provider": True,
                "watchdog": watchdog,
            }
            for i in (1, 2, 3)
        ],
        "vms": [
            {"id": "vm2a", "host": "h2", "ha": True},
            {"id": "vm2b", "host": "h2", "ha": True},
            {"id": "vm1", "host": "h1", "ha": True},
        ],
        "faults": faults,
        "run": {"until": until, "seed": seed},
    }


def ha_path(doc: dict[str, Any], host: str = "h2") -> list[tuple[str, str]]:
    return [(e["event"], e["to"]) for e in events(doc, "ha_state", host=host)]


def test_enabled_hosts_are_available_and_ha_state_events_carry_the_transition() -> None:
    doc = simulate(cluster([], until=600))
    assert doc["invariants"] == CLEAN
    for host in ("h1", "h2", "h3"):
        assert doc["final"]["hosts"][host]["ha_state"] == "Available"
        first = events(doc, "ha_state", host=host)[:2]
        assert [(e["from"], e["event"], e["to"]) for e in first] == [
            (None, "Disabled", "Disabled"),
            ("Disabled", "Enabled", "Available"),
        ]


@pytest.mark.parametrize("oobm", ["ipmi", "redfish"])
def test_a_crash_is_down_by_the_power_witness_then_host_ha_fences_the_dead_hardware(
    oobm: str,
) -> None:
    doc = simulate(cluster([{"at": FAULT_AT, "kind": "host_crash", "target": "h2"}], oobm=oobm))
    assert doc["invariants"] == CLEAN
    # The BMC read the power Off: Down and the VMs restarted within the target.
    assert first_restart(doc) - FAULT_AT <= CRASH_TARGET
    # The fast path stood aside: no fence on suspicion of a Host-HA host.
    assert events(doc, "suspicion") == []
    # Host-HA went on: no activity, a reset that left dead hardware Off, then the fence.
    path = ha_path(doc)
    assert ("ActivityCheckFailureOverThresholdRatio", "Recovering") in path
    assert ("RecoveryOperationThresholdExceeded", "Fencing") in path
    assert path[-1] == ("Fenced", "Fenced")
    assert doc["final"]["hosts"]["h2"]["ha_state"] == "Fenced"
    assert doc["final"]["hosts"]["h2"]["status"] == "Down"
    for vm in ("vm2a", "vm2b"):
        assert doc["final"]["vms"][vm]["state"] == "Running"
        assert doc["final"]["vms"][vm]["host"] != "h2"


@pytest.mark.parametrize("oobm", ["ipmi", "redfish"])
def test_host_ha_resets_a_hung_host_back_to_up_with_its_vms_running(oobm: str) -> None:
    # No watchdog: the hung host would never reset itself; Host-HA must.
    doc = simulate(
        cluster(
            [{"at": FAULT_AT, "kind": "host_hang", "target": "h2"}],
            oobm=oobm,
            watchdog=False,
        )
    )
    assert doc["invariants"] == CLEAN
    path = ha_path(doc)
    assert ("Recovered", "Recovered") in path
    assert ("RecoveryOperationThresholdExceeded", "Fencing") not in path
    (recovery,) = events(doc, "host_ha_recovery", host="h2")
    assert recovery["recovered"] is True
    resets = [e for e in events(doc, "power", host="h2") if "RESET" in e["reason"]]
    assert resets, "Host-HA reset the hung host through its BMC"
    assert doc["final"]["hosts"]["h2"]["status"] == "Up"
    assert doc["final"]["hosts"]["h2"]["power"] == "On"
    for vm in ("vm1", "vm2a", "vm2b"):
        assert doc["final"]["vms"][vm]["state"] == "Running"
    # Its VMs were restarted once the reset had killed them, not before.
    assert first_restart(doc) >= float(recovery["t"])


def test_dead_hardware_without_a_watchdog_is_fenced_and_its_vms_move() -> None:
    doc = simulate(
        cluster(
            [
                {"at": FAULT_AT, "kind": "host_crash", "target": "h2"},
            ],
            watchdog=False,
        )
    )
    assert doc["invariants"] == CLEAN
    assert doc["final"]["hosts"]["h2"]["ha_state"] == "Fenced"
    for vm in ("vm2a", "vm2b"):
        assert doc["final"]["vms"][vm]["host"] in ("h1", "h3")


@pytest.mark.parametrize(
    "faults",
    [
        [{"at": FAULT_AT, "kind": "agent_stop", "target": "h2"}],
        [{"at": FAULT_AT, "kind": "mgmt_partition", "target": "h2"}],
    ],
    ids=["agent_stop", "mgmt_partition"],
)
def test_a_host_that_still_writes_is_never_reset_nor_fenced(faults: list[dict[str, Any]]) -> None:
    # No escalation ladder: a stopped agent stays stopped (the ladder restarts it:
    # tests/simulation/test_escalation_sim.py).
    doc = simulate(cluster(faults, settings={"cloudha.escalation.enabled": False}))
    assert doc["invariants"] == CLEAN
    assert events(doc, "power", host="h2") == []
    assert events(doc, "host_ha_recovery") == events(doc, "host_ha_fence") == []
    assert doc["final"]["hosts"]["h2"]["status"] == "Alert"
    assert doc["final"]["hosts"]["h2"]["ha_state"] in ("Degraded", "Suspect", "Checking")
    assert ("ActivityCheckFailureUnderThresholdRatio", "Degraded") in ha_path(doc)
    for vm in ("vm2a", "vm2b"):
        assert doc["final"]["vms"][vm] == {"state": "Running", "host": "h2"}


def test_a_host_ha_host_comes_back_available_after_its_agent_returns() -> None:
    doc = simulate(
        cluster(
            [
                {"at": FAULT_AT, "kind": "agent_stop", "target": "h2"},
                {"at": 900, "kind": "agent_start", "target": "h2"},
            ]
        )
    )
    assert doc["invariants"] == CLEAN
    assert doc["final"]["hosts"]["h2"]["status"] == "Up"
    assert doc["final"]["hosts"]["h2"]["ha_state"] == "Available"
