"""The fence chain: fence levels tried in order, each bounded in time.

A chain is an ordered list of :class:`FenceLevel` (Pacemaker's fencing
topology). A level holds one or more fencers that must *all* fence the VM
off the host, asked one after the other; a level whose fencers are all
NOT_APPLICABLE is skipped. The first level that succeeds ends the attempt
with FENCED. A level fails as soon as one of its fencers answers NOT_FENCED,
raises, or overruns its ``timeout``, and the next level is tried.

CloudStack's flat registry is the special case of one fencer per level, in
registration order (spec §5): :meth:`FenceChain.from_builders`.

Nothing waits forever: every fencer call runs through a :class:`FenceRunner`
that gives up after the fencer's own ``timeout``, so a whole attempt is
bounded by the sum of the fencers' timeouts, each plus :data:`GRACE`
(:attr:`FenceChain.bound`). When
no level fences, the attempt ends NOT_FENCED and is *escalated*: an alert
names the host and every attempt, and the evidence says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, final, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.deadline import DeadlineExceeded, DeadlineRunner
from cloudha.errors import ConfigurationError
from cloudha.evidence import Recorder
from cloudha.fencing.base import FenceBuilder, FenceOutcome, FenceResult
from cloudha.model import AlertType, Host, Vm
from cloudha.ports import Alert, AlertSink

__all__ = [
    "FenceChain",
    "FenceDecision",
    "FenceLevel",
    "FenceRunner",
    "InlineRunner",
    "ThreadRunner",
]

log = logging.getLogger(__name__)

GRACE = 1.0
"""Seconds a fencer may overrun its ``timeout`` (to return its own timeout result) before
the chain stops waiting for it."""


@runtime_checkable
class FenceRunner(Protocol):
    """Runs one fencer call with a time limit.

    ``run`` returns the call's result, or raises :class:`TimeoutError` when
    it has not finished within ``timeout`` seconds (the call may go on in the
    background; its result is then ignored).
    """

    def run(self, call: Callable[[], FenceResult], timeout: float) -> FenceResult:
        """Run ``call``, giving up after ``timeout`` seconds."""


@final
class ThreadRunner:
    """Runs each call on a daemon thread and waits at most ``timeout`` wall seconds.

    A fencer stuck in I/O past its timeout is abandoned, not joined: it may
    not block the chain, nor the interpreter's exit (:mod:`cloudha.deadline`).
    """

    def __init__(self) -> None:
        self._runner = DeadlineRunner("cloudha-fence")

    @property
    def lingering(self) -> int:
        """Abandoned fencer calls that have not returned yet."""
        return self._runner.lingering

    def run(self, call: Callable[[], FenceResult], timeout: float) -> FenceResult:
        try:
            return self._runner.run(lambda _ticket: call(), timeout, label="fence_off")
        except DeadlineExceeded:
            raise TimeoutError(f"no answer within {timeout:g}s") from None


@final
class InlineRunner:
    """Runs calls in the calling thread and judges the time limit by ``clock``.

    For tests and the simulator, where fencers move a
    :class:`~cloudha.testing.FakeClock` instead of blocking: a call that
    moved the clock past its timeout counts as timed out.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def run(self, call: Callable[[], FenceResult], timeout: float) -> FenceResult:
        started = self.clock.monotonic()
        result = call()
        took = self.clock.monotonic() - started
        if took > timeout:
            raise TimeoutError(f"took {took:g}s, more than its {timeout:g}s")
        return result


def _to_tuple(fencers: Iterable[FenceBuilder]) -> tuple[FenceBuilder, ...]:
    return tuple(fencers)


@attrs.frozen
class FenceLevel:
    """Fencers that must all fence; tried one after the other.

    Attributes:
        fencers: at least one.
    """

    fencers: tuple[FenceBuilder, ...] = attrs.field(converter=_to_tuple)

    def __attrs_post_init__(self) -> None:
        if not self.fencers:
            raise ValueError("a fence level needs at least one fencer")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fencers)

    @property
    def bound(self) -> float:
        """The longest this level may take: its fencers' timeouts, each with :data:`GRACE`."""
        return sum(f.timeout + GRACE for f in self.fencers)


@attrs.frozen
class FenceDecision:
    """How one fence attempt through the chain ended.

    Attributes:
        outcome: FENCED if a level succeeded; NOT_APPLICABLE if no fencer
            could act at all; NOT_FENCED otherwise.
        host_id: the host.
        vm_id: the VM.
        level: index of the level that fenced, or None.
        attempts: every fencer's result, in the order asked (with the level
            index in each result's evidence under ``level``).
        escalated: True when no level fenced although some tried (an alert
            was raised).
        reason: one sentence.
    """

    outcome: FenceOutcome
    host_id: str
    vm_id: str
    level: int | None
    attempts: tuple[FenceResult, ...]
    escalated: bool
    reason: str

    @property
    def fenced(self) -> bool:
        return self.outcome is FenceOutcome.FENCED

    @property
    def fenced_by(self) -> tuple[str, ...]:
        """Names of the fencers of the level that fenced."""
        if self.level is None:
            return ()
        return tuple(
            a.fencer
            for a in self.attempts
            if a.evidence.get("level") == self.level and a.outcome is FenceOutcome.FENCED
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "host": self.host_id,
            "vm": self.vm_id,
            "level": self.level,
            "escalated": self.escalated,
            "reason": self.reason,
            "attempts": [a.to_dict() for a in self.attempts],
        }


class FenceChain:
    """Fence levels asked in order until one fences.

    Args:
        levels: the levels, in order; each a :class:`FenceLevel`, a fencer,
            or a sequence of fencers.
        clock: stamps results and judges the :class:`InlineRunner`.
        runner: runs each fencer call with its timeout (default
            :class:`ThreadRunner`).
        alerts: where escalations go (an alert per escalated attempt).
        recorder: where each attempt and escalation is recorded as evidence
            (kinds ``fence`` and ``fence_escalated``).
    """

    def __init__(
        self,
        levels: Iterable[FenceLevel | FenceBuilder | Sequence[FenceBuilder]],
        *,
        clock: Clock,
        runner: FenceRunner | None = None,
        alerts: AlertSink | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        built: list[FenceLevel] = []
        for i, level in enumerate(levels):
            if isinstance(level, FenceLevel):
                built.append(level)
            elif isinstance(level, FenceBuilder):
                built.append(FenceLevel((level,)))
            else:
                members = tuple(level)
                for member in members:
                    if not isinstance(member, FenceBuilder):
                        raise ConfigurationError(
                            f"fence level {i}: {member!r} is not a fence builder "
                            "(needs name, timeout and fence_off)",
                            key="fence levels",
                            value=repr(member),
                        )
                built.append(FenceLevel(members))
        for level in built:
            for fencer in level.fencers:
                if not fencer.timeout > 0:
                    raise ConfigurationError(
                        f"fencer {fencer.name!r}: timeout must be positive, got {fencer.timeout!r}",
                        key="fence levels",
                        value=fencer.name,
                    )
        self.levels: tuple[FenceLevel, ...] = tuple(built)
        self.clock = clock
        self.runner: FenceRunner = runner if runner is not None else ThreadRunner()
        self.alerts = alerts
        self.recorder = recorder

    @classmethod
    def from_builders(
        cls,
        builders: Iterable[FenceBuilder],
        *,
        exclude: Iterable[str] = (),
        clock: Clock,
        runner: FenceRunner | None = None,
        alerts: AlertSink | None = None,
        recorder: Recorder | None = None,
    ) -> FenceChain:
        """CloudStack's registry: one level per fencer in registration order, minus ``exclude``."""
        excluded = set(exclude)
        return cls(
            [b for b in builders if b.name not in excluded],
            clock=clock,
            runner=runner,
            alerts=alerts,
            recorder=recorder,
        )

    @property
    def names(self) -> list[list[str]]:
        """The fencers' names, level by level."""
        return [list(level.names) for level in self.levels]

    @property
    def bound(self) -> float:
        """The longest a :meth:`fence_off` may take: the sum of the levels' bounds."""
        return sum(level.bound for level in self.levels)

    def fence_off(self, vm: Vm, host: Host) -> FenceDecision:
        """Fence ``vm`` off ``host`` through the levels; never raises for a fencer's fault."""
        attempts: list[FenceResult] = []
        tried = False
        for index, level in enumerate(self.levels):
            level_ok = True
            level_applicable = False
            for fencer in level.fencers:
                result = self._attempt(fencer, vm, host, index)
                attempts.append(result)
                self._record(result, vm, host)
                if result.outcome is FenceOutcome.NOT_APPLICABLE:
                    continue
                level_applicable = True
                if result.outcome is not FenceOutcome.FENCED:
                    level_ok = False
                    break
            if not level_applicable:
                continue
            tried = True
            if level_ok:
                names = ", ".join(a.fencer for a in attempts if a.evidence.get("level") == index)
                return FenceDecision(
                    FenceOutcome.FENCED,
                    host.id,
                    vm.id,
                    index,
                    tuple(attempts),
                    escalated=False,
                    reason=f"fenced by level {index} ({names})",
                )
        if not tried:
            return FenceDecision(
                FenceOutcome.NOT_APPLICABLE,
                host.id,
                vm.id,
                None,
                tuple(attempts),
                escalated=False,
                reason=f"no fencer can act on host {host.id}",
            )
        decision = FenceDecision(
            FenceOutcome.NOT_FENCED,
            host.id,
            vm.id,
            None,
            tuple(attempts),
            escalated=True,
            reason=f"unable to fence off host {host.id}: every level failed",
        )
        self._escalate(decision, host)
        return decision

    def _attempt(self, fencer: FenceBuilder, vm: Vm, host: Host, level: int) -> FenceResult:
        started = self.clock.monotonic()
        try:
            result = self.runner.run(lambda: fencer.fence_off(vm, host), fencer.timeout + GRACE)
            if not isinstance(result, FenceResult):
                raise TypeError(f"fence_off returned {result!r}, not a FenceResult")
        except TimeoutError as exc:
            result = FenceResult(
                FenceOutcome.NOT_FENCED,
                fencer.name,
                f"gave up: {exc}",
                {"error": "timeout", "timeout": fencer.timeout + GRACE},
                started_at=started,
            )
        except Exception as exc:
            log.exception("fencer %s failed on host %s (vm %s)", fencer.name, host.id, vm.id)
            result = FenceResult(
                FenceOutcome.NOT_FENCED,
                fencer.name,
                f"fencer failed: {type(exc).__name__}: {exc}",
                {"error": type(exc).__name__},
                started_at=started,
            )
        evidence = dict(result.evidence)
        evidence["level"] = level
        return attrs.evolve(
            result,
            fencer=fencer.name,
            evidence=evidence,
            started_at=result.started_at or started,
            finished_at=self.clock.monotonic(),
        )

    def _record(self, result: FenceResult, vm: Vm, host: Host) -> None:
        # A fencer that does not apply decided nothing: it stays in the decision's
        # attempts but is not evidence of its own.
        if self.recorder is None or result.outcome is FenceOutcome.NOT_APPLICABLE:
            return
        details = {k: v for k, v in result.evidence.items() if k != "level"}
        self.recorder.emit(
            "fence",
            host=host.id,
            vm=vm.id,
            reason=result.reason,
            fencer=result.fencer,
            outcome=result.outcome.value,
            level=result.evidence.get("level"),
            seconds=round(max(0.0, result.finished_at - result.started_at), 3),
            evidence=details,
        )

    def _escalate(self, decision: FenceDecision, host: Host) -> None:
        lines = [
            f"{a.fencer}: {a.outcome} ({a.reason})"
            for a in decision.attempts
            if a.outcome is not FenceOutcome.NOT_APPLICABLE
        ]
        log.warning("%s; attempts: %s", decision.reason, "; ".join(lines))
        if self.recorder is not None:
            self.recorder.emit(
                "fence_escalated",
                host=host.id,
                vm=decision.vm_id,
                reason=decision.reason,
                attempts=[a.to_dict() for a in decision.attempts],
            )
        if self.alerts is not None:
            self.alerts.send(
                Alert(
                    AlertType.HOST,
                    f"Unable to fence off host: {host.id}",
                    f"VM {decision.vm_id}: " + "; ".join(lines),
                    host_id=host.id,
                    zone=host.zone,
                    pod=host.pod,
                )
            )

    def __repr__(self) -> str:
        return f"FenceChain({self.names!r})"
