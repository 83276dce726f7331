"""A separate process that claims HA works, for the multi-process store tests.

Usage (``PYTHONPATH`` must hold the repository root)::

    python ha_store_worker.py claim-all URL SERVER_ID THREADS
        THREADS threads claim works for SERVER_ID until none is left; each
        claim is recorded in ``ha_claims`` and each finished work in
        ``ha_done``; exit 0, or 1 on any unexpected error.

    python ha_store_worker.py claim-and-hang URL SERVER_ID COUNT
        Claim COUNT works (recorded in ``ha_claims``), print ``ready``, then
        sleep (at most 120 s) without finishing them: the test SIGKILLs it.

The recording tables are :data:`claims` and :data:`done` in
:data:`record_metadata`; the test creates them.
"""

from __future__ import annotations

import sys
import threading
import time

import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import StaleWorkError, Step, WorkStore

__all__ = ["claims", "done", "main", "record_metadata"]

record_metadata = sa.MetaData()
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


def main(argv: list[str]) -> int:
    """Run one worker; see the module docstring."""
    mode, url, server_id, number = argv[1], argv[2], argv[3], int(argv[4])
    engine = sa.create_engine(url, pool_size=max(5, number), max_overflow=0)
    try:
        store = WorkStore(engine, SystemClock())
        if mode == "claim-all":
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
        if mode == "claim-and-hang":
            for _ in range(number):
                work = store.claim(server_id)
                if work is None:
                    break
                with engine.begin() as conn:
                    conn.execute(
                        claims.insert().values(
                            work_id=work.id, server_id=server_id, generation=work.generation
                        )
                    )
            print("ready", flush=True)
            time.sleep(_HANG_SECONDS)  # "mid-work": the test SIGKILLs us here
            return 0
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
