"""``cloudha simulate SCENARIO --plot FILE``: the timeline picture of real runs, and its errors."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cloudha.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "examples" / "scenarios"
SINGLE = SCENARIOS / "single-host-crash.toml"
RACK = SCENARIOS / "rack-failure.toml"


def simulate(*args: str) -> Result:
    return CliRunner().invoke(main, ["simulate", *args])


def ids(svg: Path) -> list[str]:
    return [e.attrib["id"] for e in ET.parse(svg).iter() if "id" in e.attrib]


def vm_moves(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(vm, from, to) of each VM that ran again on another host, read from the events."""
    last: dict[str, str] = {}
    moves = []
    for event in document["events"]:
        if event["kind"] != "vm_state" or not event.get("host"):
            continue
        vm, host = event["vm"], event["host"]
        if event["state"] == "Running" and vm in last and last[vm] != host:
            moves.append((vm, last[vm], host))
        last[vm] = host
    return moves


def one_line_error(result: Result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("cloudha simulate: ")
    for word in words:
        assert word in line


def test_the_svg_of_a_run_is_byte_identical_and_shows_hosts_faults_fences_and_moves(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "one.svg", tmp_path / "two.svg"
    plain = simulate(str(SINGLE), "--json")
    one = simulate(str(SINGLE), "--json", "--plot", str(first))
    two = simulate(str(SINGLE), "--json", "--plot", str(second))
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    assert first.read_bytes() == second.read_bytes()
    assert one.stdout == plain.stdout  # the picture is a side output: the JSON is unchanged
    document = json.loads(one.stdout)
    found = ids(first)
    for host in document["final"]["hosts"]:
        assert f"lane-{host}" in found
        assert f"label-{host}" in found
    assert len([e for e in document["events"] if e["kind"] == "fault"]) == 1
    assert [i for i in found if re.fullmatch(r"fault-\d+", i)] == ["fault-1"]
    assert "fence-1" in found
    fence_label = next(e for e in ET.parse(first).iter() if e.attrib.get("id") == "fence-1-label")
    assert "KVMFenceBuilder FENCED" in "".join(fence_label.itertext())
    moves = vm_moves(document)
    assert moves == [("vm1", "h2", "h3")]
    assert [i for i in found if re.fullmatch(r"move-\d+", i)] == ["move-1"]


def test_the_rack_failure_picture_keeps_a_lane_for_each_host_that_changed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rack.svg"
    result = simulate(str(RACK), "--json", "--plot", str(path))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    crashed = sorted(
        {e["host"] for e in document["events"] if e["kind"] == "fault" and e.get("host")}
    )
    assert len(crashed) == 40
    found = ids(path)
    lanes = sorted(i.removeprefix("lane-") for i in found if i.startswith("lane-"))
    assert lanes == sorted([*crashed, "quiet-Up"])  # the 160 others share one lane
    labels = sorted(i.removeprefix("label-") for i in found if i.startswith("label-"))
    assert labels == lanes
    assert len([i for i in found if re.fullmatch(r"fault-\d+", i)]) == 40
    moves = vm_moves(document)
    assert len(moves) == 80
    assert {source for _, source, _ in moves} <= set(crashed)
    assert len([i for i in found if re.fullmatch(r"move-\d+", i)]) == len(moves)
    texts = ["".join(e.itertext()) for e in ET.parse(path).iter("{http://www.w3.org/2000/svg}text")]
    assert "160 hosts, Up throughout" in texts


def test_a_png_by_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    result = simulate(str(SINGLE), "--plot", str(path))
    assert result.exit_code == 0, result.output
    assert "Hosts at the end" in result.stdout  # the human timeline as usual
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("timeline.pdf", ("--plot", "timeline.pdf", "unsupported picture format", ".svg or .png")),
        ("timeline", ("--plot", "extension none")),
    ],
)
def test_an_unsupported_extension_is_one_line_and_exit_2(
    tmp_path: Path, name: str, words: tuple[str, ...]
) -> None:
    one_line_error(simulate(str(SINGLE), "--plot", str(tmp_path / name)), *words)
    assert not (tmp_path / name).exists()


def test_plot_goes_with_a_scenario(tmp_path: Path) -> None:
    one_line_error(
        simulate("--campaign", "1", "--plot", str(tmp_path / "t.svg")),
        "--plot goes with SCENARIO only",
    )


def test_without_matplotlib_one_line_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(
        simulate(str(SINGLE), "--json", "--plot", str(tmp_path / "t.svg")),
        "the timeline picture (--plot) needs matplotlib",
        "pip install 'cloudha[plot]'",
    )


def test_a_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "t.svg"
    one_line_error(
        simulate(str(SINGLE), "--json", "--plot", str(missing)),
        f"--plot {missing}",
        "No such file or directory",
    )


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "timeline_picture", ROOT / "scripts" / "timeline_picture.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_picture_in_the_docs_is_current(tmp_path: Path) -> None:
    import matplotlib as mpl

    script = _script()
    target: Path = script.TARGET
    assert target == ROOT / "docs" / "img" / "single-host-crash.svg"
    fresh = tmp_path / "fresh.svg"
    timeline = script.render(fresh)
    current = target.read_text(encoding="utf-8")
    # The model drawn: what the simulator did and how cloudha.plot reads it.
    assert f"cloudha timeline {timeline.digest()}" in current, (
        "run: python scripts/timeline_picture.py"
    )
    # The bytes, with the matplotlib that drew it (another version draws other bytes).
    drawn_by = re.search(r"Matplotlib v([^,<\s]+)", current)
    assert drawn_by is not None
    if drawn_by.group(1) == mpl.__version__:
        assert fresh.read_bytes() == target.read_bytes(), "run: python scripts/timeline_picture.py"
    assert "](img/single-host-crash.svg)" in (ROOT / "docs" / "simulator.md").read_text()
