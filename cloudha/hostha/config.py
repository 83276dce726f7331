"""Host-HA state in SQL: CloudStack's ``ha_config`` (spec §7.4), with its ownership rule.

Every change of a resource's HA state is an optimistic update on
``(id, ha_state, update_count)``: it bumps ``update_count``, stamps
``update_time`` from the injected clock and makes the writing management
server the row's owner (no owner after ``Disabled``). A self-transition by
the owner writes nothing and returns None, so an owner's repeated
``HealthCheckPassed`` in Available costs no write. A server processes a row
only while it is unowned or its own ("first writer wins",
:meth:`HAConfig.owned_by`); :meth:`SqlHAConfigStore.expire_ownership` frees a
stopping server's rows.

Database errors leave the store as :class:`~cloudha.errors.StoreUnavailableError`
(transient) or :class:`~cloudha.errors.StoreError`, as from the work store.
The table comes with :func:`cloudha.ha.store.create_schema` / ``upgrade``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from cloudha.clock import Clock
from cloudha.errors import StoreError
from cloudha.ha.store import _translated, ha_config, prepare_sqlite_engine
from cloudha.hostha.fsm import HAEvent, HAState, ha_transition

__all__ = ["HOST", "HAConfig", "SqlHAConfigStore"]

HOST = "Host"
"""The resource type of a host (CloudStack ``HAResource.ResourceType.Host``)."""


@attrs.frozen
class HAConfig:
    """One resource's Host-HA configuration and state, as read from ``ha_config``.

    Attributes:
        id: the row id.
        resource_id: the host's id.
        resource_type: ``Host``.
        enabled: Host-HA is enabled for the resource.
        state: the HA state; None before the first transition.
        provider: the HA provider's name (``kvmhaprovider``), or None.
        update_count: the optimistic-lock counter.
        update_time: the last transition's time (aware UTC), or None.
        mgmt_server_id: the owning management server, or None.
    """

    id: int
    resource_id: str
    resource_type: str
    enabled: bool
    state: HAState | None
    provider: str | None
    update_count: int
    update_time: dt.datetime | None
    mgmt_server_id: str | None

    def owned_by(self, server_id: str) -> bool:
        """May ``server_id`` process this row? Unowned, or its own (spec §7.4)."""
        return self.mgmt_server_id is None or self.mgmt_server_id == server_id


def _config(row: Row[Any]) -> HAConfig:
    try:
        state = None if row.ha_state is None else HAState(row.ha_state)
    except ValueError:
        raise StoreError(
            f"ha_config row {row.id}: ha_state {row.ha_state!r} is not a Host-HA state"
        ) from None
    return HAConfig(
        id=int(row.id),
        resource_id=str(row.resource_id),
        resource_type=str(row.resource_type),
        enabled=bool(row.enabled),
        state=state,
        provider=row.provider,
        update_count=int(row.update_count),
        update_time=row.update_time,
        mgmt_server_id=row.mgmt_server_id,
    )


class SqlHAConfigStore:
    """``ha_config`` on one database (SQLite or PostgreSQL); thread- and process-safe.

    Args:
        engine: the database (the caller owns it); the schema must exist.
        clock: the only source of time.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        with _translated():
            prepare_sqlite_engine(engine)
        self._engine = engine
        self._clock = clock

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with _translated(), self._engine.begin() as conn:
            yield conn

    def configure(self, resource_id: str, provider: str, *, resource_type: str = HOST) -> HAConfig:
        """Create the resource's row (disabled, no state), or set its provider; the row."""
        table = ha_config
        with self._tx() as conn:
            found = conn.execute(
                sa.select(table).where(
                    table.c.resource_id == resource_id, table.c.resource_type == resource_type
                )
            ).first()
            if found is None:
                conn.execute(
                    sa.insert(table).values(
                        resource_id=resource_id,
                        resource_type=resource_type,
                        enabled=False,
                        provider=provider,
                        update_count=0,
                    )
                )
            else:
                conn.execute(
                    sa.update(table).where(table.c.id == found.id).values(provider=provider)
                )
            row = conn.execute(
                sa.select(table).where(
                    table.c.resource_id == resource_id, table.c.resource_type == resource_type
                )
            ).one()
        return _config(row)

    def set_enabled(
        self, resource_id: str, enabled: bool, *, resource_type: str = HOST
    ) -> HAConfig | None:
        """Switch Host-HA on or off for the resource (the poll loop then moves its state)."""
        table = ha_config
        where = (table.c.resource_id == resource_id, table.c.resource_type == resource_type)
        with self._tx() as conn:
            conn.execute(sa.update(table).where(*where).values(enabled=enabled))
            row = conn.execute(sa.select(table).where(*where)).first()
        return None if row is None else _config(row)

    def find(self, resource_id: str, *, resource_type: str = HOST) -> HAConfig | None:
        """The resource's row, or None."""
        table = ha_config
        with self._tx() as conn:
            row = conn.execute(
                sa.select(table).where(
                    table.c.resource_id == resource_id, table.c.resource_type == resource_type
                )
            ).first()
        return None if row is None else _config(row)

    def list(self, *, resource_type: str = HOST) -> list[HAConfig]:
        """Every row of ``resource_type``, by id."""
        table = ha_config
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(table).where(table.c.resource_type == resource_type).order_by(table.c.id)
            ).all()
        return [_config(r) for r in rows]

    def transition(self, config: HAConfig, event: HAEvent, server_id: str) -> HAConfig | None:
        """Apply ``event`` to ``config`` as ``server_id``; the new row, or None when nothing
        was written: a self-transition by the owner, or the row changed since it was read.

        Raises:
            NoTransitionError: the state machine has no such transition.
        """
        target = ha_transition(config.state, event)
        if target is config.state and config.mgmt_server_id == server_id:
            return None
        table = ha_config
        current = (
            table.c.ha_state.is_(None)
            if config.state is None
            else table.c.ha_state == config.state.value
        )
        owner = None if event is HAEvent.DISABLED else server_id
        with self._tx() as conn:
            written = conn.execute(
                sa.update(table)
                .where(
                    table.c.id == config.id, current, table.c.update_count == config.update_count
                )
                .values(
                    ha_state=target.value,
                    update_count=config.update_count + 1,
                    update_time=self._clock.now(),
                    mgmt_server_id=owner,
                )
            ).rowcount
            if written != 1:
                return None
            row = conn.execute(sa.select(table).where(table.c.id == config.id)).one()
        return _config(row)

    def expire_ownership(self, server_id: str) -> int:
        """Free every row ``server_id`` owns (it stops or departed); how many."""
        table = ha_config
        with self._tx() as conn:
            return int(
                conn.execute(
                    sa.update(table)
                    .where(table.c.mgmt_server_id == server_id)
                    .values(mgmt_server_id=None)
                ).rowcount
            )
