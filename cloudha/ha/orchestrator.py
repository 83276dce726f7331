"""The VM orchestrator port: what the HA work queue asks of the cloud's VM manager.

The HA manager (spec §3.4-§3.7) finds VMs, lists the VMs of a host, stops
VMs (``advanceStop``) and starts them again elsewhere (``advanceStart``),
first with the VM's own planner and, after an insufficient-capacity error,
once more with the HA planner; for maintenance it migrates VMs away, and it
destroys VMs (spec §3.7). :class:`VmOrchestrator` is that port.

Fencing tokens (ARCHITECTURE §4): every restart of a VM carries a
*generation*, a positive integer that grows with each restart attempt the HA
manager makes for that VM. An orchestrator remembers, per VM, the highest
generation it has started (or accepted a start for) and refuses any start
whose generation is lower than or equal to it with
:class:`StaleGenerationError`. A late or duplicate HA worker therefore cannot
start the same VM twice.

In-memory fake: :class:`cloudha.testing.orchestrator.InMemoryOrchestrator`.
Reference adapter over libvirt:
:class:`cloudha.ha.libvirt_orchestrator.LibvirtOrchestrator`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from cloudha.errors import CloudHAError
from cloudha.model import Vm

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
    """

    ha_tag: str | None = None
    ha_operation: bool = True
    generation: int = attrs.field(validator=_check_generation)
    avoid_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_ids)


@runtime_checkable
class VmOrchestrator(Protocol):
    """The VM manager the HA work queue drives (CloudStack ``VirtualMachineManager``).

    Contract:

    * Thread-safe: called from several HA worker threads at once, possibly
      for the same VM. Methods may block (they talk to a database or to
      hypervisors); adapters bound every wait with their own timeouts.
    * Every change of a VM's state increments its :attr:`Vm.updated`
      counter; a call that changes nothing leaves it alone.
    * Infrastructure faults (a hypervisor that does not answer) are raised as
      :class:`~cloudha.errors.ProbeError` subclasses; an operation that timed
      out may still take effect later, so an adapter that cannot tell leaves
      the VM ``Unknown`` on that host and a forced stop is needed before the
      next start.
    * Fencing tokens: :meth:`advance_start` refuses a generation lower than
      or equal to the highest one already used for the VM
      (:class:`StaleGenerationError`), checked before anything else happens.
      A generation is used once a start with it has begun; a start refused
      for want of capacity (or any other definite failure before the VM was
      started) does not use it, so the HA planner fallback may retry with
      the same generation.
    """

    def find_vm(self, vm_id: str) -> Vm | None:
        """A snapshot of the VM, or None when there is no such VM."""
        ...

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        """Snapshots of the VMs whose ``host_id`` is ``host_id``, sorted by id."""
        ...

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        """Stop the VM (re-read by ``vm.id``) wherever it runs and mark it Stopped.

        ``force=True`` powers it off at once (the HA path after fencing);
        ``force=False`` asks the guest to shut down. On return the VM is
        ``Stopped`` with ``host_id`` None and ``last_host_id`` the host it
        was on. Stopping a VM that is already Stopped or Destroyed changes
        nothing (it does not run; a Destroyed VM stays Destroyed).

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: another operation on the VM is under way.
            ProbeError: the VM's host could not be reached (state unchanged,
                or ``Unknown`` when the stop may still happen).
        """
        ...

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        """Start the Stopped VM (re-read by ``vm.id``) on a host the planner picks.

        The host must not be in ``params.avoid_hosts``, must carry
        ``params.ha_tag`` when that is set, and must have room. On success
        the VM is ``Running`` on that host and ``params.generation`` is the
        VM's highest used generation.

        Returns:
            The id of the host the VM was started on.

        Raises:
            UnknownVmError: no such VM.
            StaleGenerationError: ``params.generation`` is not higher than
                every generation already used for the VM (nothing happens).
            ConcurrentOperationError: the VM is not Stopped (it runs, or
                another operation on it is under way).
            InsufficientCapacityError: no eligible host has room (the VM
                stays Stopped and the generation is not used).
            ProbeError: the chosen host could not be reached.
        """
        ...

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        """False when the VM cannot run anywhere but its own host (e.g. local storage)."""
        ...

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        """Live-migrate the VM (re-read by ``vm.id``), Running on ``source_host_id``, elsewhere.

        The planner picks an Up host other than the source with room (the
        maintenance path of spec §3.7). On success the VM is ``Running`` on
        that host.

        Returns:
            The id of the host the VM now runs on.

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: the VM is not Running on ``source_host_id``,
                or another operation on it is under way.
            InsufficientCapacityError: no other host has room (the VM keeps
                running on the source).
            ProbeError: a host could not be reached (the VM keeps running on
                the source, or is ``Unknown`` when the outcome cannot be told).
        """
        ...

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        """Destroy the VM (re-read by ``vm.id``), stopping it first (forced) if it runs.

        On return the VM is ``Destroyed`` (not running, kept in the inventory)
        or, with ``expunge=True``, gone: :meth:`find_vm` returns None.
        Destroying a Destroyed VM again changes nothing unless ``expunge``.

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: another operation on the VM is under way.
            ProbeError: its host could not be reached (nothing changed).
        """
        ...
