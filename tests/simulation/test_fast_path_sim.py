"""Proof of death in seconds: the BMC as a witness and fence on suspicion, in the simulator.

The recovery-time targets of the fast path (default settings, a BMC on every
host, h2 fails at 100 s): the first HA VM runs within ``ping.timeout`` x 1.02
+ 10 s of a crash, and + 30 s of a hang. The paths that must never fence (an
agent stop, a management partition while the heartbeat is fresh) do not.
"""

from __future__ import annotations

from typing import Any

import pytest

from cloudha import Settings
from cloudha.testing import simulate

from .support import CLEAN, events, first_restart

FAULT_AT = 100.0
PING_TIMEOUT = Settings().behind_on_ping_timeout  # 2.5 x 60 s
CRASH_TARGET = PING_TIMEOUT * 1.02 + 10
HANG_TARGET = PING_TIMEOUT * 1.02 + 30


def cluster(
    faults: list[dict[str, Any]],
    *,
    oobm: str = "ipmi",
    settings: dict[str, Any] | None = None,
    until: float = 1500,
    seed: int = 1,
) -> dict[str, Any]:
    return {
        "settings": settings or {},
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": oobm} for i in (1, 2, 3)
        ],
        "vms": [
            {"id": "vm2a", "host": "h2", "ha": True},
            {"id": "vm2b", "host": "h2", "ha": True},
            {"id": "vm1", "host": "h1", "ha": True},
        ],
        "faults": faults,
        "run": {"until": until, "seed": seed},
    }


@pytest.mark.parametrize("oobm", ["ipmi", "redfish"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_crash_is_proved_by_the_bmc_reading_the_power_off(oobm: str, seed: int) -> None:
    doc = simulate(
        cluster([{"at": FAULT_AT, "kind": "host_crash", "target": "h2"}], oobm=oobm, seed=seed)
    )
    assert first_restart(doc) - FAULT_AT <= CRASH_TARGET
    (investigation,) = [e for e in events(doc, "investigation", host="h2") if e["result"] == "Down"]
    assert investigation["decided_by"] == "BMCInvestigator"
    bmc = [f for f in investigation["findings"] if f["source"] == "BMCInvestigator"]
    assert bmc[0]["verdict"] == "DEAD"
    assert bmc[0]["evidence"]["power"] == "Off"
    assert events(doc, "suspicion", host="h2") == []  # proof, no suspicion needed
    assert doc["final"]["vms"]["vm2a"]["state"] == "Running"
    assert doc["invariants"] == CLEAN


@pytest.mark.parametrize("oobm", ["ipmi", "redfish"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_hang_is_fenced_on_suspicion_and_its_vms_restart(oobm: str, seed: int) -> None:
    doc = simulate(
        cluster(
            [
                {"at": FAULT_AT, "kind": "host_hang", "target": "h2"},
                {"at": 1200, "kind": "host_recover", "target": "h2"},
            ],
            oobm=oobm,
            seed=seed,
        )
    )
    assert first_restart(doc) - FAULT_AT <= HANG_TARGET
    fenced = [e for e in events(doc, "suspicion", host="h2") if e["qualifies"]]
    assert [e["outcome"] for e in fenced] == ["FENCED"]
    witnesses = {w["witness"]: w for w in fenced[0]["witnesses"]}
    assert set(witnesses) == {"agent", "ping h1", "ping h3", "heartbeat nfs1", "fence path"}
    assert all(w["for_fence"] for w in witnesses.values())
    # Fenced before its watchdog could reset it, and Down only after the fence.
    assert events(doc, "watchdog_reset", host="h2") == []
    (down,) = events(doc, "host_status", host="h2", to="Down")
    assert down["t"] >= fenced[0]["t"]
    assert doc["invariants"] == CLEAN


def test_without_the_setting_a_hang_waits_for_the_slow_path() -> None:
    faults = [
        {"at": FAULT_AT, "kind": "host_hang", "target": "h2"},
        {"at": 1200, "kind": "host_recover", "target": "h2"},
    ]
    doc = simulate(cluster(faults, settings={"cloudha.fence.on.suspicion": False}))
    assert events(doc, "suspicion") == []
    assert len(events(doc, "watchdog_reset", host="h2")) == 1
    assert doc["invariants"] == CLEAN


def test_an_isolated_host_is_fenced_and_its_vms_run_once() -> None:
    # Cut off from every network, storage included, it keeps running its VMs
    # (no reboot on heartbeat timeout, no watchdog): only a fence makes a restart safe.
    doc = simulate(
        {
            **cluster(
                [
                    {"at": FAULT_AT, "kind": "host_isolation", "target": "h2"},
                    {"at": 1200, "kind": "host_heal", "target": "h2"},
                ],
                settings={"reboot.host.and.alert.management.on.heartbeat.timeout": False},
            ),
            "hosts": [
                {
                    "id": f"h{i}",
                    "cluster": "c1",
                    "pools": ["nfs1"],
                    "oobm": "ipmi",
                    "watchdog": False,
                }
                for i in (1, 2, 3)
            ],
        }
    )
    assert first_restart(doc) - FAULT_AT <= HANG_TARGET
    assert [e["outcome"] for e in events(doc, "suspicion", host="h2") if e["qualifies"]] == [
        "FENCED"
    ]
    assert doc["invariants"] == CLEAN


@pytest.mark.parametrize(
    "faults",
    [
        # the agent process dies; the host, its VMs and its heartbeat run on
        [{"at": FAULT_AT, "kind": "agent_stop", "target": "h2"}],
        # and its heartbeat writer too: its neighbours still reach it
        [
            {"at": FAULT_AT, "kind": "agent_stop", "target": "h2"},
            {"at": FAULT_AT, "kind": "heartbeat_stop", "target": "h2"},
        ],
        # the management server loses the host; its heartbeat stays fresh
        [{"at": FAULT_AT, "kind": "mgmt_partition", "target": "h2"}],
    ],
    ids=["agent_stop", "agent_and_heartbeat_stop", "mgmt_partition"],
)
def test_a_live_host_is_never_fenced_by_the_fast_path(faults: list[dict[str, Any]]) -> None:
    doc = simulate(cluster(faults))
    considered = events(doc, "suspicion", host="h2")
    assert considered  # it was in Alert and asked about
    assert not any(e["qualifies"] for e in considered)
    assert events(doc, "fence", host="h2") == []
    assert events(doc, "host_status", host="h2", to="Down") == []
    if not events(doc, "watchdog_reset", host="h2"):  # a stopped writer lets its watchdog fire
        assert {doc["final"]["vms"][vm]["host"] for vm in ("vm2a", "vm2b")} == {"h2"}
    assert doc["invariants"] == CLEAN


def test_a_silent_bmc_leaves_a_hung_host_to_the_slow_path() -> None:
    doc = simulate(
        cluster(
            [
                {"at": FAULT_AT, "kind": "host_hang", "target": "h2"},
                {"at": FAULT_AT, "kind": "bmc_down", "target": "h2"},
                {"at": 1200, "kind": "host_recover", "target": "h2"},
            ]
        )
    )
    considered = events(doc, "suspicion", host="h2")
    assert considered
    assert not any(e["qualifies"] for e in considered)
    assert any("fence path of h2 is not ready" in e["reason"] for e in considered)
    assert len(events(doc, "watchdog_reset", host="h2")) == 1
    assert doc["invariants"] == CLEAN
