"""The escalation ladder and the in-place VM restart, end to end in the simulator."""

from __future__ import annotations

from typing import Any

from cloudha.testing import simulate

from .support import CLEAN, events

LADDER_WITH_CYCLE = {"cloudha.escalation.levels": "agent.restart,power.cycle,fence"}


def cluster(
    faults: list[dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    hypervisor: str = "KVM",
    oobm: str = "ipmi",
    until: float = 3600,
    vms: list[dict[str, Any]] | None = None,
    ha_provider: bool = False,
    pools: tuple[str, ...] = ("nfs1",),
) -> dict[str, Any]:
    extra = {"ha_provider": True} if ha_provider else {}
    return {
        "settings": settings or {},
        "hosts": [
            {
                "id": f"h{i}",
                "cluster": "c1",
                "hypervisor": hypervisor,
                "pools": list(pools),
                "oobm": oobm,
                **extra,
            }
            for i in (1, 2, 3)
        ],
        "vms": vms
        if vms is not None
        else [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in (1, 2, 3)],
        "faults": faults,
        "run": {"until": until, "seed": 1},
    }


def statuses(doc: dict[str, Any], host: str) -> list[str]:
    return [e["to"] for e in events(doc, "host_status", host=host)]


def ladder(doc: dict[str, Any], host: str) -> list[tuple[str | None, str]]:
    return [(e["level"], e["outcome"]) for e in events(doc, "escalation", host=host)]


DEAD_AGENT = [{"at": 200, "kind": "agent_stop", "target": "h2"}]  # and no agent_start


def test_a_dead_agent_is_restarted_by_the_ladder_the_host_is_up_and_nothing_is_fenced() -> None:
    doc = simulate(cluster(DEAD_AGENT, settings=LADDER_WITH_CYCLE))
    assert doc["invariants"] == CLEAN
    assert statuses(doc, "h2") == ["Alert", "Connecting", "Up"]
    assert ladder(doc, "h2") == [("agent.restart", "started"), ("agent.restart", "succeeded")]
    started, succeeded = events(doc, "escalation", host="h2")
    assert started["t"] == 260.0  # the first recheck, one ping.interval after Alert
    assert started["timeout"] == 180.0
    assert started["step"] == 1
    assert "systemctl restart cloudstack-agent" in started["reason"]
    (up,) = events(doc, "host_status", host="h2", to="Up")
    assert succeeded["t"] == up["t"] < started["t"] + 180.0
    assert events(doc, "fence") == events(doc, "power") == []
    assert [e for e in events(doc, "suspicion") if e.get("outcome") == "FENCED"] == []
    assert doc["ha_scheduled"] == []
    assert doc["final"]["hosts"]["h2"] == {"status": "Up", "power": "On", "bmc": "up"}
    for i in (1, 2, 3):
        assert doc["final"]["vms"][f"vm{i}"] == {"state": "Running", "host": f"h{i}"}
    assert not [e for e in events(doc, "vm_state") if e["t"] > 0]  # no VM moved, none stopped


def test_a_dead_agent_behind_a_cut_link_is_neither_restarted_nor_power_cycled() -> None:
    # SSH takes the agent's network: the restart fails; the host's neighbours still see
    # it alive, so the power cycle is skipped (it would kill running VMs) and it waits.
    faults = [*DEAD_AGENT, {"at": 200, "kind": "mgmt_partition", "target": "h2"}]
    doc = simulate(cluster(faults, settings=LADDER_WITH_CYCLE, until=1800))
    assert doc["invariants"] == CLEAN
    assert ladder(doc, "h2")[:3] == [
        ("agent.restart", "failed"),
        ("power.cycle", "skipped"),
        ("fence", "started"),
    ]
    assert {o for level, o in ladder(doc, "h2") if level == "power.cycle"} == {"skipped"}
    skipped = events(doc, "escalation", host="h2", level="power.cycle")[0]
    assert "found alive by its last investigation" in skipped["reason"]
    assert events(doc, "power", host="h2") == []
    assert doc["final"]["hosts"]["h2"]["status"] == "Alert"
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}


def test_once_the_link_is_back_the_ladder_starts_over_and_restarts_the_agent() -> None:
    faults = [
        *DEAD_AGENT,
        {"at": 200, "kind": "mgmt_partition", "target": "h2"},
        {"at": 900, "kind": "mgmt_heal", "target": "h2"},
    ]
    doc = simulate(cluster(faults, until=2400))
    assert doc["invariants"] == CLEAN
    assert ladder(doc, "h2") == [
        ("agent.restart", "failed"),  # 260: the link is cut
        ("fence", "started"),
        (None, "reset"),  # 860: 600 s after the ladder ended; the link is still cut
        ("agent.restart", "failed"),
        ("fence", "started"),
        (None, "reset"),  # 1460: the link is back
        ("agent.restart", "started"),
        ("agent.restart", "succeeded"),
    ]
    resets = events(doc, "escalation", host="h2", outcome="reset")
    assert [e["t"] for e in resets] == [860.0, 1460.0]
    assert statuses(doc, "h2") == ["Alert", "Connecting", "Up"]
    assert events(doc, "power", host="h2") == []
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}


def test_a_hung_host_still_goes_the_fast_path_at_once() -> None:
    doc = simulate(cluster([{"at": 200, "kind": "host_hang", "target": "h2"}], until=1800))
    assert doc["invariants"] == CLEAN
    (down,) = events(doc, "host_status", host="h2", to="Down")
    (alert,) = events(doc, "host_status", host="h2", to="Alert")
    assert down["t"] == alert["t"]  # fenced on suspicion as it entered Alert, as before
    assert doc["final"]["vms"]["vm2"]["host"] in ("h1", "h3")


def test_the_power_cycle_resets_a_hung_host_no_witness_sees_and_its_vms_restart() -> None:
    # No shared storage (no heartbeat witness), the fast path off: nothing proves the hung
    # host alive or dead; the ladder's power cycle resets it and VM HA moves its VMs.
    settings = {**LADDER_WITH_CYCLE, "cloudha.fence.on.suspicion": False, "alert.wait": 300}
    hang = [{"at": 200, "kind": "host_hang", "target": "h2"}]
    doc = simulate(cluster(hang, settings=settings, until=1800, pools=()))
    assert doc["invariants"] == CLEAN
    assert ladder(doc, "h2")[:2] == [("agent.restart", "failed"), ("power.cycle", "succeeded")]
    cycled = events(doc, "escalation", host="h2", level="power.cycle")[0]
    resets = [e for e in events(doc, "power", host="h2") if "RESET" in e["reason"]]
    assert resets
    assert {e["t"] for e in resets} == {cycled["t"]}
    (down,) = events(doc, "host_status", host="h2", to="Down")
    assert down["t"] == cycled["t"]
    (scheduled,) = events(doc, "ha_scheduled", host="h2")
    assert scheduled["investigate"] is False  # the reset killed the VMs: no fence needed
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"
    assert statuses(doc, "h2")[-1] == "Up"  # booted again, its agent connected
    assert ladder(doc, "h2")[-1] == (None, "reset")


def test_the_default_ladder_never_power_cycles() -> None:
    settings = {"cloudha.fence.on.suspicion": False, "alert.wait": 300}
    hang = [{"at": 200, "kind": "host_hang", "target": "h2"}]
    doc = simulate(cluster(hang, settings=settings, until=1800, pools=()))
    assert doc["invariants"]["fenced_alive_host"] == 0
    assert events(doc, "power", host="h2") == []
    assert {level for level, _ in ladder(doc, "h2")} <= {"agent.restart", "fence", None}


def test_host_ha_hosts_get_their_agent_restarted_and_are_never_power_cycled_by_the_ladder() -> None:
    doc = simulate(cluster(DEAD_AGENT, settings=LADDER_WITH_CYCLE, ha_provider=True))
    assert doc["invariants"] == CLEAN
    assert ladder(doc, "h2") == [("agent.restart", "started"), ("agent.restart", "succeeded")]
    assert doc["final"]["hosts"]["h2"]["status"] == "Up"
    assert events(doc, "power", host="h2") == []


def test_without_the_ladder_a_dead_agent_stays_in_alert_for_good() -> None:
    doc = simulate(cluster(DEAD_AGENT, settings={"cloudha.escalation.enabled": False}))
    assert doc["invariants"] == CLEAN
    assert statuses(doc, "h2") == ["Alert"]
    assert events(doc, "escalation") == []


# -- a VM that crashed alone -----------------------------------------------------------------

LOADED = [
    {"id": "vm1", "host": "h2", "ha": True},
    {"id": "vm2", "host": "h2", "ha": True},
    {"id": "vm3", "host": "h1", "ha": True},
]
"""h2 is the busiest host: the planner alone would put a restarted VM on h3."""


def test_a_vm_that_crashed_alone_is_restarted_on_its_own_host_first() -> None:
    crash = [{"at": 300, "kind": "vm_crash", "target": "vm1"}]
    doc = simulate(cluster(crash, vms=LOADED, until=1200))
    assert doc["invariants"] == CLEAN
    (sync,) = events(doc, "vm_sync", vm="vm1")
    assert sync["host"] == "h2"
    assert sync["restart"] is True
    (in_place,) = [e for e in events(doc, "ha_work", vm="vm1") if e.get("in_place")]
    assert in_place["in_place"] == "h2"
    assert "restarting it there first" in in_place["reason"]
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h2"}
    assert statuses(doc, "h2") == []  # the host never left Up
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}


def test_without_in_place_the_crashed_vm_goes_where_the_planner_puts_it() -> None:
    crash = [{"at": 300, "kind": "vm_crash", "target": "vm1"}]
    settings = {"cloudha.vm.restart.in.place": False}
    doc = simulate(cluster(crash, vms=LOADED, until=1200, settings=settings))
    assert doc["invariants"] == CLEAN
    assert [e for e in events(doc, "ha_work", vm="vm1") if e.get("in_place")] == []
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h3"}


def test_a_full_host_sends_the_crashed_vm_elsewhere() -> None:
    scenario = cluster([{"at": 300, "kind": "vm_crash", "target": "vm1"}], vms=LOADED, until=1200)
    scenario["hosts"][1]["capacity"] = 1  # vm2 fills h2 once vm1 is gone
    doc = simulate(scenario)
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"
    assert doc["final"]["vms"]["vm1"]["host"] != "h2"


def test_a_vm_crash_on_a_directly_managed_host_is_restarted_in_place_too() -> None:
    crash = [{"at": 300, "kind": "vm_crash", "target": "vm1"}]
    doc = simulate(cluster(crash, vms=LOADED, until=1200, hypervisor="XenServer", oobm="none"))
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h2"}
