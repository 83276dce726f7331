"""Where :class:`~cloudha.ha.libvirt_orchestrator.LibvirtOrchestrator` keeps its VMs.

The libvirt orchestrator holds one entry per VM: its id, domain name, UUID
and XML, its state and host, the highest fencing token (generation) used to
start it, its HA flag, and the hosts it may be defined on. By default that
registry lives in memory; a daemon that must not lose its VMs across its own
restart (``cloudha run``: a host that dies while the daemon is down still has
its HA VMs restarted) gives the orchestrator a :class:`SqlVmRegistry` on its
database, which the orchestrator writes through on every change, before the
change takes effect anywhere else (a start's generation is stored before the
domain is started, so a fencing token is never used twice, restart or not).

Two adapters of the :class:`VmRegistry` port:

* :class:`SqlVmRegistry`: one table, ``cloudha_vm`` (SQLite or PostgreSQL),
  created when missing; errors are :class:`~cloudha.errors.StoreError` /
  :class:`~cloudha.errors.StoreUnavailableError` (the HA manager retries those).
* :class:`MemoryVmRegistry`: a dict (tests; what an orchestrator without a
  registry behaves like).

The ``cloudha_vm`` table belongs to this reference orchestrator, not to the
HA queue: it is created on first use (like the evidence table) and is not part
of the work queue's Alembic migrations.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final, Protocol, final, runtime_checkable

import attrs
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import Connection, Engine

from cloudha.errors import ConfigurationError, StoreError, StoreUnavailableError
from cloudha.ha.store import _describe, _transient, prepare_sqlite_engine
from cloudha.model import VmState, VmType

__all__ = [
    "MemoryVmRegistry",
    "SqlVmRegistry",
    "VmRecord",
    "VmRegistry",
    "cloudha_vm",
    "vm_registry_metadata",
]

vm_registry_metadata: Final = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})
"""The registry table's own metadata (apart from the work queue's migrated tables)."""

cloudha_vm: Final = sa.Table(
    "cloudha_vm",
    vm_registry_metadata,
    sa.Column("vm_id", sa.String(255), primary_key=True),
    sa.Column("domain", sa.String(255), nullable=False),
    sa.Column("uuid", sa.String(64), nullable=False),
    sa.Column("xml", sa.Text(), nullable=False),
    sa.Column("vm_type", sa.String(32), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("host_id", sa.String(255), nullable=True),
    sa.Column("last_host_id", sa.String(255), nullable=True),
    sa.Column("ha_enabled", sa.Boolean(), nullable=False),
    sa.Column("local_storage", sa.Boolean(), nullable=False),
    sa.Column("generation", sa.Integer(), nullable=False),
    sa.Column("updated", sa.Integer(), nullable=False),
    sa.Column("defined_on", sa.Text(), nullable=False),
    sa.Column("migrating_to", sa.String(255), nullable=True),
)
"""One row per VM of the libvirt orchestrator (``defined_on``: a JSON list of host ids)."""


@attrs.frozen
class VmRecord:
    """One VM of the libvirt orchestrator's registry, as stored.

    Attributes:
        vm_id: the VM's id.
        domain: its libvirt domain name.
        uuid: its domain UUID (the same on every host it is defined on).
        xml: the domain XML it is defined and started with.
        vm_type: its kind.
        state: its state.
        host_id: where it runs (None when Stopped or Destroyed).
        last_host_id: where it ran last.
        ha_enabled: whether HA restarts it.
        local_storage: whether it can only run on its own host.
        generation: the highest fencing token used to start it.
        updated: the VM's change counter.
        defined_on: hosts on which the orchestrator may have defined it.
        migrating_to: the target of a migration under way.
    """

    vm_id: str
    domain: str
    uuid: str
    xml: str
    vm_type: VmType = VmType.USER
    state: VmState = VmState.STOPPED
    host_id: str | None = None
    last_host_id: str | None = None
    ha_enabled: bool = True
    local_storage: bool = False
    generation: int = 0
    updated: int = 0
    defined_on: frozenset[str] = frozenset()
    migrating_to: str | None = None


@runtime_checkable
class VmRegistry(Protocol):
    """Durable storage of the libvirt orchestrator's VMs.

    Contract: :meth:`save` is an upsert by ``vm_id`` and is durable when it
    returns; :meth:`delete` of an unknown id does nothing; :meth:`load`
    returns every saved record, sorted by ``vm_id``. Failures raise
    :class:`~cloudha.errors.StoreError` (transient ones
    :class:`~cloudha.errors.StoreUnavailableError`). Thread-safe.
    """

    def load(self) -> Sequence[VmRecord]:
        """Every record, sorted by VM id."""
        ...

    def save(self, record: VmRecord) -> None:
        """Insert or replace the record of ``record.vm_id``."""
        ...

    def delete(self, vm_id: str) -> None:
        """Forget the VM (an expunged VM)."""
        ...


class MemoryVmRegistry:
    """A :class:`VmRegistry` in a dict (tests)."""

    def __init__(self, records: Sequence[VmRecord] = ()) -> None:
        self._records = {r.vm_id: r for r in records}
        self._lock = threading.Lock()
        self.saves = 0
        """How many times :meth:`save` was called."""

    def load(self) -> list[VmRecord]:
        with self._lock:
            return [self._records[k] for k in sorted(self._records)]

    def save(self, record: VmRecord) -> None:
        with self._lock:
            self._records[record.vm_id] = record
            self.saves += 1

    def delete(self, vm_id: str) -> None:
        with self._lock:
            self._records.pop(vm_id, None)


def _row(record: VmRecord) -> dict[str, Any]:
    return {
        "vm_id": record.vm_id,
        "domain": record.domain,
        "uuid": record.uuid,
        "xml": record.xml,
        "vm_type": record.vm_type.value,
        "state": record.state.value,
        "host_id": record.host_id,
        "last_host_id": record.last_host_id,
        "ha_enabled": record.ha_enabled,
        "local_storage": record.local_storage,
        "generation": record.generation,
        "updated": record.updated,
        "defined_on": json.dumps(sorted(record.defined_on)),
        "migrating_to": record.migrating_to,
    }


def _record(row: sa.Row[Any]) -> VmRecord:
    values = row._asdict()
    vm_id = values["vm_id"]
    try:
        defined = json.loads(values["defined_on"])
        if not isinstance(defined, list) or not all(isinstance(h, str) for h in defined):
            raise ValueError("not a list of host ids")
        return VmRecord(
            vm_id=vm_id,
            domain=values["domain"],
            uuid=values["uuid"],
            xml=values["xml"],
            vm_type=VmType(values["vm_type"]),
            state=VmState(values["state"]),
            host_id=values["host_id"],
            last_host_id=values["last_host_id"],
            ha_enabled=bool(values["ha_enabled"]),
            local_storage=bool(values["local_storage"]),
            generation=int(values["generation"]),
            updated=int(values["updated"]),
            defined_on=frozenset(defined),
            migrating_to=values["migrating_to"],
        )
    except ValueError as exc:
        raise StoreError(f"cloudha_vm row {vm_id!r} is unreadable: {exc}") from None


@final
class SqlVmRegistry:
    """The :class:`VmRegistry` on an SQLAlchemy engine (SQLite or PostgreSQL).

    The ``cloudha_vm`` table is created when missing. On SQLite the engine is
    prepared as the work queue's (:func:`~cloudha.ha.store.prepare_sqlite_engine`).

    Raises:
        ConfigurationError: a database other than SQLite or PostgreSQL.
        StoreError: the table cannot be created (the database is unreachable
            or refuses).
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"VM registry: unsupported database {engine.dialect.name!r} (SQLite or PostgreSQL)",
                key="engine",
                value=engine.dialect.name,
            )
        self._engine = engine
        with self._translated():
            prepare_sqlite_engine(engine)
            vm_registry_metadata.create_all(engine, checkfirst=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlalchemy.exc.SQLAlchemyError as exc:
            where = self._engine.url.render_as_string(hide_password=True)
            message = f"VM registry on {where}: {_describe(exc)}"
            if _transient(exc):
                raise StoreUnavailableError(message) from exc
            raise StoreError(message) from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._translated(), self._engine.begin() as conn:
            yield conn

    def load(self) -> list[VmRecord]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(cloudha_vm).order_by(cloudha_vm.c.vm_id)).all()
        return [_record(row) for row in rows]

    def save(self, record: VmRecord) -> None:
        values = _row(record)
        with self._tx() as conn:
            changed = conn.execute(
                sa.update(cloudha_vm).where(cloudha_vm.c.vm_id == record.vm_id).values(**values)
            ).rowcount
            if not changed:
                conn.execute(sa.insert(cloudha_vm).values(**values))

    def delete(self, vm_id: str) -> None:
        with self._tx() as conn:
            conn.execute(sa.delete(cloudha_vm).where(cloudha_vm.c.vm_id == vm_id))

    def __repr__(self) -> str:
        return f"SqlVmRegistry({self._engine.url.render_as_string(hide_password=True)!r})"
