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

__all__ = ["Evidence", "EvidenceLog", "EvidenceSink", "Recorder"]

log = logging.getLogger(__name__)

JSONValue = Any


@attrs.frozen
class Evidence:
    """One decision.

    Attributes:
        kind: what was decided: ``host_status``, ``investigation``, ``alert``,
            ``ping_map``, ``ha_scheduled``, ``fault`` ...
        t: ``clock.monotonic()`` when it was decided.
        at: wall time when it was decided.
        actor: who decided (a management server id, or a component name).
        host: the host concerned, if any.
        vm: the virtual machine concerned, if any.
        reason: one human sentence: why.
        details: the decision's facts (JSON-able), e.g. ``from``/``to``/``event``
            for a status change or ``findings`` for an investigation.
    """

    kind: str
    t: float
    at: dt.datetime
    actor: str
    host: str | None = None
    vm: str | None = None
    reason: str = ""
    details: Mapping[str, JSONValue] = attrs.field(factory=dict)

    def to_event(self) -> dict[str, JSONValue]:
        """A flat JSON-able dict: t, kind, host/vm when set, details, reason, actor."""
        event: dict[str, JSONValue] = {"t": round(self.t, 3), "kind": self.kind}
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
