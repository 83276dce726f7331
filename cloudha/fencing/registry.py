"""Building the fence chain: the built-in fencers, plugins, exclusion and levels.

Registration order is: the built-ins that the context has ports for
(:func:`builtin_fencers`), then ``extra``, then plugins of the
``cloudha.fencers`` entry-point group (see :mod:`cloudha.plugins`), e.g.::

    [project.entry-points."cloudha.fencers"]
    pdu = "acme_ha.fencing:PduFencer.from_context"

Without ``levels`` the chain is CloudStack's: one level per fencer in
registration order, minus ``ha.fence.builders.exclude`` (default
``RecreatableFencer``), the first FENCED wins. With ``levels`` (a list of
lists of fencer names, Pacemaker's fencing topology) only the fencers named
there are used, level by level; naming an unknown or excluded fencer is a
:class:`~cloudha.errors.ConfigurationError`.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError
from cloudha.evidence import Recorder
from cloudha.fencing.base import FenceBuilder
from cloudha.fencing.chain import FenceChain, FenceLevel, FenceRunner
from cloudha.fencing.libvirt import LibvirtFencer
from cloudha.fencing.neighbour import KVMFenceBuilder, VMwareFenceBuilder, XenServerFenceBuilder
from cloudha.fencing.power import PowerFencer
from cloudha.fencing.recreatable import RecreatableFencer, VolumeDirectory
from cloudha.fencing.ssh import RemoteShell, SSHSoftFencer
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.model import Host
from cloudha.oobm.manager import OutOfBandManager
from cloudha.plugins import check_names, load_plugins
from cloudha.ports import (
    AgentGateway,
    AgentSightings,
    AlertSink,
    HostDirectory,
    HypervisorControl,
    StoragePoolDirectory,
)
from cloudha.settings import Settings

__all__ = [
    "BUILTIN_FENCERS",
    "CLOUDSTACK_FENCERS",
    "ENTRY_POINT_GROUP",
    "FencerContext",
    "build_fence_chain",
    "builtin_fencers",
    "discover_fencers",
]

ENTRY_POINT_GROUP = "cloudha.fencers"

BUILTIN_FENCERS: frozenset[str] = frozenset(
    kind.name
    for kind in (
        PowerFencer,
        LibvirtFencer,
        KVMFenceBuilder,
        XenServerFenceBuilder,
        VMwareFenceBuilder,
        SSHSoftFencer,
        RecreatableFencer,
    )
)
"""The names of cloudha's own fencers, whether or not a context has their ports."""

CLOUDSTACK_FENCERS: frozenset[str] = frozenset(
    {
        "KVMFenceBuilder",
        "XenServerFenceBuilder",
        "VMwareFenceBuilder",
        "OvmFenceBuilder",
        "Ovm3FenceBuilder",
        "Simulator Fencer",
        "RecreatableFencer",
    }
)
"""CloudStack's fence builder names (spec §5): accepted in ``ha.fence.builders.exclude``
even where cloudha has no such fencer, since configurations are copied whole."""

DEFAULT_COMMAND_TIMEOUT = 10.0
"""Seconds a neighbour's agent or a hypervisor may take to answer one fencing command."""


@attrs.frozen
class FencerContext:
    """Everything a fencer may need, handed to every factory.

    Attributes:
        clock: the time source.
        directory: the host inventory.
        gateway: sends commands to agents (neighbour fencers).
        settings: the effective settings.
        pools: which pools each host mounts; without it there is no KVM
            storage-heartbeat fencer.
        oobm: out-of-band management; without it there is no power fencer.
        hypervisor_control: a hypervisor connection that can destroy
            domains; without it there is no libvirt fencer.
        ssh_connect: opens a shell on a host; without it there is no SSH
            soft fencer.
        volumes: each VM's volumes; without it there is no Recreatable fencer.
        sightings: when the server last heard from each agent (the KVM
            fence builder's lease rule).
        alerts: where escalations go.
        recorder: where fence attempts are recorded.
        runner: runs each fencer call with its time limit (default: a thread).
        command_timeout: limit on one neighbour command or hypervisor call.
    """

    clock: Clock
    directory: HostDirectory
    gateway: AgentGateway
    settings: Settings = attrs.field(factory=Settings)
    pools: StoragePoolDirectory | None = None
    oobm: OutOfBandManager | None = None
    hypervisor_control: HypervisorControl | None = None
    ssh_connect: Callable[[Host], RemoteShell] | None = None
    volumes: VolumeDirectory | None = None
    sightings: AgentSightings | None = None
    alerts: AlertSink | None = None
    recorder: Recorder | None = None
    runner: FenceRunner | None = None
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT


def builtin_fencers(ctx: FencerContext) -> list[FenceBuilder]:
    """The built-in fencers that ``ctx`` has the ports for, in registration order.

    Power first (the strongest proof), then the libvirt fencer (a hypervisor
    that still answers), then the neighbours' storage-heartbeat proof, the
    other hypervisors' neighbour fencers, and last the SSH soft fencer (a
    recovery step that never fences) and the Recreatable fencer.
    """
    s = ctx.settings
    found: list[FenceBuilder] = []
    if ctx.oobm is not None:
        found.append(
            PowerFencer(ctx.clock, oobm=ctx.oobm, timeout=s.outofbandmanagement_action_timeout)
        )
    if ctx.hypervisor_control is not None:
        found.append(
            LibvirtFencer(ctx.clock, control=ctx.hypervisor_control, timeout=ctx.command_timeout)
        )
    neighbour: dict[str, Any] = {
        "directory": ctx.directory,
        "gateway": ctx.gateway,
        "command_timeout": ctx.command_timeout,
        "timeout": s.kvm_ha_fence_timeout,
    }
    if ctx.pools is not None:
        found.append(
            KVMFenceBuilder(
                ctx.clock,
                pools=ctx.pools,
                fail_on_one_pool=s.kvm_ha_fence_on_storage_heartbeat_failure,
                self_fence=s.reboot_host_and_alert_management_on_heartbeat_timeout,
                stale_bound=HeartbeatTiming.from_settings(s).stale_after,
                sightings=ctx.sightings,
                **neighbour,
            )
        )
    found.append(XenServerFenceBuilder(ctx.clock, **neighbour))
    found.append(VMwareFenceBuilder(ctx.clock))
    if ctx.ssh_connect is not None:
        found.append(SSHSoftFencer(ctx.clock, connect=ctx.ssh_connect, timeout=ctx.command_timeout))
    if ctx.volumes is not None:
        found.append(RecreatableFencer(ctx.clock, volumes=ctx.volumes))
    return found


def discover_fencers(
    ctx: FencerContext,
    *,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> list[FenceBuilder]:
    """Load every fencer plugin of the ``cloudha.fencers`` group.

    Raises:
        ConfigurationError: a plugin failed to load or built no fencer.
    """
    return load_plugins(
        ENTRY_POINT_GROUP,
        ctx,
        FenceBuilder,  # type: ignore[type-abstract]
        what="fencer",
        needs="name, timeout and fence_off",
        entry_points=entry_points,
    )


def build_fence_chain(
    ctx: FencerContext,
    *,
    extra: Iterable[FenceBuilder] = (),
    discover: bool = True,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    levels: Sequence[Sequence[str]] | None = None,
) -> FenceChain:
    """The fence chain: CloudStack's registry, or the fence ``levels`` given by name.

    Raises:
        ConfigurationError: two fencers share a name, a level is empty, a
            level names a fencer that is unknown or excluded, or
            ``ha.fence.builders.exclude`` names a fence builder that is neither
            cloudha's (:data:`BUILTIN_FENCERS`), CloudStack's
            (:data:`CLOUDSTACK_FENCERS`), in ``extra`` nor a plugin (the
            message names the key and the name, with the closest known name).
    """
    fencers = builtin_fencers(ctx) + list(extra)
    if discover:
        fencers += discover_fencers(ctx, entry_points=entry_points)
    by_name: dict[str, FenceBuilder] = {}
    for fencer in fencers:
        if fencer.name in by_name:
            raise ConfigurationError(
                f"two fencers are named {fencer.name!r}", key="fencers", value=fencer.name
            )
        by_name[fencer.name] = fencer
    check_names(
        "ha.fence.builders.exclude",
        ctx.settings.ha_fence_builders_exclude,
        BUILTIN_FENCERS | CLOUDSTACK_FENCERS | set(by_name),
        what="fence builder",
    )
    excluded = set(ctx.settings.ha_fence_builders_exclude)
    common: dict[str, Any] = {
        "clock": ctx.clock,
        "runner": ctx.runner,
        "alerts": ctx.alerts,
        "recorder": ctx.recorder,
    }
    if levels is None:
        return FenceChain.from_builders(fencers, exclude=excluded, **common)
    built: list[FenceLevel] = []
    for index, names in enumerate(levels):
        if isinstance(names, str) or not names:
            raise ConfigurationError(
                f"fence level {index} must be a non-empty list of fencer names, got {names!r}",
                key="fence levels",
                value=repr(names),
            )
        members: list[FenceBuilder] = []
        for name in names:
            if name in excluded:
                raise ConfigurationError(
                    f"fence level {index} names {name!r}, which ha.fence.builders.exclude "
                    "leaves out",
                    key="fence levels",
                    value=name,
                )
            if name not in by_name:
                close = difflib.get_close_matches(name, sorted(by_name), n=1, cutoff=0.6)
                hint = f", did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(
                    f"fence level {index} names {name!r}, which is not a fencer here "
                    f"(have: {', '.join(sorted(by_name))}{hint})",
                    key="fence levels",
                    value=name,
                )
            members.append(by_name[name])
        built.append(FenceLevel(members))
    return FenceChain(built, **common)
