"""The one look every ``cloudha`` command shares: exit codes, errors, JSON and tables.

Exit codes (docs: the CLI reference):

* :data:`EXIT_OK` (0): done; the answer is on stdout.
* :data:`EXIT_FAILED` (1): the command ran and its answer is "no": an
  invariant was violated, a check found problems, a credential test failed.
* :data:`EXIT_USAGE` (2): bad input: a bad option (click's own), a bad
  scenario or inventory file, an unknown host, VM or work.
* :data:`EXIT_DATABASE` (3): the database cannot be opened or read (a bad
  URL, a missing file or table, an unreachable server).

Every failure is one line on stderr, ``cloudha <command>: <what>``, naming the
file, key, host or database; never a traceback. ``--json`` prints one JSON
document alone on stdout (errors still go to stderr).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn

import click

__all__ = [
    "EXIT_DATABASE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "console",
    "emit_json",
    "fail",
    "iso",
    "one_line",
    "span",
    "table",
]

EXIT_OK: Final = 0
"""Done."""
EXIT_FAILED: Final = 1
"""The command ran and its answer is "no" (a violation, a problem found, a failed test)."""
EXIT_USAGE: Final = 2
"""Bad input: an option, a file, an unknown host, VM or work."""
EXIT_DATABASE: Final = 3
"""The database cannot be opened or read."""


def one_line(message: object) -> str:
    """``message`` as one line (whitespace runs folded)."""
    return " ".join(str(message).split())


def fail(command: str, message: object, status: int = EXIT_USAGE) -> NoReturn:
    """Print ``cloudha <command>: <message>`` on stderr as one line and exit with ``status``."""
    click.echo(f"cloudha {command}: {one_line(message)}", err=True)
    sys.exit(status)


def emit_json(document: Any) -> None:
    """Print ``document`` as indented JSON alone on stdout (keys in their given order)."""
    click.echo(json.dumps(document, indent=2, default=str))


def console() -> Any:
    """The rich console every command prints its tables to (stdout)."""
    from rich.console import Console

    return Console(highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Any:
    """A rich table in the commands' one style: ``columns`` headed, one row per item.

    A column named with a leading ``>`` is right-aligned (``">t (s)"``).
    """
    from rich.table import Table

    shown = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        if column.startswith(">"):
            shown.add_column(column[1:], justify="right")
        else:
            shown.add_column(column)
    for row in rows:
        shown.add_row(*("" if cell is None else str(cell) for cell in row))
    return shown


def iso(at: dt.datetime | None) -> str | None:
    """``at`` as ISO 8601 to the second, as every ``--json`` prints times; None stays None."""
    return None if at is None else at.isoformat(timespec="seconds")


def span(seconds: float) -> str:
    """``3d4h``, ``2h05m``, ``4m10s``, ``12s``: a duration for a table cell (its size; the
    caller says "ago" or "in")."""
    whole = int(abs(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
