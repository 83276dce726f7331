"""The WorkStore contract on the in-memory store (SQLite and PostgreSQL: tests/integration)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudha.ha.work import Step, Work
from cloudha.ports import WorkStore
from cloudha.testing import FakeClock, InMemoryWorkStore, check_work_store
from cloudha.testing.workstore import (
    WORK_QUEUE_ADMIN_CHECKS,
    WORK_STORE_CHECKS,
    corrupt_in_memory,
    run_work_store_check,
)


def make(clock: FakeClock) -> WorkStore:
    return InMemoryWorkStore(clock)


@pytest.mark.parametrize(
    "check", WORK_STORE_CHECKS + WORK_QUEUE_ADMIN_CHECKS, ids=lambda f: f.__name__
)
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


class StraightToStartStore(InMemoryWorkStore):
    """Breaks the admin contract: a retried work goes straight to Scheduled (the start)."""

    def retry_work(self, work_id: int) -> Work:
        super().retry_work(work_id)
        self.corrupt(work_id, "step", Step.SCHEDULED.value)
        got = self.get(work_id)
        assert got is not None
        return got


class CancelsClaimsStore(InMemoryWorkStore):
    """Breaks the admin contract: cancels a work a worker holds."""

    def cancel_work(self, work_id: int, canceller: str) -> Work:
        if self.get(work_id) is not None:
            self.corrupt(work_id, "mgmt_server_id", None)
            self.corrupt(work_id, "taken", None)
        return super().cancel_work(work_id, canceller)


class WithoutAdmin:
    """A WorkStore without the operator's view: every WorkStore method, none of WorkQueueAdmin."""

    def __init__(self, clock: FakeClock) -> None:
        self._inner = InMemoryWorkStore(clock)

    def __getattr__(self, name: str) -> object:
        if name in ("list_works", "retry_work", "cancel_work"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (StraightToStartStore, "check_retry_sends_a_work_back_to_be_investigated"),
        (CancelsClaimsStore, "check_cancel_refusals_change_nothing"),
    ],
)
def test_the_checker_catches_a_broken_admin(
    store: Callable[[FakeClock], WorkStore], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        check_work_store(store, corrupt=corrupt_in_memory)


def test_a_store_without_the_admin_view_fails_unless_told() -> None:
    make: Callable[[FakeClock], WorkStore] = WithoutAdmin  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="WorkQueueAdmin port"):
        check_work_store(make)
    check_work_store(make, admin=False)
