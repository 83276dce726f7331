"""The registry of management servers sharing one database (CloudStack's ``mshost``).

:class:`SqlServerRegistry` is the SQL adapter of :class:`~cloudha.ports.ServerRegistry`
on the table ``cloudha_management_server`` (:data:`cloudha.ha.store.cloudha_management_server`),
in the same database as the HA work queue and the host table. Every method is
one conditional statement in its own transaction, so it is atomic across
processes on SQLite and PostgreSQL alike:

* :meth:`~SqlServerRegistry.register` bumps the row's ``epoch`` (inserting the
  row at epoch 1 the first time) and sets it Up;
* :meth:`~SqlServerRegistry.heartbeat` bumps ``beat`` only ``WHERE state = 'Up'
  AND epoch = :epoch``: a server that was declared departed, or whose id a
  newer process registered, learns it from the False it gets;
* :meth:`~SqlServerRegistry.declare_departed` sets Departed only ``WHERE state =
  'Up' AND epoch = :epoch AND beat = :beat``: of several survivors that saw the
  same lapsed beat, exactly one updates the row (and acts on the departure).

Times in the row are the writer's wall clock, for display only; no decision
compares them (observers time a peer's silence on their own monotonic clock,
:class:`cloudha.cluster.ClusterMember`), so clock skew between servers is harmless.
Database errors leave as :class:`~cloudha.errors.StoreUnavailableError`
(transient) or :class:`~cloudha.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from cloudha.clock import Clock
from cloudha.errors import StoreError
from cloudha.ha.store import _translated, cloudha_management_server, prepare_sqlite_engine
from cloudha.ports import ServerRecord, ServerState

__all__ = ["SqlServerRegistry"]

_WHAT: Final = "server registry"
_M = cloudha_management_server.c


def _record(row: Row[Any]) -> ServerRecord:
    try:
        state = ServerState(row.state)
    except ValueError:
        raise StoreError(
            f"{_WHAT}: row {row.id!r} has state {row.state!r}, not one of "
            f"{', '.join(s.value for s in ServerState)}"
        ) from None
    return ServerRecord(
        id=str(row.id),
        address=str(row.address),
        state=state,
        epoch=int(row.epoch),
        beat=int(row.beat),
        heartbeat_at=float(row.heartbeat_at),
        registered_at=float(row.registered_at),
        departed_by=row.departed_by,
    )


class SqlServerRegistry:
    """The management servers of a group, in SQL (a :class:`~cloudha.ports.ServerRegistry`).

    Args:
        engine: ``sqlite:///...`` or ``postgresql+psycopg://...``; the schema must
            exist (:func:`cloudha.ha.store.create_schema` / ``upgrade``). The caller
            owns the engine.
        clock: the only source of time (the display times of the row).
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        with _translated(_WHAT):
            prepare_sqlite_engine(engine)
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        """The engine given at construction."""
        return self._engine

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with _translated(_WHAT), self._engine.begin() as conn:
            yield conn

    def _wall(self) -> float:
        return self._clock.now().timestamp()

    def register(self, server_id: str, address: str) -> int:
        if not server_id:
            raise ValueError("server_id must be a non-empty string")
        wall = self._wall()
        values = {
            "address": address,
            "state": ServerState.UP.value,
            "heartbeat_at": wall,
            "registered_at": wall,
            "departed_by": None,
        }
        bump = (
            cloudha_management_server.update()
            .where(_M.id == server_id)
            .values(epoch=_M.epoch + 1, **values)
            .returning(_M.epoch)
        )
        with self._tx() as conn:
            epoch = conn.execute(bump).scalar_one_or_none()
            if epoch is not None:
                return int(epoch)
        try:
            with self._tx() as conn:
                conn.execute(
                    cloudha_management_server.insert().values(
                        id=server_id, epoch=1, beat=0, **values
                    )
                )
            return 1
        except StoreError:
            # Another process registered the same id first: bump its row instead.
            with self._tx() as conn:
                epoch = conn.execute(bump).scalar_one_or_none()
            if epoch is None:
                raise
            return int(epoch)

    def heartbeat(self, server_id: str, epoch: int) -> bool:
        stmt = (
            cloudha_management_server.update()
            .where(_M.id == server_id, _M.epoch == epoch, _M.state == ServerState.UP.value)
            .values(beat=_M.beat + 1, heartbeat_at=self._wall())
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def servers(self) -> Sequence[ServerRecord]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(cloudha_management_server).order_by(_M.id)).all()
        return [_record(row) for row in rows]

    def declare_departed(self, server_id: str, epoch: int, beat: int, by: str) -> bool:
        stmt = (
            cloudha_management_server.update()
            .where(
                _M.id == server_id,
                _M.epoch == epoch,
                _M.beat == beat,
                _M.state == ServerState.UP.value,
            )
            .values(state=ServerState.DEPARTED.value, departed_by=by)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def leave(self, server_id: str, epoch: int) -> bool:
        stmt = (
            cloudha_management_server.update()
            .where(_M.id == server_id, _M.epoch == epoch, _M.state == ServerState.UP.value)
            .values(state=ServerState.DOWN.value, heartbeat_at=self._wall())
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount == 1

    def __repr__(self) -> str:
        return f"SqlServerRegistry({self._engine.url.render_as_string(hide_password=True)})"
