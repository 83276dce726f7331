"""A VM orchestrator kept in the shared database, for the multi-process HA tests.

:class:`SqlOrchestrator` implements :class:`~cloudha.ha.orchestrator.VmOrchestrator`
over the tables of :data:`record_metadata`, so several processes (management
servers) see and change the same VMs, as they would through CloudStack's
database:

* ``ha_hosts(host_id, capacity, up, tags)``: the hosts as the orchestrator
  sees them. A host the HA manager finds Down may well be ``up`` here: then
  only the ``avoid_hosts`` the manager passes keeps VMs off it.
* ``ha_vms(instance_id, name, state, host_id, last_host_id, ha_enabled,
  updated, generation, removed)``: one row per VM; ``generation`` is the
  highest fencing token used for the VM, ``removed`` marks an expunged VM
  (its generation is kept, so a fencing token is never used twice).
* ``ha_starts(seq, instance_id, generation, host_id, planner, server_id, pid)``:
  one row per successful start, written in the start's own transaction.
* ``ha_start_attempts(seq, instance_id, generation, planner, server_id, pid)``:
  one row per call of :meth:`SqlOrchestrator.advance_start`, committed before
  the start is tried (whatever its outcome).

The fencing token holds across processes: a start is one transaction whose
``UPDATE ha_vms ... WHERE instance_id = :vm AND generation < :gen AND state =
'Stopped'`` must change exactly one row, else nothing is written and the start
is refused (:class:`~cloudha.ha.orchestrator.StaleGenerationError` or
:class:`~cloudha.ha.orchestrator.ConcurrentOperationError`). Placements (start
and migration) lock the candidate host rows (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite transactions are ``BEGIN IMMEDIATE``, see
:func:`cloudha.ha.store.prepare_sqlite_engine`), so a host's capacity holds
across processes too.

:func:`make_manager` builds the HA manager every process of the crash tests
uses: host h1 Down (its VMs are the ones to restart), h2 and h3 Up, an
investigator that finds every VM dead, a fencer that would fence.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.chain import FenceChain, InlineRunner
from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.ha.store import WorkStore
from cloudha.investigators.base import Verdict
from cloudha.investigators.chain import InvestigatorChain
from cloudha.model import Host, Vm, VmState
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    InMemoryHostDirectory,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedInvestigator,
)

__all__ = [
    "DOWN_HOST",
    "UP_HOSTS",
    "Hook",
    "SqlOrchestrator",
    "directory",
    "hosts",
    "make_manager",
    "record_metadata",
    "seed",
    "start_attempts",
    "starts",
    "vms",
]

record_metadata = sa.MetaData()
"""The tables the multi-process tests create next to cloudha's own."""

hosts = sa.Table(
    "ha_hosts",
    record_metadata,
    sa.Column("host_id", sa.String(64), primary_key=True),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("up", sa.Boolean, nullable=False),
    sa.Column("tags", sa.String(255), nullable=False, server_default=""),
)
vms = sa.Table(
    "ha_vms",
    record_metadata,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("host_id", sa.String(64), nullable=True),
    sa.Column("last_host_id", sa.String(64), nullable=True),
    sa.Column("ha_enabled", sa.Boolean, nullable=False),
    sa.Column("updated", sa.Integer, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("removed", sa.Boolean, nullable=False),
)
starts = sa.Table(
    "ha_starts",
    record_metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("host_id", sa.String(64), nullable=False),
    sa.Column("planner", sa.String(16), nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
start_attempts = sa.Table(
    "ha_start_attempts",
    record_metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("planner", sa.String(16), nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

Hook = Callable[[str, str], None]
"""Called as ``hook(point, vm_id)`` at ``"stop"`` (before a stop does anything),
``"stopped"`` (after a stop committed, before it returns), ``"start"`` (after
the attempt is recorded, before the start's transaction) and ``"started"``
(after the start committed, before it returns)."""

_STOPPED_LIKE = (VmState.STOPPED.value, VmState.DESTROYED.value, VmState.EXPUNGING.value)
_V = vms.c

DOWN_HOST = "h1"
UP_HOSTS = ("h2", "h3")


def seed(
    engine: sa.Engine,
    host_rows: Iterable[tuple[str, int]],
    vm_rows: Iterable[Vm],
    *,
    tags: dict[str, str] | None = None,
) -> None:
    """Insert hosts ``(host_id, capacity)`` (all ``up``) and VMs as given (generation 0)."""
    tags = tags or {}
    host_values = [
        {"host_id": h, "capacity": c, "up": True, "tags": tags.get(h, "")} for h, c in host_rows
    ]
    with engine.begin() as conn:
        if host_values:
            conn.execute(hosts.insert(), host_values)
        rows = [
            {
                "instance_id": vm.id,
                "name": vm.name,
                "state": vm.state.value,
                "host_id": vm.host_id,
                "last_host_id": vm.last_host_id,
                "ha_enabled": vm.ha_enabled,
                "updated": vm.updated,
                "generation": 0,
                "removed": False,
            }
            for vm in vm_rows
        ]
        if rows:
            conn.execute(vms.insert(), rows)


def _to_vm(row: sa.Row[Any]) -> Vm:
    m = row._mapping
    return Vm(
        str(m["instance_id"]),
        name=str(m["name"]),
        state=VmState(m["state"]),
        host_id=m["host_id"],
        last_host_id=m["last_host_id"],
        ha_enabled=bool(m["ha_enabled"]),
        updated=int(m["updated"]),
    )


class SqlOrchestrator:
    """The VM orchestrator port over the shared tables; see the module docstring.

    Thread-safe and process-safe: every call is one or two transactions on
    ``engine``, and every change is a conditional ``UPDATE`` whose row count
    is checked.

    Args:
        engine: the shared database (the HA work store's engine will do).
        server_id: written in ``ha_starts`` and ``ha_start_attempts``.
        hook: see :data:`Hook`; None for none.
    """

    def __init__(self, engine: sa.Engine, server_id: str, *, hook: Hook | None = None) -> None:
        self.engine = engine
        self.server_id = server_id
        self.pid = os.getpid()
        self._hook = hook

    def _fire(self, point: str, vm_id: str) -> None:
        if self._hook is not None:
            self._hook(point, vm_id)

    @staticmethod
    def _row(conn: sa.Connection, vm_id: str) -> sa.Row[Any]:
        row = conn.execute(
            sa.select(vms).where(_V.instance_id == vm_id, _V.removed.is_(False))
        ).one_or_none()
        if row is None:
            raise UnknownVmError(vm_id)
        return row

    # -- look-ups ---------------------------------------------------------------

    def find_vm(self, vm_id: str) -> Vm | None:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(vms).where(_V.instance_id == vm_id, _V.removed.is_(False))
            ).one_or_none()
        return None if row is None else _to_vm(row)

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        stmt = (
            sa.select(vms)
            .where(_V.host_id == host_id, _V.removed.is_(False))
            .order_by(_V.instance_id)
        )
        with self.engine.begin() as conn:
            return [_to_vm(row) for row in conn.execute(stmt)]

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        return True

    # -- stop -------------------------------------------------------------------

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        self._fire("stop", vm.id)
        stmt = (
            vms.update()
            .where(
                _V.instance_id == vm.id,
                _V.removed.is_(False),
                _V.state.not_in(_STOPPED_LIKE),
            )
            .values(
                state=VmState.STOPPED.value,
                host_id=None,
                last_host_id=sa.func.coalesce(_V.host_id, _V.last_host_id),
                updated=_V.updated + 1,
            )
        )
        with self.engine.begin() as conn:
            stopped = conn.execute(stmt).rowcount == 1
            if not stopped:
                current = self._row(conn, vm.id)  # UnknownVmError when there is no such VM
                if current.state not in (VmState.STOPPED.value, VmState.DESTROYED.value):
                    raise ConcurrentOperationError(vm.id, f"VM is {current.state}")
        if stopped:
            self._fire("stopped", vm.id)

    # -- start ------------------------------------------------------------------

    def _place(
        self,
        conn: sa.Connection,
        *,
        avoid: frozenset[str],
        ha_tag: str | None,
    ) -> str | None:
        """The first host in id order that is up, not avoided, tagged if asked, with room.

        Each candidate's row is locked (``FOR UPDATE``) before its VMs are
        counted, so two placements on one host are serialised.
        """
        candidates = conn.execute(
            sa.select(hosts.c.host_id).where(hosts.c.up.is_(True)).order_by(hosts.c.host_id)
        ).scalars()
        for host_id in list(candidates):
            if host_id in avoid:
                continue
            host = conn.execute(
                sa.select(hosts).where(hosts.c.host_id == host_id).with_for_update()
            ).one()
            if ha_tag is not None and ha_tag not in str(host.tags).split():
                continue
            running = conn.execute(
                sa.select(sa.func.count())
                .select_from(vms)
                .where(
                    _V.host_id == host_id,
                    _V.removed.is_(False),
                    _V.state.not_in(_STOPPED_LIKE),
                )
            ).scalar_one()
            if running < host.capacity:
                return str(host_id)
        return None

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        generation = params.generation
        with self.engine.begin() as conn:
            conn.execute(
                start_attempts.insert().values(
                    instance_id=vm.id,
                    generation=generation,
                    planner=planner.value,
                    server_id=self.server_id,
                    pid=self.pid,
                )
            )
        self._fire("start", vm.id)
        with self.engine.begin() as conn:
            current = self._row(conn, vm.id)
            self._check_startable(vm.id, generation, current)
            target = self._place(conn, avoid=params.avoid_hosts, ha_tag=params.ha_tag)
            if target is None:
                raise InsufficientCapacityError(
                    vm.id, scope="zone", reason="no eligible host has room"
                )
            taken = conn.execute(
                vms.update()
                .where(
                    _V.instance_id == vm.id,
                    _V.removed.is_(False),
                    _V.generation < generation,
                    _V.state == VmState.STOPPED.value,
                )
                .values(
                    state=VmState.RUNNING.value,
                    host_id=target,
                    last_host_id=target,
                    generation=generation,
                    updated=_V.updated + 1,
                )
            ).rowcount
            if taken != 1:
                # Another process got there between our read and our update:
                # say why from the row as it is now (the transaction rolls back).
                self._check_startable(vm.id, generation, self._row(conn, vm.id))
                raise ConcurrentOperationError(vm.id, "the VM changed while it was being started")
            conn.execute(
                starts.insert().values(
                    instance_id=vm.id,
                    generation=generation,
                    host_id=target,
                    planner=planner.value,
                    server_id=self.server_id,
                    pid=self.pid,
                )
            )
        self._fire("started", vm.id)
        return target

    @staticmethod
    def _check_startable(vm_id: str, generation: int, row: sa.Row[Any]) -> None:
        highest = int(row.generation)
        if generation <= highest:
            raise StaleGenerationError(vm_id, generation=generation, highest=highest)
        if row.state != VmState.STOPPED.value:
            raise ConcurrentOperationError(vm_id, f"VM is {row.state}")

    # -- migrate and destroy ------------------------------------------------------

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        with self.engine.begin() as conn:
            current = self._row(conn, vm.id)
            if current.state != VmState.RUNNING.value or current.host_id != source_host_id:
                raise ConcurrentOperationError(
                    vm.id, f"VM is {current.state} on {current.host_id}, not Running there"
                )
            target = self._place(conn, avoid=frozenset({source_host_id}), ha_tag=None)
            if target is None:
                raise InsufficientCapacityError(
                    vm.id, scope="zone", reason=f"no host other than {source_host_id} has room"
                )
            moved = conn.execute(
                vms.update()
                .where(
                    _V.instance_id == vm.id,
                    _V.state == VmState.RUNNING.value,
                    _V.host_id == source_host_id,
                )
                .values(host_id=target, last_host_id=target, updated=_V.updated + 1)
            ).rowcount
            if moved != 1:
                raise ConcurrentOperationError(vm.id, "the VM changed while it was being migrated")
        return target

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        with self.engine.begin() as conn:
            current = self._row(conn, vm.id)
            if expunge:
                values: dict[str, Any] = {"removed": True, "host_id": None}
            elif current.state in (VmState.DESTROYED.value, VmState.EXPUNGING.value):
                return
            else:
                values = {"state": VmState.DESTROYED.value, "host_id": None}
            conn.execute(
                vms.update()
                .where(_V.instance_id == vm.id, _V.removed.is_(False))
                .values(
                    last_host_id=sa.func.coalesce(_V.host_id, _V.last_host_id),
                    updated=_V.updated + 1,
                    **values,
                )
            )

    def __repr__(self) -> str:
        return f"SqlOrchestrator({self.server_id!r})"


def directory() -> InMemoryHostDirectory:
    """The host table every process uses: h1 Down, h2 and h3 Up."""
    return InMemoryHostDirectory(
        [Host(DOWN_HOST, status=Status.DOWN)] + [Host(h, status=Status.UP) for h in UP_HOSTS]
    )


def make_manager(
    engine: sa.Engine,
    server_id: str,
    *,
    workers: int = 1,
    hook: Hook | None = None,
) -> HighAvailabilityManager:
    """An HA manager on the shared database, as every process of the crash tests builds it.

    The investigator finds every VM in ``ha_vms`` dead (read now, at build
    time); retries come after 0.2 s; idle workers look again every 0.1 s.
    """
    clock = SystemClock()
    store = WorkStore(engine, clock)
    with engine.begin() as conn:
        vm_ids = conn.execute(sa.select(_V.instance_id)).scalars().all()
    settings = Settings(
        ha_workers=workers,
        time_to_sleep=0.1,
        investigate_retry_interval=0.2,
        restart_retry_interval=0.2,
        stop_retry_interval=0.2,
        migrate_retry_interval=0.2,
    )
    return HighAvailabilityManager(
        server_id=server_id,
        store=store,
        orchestrator=SqlOrchestrator(engine, server_id, hook=hook),
        directory=directory(),
        investigators=InvestigatorChain(
            [ScriptedInvestigator(clock, script=dict.fromkeys(vm_ids, Verdict.DEAD))]
        ),
        fence_chain=FenceChain(
            [ScriptedFencer(clock, default=FenceOutcome.FENCED)],
            clock=clock,
            runner=InlineRunner(clock),
        ),
        settings=settings,
        clock=clock,
        alerts=RecordingAlertSink(),
    )
