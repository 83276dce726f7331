"""docs/ stays true to the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_settings_doc_is_generated_from_the_catalogue() -> None:
    spec = importlib.util.spec_from_file_location(
        "settings_doc", ROOT / "scripts" / "settings_doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert current == module.render(), "run: python scripts/settings_doc.py"


def test_every_fault_kind_is_documented() -> None:
    from cloudha.testing.scenario import FAULT_KINDS

    text = (ROOT / "docs" / "simulator.md").read_text(encoding="utf-8")
    for kind in FAULT_KINDS:
        assert f"`{kind}`" in text, kind
