"""The persistent HA work queue: CloudStack's ``op_ha_work`` table, in SQLAlchemy 2 Core.

:class:`SqlWorkStore` is the SQLAlchemy adapter of the
:class:`~cloudha.ports.WorkStore` port (``WorkStore`` here is the same
class, under its old name). Database errors never leave it as SQLAlchemy
exceptions: transient faults (connection lost or refused, database locked,
deadlock, pool timeout) become :class:`~cloudha.errors.StoreUnavailableError`,
which the HA manager retries; anything else becomes
:class:`~cloudha.errors.StoreError`. The driver's exception is the ``__cause__``.

Backends: SQLite (``sqlite:///path``) and PostgreSQL
(``postgresql+psycopg://user@host:port/db``). :class:`SqlWorkStore` itself
never creates tables: call :func:`create_schema` (tests, throwaway databases)
or :func:`upgrade` (Alembic migrations, production) first.
:class:`~cloudha.ManagementServer` given an ``engine`` calls
:func:`create_schema`, which creates only the tables that are missing.

Deliberate differences from CloudStack (docs/design/differences.md):

* one clock: ``time_to_try`` is float seconds since the Unix epoch read from
  the injected :class:`~cloudha.clock.Clock` (no ``ms >> 10`` units);
  ``created`` and ``taken`` are timezone-aware UTC datetimes from the same clock;
* :meth:`SqlWorkStore.claim` orders by ``priority`` (higher first), then ``id``;
* every claim writes a fresh per-VM fencing token into ``generation``, and
  the writing methods (:meth:`~SqlWorkStore.reschedule`, :meth:`~SqlWorkStore.finish`,
  :meth:`~SqlWorkStore.update_step`) only touch a row that is still the claim
  they were given (:class:`StaleWorkError` otherwise), so a management server
  whose works were released and re-claimed cannot complete them a second time;
* ``Error`` is a terminal step everywhere (never claimed, never re-marked).

Rows edited by hand: every method that returns :class:`Work` values raises
:class:`UnreadableWorkError` (naming the row id, column and value) when a
row it read holds a value that is not a known ``type``, ``step``, ``state``,
``vm_type`` or ``reason``. It never returns a half-parsed row. The caller
marks the row with :meth:`SqlWorkStore.mark_error` (which does not parse it) and
carries on: the list readers skip unreadable rows once they are in step
Error. A :meth:`~SqlWorkStore.claim` that picks such a row commits the claim
first (the row then belongs to the caller) and raises afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
import sqlalchemy.exc
import tenacity
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, Row

from cloudha.clock import Clock
from cloudha.errors import StoreError, StoreUnavailableError
from cloudha.ha.work import (
    TERMINAL_STEPS,
    TERMINAL_VALUES,
    QueueState,
    StaleWorkError,
    Step,
    UnknownWorkError,
    UnreadableWorkError,
    Work,
    WorkListing,
    WorkRefusedError,
    WorkTally,
    WorkType,
    cancel_refusal,
    retry_refusal,
    work_from_row,
)
from cloudha.model import ReasonType, VmState, VmType

__all__ = [
    "TERMINAL_STEPS",
    "SqlWorkStore",
    "StaleWorkError",
    "Step",
    "UnknownWorkError",
    "UnreadableWorkError",
    "Work",
    "WorkListing",
    "WorkRefusedError",
    "WorkStore",
    "WorkTally",
    "WorkType",
    "cloudha_host",
    "create_schema",
    "drop_schema",
    "ha_config",
    "metadata",
    "op_ha_generation",
    "op_ha_work",
    "prepare_sqlite_engine",
    "upgrade",
]

log = logging.getLogger(__name__)


class _UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """``DateTime(timezone=True)`` that always returns aware UTC datetimes (SQLite drops tz)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: cloudha stores aware UTC times only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


metadata: Final = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
"""Every cloudha table, with deterministic constraint and index names."""

op_ha_work: Final = sa.Table(
    "op_ha_work",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    ),
    sa.Column("instance_id", sa.String(255), nullable=False),
    sa.Column("mgmt_server_id", sa.String(255), nullable=True),
    sa.Column("created", _UTCDateTime(), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("host_id", sa.String(255), nullable=True),
    sa.Column("taken", _UTCDateTime(), nullable=True),
    sa.Column("time_to_try", sa.Double(), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("updated", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("vm_type", sa.String(32), nullable=False),
    sa.Column("tried", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("reason", sa.String(32), nullable=True),
    sa.Column("generation", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Index(None, "step", "mgmt_server_id", "taken", "time_to_try"),
    sa.Index(None, "instance_id"),
    sa.Index(None, "host_id"),
)
"""CloudStack's ``op_ha_work`` (spec §3.2) plus ``generation`` and ``priority``."""

op_ha_generation: Final = sa.Table(
    "op_ha_generation",
    metadata,
    sa.Column("instance_id", sa.String(255), primary_key=True),
    sa.Column("generation", sa.Integer(), nullable=False),
)
"""The last fencing token handed out per VM (see :meth:`SqlWorkStore.next_generation`)."""

ha_config: Final = sa.Table(
    "ha_config",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    ),
    sa.Column("resource_id", sa.String(255), nullable=False),
    sa.Column("resource_type", sa.String(32), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("ha_state", sa.String(32), nullable=True),
    sa.Column("provider", sa.String(255), nullable=True),
    sa.Column("update_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("update_time", _UTCDateTime(), nullable=True),
    sa.Column("mgmt_server_id", sa.String(255), nullable=True),
    sa.UniqueConstraint("resource_id", "resource_type"),
)
"""CloudStack's Host-HA ``ha_config`` (spec §7.4): one row per resource
(:class:`cloudha.hostha.config.SqlHAConfigStore`)."""


cloudha_host: Final = sa.Table(
    "cloudha_host",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("hypervisor", sa.String(32), nullable=False),
    sa.Column("resource_state", sa.String(64), nullable=False),
    sa.Column("cluster", sa.String(255), nullable=True),
    sa.Column("pod", sa.String(255), nullable=False),
    sa.Column("zone", sa.String(255), nullable=False),
    sa.Column("private_ip", sa.String(255), nullable=True),
    sa.Column("watchdog", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("rack", sa.String(255), nullable=True),
    sa.Column("status", sa.String(32), nullable=True),
    sa.Column("update_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_ping", sa.Double(), nullable=False, server_default="0"),
    sa.Column("management_server_id", sa.String(255), nullable=True),
    sa.Column("disconnected_on", sa.Double(), nullable=True),
    sa.Column("removed", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("fence_ready", sa.Boolean(), nullable=True),
    sa.Column("fence_detail", sa.Text(), nullable=True),
    sa.Column("fence_checked_at", _UTCDateTime(), nullable=True),
    sa.Column("owner_epoch", sa.Integer(), nullable=False, server_default="0"),
    sa.Index(None, "management_server_id"),
    sa.Index(None, "cluster"),
)
"""The host table of a fleet run without an orchestrator (CloudStack's ``host``, the
columns cloudha reads), plus ``removed`` and the fence readiness the daemon writes
(:class:`cloudha.hoststore.SqlHostDirectory`)."""

cloudha_management_server: Final = sa.Table(
    "cloudha_management_server",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("address", sa.String(255), nullable=False, server_default=""),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("beat", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("heartbeat_at", sa.Double(), nullable=False, server_default="0"),
    sa.Column("registered_at", sa.Double(), nullable=False, server_default="0"),
    sa.Column("departed_by", sa.String(255), nullable=True),
)
"""The management servers of a group (CloudStack's ``mshost``;
:class:`cloudha.cluster.SqlServerRegistry`)."""


def create_schema(engine: Engine) -> None:
    """Create cloudha's tables (skipping existing ones). Prefer :func:`upgrade` in production."""
    metadata.create_all(engine)


def drop_schema(engine: Engine) -> None:
    """Drop cloudha's tables and Alembic's version table (tests only)."""
    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


_MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the shipped Alembic migrations up to ``revision`` on ``engine``, in one transaction."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


_SQLITE_BUSY_TIMEOUT_MS: Final = 60_000


def _journal_mode(cursor: Any) -> str:
    row = cursor.execute("PRAGMA journal_mode").fetchone()
    return "" if row is None else str(row[0]).lower()


def _switch_to_wal(cursor: Any) -> None:
    """Put the database file in WAL mode unless it is already (or in memory).

    WAL is a property of the file, so only the first connection ever has to
    switch, and the switch needs the file to itself: a connection that lost
    the race to another process (which holds a lock) gets "database is
    locked" at once, without the busy handler. So it reads the mode again and
    retries, within the busy timeout, until the file is WAL.
    """

    def attempt() -> None:
        if _journal_mode(cursor) not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(_SQLITE_BUSY_TIMEOUT_MS / 1000),
        wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.5),
        retry=tenacity.retry_if_exception_type(sqlite3.OperationalError),
        before_sleep=lambda state: log.debug(
            "switching a SQLite file to WAL (attempt %d): %s",
            state.attempt_number,
            None if state.outcome is None else state.outcome.exception(),
        ),
        reraise=True,
    )
    retrying(attempt)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions itself: "begin" below does it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
    finally:
        cursor.close()


_PREPARED = "cloudha_sqlite_prepared"
"""Key in a pooled connection's ``info``: the busy timeout and autocommit mode are set on it."""


def _sqlite_on_begin(conn: Connection) -> None:
    # Straight on the driver: two statements per transaction through
    # exec_driver_sql cost more than most of the work queue's queries.
    info = conn.connection.info
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    if not info.get(_PREPARED):
        # Once per pooled connection, also for connections opened before the hooks.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        info[_PREPARED] = True
    dbapi_connection.execute("BEGIN IMMEDIATE")


def prepare_sqlite_engine(engine: Engine) -> None:
    """Make every transaction on a SQLite ``engine`` ``BEGIN IMMEDIATE`` with a 60 s busy timeout.

    SQLite has no row locks: with immediate transactions a claim holds the
    database's write lock from its first read, so concurrent threads and
    processes on one file cannot claim a work twice, and they wait for each
    other (up to the busy timeout) instead of failing with "database is
    locked". New connections also switch the file to WAL. Idempotent; a no-op
    for other backends. :class:`WorkStore` calls it; it affects every user of
    the engine.
    """
    if engine.dialect.name != "sqlite":
        return
    if not sa.event.contains(engine, "connect", _sqlite_on_connect):
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        # Connections pooled before (e.g. by create_schema) missed the hook:
        # switch the file to WAL now, before any worker holds a transaction.
        with engine.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            assert dbapi_connection is not None
            _sqlite_on_connect(dbapi_connection, None)
    if not sa.event.contains(engine, "begin", _sqlite_on_begin):
        sa.event.listen(engine, "begin", _sqlite_on_begin)


def _to_work(row: Row[Any]) -> Work:
    return work_from_row(row._asdict())


_W = op_ha_work.c


def _not_terminal() -> sa.ColumnElement[bool]:
    """``step NOT IN ('Cancelled', 'Done', 'Error')`` with one plain bind per value.

    A list of values would be an "expanding" parameter, rendered anew at
    every execution; the work queue's hottest queries (an idle worker's
    claim) spent more time there than in the database.
    """
    return _W.step.not_in([sa.literal(value, sa.String(32)) for value in TERMINAL_VALUES])


def _claimable_now() -> sa.ColumnElement[bool]:
    return sa.and_(
        _W.mgmt_server_id.is_(None),
        _W.taken.is_(None),
        _W.time_to_try <= sa.bindparam("now_s"),
        _not_terminal(),
    )


def _build_pg_claim() -> sa.UpdateBase:
    """One statement, one round trip: pick (SKIP LOCKED), bump the VM's token, take the row."""
    picked = (
        sa.select(_W.id, _W.instance_id)
        .where(_claimable_now())
        .order_by(_W.priority.desc(), _W.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    generation = (
        pg_dialect.insert(op_ha_generation)
        .from_select(
            ["instance_id", "generation"],
            sa.select(picked.c.instance_id, sa.literal(1, sa.Integer())),
        )
        .on_conflict_do_update(
            index_elements=[op_ha_generation.c.instance_id],
            set_={"generation": op_ha_generation.c.generation + 1},
        )
        .returning(op_ha_generation.c.generation)
        .cte("bumped")
    )
    return (
        op_ha_work.update()
        .where(_W.id == sa.select(picked.c.id).scalar_subquery())
        .values(
            mgmt_server_id=sa.bindparam("server"),
            taken=sa.bindparam("taken", type_=_UTCDateTime()),
            generation=sa.select(generation.c.generation).scalar_subquery(),
        )
        .returning(*op_ha_work.c)
    )


_PG_CLAIM: Final = _build_pg_claim()
_SQLITE_PICK: Final = (
    sa.select(_W.id, _W.instance_id)
    .where(_claimable_now())
    .order_by(_W.priority.desc(), _W.id)
    .limit(1)
)
_SQLITE_TAKE: Final = (
    op_ha_work.update()
    .where(
        _W.id == sa.bindparam("work_id"),
        _W.mgmt_server_id.is_(None),
        _W.taken.is_(None),
    )
    .values(
        mgmt_server_id=sa.bindparam("server"),
        taken=sa.bindparam("taken", type_=_UTCDateTime()),
        generation=sa.bindparam("generation"),
    )
    .returning(*op_ha_work.c)
)


def _snapshot(previous_state: VmState | None, updated: int | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if previous_state is not None:
        values["state"] = previous_state.value
    if updated is not None:
        values["updated"] = int(updated)
    return values


_CLAIM_ATTEMPTS: Final = 5


_Probe = tuple[str, tuple[str, ...], dict[str, Any], dict[str, Callable[[Any], Any]]]


def _compile_probe() -> _Probe:
    """:data:`_SQLITE_PICK` as the SQLite driver runs it: text, bind order, fixed binds,
    and each bind's conversion for the driver (as SQLAlchemy applies them)."""
    dialect = sqlite_dialect.dialect()
    compiled = _SQLITE_PICK.compile(dialect=dialect)
    assert compiled.positiontup is not None
    fixed = dict(compiled.construct_params({"now_s": 0.0}))
    convert: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            convert[name] = processor
    return compiled.string, tuple(compiled.positiontup), fixed, convert


_SQLITE_PROBE: Final = _compile_probe()
"""The claim's pick, run alone straight on the driver to see whether anything is claimable."""


_TRANSIENT: Final = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
)


_SQLITE_TRANSIENT_CODES: Final = frozenset({5, 6, 10, 14, 15})
"""SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_PROTOCOL (primary codes)."""


def _transient(exc: sqlalchemy.exc.SQLAlchemyError) -> bool:
    """Whether retrying may help: a lost or refused connection, a lock, a deadlock, a timeout.

    SQLite reports a missing table as an OperationalError too; its error code
    tells it from a busy or unopenable file.
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, _TRANSIENT):
        return False
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code is None or (int(code) & 0xFF) in _SQLITE_TRANSIENT_CODES


def _describe(exc: sqlalchemy.exc.SQLAlchemyError) -> str:
    """The driver's message, without the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _translated(what: str = "HA work store") -> Iterator[None]:
    """Turn SQLAlchemy errors into cloudha's store errors (see the module docstring).

    ``what`` names the store in the message (``host directory``).
    """
    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as exc:
        if _transient(exc):
            raise StoreUnavailableError(f"{what} unavailable: {_describe(exc)}") from exc
        raise StoreError(f"{what} failed: {_describe(exc)}") from exc


class SqlWorkStore:
    """The HA work queue on one database: the SQL adapter of :class:`~cloudha.ports.WorkStore`.

    Thread-safe (each call uses its own connection and transaction from the
    engine's pool) and safe across processes and management servers sharing
    the database. The schema must exist (:func:`create_schema` / :func:`upgrade`).

    Args:
        engine: ``sqlite:///...`` or ``postgresql+psycopg://...``. SQLite
            engines are prepared with :func:`prepare_sqlite_engine`. The caller
            owns the engine (and disposes of it).
        clock: the only source of time.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}")
        with _translated():
            prepare_sqlite_engine(engine)
        self._engine = engine
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction on the engine; SQLAlchemy errors leave it translated."""
        with _translated(), self._engine.begin() as conn:
            yield conn

    @property
    def engine(self) -> Engine:
        """The engine given at construction."""
        return self._engine

    def _now(self) -> tuple[dt.datetime, float]:
        now = self._clock.now()
        return now, now.timestamp()

    # -- adding and reading ----------------------------------------------------

    def add(
        self,
        instance_id: str,
        type: WorkType,
        previous_state: VmState,
        *,
        vm_type: VmType = VmType.USER,
        step: Step = Step.SCHEDULED,
        host_id: str | None = None,
        reason: ReasonType = ReasonType.UNKNOWN,
        tried: int = 0,
        updated: int = 0,
        priority: int = 0,
        time_to_try: float | None = None,
    ) -> Work:
        """Persist a new unclaimed work and return it.

        ``created`` is now; ``time_to_try`` defaults to now (claimable at once).
        """
        now, now_s = self._now()
        stmt = (
            op_ha_work.insert()
            .values(
                instance_id=instance_id,
                type=type.value,
                step=step.value,
                state=previous_state.value,
                vm_type=vm_type.value,
                host_id=host_id,
                reason=reason.value,
                tried=tried,
                updated=updated,
                priority=priority,
                created=now,
                time_to_try=now_s if time_to_try is None else float(time_to_try),
                generation=0,
            )
            .returning(*op_ha_work.c)
        )
        with self._tx() as conn:
            return _to_work(conn.execute(stmt).one())

    def get(self, work_id: int) -> Work | None:
        """The work with this id, or ``None``. Raises :class:`UnreadableWorkError`."""
        with self._tx() as conn:
            row = conn.execute(sa.select(op_ha_work).where(_W.id == work_id)).one_or_none()
        return None if row is None else _to_work(row)

    def _select(self, where: sa.ColumnElement[bool]) -> list[Work]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(op_ha_work).where(where).order_by(_W.id)).all()
        works = []
        for row in rows:
            try:
                works.append(_to_work(row))
            except UnreadableWorkError:
                if row._mapping["step"] == Step.ERROR.value:
                    continue  # already taken out of the queue by mark_error
                raise
        return works

    def pending_for_vm(self, instance_id: str) -> list[Work]:
        """The VM's works of any type whose step is not terminal, oldest first."""
        return self._select(sa.and_(_W.instance_id == instance_id, _not_terminal()))

    def pending_ha_for_host(self, host_id: str) -> list[Work]:
        """Works of type HA on this host whose step is not terminal, oldest first
        (CloudStack ``listPendingHAWorkForHost``)."""
        return self._select(
            sa.and_(
                _W.host_id == host_id,
                _W.type == WorkType.HA.value,
                _not_terminal(),
            )
        )

    def works_for_vm(self, instance_id: str) -> list[Work]:
        """Every work of the VM still in the table, terminal ones included, oldest first."""
        return self._select(_W.instance_id == instance_id)

    def works_for_vms(self, instance_ids: Iterable[str]) -> list[Work]:
        """:meth:`works_for_vm` for many VMs in one query, oldest first."""
        ids = sorted(set(instance_ids))
        return self._select(_W.instance_id.in_(ids)) if ids else []

    def has_been_scheduled(self, instance_id: str, type: WorkType) -> bool:
        """True when an untaken (``taken IS NULL``) work of this VM and type exists, any step."""
        stmt = sa.select(
            sa.exists().where(
                _W.instance_id == instance_id, _W.type == type.value, _W.taken.is_(None)
            )
        )
        with self._tx() as conn:
            return bool(conn.execute(stmt).scalar_one())

    def tally(self) -> list[WorkTally]:
        """Works per stored type and step with the oldest ``created``: one grouped query
        (metrics read it at every scrape), hand-edited values included as stored."""
        stmt = (
            sa.select(_W.type, _W.step, sa.func.count(), sa.func.min(_W.created))
            .group_by(_W.type, _W.step)
            .order_by(_W.type, _W.step)
        )
        with self._tx() as conn:
            rows = conn.execute(stmt).all()
        return [
            WorkTally(str(type_), str(step), int(count), oldest)
            for type_, step, count, oldest in rows
        ]

    # -- claiming --------------------------------------------------------------

    def _claimable(self, now_s: float) -> sa.ColumnElement[bool]:
        return sa.and_(
            _W.mgmt_server_id.is_(None),
            _W.taken.is_(None),
            _W.time_to_try <= now_s,
            _not_terminal(),
        )

    def claim(self, server_id: str) -> Work | None:
        """Atomically take one claimable work for ``server_id``; ``None`` when there is none.

        Claimable: ``mgmt_server_id`` and ``taken`` NULL, ``time_to_try <= now``,
        step not Done/Cancelled/Error. Order: highest ``priority`` first, then
        lowest ``id``. The row gets ``mgmt_server_id = server_id``, ``taken = now``
        and ``generation = next_generation(instance_id)``, all in one transaction.

        PostgreSQL: one statement (one round trip): ``SELECT ... FOR UPDATE SKIP
        LOCKED LIMIT 1`` and the token upsert as CTEs feeding the ``UPDATE``, so
        concurrent claimers take different rows without waiting. SQLite: the
        transaction is ``BEGIN IMMEDIATE`` (it holds the write lock from its
        first read); the token is bumped, then the ``UPDATE`` is still guarded by
        ``mgmt_server_id IS NULL AND taken IS NULL`` and checked; a miss retries
        at once, at most 5 times, without sleeping (a token bumped for a miss
        is skipped: tokens only need to grow). Before it, the pick runs once
        as a plain ``SELECT`` without the write lock: when it finds nothing,
        the claim returns ``None`` at once (an idle worker's poll).

        Raises :class:`UnreadableWorkError` after committing the claim when the
        claimed row is unreadable.
        """
        now, now_s = self._now()
        params = {"now_s": now_s, "server": server_id, "taken": now}
        if self._postgres:
            with self._tx() as conn:
                row = conn.execute(_PG_CLAIM, params).one_or_none()
            return None if row is None else _to_work(row)
        if not self._sqlite_claimable(now_s):
            return None
        row = None
        with self._tx() as conn:
            for _attempt in range(_CLAIM_ATTEMPTS):
                picked = conn.execute(_SQLITE_PICK, params).one_or_none()
                if picked is None:
                    return None
                generation = self._bump_generation(conn, picked.instance_id)
                row = conn.execute(
                    _SQLITE_TAKE, {**params, "work_id": picked.id, "generation": generation}
                ).one_or_none()
                if row is not None:
                    break
        return None if row is None else _to_work(row)

    def _sqlite_claimable(self, now_s: float) -> bool:
        """Might a claim at ``now_s`` find a work? False only when none is claimable.

        An idle worker polls the queue every ``time.to.sleep``; on SQLite its
        claim was a write transaction (``BEGIN IMMEDIATE``) through the whole
        engine stack to find nothing. This runs the claim's own pick as one
        plain ``SELECT`` on a pooled driver connection (one consistent read,
        no write lock): nothing there means nothing was claimable at that
        instant, which is all an empty claim says. Anything found, or any
        driver error, goes on to the real claim, which takes the lock, picks
        again and translates errors.
        """
        text, order, fixed, convert = _SQLITE_PROBE
        binds = {**fixed, "now_s": now_s}
        for name, processor in convert.items():
            binds[name] = processor(binds[name])
        try:
            raw = self._engine.raw_connection()
        except sqlalchemy.exc.SQLAlchemyError:
            return True
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(text, [binds[name] for name in order])
                return cursor.fetchone() is not None
            finally:
                cursor.close()
        except sqlite3.Error:
            return True
        finally:
            raw.close()

    # -- fencing tokens --------------------------------------------------------

    def _bump_generation(self, conn: Connection, instance_id: str) -> int:
        insert = pg_dialect.insert if self._postgres else sqlite_dialect.insert
        stmt = (
            insert(op_ha_generation)
            .values(instance_id=instance_id, generation=1)
            .on_conflict_do_update(
                index_elements=[op_ha_generation.c.instance_id],
                set_={"generation": op_ha_generation.c.generation + 1},
            )
            .returning(op_ha_generation.c.generation)
        )
        return int(conn.execute(stmt).scalar_one())

    def next_generation(self, instance_id: str) -> int:
        """Hand out the VM's next fencing token: 1, 2, 3... never repeated, even across processes.

        One atomic upsert (``INSERT ... ON CONFLICT DO UPDATE SET generation =
        generation + 1 RETURNING generation``) on ``op_ha_generation``; every
        :meth:`claim` also takes one, in the claim's transaction.
        """
        with self._tx() as conn:
            return self._bump_generation(conn, instance_id)

    def current_generation(self, instance_id: str) -> int:
        """The VM's last fencing token handed out; 0 when none was."""
        stmt = sa.select(op_ha_generation.c.generation).where(
            op_ha_generation.c.instance_id == instance_id
        )
        with self._tx() as conn:
            value = conn.execute(stmt).scalar_one_or_none()
        return 0 if value is None else int(value)

    # -- changing one claimed work ---------------------------------------------

    @staticmethod
    def _held(work: Work) -> sa.ColumnElement[bool]:
        return sa.and_(
            _W.id == work.id,
            _W.generation == work.generation,
            _W.mgmt_server_id.is_not_distinct_from(work.mgmt_server_id),
        )

    def confirm(self, work: Work) -> None:
        """Check that ``work`` is still the caller's claim; :class:`StaleWorkError` if not.

        The manager calls it before every action with an effect outside the
        database (a fence, a stop, a start, a migration, a destroy), so a
        worker that lost its claim while it was stuck (released by
        :meth:`release_server`, claimed by another server) acts no further.
        """
        stmt = sa.select(_W.id).where(self._held(work), _not_terminal())
        with self._tx() as conn:
            if conn.execute(stmt).one_or_none() is None:
                raise StaleWorkError(work.id)

    def _update_held(self, work: Work, **values: Any) -> Work:
        stmt = op_ha_work.update().where(self._held(work)).values(**values).returning(*op_ha_work.c)
        with self._tx() as conn:
            row = conn.execute(stmt).one_or_none()
        if row is None:
            raise StaleWorkError(work.id)
        return _to_work(row)

    def reschedule(
        self,
        work: Work,
        time_to_try: float,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """Give the work back: ``tried += 1``, not before ``time_to_try``, unclaimed.

        ``previous_state`` and ``updated``, when given, replace the VM snapshot
        the work compares against (after the worker's own operation changed the VM).

        Raises :class:`StaleWorkError` when the row is no longer the claim
        ``work`` describes (same ``mgmt_server_id`` and ``generation``).
        """
        return self._update_held(
            work,
            tried=_W.tried + 1,
            time_to_try=float(time_to_try),
            mgmt_server_id=None,
            taken=None,
            **_snapshot(previous_state, updated),
        )

    def finish(
        self,
        work: Work,
        step: Step = Step.DONE,
        *,
        attempt: bool = False,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """End the work with a terminal ``step`` (Done, Cancelled or Error); the claim stays.

        ``attempt=True`` also counts the attempt that ended it (``tried += 1``:
        a work that gives up after its last try); ``previous_state`` and
        ``updated`` as in :meth:`reschedule`.

        Raises :class:`ValueError` for a non-terminal step and
        :class:`StaleWorkError` as :meth:`reschedule` does.
        """
        if step not in TERMINAL_STEPS:
            raise ValueError(f"finish() needs a terminal step, not {step}")
        extra = _snapshot(previous_state, updated)
        if attempt:
            extra["tried"] = _W.tried + 1
        return self._update_held(work, step=step.value, **extra)

    def update_step(
        self,
        work: Work,
        step: Step,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """Record progress (any step); ``previous_state`` and ``updated`` as in :meth:`reschedule`.

        Raises :class:`StaleWorkError` as :meth:`reschedule` does.
        """
        return self._update_held(work, step=step.value, **_snapshot(previous_state, updated))

    def mark_error(self, work_id: int) -> bool:
        """Set step Error on a row by id without reading it (for unreadable rows); True if found."""
        with self._tx() as conn:
            result = conn.execute(
                op_ha_work.update().where(_W.id == work_id).values(step=Step.ERROR.value)
            )
        return result.rowcount == 1

    # -- bulk changes ----------------------------------------------------------

    def release_server(self, server_id: str) -> int:
        """Unclaim ``server_id``'s non-terminal works (server and taken cleared); return how many.

        CloudStack ``releaseWorkItems``: on start-up for this server, and for a
        departed (or killed) management server.
        """
        stmt = (
            op_ha_work.update()
            .where(_W.mgmt_server_id == server_id, _not_terminal())
            .values(mgmt_server_id=None, taken=None)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def cancel_untaken(self, host_id: str, types: Iterable[WorkType], server_id: str) -> int:
        """Cancel the host's unclaimed, non-terminal works of these types; count them.

        CloudStack ``cancelScheduledMigrations``: step Cancelled, ``taken`` now
        and ``mgmt_server_id`` the canceller.
        """
        now, _now_s = self._now()
        stmt = (
            op_ha_work.update()
            .where(
                _W.host_id == host_id,
                _W.type.in_([t.value for t in types]),
                _W.taken.is_(None),
                _not_terminal(),
            )
            .values(step=Step.CANCELLED.value, taken=now, mgmt_server_id=server_id)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def delete_untaken(self, instance_id: str, type: WorkType) -> int:
        """Delete the VM's unclaimed works of ``type`` (``cancelDestroy``); count them."""
        stmt = op_ha_work.delete().where(
            _W.instance_id == instance_id, _W.type == type.value, _W.taken.is_(None)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def mark_pending_as_investigating(self) -> int:
        """Every claimable work (see :meth:`claim`) gets step Investigating; return how many.

        A work in step Stopping keeps it: its stop may have happened without
        the row showing it (see :func:`~cloudha.ha.decisions.decide_ha`).
        """
        _now, now_s = self._now()
        stmt = (
            op_ha_work.update()
            .where(self._claimable(now_s), _W.step != Step.STOPPING.value)
            .values(step=Step.INVESTIGATING.value)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def mark_server_pending_as_investigating(self, server_id: str) -> int:
        """Give ``server_id``'s non-terminal works step Investigating (claim kept); count them.

        A work in step Stopping keeps it, as in :meth:`mark_pending_as_investigating`.
        """
        stmt = (
            op_ha_work.update()
            .where(_W.mgmt_server_id == server_id, _not_terminal(), _W.step != Step.STOPPING.value)
            .values(step=Step.INVESTIGATING.value)
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def cleanup(self, older_than_seconds: float) -> int:
        """Delete Done and Cancelled works last active more than ``older_than_seconds`` ago.

        "Last active" is ``taken`` (the claim that ended it; Cancelled works
        get one too) or, for a work never claimed, ``created``. Error works
        are kept for operators. Returns how many rows were deleted.
        """
        now, _now_s = self._now()
        cutoff = now - dt.timedelta(seconds=older_than_seconds)
        stmt = op_ha_work.delete().where(
            _W.step.in_((Step.DONE.value, Step.CANCELLED.value)),
            sa.func.coalesce(_W.taken, _W.created) < cutoff,
        )
        with self._tx() as conn:
            return conn.execute(stmt).rowcount

    def delete(self, work_ids: Iterable[int]) -> int:
        """Delete the rows with these ids (e.g. ``cancelDestroy``); return how many."""
        ids: Sequence[int] = list(work_ids)
        if not ids:
            return 0
        with self._tx() as conn:
            return conn.execute(op_ha_work.delete().where(_W.id.in_(ids))).rowcount

    # -- the operator's view (cloudha.ports.WorkQueueAdmin) --------------------

    def list_works(
        self,
        *,
        states: Collection[QueueState] | None = None,
        host_id: str | None = None,
        instance_id: str | None = None,
        type: WorkType | None = None,
    ) -> WorkListing:
        """The works in ``states`` (None: all) of this host, VM and type, oldest first.

        One read. Rows holding a value cloudha does not know are listed apart
        (:attr:`~cloudha.ha.work.WorkListing.unreadable`) instead of failing the listing.
        """
        where: list[sa.ColumnElement[bool]] = []
        if states is not None:
            chosen = set(states)
            terminal = [value for state in chosen for value in state.step_values or ()]
            either: list[sa.ColumnElement[bool]] = [_W.step.in_(terminal)] if terminal else []
            if QueueState.PENDING in chosen:
                either.append(_not_terminal())
            where.append(sa.or_(*either) if either else sa.false())
        if host_id is not None:
            where.append(_W.host_id == host_id)
        if instance_id is not None:
            where.append(_W.instance_id == instance_id)
        if type is not None:
            where.append(_W.type == type.value)
        with self._tx() as conn:
            rows = conn.execute(sa.select(op_ha_work).where(*where).order_by(_W.id)).all()
        works: list[Work] = []
        unreadable: list[UnreadableWorkError] = []
        for row in rows:
            try:
                works.append(_to_work(row))
            except UnreadableWorkError as exc:
                unreadable.append(exc)
        return WorkListing(tuple(works), tuple(unreadable))

    def _locked(self, conn: Connection, work_id: int) -> Work:
        """Read one row for a change in this transaction (``FOR UPDATE`` on PostgreSQL)."""
        stmt = sa.select(op_ha_work).where(_W.id == work_id)
        if self._postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one_or_none()
        if row is None:
            raise UnknownWorkError(work_id)
        try:
            return _to_work(row)
        except UnreadableWorkError as exc:
            raise WorkRefusedError(
                work_id, f"the row is unreadable ({exc}); correct or delete it by hand"
            ) from exc

    def _change_seen(self, conn: Connection, work: Work, **values: Any) -> Work:
        """Update the row only if it is still as ``work`` was read (step, claim, token)."""
        stmt = (
            op_ha_work.update()
            .where(
                _W.id == work.id,
                _W.step == work.step.value,
                _W.generation == work.generation,
                _W.mgmt_server_id.is_not_distinct_from(work.mgmt_server_id),
            )
            .values(**values)
            .returning(*op_ha_work.c)
        )
        row = conn.execute(stmt).one_or_none()
        if row is None:  # changed under us: cannot happen under the lock, refuse if it does
            raise WorkRefusedError(work.id, "it changed while being looked at; try again")
        return _to_work(row)

    def retry_work(self, work_id: int) -> Work:
        """Send an Error or Cancelled work back to be investigated anew, due now.

        One transaction: the row is read (locked ``FOR UPDATE`` on PostgreSQL;
        SQLite's ``BEGIN IMMEDIATE`` holds the write lock), checked by
        :func:`~cloudha.ha.work.retry_refusal` with the VM's pending works of the
        same type, then updated, guarded by what was read: step Investigating,
        unclaimed, ``time_to_try`` now, ``tried`` 0. The snapshot and the
        ``generation`` stay; ``op_ha_generation`` is not touched.

        Raises:
            UnknownWorkError: no such work.
            WorkRefusedError: see :meth:`cloudha.ports.WorkQueueAdmin.retry_work`.
        """
        _now, now_s = self._now()
        with self._tx() as conn:
            work = self._locked(conn, work_id)
            pending = conn.execute(
                sa.select(_W.id).where(
                    _W.instance_id == work.instance_id,
                    _W.type == work.type.value,
                    _W.id != work.id,
                    _not_terminal(),
                )
            ).scalars()
            refusal = retry_refusal(work, [int(other) for other in pending])
            if refusal is not None:
                raise WorkRefusedError(work_id, refusal)
            return self._change_seen(
                conn,
                work,
                step=Step.INVESTIGATING.value,
                mgmt_server_id=None,
                taken=None,
                time_to_try=now_s,
                tried=0,
            )

    def cancel_work(self, work_id: int, canceller: str) -> Work:
        """Cancel a pending unclaimed work, or dismiss an Error work (step Cancelled).

        One transaction, like :meth:`retry_work`: read (locked), checked by
        :func:`~cloudha.ha.work.cancel_refusal`, updated guarded by what was
        read: step Cancelled, ``taken`` now, ``mgmt_server_id`` ``canceller``.

        Raises:
            UnknownWorkError: no such work.
            WorkRefusedError: see :meth:`cloudha.ports.WorkQueueAdmin.cancel_work`.
        """
        now, _now_s = self._now()
        with self._tx() as conn:
            work = self._locked(conn, work_id)
            refusal = cancel_refusal(work)
            if refusal is not None:
                raise WorkRefusedError(work_id, refusal)
            return self._change_seen(
                conn, work, step=Step.CANCELLED.value, taken=now, mgmt_server_id=canceller
            )

    def __repr__(self) -> str:
        return f"SqlWorkStore({self._engine.url.render_as_string(hide_password=True)!r})"


WorkStore = SqlWorkStore
"""The old name of :class:`SqlWorkStore`, kept for existing callers."""
