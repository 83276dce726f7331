"""The code on the docs pages runs: every snippet under docs/snippets/, as the pages show it.

Each page includes its code from a snippet file (``--8<-- "docs/snippets/x.py:section"``,
pymdownx.snippets); each snippet's ``main()`` runs every part of it, asserting as it
goes, and returns a summary line.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SNIPPETS = sorted((DOCS / "snippets").glob("*.py"))
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.MULTILINE)

# What each snippet's main() reports when everything on its page holds.
SUMMARIES = {
    "embed.py": "h1 Down 25s after its crash, decided by BMCInvestigator; vm1 runs on h",
    "investigator.py": "h1: Disconnected (RackSwitchInvestigator: frames from h1 within 10s)",
    "fencer.py": "vm1 fenced off h1 by PduFencer",
    "power_driver.py": "h2: FENCED (h2 powered off and read back Off)",
}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_snippet_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _includes() -> list[tuple[Path, str, str | None]]:
    return [
        (page, target, section)
        for page in sorted(DOCS.rglob("*.md"))
        for target, section in INCLUDE.findall(page.read_text(encoding="utf-8"))
    ]


def test_every_snippet_has_its_expected_summary() -> None:
    assert sorted(p.name for p in SNIPPETS) == sorted(SUMMARIES)


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.name)
def test_the_snippet_runs(path: Path) -> None:
    summary = _load(path).main()
    assert isinstance(summary, str)
    assert SUMMARIES[path.name] in summary


def test_every_include_names_a_file_and_a_section_that_exist() -> None:
    includes = _includes()
    assert len(includes) >= 20
    for page, target, section in includes:
        text = (ROOT / target).read_text(encoding="utf-8")
        if section is not None:
            assert f"# --8<-- [start:{section}]" in text, (page.name, target, section)
            assert f"# --8<-- [end:{section}]" in text, (page.name, target, section)


def test_every_snippet_is_shown_on_a_page() -> None:
    shown = {ROOT / target for _page, target, _section in _includes()}
    assert set(SNIPPETS) <= shown
