"""The HA work store on SQLite and on a real PostgreSQL: contract, migrations, concurrency."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import (
    StaleWorkError,
    Step,
    UnreadableWorkError,
    Work,
    WorkStore,
    WorkType,
    create_schema,
    drop_schema,
    op_ha_work,
    upgrade,
)
from cloudha.model import ReasonType, VmState, VmType
from cloudha.testing.clock import FakeClock
from tests.integration.ha_store_worker import claims, done, record_metadata
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ha_store_worker.py")
T0 = 1_700_000_000.0


def _engine_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ha.db'}"
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on an empty database with the schema created."""
    eng = sa.create_engine(_engine_url(request, request.param, tmp_path))
    try:
        create_schema(eng)
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(engine: sa.Engine, clock: FakeClock) -> WorkStore:
    return WorkStore(engine, clock)


def _add(store: WorkStore, vm: str = "vm1", **kw: Any) -> Work:
    kw.setdefault("type", WorkType.HA)
    kw.setdefault("previous_state", VmState.RUNNING)
    return store.add(vm, **kw)


# -- contract ------------------------------------------------------------------


def test_add_and_get_round_trip(store: WorkStore) -> None:
    work = store.add(
        "vm-7",
        WorkType.MIGRATION,
        VmState.MIGRATING,
        vm_type=VmType.DOMAIN_ROUTER,
        step=Step.INVESTIGATING,
        host_id="h1",
        reason=ReasonType.HOST_DOWN,
        tried=2,
        updated=9,
        priority=3,
    )
    assert store.get(work.id) == work
    assert work.created.timestamp() == T0
    assert work.created.utcoffset() is not None
    assert work.time_to_try == T0
    assert (work.mgmt_server_id, work.taken, work.generation) == (None, None, 0)
    assert str(work) == f"HAWork[{work.id}-Migration-vm-7-Migrating-Investigating]"
    assert store.get(work.id + 1000) is None


def test_claim_takes_priority_then_id_and_sets_owner(store: WorkStore, clock: FakeClock) -> None:
    first = _add(store, "a")
    second = _add(store, "b")
    urgent = _add(store, "c", priority=5)
    clock.advance(7)
    claimed = [store.claim("ms1"), store.claim("ms2"), store.claim("ms1")]
    assert [w.id for w in claimed if w] == [urgent.id, first.id, second.id]
    assert claimed[1] is not None
    assert claimed[1].mgmt_server_id == "ms2"
    assert claimed[1].taken is not None
    assert claimed[1].taken.timestamp() == T0 + 7
    assert store.claim("ms1") is None


def test_claim_filters(store: WorkStore, clock: FakeClock) -> None:
    _add(store, "future", time_to_try=T0 + 60)
    for step in (Step.DONE, Step.CANCELLED, Step.ERROR):
        _add(store, f"vm-{step}", step=step)
    taken = _add(store, "taken")
    with store.engine.begin() as conn:
        conn.execute(
            op_ha_work.update().where(op_ha_work.c.id == taken.id).values(taken=clock.now())
        )
    owned = _add(store, "owned")
    with store.engine.begin() as conn:
        conn.execute(
            op_ha_work.update().where(op_ha_work.c.id == owned.id).values(mgmt_server_id="x")
        )
    assert store.claim("ms1") is None
    clock.advance(60)
    claimed = store.claim("ms1")
    assert claimed is not None
    assert claimed.instance_id == "future"
    assert store.claim("ms1") is None


def test_sqlite_empty_claim_reads_without_the_write_lock(tmp_path: Path) -> None:
    """An idle worker's claim finds nothing without waiting for another writer's lock;
    a claim with something to take still takes it, once the lock is free."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'ha.db'}")
    try:
        create_schema(eng)
        clock = FakeClock(T0)
        store = WorkStore(eng, clock)
        _add(store, "later", time_to_try=T0 + 60)
        holder = sqlite3.connect(tmp_path / "ha.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            done_at: list[float] = []
            worker = threading.Thread(
                target=lambda: done_at.append(float(store.claim("ms1") is None))
            )
            worker.start()
            worker.join(timeout=5.0)
            assert done_at == [1.0], "an empty claim waited for the write lock"
            clock.advance(60)
            taken: list[Work | None] = []
            worker = threading.Thread(target=lambda: taken.append(store.claim("ms1")))
            worker.start()
            worker.join(timeout=0.5)
            assert worker.is_alive(), "a claim with work to take must hold the write lock"
        finally:
            holder.execute("COMMIT")
            holder.close()
        worker.join(timeout=30.0)
        assert [w.instance_id for w in taken if w is not None] == ["later"]
    finally:
        eng.dispose()


def test_reschedule_finish_update_step(store: WorkStore, clock: FakeClock) -> None:
    _add(store)
    work = store.claim("ms1")
    assert work is not None
    progressed = store.update_step(work, Step.FENCING)
    assert progressed.step is Step.FENCING
    again = store.reschedule(progressed, T0 + 30)
    assert (again.tried, again.time_to_try, again.mgmt_server_id, again.taken) == (
        1,
        T0 + 30,
        None,
        None,
    )
    assert store.claim("ms1") is None
    clock.advance(30)
    work = store.claim("ms1")
    assert work is not None
    assert work.tried == 1
    finished = store.finish(work, Step.DONE)
    assert finished.step is Step.DONE
    assert finished.mgmt_server_id == "ms1"
    with pytest.raises(ValueError, match="terminal"):
        store.finish(work, Step.FENCING)


def test_stale_claim_cannot_be_finished(store: WorkStore) -> None:
    _add(store)
    old = store.claim("ms1")
    assert old is not None
    assert store.release_server("ms1") == 1
    new = store.claim("ms2")
    assert new is not None
    assert new.generation > old.generation
    with pytest.raises(StaleWorkError) as info:
        store.finish(old)
    assert info.value.work_id == old.id
    with pytest.raises(StaleWorkError):
        store.reschedule(old, T0)
    with pytest.raises(StaleWorkError):
        store.update_step(old, Step.FENCING)
    with pytest.raises(StaleWorkError):
        store.confirm(old)
    store.confirm(new)
    finished = store.finish(new)
    assert finished.step is Step.DONE
    with pytest.raises(StaleWorkError):  # a finished work is nobody's claim any more
        store.confirm(finished)


def test_confirm_fails_once_the_claim_is_released(store: WorkStore) -> None:
    _add(store)
    held = store.claim("ms1")
    assert held is not None
    store.confirm(held)
    assert store.release_server("ms1") == 1
    with pytest.raises(StaleWorkError):
        store.confirm(held)


def test_release_server(store: WorkStore) -> None:
    for vm in ("a", "b", "c"):
        _add(store, vm)
    a = store.claim("ms1")
    b = store.claim("ms1")
    c = store.claim("ms2")
    assert a is not None
    assert b is not None
    assert c is not None
    store.finish(b)
    assert store.release_server("ms1") == 1  # b is Done: kept as it is
    assert store.get(a.id) == attrs.evolve(a, mgmt_server_id=None, taken=None)
    got_b = store.get(b.id)
    assert got_b is not None
    assert got_b.mgmt_server_id == "ms1"
    got_c = store.get(c.id)
    assert got_c is not None
    assert got_c.mgmt_server_id == "ms2"
    assert store.release_server("nobody") == 0


def test_mark_pending_as_investigating(store: WorkStore) -> None:
    pending = _add(store, "a")
    future = _add(store, "b", time_to_try=T0 + 100)
    done_ = _add(store, "c", step=Step.DONE)
    _add(store, "d")
    claimed = store.claim("ms1")
    assert claimed is not None
    assert claimed.id == pending.id
    assert store.mark_pending_as_investigating() == 1  # only d
    steps = {vm: store.pending_for_vm(vm) for vm in ("a", "b", "c", "d")}
    assert steps["a"][0].step is Step.SCHEDULED
    assert steps["b"][0].step is Step.SCHEDULED
    assert steps["c"] == []
    assert steps["d"][0].step is Step.INVESTIGATING
    assert store.mark_server_pending_as_investigating("ms1") == 1
    got = store.get(pending.id)
    assert got is not None
    assert (got.step, got.mgmt_server_id) == (Step.INVESTIGATING, "ms1")
    assert store.get(future.id) is not None
    got_done = store.get(done_.id)
    assert got_done is not None
    assert got_done.step is Step.DONE


def test_cleanup_uses_taken_else_created(store: WorkStore, clock: FakeClock) -> None:
    never_taken = _add(store, "a", step=Step.CANCELLED)
    error = _add(store, "e", step=Step.ERROR)
    _add(store, "b")
    _add(store, "p")
    clock.advance(100)
    b = store.claim("ms1")
    assert b is not None
    store.finish(b)
    clock.advance(50)
    # never_taken: created 150 s ago; b: taken 50 s ago; p: pending; error: kept.
    assert store.cleanup(120) == 1
    assert store.get(never_taken.id) is None
    assert store.get(b.id) is not None
    assert store.cleanup(40) == 1
    assert store.get(b.id) is None
    assert store.get(error.id) is not None
    assert len(store.pending_for_vm("p")) == 1


def test_pending_queries(store: WorkStore) -> None:
    ha = _add(store, "vm1", host_id="h1")
    stop = _add(store, "vm1", type=WorkType.FORCE_STOP, host_id="h1")
    _add(store, "vm1", step=Step.DONE, host_id="h1")
    other = _add(store, "vm2", host_id="h1", step=Step.INVESTIGATING)
    _add(store, "vm3", host_id="h2")
    assert [w.id for w in store.pending_for_vm("vm1")] == [ha.id, stop.id]
    assert [w.id for w in store.pending_ha_for_host("h1")] == [ha.id, other.id]
    assert store.pending_ha_for_host("h9") == []
    assert store.has_been_scheduled("vm1", WorkType.FORCE_STOP)
    assert not store.has_been_scheduled("vm1", WorkType.DESTROY)
    assert not store.has_been_scheduled("vm2", WorkType.FORCE_STOP)
    # Taken works do not count (CloudStack hasBeenScheduled: taken IS NULL).
    while store.claim("ms1") is not None:
        pass
    assert not store.has_been_scheduled("vm1", WorkType.FORCE_STOP)
    assert store.delete([stop.id]) == 1
    assert store.delete([]) == 0


def test_next_generation_is_monotonic_per_vm(store: WorkStore) -> None:
    assert store.current_generation("vm1") == 0
    assert [store.next_generation("vm1") for _ in range(3)] == [1, 2, 3]
    assert store.next_generation("vm2") == 1
    _add(store, "vm1")
    _add(store, "vm1")
    first = store.claim("ms1")
    second = store.claim("ms1")
    assert first is not None
    assert second is not None
    assert (first.generation, second.generation) == (4, 5)
    assert store.current_generation("vm1") == 5


@pytest.mark.parametrize(
    ("column", "value"), [("type", "Teleport"), ("step", "Dancing"), ("vm_type", "Toaster")]
)
def test_hand_edited_row_raises_naming_the_row(store: WorkStore, column: str, value: str) -> None:
    bad = _add(store, "bad")
    good = _add(store, "good")
    with store.engine.begin() as conn:
        conn.execute(op_ha_work.update().where(op_ha_work.c.id == bad.id).values({column: value}))
    with pytest.raises(UnreadableWorkError) as info:
        store.get(bad.id)
    assert (info.value.work_id, info.value.column, info.value.value) == (bad.id, column, value)
    with pytest.raises(UnreadableWorkError, match=f"row {bad.id}"):
        store.pending_for_vm("bad")
    # The claim of the bad row is committed, then reported; the caller marks it Error.
    with pytest.raises(UnreadableWorkError) as claimed:
        store.claim("ms1")
    assert claimed.value.work_id == bad.id
    assert store.mark_error(bad.id)
    assert not store.mark_error(bad.id + 1000)
    if column != "step":
        with pytest.raises(UnreadableWorkError):
            store.get(bad.id)
    else:
        got = store.get(bad.id)
        assert got is not None
        assert got.step is Step.ERROR
    nxt = store.claim("ms1")
    assert nxt is not None
    assert nxt.id == good.id


def test_null_reason_reads_as_unknown(store: WorkStore) -> None:
    work = _add(store, reason=ReasonType.HOST_DOWN)
    with store.engine.begin() as conn:
        conn.execute(op_ha_work.update().where(op_ha_work.c.id == work.id).values(reason=None))
    got = store.get(work.id)
    assert got is not None
    assert got.reason is ReasonType.UNKNOWN


# -- migrations ----------------------------------------------------------------


def _schema(engine: sa.Engine) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    shape: dict[str, Any] = {}
    for table in ("op_ha_work", "op_ha_generation", "ha_config", "cloudha_host"):
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c["default"])
                for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
        }
    return shape


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_alembic_upgrade_matches_create_schema(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    eng = sa.create_engine(_engine_url(request, backend, tmp_path))
    try:
        create_schema(eng)
        expected = _schema(eng)
        drop_schema(eng)
        upgrade(eng)
        assert _schema(eng) == expected
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == (
                "0004"
            )
        upgrade(eng)  # idempotent at head
        store = WorkStore(eng, FakeClock(T0))
        _add(store)
        assert store.claim("ms1") is not None
    finally:
        eng.dispose()


# -- concurrency ---------------------------------------------------------------


def _fill(engine: sa.Engine, count: int) -> None:
    now = SystemClock().now()
    rows = [
        {
            "instance_id": f"vm-{i % 97}",
            "type": WorkType.HA.value,
            "step": Step.SCHEDULED.value,
            "state": VmState.RUNNING.value,
            "vm_type": VmType.USER.value,
            "created": now,
            "time_to_try": 0.0,
        }
        for i in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(op_ha_work.insert(), rows)


def _spawn(mode: str, url: str, server_id: str, number: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, url, server_id, str(number)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 60.0) -> None:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"worker {process.args!r} timed out")
    assert process.returncode == 0, f"worker failed ({process.returncode}):\n{out}\n{err}"


def _counts(engine: sa.Engine, table: sa.Table) -> dict[int, int]:
    stmt = sa.select(table.c.work_id, sa.func.count()).group_by(table.c.work_id)
    with engine.connect() as conn:
        return {int(w): int(n) for w, n in conn.execute(stmt)}


def _steps(engine: sa.Engine) -> dict[str, int]:
    stmt = sa.select(op_ha_work.c.step, sa.func.count()).group_by(op_ha_work.c.step)
    with engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(stmt)}


@pytest.mark.parametrize(("backend", "works"), [("postgres", 2000), ("sqlite", 500)])
def test_four_processes_five_threads_claim_each_work_once(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, works: int
) -> None:
    url = _engine_url(request, backend, tmp_path)
    eng = sa.create_engine(url)
    try:
        create_schema(eng)
        record_metadata.create_all(eng)
        _fill(eng, works)
        workers = [_spawn("claim-all", url, f"ms{i}", 5) for i in range(4)]
        try:
            for worker in workers:
                _finish(worker)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.communicate()
        claimed = _counts(eng, claims)
        finished = _counts(eng, done)
        assert len(claimed) == works
        assert set(claimed.values()) == {1}
        assert finished == claimed
        assert _steps(eng) == {"Done": works}
        with eng.connect() as conn:
            servers = conn.execute(
                sa.select(claims.c.server_id, sa.func.count()).group_by(claims.c.server_id)
            ).all()
        assert sum(n for _s, n in servers) == works
    finally:
        eng.dispose()


def test_a_schema_created_before_the_store_cannot_lock_out_new_connections(
    tmp_path: Path,
) -> None:
    # create_schema pools a connection before WorkStore installs its hooks;
    # the switch to WAL must still happen at once, not later on a new
    # connection while another one is in a transaction ("database is locked").
    path = tmp_path / "queue.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        create_schema(engine)
        store = WorkStore(engine, SystemClock())
        raw = sqlite3.connect(path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            raw.close()
        store.add("vm1", WorkType.HA, VmState.RUNNING)
        with engine.begin() as held:  # a worker's transaction holds the write lock
            held.execute(sa.select(op_ha_work.c.id)).all()
            # Another worker's pool opens a new connection meanwhile: its set-up
            # must not need the file to itself.
            fresh = engine.raw_connection()
            fresh.close()
        assert store.claim("ms1") is not None
    finally:
        engine.dispose()


def test_a_process_that_loses_the_race_to_switch_to_wal_waits_for_the_winner(
    tmp_path: Path,
) -> None:
    # Several worker processes start on a file still in rollback-journal mode:
    # while one of them holds its write lock, another's switch to WAL fails
    # at once with "database is locked" (SQLite skips the busy handler there).
    # The store must wait and retry, not die at start.
    path = tmp_path / "queue.db"
    plain = sa.create_engine(f"sqlite:///{path}")
    create_schema(plain)
    plain.dispose()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        other.execute("BEGIN IMMEDIATE")  # the other process, mid-claim
        probe = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("PRAGMA journal_mode = WAL")  # at once, despite the timeout
        finally:
            probe.close()
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            store = WorkStore(engine, SystemClock())
            release.join()
            store.add("vm1", WorkType.HA, VmState.RUNNING)
            assert store.claim("ms1") is not None
        finally:
            engine.dispose()
    finally:
        other.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        check.close()
