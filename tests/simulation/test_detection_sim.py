"""Detection on the whole system: the doubled grace after a restart, jitter, phi accrual."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudha import Settings
from cloudha.heartbeat import HeartbeatTiming
from cloudha.testing import simulate

from .support import CLEAN, events

TIMEOUT = Settings().behind_on_ping_timeout  # 150 s
GRACE = 2 * TIMEOUT


def scenario(
    faults: list[dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    until: float = 3600,
    seed: int = 1,
    oobm: str = "none",
) -> dict[str, Any]:
    return {
        "settings": settings or {},
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": oobm} for i in range(1, 5)
        ],
        "vms": [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in range(1, 5)],
        "faults": faults,
        "run": {"until": until, "seed": seed},
    }


def verdicts(doc: dict[str, Any], start: float, end: float) -> list[dict[str, Any]]:
    """Investigations, and status changes to Alert or Down, in [start, end)."""
    return [
        e
        for e in doc["events"]
        if start <= e["t"] < end
        and (
            e["kind"] == "investigation"
            or (e["kind"] == "host_status" and e.get("to") in ("Alert", "Down"))
        )
    ]


def assert_recovered(doc: dict[str, Any], host: str, vm: str) -> None:
    assert doc["invariants"] == CLEAN
    assert doc["final"]["hosts"][host]["status"] == "Down"
    assert doc["final"]["vms"][vm]["state"] == "Running"
    assert doc["final"]["vms"][vm]["host"] != host


def test_after_a_monitor_restart_there_are_no_verdicts_during_the_doubled_grace() -> None:
    restart = 700.0
    doc = simulate(
        scenario(
            [
                {"at": 500, "kind": "ms_crash"},
                {"at": 520, "kind": "host_crash", "target": "h2"},
                {"at": restart, "kind": "ms_restart"},
            ]
        )
    )
    (grace,) = events(doc, "grace")
    assert grace["t"] == restart
    assert grace["grace"] == GRACE
    assert grace["host_ids"] == ["h1", "h2", "h3", "h4"]
    # Every host started UNKNOWN (Disconnected); the live ones' agents came back.
    for host in ("h1", "h3", "h4"):
        assert events(doc, "host_status", host=host, to="Up")[0]["t"] < restart + 60
    assert verdicts(doc, restart, restart + GRACE) == []
    # Then the dead host is judged, at the end of its grace, and its VM recovered.
    first = events(doc, "behind_on_ping", host="h2")[0]
    assert restart + GRACE < first["t"] <= restart + GRACE + 1.5 + 1e-9
    assert first["detector"] == "grace"
    assert events(doc, "investigation", host="h2")[0]["t"] >= restart + GRACE
    assert_recovered(doc, "h2", "vm2")
    assert {e["host"] for e in verdicts(doc, 0, 3600)} == {"h2"}


def test_a_host_dead_before_the_crash_waits_out_its_grace_from_when_it_was_lost() -> None:
    # h2 is in Alert (inconclusive) when the server dies; the grace runs from then.
    doc = simulate(
        scenario(
            [
                {"at": 100, "kind": "host_crash", "target": "h2"},
                {"at": 262, "kind": "ms_crash"},
                {"at": 300, "kind": "ms_restart"},
            ]
        )
    )
    (recovery,) = events(doc, "recovery")
    lost = next(e["t"] for e in events(doc, "host_status", host="h2") if e["to"] != "Up")
    assert recovery["grace"]["h2"] == round(lost + GRACE - 300, 3)
    assert recovery["hosts"] == ["h2"]
    assert 0 < recovery["grace"]["h2"] < GRACE
    assert verdicts(doc, 300, lost + GRACE) == []
    assert verdicts(doc, lost + GRACE, 3600)
    assert_recovered(doc, "h2", "vm2")


def test_a_server_restarting_in_a_loop_cannot_hold_a_dead_host_for_ever() -> None:
    faults: list[dict[str, Any]] = [{"at": 50, "kind": "host_crash", "target": "h2"}]
    for k in range(12):
        faults.append({"at": 100 + 200 * k, "kind": "ms_crash"})
        faults.append({"at": 110 + 200 * k, "kind": "ms_restart"})
    # With BMCs the crash is proved (power Off) at the first examination after a grace,
    # and the grace is anchored on when the host was lost, so the loop cannot hold it.
    doc = simulate(scenario(faults, until=4000, oobm="ipmi"))
    assert_recovered(doc, "h2", "vm2")
    assert events(doc, "host_status", host="h2", to="Down")[0]["t"] < 110 + GRACE + 200
    # Without: a stale heartbeat proves death only once no process of the server can have
    # heard from the host within the stale bound (docs/heartbeat.md, "Isolation"), and every
    # process counts each host as heard from at its start. So the loop holds the verdict
    # until it stops; then the host is Down within that bound.
    doc = simulate(scenario(faults, until=4000))
    assert_recovered(doc, "h2", "vm2")
    last_start = 110 + 200 * 11
    bound = HeartbeatTiming().stale_after(1)
    down = events(doc, "host_status", host="h2", to="Down")[0]["t"]
    assert last_start + bound < down < last_start + bound + 60


def test_jitter_spreads_the_end_of_the_grace_and_stays_deterministic() -> None:
    faults = [
        {"at": 500, "kind": "ms_crash"},
        {"at": 520, "kind": "host_crash", "target": "h2"},
        {"at": 520, "kind": "host_crash", "target": "h3"},
        {"at": 700, "kind": "ms_restart"},
    ]
    settings = {"cloudha.ping.jitter": 0.1}
    doc = simulate(scenario(faults, settings=settings))
    again = simulate(scenario(faults, settings=settings))
    assert json.dumps(doc, sort_keys=True) == json.dumps(again, sort_keys=True)
    firsts = {h: events(doc, "behind_on_ping", host=h)[0] for h in ("h2", "h3")}
    times = {h: e["t"] for h, e in firsts.items()}
    assert times["h2"] != times["h3"]
    for event in firsts.values():
        # (60 + epsilon) x 2.5, epsilon in [0, 6 s], doubled
        assert 150.0 <= event["timeout"] <= 165.0
        assert 700 + 2 * event["timeout"] < event["t"] <= 700 + 2 * event["timeout"] + 1.6
    assert verdicts(doc, 700, 700 + GRACE) == []
    assert_recovered(doc, "h2", "vm2")
    assert_recovered(doc, "h3", "vm3")


def test_phi_detects_a_crashed_host_before_the_fixed_timeout_and_recovers_it() -> None:
    crash = 1800.0
    faults = [{"at": crash, "kind": "host_crash", "target": "h2"}]
    fixed = simulate(scenario(faults))
    adaptive = simulate(scenario(faults, settings={"cloudha.phi.enabled": True}))
    late = events(fixed, "behind_on_ping", host="h2")[0]
    early = events(adaptive, "behind_on_ping", host="h2")[0]
    assert late["detector"] == "timeout"
    assert "phi" not in late
    assert early["detector"] == "phi"
    assert early["phi"] >= early["phi_threshold"] == 8.0
    assert early["since_last_ping"] < late["since_last_ping"] - 20
    assert early["since_last_ping"] > 60.0  # never before the next ping was due
    # Phi only triggered the investigation: the verdict and the recovery are the same.
    assert_recovered(adaptive, "h2", "vm2")
    assert [e["host"] for e in events(adaptive, "behind_on_ping")] == ["h2"]


def test_with_phi_on_live_hosts_are_never_examined() -> None:
    doc = simulate(scenario([], settings={"cloudha.phi.enabled": True}, until=7200))
    assert events(doc, "behind_on_ping") == []
    assert events(doc, "investigation") == []
    assert doc["invariants"] == CLEAN


def test_the_monitor_restart_example_does_what_its_comment_says() -> None:
    root = Path(__file__).resolve().parents[2]
    doc = simulate(root / "examples" / "scenarios" / "monitor-restart.toml")
    (grace,) = events(doc, "grace")
    assert (grace["t"], grace["grace"]) == (700.0, GRACE)
    assert verdicts(doc, 700, 1000) == []
    first = events(doc, "behind_on_ping", host="h2")[0]
    assert (first["t"], first["detector"]) == (1001.5, "grace")
    # the first examination after the stale bound since the new server's start (700 + 465 s)
    assert events(doc, "host_status", host="h2", to="Down")[0]["t"] == 1181.5
    assert_recovered(doc, "h2", "vm2")
