"""A separate process that claims HA works, for the multi-process store tests.

Usage (``PYTHONPATH`` must hold the repository root)::

    python ha_store_worker.py claim-all URL SERVER_ID THREADS
        THREADS threads claim works for SERVER_ID until none is left; each
        claim is recorded in ``ha_claims`` and each finished work in
        ``ha_done``; exit 0, or 1 on any unexpected error.

    python ha_store_worker.py manager URL SERVER_ID THREADS [--left SERVER]
                              [--hang POINT --after N]
        A management server: the real HighAvailabilityManager of
        :func:`tests.integration.sql_orchestrator.make_manager` with
        ``ha.workers`` = THREADS on the shared database, ``start()``-ed (its
        own old claims released, due works marked Investigating). With
        ``--left SERVER`` it then takes over a departed server's works
        (``on_server_left``, printing ``left SERVER released K``). It waits
        until every work is terminal, ``stop()``s and exits 0 (1 when that
        takes more than 50 s or ``stop()`` fails).

        With ``--hang POINT`` (``stop``, ``stopped``, ``start`` or ``started``)
        the first N forced stops of the process go through; the VM of every
        later stop is doomed: at POINT of its restart (before the stop; after
        the stop committed, before the work records it; after the stop is
        recorded, before the start; after the start committed) the worker thread
        prints ``mid-work VM POINT`` and sleeps (at most 120 s) while it
        holds the work: the test SIGKILLs the process. So, once THREADS
        lines were printed, exactly N works are Done and THREADS are held
        half done.

The recording tables are :data:`claims` and :data:`done` in
:data:`record_metadata` (with the orchestrator's tables of
:mod:`tests.integration.sql_orchestrator`); the test creates them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import TERMINAL_STEPS, StaleWorkError, Step, WorkStore, op_ha_work
from tests.integration.sql_orchestrator import make_manager, record_metadata

__all__ = ["claims", "done", "main", "record_metadata"]

claims = sa.Table(
    "ha_claims",
    record_metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("work_id", sa.BigInteger, nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
)
done = sa.Table(
    "ha_done",
    record_metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("work_id", sa.BigInteger, nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
)

_HANG_SECONDS = 120.0
_MANAGER_DEADLINE = 50.0
_POLL = 0.05
_POINTS = ("stop", "stopped", "start", "started")


def _claim_all(store: WorkStore, server_id: str, errors: list[BaseException]) -> None:
    try:
        while (work := store.claim(server_id)) is not None:
            with store.engine.begin() as conn:
                conn.execute(
                    claims.insert().values(
                        work_id=work.id, server_id=server_id, generation=work.generation
                    )
                )
            try:
                store.finish(work, Step.DONE)
            except StaleWorkError:
                continue
            with store.engine.begin() as conn:
                conn.execute(done.insert().values(work_id=work.id, server_id=server_id))
    except BaseException as exc:
        errors.append(exc)


class _Saboteur:
    """The orchestrator hook of ``--hang``: lets ``after`` stops through, then hangs."""

    def __init__(self, point: str, after: int) -> None:
        self.point = point
        self.after = after
        self._lock = threading.Lock()
        self._stops = 0
        self._doomed: set[str] = set()

    def __call__(self, point: str, vm_id: str) -> None:
        with self._lock:
            if point == "stop":
                self._stops += 1
                if self._stops > self.after:
                    self._doomed.add(vm_id)
            if point != self.point or vm_id not in self._doomed:
                return
            print(f"mid-work {vm_id} {point}", flush=True)
        time.sleep(_HANG_SECONDS)  # "mid-work": the test SIGKILLs us here


def _open_works(engine: sa.Engine) -> int:
    stmt = (
        sa.select(sa.func.count())
        .select_from(op_ha_work)
        .where(op_ha_work.c.step.not_in([s.value for s in TERMINAL_STEPS]))
    )
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def _run_manager(engine: sa.Engine, server_id: str, threads: int, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ha_store_worker.py manager")
    parser.add_argument("--left")
    parser.add_argument("--hang", choices=_POINTS)
    parser.add_argument("--after", type=int, default=0)
    options = parser.parse_args(argv)
    hook = None if options.hang is None else _Saboteur(options.hang, options.after)
    manager = make_manager(engine, server_id, workers=threads, hook=hook)
    manager.start()
    if options.left is not None:
        released = manager.on_server_left(options.left)
        print(f"left {options.left} released {released}", flush=True)
    deadline = time.monotonic() + _MANAGER_DEADLINE
    while (still := _open_works(engine)) and time.monotonic() < deadline:
        time.sleep(_POLL)
    manager.stop(timeout=10.0)
    if still:
        print(f"manager {server_id}: {still} works still open after {_MANAGER_DEADLINE} s")
        return 1
    print(f"manager {server_id}: every work is terminal", flush=True)
    return 0


def main(argv: list[str]) -> int:
    """Run one worker; see the module docstring."""
    mode, url, server_id, number = argv[1], argv[2], argv[3], int(argv[4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    engine = sa.create_engine(url, pool_size=max(5, number + 3), max_overflow=5)
    try:
        if mode == "claim-all":
            store = WorkStore(engine, SystemClock())
            errors: list[BaseException] = []
            threads = [
                threading.Thread(target=_claim_all, args=(store, server_id, errors))
                for _ in range(number)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for error in errors:
                print(f"worker {server_id}: {error!r}", file=sys.stderr)
            return 1 if errors else 0
        if mode == "manager":
            return _run_manager(engine, server_id, number, argv[5:])
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
