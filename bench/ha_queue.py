"""P8: HA work-queue throughput, ``WorkStore.claim`` + ``finish`` against raw SQL.

Two sides, each on a fresh database of the same kind, with the same engine
settings, the same number of worker threads and the same number of rows:

* **store**: ``N`` works added with :meth:`WorkStore.add` (not timed), then
  ``workers`` threads each loop ``claim("ms-bench")`` → ``finish(work)``
  until ``claim`` returns ``None``;
* **baseline**: ``N`` rows in a trivial table ``bench_queue(id, owner,
  taken, done)`` (not timed), then the same threads each loop, with plain
  ``sqlalchemy.text()``, one transaction ``UPDATE bench_queue SET owner = ?,
  taken = ? WHERE id = (SELECT id ... WHERE owner IS NULL ORDER BY id LIMIT 1)
  RETURNING id`` (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` in the subselect) and
  one transaction ``UPDATE bench_queue SET done = 1 WHERE id = ?``.

Both sides commit twice per work (the claim, the completion). The timed part
runs from the moment every thread is released until the last one finds the
queue empty; each engine's pool is filled with one connection per thread
before that. SQLite is a file in a fresh temporary directory, and both
engines go through :func:`cloudha.ha.store.prepare_sqlite_engine` (WAL,
``BEGIN IMMEDIATE``, busy timeout), which ``WorkStore`` applies to its own.
PostgreSQL is a throwaway server (``tests.integration.postgres``) with one
fresh database per side. The figure is store works/s ÷ baseline works/s.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import (
    Step,
    WorkStore,
    WorkType,
    create_schema,
    op_ha_work,
    prepare_sqlite_engine,
)
from cloudha.model import VmState

__all__ = [
    "QueueLine",
    "Throughput",
    "measure_baseline",
    "measure_store",
    "on_postgres",
    "p8_lines",
]

SERVER_ID = "ms-bench"
WORKERS = 5

_baseline_metadata = sa.MetaData()
_bench_queue = sa.Table(
    "bench_queue",
    _baseline_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("taken", sa.Double, nullable=True),
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),
)

_BASELINE_CLAIM = (
    "UPDATE bench_queue SET owner = :owner, taken = :taken "
    "WHERE id = (SELECT id FROM bench_queue WHERE owner IS NULL ORDER BY id LIMIT 1{lock}) "
    "RETURNING id"
)
_BASELINE_DONE = sa.text("UPDATE bench_queue SET done = 1 WHERE id = :id")


@dataclass(frozen=True)
class Throughput:
    """``works`` claimed and completed by the worker threads in ``seconds`` of wall time."""

    works: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.works / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class QueueLine:
    """One P8 line: store ÷ baseline throughput on one database kind (NaN when not measured)."""

    backend: str
    ratio: float
    detail: str


def _engine(url: str, workers: int) -> sa.Engine:
    """The engine both sides use: a pool with room for every thread, SQLite prepared."""
    engine = sa.create_engine(url, pool_size=workers, max_overflow=workers)
    prepare_sqlite_engine(engine)
    return engine


def _fill_pool(engine: sa.Engine, workers: int) -> None:
    """Open one pooled connection per thread, so no side pays for connecting in the timed part."""
    with contextlib.ExitStack() as stack:
        for _ in range(workers):
            stack.enter_context(engine.connect())


def _run_workers(workers: int, step: Callable[[], bool]) -> tuple[float, int]:
    """Run ``step`` in ``workers`` threads until it returns False; (seconds, successful steps)."""
    barrier = threading.Barrier(workers + 1)
    counts = [0] * workers
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            done = 0
            while step():
                done += 1
            counts[index] = done
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"bench-queue-{i}", daemon=True)
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"bench: a queue worker failed: {errors[0]!r}") from errors[0]
    return seconds, sum(counts)


def measure_store(url: str, works: int, workers: int = WORKERS) -> Throughput:
    """``workers`` threads drain ``works`` HA works with ``WorkStore.claim`` + ``finish``."""
    engine = _engine(url, workers)
    try:
        create_schema(engine)
        store = WorkStore(engine, SystemClock())
        for i in range(works):
            store.add(f"vm-{i:06d}", WorkType.HA, VmState.RUNNING, host_id="h-dead")
        _fill_pool(engine, workers)

        def step() -> bool:
            work = store.claim(SERVER_ID)
            if work is None:
                return False
            store.finish(work)
            return True

        seconds, done = _run_workers(workers, step)
        with engine.connect() as conn:
            finished = conn.execute(
                sa.select(sa.func.count()).where(
                    op_ha_work.c.step == Step.DONE.value,
                    op_ha_work.c.mgmt_server_id == SERVER_ID,
                )
            ).scalar_one()
        if done != works or finished != works:
            raise RuntimeError(f"bench: store drained {done}, {finished} Done, of {works} works")
        return Throughput(works, seconds)
    finally:
        engine.dispose()


def measure_baseline(url: str, works: int, workers: int = WORKERS) -> Throughput:
    """``workers`` threads drain ``works`` rows of a trivial table with two raw UPDATEs each."""
    engine = _engine(url, workers)
    try:
        _baseline_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(_bench_queue.insert(), [{"owner": None}] * works)
        lock = " FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
        claim = sa.text(_BASELINE_CLAIM.format(lock=lock))
        _fill_pool(engine, workers)

        def step() -> bool:
            with engine.begin() as conn:
                work_id = conn.execute(
                    claim, {"owner": SERVER_ID, "taken": time.time()}
                ).scalar_one_or_none()
            if work_id is None:
                return False
            with engine.begin() as conn:
                conn.execute(_BASELINE_DONE, {"id": work_id})
            return True

        seconds, done = _run_workers(workers, step)
        with engine.connect() as conn:
            finished = conn.execute(
                sa.text("SELECT count(*) FROM bench_queue WHERE done = 1 AND owner = :owner"),
                {"owner": SERVER_ID},
            ).scalar_one()
        if done != works or finished != works:
            raise RuntimeError(f"bench: baseline drained {done}, {finished} done, of {works} rows")
        return Throughput(works, seconds)
    finally:
        engine.dispose()


def _line(backend: str, store: Throughput, baseline: Throughput, where: str) -> QueueLine:
    return QueueLine(
        backend,
        store.per_second / baseline.per_second,
        (
            f"WorkStore {store.per_second:,.0f} works/s ({store.seconds:.2f} s), "
            f"raw SQL {baseline.per_second:,.0f} works/s ({baseline.seconds:.2f} s); {where}"
        ),
    )


@contextlib.contextmanager
def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cloudha-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'queue.db'}"


def _sqlite(works: int, workers: int) -> QueueLine:
    with _sqlite_url() as url:
        baseline = measure_baseline(url, works, workers)
    with _sqlite_url() as url:
        store = measure_store(url, works, workers)
    return _line("SQLite", store, baseline, "file in a temp dir, WAL, BEGIN IMMEDIATE")


_pg_databases = itertools.count(1)

_T = TypeVar("_T")


def on_postgres(prefixes: Sequence[str], run: Callable[..., _T]) -> _T | str:
    """``run(*urls)`` on a throwaway PostgreSQL, one fresh database per prefix.

    Returns what ``run`` returns, or the reason (one line) when no server
    could be started (binaries missing, no ``runuser`` ...).
    """
    try:
        from tests.integration.postgres import (
            PostgresUnavailableError,
            fresh_database,
            running_postgres,
        )
    except ImportError as exc:
        return str(exc)
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(running_postgres())
            urls = [
                stack.enter_context(fresh_database(server, f"{prefix}_{next(_pg_databases)}"))
                for prefix in prefixes
            ]
            return run(*urls)
    except PostgresUnavailableError as exc:
        text = str(exc).strip()
        return text.splitlines()[0] if text else repr(exc)


def _postgres(works: int, workers: int) -> QueueLine:
    def both(baseline_url: str, store_url: str) -> tuple[Throughput, Throughput]:
        return (
            measure_baseline(baseline_url, works, workers),
            measure_store(store_url, works, workers),
        )

    measured = on_postgres(["bench_baseline", "bench_store"], both)
    if isinstance(measured, str):
        return QueueLine("PostgreSQL", math.nan, f"NOT MEASURED: {measured}")
    baseline, store = measured
    return _line(
        "PostgreSQL",
        store,
        baseline,
        "throwaway server on 127.0.0.1 (fsync off), SKIP LOCKED, one fresh database per side",
    )


def p8_lines(works: int, workers: int = WORKERS) -> list[QueueLine]:
    """P8 on SQLite, then on PostgreSQL (NaN with the reason when no server can be started)."""
    return [_sqlite(works, workers), _postgres(works, workers)]
