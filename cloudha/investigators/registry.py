"""Building the investigator chain: the built-in witnesses and third-party plugins.

Third-party investigators are found through the ``cloudha.investigators``
entry-point group (:func:`cloudha.plugins.load_plugins` explains the
factories and the errors). For example, in the plugin's ``pyproject.toml``::

    [project.entry-points."cloudha.investigators"]
    ipmi-sel = "acme_ha.investigators:SelInvestigator.from_context"
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from typing import Any

import attrs

from cloudha.clock import Clock
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators.agent_check import AgentCheckInvestigator
from cloudha.investigators.base import Investigator
from cloudha.investigators.chain import InvestigatorChain
from cloudha.investigators.hypervisor import HypervisorInvestigator
from cloudha.investigators.kvm import KVMInvestigator
from cloudha.investigators.ping import ManagementIPInvestigator, PingInvestigator
from cloudha.investigators.power import BMCInvestigator
from cloudha.investigators.vmware import VMwareInvestigator
from cloudha.investigators.xen import XenServerInvestigator
from cloudha.oobm.manager import OutOfBandManager
from cloudha.plugins import check_names, load_plugins
from cloudha.ports import (
    AgentGateway,
    AgentSightings,
    HostDirectory,
    HypervisorProbe,
    StoragePoolDirectory,
    VmNetworkDirectory,
)
from cloudha.settings import Settings

__all__ = [
    "BUILTIN_INVESTIGATORS",
    "CLOUDSTACK_INVESTIGATORS",
    "ENTRY_POINT_GROUP",
    "InvestigatorContext",
    "build_chain",
    "builtin_investigators",
    "discover_investigators",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cloudha.investigators"

BUILTIN_INVESTIGATORS: frozenset[str] = frozenset(
    kind.name
    for kind in (
        AgentCheckInvestigator,
        XenServerInvestigator,
        BMCInvestigator,
        KVMInvestigator,
        VMwareInvestigator,
        PingInvestigator,
        ManagementIPInvestigator,
        HypervisorInvestigator,
    )
)
"""The names of cloudha's own investigators, whether or not a context has their ports."""

CLOUDSTACK_INVESTIGATORS: frozenset[str] = frozenset(
    {
        "SimpleInvestigator",
        "XenServerInvestigator",
        "KVMInvestigator",
        "HypervInvestigator",
        "VMwareInvestigator",
        "PingInvestigator",
        "ManagementIPSysVMInvestigator",
        "Ovm3Investigator",
        "Simulator Investigator",
    }
)
"""CloudStack's investigator names (spec §4): accepted in ``ha.investigators.*``
even where cloudha has no such investigator, since configurations are copied whole."""


@attrs.frozen
class InvestigatorContext:
    """Everything an investigator may need, handed to every factory.

    Attributes:
        clock: the time source.
        directory: the host inventory.
        gateway: sends commands to agents.
        settings: the effective settings.
        pools: which pools each host mounts; without it there is no KVM
            storage-heartbeat investigator.
        networks: VM addresses; without it the ping investigators judge
            hosts only.
        hypervisor_probe: a direct hypervisor connection (libvirt); without
            it there is no hypervisor investigator.
        oobm: out-of-band management; without it, or without a power
            driver in it, there is no BMC power witness.
        timeout: limit on each command or probe, in seconds; None means
            ``ping.interval``, the same limit as the direct CheckHealth.
        sightings: when the server last heard from each agent (the KVM
            investigator's lease rule, :func:`~cloudha.investigators.support.sighting_proof`).
    """

    clock: Clock
    directory: HostDirectory
    gateway: AgentGateway
    settings: Settings = attrs.field(factory=Settings)
    pools: StoragePoolDirectory | None = None
    networks: VmNetworkDirectory | None = None
    hypervisor_probe: HypervisorProbe | None = None
    oobm: OutOfBandManager | None = None
    timeout: float | None = None
    sightings: AgentSightings | None = None

    @property
    def command_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.settings.ping_interval


def builtin_investigators(ctx: InvestigatorContext) -> list[Investigator]:
    """The built-in witnesses that ``ctx`` has the ports for, in registration order."""
    common: dict[str, Any] = {
        "directory": ctx.directory,
        "gateway": ctx.gateway,
        "timeout": ctx.command_timeout,
    }
    found: list[Investigator] = [
        AgentCheckInvestigator(ctx.clock, **common),
        XenServerInvestigator(ctx.clock, **common),
    ]
    if ctx.oobm is not None and ctx.oobm.driver_names:
        found.append(BMCInvestigator(ctx.clock, oobm=ctx.oobm, timeout=ctx.command_timeout))
    if ctx.pools is not None:
        found.append(
            KVMInvestigator(
                ctx.clock,
                pools=ctx.pools,
                fail_on_one_pool=ctx.settings.kvm_ha_fence_on_storage_heartbeat_failure,
                self_fence=ctx.settings.reboot_host_and_alert_management_on_heartbeat_timeout,
                timing=HeartbeatTiming.from_settings(ctx.settings),
                sightings=ctx.sightings,
                **common,
            )
        )
    found.append(VMwareInvestigator(ctx.clock))
    found.append(PingInvestigator(ctx.clock, networks=ctx.networks, **common))
    found.append(ManagementIPInvestigator(ctx.clock, networks=ctx.networks, **common))
    if ctx.hypervisor_probe is not None:
        found.append(
            HypervisorInvestigator(
                ctx.clock, probe=ctx.hypervisor_probe, timeout=ctx.command_timeout
            )
        )
    return found


def discover_investigators(
    ctx: InvestigatorContext,
    *,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> list[Investigator]:
    """Load every investigator plugin of the ``cloudha.investigators`` group.

    Args:
        ctx: handed to each factory.
        entry_points: the entry points to load (default: those installed).

    Raises:
        ConfigurationError: a plugin failed to load or built no investigator.
    """
    return load_plugins(
        ENTRY_POINT_GROUP,
        ctx,
        Investigator,  # type: ignore[type-abstract]
        what="investigator",
        needs="name, supports, is_agent_alive and is_vm_alive",
        entry_points=entry_points,
    )


def build_chain(
    ctx: InvestigatorContext,
    *,
    extra: Iterable[Investigator] = (),
    discover: bool = True,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> InvestigatorChain:
    """The chain as CloudStack's registry would build it.

    Registration order is: the built-ins (:func:`builtin_investigators`),
    then ``extra``, then discovered plugins. ``ha.investigators.order`` and
    ``ha.investigators.exclude`` from ``ctx.settings`` then apply.

    Raises:
        ConfigurationError: a plugin failed to load, or ``ha.investigators.order``
            or ``ha.investigators.exclude`` names an investigator that is neither
            cloudha's (:data:`BUILTIN_INVESTIGATORS`), CloudStack's
            (:data:`CLOUDSTACK_INVESTIGATORS`), in ``extra`` nor a plugin; the
            message names the key and the name, with the closest known name.
    """
    investigators = builtin_investigators(ctx) + list(extra)
    if discover:
        investigators += discover_investigators(ctx, entry_points=entry_points)
    known = BUILTIN_INVESTIGATORS | CLOUDSTACK_INVESTIGATORS | {i.name for i in investigators}
    for key, names in (
        ("ha.investigators.order", ctx.settings.ha_investigators_order),
        ("ha.investigators.exclude", ctx.settings.ha_investigators_exclude),
    ):
        check_names(key, names, known, what="investigator")
    return InvestigatorChain(
        investigators,
        order=ctx.settings.ha_investigators_order,
        exclude=ctx.settings.ha_investigators_exclude,
    )
