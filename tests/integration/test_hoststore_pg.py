"""The SQL host table on a real PostgreSQL: the port's contract and racing status updates."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import upgrade
from cloudha.hoststore import SqlHostDirectory, SyncResult
from cloudha.model import Host
from cloudha.ports import StatusChange
from cloudha.status import Event, Status
from cloudha.testing.contract import check_host_directory
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

HOSTS = [Host(f"h{i}", cluster="c1", private_ip=f"10.0.0.{i}") for i in range(1, 5)]


@pytest.fixture
def engine(postgres_db: str) -> Iterator[sa.Engine]:  # noqa: F811
    eng = sa.create_engine(postgres_db, pool_size=10)
    try:
        upgrade(eng)
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def directory(engine: sa.Engine) -> SqlHostDirectory:
    directory = SqlHostDirectory(engine, SystemClock())
    assert directory.sync(HOSTS) == SyncResult(added=tuple(h.id for h in HOSTS))
    return directory


def test_the_contract_on_postgresql(directory: SqlHostDirectory) -> None:
    check_host_directory(directory, "h1")


def test_racing_updates_of_one_row_let_exactly_one_win_each_round(
    directory: SqlHostDirectory,
) -> None:
    """Threads on their own connections race the same optimistic change, round after round."""
    threads, rounds = 6, 25
    barrier = threading.Barrier(threads)
    wins: list[list[str]] = [[] for _ in range(rounds)]
    lock = threading.Lock()
    errors: list[BaseException] = []
    statuses = (Status.UP, Status.ALERT)

    def racer(name: str) -> None:
        try:
            for number in range(rounds):
                barrier.wait(30)
                host = directory.find_host("h1")
                assert host is not None
                barrier.wait(30)  # everyone has read the same row
                change = StatusChange(
                    "h1",
                    host.status,
                    statuses[number % 2],
                    Event.PING,
                    host.update_count,
                    management_server_id=name,
                )
                if directory.update_status(change):
                    with lock:
                        wins[number].append(name)
                barrier.wait(30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=racer, args=(f"ms{i}",)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors
    assert [len(w) for w in wins] == [1] * rounds
    final = directory.find_host("h1")
    assert final is not None
    assert final.update_count == rounds
    assert final.status is statuses[(rounds - 1) % 2]
    assert final.management_server_id == wins[-1][0]


def test_racing_updates_of_many_rows_never_lose_a_change(directory: SqlHostDirectory) -> None:
    """Two servers bump every host's count many times: each write lands exactly once."""
    per_thread = 40
    counts = {h.id: 0 for h in HOSTS}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def bumper(name: str) -> None:
        try:
            done = 0
            while done < per_thread:
                for host in directory.list_hosts():
                    change = StatusChange(
                        host.id,
                        host.status,
                        Status.UP,
                        Event.PING,
                        host.update_count,
                        management_server_id=name,
                    )
                    if directory.update_status(change):
                        with lock:
                            counts[host.id] += 1
                done += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=bumper, args=(f"ms{i}",)) for i in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors
    for host in directory.list_hosts():
        assert host.update_count == counts[host.id] > 0


def test_concurrent_syncs_of_one_inventory_add_each_host_once(engine: sa.Engine) -> None:
    """Two daemons starting on one database: ON CONFLICT keeps the second from failing."""
    results: list[SyncResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def sync() -> None:
        try:
            directory = SqlHostDirectory(engine, SystemClock())
            barrier.wait(30)
            results.append(directory.sync(HOSTS))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=sync) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    added = sorted(h for result in results for h in result.added)
    assert added == sorted(h.id for h in HOSTS)
    assert [h.id for h in SqlHostDirectory(engine, SystemClock()).list_hosts()] == [
        h.id for h in HOSTS
    ]


def test_fence_readiness_round_trips_on_postgresql(directory: SqlHostDirectory) -> None:
    assert directory.note_fence_readiness({"h1": (True, "on"), "h2": (None, "no BMC")}) == 2
    rows = {row.host.id: row for row in directory.rows()}
    assert (rows["h1"].fence_ready, rows["h1"].fence_detail) == (True, "on")
    assert rows["h2"].fence_ready is None
    checked = rows["h1"].fence_checked_at
    assert checked is not None
    assert checked.tzinfo is not None
    assert rows["h3"].fence_checked_at is None
