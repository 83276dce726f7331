"""Fencing in the HA path, on virtual time: BMCs, storage-heartbeat proof, escalation."""

from __future__ import annotations

import itertools
from typing import Any

from cloudha.testing import simulate
from cloudha.testing.simulator import WORK_SECONDS
from tests.simulation.support import CLEAN, down_time, events

STALE = 465.0


def scenario(
    faults: list[dict[str, Any]],
    *,
    oobm: str = "ipmi",
    hypervisor: str = "KVM",
    until: float = 3600,
    pools: tuple[str, ...] = ("nfs1",),
    watchdog: bool | None = None,
) -> dict[str, Any]:
    extra = {} if watchdog is None else {"watchdog": watchdog}
    return {
        "hosts": [
            {
                "id": f"h{i}",
                "cluster": "c1",
                "hypervisor": hypervisor,
                "pools": list(pools),
                "oobm": oobm,
                **extra,
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


def final_steps(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each VM's last HA work step and its reason."""
    return {e["vm"]: (e["step"], e["reason"]) for e in events(doc, "ha_work")}


def starts(doc: dict[str, Any]) -> dict[str, tuple[str, float]]:
    return {e["vm"]: (e["host"], e["t"]) for e in events(doc, "vm_state", state="Running")}


def test_crash_with_the_bmc_alive_is_proven_off_and_restarted_without_a_fence() -> None:
    doc = simulate(scenario([{"at": 300, "kind": "host_crash", "target": "h2"}]))
    down = down_time(doc, "h2")
    t = down + WORK_SECONDS  # one HA worker per VM, claimed at once
    # The BMC read the power Off at the verdict: nothing runs on h2, so its VMs
    # are handed over as proven stopped (investigate=False) and stopped at once,
    # the non-HA VM too, so that it is known Stopped. No fence is asked for: a
    # fence minutes later could power off a host that has booted since.
    (scheduled,) = events(doc, "ha_scheduled", host="h2")
    assert scheduled["investigate"] is False
    assert "no fence needed" in scheduled["reason"]
    assert events(doc, "fence", host="h2") == []
    stopped = events(doc, "vm_state", host="h2", state="Stopped")
    assert [(e["vm"], e["t"]) for e in stopped] == [
        ("vm2a", down),
        ("vm2b", down),
        ("vm2c", down),
    ]
    # Restarted elsewhere by the first worker; the non-HA VM stays down.
    started = starts(doc)
    assert set(started) == {"vm2a", "vm2b"}
    assert all(host != "h2" and when == t for host, when in started.values())
    assert doc["final"]["vms"]["vm2c"]["state"] == "Stopped"
    assert final_steps(doc) == {
        "vm2a": ("Done", f"started on host {started['vm2a'][0]}"),
        "vm2b": ("Done", f"started on host {started['vm2b'][0]}"),
        "vm2c": ("Done", "the VM is not HA-enabled: it stays stopped"),
    }
    assert [e["step"] for e in events(doc, "ha_work", vm="vm2a")] == ["Scheduled", "Done"]
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
    t = down_time(doc, "h2") + WORK_SECONDS
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
    assert set(starts(doc)) == {"vm2a", "vm2b"}
    assert all(when == t for _host, when in starts(doc).values())
    # The readiness check noticed the BMC going silent long before it was needed.
    readiness = events(doc, "fence_readiness", host="h2")
    assert [r["ready"] for r in readiness] == [True, False]
    assert 300 <= readiness[1]["t"] <= 304
    assert events(doc, "fence_escalated") == []
    assert doc["invariants"] == CLEAN


def test_a_hung_host_with_a_watchdog_is_reset_before_its_heartbeat_is_stale() -> None:
    # The slow path's guarantee, with the fast path (fence on suspicion) switched off.
    doc = simulate(
        {
            **scenario(
                [
                    {"at": 300, "kind": "host_hang", "target": "h2"},
                    {"at": 2000, "kind": "host_recover", "target": "h2"},
                ]
            ),
            "settings": {"cloudha.fence.on.suspicion": False},
        }
    )
    (reset,) = events(doc, "watchdog_reset", host="h2")
    # petted at most one round before the hang; reset by timeout + margin after that
    assert 300 + 300 - 60 <= reset["t"] <= 300 + 300 + 30
    assert reset["t"] < 300 + STALE - 60  # before any neighbour can call it stale
    # It boots and reconnects before anyone could prove it dead: nothing is
    # fenced and nothing runs twice (its lost VMs are for VM sync to restart).
    assert events(doc, "fence", host="h2") == []
    assert events(doc, "host_status", host="h2", to="Down") == []
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["fenced_alive_host"] == 0


def test_a_hung_host_without_a_bmc_is_no_longer_a_blind_spot() -> None:
    # A hung host that comes back resumes its VMs; the stale heartbeat is
    # proof only when its watchdog resets it first.
    faults = [
        {"at": 300, "kind": "host_hang", "target": "h2"},
        {"at": 2000, "kind": "host_recover", "target": "h2"},
    ]
    guarded = simulate(scenario(faults, oobm="none"))
    assert len(events(guarded, "watchdog_reset", host="h2")) == 1
    assert guarded["invariants"]["double_run"] == 0
    bare = simulate(scenario(faults, oobm="none", watchdog=False))
    assert events(bare, "watchdog_reset") == []
    assert events(bare, "fence", host="h2", outcome="FENCED") == []
    assert events(bare, "host_status", host="h2", to="Down") == []
    assert bare["invariants"]["double_run"] == 0
    assert bare["invariants"]["down_with_running_vms"] == 0
    # it resumed with its VMs where they were
    assert {bare["final"]["vms"][vm]["host"] for vm in ("vm2a", "vm2b", "vm2c")} == {"h2"}


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
                "vm.ha.migration.max.retries": 3,
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
    assert escalations[0]["t"] == t + WORK_SECONDS
    # Retried once restart.retry.interval has passed, when an idle worker
    # next looks (every time.to.sleep) and spends its WORK_SECONDS.
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(escalations)]
    assert all(300.0 < gap <= 300.0 + 60.0 + WORK_SECONDS for gap in gaps), gaps
    assert escalations[0]["attempts"][0]["reason"] == "the BMC of h2 does not answer"
    assert [e["step"] for e in events(doc, "ha_work", vm="vm")] == [
        "Investigating",
        "Rescheduled",
        "Rescheduled",
        "Error",
    ]
    assert final_steps(doc)["vm"][1].startswith("gave up after 3 attempts: not fenced")
    assert [f["fencer"] for f in escalations[0]["attempts"]] == [
        "PowerFencer",
        "LibvirtFencer",
        "XenServerFenceBuilder",
        "VMwareFenceBuilder",
    ]
    assert doc["final"]["vms"]["vm"]["state"] == "Stopped"
    assert doc["invariants"]["unrecovered_ha_vm"] == 1
    assert doc["invariants"]["double_run"] == 0
