"""The fault campaign on the real simulator, the invariant checker, and bad input to the CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cloudha.testing.simulator as simulator
from cloudha.cli import main
from cloudha.testing import campaign
from cloudha.testing.scenario import load_scenario, parse_scenario
from cloudha.testing.simulator import Simulation

# -- a small campaign --------------------------------------------------------------------


def test_small_campaign_reproducers_replay(tmp_path: Path) -> None:
    result = campaign.run_campaign(20, 2026, jobs=2, out=tmp_path)
    assert (result["runs"], result["seed"]) == (20, 2026)
    assert sum(result["by_invariant"].values()) == len(result["violations"])
    assert "simulator_error" not in result["by_invariant"]
    for violation in result["violations"]:
        path = Path(violation["scenario"])
        assert path.parent == tmp_path
        document = simulator.simulate(load_scenario(path))  # the shrunk TOML replays ...
        assert document["invariants"][violation["invariant"]] > 0  # ... and still fails


def _fake(doc: Mapping[str, Any]) -> Mapping[str, int]:
    return {"double_run": int(any(f["kind"] == "host_crash" for f in doc["faults"]))}


def _clean(doc: Mapping[str, Any]) -> Mapping[str, int]:
    return {"double_run": 0}


def test_cli_campaign_json_and_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaign, "simulate_invariants", _fake)
    result = CliRunner().invoke(
        main, ["simulate", "--campaign", "10", "--seed", "3", "--jobs", "1", "--json"]
    )
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["runs", "seed", "violations", "by_invariant"]
    assert document["runs"] == 10
    assert document["seed"] == 3
    assert document["violations"]
    assert document["by_invariant"] == {"double_run": len(document["violations"])}
    assert all(list(v) == ["seed", "invariant", "scenario"] for v in document["violations"])

    monkeypatch.setattr(campaign, "simulate_invariants", _clean)
    result = CliRunner().invoke(main, ["simulate", "--campaign", "5", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    assert "5 runs from seed 1" in result.stdout
    assert "0 violations" in result.stdout


def test_cli_needs_exactly_one_mode(tmp_path: Path) -> None:
    for args in (["simulate"], ["simulate", "x.toml", "--campaign", "3"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert "exactly one of SCENARIO" in result.stderr


def test_fuzz_inputs_end_cleanly() -> None:
    result = campaign.run_fuzz(40, 5, jobs=1, timeout=60)
    assert result["runs"] == 40
    # No traceback, hang or multi-line error, and every unknown name (fault kind,
    # host, setting, investigator, fence builder) refused.
    assert result["by_invariant"] == {}, result


# -- bad input: one line, file, line, key, exit 2 ------------------------------------

_HOSTS = '[[hosts]]\nid = "h1"\n\n[[vms]]\nid = "vm1"\nhost = "h1"\n'


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x00\x01\x02binary\xff\xfe", "line 1: not UTF-8 text"),
        (b"[run]\nuntil = 60\n# caf\xe9\n" + _HOSTS.encode(), "line 3: not UTF-8 text"),
        (b"[run]\nuntil = 60\n\x00\n", "line 3: a NUL byte"),
        (b"[run]\nuntil = 1e12\n" + _HOSTS.encode(), "line 2: 'until' must be > 0 and at most"),
        (b"[run]\nuntil = nan\n" + _HOSTS.encode(), "line 2: 'until' must be a finite number"),
        (b"[run]\nuntil = inf\n" + _HOSTS.encode(), "line 2: 'until' must be a finite number"),
        (
            _HOSTS.encode() + b'[[faults]]\nat = -inf\nkind = "ms_crash"\n',
            "line 8: 'at' must be a finite number",
        ),
        (b'[run]\nuntil = "soon"\n' + _HOSTS.encode(), "line 2: 'until' must be a number"),
        (b"[run]\nseed = 1.5\n" + _HOSTS.encode(), "line 2: 'seed' must be an integer"),
        (b"hosts = 5\n", "'hosts' must be an array of tables"),
        (b"[run]\nuntil = 60\n[run]\nuntil = 7\n", "line 3: not valid TOML"),
        (
            b'[settings]\n"ping.interval" = 0.001\n' + _HOSTS.encode(),
            "line 2: ping.interval: must be >= 0.1 seconds",
        ),
        (
            b'[settings]\n"ping.interval" = 0.1\n[run]\nuntil = 100000\n' + _HOSTS.encode(),
            "line 2: this run would take about",
        ),
        (
            b'[settings]\n"ha.workers" = 1000\n"time.to.sleep" = 0.1\n[run]\nuntil = 100000\n'
            + _HOSTS.encode(),
            "line 3: this run would take about",
        ),
        (
            b"[run]\nuntil = 2500000\n"
            + b"".join(f'[[hosts]]\nid = "h{i}"\n'.encode() for i in range(40)),
            "line 2: this run would take about",
        ),
    ],
)
def test_bad_scenarios_give_one_line_and_exit_2(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(data)
    result = CliRunner().invoke(main, ["simulate", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cloudha simulate: {path}")
    assert words in lines[0]
    assert "Traceback" not in result.output


def test_budget_error_names_the_key() -> None:
    with pytest.raises(Exception, match=r"raise 'time\.to\.sleep'") as info:
        parse_scenario(
            {
                "settings": {"ha.workers": 1000, "time.to.sleep": 1},
                "hosts": [{"id": "h1"}],
                "run": {"until": 9e4},
            },
            text='[settings]\n"ha.workers" = 1000\n"time.to.sleep" = 1\n',
        )
    assert getattr(info.value, "key", None) == "time.to.sleep"
    assert getattr(info.value, "line", None) == 3
    with pytest.raises(Exception, match=r"raise 'ping\.interval'"):
        parse_scenario(
            {"settings": {"ping.interval": 0.1}, "hosts": [{"id": "h1"}], "run": {"until": 2.5e6}}
        )


def test_run_loop_stops_at_the_hard_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "EVENT_HARD_CAP", 50)
    path = tmp_path / "s.toml"
    path.write_text(_HOSTS)
    result = CliRunner().invoke(main, ["simulate", str(path), "--json"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "processed 50 events" in line
    assert "event budget" in line


# -- unrecovered_ha_vm is exact --------------------------------------------------------


def _after_crash(**h2: Any) -> Simulation:
    """h2 (with ``h2`` extra keys) crashes at 30 s; the run ends at 3000 s."""
    sim = Simulation(
        parse_scenario(
            {
                "hosts": [{"id": "h1", "pools": h2.get("pools", [])}, {"id": "h2", **h2}],
                "vms": [{"id": "vm1", "host": "h2", "ha": True}, {"id": "vm2", "host": "h2"}],
                "faults": [{"at": 30, "kind": "host_crash", "target": "h2"}],
                "run": {"until": 3000},
            }
        )
    )
    sim.run()
    return sim


def _unrecovered(sim: Simulation) -> int:
    return sim._invariants({})["unrecovered_ha_vm"]


def test_a_dead_host_without_any_proof_is_not_a_violation() -> None:
    sim = _after_crash()  # no BMC, no pools: nothing can prove h2 is dead
    assert not sim.vms["vm1"].running_on
    assert _unrecovered(sim) == 0


def test_a_vm_left_down_while_a_proof_and_room_existed_is_a_violation() -> None:
    sim = _after_crash(oobm="ipmi", pools=["p1"])
    assert sim.vms["vm1"].running_on == {"h1"}  # restarted: fine
    assert _unrecovered(sim) == 0
    sim.vms["vm1"].running_on.clear()  # as if HA had left it behind on h2
    sim.vms["vm1"].last_host = "h2"
    assert _unrecovered(sim) == 1  # the BMC could confirm a fence
    sim.hosts["h2"].bmc_up = False
    assert _unrecovered(sim) == 1  # h1 reads h2's stale heartbeat (a watchdog host)
    sim.storage_out.add("p1")
    assert _unrecovered(sim) == 0  # no way left to prove h2 dead
    sim.storage_out.clear()
    _disable(sim, "h1")
    assert _unrecovered(sim) == 0  # no Enabled host has room
    sim.vms["vm2"].running_on.clear()
    assert _unrecovered(sim) == 0  # non-HA VMs never count


def _disable(sim: Simulation, host_id: str) -> None:
    import attrs

    from cloudha.model import ResourceState

    row = sim.directory.find_host(host_id)
    assert row is not None
    sim.directory.replace(attrs.evolve(row, resource_state=ResourceState.DISABLED))


def test_a_host_that_is_back_proves_its_vms_are_gone() -> None:
    """A host that answers shows its VMs are not there: recovery was possible."""
    sim = Simulation(
        parse_scenario(
            {
                "hosts": [{"id": "h1"}, {"id": "h2"}],
                "vms": [{"id": "vm1", "host": "h2", "ha": True}],
                "run": {"until": 600},
            }
        )
    )
    sim.run()
    assert _unrecovered(sim) == 0
    sim.vms["vm1"].running_on.clear()  # lost while h2 stays Up and reachable
    assert _unrecovered(sim) == 1
    sim.ms_isolated = True  # no server can act
    assert _unrecovered(sim) == 0


@pytest.mark.parametrize(
    "seed",
    [
        1320411486,  # a host fenced while it booted after its watchdog reset (checker)
        1538806676,  # XenServer hosts back from a crash: their VMs never restarted
        1582534327,
        2092979834,
        227714175,
        242153582,
        969306401,  # a rebooted host's stale pre-reset stamp on a 2-pool cluster: Down, fenced
        180328112,  # the same, run twice (double_run)
        1374035370,  # a heartbeat writer outliving its host's power-off
        715058517,
        # A host back right after Down: its VMs left to a work "host Up" cancels.
        1078291405,
        1352268448,
        1480901823,
        2057676220,
        414759265,
        627108299,
        119896696,
        213622200,
        506896431,
        1955471830,
        887758388,  # a direct host rebooted within alert.wait: nothing reconnected it
        282293535,
        # A watchdog host booted after its reset, its agent waiting for the writer
        # to arm, fenced on the heartbeat its reset left stale (checker).
        1309951695,
        1418923910,
        1552698175,
        1609945684,
        # The same host, armed and writing again a moment after the Down verdict,
        # powered off by the fence that verdict asked for (the last look holds it).
        1264014988,
        465047096,
        516255526,
        # A lone host proved Down by its BMC at once: its HA VM waited for room
        # until the host came back, and HA no longer gives up while it waits.
        1877352720,
        # The same, its attempts used up by an orchestrator outage (and the alert of
        # the give-up read the host directory during the outage and raised).
        1559193184,
        # agent_start applied to a host still booting after its watchdog reset: the
        # boot then started no heartbeat writer, and the live host's stale heartbeat
        # was taken as proof (the simulator's fault, fixed there).
        579628937,
        # A host proven Off by its BMC (or its hypervisor idle) at the Down verdict,
        # back on by the time its work fenced it, the server cut off from every
        # witness: the proof now goes with the hand-over (no fence needed).
        1614248067,
        1427809063,
        # A lone host back after a failed fence, whose HostDown work nobody could
        # cancel: the VM sync's restart supersedes it.
        120293340,
        1829518446,
        # A work that knew its VM dead (stopped at the hand-over, or by itself)
        # marked Investigating by a server restart, then cancelled because the
        # host was Up again: the VM stayed Stopped. Only a VM still on a host
        # has its work cancelled now.
        275272139,
        1224649279,
        1833735555,
        1916133372,
        # A group: a server paused past its takeover timeout resumed and, before its
        # refused heartbeat, wrote a ShutdownRequested disconnect to a row that still
        # named it (stale_write); no host row is written once the lease ran out.
        86769454,
    ],
)
def test_campaign_cases_once_violated_are_clean(seed: int) -> None:
    invariants = campaign.simulate_invariants(campaign.generate(seed).to_doc())
    assert not {k: v for k, v in invariants.items() if v}
