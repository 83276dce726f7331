"""The KVM storage heartbeat (spec §6): writer, checker and VM activity check.

Every KVM host writes the epoch seconds to ``<pool>/KVMHA/hb-<its ip>`` on
each of its HA pools, and resets itself when it cannot (:mod:`.writer`).
Neighbours read that file to tell a dead host from an unreachable one
(:mod:`.checker`), and Host-HA looks for VM volume activity on a pool
(:mod:`.activity`). The decision logic is pure and driven by an injected
:class:`~cloudha.clock.Clock` and a :class:`StorageAccess`.
"""

from cloudha.heartbeat.activity import ActivityReport as ActivityReport
from cloudha.heartbeat.activity import check_vm_activity as check_vm_activity
from cloudha.heartbeat.checker import HeartbeatChecker as HeartbeatChecker
from cloudha.heartbeat.checker import HeartbeatReport as HeartbeatReport
from cloudha.heartbeat.checker import PoolReading as PoolReading
from cloudha.heartbeat.files import HEARTBEAT_DIR as HEARTBEAT_DIR
from cloudha.heartbeat.files import HeartbeatFormatError as HeartbeatFormatError
from cloudha.heartbeat.files import activity_state_path as activity_state_path
from cloudha.heartbeat.files import format_heartbeat as format_heartbeat
from cloudha.heartbeat.files import heartbeat_path as heartbeat_path
from cloudha.heartbeat.files import normalize_host_ip as normalize_host_ip
from cloudha.heartbeat.files import parse_heartbeat as parse_heartbeat
from cloudha.heartbeat.isolation import FileIsolationProbe as FileIsolationProbe
from cloudha.heartbeat.isolation import LinkState as LinkState
from cloudha.heartbeat.isolation import link_state as link_state
from cloudha.heartbeat.storage import LocalStorage as LocalStorage
from cloudha.heartbeat.storage import StorageAccess as StorageAccess
from cloudha.heartbeat.timing import HeartbeatTiming as HeartbeatTiming
from cloudha.heartbeat.watchdog import BaseWatchdog as BaseWatchdog
from cloudha.heartbeat.watchdog import LinuxWatchdog as LinuxWatchdog
from cloudha.heartbeat.writer import HeartbeatWriter as HeartbeatWriter
from cloudha.heartbeat.writer import Pet as Pet
from cloudha.heartbeat.writer import SelfFence as SelfFence
from cloudha.heartbeat.writer import SelfFencer as SelfFencer
from cloudha.heartbeat.writer import Sleep as Sleep
from cloudha.heartbeat.writer import StorageFault as StorageFault
from cloudha.heartbeat.writer import SysrqSelfFencer as SysrqSelfFencer
from cloudha.heartbeat.writer import Write as Write
from cloudha.heartbeat.writer import WriterAction as WriterAction
from cloudha.heartbeat.writer import writer_plan as writer_plan

__all__ = [
    "HEARTBEAT_DIR",
    "ActivityReport",
    "BaseWatchdog",
    "FileIsolationProbe",
    "HeartbeatChecker",
    "HeartbeatFormatError",
    "HeartbeatReport",
    "HeartbeatTiming",
    "HeartbeatWriter",
    "LinkState",
    "LinuxWatchdog",
    "LocalStorage",
    "Pet",
    "PoolReading",
    "SelfFence",
    "SelfFencer",
    "Sleep",
    "StorageAccess",
    "StorageFault",
    "SysrqSelfFencer",
    "Write",
    "WriterAction",
    "activity_state_path",
    "check_vm_activity",
    "format_heartbeat",
    "heartbeat_path",
    "link_state",
    "normalize_host_ip",
    "parse_heartbeat",
    "writer_plan",
]
