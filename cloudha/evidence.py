"""Evidence: a structured record of every decision.

Each status change, investigation, alert and (later) fence or restart is an
:class:`Evidence` record saying who decided what, when, and why, with what
each witness said. Records go to an :class:`EvidenceSink`; the default
:class:`EvidenceLog` keeps the most recent ones in memory, logs them, and
hands them to subscribers (metrics, an audit table, the simulator's
timeline). Records hold only plain JSON-able data and never credentials.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, final, runtime_checkable

import attrs

from cloudha.clock import Clock

__all__ = ["Evidence", "EvidenceLog", "EvidenceSink", "Recorder", "TeeSink"]

log = logging.getLogger(__name__)

JSONValue = Any


def _utc(at: dt.datetime) -> dt.datetime:
    if not isinstance(at, dt.datetime):
        raise TypeError(f"evidence time must be a datetime, got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"evidence time {at!r} is naive: a Clock's now() must be aware UTC")
    return at.astimezone(dt.UTC)


@attrs.frozen
class Evidence:
    """One decision.

    Attributes:
        kind: what was decided: ``host_status``, ``investigation``, ``alert``,
            ``ping_map``, ``ha_scheduled``, ``fault`` ...
        t: ``clock.monotonic()`` when it was decided (orders one actor's decisions).
        at: wall time when it was decided: ``clock.now()``, timezone-aware and
            in UTC (an aware time in another zone is converted; a naive one is
            refused with ``ValueError``, as the :class:`~cloudha.clock.Clock`
            contract demands UTC).
        actor: who decided (a management server id, or a component name).
        host: the host concerned, if any.
        vm: the virtual machine concerned, if any.
        reason: one human sentence: why.
        details: the decision's facts (JSON-able), e.g. ``from``/``to``/``event``
            for a status change or ``findings`` for an investigation.
    """

    kind: str
    t: float
    at: dt.datetime = attrs.field(converter=_utc)
    actor: str
    host: str | None = None
    vm: str | None = None
    reason: str = ""
    details: Mapping[str, JSONValue] = attrs.field(factory=dict)

    def to_event(self, *, wall: bool = False) -> dict[str, JSONValue]:
        """A flat JSON-able dict: t, kind, host/vm when set, details, reason, actor.

        With ``wall``, ``at`` (ISO 8601 UTC, e.g. ``"2026-12-06T22:01:00.250000+00:00"``)
        follows ``t``. The simulator's documents leave it out: their wall time
        is the virtual time after the Unix epoch, ``t`` already says it.
        """
        event: dict[str, JSONValue] = {"t": round(self.t, 3)}
        if wall:
            event["at"] = self.at.isoformat()
        event["kind"] = self.kind
        if self.host is not None:
            event["host"] = self.host
        if self.vm is not None:
            event["vm"] = self.vm
        event.update(self.details)
        if self.reason:
            event["reason"] = self.reason
        event["actor"] = self.actor
        return event


@runtime_checkable
class EvidenceSink(Protocol):
    """Where evidence goes. ``record`` is called from any thread and must not block for long."""

    def record(self, evidence: Evidence) -> None:
        """Keep ``evidence``."""


@final
class EvidenceLog:
    """Thread-safe in-memory evidence, newest ``capacity`` records, with subscribers.

    Every record is also logged at INFO on the ``cloudha.evidence`` logger.
    """

    def __init__(self, capacity: int | None = 10_000) -> None:
        self._records: deque[Evidence] = deque(maxlen=capacity)
        self._subscribers: list[Callable[[Evidence], None]] = []
        self._lock = threading.Lock()

    def record(self, evidence: Evidence) -> None:
        with self._lock:
            self._records.append(evidence)
            subscribers = list(self._subscribers)
        log.info("%s host=%s vm=%s %s", evidence.kind, evidence.host, evidence.vm, evidence.reason)
        for subscriber in subscribers:
            subscriber(evidence)

    def subscribe(self, callback: Callable[[Evidence], None]) -> Callable[[], None]:
        """Call ``callback`` with every new record; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def records(
        self, *, kind: str | None = None, host: str | None = None, vm: str | None = None
    ) -> list[Evidence]:
        """The kept records, oldest first, optionally filtered."""
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (kind is None or r.kind == kind)
            and (host is None or r.host == host)
            and (vm is None or r.vm == vm)
        ]

    def __iter__(self) -> Iterator[Evidence]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self._records)


@final
class TeeSink:
    """Hands every record to each of ``sinks`` in turn, e.g. an :class:`EvidenceLog` and SQL.

    ``ManagementServer(evidence=TeeSink(log, SqlEvidenceStore(engine, clock)))``
    keeps the in-memory log and stores to SQL. A sink that raises is logged
    (with the record's kind and subject) and the others still get the record:
    evidence never breaks the decision that produced it.
    """

    def __init__(self, *sinks: EvidenceSink) -> None:
        for index, sink in enumerate(sinks):
            if not callable(getattr(sink, "record", None)):
                raise TypeError(f"TeeSink: sink {index} ({sink!r}) has no record() method")
        self.sinks: tuple[EvidenceSink, ...] = sinks

    def record(self, evidence: Evidence) -> None:
        for sink in self.sinks:
            try:
                sink.record(evidence)
            except Exception:
                log.exception(
                    "evidence sink %r failed on %s host=%s vm=%s",
                    sink,
                    evidence.kind,
                    evidence.host,
                    evidence.vm,
                )


@final
class Recorder:
    """Stamps and sends evidence for one actor: ``recorder.emit("alert", host=..., reason=...)``."""

    def __init__(self, sink: EvidenceSink, clock: Clock, actor: str) -> None:
        self.sink = sink
        self.clock = clock
        self.actor = actor

    def emit(
        self,
        kind: str,
        *,
        host: str | None = None,
        vm: str | None = None,
        reason: str = "",
        **details: JSONValue,
    ) -> Evidence:
        evidence = Evidence(
            kind=kind,
            t=self.clock.monotonic(),
            at=self.clock.now(),
            actor=self.actor,
            host=host,
            vm=vm,
            reason=reason,
            details=details,
        )
        self.sink.record(evidence)
        return evidence
