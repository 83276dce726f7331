"""The fence builder extension point: make sure a VM cannot run on a host any more.

A fence builder is asked to fence a VM off a host that was judged Down (or
whose VM is about to be restarted elsewhere). It answers with a
:class:`FenceResult` whose :class:`FenceOutcome` is one of:

* FENCED: the VM cannot be running there any more, with proof (the power
  read back Off, the storage heartbeat proven stale by a neighbour, the
  domain destroyed and read back).
* NOT_FENCED: the fencer tried and could not prove it (BMC silent, heartbeat
  still fresh, neighbour unreachable).
* NOT_APPLICABLE: this fencer cannot act on this host or VM at all (another
  hypervisor, no BMC configured); it is skipped without counting as a failure.

These replace CloudStack's TRUE / FALSE / null.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.errors import ProbeError
from cloudha.model import Host, Vm

__all__ = ["BaseFenceBuilder", "FenceBuilder", "FenceOutcome", "FenceResult"]

log = logging.getLogger(__name__)


class FenceOutcome(enum.Enum):
    """How a fence attempt ended."""

    FENCED = "FENCED"
    NOT_FENCED = "NOT_FENCED"
    NOT_APPLICABLE = "NOT_APPLICABLE"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class FenceResult:
    """One fencer's answer.

    Attributes:
        outcome: FENCED, NOT_FENCED or NOT_APPLICABLE.
        fencer: the fencer's name.
        reason: why, in one sentence.
        evidence: what was done and seen (JSON-able, never credentials).
        started_at: ``clock.monotonic()`` when the attempt started.
        finished_at: ``clock.monotonic()`` when it ended.
    """

    outcome: FenceOutcome
    fencer: str
    reason: str
    evidence: Mapping[str, Any] = attrs.field(factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def fenced(self) -> bool:
        return self.outcome is FenceOutcome.FENCED

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form used in evidence records."""
        out: dict[str, Any] = {
            "fencer": self.fencer,
            "outcome": self.outcome.value,
            "reason": self.reason,
        }
        if self.evidence:
            out["evidence"] = dict(self.evidence)
        return out


@runtime_checkable
class FenceBuilder(Protocol):
    """Something that can fence a VM off a host.

    Contract:
        * ``name`` is stable: it is what ``ha.fence.builders.exclude`` and
          fence levels refer to.
        * ``timeout`` is the longest ``fence_off`` may take, in seconds; the
          chain gives up on the attempt after it (and treats it as NOT_FENCED).
        * ``fence_off`` returns FENCED only with proof that the VM cannot be
          running on ``host`` (a power state read back Off, a heartbeat
          proven stale, a domain read back destroyed); "I sent the command"
          is not proof.
        * NOT_APPLICABLE means "not mine to judge" (another hypervisor, no
          BMC configured); it must be decided without I/O.
        * Infrastructure faults are NOT_FENCED results, not exceptions. It is
          called from several threads at once.
        * No credentials in the result.
    """

    name: str
    timeout: float

    def fence_off(self, vm: Vm, host: Host) -> FenceResult:
        """Make sure ``vm`` no longer runs on ``host``; say how that went."""


class BaseFenceBuilder(abc.ABC):
    """Template for fence builders: subclasses implement :meth:`_fence`.

    :meth:`fence_off` answers NOT_APPLICABLE when :meth:`supports` says no,
    calls :meth:`_fence` otherwise, turns a
    :class:`~cloudha.errors.ProbeError` into NOT_FENCED, and stamps the
    start and end times from the injected clock.

    Args:
        clock: the time source.
        timeout: the longest one fence attempt may take, in seconds.
    """

    name: str = "BaseFenceBuilder"

    def __init__(self, clock: Clock, *, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"{type(self).__name__}: timeout must be positive, got {timeout!r}")
        self.clock = clock
        self.timeout = float(timeout)

    def supports(self, vm: Vm, host: Host) -> bool:
        """True if this fencer can act on ``host``/``vm`` at all; cheap, no I/O."""
        return True

    def fence_off(self, vm: Vm, host: Host) -> FenceResult:
        if not self.supports(vm, host):
            return self._attempt(host, None)
        return self._attempt(host, lambda: self._fence(vm, host))

    def _attempt(self, host: Host, act: Callable[[], FenceResult] | None) -> FenceResult:
        """Run ``act`` (None: not applicable) as :meth:`fence_off` runs ``_fence``."""
        started = self.clock.monotonic()
        if act is None:
            result = self.not_applicable(f"{self.name} does not handle host {host.id}")
        else:
            try:
                result = act()
            except ProbeError as exc:
                result = self.not_fenced(f"{exc}", error=type(exc).__name__)
        if not isinstance(result, FenceResult):
            raise TypeError(f"{type(self).__name__}._fence returned {result!r}, not a FenceResult")
        return attrs.evolve(result, started_at=started, finished_at=self.clock.monotonic())

    @abc.abstractmethod
    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        """Fence ``vm`` off ``host``; may raise ProbeError."""

    def result(self, outcome: FenceOutcome, reason: str, **evidence: Any) -> FenceResult:
        return FenceResult(outcome, self.name, reason, evidence)

    def fenced(self, reason: str, **evidence: Any) -> FenceResult:
        return self.result(FenceOutcome.FENCED, reason, **evidence)

    def not_fenced(self, reason: str, **evidence: Any) -> FenceResult:
        return self.result(FenceOutcome.NOT_FENCED, reason, **evidence)

    def not_applicable(self, reason: str, **evidence: Any) -> FenceResult:
        return self.result(FenceOutcome.NOT_APPLICABLE, reason, **evidence)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, timeout={self.timeout!r})"
