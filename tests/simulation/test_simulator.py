"""Whole-system behaviour on virtual time: the simulator running the real components."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudha.testing import simulate, to_json
from cloudha.testing.simulator import WORK_SECONDS

TIMEOUT = 150.0
STALE = 465.0  # heartbeat limit with the default settings, one pool
BUDGET = 5 * 60 + 4 * 10  # the writer's retry budget: 5 tries of 60 s, 10 s apart
WATCHDOG, MARGIN = 300.0, 30.0  # cloudha.watchdog.timeout and .reset.margin defaults


NO_LADDER: dict[str, Any] = {"cloudha.escalation.enabled": False}
"""An agent that stops stays stopped (nothing restarts it over SSH)."""


def scenario(
    faults: list[dict[str, Any]],
    *,
    hosts: int = 3,
    hypervisor: str = "KVM",
    until: float = 3600,
    settings: dict[str, Any] | None = None,
    seed: int = 1,
    watchdog: bool | None = None,
) -> dict[str, Any]:
    extra = {} if watchdog is None else {"watchdog": watchdog}
    return {
        "settings": settings or {},
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "hypervisor": hypervisor, "pools": ["nfs1"], **extra}
            for i in range(1, hosts + 1)
        ],
        "vms": [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in range(1, hosts + 1)],
        "faults": faults,
        "run": {"until": until, "seed": seed},
    }


def events(doc: dict[str, Any], kind: str, host: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in doc["events"] if e["kind"] == kind and (host is None or e.get("host") == host)
    ]


def statuses(doc: dict[str, Any], host: str) -> list[tuple[str | None, str]]:
    return [(e["from"], e["to"]) for e in events(doc, "host_status", host)]


def test_host_crash_detected_at_its_deadline_then_down_once_the_heartbeat_is_stale() -> None:
    doc = simulate(scenario([{"at": 300, "kind": "host_crash", "target": "h2"}]))
    first = events(doc, "behind_on_ping", "h2")[0]
    assert TIMEOUT < first["since_last_ping"] <= TIMEOUT * 1.02
    assert 300 < first["t"] <= 300 + 60 + TIMEOUT * 1.02
    # Neighbours still see a fresh heartbeat at first: alive but cut off, so Alert.
    assert statuses(doc, "h2") == [("Up", "Alert"), ("Alert", "Down")]
    alert, down = events(doc, "host_status", "h2")
    assert alert["t"] == first["t"]
    # Rechecked every ping.interval; Down once the last heartbeat (written
    # at most 60 s before the crash) is older than the 465 s limit.
    assert 240 + STALE < down["t"] <= 300 + STALE + 60 + 1
    verdict = next(e for e in events(doc, "investigation", "h2") if e["t"] == down["t"])
    assert verdict["decided_by"] == "KVMInvestigator"
    assert verdict["trigger"] == "AlertRecheck"
    assert [f["verdict"] for f in verdict["findings"] if f["source"] == "KVMInvestigator"] == [
        "DEAD"
    ]
    assert doc["ha_scheduled"] == [{"host": "h2", "investigate": True, "reason": "HostDown"}]
    assert doc["final"]["hosts"]["h2"] == {"status": "Down", "power": "Off"}
    assert doc["final"]["hosts"]["h1"] == {"status": "Up", "power": "On"}
    # No BMC: a neighbour proves the heartbeat stale, then vm2 starts elsewhere at once.
    # (The libvirt fencer tries first: the hypervisor does not answer either.)
    # The HA worker claims the work at once and spends WORK_SECONDS on it.
    fenced_at = down["t"] + WORK_SECONDS
    assert [(e["fencer"], e["outcome"], e["t"]) for e in events(doc, "fence", "h2")] == [
        ("LibvirtFencer", "NOT_FENCED", fenced_at),
        ("KVMFenceBuilder", "FENCED", fenced_at),
    ]
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h1"}
    assert doc["invariants"] == {
        "double_run": 0,
        "fenced_alive_host": 0,
        "down_with_running_vms": 0,
        "lost_work": 0,
        "unrecovered_ha_vm": 0,
    }
    # Healthy hosts are never examined.
    assert events(doc, "behind_on_ping", "h1") == []


def test_host_recover_brings_the_host_back_up() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h1"},
                {"at": 2500, "kind": "host_recover", "target": "h1"},
            ]
        )
    )
    assert statuses(doc, "h1") == [
        ("Up", "Alert"),
        ("Alert", "Down"),
        ("Down", "Connecting"),
        ("Connecting", "Up"),
    ]
    reconnect = events(doc, "host_status", "h1")[2]["t"]
    assert reconnect == pytest.approx(2500 + 60, abs=0.01)  # boot time, then the agent connects
    assert doc["final"]["hosts"]["h1"] == {"status": "Up", "power": "On"}


def test_agent_stop_investigates_at_once_and_vms_keep_running() -> None:
    # Without the escalation ladder (which restarts the agent: test_escalation_sim.py),
    # the agent stays dead until agent_start.
    doc = simulate(
        scenario(
            [
                {"at": 200, "kind": "agent_stop", "target": "h3"},
                {"at": 900, "kind": "agent_start", "target": "h3"},
            ],
            settings=NO_LADDER,
        )
    )
    first = events(doc, "investigation", "h3")[0]
    assert first["t"] == 200.0
    assert first["trigger"] == "AgentDisconnected"
    assert first["result"] == "Disconnected"  # neighbours see its heartbeat
    # CloudStack's Up + AgentDisconnected goes to Alert at once; the restarted agent reconnects.
    assert statuses(doc, "h3") == [("Up", "Alert"), ("Alert", "Connecting"), ("Connecting", "Up")]
    assert events(doc, "host_status", "h3")[1]["t"] == 901.0
    assert doc["ha_scheduled"] == []
    assert doc["final"]["hosts"]["h3"] == {"status": "Up", "power": "On"}
    assert doc["final"]["vms"]["vm3"] == {"state": "Running", "host": "h3"}
    assert doc["invariants"]["double_run"] == 0
    later = [e for e in events(doc, "behind_on_ping", "h3") if e["t"] > 901]
    assert later == []


def test_mgmt_partition_and_heal() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "mgmt_partition", "target": "h1"},
                {"at": 600, "kind": "mgmt_heal", "target": "h1"},
            ]
        )
    )
    assert events(doc, "behind_on_ping", "h1")
    assert all(e["t"] < 700 for e in events(doc, "behind_on_ping", "h1"))
    assert doc["final"]["hosts"]["h1"]["status"] == "Up"
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"


def test_long_partition_goes_alert_then_reconnects_after_heal() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "mgmt_partition", "target": "h1"},
                {"at": 2400, "kind": "mgmt_heal", "target": "h1"},
            ]
        )
    )
    assert statuses(doc, "h1") == [("Up", "Alert"), ("Alert", "Connecting"), ("Connecting", "Up")]
    assert doc["final"]["hosts"]["h1"] == {"status": "Up", "power": "On"}


def test_isolated_host_fences_itself_before_anyone_declares_it_down() -> None:
    doc = simulate(scenario([{"at": 100, "kind": "host_isolation", "target": "h2"}]))
    fences = sorted(
        events(doc, "self_fence", "h2") + events(doc, "watchdog_reset", "h2"),
        key=lambda e: e["t"],
    )
    assert fences, "an isolated host cannot write its heartbeat and must reset itself"
    # its watchdog, not petted since before the isolation, comes first
    assert fences[0]["kind"] == "watchdog_reset"
    assert fences[0]["t"] <= 100 + WATCHDOG + MARGIN
    down = [e for e in events(doc, "host_status", "h2") if e["to"] == "Down"]
    assert len(down) == 1
    assert down[0]["t"] > fences[0]["t"]
    assert doc["invariants"]["down_with_running_vms"] == 0
    assert doc["final"]["hosts"]["h2"] == {"status": "Down", "power": "On"}  # reset, still cut off
    # Its VM was gone with the reset; fenced by proof, it runs elsewhere.
    assert doc["final"]["vms"]["vm2"]["state"] == "Running"
    assert doc["final"]["vms"]["vm2"]["host"] != "h2"
    assert doc["invariants"]["fenced_alive_host"] == 0
    assert doc["invariants"]["double_run"] == 0


def test_ms_crash_and_restart_lose_memory_not_state() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 500, "kind": "ms_crash"},
                {"at": 520, "kind": "host_crash", "target": "h2"},
                {"at": 700, "kind": "ms_restart"},
            ]
        )
    )
    grace = events(doc, "grace")
    assert len(grace) == 1
    assert grace[0]["t"] == 700.0
    assert grace[0]["hosts"] == 3
    # Every owned host is Disconnected at restart; live ones reconnect within an interval.
    for host in ("h1", "h3"):
        steps = statuses(doc, host)
        assert steps[:3] == [
            ("Up", "Disconnected"),
            ("Disconnected", "Connecting"),
            ("Connecting", "Up"),
        ]
        assert events(doc, "host_status", host)[2]["t"] <= 760
    # The host that died while the server was down is examined after its doubled grace.
    assert grace[0]["grace"] == 2 * TIMEOUT
    assert grace[0]["host_ids"] == ["h1", "h2", "h3"]
    first = events(doc, "behind_on_ping", "h2")[0]
    assert first["t"] == pytest.approx(700 + 2 * TIMEOUT + 1.5, abs=0.01)
    assert first["detector"] == "grace"
    assert statuses(doc, "h2")[0] == ("Up", "Disconnected")
    assert doc["final"]["hosts"]["h2"]["status"] == "Down"


def test_nothing_happens_while_the_ms_is_down() -> None:
    doc = simulate(scenario([{"at": 500, "kind": "ms_crash"}], until=3000))
    assert [e for e in doc["events"] if e["t"] > 500] == []
    assert doc["final"]["hosts"]["h1"]["status"] == "Up"  # the row survives as it was


def test_ms_isolation_makes_every_host_behind_and_heal_reconnects() -> None:
    doc = simulate(
        scenario(
            [{"at": 300, "kind": "ms_isolation"}, {"at": 500, "kind": "ms_heal"}],
            hosts=4,
        )
    )
    behind = {e["host"] for e in events(doc, "behind_on_ping")}
    assert behind == {"h1", "h2", "h3", "h4"}
    assert all(h["status"] == "Up" for h in doc["final"]["hosts"].values())


def test_direct_agent_hosts_are_pinged_by_ping_tasks() -> None:
    doc = simulate(
        scenario([{"at": 300, "kind": "host_crash", "target": "h1"}], hypervisor="XenServer")
    )
    first = events(doc, "behind_on_ping", "h1")[0]
    assert TIMEOUT < first["since_last_ping"] <= TIMEOUT * 1.02
    assert events(doc, "behind_on_ping", "h2") == []
    assert doc["final"]["hosts"]["h1"]["status"] == "Alert"


def test_direct_agent_host_reloaded_after_recovery() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h1"},
                {"at": 2500, "kind": "host_recover", "target": "h1"},
            ],
            hypervisor="XenServer",
        )
    )
    assert doc["final"]["hosts"]["h1"]["status"] == "Up"


def test_same_seed_same_bytes_different_seed_different_phases() -> None:
    spec = scenario([{"at": 300, "kind": "host_crash", "target": "h2"}], hosts=10, seed=4)
    one, two = to_json(simulate(spec)), to_json(simulate(spec))
    assert one == two
    other = to_json(simulate({**spec, "run": {"until": 3600, "seed": 5}}))
    assert other != one
    json.loads(one)


def test_contract_shape() -> None:
    doc = simulate(scenario([{"at": 300, "kind": "host_crash", "target": "h2"}]))
    assert {"events", "final", "invariants"} <= set(doc)
    for event in doc["events"]:
        assert isinstance(event["t"], float)
        assert isinstance(event["kind"], str)
    status = events(doc, "host_status")[0]
    assert {"host", "from", "to", "event"} <= set(status)
    investigation = events(doc, "investigation")[0]
    assert {"host", "result", "findings"} <= set(investigation)
    assert {"source", "verdict", "reason"} <= set(investigation["findings"][0])
    assert set(doc["invariants"]) == {
        "double_run",
        "fenced_alive_host",
        "down_with_running_vms",
        "lost_work",
        "unrecovered_ha_vm",
    }


def test_rack_failure_example_detects_every_dead_host_and_only_them() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = simulate(root / "examples" / "scenarios" / "rack-failure.toml")
    dead = {h for h, v in doc["final"]["hosts"].items() if v["power"] == "Off"}
    assert len(dead) == 40
    assert len(doc["final"]["hosts"]) == 200
    examined = {e["host"] for e in events(doc, "behind_on_ping")}
    assert examined == dead
    for host in dead:
        first = events(doc, "behind_on_ping", host)[0]
        assert first["since_last_ping"] <= TIMEOUT * 1.02
        assert doc["final"]["hosts"][host]["status"] == "Down"
    # A whole cluster died: hosts of other clusters on the shared pool judged it.
    assert {s["host"] for s in doc["ha_scheduled"]} == dead
    assert doc["invariants"]["down_with_running_vms"] == 0


# -- storage heartbeat faults -----------------------------------------------------


def test_storage_outage_shorter_than_the_retry_budget_fences_nobody() -> None:
    # CloudStack's script writer (no watchdog) rides out its whole retry budget.
    doc = simulate(
        scenario(
            [
                {"at": 1000, "kind": "storage_outage", "target": "nfs1"},
                {"at": 1000 + BUDGET - 10, "kind": "storage_heal", "target": "nfs1"},
            ],
            watchdog=False,
        )
    )
    assert events(doc, "self_fence") == []
    assert events(doc, "host_status") == []
    assert events(doc, "investigation") == []
    assert all(v["state"] == "Running" for v in doc["final"]["vms"].values())


def test_storage_outage_longer_than_the_budget_resets_every_host_on_the_pool() -> None:
    # CloudStack's known hazard (spec §10.1): one NFS outage reboots the whole cluster.
    # cloudha's isolation-aware writers do not (tests/simulation/test_isolation_sim.py);
    # with cloudha.isolation.aware off they behave as CloudStack's.
    doc = simulate(
        scenario(
            [
                {"at": 1000, "kind": "storage_outage", "target": "nfs1"},
                {"at": 2000, "kind": "storage_heal", "target": "nfs1"},
            ],
            watchdog=False,
            settings={"cloudha.isolation.aware": False},
        )
    )
    assert {e["host"] for e in events(doc, "self_fence")} == {"h1", "h2", "h3"}
    for host in ("h1", "h2", "h3"):
        first = events(doc, "self_fence", host)[0]
        assert 1000 + BUDGET <= first["t"] <= 1000 + 60 + BUDGET
    assert doc["invariants"]["down_with_running_vms"] == 0
    assert doc["invariants"]["double_run"] == 0


def test_agent_stop_on_a_live_host_never_leads_to_a_second_copy() -> None:
    # An agent nobody restarts (no escalation ladder): the host stays in Alert for good.
    doc = simulate(
        scenario(
            [{"at": 200, "kind": "agent_stop", "target": "h2"}], until=7200, settings=NO_LADDER
        )
    )
    assert [to for _, to in statuses(doc, "h2")] == ["Alert"]
    rechecks = [e for e in events(doc, "investigation", "h2") if e["trigger"] == "AlertRecheck"]
    assert len(rechecks) > 100
    assert {e["result"] for e in rechecks} == {"Disconnected"}
    assert doc["ha_scheduled"] == []
    assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["down_with_running_vms"] == 0


def test_heartbeat_stop_alone_changes_nothing_while_the_agent_pings() -> None:
    doc = simulate(scenario([{"at": 200, "kind": "heartbeat_stop", "target": "h2"}]))
    assert events(doc, "investigation") == []
    assert doc["final"]["hosts"]["h2"]["status"] == "Up"


def test_heartbeat_restarts_after_heartbeat_start() -> None:
    doc = simulate(
        scenario(
            [
                {"at": 200, "kind": "agent_stop", "target": "h2"},
                {"at": 210, "kind": "heartbeat_stop", "target": "h2"},
                {"at": 400, "kind": "heartbeat_start", "target": "h2"},
            ]
        )
    )
    assert doc["ha_scheduled"] == []
    assert doc["invariants"]["down_with_running_vms"] == 0


def test_dead_writer_on_a_live_host_fools_the_heartbeat_unless_the_hypervisor_is_asked() -> None:
    faults = [
        {"at": 200, "kind": "agent_stop", "target": "h2"},
        {"at": 200, "kind": "heartbeat_stop", "target": "h2"},
    ]
    # Without a watchdog the stale heartbeat proves nothing: never Down, in any order
    # (the agent stays dead: no escalation ladder restarts it).
    for settings in (
        NO_LADDER,
        {**NO_LADDER, "ha.investigators.order": "LibvirtInvestigator,KVMInvestigator"},
    ):
        doc = simulate(scenario(faults, settings=settings, watchdog=False))
        assert doc["final"]["hosts"]["h2"]["status"] == "Alert"
        assert doc["final"]["vms"]["vm2"] == {"state": "Running", "host": "h2"}
        assert doc["invariants"]["down_with_running_vms"] == 0
        assert doc["invariants"]["double_run"] == 0
