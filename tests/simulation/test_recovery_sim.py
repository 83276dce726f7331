"""Recovery that always finishes: restarts, flapping servers, outages, power cycles, planner."""

from __future__ import annotations

from typing import Any

from cloudha.testing import simulate

from .support import CLEAN, events


def scenario(
    faults: list[dict[str, Any]],
    *,
    until: float = 3600,
    hosts: list[dict[str, Any]] | None = None,
    vms: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "hosts": hosts
        or [{"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"]} for i in range(1, 4)],
        "vms": vms or [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in range(1, 4)],
        "faults": faults,
        "run": {"until": until, "seed": 1},
    }


def assert_recovered(doc: dict[str, Any], host: str, vm: str) -> None:
    assert doc["invariants"] == CLEAN
    assert doc["final"]["hosts"][host]["status"] == "Down"
    assert doc["final"]["vms"][vm]["state"] == "Running"
    assert doc["final"]["vms"][vm]["host"] != host


def test_a_host_in_alert_when_the_server_restarts_is_rechecked_until_down() -> None:
    vms = [{"id": f"vm{i}", "host": "h2", "ha": True} for i in range(1, 7)]
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h2"},
                {"at": 262, "kind": "ms_crash"},
                {"at": 300, "kind": "ms_restart"},
            ],
            vms=vms,
        )
    )
    alert = events(doc, "host_status", host="h2", to="Alert")
    assert alert
    assert alert[0]["t"] < 262  # in Alert when the server died
    assert [e["hosts"] for e in events(doc, "recovery")] == [["h2"]]
    for i in range(1, 7):
        assert_recovered(doc, "h2", f"vm{i}")


def test_a_server_crashing_every_150_s_still_recovers_a_dead_host() -> None:
    faults: list[dict[str, Any]] = [{"at": 50, "kind": "host_crash", "target": "h2"}]
    for k in range(20):
        faults.append({"at": 100 + 150 * k, "kind": "ms_crash"})
        faults.append({"at": 110 + 150 * k, "kind": "ms_restart"})
    doc = simulate(scenario(faults, until=4000))
    assert_recovered(doc, "h2", "vm2")


def test_an_orchestrator_outage_around_a_crash_loses_nothing() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 200, "kind": "orchestrator_outage"},
                {"at": 250, "kind": "host_crash", "target": "h2"},
                {"at": 1500, "kind": "orchestrator_heal"},
            ]
        )
    )
    assert_recovered(doc, "h2", "vm2")
    down = events(doc, "host_status", host="h2", to="Down")[0]
    assert down["t"] > 1500  # nothing is decided while the directory does not answer


def test_an_outage_just_before_the_host_would_be_declared_down_loses_nothing() -> None:
    base = simulate(scenario([{"at": 100, "kind": "host_crash", "target": "h2"}]))
    down_at = events(base, "host_status", host="h2", to="Down")[0]["t"]
    investigated = [e["t"] for e in events(base, "investigation", host="h2") if e["t"] < down_at][
        -1
    ]
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h2"},
                {"at": investigated + 1, "kind": "orchestrator_outage"},
                {"at": investigated + 900, "kind": "orchestrator_heal"},
            ]
        )
    )
    assert_recovered(doc, "h2", "vm2")
    assert doc["ha_scheduled"] == [{"host": "h2", "investigate": True, "reason": "HostDown"}]


def test_a_host_power_cycled_before_it_is_declared_down_gets_its_ha_vms_back() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h2"},
                {"at": 110, "kind": "host_recover", "target": "h2"},
            ]
        )
    )
    assert doc["invariants"] == CLEAN
    assert events(doc, "host_status", host="h2", to="Down") == []
    synced = events(doc, "vm_sync", host="h2")
    assert [e["vm"] for e in synced] == ["vm2"]
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"


def test_the_planner_restarts_only_onto_enabled_hosts() -> None:
    hosts = [
        {"id": "h1", "cluster": "c1", "pools": ["nfs1"]},
        {"id": "h2", "cluster": "c1", "pools": ["nfs1"]},
        {"id": "h3", "cluster": "c1", "pools": ["nfs1"], "resource_state": "Maintenance"},
        {"id": "h4", "cluster": "c1", "pools": ["nfs1"], "resource_state": "Disabled"},
    ]
    vms = [
        {"id": "vm1", "host": "h1", "ha": True},
        {"id": "vm2", "host": "h2", "ha": True},
        {"id": "vm3", "host": "h2", "ha": True},
    ]
    doc = simulate(
        scenario([{"at": 100, "kind": "host_crash", "target": "h2"}], hosts=hosts, vms=vms)
    )
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h1"}
    assert doc["final"]["vms"]["vm3"] == {"state": "Running", "host": "h1"}


def test_every_fault_kind_has_exactly_one_effect() -> None:
    from cloudha.testing.scenario import FAULT_KINDS
    from cloudha.testing.simulator import FAULT_EFFECTS

    assert set(FAULT_EFFECTS) == set(FAULT_KINDS)


def test_an_agent_link_closing_during_an_orchestrator_outage_is_left_to_the_monitor() -> None:
    # The connection layer reports the closed link while the directory cannot be
    # read: nothing raises, the host stays monitored, and the monitor examines it.
    # (After the server's start-up, which judges nothing until its view is fresh.)
    doc = simulate(
        scenario(
            [
                {"at": 200, "kind": "orchestrator_outage"},
                {"at": 210, "kind": "agent_stop", "target": "h1"},
                {"at": 230, "kind": "orchestrator_heal"},
            ],
            until=1200,
        )
    )
    deferred = events(doc, "disconnect_deferred", host="h1")
    assert [e["event"] for e in deferred] == ["AgentDisconnected"]
    behind = events(doc, "behind_on_ping", host="h1")
    assert behind
    assert behind[0]["t"] > 230
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h1"}


def test_a_server_started_during_an_outage_pings_its_direct_hosts_once_it_ends() -> None:
    # Directly managed hosts are pinged by the server itself; a server that starts
    # while the host directory is down learns them once it answers, and then
    # notices a host that dies.
    hosts = [{"id": f"x{i}", "cluster": "c1", "hypervisor": "XenServer"} for i in range(1, 4)]
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "orchestrator_outage"},
                {"at": 110, "kind": "ms_crash"},
                {"at": 120, "kind": "ms_restart"},
                {"at": 200, "kind": "orchestrator_heal"},
                {"at": 600, "kind": "host_crash", "target": "x2"},
            ],
            hosts=hosts,
            vms=[{"id": "vm1", "host": "x2", "ha": True}],
            until=3600,
        )
    )
    behind = events(doc, "behind_on_ping", host="x2")
    assert behind
    assert behind[0]["t"] > 600
    assert not events(doc, "behind_on_ping", host="x1")
    assert doc["invariants"] == CLEAN


def test_a_direct_host_back_from_a_crash_reports_its_vms_and_the_lost_ones_restart() -> None:
    # A XenServer host without a BMC that crashes cannot be proven dead: it
    # stays in Alert. When it boots again, its status report (the PingTask's)
    # lists no VM: the VM sync must stop the lost VMs and restart the HA one.
    doc = simulate(
        {
            "hosts": [
                {"id": f"h{i}", "cluster": "c1", "hypervisor": "XenServer", "oobm": "none"}
                for i in (1, 2, 3)
            ],
            "vms": [{"id": "vm1", "host": "h2", "ha": True}, {"id": "vm2", "host": "h2"}],
            "faults": [
                {"at": 100, "kind": "host_crash", "target": "h2"},
                {"at": 400, "kind": "host_recover", "target": "h2"},
            ],
            "run": {"until": 900, "seed": 1},
        }
    )
    assert doc["invariants"] == CLEAN
    assert not events(doc, "host_status", host="h2", to="Down")
    assert [(e["vm"], e["restart"]) for e in events(doc, "vm_sync", host="h2")] == [
        ("vm1", True),
        ("vm2", False),
    ]
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"
    assert doc["final"]["vms"]["vm1"]["host"] != "h2"


def test_a_host_back_from_a_reboot_just_after_it_is_declared_down_gets_its_ha_vms_back() -> None:
    # The host reconnects (without vm2) just after HostDown. No BMC, but its
    # hypervisor answered the verdict's investigation with no domain running:
    # that proves vm2 dead, so the work is scheduled as proven stopped
    # (investigate=False) and no "host is Up again" can cancel it (campaign
    # unrecovered_ha_vm; the VM sync's part is tested in tests/unit/test_server.py).
    hosts = [{"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": "none"} for i in (1, 2, 3)]
    crash = {"at": 100, "kind": "host_crash", "target": "h2"}
    (down,) = events(simulate(scenario([crash], until=1200, hosts=hosts)), "host_status", to="Down")
    boot = 60.0  # the simulated boot, from host_recover to Up
    recover = {"at": down["t"] - boot + 0.5, "kind": "host_recover", "target": "h2"}
    doc = simulate(scenario([crash, recover], until=1500, hosts=hosts))
    downs = events(doc, "host_status", host="h2", to="Down")
    ups = events(doc, "host_status", host="h2", to="Up")
    assert downs
    assert ups
    assert 0 < ups[-1]["t"] - downs[-1]["t"] < 1.0  # the race is exercised
    (investigation,) = [e for e in events(doc, "investigation", host="h2") if e["result"] == "Down"]
    assert any(f.get("no_vm_runs") for f in investigation["findings"])
    (scheduled,) = events(doc, "ha_scheduled", host="h2")
    assert scheduled["investigate"] is False
    assert [e["step"] for e in events(doc, "ha_work", vm="vm2")] == ["Scheduled", "Done"]
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"
    assert doc["invariants"] == CLEAN


def test_a_direct_host_rebooted_before_it_is_alert_gets_its_ha_vm_back() -> None:
    # A lone XenServer host crashes and boots again while the monitor still waits
    # (alert.wait): it is never Alert or Down, so nothing reconnects it. Its ping
    # reports list no vm1; the VM sync restarts vm1 once the grace has passed.
    # (No BMC: one that reads the power Off would prove it Down at once.)
    doc = simulate(
        {
            "hosts": [{"id": "h1", "cluster": "c1", "hypervisor": "XenServer", "oobm": "none"}],
            "vms": [{"id": "vm1", "host": "h1", "ha": True, "type": "ConsoleProxy"}],
            "faults": [
                {"at": 678, "kind": "host_crash", "target": "h1"},
                {"at": 986.6, "kind": "host_recover", "target": "h1"},
            ],
            "run": {"until": 2000, "seed": 887758388},
        }
    )
    assert not events(doc, "host_status", host="h1")
    synced = events(doc, "vm_sync", host="h1")
    assert [(e["vm"], e["restart"]) for e in synced] == [("vm1", True)]
    assert "has not reported vm1" in synced[0]["reason"]
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"
    assert doc["invariants"] == CLEAN
