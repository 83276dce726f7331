"""Transition tables of cloudha's state machines (host Status, Host-HA), built once from rows."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar

__all__ = ["transition_table"]

_State = TypeVar("_State", bound=Hashable)
_Event = TypeVar("_Event", bound=Hashable)


def transition_table(
    rows: Iterable[tuple[_State | None, _Event, _State]], what: str
) -> Mapping[tuple[_State | None, _Event], _State]:
    """``(from, event) -> to`` as a read-only mapping; ``what`` names the machine in errors.

    Raises:
        AssertionError: two rows share ``(from, event)`` (a mistake in the table).
    """
    table: dict[tuple[_State | None, _Event], _State] = {}
    for current, event, target in rows:
        if (current, event) in table:  # pragma: no cover - guarded by the tables' tests
            raise AssertionError(f"duplicate {what} transition {current} + {event}")
        table[(current, event)] = target
    return MappingProxyType(table)
