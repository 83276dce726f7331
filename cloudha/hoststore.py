"""The host table in SQL: the :class:`~cloudha.ports.HostDirectory` of a fleet without orchestrator.

:class:`SqlHostDirectory` keeps CloudStack's ``host`` table, as far as cloudha
reads it, in the table ``cloudha_host`` (:data:`cloudha.ha.store.cloudha_host`)
of the same database as the HA work queue (SQLite or PostgreSQL). ``cloudha
run`` fills it from the inventory (:meth:`SqlHostDirectory.sync`), the
management server changes host status through the port's optimistic
:meth:`~SqlHostDirectory.update_status`, and ``cloudha status`` and ``cloudha
hosts`` read it (:meth:`~SqlHostDirectory.rows`).

A row has two kinds of columns:

* **static** ones, from the inventory: every field of :class:`~cloudha.model.Host`
  but the dynamic ones (id, name, type, hypervisor, resource state, cluster,
  pod, zone, address, watchdog, rack). :meth:`~SqlHostDirectory.sync`
  writes them and nothing else writes them;
* **dynamic** ones, which only :meth:`~SqlHostDirectory.update_status` (the
  status, ``update_count``, ``last_ping``, the owner and ``disconnected_on``)
  and :meth:`~SqlHostDirectory.note_fence_readiness` write.

A host dropped from the inventory is marked ``removed``, never deleted: the
port no longer shows it (``find_host`` returns None, ``list_hosts`` skips it,
``update_status`` refuses it), and when it comes back it has its old status,
owner and ``update_count`` again. A host new to the table starts with no
status (``None``, as a CloudStack host that has never connected) and no
owner: its agent's first connection (``AgentConnected``, then ``Ready``)
brings it Up and under the monitor, and until then nothing investigates or
fences a host that was never seen alive.

Database errors leave it as :class:`~cloudha.errors.StoreUnavailableError`
(transient) or :class:`~cloudha.errors.StoreError`, as from the work store; a
row holding a value that is not a known status, type, hypervisor or
resource state raises :class:`~cloudha.errors.StoreError` naming the host,
the column and the value. The schema comes with
:func:`cloudha.ha.store.create_schema` or :func:`cloudha.ha.store.upgrade`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, Row

from cloudha.clock import Clock
from cloudha.errors import StoreError
from cloudha.ha.store import _translated, cloudha_host, prepare_sqlite_engine
from cloudha.model import Host, HostType, HypervisorType, ResourceState
from cloudha.ports import KEEP, StatusChange
from cloudha.status import Status

__all__ = ["HostRow", "SqlHostDirectory", "SyncResult"]

_H = cloudha_host.c
_WHAT: Final = "host directory"

STATIC_COLUMNS: Final = (
    "name",
    "type",
    "hypervisor",
    "resource_state",
    "cluster",
    "pod",
    "zone",
    "private_ip",
    "watchdog",
    "rack",
)
"""The columns :meth:`SqlHostDirectory.sync` writes (besides ``id``)."""


@attrs.frozen
class SyncResult:
    """What :meth:`SqlHostDirectory.sync` changed: host ids, sorted.

    Attributes:
        added: hosts new to the table, or back after being removed.
        updated: hosts whose static columns changed.
        removed: hosts no longer in the inventory, now marked removed.
    """

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True when the sync changed anything."""
        return bool(self.added or self.updated or self.removed)


@attrs.frozen
class HostRow:
    """One row of the host table as ``cloudha status`` shows it, removed hosts included.

    Attributes:
        host: the row as a :class:`~cloudha.model.Host` (its last state, for a removed host).
        removed: the host is no longer in the inventory.
        fence_ready: whether a fence path was ready at the last check
            (None: unknown, or never checked).
        fence_detail: what the last check said ("" before any).
        fence_checked_at: when it was checked (aware UTC), or None.
    """

    host: Host
    removed: bool = False
    fence_ready: bool | None = None
    fence_detail: str = ""
    fence_checked_at: dt.datetime | None = None


_E = TypeVar("_E", bound=enum.Enum)


def _enum(kind: type[_E], row: Row[Any], column: str) -> _E:
    value = row._mapping[column]
    try:
        return kind(value)
    except ValueError:
        raise StoreError(
            f"cloudha_host row {row.id!r}: {column} {value!r} is not a {kind.__name__}"
        ) from None


def _host(row: Row[Any]) -> Host:
    return Host(
        id=str(row.id),
        name=str(row.name),
        type=_enum(HostType, row, "type"),
        hypervisor=_enum(HypervisorType, row, "hypervisor"),
        status=None if row.status is None else _enum(Status, row, "status"),
        resource_state=_enum(ResourceState, row, "resource_state"),
        cluster=row.cluster,
        pod=str(row.pod),
        zone=str(row.zone),
        private_ip=row.private_ip,
        last_ping=float(row.last_ping),
        management_server_id=row.management_server_id,
        disconnected_on=None if row.disconnected_on is None else float(row.disconnected_on),
        update_count=int(row.update_count),
        watchdog=bool(row.watchdog),
        rack=row.rack,
        owner_epoch=int(row.owner_epoch),
    )


def _static(host: Host) -> dict[str, Any]:
    """The static columns of ``host``, as stored."""
    return {
        "name": host.name,
        "type": host.type.value,
        "hypervisor": host.hypervisor.value,
        "resource_state": host.resource_state.value,
        "cluster": host.cluster,
        "pod": host.pod,
        "zone": host.zone,
        "private_ip": host.private_ip,
        "watchdog": bool(host.watchdog),
        "rack": host.rack,
    }


class SqlHostDirectory:
    """The host table on one database: the SQL adapter of :class:`~cloudha.ports.HostDirectory`.

    Thread-safe (each call has its own connection and transaction from the
    engine's pool) and safe across processes sharing the database. The schema
    must exist (:func:`cloudha.ha.store.create_schema` / ``upgrade``).

    Args:
        engine: ``sqlite:///...`` or ``postgresql+psycopg://...``; SQLite engines
            are prepared with :func:`cloudha.ha.store.prepare_sqlite_engine`.
            The caller owns the engine.
        clock: the only source of time (``fence_checked_at``).
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        with _translated(_WHAT):
            prepare_sqlite_engine(engine)
        self._engine = engine
        self._clock = clock

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with _translated(_WHAT), self._engine.begin() as conn:
            yield conn

    def _insert(self) -> pg_dialect.Insert | sqlite_dialect.Insert:
        """The dialect's INSERT (for ``ON CONFLICT DO NOTHING``)."""
        if self._engine.dialect.name == "postgresql":
            return pg_dialect.insert(cloudha_host)
        return sqlite_dialect.insert(cloudha_host)

    @property
    def engine(self) -> Engine:
        """The engine given at construction."""
        return self._engine

    # -- the port --------------------------------------------------------------

    def find_host(self, host_id: str) -> Host | None:
        """The host's row, or None when there is none or it was removed."""
        stmt = sa.select(cloudha_host).where(_H.id == host_id, _H.removed.is_(sa.false()))
        with self._tx() as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else _host(row)

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        """The hosts (not removed) matching every given filter, by id."""
        where: list[sa.ColumnElement[bool]] = [_H.removed.is_(sa.false())]
        for column, value in (
            (_H.cluster, cluster),
            (_H.pod, pod),
            (_H.zone, zone),
            (_H.management_server_id, management_server_id),
        ):
            if value is not None:
                where.append(column == value)
        stmt = sa.select(cloudha_host).where(*where).order_by(_H.id)
        with self._tx() as conn:
            rows = conn.execute(stmt).all()
        return [_host(row) for row in rows]

    def update_status(self, change: StatusChange) -> bool:
        """Apply ``change`` when the row still has its ``from_status`` and ``update_count``.

        One ``UPDATE ... WHERE id = ? AND status IS NOT DISTINCT FROM ? AND
        update_count = ? AND NOT removed``: it sets the status and every
        column not given as ``KEEP``, bumps ``update_count`` and returns True,
        or changes nothing and returns False.
        """
        values: dict[str, Any] = {
            "status": None if change.to_status is None else change.to_status.value,
            "update_count": _H.update_count + 1,
        }
        if change.owner_epoch is not KEEP:
            values["owner_epoch"] = int(change.owner_epoch)
        if change.last_ping is not KEEP:
            values["last_ping"] = float(change.last_ping)
        if change.management_server_id is not KEEP:
            values["management_server_id"] = change.management_server_id
        if change.disconnected_on is not KEEP:
            values["disconnected_on"] = float(change.disconnected_on)
        from_status = None if change.from_status is None else change.from_status.value
        stmt = (
            cloudha_host.update()
            .where(
                _H.id == change.host_id,
                _H.removed.is_(sa.false()),
                _H.status.is_not_distinct_from(from_status),
                _H.update_count == change.expected_update_count,
            )
            .values(**values)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- the inventory ---------------------------------------------------------

    def sync(self, hosts: Iterable[Host]) -> SyncResult:
        """Make the table hold exactly ``hosts`` (one transaction).

        A host new to the table is inserted with its static columns, no
        status, no owner, ``update_count`` 0 and ``last_ping`` 0 (the dynamic
        fields of the given :class:`~cloudha.model.Host` are ignored). An
        existing row gets the host's static columns and keeps its dynamic
        ones; a removed row comes back with its old state. Rows of hosts not
        in ``hosts`` are marked removed (never deleted). ``update_count`` is
        not bumped: it versions the status, which a sync never changes.

        Raises:
            ValueError: two hosts with the same id.
        """
        wanted: dict[str, Host] = {}
        for host in hosts:
            if host.id in wanted:
                raise ValueError(f"host {host.id!r} is given twice")
            wanted[host.id] = host
        added: list[str] = []
        updated: list[str] = []
        removed: list[str] = []
        with self._tx() as conn:
            existing = {
                str(row.id): row
                for row in conn.execute(sa.select(cloudha_host).order_by(_H.id)).all()
            }
            for host_id, host in sorted(wanted.items()):
                static = _static(host)
                row = existing.get(host_id)
                if row is None:
                    # Another server syncing the same inventory may insert it first:
                    # its row then stands (same static columns) and it is not ours to add.
                    inserted = conn.execute(
                        self._insert()
                        .values(
                            id=host_id,
                            status=None,
                            update_count=0,
                            last_ping=0.0,
                            management_server_id=None,
                            disconnected_on=None,
                            removed=False,
                            **static,
                        )
                        .on_conflict_do_nothing(index_elements=[_H.id])
                        .returning(_H.id)
                    )
                    if inserted.first() is not None:
                        added.append(host_id)
                    continue
                stored = {name: row._mapping[name] for name in STATIC_COLUMNS}
                stored["watchdog"] = bool(stored["watchdog"])
                values: dict[str, Any] = {}
                if stored != static:
                    values.update(static)
                    if not row.removed:
                        updated.append(host_id)
                if row.removed:
                    values["removed"] = False
                    added.append(host_id)
                if values:
                    conn.execute(cloudha_host.update().where(_H.id == host_id).values(**values))
            gone = [i for i, row in existing.items() if i not in wanted and not row.removed]
            if gone:
                conn.execute(cloudha_host.update().where(_H.id.in_(gone)).values(removed=True))
                removed.extend(sorted(gone))
        return SyncResult(tuple(added), tuple(updated), tuple(removed))

    # -- what the daemon notes, what status reads ------------------------------

    def note_fence_readiness(self, readiness: Mapping[str, tuple[bool | None, str]]) -> int:
        """Record each host's fence readiness ``(ready, detail)``, checked now; how many rows.

        Hosts not in the table are skipped; removed ones are recorded too.
        """
        if not readiness:
            return 0
        now = self._clock.now()
        stmt = (
            cloudha_host.update()
            .where(_H.id == sa.bindparam("host_id"))
            .values(
                fence_ready=sa.bindparam("ready"),
                fence_detail=sa.bindparam("detail"),
                fence_checked_at=sa.bindparam("checked", type_=_H.fence_checked_at.type),
            )
        )
        params = [
            {"host_id": host_id, "ready": ready, "detail": detail, "checked": now}
            for host_id, (ready, detail) in sorted(readiness.items())
        ]
        with self._tx() as conn:
            result = conn.execute(stmt, params)
        return max(result.rowcount, 0)

    def rows(self) -> list[HostRow]:
        """Every row, removed ones included, by host id."""
        with self._tx() as conn:
            rows = conn.execute(sa.select(cloudha_host).order_by(_H.id)).all()
        return [
            HostRow(
                host=_host(row),
                removed=bool(row.removed),
                fence_ready=None if row.fence_ready is None else bool(row.fence_ready),
                fence_detail=row.fence_detail or "",
                fence_checked_at=row.fence_checked_at,
            )
            for row in rows
        ]

    def __repr__(self) -> str:
        return f"SqlHostDirectory({self._engine.url.render_as_string(hide_password=True)!r})"
