"""The simulated cloud's ground truth, and port fakes backed by it.

A :class:`World` is what really is: hosts with power (and a boot in
progress), an agent process, management and storage links, a hang, a BMC and
the bookkeeping of their heartbeat writer and watchdog; VMs and where they really
run (which may differ from what the database believes); the orchestrator's
VM rows and host table; the files on shared pools and which pools are out;
the management network. The ``World*`` classes are the ports a
:class:`cloudha.ManagementServer` reaches that world through, each one
implementing its Protocol of :mod:`cloudha.ports`. The simulator
(:mod:`cloudha.testing.simulator`) runs on exactly these; an embedder's test
can build a World and a ManagementServer on a :class:`~cloudha.testing.FakeClock`
and flip the world's state by hand::

    world = World(host_specs, vm_specs, clock=clock)
    server = ManagementServer(settings=..., clock=clock, alerts=..., store=..., **world.ports())

Nothing here drives time: what happens later (a host booting after power-on)
is left to the injected ``on_power_on`` callback, and agents' pings and
heartbeat writes to whoever drives the world (the simulator's event queue, or
the test). :class:`EventTimeline` is an evidence sink keeping the records as
JSON events, for the server and the world to share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import attrs

from cloudha.clock import Clock
from cloudha.commands import CHECK_ON_HOST, CHECK_VM, CHECK_VM_ACTIVITY, FENCE, PING_TEST
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.evidence import Evidence, EvidenceSink, Recorder
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.heartbeat import HeartbeatChecker, HeartbeatTiming, check_vm_activity
from cloudha.model import Host, Pool, ResourceState, Vm, VmPowerState, VmState
from cloudha.oobm.manager import StaticOobmConfigs
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.ports import (
    Answer,
    Command,
    DomainState,
    HypervisorReport,
    PingReport,
    ShellResult,
    StatusChange,
)
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing.fakes import InMemoryHostDirectory
from cloudha.testing.scenario import HostSpec, VmSpec

__all__ = [
    "MANAGEMENT_SERVER_ID",
    "EventTimeline",
    "VmRow",
    "World",
    "WorldAgentGateway",
    "WorldDirectResources",
    "WorldHost",
    "WorldHostDirectory",
    "WorldHostShell",
    "WorldHypervisors",
    "WorldOrchestrator",
    "WorldPools",
    "WorldPorts",
    "WorldPowerDriver",
    "WorldStorage",
    "WorldVm",
]

MANAGEMENT_SERVER_ID = "ms1"
"""The default id of the management server owning every host of a World."""


class EventTimeline:
    """An evidence sink keeping every record as a JSON event, in order, with one listener.

    :attr:`events` are :meth:`~cloudha.evidence.Evidence.to_event` dicts (the
    simulator's document ``events``); :attr:`on_record`, when set, sees each
    :class:`~cloudha.evidence.Evidence` as it is recorded; each of :attr:`sinks`
    (e.g. ``cloudha simulate --evidence-db``'s SQL store) gets it too, after.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.on_record: Callable[[Evidence], None] | None = None
        self.sinks: list[EvidenceSink] = []

    def record(self, evidence: Evidence) -> None:
        self.events.append(evidence.to_event())
        if self.on_record is not None:
            self.on_record(evidence)
        for sink in self.sinks:
            sink.record(evidence)


class WorldPorts(TypedDict):
    """The :class:`cloudha.ManagementServer` keyword arguments of :meth:`World.ports`."""

    directory: WorldHostDirectory
    gateway: WorldAgentGateway
    orchestrator: WorldOrchestrator
    oobm_drivers: list[WorldPowerDriver]
    oobm_configs: StaticOobmConfigs
    pools: WorldPools
    hypervisor: WorldHypervisors
    direct_resources: WorldDirectResources
    volumes: WorldVolumes
    shell: WorldHostShell


@attrs.define
class WorldHost:
    """One simulated host as it really is (not as the management server believes)."""

    spec: HostSpec
    powered: bool = True
    agent_running: bool = True
    mgmt_link: bool = True
    isolated: bool = False
    connected: bool = True
    died: bool = False
    heartbeat_running: bool = True
    writer_epoch: int = 0
    ip: str = ""
    hung: bool = False
    bmc_up: bool = True
    pet_seq: int = 0
    """Bumped at every watchdog pet and power-off: a countdown of an older value is void."""
    round_started: float | None = None
    """When the writer's current heartbeat round made its first write (None: no write yet)."""
    boot_seq: int = 0
    """Bumped at every boot and power-off: a boot of an older value is void."""
    booting: bool = False
    """Powered on, its OS not up yet: nothing of it runs (no VM, agent, writer or libvirtd)."""
    awaiting_arm: bool = False
    """A watchdog host's agent waits for its writer to arm the watchdog (after boot)."""
    broken: bool = False
    """Dead hardware (``host_crash`` until ``host_recover``): a BMC ON or RESET leaves it Off."""
    last_ack: float | None = None
    """Epoch seconds when the agent sent its last ping the server acknowledged (None: none)."""
    connected_to: str | None = None
    """The management server the agent's connection is to (None: not connected anywhere).
    The simulator keeps it; an agent pings its host row's owner and reconnects when it changes."""


@attrs.define
class WorldVm:
    """One VM and the hosts it really runs on (two of them is a double run)."""

    id: str
    ha: bool
    original_host: str
    running_on: set[str] = attrs.Factory(set)
    last_host: str | None = None
    frozen_on: set[str] = attrs.Factory(set)
    last_active: float = 0.0
    """When the VM last ran anywhere (epoch seconds): its volume's mtime once it stopped."""
    volume: str | None = None
    """Its disk, ``volumes/<id>`` on its first host's first pool (None: that host has none)."""
    volume_pool: str | None = None

    @property
    def host(self) -> str | None:
        return min(self.running_on) if self.running_on else self.last_host


@attrs.define
class VmRow:
    """The orchestrator's database row of a VM (it survives management server crashes)."""

    state: VmState
    host_id: str | None
    last_host_id: str | None
    updated: int = 0
    generation: int = 0


class World:
    """The simulated cloud's ground truth.

    Args:
        hosts: the hosts, in order (host ``i`` gets the IP ``10.x.y.z`` of ``i``).
        vms: the VMs, each Running on its ``host``.
        clock: the clock of file mtimes and heartbeat checks (a
            :class:`~cloudha.testing.FakeClock`, the server's own).
        recorder: where ``vm_state`` and ``power`` events go (by default a
            recorder on a fresh :class:`EventTimeline`, actor ``world``).
        timing: the heartbeat timing of the hosts' HA agents (their
            checkers); by default that of the default :class:`~cloudha.Settings`.
        server_running: is a management server running now? (Reachability
            needs one; the simulator passes its current server's state.)
        on_power_on: called when a BMC switches a host on (the host then
            boots: the simulator schedules that). By default the agent runs at once.
        server_id: the management server owning every host in the host table;
            None for a group of servers (``servers``) that claim the hosts
            themselves: every row starts without an owner.
        servers: the management servers (by default ``server_id`` alone).
        servers_running: is management server ``id`` running now? By default
            ``server_running()`` for each.

    A host is reached through one management server (:meth:`reachable`): by
    default its host row's owner, or ``server_id`` for a row without one
    (with ``server_id`` None such a host is reached by no server).
    """

    def __init__(
        self,
        hosts: Sequence[HostSpec],
        vms: Sequence[VmSpec],
        *,
        clock: Clock,
        recorder: Recorder | None = None,
        timing: HeartbeatTiming | None = None,
        server_running: Callable[[], bool] = lambda: True,
        on_power_on: Callable[[WorldHost], None] | None = None,
        server_id: str | None = MANAGEMENT_SERVER_ID,
        servers: Sequence[str] | None = None,
        servers_running: Callable[[str], bool] | None = None,
    ) -> None:
        self.clock = clock
        self.recorder = recorder or Recorder(EventTimeline(), clock, "world")
        self.timing = timing or HeartbeatTiming.from_settings(Settings())
        self.server_running = server_running
        self.server_id = server_id
        """The owner of a host whose row names none (None: such a host is reached by no one)."""
        self.servers: tuple[str, ...] = tuple(
            servers if servers is not None else ([] if server_id is None else [server_id])
        )
        """Every management server of the world."""
        self.servers_running = servers_running
        self.isolated_servers: set[str] = set()
        """Management servers cut off the management network (``ms_isolation``)."""
        self.on_host_write: Callable[[str | None, StatusChange], None] | None = None
        """Called with the writer's server id and the change after each host row write a
        server's :class:`WorldHostDirectory` applied (the simulator's fencing check)."""
        self.on_power_on = on_power_on
        self.oobm_configs = StaticOobmConfigs()
        self.directory = InMemoryHostDirectory()
        """The host table (the orchestrator's database): what the server reads and writes."""
        self.orchestrator_out = False
        """An orchestrator outage: every VM orchestrator and host directory call fails."""
        self.agent_service = "cloudstack-agent"
        """The agent's systemd unit on every host (what ``systemctl restart`` restarts)."""
        self.on_agent_start: Callable[[WorldHost], None] | None = None
        """Called when a restart over SSH started a stopped agent (the simulator then
        connects it); by default nothing more: the agent connects at its next ping."""
        self.hosts: dict[str, WorldHost] = {}
        self.vms: dict[str, WorldVm] = {}
        self.files: dict[str, tuple[bytes, float]] = {}
        """Pool files by path: (content, mtime as a Unix timestamp)."""
        self.storage_out: set[str] = set()
        """Pools not answering anyone."""
        self.host_by_ip: dict[str, WorldHost] = {}
        self.double_runs: set[str] = set()
        """VMs that ever ran on two hosts at once."""
        for index, spec in enumerate(hosts):
            ip = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
            self.hosts[spec.id] = WorldHost(spec, ip=ip)
            self.host_by_ip[ip] = self.hosts[spec.id]
            if spec.oobm != "none":
                self.oobm_configs.set(
                    spec.id,
                    OobmConfig(
                        spec.oobm,
                        f"bmc-{spec.id}",
                        "admin",
                        "simulated",
                        host_id=spec.id,
                    ),
                )
            self.directory.add(
                Host(
                    id=spec.id,
                    type=spec.type,
                    hypervisor=spec.hypervisor,
                    status=Status.UP,
                    resource_state=spec.resource_state,
                    cluster=spec.cluster,
                    pod=spec.pod,
                    zone=spec.zone,
                    private_ip=ip,
                    last_ping=0.0,
                    management_server_id=server_id,
                    watchdog=spec.watchdog,
                    rack=spec.rack,
                )
            )
        for vm in vms:
            pools = self.hosts[vm.host].spec.pools
            self.vms[vm.id] = WorldVm(
                vm.id,
                vm.ha,
                vm.host,
                {vm.host},
                vm.host,
                volume=f"volumes/{vm.id}" if pools else None,
                volume_pool=pools[0] if pools else None,
            )
        self.orchestrator = WorldOrchestrator(self, vms)
        self.pools = WorldPools(self)
        self.storage = {host_id: WorldStorage(self, h) for host_id, h in self.hosts.items()}
        self._checkers: dict[str, HeartbeatChecker] = {}

    @property
    def ms_isolated(self) -> bool:
        """Every management server is cut off the management network (set: all, or none)."""
        return bool(self.servers) and all(s in self.isolated_servers for s in self.servers)

    @ms_isolated.setter
    def ms_isolated(self, value: bool) -> None:
        if value:
            self.isolated_servers.update(self.servers)
        else:
            self.isolated_servers.clear()

    def ports(self, server_id: str | None = None) -> WorldPorts:
        """Keyword arguments of :class:`cloudha.ManagementServer` reaching this world.

        A fresh gateway, hypervisor control, power drivers (``ipmi`` and
        ``redfish``), direct resources and shell, reaching hosts as management
        server ``server_id`` (by default :attr:`server_id`); the shared host
        directory (with outages; each write it applies goes to :attr:`on_host_write` with
        ``server_id``), orchestrator, OOBM configs and pools.
        """
        server = server_id if server_id is not None else self.server_id
        return {
            "directory": WorldHostDirectory(self, server),
            "gateway": WorldAgentGateway(self, server),
            "orchestrator": self.orchestrator,
            "oobm_drivers": [WorldPowerDriver(self, "ipmi"), WorldPowerDriver(self, "redfish")],
            "oobm_configs": self.oobm_configs,
            "pools": self.pools,
            "hypervisor": WorldHypervisors(self, server),
            "direct_resources": WorldDirectResources(self, server),
            "volumes": WorldVolumes(self),
            "shell": WorldHostShell(self, server),
        }

    def owner(self, host: WorldHost) -> str | None:
        """The management server ``host`` is reached through: its row's owner, else
        :attr:`server_id`."""
        row = self.directory.find_host(host.spec.id)
        if row is not None and row.management_server_id is not None:
            return row.management_server_id
        return self.server_id

    def running(self, server_id: str) -> bool:
        """Is management server ``server_id`` running (not crashed, not paused) now?"""
        if self.servers_running is not None:
            return self.servers_running(server_id)
        return self.server_running()

    def checker(self, host: WorldHost) -> HeartbeatChecker:
        """The heartbeat checker running on ``host`` (reading through its own mounts)."""
        found = self._checkers.get(host.spec.id)
        if found is None:
            found = HeartbeatChecker(self.storage[host.spec.id], self.clock, self.timing)
            self._checkers[host.spec.id] = found
        return found

    def reachable(self, host: WorldHost, server_id: str | None = None) -> bool:
        """Can management server ``server_id`` (by default :meth:`owner`) and the host's agent
        talk right now?"""
        server = server_id if server_id is not None else self.owner(host)
        return (
            server is not None
            and self.running(server)
            and server not in self.isolated_servers
            and host.powered
            and not host.hung
            and host.mgmt_link
            and not host.isolated
        )

    def ssh_reachable(self, host: WorldHost, server_id: str | None = None) -> bool:
        """Can the management server (``server_id``, by default the owner) log in to ``host``
        over SSH right now?

        SSH takes the agent's network: the host must be :meth:`reachable`
        (powered, not hung, not isolated, its management link up, the server
        not isolated) and booted (sshd runs once the OS is up).
        """
        return self.reachable(host, server_id) and not host.booting

    def start_agent(self, host: WorldHost) -> bool:
        """The agent service is (re)started on ``host``; True when a stopped agent now runs.

        On a host still booting, waiting for its writer to arm the watchdog,
        or hung, nothing starts (the boot starts the agent, a hung OS starts
        nothing); a running agent keeps running.
        """
        idle = host.booting or host.awaiting_arm or host.hung
        if not host.powered or idle or host.agent_running:
            return False
        host.agent_running = True
        if self.on_agent_start is not None:
            self.on_agent_start(host)
        return True

    def power_off(self, host: WorldHost) -> None:
        """``host`` loses power: its agent, link, writer and VMs (frozen ones too) die."""
        host.pet_seq += 1  # a host without power has no countdown running
        host.boot_seq += 1  # nor a boot in progress
        host.writer_epoch += 1  # nor a heartbeat writer: the next boot starts a new one
        host.powered = host.agent_running = host.connected = host.booting = False
        host.awaiting_arm = False
        host.hung = False
        host.died = True
        for vm in self.vms.values():
            self.vm_leaves(vm, host.spec.id)
            vm.frozen_on.discard(host.spec.id)

    def vm_leaves(self, vm: WorldVm, host_id: str) -> None:
        """``vm`` stops running on ``host_id`` (killed, stopped, frozen or migrated away)."""
        if host_id in vm.running_on:
            vm.running_on.discard(host_id)
            if not vm.running_on:
                vm.last_active = self.clock.now().timestamp()

    def volume_mtime(self, vm: WorldVm) -> float:
        """A running VM writes its disk all the time; a stopped one left it as it stopped."""
        return self.clock.now().timestamp() if vm.running_on else vm.last_active

    def power_cut(self, host: WorldHost, reason: str) -> None:
        """The BMC switched ``host`` off."""
        self.recorder.emit("power", host=host.spec.id, reason=reason, power="Off")
        self.power_off(host)

    def power_on(self, host: WorldHost, reason: str) -> None:
        """The BMC switched ``host`` on: it boots (``on_power_on``); dead hardware stays Off."""
        if host.broken:
            self.recorder.emit(
                "power", host=host.spec.id, reason=f"{reason}: dead hardware stays Off", power="Off"
            )
            return
        self.recorder.emit("power", host=host.spec.id, reason=reason, power="On")
        host.powered = True
        if self.on_power_on is not None:
            self.on_power_on(host)
        else:
            host.agent_running = True

    def alive_with_storage(self, host: WorldHost) -> bool:
        """Is ``host`` running (not hung) and able to reach one of its pools right now?

        A host still booting after a reset is not: its VMs died with the reset
        and nothing runs on it yet, so fencing it endangers nothing (the
        heartbeat that went stale told the truth: the host did stop). Nor is a
        watchdog host whose agent still waits for the writer to arm the
        watchdog (``awaiting_arm``): its boot is not finished, no VM can
        start on it, and a heartbeat left stale by the reset still tells the
        truth about the VMs it ran.
        """
        if host.awaiting_arm or not host.powered or host.booting or host.hung or host.isolated:
            return False
        return any(p not in self.storage_out for p in host.spec.pools)

    def pick_target(
        self, home: str, avoid: frozenset[str] = frozenset(), prefer: str | None = None
    ) -> str | None:
        """``prefer`` when it qualifies, else the least loaded qualifying host.

        A host qualifies when it is Up, Enabled, not avoided, of home's zone and
        hypervisor, with room. A VM starts through the target's agent, so the
        target must be reachable with its agent running: a host rebooting (its
        row still Up) or cut off from the management server is no target.
        """
        dead = self.hosts[home].spec
        best: tuple[int, str] | None = None
        for host_id, host in self.hosts.items():
            row = self.directory.find_host(host_id)
            if (
                host_id in avoid
                or row is None
                or row.status is not Status.UP
                or row.resource_state is not ResourceState.ENABLED
                or not (self.reachable(host) and host.agent_running)
                or host.spec.zone != dead.zone
                or host.spec.hypervisor is not dead.hypervisor
            ):
                continue
            load = sum(1 for vm in self.vms.values() if host_id in vm.running_on)
            if host.spec.capacity is not None and load >= host.spec.capacity:
                continue
            if host_id == prefer:
                return host_id
            if best is None or (load, host_id) < best:
                best = (load, host_id)
        return None if best is None else best[1]

    def start_vm(self, vm: WorldVm, host_id: str) -> None:
        """Start ``vm`` on ``host_id`` (counting a double run if it runs elsewhere too)."""
        vm.running_on.add(host_id)
        vm.last_host = host_id
        if len(vm.running_on) > 1:
            self.double_runs.add(vm.id)
        self.recorder.emit("vm_state", vm=vm.id, host=host_id, state="Running")


class WorldAgentGateway:
    """Agents as the management server reaches them (an ``AgentGateway``).

    CheckHealth answers while the host is reachable and its agent runs; the
    investigators' commands (CheckOnHost reads the pools' heartbeat files
    through the neighbour's own mounts, CheckVirtualMachine, PingTest, the
    XenServer pool's Fence) answer from the world's state.
    """

    def __init__(self, world: World, server_id: str | None = None) -> None:
        self.world = world
        self.server_id = server_id
        """The management server sending (None: each host's owner)."""

    def _agent(self, host: Host, timeout: float) -> WorldHost:
        sim_host = self.world.hosts[host.id]
        if not self.world.reachable(sim_host, self.server_id):
            raise ProbeTimeout(f"no answer from {host.id} within {timeout:g}s", host_id=host.id)
        if not sim_host.agent_running:
            raise ProbeConnectionError(
                f"agent of {host.id} refused the connection", host_id=host.id
            )
        return sim_host

    def check_health(self, host: Host, *, timeout: float) -> bool:
        self._agent(host, timeout)
        return True

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        agent = self._agent(host, timeout)
        world = self.world
        if command.name == CHECK_ON_HOST:
            report = world.checker(agent).check(
                world.pools.pools_for_host(host),
                str(command.params["host_ip"]),
                fail_on_one_pool=bool(command.params.get("fail_on_one_pool", False)),
            )
            return Answer(True, report.reason, report.to_dict())
        if command.name == CHECK_VM_ACTIVITY:
            params = command.params
            if params["pool_id"] not in agent.spec.pools:
                return Answer(False, f"{host.id} does not mount pool {params['pool_id']}")
            activity = check_vm_activity(
                world.storage[host.id],
                world.clock,
                world.timing,
                mount_point=str(params["mount_point"]),
                host_ip=str(params["host_ip"]),
                volumes=list(params["volumes"]),
                suspect_time=float(params["suspect_time"]),
                watchdog=bool(params.get("watchdog", False)),
            )
            return Answer(True, activity.reason, activity.to_dict())
        if command.name == CHECK_VM:
            name = str(command.params["vm_name"])
            vm = world.vms.get(name)
            state = (
                VmPowerState.POWER_ON
                if vm is not None and host.id in vm.running_on
                else VmPowerState.POWER_OFF
            )
            return Answer(True, data={"power_state": state.value})
        if command.name == PING_TEST:
            target = world.host_by_ip.get(str(command.params["ip"]))
            # A hung kernel answers nothing, ICMP included.
            answered = (
                target is not None
                and target.powered
                and not target.hung
                and not target.isolated
                and not agent.isolated
            )
            return Answer(answered)
        if command.name == FENCE:
            # A XenServer pool member fences a VM off a member the pool sees without power.
            target = world.hosts.get(str(command.params["host_id"]))
            if target is not None and not target.powered:
                return Answer(True, f"{target.spec.id} is off: {command.params['vm_name']} fenced")
            return Answer(False, "the pool still sees the host running")
        raise ProbeConnectionError(f"{command.name} is not simulated", host_id=host.id)


class WorldHostDirectory:
    """The host table as the management server reaches it (a ``HostDirectory``).

    It is :attr:`World.directory`, except that during an orchestrator outage
    every call raises :class:`~cloudha.errors.ProbeConnectionError`. Each write
    it applies goes to :attr:`World.on_host_write` with ``server_id`` (the writer).
    """

    def __init__(self, world: World, server_id: str | None = None) -> None:
        self.world = world
        self.server_id = server_id

    def _check(self) -> InMemoryHostDirectory:
        if self.world.orchestrator_out:
            raise ProbeConnectionError("the host directory does not answer (orchestrator outage)")
        return self.world.directory

    def find_host(self, host_id: str) -> Host | None:
        return self._check().find_host(host_id)

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        return self._check().list_hosts(
            cluster=cluster, pod=pod, zone=zone, management_server_id=management_server_id
        )

    def update_status(self, change: StatusChange) -> bool:
        written = self._check().update_status(change)
        if written and self.world.on_host_write is not None:
            self.world.on_host_write(self.server_id, change)
        return written


class WorldHypervisors:
    """Hypervisor connections from the management server (a ``HypervisorControl``).

    Libvirt on the host's management link: it answers while the host is
    reachable, whether or not the agent runs.
    """

    def __init__(self, world: World, server_id: str | None = None) -> None:
        self.world = world
        self.server_id = server_id

    def _reach(self, host: Host, timeout: float) -> WorldHost:
        sim_host = self.world.hosts[host.id]
        if not self.world.reachable(sim_host, self.server_id):
            raise ProbeTimeout(f"hypervisor of {host.id} silent for {timeout:g}s", host_id=host.id)
        return sim_host

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        self._reach(host, timeout)
        running = sum(1 for vm in self.world.vms.values() if host.id in vm.running_on)
        return HypervisorReport(uri=f"sim://{host.id}", hostname=host.name, running_domains=running)

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        self._reach(host, timeout)
        vm = self.world.vms.get(domain)
        if vm is None:
            return DomainState.MISSING
        return DomainState.RUNNING if host.id in vm.running_on else DomainState.SHUTOFF

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        self._reach(host, timeout)
        vm = self.world.vms.get(domain)
        if vm is None:
            return DomainState.MISSING
        self.world.vm_leaves(vm, host.id)
        return DomainState.SHUTOFF


class WorldPowerDriver(BasePowerDriver):
    """The world's BMCs, as one power driver per protocol name (``ipmi``, ``redfish``).

    A BMC answers while the host has standby power, whatever the host's OS
    does; ``bmc_up = False`` makes it silent. OFF cuts the power at once;
    SOFT is an ACPI request a hung OS ignores.
    """

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        assert config.host_id is not None
        world = self.world
        host = world.hosts[config.host_id]
        if not host.bmc_up:
            raise ProbeTimeout(f"BMC of {config.host_id} silent for {timeout:g}s")
        if operation is PowerOperation.STATUS:
            return PowerResult(operation, True, PowerState.ON if host.powered else PowerState.OFF)
        if operation is PowerOperation.OFF or (operation is PowerOperation.SOFT and not host.hung):
            if host.powered:
                world.power_cut(host, f"BMC {operation}")
        elif operation is PowerOperation.ON:
            if not host.powered:
                world.power_on(host, f"BMC {operation}")
        elif operation in (PowerOperation.CYCLE, PowerOperation.RESET):
            world.power_cut(host, f"BMC {operation}")
            world.power_on(host, f"BMC {operation}")
        return PowerResult(operation, True)


class WorldOrchestrator:
    """The cloud's VM manager over the world's hosts (a ``VmOrchestrator``).

    :attr:`rows` are what the database believes; :attr:`WorldVm.running_on`
    is what really runs. A stop reaches the VM only when its host's agent is
    reachable; a forced stop of an unreachable host only cleans the row up
    (the VM may still run there: that is what fencing is for). Starts go to
    :meth:`World.pick_target`. Every call fails in an orchestrator outage.
    """

    def __init__(self, world: World, vms: Sequence[VmSpec]) -> None:
        self.world = world
        self.rows: dict[str, VmRow] = {
            vm.id: VmRow(VmState.RUNNING, vm.host, vm.host) for vm in vms
        }
        self.specs = {vm.id: vm for vm in vms}

    def _up(self) -> None:
        if self.world.orchestrator_out:
            raise ProbeConnectionError("the VM orchestrator does not answer (orchestrator outage)")

    def _vm(self, vm_id: str) -> Vm:
        row = self.rows.get(vm_id)
        if row is None:
            raise UnknownVmError(vm_id)
        sim_vm = self.world.vms[vm_id]
        home = self.world.hosts[sim_vm.original_host].spec
        return Vm(
            id=vm_id,
            type=self.specs[vm_id].type,
            ha_priority=self.specs[vm_id].priority,
            state=row.state,
            host_id=row.host_id,
            last_host_id=row.last_host_id,
            ha_enabled=sim_vm.ha,
            hypervisor=home.hypervisor,
            updated=row.updated,
            zone=home.zone,
        )

    def find_vm(self, vm_id: str) -> Vm | None:
        self._up()
        return self._vm(vm_id) if vm_id in self.rows else None

    def list_vms_on_host(self, host_id: str) -> list[Vm]:
        self._up()
        return [self._vm(i) for i, row in sorted(self.rows.items()) if row.host_id == host_id]

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        self._up()
        return True

    def _stop(self, vm_id: str, *, force: bool) -> None:
        row = self.rows.get(vm_id)
        if row is None:
            raise UnknownVmError(vm_id)
        if row.state in (VmState.STOPPED, VmState.DESTROYED):
            return  # nothing runs: a Destroyed VM stays Destroyed
        host_id = row.host_id
        sim_vm = self.world.vms[vm_id]
        if host_id is not None:
            sim_host = self.world.hosts[host_id]
            if self.world.reachable(sim_host):
                self.world.vm_leaves(sim_vm, host_id)
            elif not force:
                raise ProbeConnectionError(f"cannot reach host {host_id}", host_id=host_id)
        row.state, row.host_id = VmState.STOPPED, None
        row.last_host_id = host_id or row.last_host_id
        row.updated += 1
        self.world.recorder.emit("vm_state", vm=vm_id, host=host_id, state="Stopped")

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        self._up()
        self._stop(vm.id, force=force)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        self._up()
        row = self.rows.get(vm.id)
        if row is None:
            raise UnknownVmError(vm.id)
        if params.generation <= row.generation:
            raise StaleGenerationError(vm.id, generation=params.generation, highest=row.generation)
        if row.state is not VmState.STOPPED:
            raise ConcurrentOperationError(vm.id, f"VM is {row.state}")
        sim_vm = self.world.vms[vm.id]
        target = self.world.pick_target(
            sim_vm.original_host, avoid=params.avoid_hosts, prefer=params.prefer_host
        )
        if target is None:
            raise InsufficientCapacityError(vm.id, scope="zone", reason=f"{planner} planner")
        row.generation = params.generation
        row.state, row.host_id, row.last_host_id = VmState.RUNNING, target, target
        row.updated += 1
        self.world.start_vm(sim_vm, target)
        return target

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        self._up()
        row = self.rows.get(vm.id)
        if row is None:
            raise UnknownVmError(vm.id)
        if row.state is not VmState.RUNNING or row.host_id != source_host_id:
            raise ConcurrentOperationError(vm.id, f"VM is not Running on {source_host_id}")
        sim_vm = self.world.vms[vm.id]
        target = self.world.pick_target(source_host_id, avoid=frozenset({source_host_id}))
        if target is None:
            raise InsufficientCapacityError(vm.id, scope="zone", reason="migration")
        self.world.vm_leaves(sim_vm, source_host_id)
        row.host_id = row.last_host_id = target
        row.updated += 1
        self.world.start_vm(sim_vm, target)
        return target

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        self._up()
        row = self.rows.get(vm.id)
        if row is not None and row.state is VmState.DESTROYED and not expunge:
            return  # destroying a destroyed VM changes nothing (the port's contract)
        self._stop(vm.id, force=True)
        row = self.rows[vm.id]
        if expunge:
            del self.rows[vm.id]
        else:
            row.state = VmState.DESTROYED
            row.updated += 1


class WorldPools:
    """The pools each host mounts, from its ``pools`` list (a ``StoragePoolDirectory``).

    Pool ``p`` is mounted at ``/mnt/p`` on every host listing it.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.by_id: dict[str, Pool] = {}
        for sim_host in world.hosts.values():
            for pool_id in sim_host.spec.pools:
                self.by_id.setdefault(pool_id, Pool(pool_id, f"/mnt/{pool_id}"))

    def pools_for_host(self, host: Host) -> list[Pool]:
        return self.of(host.id)

    def of(self, host_id: str) -> list[Pool]:
        """The pools host ``host_id`` mounts."""
        return [self.by_id[p] for p in self.world.hosts[host_id].spec.pools]


class WorldVolumes:
    """The disk of each VM, on its first host's first pool (a ``VolumeDirectory``)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def volumes_on_host(self, host: Host) -> dict[str, list[str]]:
        rows = self.world.orchestrator.rows
        found: dict[str, list[str]] = {}
        for vm_id, row in sorted(rows.items()):
            vm = self.world.vms[vm_id]
            if row.host_id == host.id and vm.volume is not None and vm.volume_pool is not None:
                found.setdefault(vm.volume_pool, []).append(vm.volume)
        return found


class WorldStorage:
    """One host's view of the shared pools (the heartbeat's ``StorageAccess``).

    The files live in :attr:`World.files`; a pool in outage, an isolated
    host or a host without power cannot read or write them.
    """

    def __init__(self, world: World, host: WorldHost) -> None:
        self.world = world
        self.host = host

    def _pool_of(self, path: str) -> str:
        for pool_id in self.host.spec.pools:
            if path.startswith(f"/mnt/{pool_id}/"):
                if pool_id in self.world.storage_out:
                    raise OSError(f"pool {pool_id} is not responding")
                if self.host.isolated or not self.host.powered:
                    raise OSError(f"{self.host.spec.id} cannot reach pool {pool_id}")
                return pool_id
        raise FileNotFoundError(path)

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        self._pool_of(path)
        try:
            return self.world.files[path][0][:max_bytes]
        except KeyError:
            raise FileNotFoundError(path) from None

    def mtime(self, path: str) -> float:
        pool_id = self._pool_of(path)
        prefix = f"/mnt/{pool_id}/"
        for vm in self.world.vms.values():
            if vm.volume_pool == pool_id and vm.volume is not None and path == prefix + vm.volume:
                return self.world.volume_mtime(vm)
        try:
            return self.world.files[path][1]
        except KeyError:
            raise FileNotFoundError(path) from None

    def write_atomic(self, path: str, data: bytes) -> None:
        self._pool_of(path)
        self.world.files[path] = (data, self.world.clock.now().timestamp())


class WorldHostShell:
    """Logging in to hosts over SSH (a :class:`~cloudha.ports.HostShell`).

    A host answers while :meth:`World.ssh_reachable`; otherwise the login
    times out. It knows ``true``, ``false``, ``echo`` and ``systemctl restart <unit>``: for the
    agent's unit (:attr:`World.agent_service`) it starts a stopped agent
    (:meth:`World.start_agent`) and exits 0; another unit exits 5 ("not
    found"), another command 127. Every command run is kept in :attr:`runs`.
    """

    def __init__(self, world: World, server_id: str | None = None) -> None:
        self.world = world
        self.server_id = server_id
        self.runs: list[tuple[str, tuple[str, ...]]] = []

    def run(self, host: Host, argv: Sequence[str], *, timeout: float) -> ShellResult:
        sim_host = self.world.hosts[host.id]
        if not self.world.ssh_reachable(sim_host, self.server_id):
            raise ProbeTimeout(f"ssh to {host.id} timed out after {timeout:g} s", host_id=host.id)
        self.runs.append((host.id, tuple(argv)))
        args = list(argv)
        if args in (["true"], ["false"]):
            return ShellResult(0 if args == ["true"] else 1)
        if args and args[0] == "echo":
            return ShellResult(0, " ".join(args[1:]) + "\n")
        if len(args) != 3 or args[0].rsplit("/", 1)[-1] != "systemctl" or args[1] != "restart":
            return ShellResult(127, "", f"sh: {args[0] if args else ''}: command not found")
        unit = args[2].removesuffix(".service")
        if unit != self.world.agent_service:
            return ShellResult(5, "", f"Failed to restart {unit}.service: Unit not found.")
        self.world.start_agent(sim_host)
        return ShellResult(0)


class WorldDirectResources:
    """The server-side resources of directly managed hosts (a ``DirectAgentResource``).

    A host reports (a :class:`~cloudha.ports.PingReport` with the VMs running
    on it) while it is reachable and its agent runs.
    """

    def __init__(self, world: World, server_id: str | None = None) -> None:
        self.world = world
        self.server_id = server_id

    def current_status(self, host: Host) -> PingReport | None:
        sim_host = self.world.hosts[host.id]
        if self.world.reachable(sim_host, self.server_id) and sim_host.agent_running:
            running = frozenset(v.id for v in self.world.vms.values() if host.id in v.running_on)
            return PingReport(host.id, vms=running)
        return None
