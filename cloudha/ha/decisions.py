"""What the HA manager decides, apart from what it does: pure functions over plain values.

Every function here takes values (the claimed :class:`~cloudha.ha.work.Work`,
the VM and host as read, investigator verdicts, a :class:`Policy` of the
settings it needs, the time) and returns a value saying what to do next. None
of them reads a clock, a store, an orchestrator or a directory; the
:class:`~cloudha.ha.manager.HighAvailabilityManager` handlers gather the
inputs, call them, and carry out the effects they ask for.

:data:`DECISIONS` maps every :class:`~cloudha.ha.work.WorkType` to its first
decision (:func:`decide_ha`, :func:`decide_migration`, :func:`decide_stop`,
:func:`decide_destroy`); it is checked exhaustive when this module is
imported, so a work type added without a decision fails at import. The HA
restart goes on in stages, each a function here: :func:`decide_verdict` (the
investigators' answer), :func:`decide_fence` (the fence chain's),
:func:`decide_start` / :func:`start_plan` (before the start),
:func:`decide_start_failed` / :func:`decide_started` (after it); and every
attempt ends in :func:`conclude` (finish, reschedule or give up).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import attrs

from cloudha.ha.work import TERMINAL_STEPS, Step, Work, WorkType
from cloudha.investigators.base import Verdict
from cloudha.model import AlertType, Host, Vm, VmState, VmType
from cloudha.settings import Settings
from cloudha.status import Status

__all__ = [
    "DECISIONS",
    "Decision",
    "DestroyVm",
    "Fence",
    "Finish",
    "GiveUp",
    "Inputs",
    "MigrateVm",
    "Notice",
    "Outcome",
    "Policy",
    "Proceed",
    "Reschedule",
    "Restart",
    "Retry",
    "StartPlan",
    "StopVm",
    "alert_type",
    "conclude",
    "decide_destroy",
    "decide_fence",
    "decide_ha",
    "decide_last_look",
    "decide_migration",
    "decide_no_room",
    "decide_start",
    "decide_start_failed",
    "decide_started",
    "decide_stop",
    "decide_verdict",
    "host_is_down",
    "is_cancellable",
    "retry_interval",
    "start_plan",
    "vm_missing",
]

_STOP_TYPES: Final = frozenset({WorkType.STOP, WorkType.CHECK_STOP, WorkType.FORCE_STOP})
_EXPUNGED_TYPES: Final = frozenset({VmType.SECONDARY_STORAGE_VM, VmType.CONSOLE_PROXY})


# -- inputs -------------------------------------------------------------------------------


@attrs.frozen
class Policy:
    """The settings values the decisions read (spec §3.8)."""

    restart_retry_interval: float
    migrate_retry_interval: float
    stop_retry_interval: float
    investigate_retry_interval: float
    max_retries: int
    force_ha: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            restart_retry_interval=settings.restart_retry_interval,
            migrate_retry_interval=settings.migrate_retry_interval,
            stop_retry_interval=settings.stop_retry_interval,
            investigate_retry_interval=settings.investigate_retry_interval,
            max_retries=settings.vm_ha_migration_max_retries,
            force_ha=settings.force_ha,
        )


@attrs.frozen
class Inputs:
    """What a first decision sees of the world.

    Attributes:
        work: the claimed work.
        vm: the VM as read now.
        host: ``work.host_id``'s row, None when the work names no host or the
            directory does not know it.
        others: the VM's other HA works (HA decisions only; empty otherwise).
        policy: the settings values.
        now: epoch seconds.
    """

    work: Work
    vm: Vm
    host: Host | None
    policy: Policy
    now: float
    others: Sequence[Work] = ()


# -- outputs ------------------------------------------------------------------------------


@attrs.frozen
class Notice:
    """An operator alert a decision asks for."""

    type: AlertType
    subject: str
    body: str = ""
    host: Host | None = None


@attrs.frozen
class Finish:
    """End the work in a terminal step.

    ``started_on``: the host an HA restart started the VM on, when this work
    itself ran it again (the ``ha_work`` evidence says it, and metrics time
    the recovery by it); None for every other end.
    """

    reason: str
    step: Step = Step.DONE
    notice: Notice | None = None
    started_on: str | None = None


@attrs.frozen
class Retry:
    """Give the work back, to be tried again at ``at`` (epoch seconds).

    ``waits``: the attempt failed for want of something outside the VM and
    the work, room on a host or a port that does not answer (the
    orchestrator, the host directory): such a retry never uses up
    ``vm.ha.migration.max.retries`` (see :func:`conclude`).
    """

    reason: str
    at: float
    notice: Notice | None = None
    waits: bool = False


Outcome = Finish | Retry
"""How one attempt ends."""


@attrs.frozen
class Restart:
    """Go on with an HA restart: ``prove`` death or ``stop`` first, then start.

    Attributes:
        first: ``prove``: investigate the VM and fence it if needed, then stop
            it; ``stop``: force-stop it at once (it runs nowhere we know of);
            ``start``: it is stopped already.
        removed: the work's host is Removed.
    """

    first: Literal["prove", "stop", "start"]
    removed: bool


@attrs.frozen
class MigrateVm:
    """Record step Migrating and migrate the VM off ``source``."""

    source: str


@attrs.frozen
class StopVm:
    """Stop the VM (``force``: a hard stop)."""

    force: bool


@attrs.frozen
class DestroyVm:
    """Destroy the VM: stop it first if ``stop_first``; ``destroy`` False ends after the stop."""

    stop_first: bool
    destroy: bool
    expunge: bool


Decision = Finish | Retry | Restart | MigrateVm | StopVm | DestroyVm
"""What a first decision returns: an outcome, or the action to carry out."""


def _done(reason: str, notice: Notice | None = None, started_on: str | None = None) -> Finish:
    return Finish(reason, Step.DONE, notice, started_on)


def alert_type(vm_type: VmType) -> AlertType:
    """The alert type of a VM's alerts."""
    return {
        VmType.DOMAIN_ROUTER: AlertType.DOMAIN_ROUTER,
        VmType.CONSOLE_PROXY: AlertType.CONSOLE_PROXY,
        VmType.SECONDARY_STORAGE_VM: AlertType.SSVM,
    }.get(vm_type, AlertType.USERVM)


def retry_interval(type: WorkType, policy: Policy) -> float:
    """Seconds until a work of ``type`` is tried again after a failed attempt."""
    if type is WorkType.MIGRATION:
        return policy.migrate_retry_interval
    if type is WorkType.HA:
        return policy.restart_retry_interval
    return policy.stop_retry_interval


# -- before the type's decision -------------------------------------------------------------


def vm_missing(work: Work) -> Finish:
    """The work names a VM the orchestrator does not know (bad input, or expunged)."""
    if work.type is WorkType.DESTROY:
        return _done("the VM no longer exists")
    return Finish(f"unknown VM {work.instance_id!r}", Step.ERROR)


def is_cancellable(work: Work, cancellable_reasons: frozenset[object]) -> bool:
    """Whether the work is cancelled when its host is found Up (``checkAndCancelWorkIfNeeded``)."""
    return work.step is Step.INVESTIGATING and work.reason in cancellable_reasons


# -- the first decision of each type ----------------------------------------------------------


def decide_ha(inp: Inputs) -> Decision:
    """One attempt of an HA restart (spec §3.6 with the fixes of docs/design/differences.md)."""
    work, vm, host, policy = inp.work, inp.vm, inp.host, inp.policy
    others = [w for w in inp.others if w.type is WorkType.HA and w.id != work.id]
    newer = [w.id for w in others if w.id > work.id]
    if newer:
        return _done(f"superseded by HA work {newer[-1]}")
    if any(w.taken is not None and w.step not in TERMINAL_STEPS for w in others):
        return Retry(
            "another HA work of this VM is running",
            at=inp.now + policy.investigate_retry_interval,
        )
    if vm.state is VmState.ERROR:
        return _done("the VM is in state Error")
    # NOTE: a work in step Stopping was about to stop the VM when its server
    # died, stopped or lost the work; the stop may have happened without the
    # new snapshot being recorded. A VM now Stopped on no host is taken as
    # stopped by this work (an operator's stop in that same instant cannot be
    # told apart, and leaving an HA VM down is the worse mistake), and is
    # restarted; CloudStack ends the work as "changed" and the VM stays down.
    stopped_by_us = (
        work.step is Step.STOPPING and vm.state is VmState.STOPPED and vm.host_id is None
    )
    if not stopped_by_us and (vm.state is not work.previous_state or vm.updated != work.updated):
        return _done(
            f"the VM has been changed ({work.previous_state}/{work.updated} -> "
            f"{vm.state}/{vm.updated})"
        )
    if vm.host_id is not None and vm.host_id != work.host_id:
        return _done(f"the VM is now on host {vm.host_id}")
    if work.host_id is not None and host is None:
        return Finish(f"unknown host {work.host_id!r}", Step.ERROR)
    removed = host is not None and host.status is Status.REMOVED
    if work.step not in (Step.INVESTIGATING, Step.STOPPING):
        return Restart("start", removed)
    # NOTE: CloudStack ends the work when the VM has no host here. But a work
    # this server had already fenced and stopped (step Scheduled) is marked
    # Investigating again by recover() after a restart: the VM, stopped by us,
    # must still be restarted. A VM on no host runs nowhere the orchestrator
    # knows of, so there is nothing to prove.
    if host is not None and not removed and vm.host_id is not None:
        return Restart("prove", removed)
    return Restart("stop", removed)


def decide_migration(inp: Inputs) -> Decision:
    """Migrate a VM off its host for maintenance (spec §3.7)."""
    work, vm = inp.work, inp.vm
    if vm.state is VmState.STOPPED:
        return _done("the VM is stopped")
    if vm.state is VmState.RUNNING and vm.host_id != work.host_id:
        return _done(f"the VM already runs on host {vm.host_id}")
    if work.host_id is None:
        return Finish("a migration without a source host", Step.ERROR)
    return MigrateVm(work.host_id)


def decide_no_room(
    error: str, vm: Vm, source: str, host: Host | None, policy: Policy, now: float
) -> Retry:
    """A migration found no room (``error``): retry later, and alert about the host."""
    return Retry(
        f"no room: {error}",
        at=now + policy.migrate_retry_interval,
        notice=Notice(
            AlertType.HOST,
            f"Unable to migrate {vm.name} ({vm.id}) away from host {source}",
            error,
            host,
        ),
    )


def decide_stop(inp: Inputs) -> Decision:
    """Stop, CheckStop or ForceStop (spec §3.7): the checked kinds end if the VM changed."""
    work, vm = inp.work, inp.vm
    if work.type is not WorkType.STOP and (
        vm.state is not work.previous_state
        or vm.updated != work.updated
        or vm.host_id != work.host_id
    ):
        return _done("the VM has been changed")
    return StopVm(force=work.type is WorkType.FORCE_STOP)


def decide_destroy(inp: Inputs) -> Decision:
    """Destroy (spec §3.7); console proxies and secondary storage VMs are expunged."""
    work, vm = inp.work, inp.vm
    expunge = vm.type in _EXPUNGED_TYPES
    if not expunge and work.previous_state is VmState.DESTROYED:
        return _done("the VM was already destroyed")
    return DestroyVm(
        stop_first=work.previous_state is VmState.RUNNING,
        destroy=work.previous_state is not VmState.EXPUNGING,
        expunge=expunge,
    )


DECISIONS: Final[Mapping[WorkType, Callable[[Inputs], Decision]]] = {
    WorkType.HA: decide_ha,
    WorkType.MIGRATION: decide_migration,
    WorkType.STOP: decide_stop,
    WorkType.CHECK_STOP: decide_stop,
    WorkType.FORCE_STOP: decide_stop,
    WorkType.DESTROY: decide_destroy,
}
"""The first decision of every work type."""

NEEDS_HISTORY: Final = frozenset({WorkType.HA})
"""Types whose decision reads the VM's other works (:attr:`Inputs.others`) and the host."""


def _check_exhaustive(table: Mapping[WorkType, object]) -> None:
    missing = [t.value for t in WorkType if t not in table]
    if missing:
        raise ImportError(f"cloudha.ha.decisions: no decision for work types {missing}")


_check_exhaustive(DECISIONS)


# -- the stages of an HA restart ----------------------------------------------------------------


@attrs.frozen
class Fence:
    """The investigators could not tell: fence the VM off its host."""


@attrs.frozen
class Proceed:
    """The VM may be stopped and restarted; ``why`` is the proof (evidence, step Fencing)."""

    why: str


def decide_verdict(
    verdict: Verdict,
    decided_by: str | None,
    vm: Vm,
    host: Host,
    policy: Policy,
    now: float,
    *,
    deferred: bool = False,
) -> Retry | Finish | Fence | Proceed:
    """The investigators' answer on a VM: alive (end or wait), dead (go on), unknown (fence).

    ``deferred``: the answer is Host-HA's, which owns the host and has not
    decided yet; waiting for it uses up no retries (CloudStack PR #13088).
    """
    if verdict is Verdict.ALIVE:
        if host.status is Status.UP:
            return _done(f"the VM is alive ({decided_by}) and its host is Up")
        return Retry(
            f"the VM is alive ({decided_by}) but host {host.id} is {host.status}",
            at=now + policy.investigate_retry_interval,
            waits=deferred,
        )
    if verdict is Verdict.DEAD:
        return Proceed(f"the VM is dead ({decided_by})")
    return Fence()


def decide_last_look(
    verdict: Verdict, decided_by: str | None, reason: str, host: Host, policy: Policy, now: float
) -> Retry | None:
    """A host declared Down, looked at again just before it is fenced: alive means no fence.

    ``verdict`` is what the investigators say of the host now. A host that
    shows life since it was declared Down (a watchdog host that booted
    after its reset and wrote its heartbeat again, say) is not fenced: the
    work waits and looks again. DEAD or UNKNOWN let the fence go on, so
    only a positive sign of life holds a recovery back. None: fence.
    """
    if host.status is not Status.DOWN or verdict is not Verdict.ALIVE:
        return None
    return Retry(
        f"not fenced: host {host.id} shows life since it was declared Down"
        f" ({decided_by}: {reason})",
        at=now + policy.investigate_retry_interval,
    )


def decide_fence(
    fenced: bool, reason: str, vm: Vm, host: Host, policy: Policy, now: float
) -> Retry | Proceed:
    """The fence chain's answer: fenced (go on), or retry with an alert."""
    if fenced:
        return Proceed(reason)
    return Retry(
        f"not fenced: {reason}",
        at=now + policy.restart_retry_interval,
        notice=Notice(
            alert_type(vm.type),
            f"Unable to restart {vm.name} ({vm.id}) which was running on host {host.id}",
            f"it could not be fenced off: {reason}",
            host,
        ),
    )


@attrs.frozen
class StartPlan:
    """Start the VM; ``avoid_hosts``: the hosts the planner must not pick."""

    host_down: bool
    avoid_hosts: tuple[str, ...]


def host_is_down(host: Host | None, removed: bool) -> bool:
    """Whether the work's host cannot take the VM back (unknown, Removed or not Up)."""
    return host is None or removed or host.status is not Status.UP


def decide_start(vm: Vm | None, policy: Policy) -> Finish | None:
    """Before the start: None to go on, else why the VM stays as it is."""
    if vm is None:
        return _done("the VM no longer exists")
    if not (policy.force_ha or vm.ha_enabled):
        return _done("the VM is not HA-enabled: it stays stopped")
    return None


def start_plan(work: Work, host_down: bool, can_restart_elsewhere: bool) -> Finish | StartPlan:
    """Where the VM may start; ``can_restart_elsewhere`` is only asked when the host is down."""
    if host_down and not can_restart_elsewhere:
        return _done("the VM cannot run on another host (local storage)")
    avoid = (work.host_id,) if host_down and work.host_id is not None else ()
    return StartPlan(host_down, avoid)


def decide_start_failed(
    error: str,
    vm: Vm,
    host: Host | None,
    policy: Policy,
    now: float,
    *,
    waits: bool = False,
) -> Retry:
    """The start raised a cloudha error (``error``: its type and message): retry, with an alert.

    ``waits``: no host had room, or the orchestrator did not answer; the
    retry waits for them to come back (a host Up again, the orchestrator
    healed) and never gives up.
    """
    return Retry(
        f"start failed: {error}",
        at=now + policy.restart_retry_interval,
        notice=Notice(alert_type(vm.type), f"Unable to restart {vm.name} ({vm.id})", error, host),
        waits=waits,
    )


def decide_started(
    started: Vm | None,
    target: str,
    vm: Vm,
    work: Work,
    host: Host | None,
    policy: Policy,
    now: float,
) -> Outcome:
    """After the start: Done (with the HA alert) when the VM runs, else retry."""
    if started is not None and started.state is VmState.RUNNING:
        return _done(
            f"started on host {target}",
            Notice(
                alert_type(vm.type),
                f"HA starting VM: {vm.name} ({vm.id})",
                f"started on host {target} (generation {work.generation})",
                host,
            ),
            started_on=target,
        )
    return Retry(
        f"the start on host {target} did not leave the VM Running",
        at=now + policy.restart_retry_interval,
    )


# -- the end of an attempt ------------------------------------------------------------------------


@attrs.frozen
class Reschedule:
    """Give the work back until ``at``; ``refresh``: retake the VM snapshot first."""

    reason: str
    at: float
    refresh: bool


@attrs.frozen
class GiveUp:
    """The attempts are used up: step Error (``tried + 1``), with an alert."""

    reason: str
    refresh: bool
    notice: Notice


def conclude(
    work: Work, outcome: Outcome, *, acted: bool, policy: Policy
) -> Finish | Reschedule | GiveUp:
    """How an attempt is recorded, and the alert to send once it is.

    The outcome's own notice was sent when it was decided; the returned
    :class:`Finish` carries only the alert of a work ending in Error. A retry
    past ``vm.ha.migration.max.retries`` gives up (the handler adds the
    work's host to the alert), unless it waits (:attr:`Retry.waits`): an HA
    VM is never left behind because no host had room for it while its hosts
    were down, or because the orchestrator did not answer for a while; it is
    tried again every retry interval until the attempt can succeed.
    ``acted``: this attempt did (or may have done) something to the VM
    itself, so the snapshot the work compares against is retaken (only then:
    CloudStack #13510).
    """
    if isinstance(outcome, Finish):
        notice = None
        if outcome.step is Step.ERROR:
            notice = Notice(
                alert_type(work.vm_type),
                f"HA work {work.id} for VM {work.instance_id} ({work.type}) ended in Error",
                outcome.reason,
            )
        return attrs.evolve(outcome, notice=notice)
    if work.tried + 1 >= policy.max_retries and not outcome.waits:
        reason = f"gave up after {work.tried + 1} attempts: {outcome.reason}"
        return GiveUp(
            reason,
            acted,
            Notice(
                alert_type(work.vm_type),
                f"HA gave up on VM {work.instance_id} ({work.type})",
                reason,
            ),
        )
    return Reschedule(outcome.reason, outcome.at, acted)
