"""``cloudha dump``: desired against actual state and the freshness of each."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloudha.cli import main

SCENARIO = """
[[hosts]]
id = "h1"
cluster = "c1"
pools = ["p1"]
[[hosts]]
id = "h2"
cluster = "c1"
pools = ["p1"]
[[vms]]
id = "vm1"
host = "h1"
ha = true
[[faults]]
at = 400
kind = "ms_pause"
[[faults]]
at = 1000
kind = "ms_resume"
[[faults]]
at = 1500
kind = "ms_crash"
[run]
until = 2000
"""


def write(tmp_path: Path, text: str = SCENARIO) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_dump_shows_a_fresh_view_before_the_pause(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dump", str(write(tmp_path)), "--at", "300", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["judging"] is True
    assert doc["desired"]["fresh"] is True
    assert doc["actual"]["fresh"] is True
    assert doc["desired"]["hosts"]["h1"] == {
        "status": "Up",
        "resource_state": "Enabled",
        "owner": "ms1",
        "vms": {"vm1": "Running"},
    }
    assert doc["actual"]["hosts"]["h1"]["monitored"] is True
    assert doc["actual"]["hosts"]["h1"]["since_last_ping"] < 60
    assert doc["freshness"]["reasons"] == []


def test_dump_just_after_the_pause_shows_a_stale_actual_state(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dump", str(write(tmp_path)), "--at", "1001", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["judging"] is False
    assert doc["actual"]["fresh"] is False
    assert doc["desired"]["fresh"] is True
    assert any("a pause" in r for r in doc["freshness"]["reasons"])
    assert all(h["since_last_ping"] > 150 for h in doc["actual"]["hosts"].values())
    human = CliRunner().invoke(main, ["dump", str(write(tmp_path)), "--at", "1001"])
    assert human.exit_code == 0
    assert "not judging" in human.output
    assert "not fresh: the monitor did not run" in human.output


def test_dump_without_a_running_server_or_with_a_bad_scenario_is_one_line(tmp_path: Path) -> None:
    crashed = CliRunner().invoke(main, ["dump", str(write(tmp_path)), "--at", "1600"])
    assert crashed.exit_code == 2
    assert "no management server is running at 1600 s" in crashed.output
    assert len(crashed.output.strip().splitlines()) == 1
    bad = CliRunner().invoke(
        main, ["dump", str(write(tmp_path, "[run]\nuntil = -1\n")), "--at", "5"]
    )
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1
