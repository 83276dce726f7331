"""Evidence that lasts: an SQL evidence sink with bounded retention, read by ``cloudha explain``.

:class:`SqlEvidenceStore` keeps every :class:`~cloudha.evidence.Evidence`
record in one table, ``cloudha_evidence``, on an SQLAlchemy engine (SQLite or
PostgreSQL, the work queue's engine or another). It creates the table when
it is missing: the table is append-only and read by nothing else, so it is
not part of the work queue's Alembic migrations.

Writing never gets in the way of a decision. :meth:`SqlEvidenceStore.record`
puts the record in a bounded in-memory buffer and writes the buffer in one
transaction; a thread that finds another one writing leaves its record to that
writer and returns at once; after :meth:`SqlEvidenceStore.start` a writer
thread of its own does every write, so no decision thread ever waits for the
database. A database failure never raises into the caller:
it is logged (once per outage, as a warning naming the database), counted
(:attr:`~SqlEvidenceStore.failed_writes`), and the buffered records are
written at the first record (or :meth:`~SqlEvidenceStore.flush`) after
``retry_interval`` seconds on the injected clock. Only a buffer overflow
during a long outage loses records, oldest first, and those are counted too
(:attr:`~SqlEvidenceStore.dropped`) and logged. A process killed outright
(SIGKILL, a power loss) loses the records it had not written yet: those of its
last moments, in the buffer or in a write not committed.

Retention is bounded by age (``cloudha.evidence.retention``) and by count
(``cloudha.evidence.max.records``), pruned by the writer at most once per
``prune_interval`` seconds of the clock, or sooner once 1% of the row budget
has been inserted since the last prune, so the table never exceeds its budget
by more than about 1%.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, final

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import Connection, Engine

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, LifecycleError, StoreError
from cloudha.evidence import Evidence
from cloudha.ha.store import _UTCDateTime, prepare_sqlite_engine
from cloudha.runtime import Loop, Pump, ThreadFactory
from cloudha.settings import Settings

__all__ = [
    "DEFAULT_BUFFER",
    "SqlEvidenceStore",
    "cloudha_evidence",
    "evidence_metadata",
    "open_engine",
]

log = logging.getLogger(__name__)

DEFAULT_BUFFER: Final = 10_000
"""Records kept in memory while the database is unreachable (about 10 MB at worst)."""

evidence_metadata: Final = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)
"""The evidence table's own metadata (apart from the work queue's migrated tables)."""

cloudha_evidence: Final = sa.Table(
    "cloudha_evidence",
    evidence_metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    ),
    sa.Column("t", sa.Double(), nullable=False),
    sa.Column("at", _UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("host", sa.String(), nullable=True),
    sa.Column("vm", sa.String(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Index(None, "host"),
    sa.Index(None, "vm"),
    sa.Index(None, "at"),
)
"""One row per evidence record: ``t`` is the decider's monotonic clock, ``at`` UTC wall time."""

_E = cloudha_evidence.c


def open_engine(url: str, *, must_exist: bool = False, holds: str = "evidence") -> Engine:
    """An engine for an evidence database URL, with errors that name the URL.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql+psycopg://user@host/db``. With ``must_exist`` a SQLite file
    that does not exist is an error (instead of a new, empty database).
    ``holds`` names what the database holds in the messages (``cloudha
    queue`` opens the HA work queue with it).

    Raises:
        ConfigurationError: the URL is not one, names a backend cloudha does
            not store evidence in, or its driver is not installed.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise ConfigurationError(
            f"{url!r} is not a database URL (e.g. sqlite:////var/lib/cloudha/cloudha.db)",
            key="url",
            value=url,
        ) from exc
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"{shown}: {holds} is stored in SQLite or PostgreSQL, not {backend!r}",
            key="url",
            value=shown,
        )
    if backend == "sqlite" and must_exist:
        database = parsed.database or ""
        # A URI filename (file:PATH?mode=ro with ?uri=true) names its file before the "?".
        path = (
            database.removeprefix("file:").split("?")[0]
            if database.startswith("file:")
            else database
        )
        if path in ("", ":memory:") or "mode=memory" in database:
            raise ConfigurationError(
                f"{shown}: an in-memory database holds no {holds}", key="url", value=shown
            )
        if not Path(path).is_file():
            raise ConfigurationError(f"{shown}: no such database file", key="url", value=shown)
    try:
        return sa.create_engine(parsed)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"{shown}: {_describe(exc)}", key="url", value=shown) from exc


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {text[0] if text else ''}"


def _plain(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats and unknown objects become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _json(details: Mapping[str, Any]) -> dict[str, Any]:
    """The details as strict JSON data, so that no record can be refused by the database
    (and then hold up the buffer behind it)."""
    try:
        plain: dict[str, Any] = json.loads(json.dumps(details, allow_nan=False))
    except (TypeError, ValueError):
        plain = _plain(details)
    return plain


def _row(evidence: Evidence) -> dict[str, Any]:
    return {
        "t": float(evidence.t),
        "at": evidence.at,
        "actor": evidence.actor,
        "kind": evidence.kind,
        "host": evidence.host,
        "vm": evidence.vm,
        "reason": evidence.reason,
        "details": _json(evidence.details),
    }


def _evidence(row: Mapping[str, Any]) -> Evidence:
    details = row["details"]
    return Evidence(
        kind=row["kind"],
        t=row["t"],
        at=row["at"],
        actor=row["actor"],
        host=row["host"],
        vm=row["vm"],
        reason=row["reason"],
        details=details if isinstance(details, dict) else {},
    )


@final
class SqlEvidenceStore:
    """An :class:`~cloudha.evidence.EvidenceSink` writing to SQL, with bounded retention.

    Thread-safe. ``record`` never raises and never waits for another thread's
    write (see the module docstring): it writes the buffer in the calling
    thread unless another thread is writing, or, once :meth:`start` has
    started a writer thread, only buffers and wakes that thread.
    :meth:`flush` writes what is buffered and says whether the buffer is
    empty; :meth:`close` stops the writer thread and flushes.

    Args:
        engine: the database (the caller owns and disposes of it). SQLite
            engines of a writer are prepared like the work queue's
            (:func:`~cloudha.ha.store.prepare_sqlite_engine`).
        clock: the only source of time (pruning, retries, the retention cut).
        retention: seconds a record is kept (by its wall time ``at``).
        max_records: rows kept at most (the newest).
        buffer: records kept in memory while the database cannot be written.
        retry_interval: seconds between write attempts during an outage.
        prune_interval: seconds between prunes at most.
        create: create the table when it is missing (and prepare a SQLite
            engine); with False (readers such as ``cloudha explain``) a missing
            table is an error and the engine is left as it is.

    Raises:
        ConfigurationError: a bound that is not positive, or a database other
            than SQLite or PostgreSQL.
        StoreError: the table cannot be created or is missing (the database is
            unreachable, or refuses).
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        retention: float = 30 * 86_400.0,
        max_records: int = 1_000_000,
        buffer: int = DEFAULT_BUFFER,
        retry_interval: float = 5.0,
        prune_interval: float = 60.0,
        create: bool = True,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"evidence store: unsupported database {engine.dialect.name!r}"
                " (SQLite or PostgreSQL)",
                key="engine",
                value=engine.dialect.name,
            )
        for key, value in (
            ("retention", retention),
            ("max_records", max_records),
            ("buffer", buffer),
            ("retry_interval", retry_interval),
            ("prune_interval", prune_interval),
        ):
            if not value > 0:
                raise ConfigurationError(
                    f"evidence store: {key} must be positive, got {value!r}", key=key, value=value
                )
        self._engine = engine
        self._clock = clock
        self.retention = float(retention)
        self.max_records = int(max_records)
        self.retry_interval = float(retry_interval)
        self.prune_interval = float(prune_interval)
        self._prune_every = max(1, self.max_records // 100)
        self._pending: collections.deque[tuple[int, Evidence]] = collections.deque(
            maxlen=int(buffer)
        )
        self._seq = 0
        self._lock = threading.Lock()  # guards the buffer and the counters
        self._writing = threading.Lock()  # held by the one thread writing
        self._retry_at: float | None = None
        self._pump: Pump | None = None
        self._last_prune = clock.monotonic()
        self._since_prune = 0
        self.stored = 0
        """Records written so far."""
        self.failed_writes = 0
        """Write attempts that failed (each one retried later)."""
        self.dropped = 0
        """Records lost because the buffer overflowed during an outage."""
        try:
            if create:
                prepare_sqlite_engine(engine)
                evidence_metadata.create_all(engine, checkfirst=True)
                return
            # A reader leaves a SQLite file as it is (no WAL switch): it may be read-only.
            present = sa.inspect(engine).has_table(cloudha_evidence.name)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StoreError(f"evidence store {self._where}: {_describe(exc)}") from exc
        if not present:
            raise StoreError(f"evidence store {self._where}: no {cloudha_evidence.name} table")

    @classmethod
    def from_settings(
        cls, engine: Engine, clock: Clock, settings: Settings, **kwargs: Any
    ) -> SqlEvidenceStore:
        """A store whose retention is ``cloudha.evidence.retention`` / ``.max.records``."""
        return cls(
            engine,
            clock,
            retention=settings.cloudha_evidence_retention,
            max_records=settings.cloudha_evidence_max_records,
            **kwargs,
        )

    @property
    def _where(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """The engine given at construction."""
        return self._engine

    @property
    def pending(self) -> int:
        """Records buffered, not written yet."""
        with self._lock:
            return len(self._pending)

    # -- writing ---------------------------------------------------------------

    def record(self, evidence: Evidence) -> None:
        """Keep ``evidence``: buffer it, then write the buffer (see the class docstring)."""
        dropped = 0
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
                dropped = self.dropped
            self._seq += 1
            self._pending.append((self._seq, evidence))
            waiting = self._retry_at is not None and self._clock.monotonic() < self._retry_at
        if dropped == 1 or dropped % 1000 == 1:
            log.error(
                "evidence store %s: buffer full, %d records dropped so far (oldest first)",
                self._where,
                dropped,
            )
        pump = self._pump
        if pump is not None:
            pump.wake()
        elif not waiting:
            self._drain()

    # -- writing on a thread of its own ------------------------------------------

    def loop(self) -> Loop:
        """The writer as a loop (``Evidence-Writer``) for a :class:`~cloudha.runtime.Pump`."""
        return Loop("Evidence-Writer", self.tick, wake_on_work=True)

    def tick(self) -> float:
        """Write what is buffered (unless a retry is not due yet); seconds until the next write.

        Woken by every record, it still tries a failing database only once per
        ``retry_interval``.
        """
        with self._lock:
            retry_at = self._retry_at
        if retry_at is None or self._clock.monotonic() >= retry_at:
            with self._writing:
                self._write_all()
        with self._lock:
            if self._retry_at is not None:
                return max(0.0, self._retry_at - self._clock.monotonic())
            return 0.0 if self._pending else self.prune_interval

    def start(self, thread_factory: ThreadFactory = threading.Thread) -> None:
        """Write on a thread of its own from now on: ``record`` only buffers and wakes it.

        Then no decision thread ever waits for the database (a locked SQLite
        file, a PostgreSQL server that does not answer). :meth:`close` stops it.

        Raises:
            LifecycleError: the writer thread is running already.
        """
        with self._lock:
            if self._pump is not None:
                raise LifecycleError(f"{self!r}: the writer thread is running already")
            self._pump = self.loop().pump(clock=self._clock, thread_factory=thread_factory)
        self._pump.start()

    def flush(self) -> bool:
        """Write the buffered records now (waiting for another writer); True if none is left."""
        with self._writing:
            self._write_all()
        return self.pending == 0

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer thread (if started, waiting up to ``timeout`` seconds), then flush.

        Records still unwritten are logged as lost.
        """
        pump = self._pump
        if pump is not None:
            pump.request_stop()
            if not pump.join(timeout):
                log.error(
                    "evidence store %s: writer thread still busy after %gs", self._where, timeout
                )
                return
            self._pump = None  # later records are written by their callers again
        if not self.flush():
            log.error(
                "evidence store %s: closed with %d records unwritten", self._where, self.pending
            )

    def _drain(self) -> None:
        while self._writing.acquire(blocking=False):  # else the thread writing takes ours
            try:
                self._write_all()
            finally:
                self._writing.release()
            # A record buffered between our last batch and the release would wait
            # for the next record: write it now unless another thread took over.
            with self._lock:
                if not self._pending or self._retry_at is not None:
                    return

    def _write_all(self) -> None:
        """Write batches until the buffer is empty or the database fails (caller holds _writing)."""
        while True:
            with self._lock:
                batch = list(self._pending)
            if not batch:
                return
            try:
                with self._engine.begin() as conn:
                    conn.execute(cloudha_evidence.insert(), [_row(e) for _, e in batch])
                    self._since_prune += len(batch)
                    if self._prune_due():
                        self._prune(conn)
            except Exception as exc:  # evidence must not break a decision
                with self._lock:
                    self.failed_writes += 1
                    first = self._retry_at is None
                    self._retry_at = self._clock.monotonic() + self.retry_interval
                    pending = len(self._pending)
                (log.warning if first else log.debug)(
                    "evidence store %s: write failed, %d records buffered, retrying in %gs: %s",
                    self._where,
                    pending,
                    self.retry_interval,
                    _describe(exc),
                )
                return
            last = batch[-1][0]
            with self._lock:
                # Only the writer removes; an overflow meanwhile dropped from the left.
                while self._pending and self._pending[0][0] <= last:
                    self._pending.popleft()
                self.stored += len(batch)
                if self._retry_at is not None:
                    log.warning("evidence store %s: writing again", self._where)
                self._retry_at = None

    # -- retention -------------------------------------------------------------

    def _prune_due(self) -> bool:
        return (
            self._since_prune >= self._prune_every
            or self._clock.monotonic() - self._last_prune >= self.prune_interval
        )

    def _prune(self, conn: Connection) -> None:
        cut = self._clock.now() - dt.timedelta(seconds=self.retention)
        conn.execute(cloudha_evidence.delete().where(_E.at < cut))
        keep_from = (
            sa.select(_E.id)
            .order_by(_E.id.desc())
            .offset(self.max_records - 1)
            .limit(1)
            .scalar_subquery()
        )
        conn.execute(cloudha_evidence.delete().where(_E.id < keep_from))
        self._last_prune = self._clock.monotonic()
        self._since_prune = 0

    def prune(self) -> None:
        """Apply the retention bounds now (the writer also does it by itself)."""
        with self._writing, self._tx() as conn:
            self._prune(conn)

    # -- reading ---------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise StoreError(f"evidence store {self._where}: {_describe(exc)}") from exc

    def records(
        self, *, host: str | None = None, vm: str | None = None, kinds: Iterable[str] = ()
    ) -> list[Evidence]:
        """Stored records in decision order (wall time, then insertion), optionally filtered.

        Records still buffered are not included (:meth:`flush` first).

        Raises:
            StoreError: the database cannot be read.
        """
        query = sa.select(cloudha_evidence).order_by(_E.at, _E.id)
        if host is not None:
            query = query.where(_E.host == host)
        if vm is not None:
            query = query.where(_E.vm == vm)
        wanted = list(kinds)
        if wanted:
            query = query.where(_E.kind.in_(wanted))
        with self._tx() as conn:
            return [_evidence(row._asdict()) for row in conn.execute(query)]

    def records_for(self, subject: str) -> list[Evidence]:
        """Every stored record about ``subject`` (as its host or its VM), in decision order."""
        query = (
            sa.select(cloudha_evidence)
            .where(sa.or_(_E.host == subject, _E.vm == subject))
            .order_by(_E.at, _E.id)
        )
        with self._tx() as conn:
            return [_evidence(row._asdict()) for row in conn.execute(query)]

    def decisions_about(self, subject: str) -> list[Evidence]:
        """The chain of decisions about a host or VM, oldest first; empty when unknown.

        A host's chain is every record naming it (its status changes and
        investigations, and the fences and HA works of its VMs). A VM's chain
        is every record naming it plus, for each host its HA works, fences and
        other decisions name (the host it was on, not the one a ``vm_state``
        says it started on), that host's own records (``vm`` unset: behind on
        ping, investigations, status changes, HA scheduling ...) up to the
        VM's last record there: the decisions that led to its fence and
        restart.

        Raises:
            StoreError: the database cannot be read.
        """
        order = (_E.at, _E.id)
        with self._tx() as conn:
            own = list(
                conn.execute(
                    sa.select(cloudha_evidence)
                    .where(sa.or_(_E.host == subject, _E.vm == subject))
                    .order_by(*order)
                )
            )
            rows = {row.id: row for row in own}
            last_on: dict[str, tuple[dt.datetime, int]] = {}
            for row in own:
                if row.vm == subject and row.host not in (None, subject) and row.kind != "vm_state":
                    last_on[row.host] = max(
                        last_on.get(row.host, (row.at, row.id)), (row.at, row.id)
                    )
            for host, (at, row_id) in sorted(last_on.items()):
                query = (
                    sa.select(cloudha_evidence)
                    .where(
                        _E.host == host,
                        _E.vm.is_(None),
                        sa.or_(_E.at < at, sa.and_(_E.at == at, _E.id <= row_id)),
                    )
                    .order_by(*order)
                )
                rows.update((row.id, row) for row in conn.execute(query))
        chain = sorted(rows.values(), key=lambda row: (row.at, row.id))
        return [_evidence(row._asdict()) for row in chain]

    def subjects(self) -> dict[str, set[str]]:
        """The hosts and VMs the stored records are about: ``{"hosts": {...}, "vms": {...}}``."""
        with self._tx() as conn:
            hosts = set(conn.execute(sa.select(_E.host).where(_E.host.is_not(None)).distinct()))
            vms = set(conn.execute(sa.select(_E.vm).where(_E.vm.is_not(None)).distinct()))
        return {"hosts": {row[0] for row in hosts}, "vms": {row[0] for row in vms}}

    def __len__(self) -> int:
        with self._tx() as conn:
            count = sa.select(sa.func.count()).select_from(cloudha_evidence)
            return int(conn.execute(count).scalar_one())

    def __repr__(self) -> str:
        return f"SqlEvidenceStore({self._where!r})"
