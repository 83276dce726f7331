"""Every example in examples/ runs, as a new user would run it, and says what it promises.

Each ``examples/*.py`` is found by glob and run as a subprocess; it must exit
0 within its time limit and print its key line (``KEY_LINES``: a new example
fails here until it declares one). Each ``examples/scenarios/*.toml`` is
simulated with ``cloudha simulate --check`` (every invariant holds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PROGRAMS = sorted(EXAMPLES.glob("*.py"))
SCENARIOS = sorted((EXAMPLES / "scenarios").glob("*.toml"))
INVENTORIES = sorted((EXAMPLES / "inventory").glob("*.toml"))
TIMEOUT = 120.0  # seconds of wall time per program (each takes a few on a loaded machine)

KEY_LINES: dict[str, str] = {
    # file name -> a regular expression one line of its output must match
    "toy_orchestrator.py": r"^vm1 restarted on h[23], \d+s after h1 died$",
    "custom_investigator.py": r"^h1 found Down by ConsoleInvestigator$",
    "custom_fencer.py": r"^h1 fenced by its BMC, h2 by its PDU$",
    "replay_scenario.py": r"^invariants hold$",
}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The checkout's cloudha, whatever the virtualenv has installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=TIMEOUT, check=False
    )


def test_there_are_examples_and_scenarios() -> None:
    assert len(PROGRAMS) >= 4
    assert len(SCENARIOS) >= 4


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_every_example_runs_and_prints_its_key_line(program: Path) -> None:
    if program.name not in KEY_LINES:
        pytest.fail(f"{program.name}: add the line its output must show to KEY_LINES")
    result = _run([sys.executable, str(program)])
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, shown
    assert "Traceback" not in result.stderr, shown
    assert re.search(KEY_LINES[program.name], result.stdout, re.MULTILINE), shown


def test_key_lines_name_existing_examples() -> None:
    assert set(KEY_LINES) <= {p.name for p in PROGRAMS}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_example_scenario_holds_its_invariants(scenario: Path) -> None:
    result = _run([sys.executable, "-m", "cloudha", "simulate", str(scenario), "--check"])
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr


def test_the_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in [*PROGRAMS, *SCENARIOS, *INVENTORIES]:
        assert path.relative_to(EXAMPLES).as_posix() in readme, path.name


def test_replaying_a_bad_scenario_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[hosts]]\nid = "h1"\nclutser = "c1"\n', encoding="utf-8")
    result = _run([sys.executable, str(EXAMPLES / "replay_scenario.py"), str(bad)])
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "bad.toml" in line
    assert "line 3" in line


if INVENTORIES:  # examples/inventory/ comes with `cloudha run` and `cloudha config check`

    @pytest.mark.parametrize("inventory", INVENTORIES, ids=[i.name for i in INVENTORIES])
    def test_every_example_inventory_passes_config_check(inventory: Path) -> None:
        result = _run([sys.executable, "-m", "cloudha", "config", "check", str(inventory)])
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert "Traceback" not in result.stderr
