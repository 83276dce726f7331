"""The WorkStore contract (cloudha.testing.check_work_store) on SQLite and a real PostgreSQL.

The same checks run on the in-memory store in tests/unit/test_work_store_memory.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloudha.errors import StoreError, StoreUnavailableError
from cloudha.ha.store import SqlWorkStore, WorkStore, create_schema, op_ha_work
from cloudha.ha.work import WorkType
from cloudha.model import VmState
from cloudha.ports import WorkStore as WorkStorePort
from cloudha.testing import FakeClock
from cloudha.testing.workstore import (
    WORK_QUEUE_ADMIN_CHECKS,
    WORK_STORE_CHECKS,
    run_work_store_check,
)
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

pytestmark = pytest.mark.integration


def corrupt_sql(store: WorkStorePort, work_id: int, column: str, value: object) -> None:
    assert isinstance(store, SqlWorkStore)
    with store.engine.begin() as conn:
        conn.execute(op_ha_work.update().where(op_ha_work.c.id == work_id).values({column: value}))


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ha.db'}"
    else:
        url = request.getfixturevalue("postgres_db")
    eng = sa.create_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    "check", WORK_STORE_CHECKS + WORK_QUEUE_ADMIN_CHECKS, ids=lambda f: f.__name__
)
def test_sql_store_keeps_the_contract(engine: sa.Engine, check: Callable[..., None]) -> None:
    def make(clock: FakeClock) -> WorkStorePort:
        store = SqlWorkStore(engine, clock)
        create_schema(engine)
        return store

    run_work_store_check(check, make, corrupt=corrupt_sql)


def test_the_old_name_is_the_sql_adapter() -> None:
    assert WorkStore is SqlWorkStore


def test_a_missing_schema_is_a_store_error_not_a_sqlalchemy_one(engine: sa.Engine) -> None:
    store = SqlWorkStore(engine, FakeClock(0))
    with pytest.raises(StoreError, match="op_ha_work") as info:
        store.add("vm1", WorkType.HA, VmState.RUNNING)
    assert not isinstance(info.value, StoreUnavailableError)  # retrying cannot fix it
    assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)


def test_a_lost_database_is_store_unavailable(tmp_path: Path) -> None:
    # A SQLite file in a directory that is gone: the driver cannot open it.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'ha.db'}")
    try:
        with pytest.raises(StoreUnavailableError, match="unable to open"):
            SqlWorkStore(engine, FakeClock(0)).claim("ms1")
    finally:
        engine.dispose()


def test_a_stopped_postgres_is_store_unavailable(postgres_db: str) -> None:  # noqa: F811
    engine = sa.create_engine(postgres_db)
    try:
        create_schema(engine)
        store = SqlWorkStore(engine, FakeClock(0))
        store.add("vm1", WorkType.HA, VmState.RUNNING)
        with engine.connect() as conn:  # cut every other session to this database
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        engine.pool.dispose()
        bad = sa.create_engine(engine.url.set(port=1))  # nothing listens there
        try:
            with pytest.raises(StoreUnavailableError) as info:
                SqlWorkStore(bad, FakeClock(0)).claim("ms1")
            assert isinstance(info.value.__cause__, sa.exc.OperationalError)
        finally:
            bad.dispose()
        assert store.claim("ms1") is not None  # the real server still answers
    finally:
        engine.dispose()
