"""CloudStack's Recreatable fencer: disposable system VMs need no fence (spec §5).

A console proxy, virtual router or secondary storage VM whose volumes are
all recreatable and none on shared storage holds nothing worth protecting:
a fresh copy is built from its template elsewhere. :class:`RecreatableFencer`
answers FENCED for such a VM without doing anything.

That is not proof that the old copy stopped: a router still running on a
partitioned host and its new copy would both answer for the same addresses.
So, as in CloudStack, it is excluded by default
(``ha.fence.builders.exclude = RecreatableFencer``); remove it from that
setting only if duplicates are acceptable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.model import Host, Vm, VmType

__all__ = ["RecreatableFencer", "Volume", "VolumeDirectory"]

_DISPOSABLE = frozenset({VmType.CONSOLE_PROXY, VmType.DOMAIN_ROUTER, VmType.SECONDARY_STORAGE_VM})


@attrs.frozen
class Volume:
    """One volume of a VM, as far as fencing cares.

    Attributes:
        id: the volume's id.
        recreatable: True if the volume can be rebuilt from its template
            (CloudStack's ``Volume.isRecreatable()``: system VMs' root disks).
        pool_id: the primary storage pool it lives on, if allocated.
        shared: True if that pool is shared between hosts (NFS, RBD...);
            a volume on shared storage could be written by two copies at once.
    """

    id: str
    recreatable: bool
    pool_id: str | None = None
    shared: bool = False


@runtime_checkable
class VolumeDirectory(Protocol):
    """The orchestrator's volume inventory.

    Like every port, it may block (a database read) and is called from
    several threads at once; infrastructure faults are raised as
    :class:`~cloudha.errors.ProbeError`.
    """

    def volumes_of(self, vm: Vm) -> Sequence[Volume]:
        """The volumes attached to ``vm`` (empty if none)."""


class RecreatableFencer(BaseFenceBuilder):
    """FENCED, with no action, for a system VM that is disposable (spec §5).

    Rules, in order:

    1. NOT_APPLICABLE unless ``vm.type`` is ConsoleProxy, DomainRouter or
       SecondaryStorageVm (decided without I/O);
    2. NOT_APPLICABLE if any of its volumes is not recreatable or is on a
       shared pool (this reads the volume inventory, not the host);
    3. otherwise FENCED: the VM is disposable and will be recreated, so
       nothing is done to the host. A VM without volumes is disposable too.

    Excluded by default through ``ha.fence.builders.exclude``: see the module
    documentation for why.

    Args:
        clock: the time source.
        volumes: the volume inventory.
        timeout: limit on the attempt, in seconds (it only reads the
            inventory).
    """

    name = "RecreatableFencer"

    def __init__(self, clock: Clock, *, volumes: VolumeDirectory, timeout: float = 1.0) -> None:
        super().__init__(clock, timeout=timeout)
        self.volumes = volumes

    def supports(self, vm: Vm, host: Host) -> bool:
        return vm.type in _DISPOSABLE

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        volumes = list(self.volumes.volumes_of(vm))
        ids = [v.id for v in volumes]
        kept = [v.id for v in volumes if not v.recreatable]
        if kept:
            return self.not_applicable(
                f"{vm.id} has volumes that cannot be recreated: {', '.join(kept)}",
                vm_type=vm.type.value,
                not_recreatable=kept,
            )
        shared = [v.id for v in volumes if v.shared]
        if shared:
            return self.not_applicable(
                f"{vm.id} has volumes on shared storage: {', '.join(shared)}",
                vm_type=vm.type.value,
                on_shared_pool=shared,
            )
        return self.fenced(
            f"{vm.id} is a disposable {vm.type.value}: it is recreated elsewhere, "
            "nothing done to the host",
            vm_type=vm.type.value,
            volumes=ids,
            action="none",
        )
