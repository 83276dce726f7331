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
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs

from cloudha.errors import StoreError
from cloudha.model import ReasonType, VmState, VmType

__all__ = [
    "COLUMNS",
    "TERMINAL_STEPS",
    "TERMINAL_VALUES",
    "StaleWorkError",
    "Step",
    "UnreadableWorkError",
    "Work",
    "WorkTally",
    "WorkType",
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
