"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every
link and anchor resolved, every snippet include found (mkdocs.yml)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_site_builds_strict_without_a_warning(tmp_path: Path) -> None:
    missing = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    assert not missing, (
        f"{' and '.join(missing)} not installed: pip install -e '.[docs]' "
        "(bash scripts/setup.sh test installs it)"
    )
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # cwd: the snippet includes are relative to the repository root (mkdocs.yml base_path).
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    warnings = [line for line in built.stderr.splitlines() if line.startswith("WARNING")]
    assert not warnings, "\n".join(warnings)
    for page in ("index.html", "tutorial/embed/index.html", "design/spec/index.html"):
        assert (site / page).is_file(), page
    tutorial = (site / "tutorial/embed/index.html").read_text(encoding="utf-8")
    assert "LabHostDirectory" in tutorial  # the snippet was included
    assert "--8&lt;--" not in tutorial
