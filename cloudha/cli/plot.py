"""``cloudha simulate SCENARIO --plot FILE``: the timeline picture beside the run's output."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudha.cli.look import EXIT_USAGE, fail
from cloudha.errors import MissingExtraError

__all__ = ["check_plot", "write_plot"]

_WHAT = "the timeline picture (--plot)"


def check_plot(path: Path | None, *, scenario: Path | None) -> None:
    """Before the run: ``--plot`` goes with SCENARIO, as .svg or .png, with matplotlib installed.

    Exits with status 2 and one line otherwise; does nothing without ``--plot``.
    """
    if path is None:
        return
    from cloudha._extras import require
    from cloudha.plot import picture_format

    if scenario is None:
        fail("simulate", "--plot goes with SCENARIO only", EXIT_USAGE)
    try:
        picture_format(path)
    except ValueError as exc:
        fail("simulate", f"--plot {exc}", EXIT_USAGE)
    try:
        require("matplotlib", "plot", _WHAT)
    except MissingExtraError as exc:
        fail("simulate", exc, EXIT_USAGE)


def write_plot(document: Mapping[str, Any], path: Path | None) -> None:
    """Draw ``document``'s timeline into ``path`` (:func:`cloudha.plot.plot_timeline`).

    Exits with status 2 and one line when the file cannot be written; does
    nothing without ``--plot``.
    """
    if path is None:
        return
    from cloudha.plot import plot_timeline

    try:
        plot_timeline(document, path)
    except OSError as exc:
        fail("simulate", f"--plot {path}: {exc.strerror or exc}", EXIT_USAGE)
