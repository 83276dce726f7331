"""Inventory values and enums shared by every layer.

Enum members carry CloudStack's exact strings as values, so
``ResourceState("Maintenance") is ResourceState.MAINTENANCE``.
Entities (:class:`Host`, :class:`Vm`) are immutable snapshots: the
orchestrator's directory owns the real rows, cloudha reads snapshots and
asks for changes through the ports.
"""

from __future__ import annotations

import enum

import attrs

from cloudha.status import Status

__all__ = [
    "HA_PRIORITY_LIMIT",
    "AlertType",
    "Host",
    "HostType",
    "HypervisorType",
    "Pool",
    "ReasonType",
    "ResourceState",
    "Vm",
    "VmPowerState",
    "VmState",
    "VmType",
]


class ResourceState(enum.Enum):
    """Administrative state of a host (CloudStack ``ResourceState``)."""

    CREATING = "Creating"
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PREPARE_FOR_MAINTENANCE = "PrepareForMaintenance"
    ERROR_IN_PREPARE_FOR_MAINTENANCE = "ErrorInPrepareForMaintenance"
    MAINTENANCE = "Maintenance"
    ERROR_IN_MAINTENANCE = "ErrorInMaintenance"
    DEGRADED = "Degraded"
    ERROR = "Error"

    def __str__(self) -> str:
        return self.value


class HostType(enum.Enum):
    """What kind of host a row describes (CloudStack ``Host.Type``)."""

    STORAGE = "Storage"
    ROUTING = "Routing"
    SECONDARY_STORAGE = "SecondaryStorage"
    SECONDARY_STORAGE_CMD_EXECUTOR = "SecondaryStorageCmdExecutor"
    CONSOLE_PROXY = "ConsoleProxy"
    EXTERNAL_FIREWALL = "ExternalFirewall"
    EXTERNAL_LOAD_BALANCER = "ExternalLoadBalancer"
    EXTERNAL_DHCP = "ExternalDhcp"
    SECONDARY_STORAGE_VM = "SecondaryStorageVM"
    LOCAL_SECONDARY_STORAGE = "LocalSecondaryStorage"
    L2_NETWORKING = "L2Networking"
    TRAFFIC_MONITOR = "TrafficMonitor"
    BAREMETAL_DHCP = "BaremetalDhcp"
    BAREMETAL_PXE = "BaremetalPxe"

    @property
    def is_virtual(self) -> bool:
        """True for agents that run inside system VMs (console proxy, secondary storage VM)."""
        return self in (HostType.CONSOLE_PROXY, HostType.SECONDARY_STORAGE_VM)

    @property
    def is_system_vm_agent(self) -> bool:
        """Types the monitor disconnects without investigation (spec §2.3)."""
        return self in (
            HostType.CONSOLE_PROXY,
            HostType.SECONDARY_STORAGE_VM,
            HostType.SECONDARY_STORAGE_CMD_EXECUTOR,
        )

    def __str__(self) -> str:
        return self.value


class HypervisorType(enum.Enum):
    """Hypervisor of a host (CloudStack ``Hypervisor.HypervisorType``)."""

    KVM = "KVM"
    LXC = "LXC"
    XEN_SERVER = "XenServer"
    VMWARE = "VMware"
    HYPERV = "Hyperv"
    OVM = "Ovm"
    OVM3 = "Ovm3"
    BAREMETAL = "BareMetal"
    SIMULATOR = "Simulator"
    EXTERNAL = "External"
    NONE = "None"

    @property
    def has_direct_agent(self) -> bool:
        """True when the management server polls the host itself (PingTask).

        KVM and LXC hosts run an agent that pings the management server; the
        other hypervisors are driven by a resource inside the management
        server, which asks the host for its status every ``ping.interval``.
        """
        return self not in (HypervisorType.KVM, HypervisorType.LXC, HypervisorType.NONE)

    def __str__(self) -> str:
        return self.value


class VmType(enum.Enum):
    """Kind of virtual machine (CloudStack ``VirtualMachine.Type``)."""

    USER = "User"
    DOMAIN_ROUTER = "DomainRouter"
    CONSOLE_PROXY = "ConsoleProxy"
    SECONDARY_STORAGE_VM = "SecondaryStorageVm"
    ELASTIC_IP_VM = "ElasticIpVm"
    ELASTIC_LOAD_BALANCER_VM = "ElasticLoadBalancerVm"
    INTERNAL_LOAD_BALANCER_VM = "InternalLoadBalancerVm"
    INSTANCE = "Instance"

    @property
    def is_system(self) -> bool:
        """System VMs are restarted before user VMs."""
        return self is not VmType.USER

    def __str__(self) -> str:
        return self.value


class VmPowerState(enum.Enum):
    """A VM's power state as its host's agent reports it (CloudStack ``PowerState``)."""

    POWER_ON = "PowerOn"
    POWER_OFF = "PowerOff"
    POWER_UNKNOWN = "PowerUnknown"
    POWER_REPORT_MISSING = "PowerReportMissing"

    def __str__(self) -> str:
        return self.value


class VmState(enum.Enum):
    """Virtual machine state (CloudStack ``VirtualMachine.State``)."""

    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    MIGRATING = "Migrating"
    ERROR = "Error"
    UNKNOWN = "Unknown"
    SHUTDOWN = "Shutdown"
    RESTORING = "Restoring"

    def __str__(self) -> str:
        return self.value


class ReasonType(enum.Enum):
    """Why HA work was scheduled (CloudStack ``HighAvailabilityManager.ReasonType``)."""

    UNKNOWN = "Unknown"
    HOST_MAINTENANCE = "HostMaintenance"
    HOST_DOWN = "HostDown"
    HOST_DEGRADED = "HostDegraded"

    def __str__(self) -> str:
        return self.value


class AlertType(enum.Enum):
    """Alert categories cloudha raises (a subset of CloudStack's ``AlertType``)."""

    HOST = "ALERT.HOST"
    ROUTING = "ALERT.ROUTING"
    USERVM = "ALERT.USERVM"
    DOMAIN_ROUTER = "ALERT.DOMAIN_ROUTER"
    CONSOLE_PROXY = "ALERT.CONSOLE_PROXY"
    SSVM = "ALERT.SSVM"
    HA_ACTION = "ALERT.HA_ACTION"
    OOBM_AUTH_ERROR = "ALERT.OOBM_AUTH_ERROR"
    MANAGEMENT = "ALERT.MANAGEMENT"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Host:
    """A snapshot of one host row.

    ``last_ping`` is the row's wall-clock epoch seconds (``clock.now()``), the
    value CloudStack keeps in ``host.last_ping``: it moves only on connect, on
    a ``Ping`` transition (an investigation that found the host Up) and when a
    management server marks hosts Disconnected at its start. Agent pings themselves live in
    memory, in the :class:`~cloudha.detection.PingMap`.

    ``watchdog`` says whether the host's storage-heartbeat writer arms a
    watchdog that resets the host before its heartbeat can be called stale
    (cloudha's own writer, :class:`~cloudha.heartbeat.HeartbeatWriter` with
    a watchdog). False means no such guarantee (CloudStack's script writer,
    or not known): a stale heartbeat then does not prove the host dead
    (:func:`~cloudha.investigators.support.stale_proof`).

    ``owner_epoch`` is the ownership epoch of ``management_server_id``: the
    owner's registration epoch when it claimed the host (0 for a server that
    runs alone). A server writes the row only while it names that server at
    its current epoch, so a server that was declared departed (paused, cut
    off) and came back cannot act on a host it no longer owns
    (docs/cluster.md).

    ``rack`` is an optional rack label: with ``rack`` among
    ``cloudha.storm.domains``, the hosts sharing it are one failure domain of
    storm protection (:class:`~cloudha.detection.storm.StormGuard`).
    """

    id: str
    name: str = attrs.field(default="")
    type: HostType = HostType.ROUTING
    hypervisor: HypervisorType = HypervisorType.KVM
    status: Status | None = None
    resource_state: ResourceState = ResourceState.ENABLED
    cluster: str | None = None
    pod: str = "p1"
    zone: str = "z1"
    private_ip: str | None = None
    last_ping: float = 0.0
    management_server_id: str | None = None
    disconnected_on: float | None = None
    update_count: int = 0
    watchdog: bool = False
    rack: str | None = None
    owner_epoch: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.id)


HA_PRIORITY_LIMIT = 100_000
"""``Vm.ha_priority`` lies in ``[-HA_PRIORITY_LIMIT, HA_PRIORITY_LIMIT]``."""


def _check_ha_priority(_inst: object, _attr: object, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not -HA_PRIORITY_LIMIT <= value <= HA_PRIORITY_LIMIT
    ):
        raise ValueError(
            f"ha_priority must be an integer between -{HA_PRIORITY_LIMIT} and "
            f"{HA_PRIORITY_LIMIT}, got {value!r}"
        )


@attrs.frozen
class Vm:
    """A snapshot of one virtual machine.

    Attributes:
        updated: the orchestrator's change counter; every state change bumps it.
        ha_priority: among VMs of the same kind (system or user), HA restarts
            those with a higher value first; system VMs always come before
            user VMs.
        zone: the VM's zone, when the orchestrator knows it (otherwise the
            zone of its host is used).
    """

    id: str
    name: str = attrs.field(default="")
    type: VmType = VmType.USER
    state: VmState = VmState.RUNNING
    host_id: str | None = None
    last_host_id: str | None = None
    ha_enabled: bool = False
    hypervisor: HypervisorType = HypervisorType.KVM
    updated: int = 0
    ha_priority: int = attrs.field(default=0, validator=_check_ha_priority)
    zone: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.id)


@attrs.frozen
class Pool:
    """A primary storage pool as mounted on the hosts that use it.

    Attributes:
        id: the pool's id.
        mount_point: where the hosts mount it (the same path on every host,
            as with CloudStack's ``/mnt/<pool uuid>``); the storage heartbeat
            lives in ``<mount_point>/KVMHA/``.
        type: CloudStack's ``StoragePoolType`` string (``NetworkFilesystem``,
            ``SharedMountPoint``, ``RBD`` ...).
        supports_ha: True if the pool can carry the storage heartbeat
            (CloudStack: NFS only; other drivers may say so too).
        cluster: the cluster of a cluster-wide pool; None for zone-wide.
        zone: the zone.
    """

    id: str
    mount_point: str
    type: str = "NetworkFilesystem"
    supports_ha: bool = True
    cluster: str | None = None
    zone: str = "z1"
