"""The VM orchestrator port: what the HA work queue asks of the cloud's VM manager.

The HA manager (spec §3.4-§3.7) finds VMs, lists the VMs of a host, stops
VMs (``advanceStop``) and starts them again elsewhere (``advanceStart``),
first with the VM's own planner and, after an insufficient-capacity error,
once more with the HA planner; for maintenance it migrates VMs away, and it
destroys VMs (spec §3.7). :class:`VmOrchestrator` is that port.

Fencing tokens (docs/design/differences.md): every restart of a VM carries a
*generation*, a positive integer that grows with each restart attempt the HA
manager makes for that VM. An orchestrator remembers, per VM, the highest
generation it has started (or accepted a start for) and refuses any start
whose generation is lower than or equal to it with
:class:`StaleGenerationError`. A late or duplicate HA worker therefore cannot
start the same VM twice.

The Protocol itself lives in :mod:`cloudha.ports` with every other port
and is re-exported here. In-memory fake:
:class:`cloudha.testing.orchestrator.InMemoryOrchestrator`.
Reference adapter over libvirt:
:class:`cloudha.ha.libvirt_orchestrator.LibvirtOrchestrator`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from cloudha.errors import CloudHAError
from cloudha.ports import VmOrchestrator

__all__ = [
    "ConcurrentOperationError",
    "InsufficientCapacityError",
    "Planner",
    "StaleGenerationError",
    "StartParams",
    "UnknownVmError",
    "VmOrchestrator",
]


class InsufficientCapacityError(CloudHAError):
    """No host could take the VM (CloudStack ``InsufficientCapacityException``).

    Attributes:
        vm_id: the VM that could not be started.
        scope: where capacity ran out (``"zone"``, ``"cluster"``, ``"host"``...).
        reason: a short human-readable explanation.
    """

    def __init__(self, vm_id: str, *, scope: str = "zone", reason: str = "") -> None:
        shown = f": {reason}" if reason else ""
        super().__init__(f"insufficient capacity ({scope}) to start VM {vm_id}{shown}")
        self.vm_id = vm_id
        self.scope = scope
        self.reason = reason


class ConcurrentOperationError(CloudHAError):
    """Another operation on the VM is under way, or its state forbids this one.

    Attributes:
        vm_id: the VM.
        reason: what is in the way (e.g. ``"VM is Running"``).
    """

    def __init__(self, vm_id: str, reason: str = "") -> None:
        shown = f": {reason}" if reason else ""
        super().__init__(f"concurrent operation on VM {vm_id}{shown}")
        self.vm_id = vm_id
        self.reason = reason


class StaleGenerationError(CloudHAError):
    """A start carried a generation lower than or equal to one already used for the VM.

    Attributes:
        vm_id: the VM.
        generation: the generation the refused start carried.
        highest: the highest generation already used for the VM.
    """

    def __init__(self, vm_id: str, *, generation: int, highest: int) -> None:
        super().__init__(
            f"start of VM {vm_id} with generation {generation} refused: "
            f"generation {highest} was already used"
        )
        self.vm_id = vm_id
        self.generation = generation
        self.highest = highest


class UnknownVmError(CloudHAError, LookupError):
    """The orchestrator has no VM with this id.

    Attributes:
        vm_id: the id asked for.
    """

    def __init__(self, vm_id: str) -> None:
        super().__init__(f"no VM {vm_id!r}")
        self.vm_id = vm_id


class Planner(enum.Enum):
    """Which deployment planner a start uses.

    ``DEFAULT`` is the VM's own planner; ``HA`` is the HA planner the HA
    manager falls back to, once, after an :class:`InsufficientCapacityError`
    (CloudStack's first HA planner, a first-fit that ignores the clusters'
    disable thresholds).
    """

    DEFAULT = "Default"
    HA = "HA"

    def __str__(self) -> str:
        return self.value


def _check_generation(_inst: Any, _attr: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"generation must be a positive integer, got {value!r}")


def _host_ids(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen(kw_only=True)
class StartParams:
    """Parameters of one HA start (CloudStack ``VirtualMachineProfile.Param``).

    Attributes:
        ha_tag: ``ha.tag`` when it is set: only hosts carrying this tag may
            take the VM (CloudStack's ``HaTag`` param). None: no restriction
            from HA (an orchestrator may then keep its HA-reserved hosts out).
        ha_operation: True for starts made by the HA work queue
            (``HaOperation``).
        generation: the fencing token of this restart, a positive integer;
            see the module docstring.
        avoid_hosts: ids of hosts the VM must not be started on (e.g. the
            host it was fenced off); any iterable of ids is accepted.
        prefer_host: a host to try first (``cloudha.vm.restart.in.place``:
            the Up host a VM crashed alone on). A hint: when it is eligible
            (not avoided, tagged, with room) the VM should start there, else
            the planner picks as usual; ``avoid_hosts`` always wins.
    """

    ha_tag: str | None = None
    ha_operation: bool = True
    generation: int = attrs.field(validator=_check_generation)
    avoid_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_ids)
    prefer_host: str | None = None
