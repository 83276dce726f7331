"""Where a key sits in a TOML text: the line numbers behind "FILE:LINE: KEY" errors.

:mod:`tomllib` gives the parsed document but no positions, so the files
cloudha validates (simulator scenarios, inventories) are also scanned line by
line by :class:`TomlLines`: every table header (``[server]``, ``[[hosts]]``,
``[hosts.oobm]``) and every ``key =`` line is recorded under its path. A key
inside an inline table (``oobm = { driver = "x" }``) is found at its parent's
line, which is the same line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["PathPart", "TomlLines"]

PathPart = str | int
"""One step of a path: a table or key name, or the index in an array of tables."""

_BARE = r"[A-Za-z0-9_-]+"
_PART = rf"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|{_BARE})"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_PART_RE = re.compile(rf"""\s*("((?:[^"\\]|\\.)*)"|'([^']*)'|({_BARE}))\s*(\.|$)""")


def _split(dotted: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    pos = 0
    while pos < len(dotted):
        m = _PART_RE.match(dotted, pos)
        if m is None:
            return None
        if m.group(2) is not None:
            parts.append(m.group(2).replace('\\"', '"').replace("\\\\", "\\"))
        else:
            parts.append(m.group(3) if m.group(3) is not None else m.group(4))
        pos = m.end()
    return tuple(parts)


class TomlLines:
    """Finds the line of a key (or table) in a TOML text.

    :meth:`find_path` takes the key's full path, array indices included:
    ``("hosts", 2, "oobm", "driver")`` is the ``driver`` of the ``oobm``
    table of the third ``[[hosts]]``. When the path itself has no line of
    its own (a key of an inline table, a key that is missing), the line of
    its longest prefix that has one is returned. :meth:`find` is the
    shorter form ``(table, index, key)`` of the simulator's scenarios.

    An unparsable text (None) finds nothing.
    """

    _array = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
    _table = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
    _key = re.compile(rf"^\s*({_DOTTED})\s*=")

    def __init__(self, text: str | None) -> None:
        self.paths: dict[tuple[PathPart, ...], int] = {}
        self.arrays: set[tuple[PathPart, ...]] = set()
        if text is None:
            return
        counts: dict[tuple[PathPart, ...], int] = {}
        current: tuple[PathPart, ...] = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if m := self._array.match(line):
                parts = _split(m.group(1))
                if parts is None:
                    continue
                prefix = self._resolve(parts[:-1], counts)
                array = (*prefix, parts[-1])
                self.arrays.add(array)
                index = counts.get(array, 0)
                counts[array] = index + 1
                current = (*array, index)
                self.paths.setdefault(array, number)  # the array itself: its first entry
                self.paths.setdefault(current, number)
            elif m := self._table.match(line):
                parts = _split(m.group(1))
                if parts is None:
                    continue
                current = self._resolve(parts, counts)
                self.paths.setdefault(current, number)
            elif m := self._key.match(line):
                parts = _split(m.group(1))
                if parts is None:
                    continue
                for end in range(1, len(parts) + 1):
                    self.paths.setdefault((*current, *parts[:end]), number)
                rest = line[m.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote
                        break

    def _resolve(
        self, parts: Sequence[str], counts: dict[tuple[PathPart, ...], int]
    ) -> tuple[PathPart, ...]:
        """A header's dotted name as a path: a name of an array of tables means its last entry."""
        path: tuple[PathPart, ...] = ()
        for part in parts:
            path = (*path, part)
            if path in self.arrays:
                path = (*path, counts[path] - 1)
        return path

    def find_path(self, path: Sequence[PathPart]) -> int | None:
        """The line of ``path``, else of its longest prefix with a line; None if none has."""
        key = tuple(path)
        while key:
            if key in self.paths:
                return self.paths[key]
            key = key[:-1]
        return None

    def find(self, table: str, index: int, key: str | None) -> int | None:
        """The line of ``key`` in the ``index``-th ``[[table]]`` (or in ``[table]``, or at top
        level for ``table=""``); else the table's header line."""
        base: tuple[PathPart, ...] = ()
        if table:
            base = (table, index) if (table,) in self.arrays else (table,)
        if key is not None:
            for path in ((*base, key), (*base, *key.split("."))):
                if path in self.paths:
                    return self.paths[path]
        return self.paths.get(base) if base else None
