"""Several management servers in the simulator: one registry and one SQL database.

The scenarios of issue 16: a server dies and a host dies during the takeover;
a server paused past its takeover timeout resumes; a quick restart keeps its
hosts; three servers share the hosts evenly at the start. Plus the scenario
format's ``[run] management_servers``, the ``ms_*`` targets and the campaign's
group scenarios.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudha.errors import ScenarioError
from cloudha.testing import campaign
from cloudha.testing.scenario import (
    DEFAULT_SERVERS,
    MAX_SERVERS,
    estimate_events,
    parse_scenario,
    parse_scenario_text,
)
from cloudha.testing.simulator import Simulation, simulate, to_json
from tests.simulation.support import CLEAN, events

GROUP_CLEAN = {**CLEAN, "stale_write": 0, "unowned_host": 0}
"""Every invariant of a group's document at 0."""

SERVERS = ["ms1", "ms2", "ms3"]
TIMEOUT = 150.0  # cloudha.ms.takeover.timeout, by default
BEAT = 5.0  # cloudha.ms.heartbeat.interval, by default


def _doc(
    faults: list[dict[str, Any]] | None = None,
    *,
    hosts: int = 9,
    until: float = 1500,
    settings: dict[str, Any] | None = None,
    servers: list[str] | None = None,
    **host: Any,
) -> dict[str, Any]:
    spec = {"pools": ["p1"], "oobm": "ipmi", **host}
    return {
        "settings": settings or {},
        "hosts": [{"id": f"h{i}", **spec} for i in range(1, hosts + 1)],
        "vms": [{"id": f"vm{i}", "host": f"h{i}", "ha": True} for i in range(1, hosts + 1)],
        "faults": faults or [],
        "run": {"until": until, "management_servers": servers or SERVERS},
    }


def _owned_at_start(doc: dict[str, Any], server: str) -> list[str]:
    """The hosts ``server`` claims at t=0 (the claims are deterministic)."""
    start = simulate({**doc, "faults": [], "run": {**doc["run"], "until": 1}})
    return sorted(h for h, v in start["final"]["hosts"].items() if v["owner"] == server)


def _owners(doc: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for host in doc["final"]["hosts"].values():
        counts[host["owner"]] = counts.get(host["owner"], 0) + 1
    return counts


# -- (d) the hosts shared evenly at the start ---------------------------------------


def test_three_servers_share_the_hosts_evenly_at_the_start() -> None:
    doc = simulate(_doc(hosts=10, until=600))
    assert doc["invariants"] == GROUP_CLEAN
    assert doc["scenario"]["management_servers"] == SERVERS
    counts = _owners(doc)
    assert sorted(counts) == SERVERS
    assert sum(counts.values()) == 10
    assert max(counts.values()) <= 4  # ceil(10 / 3): each claims up to its fair share
    assert min(counts.values()) >= 2
    for server in SERVERS:
        (registered,) = events(doc, "ms_registered", actor=server)
        assert (registered["t"], registered["epoch"]) == (0.0, 1)
        (claim,) = events(doc, "takeover", actor=server)
        assert claim["t"] == 0.0
        assert len(claim["hosts"]) == counts[server]
        assert set(claim["previous"].values()) == {None}  # nobody owned them before
    assert all(h["status"] == "Up" for h in doc["final"]["hosts"].values())
    # Each host's agent connected to its owner, and to it alone.
    for host_id, host in doc["final"]["hosts"].items():
        connects = events(doc, "host_status", host=host_id, event="AgentConnected")
        assert {e["actor"] for e in connects} == {host["owner"]}
    assert not events(doc, "connection_refused")
    assert doc["final"]["servers"] == {
        s: {"process": "Running", "state": "Up", "epoch": 1, "hosts": counts[s]} for s in SERVERS
    }


# -- (a) a server dies, and a host dies during the takeover ----------------------------


def test_a_server_dies_and_one_of_its_hosts_dies_during_the_takeover() -> None:
    base = _doc()
    victim = _owned_at_start(base, "ms2")[0]
    doc = simulate(
        {
            **base,
            "faults": [
                {"at": 300, "kind": "ms_crash", "target": "ms2"},
                {"at": 360, "kind": "host_crash", "target": victim},  # before any takeover
            ],
        }
    )
    assert doc["invariants"] == GROUP_CLEAN  # no double run, no work lost, VMs back
    (departed,) = events(doc, "ms_departed")
    assert departed["server"] == "ms2"
    assert departed["actor"] in ("ms1", "ms3")
    # Declared departed within the takeover timeout (and one heartbeat) of its last beat.
    assert 300 + TIMEOUT - BEAT <= departed["t"] <= 300 + TIMEOUT + BEAT
    taken = [e for e in events(doc, "takeover") if e["t"] > 300]
    assert {h for e in taken for h in e["hosts"]} == set(_owned_at_start(base, "ms2"))
    assert all(set(e["previous"].values()) == {"ms2"} for e in taken)
    assert all(e["t"] <= departed["t"] + 2 * BEAT for e in taken)
    # The dead host's new owner found it Down, and its HA VM runs elsewhere.
    (down,) = events(doc, "host_status", host=victim, to="Down")
    new_owner = doc["final"]["hosts"][victim]["owner"]
    assert new_owner in ("ms1", "ms3")
    assert down["actor"] == new_owner
    vm = f"vm{victim.removeprefix('h')}"
    assert doc["final"]["vms"][vm]["state"] == "Running"
    assert doc["final"]["vms"][vm]["host"] != victim
    # Every host ends owned by a live server; the dead one owns nothing.
    assert set(_owners(doc)) <= {"ms1", "ms3"}
    assert doc["final"]["servers"]["ms2"] == {
        "process": "Dead",
        "state": "Departed",
        "epoch": 1,
        "hosts": 0,
    }
    assert not [e for e in doc["events"] if e["actor"] == "ms2" and e["t"] >= 300]


# -- (b) a server paused past its takeover timeout resumes ------------------------------


def test_a_server_paused_past_its_takeover_timeout_resumes_without_acting_on_stale_hosts() -> None:
    settings = {
        "agent.lb.enabled": True,  # the group hands the resumed server its share again
        "cloudha.freshness.enabled": False,  # so its stale monitor does try to act at once
    }
    base = _doc(settings=settings)
    held = _owned_at_start(base, "ms2")
    doc = simulate(
        {
            **base,
            "faults": [
                {"at": 300, "kind": "ms_pause", "target": "ms2"},
                {"at": 600, "kind": "ms_resume", "target": "ms2"},
            ],
        }
    )
    assert doc["invariants"] == GROUP_CLEAN  # stale_write: no host write on stale ownership
    (departed,) = events(doc, "ms_departed")
    assert departed["server"] == "ms2"
    assert departed["t"] < 600
    taken = {h for e in events(doc, "takeover") if 300 < e["t"] < 600 for h in e["hosts"]}
    assert taken == set(held)  # its hosts were taken over while it slept
    # At resume its monitor's every ping was stale: each action it tried on a host it
    # had held was held by its lapsed lease (even with the freshness gate off), and its
    # heartbeat was refused.
    stale = [
        e
        for e in events(doc, "freshness", actor="ms2")
        if e.get("held") and 600 <= e["t"] <= 600 + BEAT
    ]
    assert {e["host"] for e in stale} == set(held)
    assert all("heartbeat" in e["reason"] for e in stale)
    lost = events(doc, "ownership_lost", actor="ms2")
    assert all(e["t"] == 600.0 for e in lost)
    assert any(e.get("by") == departed["actor"] and "host" not in e for e in lost)
    (again,) = [e for e in events(doc, "ms_registered", actor="ms2") if e["t"] >= 600]
    assert again["epoch"] == 2
    # No host row change by ms2 from its pause until it registered again ...
    assert not [e for e in events(doc, "host_status", actor="ms2") if 300 <= e["t"] <= again["t"]]
    # ... then it claims anew at its new epoch (the others' surplus, rebalanced).
    claims = [e for e in events(doc, "takeover", actor="ms2") if e["t"] >= again["t"]]
    assert claims
    assert all(e["epoch"] == 2 for e in claims)
    assert doc["final"]["servers"]["ms2"]["state"] == "Up"
    assert doc["final"]["servers"]["ms2"]["epoch"] == 2
    assert _owners(doc) == {"ms1": 3, "ms2": 3, "ms3": 3}


def test_a_pause_within_the_takeover_timeout_changes_no_ownership() -> None:
    base = _doc(hosts=6, until=900)
    doc = simulate(
        {
            **base,
            "faults": [
                {"at": 300, "kind": "ms_pause", "target": "ms3"},
                {"at": 300 + TIMEOUT / 2, "kind": "ms_resume", "target": "ms3"},
            ],
        }
    )
    assert doc["invariants"] == GROUP_CLEAN
    assert not events(doc, "ms_departed")
    assert not events(doc, "ownership_lost")
    assert [e["t"] for e in events(doc, "takeover")] == [0.0, 0.0, 0.0]


# -- (c) a quick restart keeps its hosts -----------------------------------------------


def test_a_restart_within_the_takeover_timeout_keeps_its_hosts() -> None:
    base = _doc(until=1200)
    held = _owned_at_start(base, "ms1")
    doc = simulate(
        {
            **base,
            "faults": [
                {"at": 300, "kind": "ms_crash"},  # no target: the first server, ms1
                {"at": 360, "kind": "ms_restart"},
            ],
        }
    )
    assert doc["invariants"] == GROUP_CLEAN
    assert not events(doc, "ms_departed")
    assert [e["target"] for e in events(doc, "fault")] == [None, None]
    (restart,) = [e for e in events(doc, "ms_registered", actor="ms1") if e["t"] > 0]
    assert (restart["t"], restart["epoch"]) == (360.0, 2)
    # Only the restarted server wrote its hosts' rows again (at its new epoch) ...
    assert not [e for e in events(doc, "takeover") if e["t"] > 0 and e["actor"] != "ms1"]
    # ... and it still owns every one of them, all Up and reconnected to it.
    final = doc["final"]["hosts"]
    assert sorted(h for h, v in final.items() if v["owner"] == "ms1") == held
    assert all(final[h]["status"] == "Up" for h in held)
    for host in held:
        connects = events(doc, "host_status", host=host, event="AgentConnected")
        assert [e["actor"] for e in connects if e["t"] > 360] == ["ms1"]


# -- the other server faults, aimed at one server --------------------------------------


def test_an_isolated_server_keeps_heartbeating_and_its_hosts_wait_for_it() -> None:
    base = _doc(hosts=6, until=1200)
    held = _owned_at_start(base, "ms2")
    doc = simulate(
        {
            **base,
            "faults": [
                {"at": 300, "kind": "ms_isolation", "target": "ms2"},
                {"at": 420, "kind": "ms_heal", "target": "ms2"},
            ],
        }
    )
    assert doc["invariants"] == GROUP_CLEAN
    assert not events(doc, "ms_departed")  # the database still hears it
    assert _owners(doc)["ms2"] == len(held)
    # Only ms2's hosts lost their agent's connection (their pings failed meanwhile).
    cut = {e["host"] for e in events(doc, "host_status") if 300 < e["t"] < 420}
    assert cut <= set(held)
    assert not events(doc, "host_status", to="Down")


def test_direct_hosts_follow_their_new_owner() -> None:
    base = _doc(hosts=4, until=1200, hypervisor="XenServer", servers=["ms1", "ms2"])
    held = _owned_at_start(base, "ms1")
    doc = simulate({**base, "faults": [{"at": 200, "kind": "ms_crash", "target": "ms1"}]})
    assert doc["invariants"] == GROUP_CLEAN
    final = doc["final"]["hosts"]
    assert all(final[h] == {**final[h], "owner": "ms2", "status": "Up"} for h in held)
    for host in held:
        ups = [e for e in events(doc, "host_status", host=host, to="Up") if e["t"] > 200]
        assert ups
        assert {e["actor"] for e in ups} == {"ms2"}


def test_a_group_run_is_deterministic() -> None:
    doc = _doc(
        hosts=6,
        until=900,
        faults=[
            {"at": 100, "kind": "ms_pause", "target": "ms3"},
            {"at": 400, "kind": "ms_resume", "target": "ms3"},
            {"at": 200, "kind": "host_crash", "target": "h2"},
        ],
    )
    assert to_json(simulate(doc)) == to_json(simulate(doc))


# -- one server: as before -------------------------------------------------------------


def test_one_server_documents_have_no_group_fields() -> None:
    doc = _doc(hosts=2, until=300, servers=["ms1"])
    plain = {**doc, "run": {"until": 300}}
    assert parse_scenario(plain).management_servers == DEFAULT_SERVERS
    a, b = simulate(doc), simulate(plain)
    assert to_json(a) == to_json(b)
    assert "management_servers" not in a["scenario"]
    assert "servers" not in a["final"]
    assert all("owner" not in h for h in a["final"]["hosts"].values())
    assert a["invariants"] == CLEAN
    assert not events(a, "ms_registered")  # alone: no registry


def test_a_lone_server_fault_may_name_it() -> None:
    doc = _doc(hosts=2, until=400, servers=["ms1"])
    named = simulate({**doc, "faults": [{"at": 100, "kind": "ms_pause", "target": "ms1"}]})
    plain = simulate({**doc, "faults": [{"at": 100, "kind": "ms_pause"}]})
    strip = [{k: v for k, v in e.items() if k != "target"} for e in named["events"]]
    assert strip == [{k: v for k, v in e.items() if k != "target"} for e in plain["events"]]


# -- the scenario format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("servers", "words"),
    [
        ([], "must be a non-empty list"),
        ("ms1", "must be a non-empty list"),
        (["ms1", "ms1"], "names server 'ms1' twice"),
        (["ms1", 2], "non-empty strings"),
        (["ms1", " "], "non-empty strings"),
        ([f"ms{i}" for i in range(MAX_SERVERS + 1)], f"at most {MAX_SERVERS}"),
    ],
)
def test_bad_management_servers_are_refused(servers: Any, words: str) -> None:
    text = (
        '[[hosts]]\nid = "h1"\n\n[run]\nuntil = 60\nmanagement_servers = '
        + json.dumps(servers)
        + "\n"
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario_text(text, source="s.toml")
    assert words in str(caught.value)
    assert caught.value.key == "management_servers"
    assert str(caught.value).startswith("s.toml, line 6: ")


def test_a_server_fault_naming_an_unknown_server_is_refused() -> None:
    doc = _doc(hosts=1, until=60, faults=[{"at": 10, "kind": "ms_crash", "target": "ms9"}])
    with pytest.raises(ScenarioError, match="'ms9' is not one of \\[run\\] management_servers"):
        parse_scenario(doc)
    doc["faults"] = [{"at": 10, "kind": "orchestrator_outage", "target": "ms1"}]
    with pytest.raises(ScenarioError, match="takes no 'target'"):
        parse_scenario(doc)


def test_the_event_estimate_counts_every_server() -> None:
    one = parse_scenario(_doc(hosts=1, until=3600, servers=["ms1"]))
    three = parse_scenario(_doc(hosts=1, until=3600))
    assert estimate_events(three).total > estimate_events(one).total + 2 * 3600 / BEAT
    chatty = _doc(hosts=1, until=86400, settings={"cloudha.ms.heartbeat.interval": 0.05})
    with pytest.raises(ScenarioError, match="management server heartbeats"):
        parse_scenario(chatty)


# -- the campaign ----------------------------------------------------------------------


def test_the_campaign_draws_group_scenarios_from_a_stream_of_their_own() -> None:
    cases = [campaign.generate(campaign.case_seed(7, i)) for i in range(60)]
    groups = [c for c in cases if c.servers]
    assert 8 <= len(groups) <= 30  # about 30%
    for case in groups:
        assert case.servers in (("ms1", "ms2"), ("ms1", "ms2", "ms3"))
        doc = case.to_doc()
        assert doc["run"]["management_servers"] == list(case.servers)
        scenario = parse_scenario(doc)
        assert scenario.management_servers == case.servers
        aimed = [i for i in case.incidents if i.kind.startswith("ms_")]
        assert aimed
        assert all(i.target in case.servers for i in aimed)
        # A pause past the takeover timeout, in every group scenario.
        assert any(i.kind == "ms_pause" and i.heal_at - i.at > TIMEOUT for i in aimed)
    for case in cases:
        if not case.servers:
            assert "management_servers" not in case.to_doc()["run"]
            assert all(i.target is None for i in case.incidents if i.kind.startswith("ms_"))
    assert campaign.generate(groups[0].seed) == groups[0]  # deterministic


def test_group_campaign_cases_hold_every_invariant() -> None:
    seeds = [campaign.case_seed(7, i) for i in range(40)]
    groups = [s for s in seeds if campaign.generate(s).servers][:4]
    for seed in groups:
        invariants = campaign.simulate_invariants(campaign.generate(seed).to_doc())
        assert invariants.keys() == GROUP_CLEAN.keys()
        assert invariants == GROUP_CLEAN, seed


def test_the_simulation_keeps_each_server_process() -> None:
    sim = Simulation(parse_scenario(_doc(hosts=3, until=60, servers=["a", "b"])))
    doc = sim.run()
    assert sorted(sim.procs) == ["a", "b"]
    assert sim.ms is sim.procs["a"]
    assert sim.registry is not None
    assert {r.id for r in sim.registry.servers()} == {"a", "b"}
    assert sum(_owners(doc).values()) == 3
