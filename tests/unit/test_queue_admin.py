"""The operator's view of the HA work queue on SQLite, and what a retried work does next.

The WorkQueueAdmin contract runs here on a SQLite file (and on PostgreSQL in
tests/integration/test_work_store_contract.py); the manager tests show that a
retried restart is investigated and fenced again before any start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloudha import Settings
from cloudha.fencing.base import FenceOutcome
from cloudha.ha.manager import WorkResult
from cloudha.ha.store import SqlWorkStore, Step, create_schema, op_ha_work
from cloudha.ha.work import (
    QueueState,
    WorkRefusedError,
    WorkType,
    cancel_refusal,
    retry_refusal,
)
from cloudha.model import VmState
from cloudha.ports import WorkQueueAdmin
from cloudha.ports import WorkStore as WorkStorePort
from cloudha.testing import FakeClock
from cloudha.testing.workstore import WORK_QUEUE_ADMIN_CHECKS, run_work_store_check
from tests.unit.test_ha_manager import make_env


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'ha.db'}")
    try:
        yield eng
    finally:
        eng.dispose()


def corrupt_sql(store: WorkStorePort, work_id: int, column: str, value: object) -> None:
    assert isinstance(store, SqlWorkStore)
    with store.engine.begin() as conn:
        conn.execute(op_ha_work.update().where(op_ha_work.c.id == work_id).values({column: value}))


@pytest.mark.parametrize("check", WORK_QUEUE_ADMIN_CHECKS, ids=lambda f: f.__name__)
def test_sqlite_keeps_the_admin_contract(engine: sa.Engine, check: Callable[..., None]) -> None:
    def make(clock: FakeClock) -> WorkStorePort:
        store = SqlWorkStore(engine, clock)
        create_schema(engine)
        return store

    run_work_store_check(check, make, corrupt=corrupt_sql)


def test_the_sql_store_is_a_work_queue_admin(engine: sa.Engine) -> None:
    assert isinstance(SqlWorkStore(engine, FakeClock(0)), WorkQueueAdmin)


def test_a_refused_retry_rolls_back_its_transaction(engine: sa.Engine) -> None:
    create_schema(engine)
    store = SqlWorkStore(engine, FakeClock(1_000.0))
    pending = store.add("vm1", WorkType.HA, VmState.RUNNING)
    with pytest.raises(WorkRefusedError, match="pending already"):
        store.retry_work(pending.id)
    # The write lock of the refused transaction is gone: another writer gets it at once.
    assert store.claim("ms1") is not None


def test_refusal_reasons_name_the_holder_and_the_covering_work() -> None:
    env = make_env()
    work = env.restart()
    held = env.store.claim("ms-7")
    assert held is not None
    assert "held by ms-7" in (cancel_refusal(held) or "")
    assert "held by ms-7" in (retry_refusal(held, []) or "")
    error = env.store.add("vm1", held.type, VmState.RUNNING, step=Step.ERROR)
    assert f"({work.id})" in (retry_refusal(error, [work.id]) or "")
    assert retry_refusal(error, [error.id]) is None  # itself does not count
    assert cancel_refusal(error) is None


def test_a_retried_restart_is_investigated_and_fenced_again_before_any_start() -> None:
    env = make_env(settings=Settings(vm_ha_migration_max_retries=2), fence=FenceOutcome.NOT_FENCED)
    work = env.restart()
    results = []
    for _ in range(5):
        results.append(env.manager.process_next())
        env.clock.advance(600)
    assert results == [WorkResult.RESCHEDULED, WorkResult.GAVE_UP, None, None, None]
    gave_up = env.work(work.id)
    assert gave_up.step is Step.ERROR
    assert (env.vm().state, env.vm().host_id) == (
        VmState.RUNNING,
        "h1",
    )  # never fenced, never moved
    asked, fenced = len(env.inv.asked), len(env.fencer.calls)
    token = env.store.current_generation("vm1")
    assert env.manager.process_next() is None  # Error works are never claimed

    retried = env.store.retry_work(work.id)
    assert retried.step is Step.INVESTIGATING
    env.fencer.default = FenceOutcome.FENCED
    order: list[str] = []
    env.orch.before(
        "advance_start", lambda _vm: order.append(f"start after {len(env.fencer.calls)}")
    )
    assert env.manager.process_next() is WorkResult.DONE
    assert len(env.inv.asked) > asked, "the retried work was not investigated again"
    assert len(env.fencer.calls) == fenced + 1, "the retried work was not fenced again"
    assert order == [f"start after {fenced + 1}"]  # the fence came first
    (start,) = env.calls("advance_start")
    assert start.params is not None
    assert start.params.generation > token  # a fresh fencing token
    assert (env.vm().state, env.vm().host_id) == (VmState.RUNNING, "h2")
    assert env.work(work.id).step is Step.DONE


def test_a_cancelled_work_is_left_alone_by_the_workers() -> None:
    env = make_env()
    work = env.restart()
    env.store.cancel_work(work.id, "alice@console")
    assert env.manager.process_next() is None
    assert env.calls("advance_stop") == []
    assert env.calls("advance_start") == []
    listing = env.store.list_works(states=[QueueState.CANCELLED])
    assert [(w.id, w.mgmt_server_id) for w in listing.works] == [(work.id, "alice@console")]
