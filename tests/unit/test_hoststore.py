"""The SQL host table (cloudha.hoststore) on SQLite: the port's contract, sync, readiness."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from cloudha.errors import StoreError, StoreUnavailableError
from cloudha.ha.store import cloudha_host, create_schema, drop_schema, metadata, upgrade
from cloudha.hoststore import HostRow, SqlHostDirectory, SyncResult
from cloudha.model import Host, HypervisorType
from cloudha.ports import KEEP, HostDirectory, StatusChange
from cloudha.status import Event, Status
from cloudha.testing import FakeClock, InMemoryHostDirectory
from cloudha.testing.contract import check_host_directory

T0 = dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()

H1 = Host("h1", cluster="c1", pod="p1", zone="z1", private_ip="10.0.0.1", rack="r1")
H2 = Host("h2", cluster="c1", pod="p1", zone="z1", private_ip="10.0.0.2", watchdog=True)
H3 = Host("h3", cluster="c2", pod="p2", zone="z1", private_ip="10.0.0.3")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'hosts.db'}")
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def directory(engine: sa.Engine, clock: FakeClock) -> SqlHostDirectory:
    return SqlHostDirectory(engine, clock)


def connect(directory: HostDirectory, host_id: str, owner: str = "ms1") -> Host:
    """What AgentManager.agent_connected does: AgentConnected then Ready."""
    host = directory.find_host(host_id)
    assert host is not None
    assert directory.update_status(
        StatusChange(
            host_id,
            host.status,
            Status.CONNECTING,
            Event.AGENT_CONNECTED,
            host.update_count,
            last_ping=T0,
            management_server_id=owner,
        )
    )
    connecting = directory.find_host(host_id)
    assert connecting is not None
    assert directory.update_status(
        StatusChange(host_id, Status.CONNECTING, Status.UP, Event.READY, connecting.update_count)
    )
    up = directory.find_host(host_id)
    assert up is not None
    return up


# -- the port ----------------------------------------------------------------------


def test_it_is_a_host_directory_and_passes_the_contract(directory: SqlHostDirectory) -> None:
    assert isinstance(directory, HostDirectory)
    directory.sync([H1, H2])
    check_host_directory(directory, "h1")  # a host with no status yet
    connect(directory, "h2")
    check_host_directory(directory, "h2")  # an Up, owned host


def test_the_in_memory_directory_passes_the_same_contract() -> None:
    check_host_directory(InMemoryHostDirectory([H1]), "h1")
    check_host_directory(InMemoryHostDirectory([attrs.evolve(H1, status=Status.UP)]), "h1")


def test_a_new_host_has_no_status_no_owner_and_the_agent_connection_brings_it_up(
    directory: SqlHostDirectory,
) -> None:
    dynamic = attrs.evolve(
        H1, status=Status.UP, management_server_id="msX", last_ping=5.0, update_count=9
    )
    assert directory.sync([dynamic]) == SyncResult(added=("h1",))
    host = directory.find_host("h1")
    assert host == H1  # the static columns; the given dynamic ones are ignored
    assert (host.status, host.management_server_id, host.update_count, host.last_ping) == (
        None,
        None,
        0,
        0.0,
    )
    up = connect(directory, "h1")
    assert (up.status, up.management_server_id, up.update_count, up.last_ping) == (
        Status.UP,
        "ms1",
        2,
        T0,
    )


def test_list_hosts_filters_by_every_field_and_sorts_by_id(directory: SqlHostDirectory) -> None:
    directory.sync([H3, H1, H2])
    connect(directory, "h2", owner="ms2")
    assert [h.id for h in directory.list_hosts()] == ["h1", "h2", "h3"]
    assert [h.id for h in directory.list_hosts(cluster="c1")] == ["h1", "h2"]
    assert [h.id for h in directory.list_hosts(pod="p2")] == ["h3"]
    assert [h.id for h in directory.list_hosts(zone="z1", cluster="c2")] == ["h3"]
    assert [h.id for h in directory.list_hosts(management_server_id="ms2")] == ["h2"]
    assert directory.list_hosts(zone="z9") == []


def test_update_status_is_optimistic_and_honours_keep(directory: SqlHostDirectory) -> None:
    directory.sync([H1])
    up = connect(directory, "h1")
    stale = StatusChange("h1", Status.UP, Status.ALERT, Event.PING_TIMEOUT, up.update_count - 1)
    assert not directory.update_status(stale)
    wrong_from = StatusChange("h1", Status.DOWN, Status.ALERT, Event.PING_TIMEOUT, up.update_count)
    assert not directory.update_status(wrong_from)
    assert not directory.update_status(attrs.evolve(stale, host_id="nope"))
    assert directory.find_host("h1") == up
    change = StatusChange(
        "h1",
        Status.UP,
        Status.DISCONNECTED,
        None,
        up.update_count,
        disconnected_on=T0 + 7,
        management_server_id=None,
    )
    assert directory.update_status(change)
    after = directory.find_host("h1")
    assert after == attrs.evolve(
        up,
        status=Status.DISCONNECTED,
        update_count=up.update_count + 1,
        disconnected_on=T0 + 7,
        management_server_id=None,
    )
    assert change.last_ping is KEEP


# -- sync --------------------------------------------------------------------------


def test_sync_updates_static_columns_and_keeps_the_dynamic_state(
    directory: SqlHostDirectory,
) -> None:
    directory.sync([H1, H2])
    up = connect(directory, "h1")
    moved = attrs.evolve(H1, rack="r9", private_ip="10.0.9.1", hypervisor=HypervisorType.KVM)
    assert directory.sync([moved, H2]) == SyncResult(updated=("h1",))
    after = directory.find_host("h1")
    assert after == attrs.evolve(up, rack="r9", private_ip="10.0.9.1")
    # The same inventory again changes nothing, not even update_count.
    assert directory.sync([moved, H2]) == SyncResult()
    assert not directory.sync([moved, H2]).changed
    assert directory.find_host("h1") == after


def test_a_host_dropped_from_the_inventory_is_removed_not_deleted_and_comes_back(
    directory: SqlHostDirectory, engine: sa.Engine
) -> None:
    directory.sync([H1, H2])
    up = connect(directory, "h1")
    assert directory.sync([H2]) == SyncResult(removed=("h1",))
    assert directory.find_host("h1") is None
    assert [h.id for h in directory.list_hosts()] == ["h2"]
    assert not directory.update_status(
        StatusChange("h1", Status.UP, Status.ALERT, Event.PING_TIMEOUT, up.update_count)
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cloudha_host)).scalar() == 2
    rows = {row.host.id: row for row in directory.rows()}
    assert rows["h1"].removed
    assert rows["h1"].host == up  # its last state
    assert directory.sync([H2]) == SyncResult()  # removed once
    # Back in the inventory (with a new rack): its old status, owner and count again.
    back = attrs.evolve(H1, rack="r2")
    assert directory.sync([back, H2]) == SyncResult(added=("h1",))
    assert directory.find_host("h1") == attrs.evolve(up, rack="r2")


def test_an_empty_inventory_removes_every_host(directory: SqlHostDirectory) -> None:
    directory.sync([H1, H2])
    assert directory.sync([]) == SyncResult(removed=("h1", "h2"))
    assert directory.list_hosts() == []


def test_sync_takes_any_iterable_and_refuses_a_duplicate_id(directory: SqlHostDirectory) -> None:
    assert directory.sync(h for h in (H2, H1)) == SyncResult(added=("h1", "h2"))
    with pytest.raises(ValueError, match="'h1' is given twice"):
        directory.sync([H1, attrs.evolve(H1, rack="r5")])
    assert directory.find_host("h1") == H1


def test_two_directories_syncing_the_same_new_host_add_it_once(
    engine: sa.Engine, clock: FakeClock
) -> None:
    first, second = SqlHostDirectory(engine, clock), SqlHostDirectory(engine, clock)
    assert first.sync([H1]).added == ("h1",)
    assert second.sync([H1]) == SyncResult()


# -- fence readiness and rows ------------------------------------------------------


def test_fence_readiness_is_noted_with_the_clock_and_read_back_in_rows(
    directory: SqlHostDirectory, clock: FakeClock
) -> None:
    directory.sync([H1, H2, H3])
    assert [r.fence_ready for r in directory.rows()] == [None, None, None]
    assert directory.rows()[0] == HostRow(host=H1)
    written = directory.note_fence_readiness(
        {
            "h1": (True, "ipmitool: power on"),
            "h2": (False, "BMC unreachable: timed out"),
            "h3": (None, "no out-of-band management in the inventory"),
            "ghost": (True, "not in the table"),
        }
    )
    assert written == 3
    rows = {row.host.id: row for row in directory.rows()}
    assert set(rows) == {"h1", "h2", "h3"}
    noted = clock.now()
    assert noted.tzinfo is not None
    assert (rows["h1"].fence_ready, rows["h1"].fence_detail) == (True, "ipmitool: power on")
    assert (rows["h2"].fence_ready, rows["h2"].fence_detail) == (
        False,
        "BMC unreachable: timed out",
    )
    assert rows["h3"].fence_ready is None
    assert all(row.fence_checked_at == noted for row in rows.values())
    assert directory.note_fence_readiness({}) == 0
    clock.advance(30)
    directory.note_fence_readiness({"h1": (False, "power status failed")})
    again = {row.host.id: row for row in directory.rows()}
    assert (again["h1"].fence_ready, again["h1"].fence_checked_at) == (
        False,
        noted + dt.timedelta(seconds=30),
    )
    assert again["h2"] == rows["h2"]
    # Readiness is not static: a sync keeps it, a removed host keeps it too.
    directory.sync([H1, H2])
    assert {row.host.id: row.fence_ready for row in directory.rows()} == {
        "h1": False,
        "h2": False,
        "h3": None,
    }
    assert [row.host.id for row in directory.rows() if row.removed] == ["h3"]


# -- errors ------------------------------------------------------------------------


def test_a_row_with_an_unknown_status_is_a_store_error_naming_host_column_value(
    directory: SqlHostDirectory, engine: sa.Engine
) -> None:
    directory.sync([H1])
    with engine.begin() as conn:
        conn.execute(cloudha_host.update().values(status="Sleeping"))
    with pytest.raises(StoreError, match=r"'h1': status 'Sleeping' is not a Status"):
        directory.find_host("h1")
    with pytest.raises(StoreError, match="'h1'"):
        directory.rows()


def test_a_missing_table_is_a_store_error(engine: sa.Engine, clock: FakeClock) -> None:
    drop_schema(engine)
    directory = SqlHostDirectory(engine, clock)
    with pytest.raises(StoreError, match="host directory failed") as caught:
        directory.list_hosts()
    assert not isinstance(caught.value, StoreUnavailableError)


def test_an_unopenable_database_is_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'hosts.db'}")
    with pytest.raises(StoreUnavailableError, match="host directory unavailable"):
        SqlHostDirectory(engine, clock)


class _FakeDBAPI:
    """Enough of a DB-API module to build (never connect) an engine of another dialect."""

    paramstyle = "pyformat"


def test_only_sqlite_and_postgresql(clock: FakeClock) -> None:
    engine = sa.create_engine("mysql+pymysql://u@127.0.0.1/db", module=_FakeDBAPI)
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        SqlHostDirectory(engine, clock)


def test_repr_names_the_database_but_not_its_password(clock: FakeClock) -> None:
    engine = sa.create_engine("postgresql+psycopg://cloudha:s3cret@127.0.0.1:5432/ha")
    shown = repr(SqlHostDirectory(engine, clock))  # no connection is made for PostgreSQL
    assert "127.0.0.1:5432/ha" in shown
    assert "s3cret" not in shown


# -- the migration -----------------------------------------------------------------


def _shape(engine: sa.Engine) -> dict[str, object]:
    inspector = sa.inspect(engine)
    return {
        "columns": [
            (c["name"], str(c["type"]), c["nullable"], c["default"])
            for c in inspector.get_columns("cloudha_host")
        ],
        "pk": inspector.get_pk_constraint("cloudha_host"),
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes("cloudha_host")
        ),
    }


def test_the_migration_makes_the_table_create_schema_makes(
    tmp_path: Path, clock: FakeClock
) -> None:
    made = sa.create_engine(f"sqlite:///{tmp_path / 'made.db'}")
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    try:
        create_schema(made)
        upgrade(migrated)
        assert _shape(migrated) == _shape(made)
        assert set(sa.inspect(migrated).get_table_names()) >= set(metadata.tables)
        directory = SqlHostDirectory(migrated, clock)
        directory.sync([H1])
        assert directory.find_host("h1") == H1
    finally:
        made.dispose()
        migrated.dispose()
