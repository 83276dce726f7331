"""An in-memory :class:`~cloudha.ha.orchestrator.VmOrchestrator` for tests and the simulator.

:class:`InMemoryOrchestrator` keeps hosts and VMs in dictionaries and
implements the whole port (look-ups, stop, start, migration away from a host,
destroy and expunge) atomically under one lock, recording every call, with
failures that tests can arm in advance.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import attrs

from cloudha.errors import CloudHAError
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.model import Vm, VmState

__all__ = ["FakeOrchestratorHost", "InMemoryOrchestrator", "OrchestratorCall", "StartRecord"]

_STOPPED_LIKE = frozenset({VmState.STOPPED, VmState.DESTROYED, VmState.EXPUNGING})


def _tags(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class FakeOrchestratorHost:
    """A host of the fake.

    Attributes:
        id: the host id.
        capacity: how many VMs may run on it at once.
        tags: host tags (a start with ``ha_tag`` needs the tag here).
        up: False keeps the host out of every start and migration.
    """

    id: str
    capacity: int = 10
    tags: frozenset[str] = attrs.field(default=frozenset(), converter=_tags)
    up: bool = True


@attrs.frozen
class OrchestratorCall:
    """One call made to the fake, recorded whatever its outcome.

    Attributes:
        method: ``find_vm``, ``list_vms_on_host``, ``advance_stop``,
            ``advance_start``, ``can_restart_on_another_server``,
            ``migrate_away`` or ``destroy``.
        target: the VM id (the host id for ``list_vms_on_host``).
        force: ``advance_stop``'s ``force``.
        params: ``advance_start``'s params.
        planner: ``advance_start``'s planner.
        outcome: ``"ok"``, the host id a start or a migration chose, or the
            name of the exception raised.
        source: ``migrate_away``'s ``source_host_id``.
        expunge: ``destroy``'s ``expunge``.
    """

    method: str
    target: str
    force: bool | None = None
    params: StartParams | None = None
    planner: Planner | None = None
    outcome: str = "ok"
    source: str | None = None
    expunge: bool | None = None


@attrs.frozen
class StartRecord:
    """A successful start: the VM, its generation, the host and the planner."""

    vm_id: str
    generation: int
    host_id: str
    planner: Planner


class InMemoryOrchestrator:
    """The VM orchestrator port over dictionaries. Thread-safe (one lock).

    Hosts have a capacity (VMs counted are those whose ``host_id`` is the
    host and that are not Stopped, Destroyed or Expunging), tags, and an up
    flag. A start picks the first host in sorted id order that is up, not
    avoided, carries ``params.ha_tag`` when set (when it is not set, hosts
    carrying ``reserved_tag`` are kept out, as CloudStack keeps ``ha.tag``
    hosts out of ordinary starts) and has room.

    Every operation is atomic: a VM goes from one state to the next in a
    single step (no Starting, Stopping or Migrating in between), so each call
    that changes a VM bumps its ``updated`` counter by exactly one.

    * :meth:`migrate_away` needs the VM Running on the given source host. It
      moves the VM to the first host, in the order a start uses, that is up,
      is not the source and has room; a migration is an ordinary placement,
      so hosts carrying ``reserved_tag`` are kept out (there is no ``ha_tag``
      for a migration). The VM stays Running, ``host_id`` and
      ``last_host_id`` become the target, and its generation is unchanged.
    * :meth:`destroy` force-stops a VM that is not Stopped, Destroyed or
      Expunging (its host's running count drops) and marks it Destroyed
      (``host_id`` None, ``last_host_id`` the host it ran on), or with
      ``expunge=True`` removes it (:meth:`find_vm` returns None and it is
      listed nowhere; its highest generation is kept, so a VM added again
      under the same id cannot reuse a fencing token). Destroying a Destroyed
      or Expunging VM without ``expunge`` changes nothing.

    Failures can be armed: :meth:`fail_next_start` makes the next start(s)
    with the DEFAULT planner raise :class:`InsufficientCapacityError` (HA
    planner starts are not affected and do not consume it);
    :meth:`fail_next_stop` makes the next stop(s) raise
    :class:`ConcurrentOperationError` (or a given error), and the forced stop
    inside :meth:`destroy` of a VM that runs consumes them too (the VM is then
    left as it was); :meth:`fail_next_migration` makes the next migration(s)
    raise :class:`InsufficientCapacityError` (or a given error) with the VM
    left running on its source. An armed failure is consumed only by a call
    that passed the VM and state checks.

    Args:
        hosts: the hosts.
        vms: the VMs (a VM's ``host_id`` need not be a known host).
        reserved_tag: the ``ha.tag`` value reserved hosts carry.
        local_storage: ids of VMs on local storage
            (:meth:`can_restart_on_another_server` is False for them).
    """

    def __init__(
        self,
        hosts: Iterable[FakeOrchestratorHost] = (),
        vms: Iterable[Vm] = (),
        *,
        reserved_tag: str | None = None,
        local_storage: Iterable[str] = (),
    ) -> None:
        self._lock = threading.RLock()
        self._hosts: dict[str, FakeOrchestratorHost] = {}
        self._vms: dict[str, Vm] = {}
        self._local: set[str] = set(local_storage)
        self._generations: dict[str, int] = {}
        self._calls: list[OrchestratorCall] = []
        self._starts: list[StartRecord] = []
        self._start_failures: list[tuple[str, str]] = []
        self._stop_failures: list[CloudHAError | None] = []
        self._migration_failures: list[CloudHAError | None] = []
        self.reserved_tag = reserved_tag
        for host in hosts:
            self.add_host(host)
        for vm in vms:
            self.add_vm(vm)

    # -- set-up -----------------------------------------------------------------

    def add_host(self, host: FakeOrchestratorHost) -> None:
        """Add or replace a host."""
        with self._lock:
            self._hosts[host.id] = host

    def set_host_up(self, host_id: str, up: bool) -> None:
        """Let a host take starts (``up=True``) or keep it out of them."""
        with self._lock:
            self._hosts[host_id] = attrs.evolve(self._hosts[host_id], up=up)

    def add_vm(self, vm: Vm, *, local_storage: bool = False) -> None:
        """Add or replace a VM as it is given."""
        with self._lock:
            self._vms[vm.id] = vm
            if local_storage:
                self._local.add(vm.id)

    def fail_next_start(
        self, count: int = 1, *, scope: str = "cluster", reason: str = "armed failure"
    ) -> None:
        """The next ``count`` DEFAULT-planner starts raise :class:`InsufficientCapacityError`.

        They fail after the VM, generation and state checks passed, so a
        stale or concurrent start does not consume an armed failure.
        """
        with self._lock:
            self._start_failures.extend([(scope, reason)] * count)

    def fail_next_stop(self, count: int = 1, *, error: CloudHAError | None = None) -> None:
        """The next ``count`` stops of a VM that is not Stopped raise ``error``.

        ``error`` defaults to a :class:`ConcurrentOperationError` for the VM;
        pass e.g. a :class:`~cloudha.errors.ProbeTimeout` to simulate an
        unreachable host. The VM is left as it was.
        """
        with self._lock:
            self._stop_failures.extend([error] * count)

    def fail_next_migration(self, count: int = 1, *, error: CloudHAError | None = None) -> None:
        """The next ``count`` migrations of a VM Running on the given source raise ``error``.

        ``error`` defaults to an :class:`InsufficientCapacityError` for the
        VM; pass e.g. a :class:`~cloudha.errors.ProbeTimeout` to simulate an
        unreachable host. The VM keeps running on its source, unchanged. A
        migration refused for an unknown VM or a VM that is not Running on
        the source does not consume an armed failure.
        """
        with self._lock:
            self._migration_failures.extend([error] * count)

    # -- inspection ---------------------------------------------------------------

    @property
    def calls(self) -> tuple[OrchestratorCall, ...]:
        """Every call made, in order."""
        with self._lock:
            return tuple(self._calls)

    @property
    def starts(self) -> tuple[StartRecord, ...]:
        """Every successful start, in order."""
        with self._lock:
            return tuple(self._starts)

    def highest_generation(self, vm_id: str) -> int:
        """The highest generation used for the VM (0: none yet)."""
        with self._lock:
            return self._generations.get(vm_id, 0)

    def running_count(self, host_id: str) -> int:
        """How many VMs count against ``host_id``'s capacity."""
        with self._lock:
            return sum(
                1
                for vm in self._vms.values()
                if vm.host_id == host_id and vm.state not in _STOPPED_LIKE
            )

    # -- the port -----------------------------------------------------------------

    def find_vm(self, vm_id: str) -> Vm | None:
        """The VM's snapshot, or None."""
        with self._lock:
            vm = self._vms.get(vm_id)
            self._record("find_vm", vm_id, outcome="ok" if vm else "missing")
            return vm

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        """The VMs whose ``host_id`` is ``host_id``, sorted by id."""
        with self._lock:
            self._record("list_vms_on_host", host_id)
            return [vm for _id, vm in sorted(self._vms.items()) if vm.host_id == host_id]

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        """Mark the VM Stopped (``host_id`` None, ``last_host_id`` its host); see the port."""
        with self._lock:
            try:
                current = self._get(vm.id)
                if current.state in (VmState.STOPPED, VmState.DESTROYED):
                    self._record("advance_stop", vm.id, force=force)
                    return
                if self._stop_failures:
                    armed = self._stop_failures.pop(0)
                    raise armed or ConcurrentOperationError(vm.id, "armed failure")
                self._vms[vm.id] = attrs.evolve(
                    current,
                    state=VmState.STOPPED,
                    host_id=None,
                    last_host_id=current.host_id or current.last_host_id,
                    updated=current.updated + 1,
                )
            except CloudHAError as exc:
                self._record("advance_stop", vm.id, force=force, outcome=type(exc).__name__)
                raise
            self._record("advance_stop", vm.id, force=force)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        """Start the Stopped VM on the first eligible host; see the port."""
        with self._lock:
            try:
                host_id = self._start(vm.id, params, planner)
            except CloudHAError as exc:
                self._record(
                    "advance_start",
                    vm.id,
                    params=params,
                    planner=planner,
                    outcome=type(exc).__name__,
                )
                raise
            self._record("advance_start", vm.id, params=params, planner=planner, outcome=host_id)
            return host_id

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        """False for VMs registered as on local storage."""
        with self._lock:
            self._record("can_restart_on_another_server", vm.id)
            return vm.id not in self._local

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        """Move the VM Running on ``source_host_id`` to the first other host with room.

        See the class docstring and the port.
        """
        with self._lock:
            try:
                host_id = self._migrate(vm.id, source_host_id)
            except CloudHAError as exc:
                self._record(
                    "migrate_away", vm.id, source=source_host_id, outcome=type(exc).__name__
                )
                raise
            self._record("migrate_away", vm.id, source=source_host_id, outcome=host_id)
            return host_id

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        """Force-stop the VM if it runs, then mark it Destroyed or remove it; see the port."""
        with self._lock:
            try:
                self._destroy(vm.id, expunge)
            except CloudHAError as exc:
                self._record("destroy", vm.id, expunge=expunge, outcome=type(exc).__name__)
                raise
            self._record("destroy", vm.id, expunge=expunge)

    # -- internals ----------------------------------------------------------------

    def _migrate(self, vm_id: str, source_host_id: str) -> str:
        current = self._get(vm_id)
        if current.state is not VmState.RUNNING or current.host_id != source_host_id:
            where = f" on host {current.host_id}" if current.host_id else ""
            raise ConcurrentOperationError(
                vm_id, f"VM is {current.state}{where}, not Running on host {source_host_id}"
            )
        if self._migration_failures:
            armed = self._migration_failures.pop(0)
            raise armed or InsufficientCapacityError(vm_id, scope="zone", reason="armed failure")
        host_id = self._first_fit(avoid_hosts=frozenset({source_host_id}), ha_tag=None)
        if host_id is None:
            raise InsufficientCapacityError(
                vm_id, scope="zone", reason=f"no host other than {source_host_id} has room"
            )
        self._vms[vm_id] = attrs.evolve(
            current, host_id=host_id, last_host_id=host_id, updated=current.updated + 1
        )
        return host_id

    def _destroy(self, vm_id: str, expunge: bool) -> None:
        current = self._get(vm_id)
        if current.state not in _STOPPED_LIKE and self._stop_failures:
            armed = self._stop_failures.pop(0)
            raise armed or ConcurrentOperationError(vm_id, "armed failure")
        if expunge:
            del self._vms[vm_id]
            self._local.discard(vm_id)
            return
        if current.state in (VmState.DESTROYED, VmState.EXPUNGING):
            return
        self._vms[vm_id] = attrs.evolve(
            current,
            state=VmState.DESTROYED,
            host_id=None,
            last_host_id=current.host_id or current.last_host_id,
            updated=current.updated + 1,
        )

    def _start(self, vm_id: str, params: StartParams, planner: Planner) -> str:
        current = self._get(vm_id)
        highest = self._generations.get(vm_id, 0)
        if params.generation <= highest:
            raise StaleGenerationError(vm_id, generation=params.generation, highest=highest)
        if current.state is not VmState.STOPPED:
            raise ConcurrentOperationError(vm_id, f"VM is {current.state}")
        if planner is Planner.DEFAULT and self._start_failures:
            scope, reason = self._start_failures.pop(0)
            raise InsufficientCapacityError(vm_id, scope=scope, reason=reason)
        host_id = self._choose_host(params)
        if host_id is None:
            raise InsufficientCapacityError(vm_id, scope="zone", reason="no eligible host has room")
        self._generations[vm_id] = params.generation
        self._vms[vm_id] = attrs.evolve(
            current,
            state=VmState.RUNNING,
            host_id=host_id,
            last_host_id=host_id,
            updated=current.updated + 1,
        )
        self._starts.append(StartRecord(vm_id, params.generation, host_id, planner))
        return host_id

    def _choose_host(self, params: StartParams) -> str | None:
        return self._first_fit(
            avoid_hosts=params.avoid_hosts, ha_tag=params.ha_tag, prefer=params.prefer_host
        )

    def _first_fit(
        self, *, avoid_hosts: frozenset[str], ha_tag: str | None, prefer: str | None = None
    ) -> str | None:
        """``prefer`` if it qualifies, else the first host in sorted id order that is up,
        not avoided, eligible and has room."""
        ordered = sorted(self._hosts.items(), key=lambda item: (item[0] != prefer, item[0]))
        for host_id, host in ordered:
            if not host.up or host_id in avoid_hosts:
                continue
            if ha_tag is not None and ha_tag not in host.tags:
                continue
            if ha_tag is None and self.reserved_tag is not None and self.reserved_tag in host.tags:
                continue
            if self.running_count(host_id) < host.capacity:
                return host_id
        return None

    def _get(self, vm_id: str) -> Vm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise UnknownVmError(vm_id)
        return vm

    def _record(
        self,
        method: str,
        target: str,
        *,
        force: bool | None = None,
        params: StartParams | None = None,
        planner: Planner | None = None,
        outcome: str = "ok",
        source: str | None = None,
        expunge: bool | None = None,
    ) -> None:
        self._calls.append(
            OrchestratorCall(method, target, force, params, planner, outcome, source, expunge)
        )
