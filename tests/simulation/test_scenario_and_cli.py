"""Scenario validation errors and the ``cloudha simulate`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudha import ScenarioError
from cloudha.cli import main
from cloudha.testing import load_scenario, simulate
from cloudha.testing.scenario import parse_scenario_text

ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
[settings]
"ping.interval" = 60

[[hosts]]
id = "h1"
cluster = "c1"

[[hosts]]
id = "h2"
cluster = "c1"

[[vms]]
id = "vm1"
host = "h2"
ha = true

[[faults]]
at = 30
kind = "host_crash"
target = "h2"

[run]
until = 600
seed = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "line", "words"),
    [
        ('cluster = "c1"\n\n[[hosts]]', 'clustr = "c1"\n\n[[hosts]]', "clustr", 6, "unknown key"),
        ('host = "h2"', 'host = "h9"', "host", 14, "unknown host 'h9'"),
        ('kind = "host_crash"', 'kind = "host_crash_now"', "kind", 19, "unknown fault kind"),
        ("at = 30", "at = 601", "at", 18, "out of range"),
        ("at = 30", "at = -1", "at", 18, "out of range"),
        ('target = "h2"', 'target = "h7"', "target", 20, "naming a host"),
        ('"ping.interval" = 60', '"ping.interval" = -5', "ping.interval", 2, "ping.interval"),
        ('"ping.interval" = 60', '"ping.intervall" = 60', "ping.intervall", 2, "ping.interval"),
        ("seed = 3", 'seed = "x"', "seed", 24, "integer"),
        ("ha = true", 'ha = "yes"', "ha", 15, "true or false"),
        ("ha = true", "ha = true\npriority = 1.5", "priority", 16, "whole number"),
        ("ha = true", "ha = true\npriority = 100001", "priority", 16, "between -100000"),
        ('id = "h2"', 'id = "h1"', "id", 9, "used twice"),
    ],
)
def test_errors_name_key_and_line(
    tmp_path: Path, old: str, new: str, key: str, line: int, words: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    err = info.value
    assert err.key == key
    assert err.line == line
    assert words in str(err)
    assert f"{path}, line {line}" in str(err)


def test_unknown_top_level_key_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown top-level key 'fault'"):
        load_scenario(write(tmp_path, GOOD + "\n[fault]\nat = 1\n"))
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[[hosts]\nid=1"))
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match="at least one"):
        load_scenario(write(tmp_path, "[run]\nuntil = 10\n"))


def test_cli_json_is_the_document_alone_and_byte_identical(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    runner = CliRunner()
    one = runner.invoke(main, ["simulate", str(path), "--json"])
    two = runner.invoke(main, ["simulate", str(path), "--json"])
    assert one.exit_code == 0, one.output
    assert one.stdout == two.stdout
    doc = json.loads(one.stdout)
    assert doc["final"]["hosts"]["h2"]["power"] == "Off"


def test_cli_human_timeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["simulate", str(write(tmp_path, GOOD)), "--all-events"])
    assert result.exit_code == 0, result.output
    assert "host_crash" in result.output
    assert "behind_on_ping" in result.output
    assert "Hosts at the end" in result.output


def test_cli_timeline_names_the_vm_of_every_vm_level_event() -> None:
    scenario = ROOT / "examples" / "scenarios" / "single-host-crash.toml"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["simulate", str(scenario)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("vm_state" in line and "vm1 Running" in line for line in lines)
    assert any("ha_work" in line and "vm1 HA Done: started on host" in line for line in lines)
    assert any("fence" in line and "vm1 KVMFenceBuilder FENCED" in line for line in lines)


def test_cli_timeline_shows_a_fence_on_suspicion_and_hides_the_looks_that_did_not_fence(
    tmp_path: Path,
) -> None:
    hosts = "".join(
        f'[[hosts]]\nid = "h{i}"\ncluster = "c1"\npools = ["nfs1"]\noobm = "ipmi"\n\n'
        for i in (1, 2, 3)
    )
    text = (
        hosts
        + '[[vms]]\nid = "vm1"\nhost = "h2"\nha = true\n\n'
        + '[[faults]]\nat = 100\nkind = "host_hang"\ntarget = "h2"\n\n'
        + "[run]\nuntil = 900\nseed = 1\n"
    )
    path = tmp_path / "hang.toml"
    path.write_text(text)
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["simulate", str(path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "suspicion" in line]
    assert len(lines) == 1  # the look at 202 s that found the heartbeat not late yet is hidden
    assert "fence on suspicion FENCED: h2 is lost to every witness" in lines[0]


def test_cli_error_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('kind = "host_crash"', 'kind = "meteor"'))
    result = CliRunner().invoke(main, ["simulate", str(path), "--json"])
    assert result.exit_code == 2
    assert "unknown fault kind 'meteor'" in result.stderr
    assert "line 19" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_cli_check_flag_fails_on_invariant_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudha.testing.simulator as simulator

    real = simulator.simulate

    def violated(path: Path) -> dict[str, object]:
        document = real(path)
        document["invariants"]["double_run"] = 1
        return document

    monkeypatch.setattr(simulator, "simulate", violated)
    result = CliRunner().invoke(main, ["simulate", str(write(tmp_path, GOOD)), "--check"])
    assert result.exit_code == 1
    monkeypatch.setattr(simulator, "simulate", real)
    healthy = GOOD.replace('kind = "host_crash"', 'kind = "agent_stop"')
    result = CliRunner().invoke(main, ["simulate", str(write(tmp_path, healthy)), "--check"])
    assert result.exit_code == 0, result.output


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    out = subprocess.run(
        [sys.executable, "-m", "cloudha", "simulate", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(out.stdout)["scenario"]["seed"] == 3


@pytest.mark.parametrize("name", ["single-host-crash.toml", "rack-failure.toml"])
def test_examples_load(name: str) -> None:
    scenario = load_scenario(ROOT / "examples" / "scenarios" / name)
    assert scenario.faults


def test_the_scenario_in_the_simulator_docs_runs() -> None:
    # docs/simulator.md shows every scenario key in one TOML block: it must stay valid.
    text = (ROOT / "docs" / "simulator.md").read_text(encoding="utf-8")
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    document = simulate(parse_scenario_text(block, source="docs/simulator.md"))
    assert [f["target"] for f in document["events"] if f["kind"] == "fault"] == ["h1"]
    assert document["final"]["hosts"]["h1"]["power"] == "Off"
