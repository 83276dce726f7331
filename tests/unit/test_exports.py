"""The curated public API."""

from __future__ import annotations

import cloudha
import cloudha.testing


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff (RUF022) keeps: CONSTANTS, then Classes, then functions.
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_matches_public_names() -> None:
    for module in (cloudha, cloudha.testing):
        exported = list(module.__all__)
        assert exported == sorted(exported, key=_isort_key)
        public = sorted(
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, type(cloudha))
        )
        assert public == sorted(exported)


def test_import_cloudha_does_not_import_testing() -> None:
    import subprocess
    import sys

    code = "import sys, cloudha; print('cloudha.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
