"""Fencing in the HA path, on virtual time: BMCs, storage-heartbeat proof, escalation."""

from __future__ import annotations

import itertools
from typing import Any

from cloudha.testing import simulate

STALE = 465.0


def scenario(
    faults: list[dict[str, Any]],
    *,
    oobm: str = "ipmi",
    hypervisor: str = "KVM",
    until: float = 3600,
    pools: tuple[str, ...] = ("nfs1",),
) -> dict[str, Any]:
    return {
        "hosts": [
            {
                "id": f"h{i}",
                "cluster": "c1",
                "hypervisor": hypervisor,
                "pools": list(pools),
                "oobm": oobm,
            }
            for i in range(1, 4)
        ],
        "vms": [
            {"id": "vm2a", "host": "h2", "ha": True},
            {"id": "vm2b", "host": "h2", "ha": True},
            {"id": "vm2c", "host": "h2", "ha": False},
            {"id": "vm1", "host": "h1", "ha": True},
        ],
        "faults": faults,
        "run": {"until": until, "seed": 3},
    }


def events(doc: dict[str, Any], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in doc["events"]
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
    ]


def down_time(doc: dict[str, Any], host: str) -> float:
    (down,) = events(doc, "host_status", host=host, to="Down")
    return float(down["t"])


CLEAN = {
    "double_run": 0,
    "fenced_alive_host": 0,
    "down_with_running_vms": 0,
    "lost_work": 0,
    "unrecovered_ha_vm": 0,
}


def test_crash_with_the_bmc_alive_is_fenced_by_power_read_back_at_once() -> None:
    doc = simulate(scenario([{"at": 300, "kind": "host_crash", "target": "h2"}]))
    t = down_time(doc, "h2")
    fences = events(doc, "fence", host="h2")
    # Each HA VM is fenced off by reading the BMC: the host is already off.
    assert [(e["vm"], e["fencer"], e["outcome"], e["t"]) for e in fences] == [
        ("vm2a", "PowerFencer", "FENCED", t),
        ("vm2b", "PowerFencer", "FENCED", t),
    ]
    assert fences[0]["reason"] == "h2 is already powered off"
    assert fences[0]["evidence"]["steps"] == [
        {"operation": "STATUS", "success": True, "state": "Off"}
    ]
    # Restarted elsewhere at the moment of the Down verdict; the non-HA VM stays down.
    started = {e["vm"]: (e["host"], e["t"]) for e in events(doc, "vm_state")}
    assert set(started) == {"vm2a", "vm2b"}
    assert all(host != "h2" and when == t for host, when in started.values())
    assert doc["final"]["vms"]["vm2c"]["state"] == "Stopped"
    assert [e["step"] for e in events(doc, "ha_work")] == ["Done", "Done"]
    assert events(doc, "power") == []  # nothing had to be switched
    assert doc["final"]["hosts"]["h2"] == {"status": "Down", "power": "Off", "bmc": "up"}
    assert doc["invariants"] == CLEAN


def test_crash_with_a_dead_bmc_falls_back_to_storage_heartbeat_proof() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 300, "kind": "host_crash", "target": "h2"},
                {"at": 300, "kind": "bmc_down", "target": "h2"},
            ]
        )
    )
    t = down_time(doc, "h2")
    per_vm = [
        (e["fencer"], e["outcome"], e["level"]) for e in events(doc, "fence", host="h2", vm="vm2a")
    ]
    assert per_vm == [
        ("PowerFencer", "NOT_FENCED", 0),
        ("LibvirtFencer", "NOT_FENCED", 1),
        ("KVMFenceBuilder", "FENCED", 2),
    ]
    proof = events(doc, "fence", vm="vm2a", fencer="KVMFenceBuilder")[0]
    assert proof["evidence"]["proved_by"] in {"h1", "h3"}
    assert {e["vm"] for e in events(doc, "vm_state")} == {"vm2a", "vm2b"}
    assert all(e["t"] == t for e in events(doc, "vm_state"))
    # The readiness check noticed the BMC going silent long before it was needed.
    readiness = events(doc, "fence_readiness", host="h2")
    assert [r["ready"] for r in readiness] == [True, False]
    assert 300 <= readiness[1]["t"] <= 304
    assert events(doc, "fence_escalated") == []
    assert doc["invariants"] == CLEAN


def test_a_hung_host_is_switched_off_and_confirmed_before_its_vms_move() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 300, "kind": "host_hang", "target": "h2"},
                {"at": 2000, "kind": "host_recover", "target": "h2"},
            ]
        )
    )
    t = down_time(doc, "h2")
    assert 300 + STALE - 60 < t <= 300 + STALE + 120
    first = events(doc, "fence", host="h2", vm="vm2a")
    assert [(e["fencer"], e["outcome"]) for e in first] == [("PowerFencer", "FENCED")]
    assert first[0]["reason"] == "h2 powered off and read back Off"
    assert [s["operation"] for s in first[0]["evidence"]["steps"]] == ["STATUS", "OFF", "STATUS"]
    (power,) = events(doc, "power", host="h2")
    assert power["power"] == "Off"
    assert power["t"] == t
    # The second VM finds the host already off.
    second = events(doc, "fence", host="h2", vm="vm2b")
    assert second[0]["reason"] == "h2 is already powered off"
    # The end of the "hang" (here: the operator powers it back on) resumes nothing.
    assert doc["final"]["hosts"]["h2"]["power"] == "On"
    for vm in ("vm2a", "vm2b"):
        assert doc["final"]["vms"][vm]["state"] == "Running"
        assert doc["final"]["vms"][vm]["host"] != "h2"
    assert doc["invariants"] == CLEAN


def test_a_hung_host_without_a_bmc_is_the_storage_proofs_blind_spot() -> None:
    # Without power fencing, a hung host that comes back resumes VMs that were
    # restarted elsewhere: the heartbeat proves only that it stopped writing.
    # This pins the hazard (and why BMCs are worth configuring).
    doc = simulate(
        scenario(
            [
                {"at": 300, "kind": "host_hang", "target": "h2"},
                {"at": 2000, "kind": "host_recover", "target": "h2"},
            ],
            oobm="none",
        )
    )
    fenced_by = {e["fencer"] for e in events(doc, "fence", host="h2", outcome="FENCED")}
    assert fenced_by == {"KVMFenceBuilder"}
    assert doc["invariants"]["double_run"] == 2


def test_the_same_hang_with_a_bmc_keeps_every_vm_single() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 300, "kind": "host_hang", "target": "h2"},
                {"at": 2000, "kind": "host_recover", "target": "h2"},
            ]
        )
    )
    assert doc["invariants"]["double_run"] == 0


def test_a_fence_that_cannot_be_proven_escalates_and_is_retried_then_given_up() -> None:
    # Storage proof excluded by the operator and the BMC dead: nothing can fence
    # h2, so every attempt escalates (alert and evidence) and HA tries again later.
    doc = simulate(
        {
            "settings": {
                "max.retries": 3,
                "restart.retry.interval": 300,
                "ha.fence.builders.exclude": "RecreatableFencer,KVMFenceBuilder",
            },
            "hosts": [
                {"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": "redfish"}
                for i in range(1, 4)
            ],
            "vms": [{"id": "vm", "host": "h2", "ha": True}],
            "faults": [
                {"at": 10, "kind": "bmc_down", "target": "h2"},
                {"at": 100, "kind": "host_crash", "target": "h2"},
            ],
            "run": {"until": 7200, "seed": 1},
        }
    )
    t = down_time(doc, "h2")
    escalations = events(doc, "fence_escalated", host="h2")
    assert len(escalations) == 3
    # A BMC that answers nothing is not polled for the whole timeout (and the
    # simulated calls take no time): each attempt ends when it starts.
    assert escalations[0]["t"] == t
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(escalations)]
    assert gaps == [300.0, 300.0]
    assert escalations[0]["attempts"][0]["reason"] == "the BMC of h2 does not answer"
    assert [e["step"] for e in events(doc, "ha_work", vm="vm")] == [
        "Scheduled",
        "Scheduled",
        "Error",
    ]
    assert [f["fencer"] for f in escalations[0]["attempts"]] == [
        "PowerFencer",
        "LibvirtFencer",
        "XenServerFenceBuilder",
        "VMwareFenceBuilder",
    ]
    assert doc["final"]["vms"]["vm"]["state"] == "Stopped"
    assert doc["invariants"]["unrecovered_ha_vm"] == 1
    assert doc["invariants"]["double_run"] == 0
