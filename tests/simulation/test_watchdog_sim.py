"""Issue 12: a stale heartbeat is proof only when self-fencing is guaranteed (a watchdog)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudha.errors import ScenarioError
from cloudha.testing import Simulation, load_scenario, parse_scenario, simulate
from tests.simulation.support import CLEAN, events

WATCHDOG, MARGIN = 300.0, 30.0
STALE = 465.0
REBOOT_OFF = {"reboot.host.and.alert.management.on.heartbeat.timeout": False}
FAST = {
    # 10 s pings and heartbeat rounds: stale after 10 + 5 + 5 + 5 = 25 s
    "ping.interval": 10,
    "kvm.heartbeat.update.frequency": 10000,
    "kvm.heartbeat.update.max.tries": 1,
    "kvm.heartbeat.update.retry.sleep": 1000,
    "heartbeat.update.timeout": 5000,
    "cloudha.watchdog.timeout": 12,
    "cloudha.watchdog.reset.margin": 2,
}
HANG = [
    {"at": 100, "kind": "host_hang", "target": "h1"},
    {"at": 1500, "kind": "host_recover", "target": "h1"},
]
LONG_HANG = [  # long enough for the Alert rechecks (after alert.wait) to read it stale
    {"at": 100, "kind": "host_hang", "target": "h1"},
    {"at": 3000, "kind": "host_recover", "target": "h1"},
]
ISOLATION = [
    {"at": 100, "kind": "host_isolation", "target": "h1"},
    {"at": 3000, "kind": "host_heal", "target": "h1"},
]
DEAD_WRITER = [
    {"at": 100, "kind": "agent_stop", "target": "h1"},
    {"at": 100, "kind": "heartbeat_stop", "target": "h1"},
]


def minimal(
    faults: list[dict[str, Any]],
    *,
    watchdog: bool | None = None,
    settings: dict[str, Any] | None = None,
    until: float = 3600,
) -> dict[str, Any]:
    """The issue's minimal case: 3 KVM hosts on one pool, no BMC, vm1 (HA) on h1."""
    extra = {} if watchdog is None else {"watchdog": watchdog}
    return {
        "settings": settings or {},
        "hosts": [{"id": f"h{i}", "cluster": "c1", "pools": ["p1"], **extra} for i in (1, 2, 3)],
        "vms": [{"id": "vm1", "host": "h1", "ha": True}],
        "faults": faults,
        "run": {"until": until, "seed": 1},
    }


def downs(doc: dict[str, Any], host: str) -> list[dict[str, Any]]:
    return events(doc, "host_status", host=host, to="Down")


def kvm_findings(doc: dict[str, Any], host: str) -> list[dict[str, Any]]:
    return [
        f
        for e in events(doc, "investigation", host=host)
        for f in e["findings"]
        if f["source"] == "KVMInvestigator"
    ]


def neighbours_said(doc: dict[str, Any], host: str) -> list[str]:
    """What each neighbour answered about ``host``'s heartbeat, in every investigation."""
    return [
        said
        for f in kvm_findings(doc, host)
        for said in f.get("evidence", {}).get("neighbours", {}).values()
    ]


# -- hang, then resume -------------------------------------------------------------


def test_hang_with_a_watchdog_resets_the_host_and_never_double_runs() -> None:
    doc = simulate(minimal(HANG))
    (reset,) = events(doc, "watchdog_reset", host="h1")
    assert 100 + WATCHDOG + MARGIN - 60 <= reset["t"] <= 100 + WATCHDOG + MARGIN
    assert reset["t"] < 100 + STALE - 60  # before its heartbeat could be stale
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["down_with_running_vms"] == 0
    assert doc["invariants"]["fenced_alive_host"] == 0
    assert downs(doc, "h1") == []  # rebooted and back before anyone proved it dead


def test_hang_with_a_watchdog_and_fast_timing_resets_then_restarts_elsewhere() -> None:
    doc = simulate(minimal(HANG, settings=FAST))
    (reset,) = events(doc, "watchdog_reset", host="h1")
    (down,) = downs(doc, "h1")
    assert reset["t"] < down["t"]  # reset first, then proven dead
    assert any(f["verdict"] == "DEAD" for f in kvm_findings(doc, "h1"))
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"
    assert doc["final"]["vms"]["vm1"]["host"] != "h1"
    assert doc["invariants"] == CLEAN


@pytest.mark.parametrize("settings", [{}, REBOOT_OFF], ids=["reboot-on", "reboot-off"])
def test_hang_without_a_watchdog_and_without_a_bmc_never_double_runs(
    settings: dict[str, Any],
) -> None:
    doc = simulate(minimal(LONG_HANG, watchdog=False, settings=settings, until=4000))
    assert events(doc, "watchdog_reset") == []
    assert downs(doc, "h1") == []  # not Down by its heartbeat alone
    stale = [said for said in neighbours_said(doc, "h1") if "stale is no proof" in said]
    assert stale, "the heartbeat went stale and was judged no proof"
    assert stale[0].startswith("UNKNOWN: heartbeat on p1 is ")
    assert "h1 has no watchdog" in stale[0]
    assert all(f["verdict"] != "DEAD" for f in kvm_findings(doc, "h1"))
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h1"}  # it resumed
    assert doc["invariants"] == CLEAN


# -- isolation with reboot off --------------------------------------------------------


def test_isolation_with_reboot_off_and_no_watchdog_never_double_runs() -> None:
    doc = simulate(minimal(ISOLATION, watchdog=False, settings=REBOOT_OFF, until=4000))
    assert events(doc, "self_fence") == []
    assert events(doc, "watchdog_reset") == []
    assert downs(doc, "h1") == []
    said = neighbours_said(doc, "h1")
    assert any("self-fencing is off: a hung or isolated host may resume" in r for r in said)
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h1"}
    assert doc["invariants"] == CLEAN


def test_isolation_with_reboot_off_and_a_watchdog_resets_then_restarts_elsewhere() -> None:
    doc = simulate(minimal(ISOLATION, settings=REBOOT_OFF, until=4000))
    resets = events(doc, "watchdog_reset", host="h1")
    assert resets
    assert resets[0]["t"] <= 100 + WATCHDOG + MARGIN
    (down,) = downs(doc, "h1")
    assert down["t"] > resets[0]["t"]
    assert doc["final"]["vms"]["vm1"]["host"] != "h1"
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["down_with_running_vms"] == 0
    assert doc["invariants"]["fenced_alive_host"] == 0


# -- a dead writer on a live host --------------------------------------------------------


def test_dead_writer_and_agent_without_a_watchdog_never_make_the_host_down() -> None:
    # The agent stays dead (no escalation ladder restarts it) and so does the writer.
    doc = simulate(
        minimal(DEAD_WRITER, watchdog=False, settings={"cloudha.escalation.enabled": False})
    )
    assert downs(doc, "h1") == []
    assert doc["final"]["hosts"]["h1"]["status"] == "Alert"
    assert doc["final"]["vms"]["vm1"] == {"state": "Running", "host": "h1"}
    said = neighbours_said(doc, "h1")
    assert any("stale is no proof" in r and "the writer is dead" in r for r in said)
    assert all(f["verdict"] != "DEAD" for f in kvm_findings(doc, "h1"))
    assert doc["invariants"] == CLEAN


def test_dead_writer_and_agent_with_a_watchdog_reset_the_host_first() -> None:
    doc = simulate(minimal(DEAD_WRITER))
    (reset,) = events(doc, "watchdog_reset", host="h1")
    assert reset["t"] <= 100 + WATCHDOG + MARGIN
    assert doc["invariants"]["down_with_running_vms"] == 0
    assert doc["invariants"]["double_run"] == 0
    assert doc["invariants"]["fenced_alive_host"] == 0


def test_dead_writer_alone_with_a_watchdog_resets_a_host_that_still_pings() -> None:
    doc = simulate(minimal([{"at": 100, "kind": "heartbeat_stop", "target": "h1"}]))
    (reset,) = events(doc, "watchdog_reset", host="h1")
    assert reset["t"] <= 100 + WATCHDOG + MARGIN
    # its writer starts again at boot: one reset only
    assert doc["invariants"]["double_run"] == 0


# -- the scenario key ----------------------------------------------------------------------


def test_watchdog_defaults_to_true_only_where_a_heartbeat_writer_runs() -> None:
    scenario = parse_scenario(
        {
            "hosts": [
                {"id": "k", "cluster": "c1", "pools": ["p1"]},
                {"id": "l", "cluster": "c1", "pools": ["p1"], "hypervisor": "LXC"},
                {"id": "nopool", "cluster": "c1"},
                {"id": "xen", "cluster": "c2", "pools": ["p2"], "hypervisor": "XenServer"},
                {"id": "script", "cluster": "c1", "pools": ["p1"], "watchdog": False},
            ]
        }
    )
    assert {h.id: h.watchdog for h in scenario.hosts} == {
        "k": True,
        "l": True,
        "nopool": False,
        "xen": False,
        "script": False,
    }


def test_the_simulated_host_rows_carry_the_watchdog() -> None:
    from cloudha.testing import Simulation

    sim = Simulation(
        parse_scenario(
            {
                "hosts": [
                    {"id": "a", "cluster": "c1", "pools": ["p1"]},
                    {"id": "b", "cluster": "c1", "pools": ["p1"], "watchdog": False},
                ]
            }
        )
    )
    assert [(h.id, h.watchdog) for h in sim.directory.list_hosts()] == [
        ("a", True),
        ("b", False),
    ]


def test_watchdog_true_on_a_host_without_a_writer_is_an_error(tmp_path: Any) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[hosts]]\nid = "h1"\ncluster = "c1"\nwatchdog = true\n', encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}, line 4: 'watchdog' is true in [[hosts]] #1")
    assert caught.value.key == "watchdog"


def test_watchdog_settings_that_cannot_guarantee_the_reset_are_an_error(tmp_path: Any) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[settings]\n"cloudha.watchdog.timeout" = 450\n'
        '[[hosts]]\nid = "h1"\ncluster = "c1"\npools = ["p1"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: cloudha.watchdog.timeout (450 s)")
    assert "(a host has a watchdog)" in message
    assert caught.value.key == "cloudha.watchdog.timeout"
    # the same settings are fine when no host has a watchdog
    path.write_text(
        '[settings]\n"cloudha.watchdog.timeout" = 450\n'
        '[[hosts]]\nid = "h1"\ncluster = "c1"\npools = ["p1"]\nwatchdog = false\n',
        encoding="utf-8",
    )
    assert load_scenario(path).hosts[0].watchdog is False


def test_a_writer_restarted_on_an_isolated_host_does_not_rearm_its_watchdog() -> None:
    # Opening the device would restart the countdown the dead writer left running,
    # while the heartbeat keeps ageing: the new writer cannot write, so it must not
    # arm; the old countdown resets the host before its heartbeat is called stale.
    doc = simulate(
        minimal(
            [
                {"at": 57, "kind": "host_isolation", "target": "h1"},
                {"at": 60, "kind": "heartbeat_stop", "target": "h1"},
                {"at": 200, "kind": "heartbeat_start", "target": "h1"},
                {"at": 1340, "kind": "host_heal", "target": "h1"},
            ],
            watchdog=True,
        )
    )
    resets = events(doc, "watchdog_reset", host="h1") + events(doc, "self_fence", host="h1")
    assert resets
    first_reset = min(e["t"] for e in resets)
    assert first_reset < 57 + WATCHDOG + MARGIN + 60  # from the last pet, at most a round before
    stale_down = [e for e in downs(doc, "h1") if e["t"] < first_reset]
    assert stale_down == []


def test_a_host_down_while_it_boots_after_its_watchdog_reset_is_not_fenced() -> None:
    # h2 hangs; its watchdog resets it (85 s); it is Down by its stale
    # heartbeat (124 s) while it still boots (until 145 s). The verdict's
    # hypervisor witness saw no domain running: vm1 is proven dead, so the
    # management server, isolated right after, does not power off the host
    # (it used to, through its BMC, while it booted). (The slow path: with
    # fence on suspicion the hung host would be fenced first.)
    settings = {
        "ping.interval": 10,
        "kvm.heartbeat.update.frequency": 10000,
        "kvm.heartbeat.update.retry.sleep": 2000,
        "heartbeat.update.timeout": 10000,
        "cloudha.watchdog.timeout": 40,
        "cloudha.watchdog.reset.margin": 10,
        "cloudha.fence.on.suspicion": False,
    }
    hosts = [
        {"id": f"h{i}", "cluster": "c1", "pools": ["p1"], "oobm": "ipmi", "watchdog": True}
        for i in (1, 2, 3)
    ]
    faults = [
        {"at": 43.6, "kind": "host_hang", "target": "h2"},
        {"at": 124.0, "kind": "ms_isolation"},
        {"at": 200.0, "kind": "ms_heal"},
    ]
    doc = simulate(
        {
            "settings": settings,
            "hosts": hosts,
            "vms": [{"id": "vm1", "host": "h2", "ha": True}],
            "faults": faults,
            # the isolated server cannot start vm1 at once: it retries after
            # restart.retry.interval (600 s)
            "run": {"until": 1400, "seed": 1},
        }
    )
    (reset,) = events(doc, "watchdog_reset", host="h2")
    (down,) = downs(doc, "h2")
    assert reset["t"] < down["t"] < reset["t"] + 60  # during the boot
    (scheduled,) = events(doc, "ha_scheduled", host="h2")
    assert scheduled["investigate"] is False
    assert events(doc, "fence", host="h2") == []
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"


def test_the_checker_counts_a_booted_host_as_alive_and_a_booting_one_not() -> None:
    hosts = [{"id": f"h{i}", "cluster": "c1", "pools": ["p1"]} for i in (1, 2)]
    sim = Simulation(parse_scenario({"hosts": hosts, "run": {"until": 100}}))
    host = sim.hosts["h1"]
    assert sim.alive_with_storage(host)
    sim.power_cut(host, "test")
    assert not sim.alive_with_storage(host)
    sim.power_on(host, "test")
    assert host.powered
    assert not sim.alive_with_storage(host)  # still booting
    sim.run()  # the boot ends 60 s later
    assert sim.alive_with_storage(host)


def test_a_heartbeat_writer_does_not_outlive_its_hosts_power_off() -> None:
    # h2's writer is retrying the dead pool when h2 crashes (130 s); h2 is
    # powered on again at once and boots until 191 s. The writer of before
    # the crash must be gone: nothing of it self-fences the booting host.
    settings = {
        "ping.interval": 10,
        "kvm.heartbeat.update.frequency": 10000,
        "kvm.heartbeat.update.retry.sleep": 2000,
        "heartbeat.update.timeout": 10000,
        "cloudha.watchdog.timeout": 40,
        "cloudha.watchdog.reset.margin": 10,
    }
    hosts = [
        {"id": f"h{i}", "cluster": "c1", "pools": ["p1"], "oobm": "ipmi", "watchdog": True}
        for i in (1, 2, 3)
    ]
    faults = [
        {"at": 100, "kind": "storage_outage", "target": "p1"},
        {"at": 130, "kind": "host_crash", "target": "h2"},
        {"at": 131, "kind": "host_recover", "target": "h2"},
        # healed: with every host's watchdog, a pool out for good would reset them all in turn
        {"at": 255, "kind": "storage_heal", "target": "p1"},
    ]
    doc = simulate(
        {
            "settings": settings,
            "hosts": hosts,
            "vms": [{"id": "vm1", "host": "h2", "ha": True}],
            "faults": faults,
            "run": {"until": 700, "seed": 1},
        }
    )
    assert not [e for e in events(doc, "self_fence", host="h2") if e["t"] < 191 + 58]
    assert doc["invariants"] == CLEAN


def test_a_watchdog_host_rejoins_only_once_its_writer_has_armed_the_watchdog() -> None:
    # h1's pool p1 is out: its watchdog resets it, and while p1 stays out its new
    # writer cannot arm (it resets the host instead). Its agent must not connect
    # meanwhile: VMs placed on a host with an unarmed watchdog could outlive a
    # hang that its stale heartbeat would then "prove" dead.
    hosts = [
        {"id": "h1", "cluster": "c1", "pools": ["p1", "p2"], "watchdog": True},
        {"id": "h2", "cluster": "c1", "pools": ["p2"], "watchdog": True},
        {"id": "h3", "cluster": "c1", "pools": ["p2"], "watchdog": True},
    ]
    doc = simulate(
        {
            # Not isolation-aware: h1's agent stays connected, which would keep it up.
            "settings": {"cloudha.isolation.aware": False},
            "hosts": hosts,
            "vms": [{"id": "vm1", "host": "h1", "ha": True}],
            "faults": [
                {"at": 100, "kind": "storage_outage", "target": "p1"},
                {"at": 1500, "kind": "storage_heal", "target": "p1"},
            ],
            "run": {"until": 4000, "seed": 1},
        }
    )
    resets = events(doc, "watchdog_reset", host="h1")
    assert resets
    connects = [
        e["t"]
        for e in events(doc, "host_status", host="h1", to="Connecting")
        if e["t"] > resets[0]["t"]
    ]
    assert connects
    assert min(connects) > 1500  # not before its writer could write p1 and arm
    assert doc["invariants"] == CLEAN
    assert doc["final"]["vms"]["vm1"]["state"] == "Running"
