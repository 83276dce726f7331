"""Fencing: fence builders, the fence chain and its levels (docs/fencing.md)."""

from cloudha.fencing.base import BaseFenceBuilder as BaseFenceBuilder
from cloudha.fencing.base import FenceBuilder as FenceBuilder
from cloudha.fencing.base import FenceOutcome as FenceOutcome
from cloudha.fencing.base import FenceResult as FenceResult
from cloudha.fencing.chain import GRACE as GRACE
from cloudha.fencing.chain import FenceChain as FenceChain
from cloudha.fencing.chain import FenceDecision as FenceDecision
from cloudha.fencing.chain import FenceLevel as FenceLevel
from cloudha.fencing.chain import FenceRunner as FenceRunner
from cloudha.fencing.chain import InlineRunner as InlineRunner
from cloudha.fencing.chain import ThreadRunner as ThreadRunner
from cloudha.fencing.libvirt import LibvirtFencer as LibvirtFencer
from cloudha.fencing.neighbour import KVMFenceBuilder as KVMFenceBuilder
from cloudha.fencing.neighbour import VMwareFenceBuilder as VMwareFenceBuilder
from cloudha.fencing.neighbour import XenServerFenceBuilder as XenServerFenceBuilder
from cloudha.fencing.power import PowerFencer as PowerFencer
from cloudha.fencing.recreatable import RecreatableFencer as RecreatableFencer
from cloudha.fencing.recreatable import Volume as Volume
from cloudha.fencing.recreatable import VolumeDirectory as VolumeDirectory
from cloudha.fencing.registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from cloudha.fencing.registry import FencerContext as FencerContext
from cloudha.fencing.registry import build_fence_chain as build_fence_chain
from cloudha.fencing.registry import builtin_fencers as builtin_fencers
from cloudha.fencing.registry import discover_fencers as discover_fencers
from cloudha.fencing.ssh import RemoteShell as RemoteShell
from cloudha.fencing.ssh import SSHSoftFencer as SSHSoftFencer

__all__ = [
    "ENTRY_POINT_GROUP",
    "GRACE",
    "BaseFenceBuilder",
    "FenceBuilder",
    "FenceChain",
    "FenceDecision",
    "FenceLevel",
    "FenceOutcome",
    "FenceResult",
    "FenceRunner",
    "FencerContext",
    "InlineRunner",
    "KVMFenceBuilder",
    "LibvirtFencer",
    "PowerFencer",
    "RecreatableFencer",
    "RemoteShell",
    "SSHSoftFencer",
    "ThreadRunner",
    "VMwareFenceBuilder",
    "Volume",
    "VolumeDirectory",
    "XenServerFenceBuilder",
    "build_fence_chain",
    "builtin_fencers",
    "discover_fencers",
]
