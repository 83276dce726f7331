"""HA work values, free of any database: what every :class:`~cloudha.ports.WorkStore` holds.

:class:`Work` is one row of CloudStack's ``op_ha_work`` as read;
:func:`work_from_row` parses a row's raw column values (strings for the
enums) into one, raising :class:`UnreadableWorkError` for a value cloudha
does not know. The SQL adapter (:mod:`cloudha.ha.store`) and the in-memory
store (:mod:`cloudha.testing.workstore`) share it, so both read a
hand-edited row the same way. Everything here is re-exported by
:mod:`cloudha.ha.store`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs

from cloudha.errors import StoreError
from cloudha.model import ReasonType, VmState, VmType

__all__ = [
    "COLUMNS",
    "RETRYABLE_STEPS",
    "TERMINAL_STEPS",
    "TERMINAL_VALUES",
    "QueueState",
    "StaleWorkError",
    "Step",
    "UnknownWorkError",
    "UnreadableWorkError",
    "Work",
    "WorkListing",
    "WorkRefusedError",
    "WorkTally",
    "WorkType",
    "cancel_refusal",
    "queue_state",
    "retry_refusal",
    "work_from_row",
]


class WorkType(enum.Enum):
    """What a work item does (CloudStack ``HighAvailabilityManager.WorkType``)."""

    MIGRATION = "Migration"
    STOP = "Stop"
    CHECK_STOP = "CheckStop"
    FORCE_STOP = "ForceStop"
    DESTROY = "Destroy"
    HA = "HA"

    def __str__(self) -> str:
        return self.value


class Step(enum.Enum):
    """Progress of a work item (CloudStack ``HighAvailabilityManager.Step``)."""

    SCHEDULED = "Scheduled"
    INVESTIGATING = "Investigating"
    FENCING = "Fencing"
    STOPPING = "Stopping"
    RESTARTING = "Restarting"
    MIGRATING = "Migrating"
    CANCELLED = "Cancelled"
    DONE = "Done"
    ERROR = "Error"

    def __str__(self) -> str:
        return self.value


TERMINAL_STEPS: Final = frozenset({Step.DONE, Step.CANCELLED, Step.ERROR})
"""Steps a work never leaves; such works are never claimed nor counted as pending."""

TERMINAL_VALUES: Final = tuple(sorted(step.value for step in TERMINAL_STEPS))
"""The stored values of :data:`TERMINAL_STEPS` (a row's ``step`` column is compared to them)."""

RETRYABLE_STEPS: Final = frozenset({Step.ERROR, Step.CANCELLED})
"""Steps an operator may send a work back to the queue from (``WorkQueueAdmin.retry_work``)."""


class QueueState(enum.Enum):
    """Where a work stands, as an operator filters the queue (``cloudha queue list --state``)."""

    PENDING = "pending"
    """Not in a terminal step: waiting, or held by a worker (any unknown step counts here)."""
    ERROR = "error"
    """Step Error: given up on, or quarantined; kept until an operator retries or cancels it."""
    CANCELLED = "cancelled"
    """Step Cancelled: nothing left to do; deleted after ``time.between.failures``."""
    DONE = "done"
    """Step Done; deleted after ``time.between.failures``."""

    def __str__(self) -> str:
        return self.value

    @property
    def step_values(self) -> tuple[str, ...] | None:
        """The stored ``step`` values of this state; ``None`` for PENDING (every other value)."""
        return _STATE_STEPS[self]


_STATE_STEPS: Final[dict[QueueState, tuple[str, ...] | None]] = {
    QueueState.PENDING: None,
    QueueState.ERROR: (Step.ERROR.value,),
    QueueState.CANCELLED: (Step.CANCELLED.value,),
    QueueState.DONE: (Step.DONE.value,),
}


def queue_state(step: Step) -> QueueState:
    """The :class:`QueueState` of a work in ``step``."""
    if step is Step.ERROR:
        return QueueState.ERROR
    if step is Step.CANCELLED:
        return QueueState.CANCELLED
    if step is Step.DONE:
        return QueueState.DONE
    return QueueState.PENDING


@attrs.frozen
class WorkTally:
    """How many works of one type are in one step (``WorkStore.tally``).

    Attributes:
        type: the stored ``type`` (a :class:`WorkType` value, or whatever a
            hand-edited row holds).
        step: the stored ``step`` (a :class:`Step` value, or a hand edit).
        count: how many rows.
        oldest: the oldest ``created`` among them (aware UTC).
    """

    type: str
    step: str
    count: int
    oldest: dt.datetime

    @property
    def pending(self) -> bool:
        """The works are not in a terminal step (they are queued or in progress)."""
        return self.step not in TERMINAL_VALUES


class UnreadableWorkError(StoreError):
    """A row of ``op_ha_work`` holds a value cloudha does not know (a hand-edited row).

    Attributes:
        work_id: the row's ``id``; pass it to ``WorkStore.mark_error``.
        column: the column at fault (``type``, ``step``, ``state``, ``vm_type``, ``reason``).
        value: the stored value.
    """

    def __init__(self, work_id: int, column: str, value: object) -> None:
        super().__init__(f"op_ha_work row {work_id}: unknown {column} {value!r}")
        self.work_id = work_id
        self.column = column
        self.value = value


class StaleWorkError(StoreError):
    """The work is no longer the claim the caller holds (released, re-claimed or deleted).

    Attributes:
        work_id: the row's ``id``.
    """

    def __init__(self, work_id: int) -> None:
        super().__init__(
            f"op_ha_work row {work_id} is no longer held as given "
            "(released, claimed again, or deleted)"
        )
        self.work_id = work_id


class UnknownWorkError(StoreError, LookupError):
    """No work with this id is stored (never added, or deleted by the cleanup).

    Attributes:
        work_id: the id asked for.
    """

    def __init__(self, work_id: int) -> None:
        super().__init__(f"no HA work {work_id}")
        self.work_id = work_id


class WorkRefusedError(StoreError):
    """An operator's change to a work was refused; the work is left as it was.

    Attributes:
        work_id: the row's ``id``.
        reason: why, as one sentence (the step it is in, who holds it...).
    """

    def __init__(self, work_id: int, reason: str) -> None:
        super().__init__(f"HA work {work_id}: {reason}")
        self.work_id = work_id
        self.reason = reason


@attrs.frozen
class Work:
    """One ``op_ha_work`` row, as read.

    Attributes:
        id: the row id.
        instance_id: the VM.
        type: what to do.
        step: where it is.
        previous_state: the VM's state when the work was scheduled (column ``state``).
        vm_type: the VM's type.
        host_id: the host the VM was on, if known.
        mgmt_server_id: the management server holding the claim; ``None`` = unclaimed.
        created: when the work was added (aware UTC).
        taken: when it was last claimed (aware UTC), ``None`` when unclaimed.
        time_to_try: not claimable before this (epoch seconds).
        tried: how many times it was rescheduled.
        updated: the VM's update counter when scheduled.
        reason: why it was scheduled (a NULL column reads as ``Unknown``).
        generation: the per-VM fencing token of its last claim, 0 before any claim.
        priority: higher values are claimed first.
    """

    id: int
    instance_id: str
    type: WorkType
    step: Step
    previous_state: VmState
    vm_type: VmType
    host_id: str | None
    mgmt_server_id: str | None
    created: dt.datetime
    taken: dt.datetime | None
    time_to_try: float
    tried: int
    updated: int
    reason: ReasonType
    generation: int
    priority: int

    def __str__(self) -> str:
        return f"HAWork[{self.id}-{self.type}-{self.instance_id}-{self.previous_state}-{self.step}]"


COLUMNS: Final = (
    "id",
    "instance_id",
    "mgmt_server_id",
    "created",
    "state",
    "host_id",
    "taken",
    "time_to_try",
    "type",
    "updated",
    "step",
    "vm_type",
    "tried",
    "reason",
    "generation",
    "priority",
)
"""The columns of ``op_ha_work``: the keys :func:`work_from_row` reads."""

_E = TypeVar("_E", bound=enum.Enum)


def _parse(cls: type[_E], row_id: int, column: str, value: object) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise UnreadableWorkError(row_id, column, value) from None


def work_from_row(m: Mapping[str, Any]) -> Work:
    """Parse one row (column name -> stored value) into a :class:`Work`.

    Raises :class:`UnreadableWorkError` naming the row, column and value when
    a ``type``, ``step``, ``state``, ``vm_type`` or ``reason`` is unknown; a
    NULL ``reason`` reads as ``Unknown``.
    """
    work_id = int(m["id"])
    reason = m["reason"]
    return Work(
        id=work_id,
        instance_id=m["instance_id"],
        type=_parse(WorkType, work_id, "type", m["type"]),
        step=_parse(Step, work_id, "step", m["step"]),
        previous_state=_parse(VmState, work_id, "state", m["state"]),
        vm_type=_parse(VmType, work_id, "vm_type", m["vm_type"]),
        host_id=m["host_id"],
        mgmt_server_id=m["mgmt_server_id"],
        created=m["created"],
        taken=m["taken"],
        time_to_try=float(m["time_to_try"]),
        tried=int(m["tried"]),
        updated=int(m["updated"]),
        reason=ReasonType.UNKNOWN
        if reason is None
        else _parse(ReasonType, work_id, "reason", reason),
        generation=int(m["generation"]),
        priority=int(m["priority"]),
    )


@attrs.frozen
class WorkListing:
    """What ``WorkQueueAdmin.list_works`` found.

    Attributes:
        works: the readable works, oldest (lowest id) first.
        unreadable: the rows matching the filter that hold a value cloudha
            does not know (hand-edited), one :class:`UnreadableWorkError`
            each (``work_id``, ``column``, ``value``), oldest first; they are
            listed instead of failing the whole listing.
    """

    works: tuple[Work, ...]
    unreadable: tuple[UnreadableWorkError, ...] = ()


def _held_by(work: Work) -> str:
    since = "" if work.taken is None else f" since {work.taken.isoformat(timespec='seconds')}"
    return (
        f"it is held by {work.mgmt_server_id}{since} (step {work.step}), whose worker may be"
        " acting on the VM now; wait until it ends, or stop that server (it hands its works"
        " back unclaimed), then try again"
    )


def retry_refusal(work: Work, pending_same_type: Iterable[int]) -> str | None:
    """Why an operator may not retry ``work``; ``None`` when they may.

    ``pending_same_type``: the ids of the VM's works of the same type in a
    non-terminal step (a newer one would supersede a retried one; an older one
    covers it already).
    """
    if work.step not in RETRYABLE_STEPS:
        if work.step is Step.DONE:
            return "it is Done: there is nothing left to retry (a new failure schedules a new work)"
        if work.mgmt_server_id is not None:
            return f"it is not in step Error or Cancelled: {_held_by(work)}"
        due = dt.datetime.fromtimestamp(work.time_to_try, dt.UTC).isoformat(timespec="seconds")
        return f"it is pending already (step {work.step}, due {due})"
    others = sorted(i for i in pending_same_type if i != work.id)
    if others:
        return (
            f"VM {work.instance_id} has a pending {work.type} work already ({others[-1]}),"
            " which covers it"
        )
    return None


def cancel_refusal(work: Work) -> str | None:
    """Why an operator may not cancel ``work``; ``None`` when they may.

    A pending work no server holds, or an Error work, may be cancelled; a
    claimed one never (its worker may be fencing, stopping or starting the VM).
    """
    if work.step is Step.ERROR:
        return None
    if work.step in TERMINAL_STEPS:
        return f"it is {work.step} already"
    if work.mgmt_server_id is not None or work.taken is not None:
        return f"it is claimed: {_held_by(work)}"
    return None
