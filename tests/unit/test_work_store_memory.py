"""The WorkStore contract on the in-memory store (SQLite and PostgreSQL: tests/integration)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudha.ports import WorkStore
from cloudha.testing import FakeClock, InMemoryWorkStore, check_work_store
from cloudha.testing.workstore import (
    WORK_STORE_CHECKS,
    corrupt_in_memory,
    run_work_store_check,
)


def make(clock: FakeClock) -> WorkStore:
    return InMemoryWorkStore(clock)


@pytest.mark.parametrize("check", WORK_STORE_CHECKS, ids=lambda f: f.__name__)
def test_in_memory_store_keeps_the_contract(check: Callable[..., None]) -> None:
    run_work_store_check(check, make, corrupt=corrupt_in_memory)


def test_check_work_store_runs_every_check() -> None:
    check_work_store(make, corrupt=corrupt_in_memory)


class ForgetfulStore(InMemoryWorkStore):
    """Breaks the contract: a lost claim can still be finished."""

    def _holds(self, row: object, work: object) -> bool:  # type: ignore[override]
        return row is not None


class DoubleClaimStore(InMemoryWorkStore):
    """Breaks the contract: claims hand out generation 1 each time."""

    def _bump(self, instance_id: str) -> int:
        return 1


class NotAStore:
    def add(self) -> None: ...


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (ForgetfulStore, "check_held_writes|check_confirm_after_a_lost_claim"),
        (DoubleClaimStore, "check_confirm_after_a_lost_claim|check_generations_only_grow"),
    ],
)
def test_the_checker_catches_a_broken_store(
    store: Callable[[FakeClock], WorkStore], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        check_work_store(store, corrupt=corrupt_in_memory)


def test_the_checker_rejects_an_object_without_the_ports_methods() -> None:
    with pytest.raises(AssertionError, match="WorkStore port"):
        check_work_store(lambda _clock: NotAStore())  # type: ignore[arg-type,return-value]


def test_corrupt_refuses_an_unknown_column() -> None:
    store = InMemoryWorkStore(FakeClock(0))
    with pytest.raises(ValueError, match="no column"):
        store.corrupt(1, "colour", "red")
