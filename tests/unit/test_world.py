"""The World and its port fakes: the port contracts, and a ManagementServer built on one.

The simulator runs on exactly these fakes; the last tests build a
:class:`cloudha.ManagementServer` on a World by hand, as an embedder testing
a plugin would, without the simulator's event queue.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import sqlalchemy as sa

from cloudha import ManagementServer, Settings, Status
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.evidence import Recorder
from cloudha.fencing.chain import InlineRunner
from cloudha.heartbeat import HeartbeatTiming, format_heartbeat, heartbeat_path
from cloudha.model import Host, HypervisorType, ResourceState
from cloudha.oobm.power import OobmConfig, PowerOperation, PowerState
from cloudha.ports import (
    AgentGateway,
    DirectAgentResource,
    HostDirectory,
    HostShell,
    HypervisorControl,
    StoragePoolDirectory,
    VmOrchestrator,
)
from cloudha.testing import (
    EventTimeline,
    FakeClock,
    LoopRunner,
    RecordingAlertSink,
    World,
    WorldAgentGateway,
    WorldDirectResources,
    WorldHostDirectory,
    WorldHostShell,
    WorldHypervisors,
    WorldOrchestrator,
    WorldPowerDriver,
    check_agent_gateway,
    check_host_directory,
    check_host_shell,
    check_vm_orchestrator,
)
from cloudha.testing.scenario import HostSpec, VmSpec


def small_world(capacity: int | None = None) -> World:
    clock = FakeClock(0.0)
    return World(
        [HostSpec(f"h{i}", "c1", pools=("p1",), oobm="ipmi", capacity=capacity) for i in (1, 2, 3)],
        [VmSpec("vm1", "h1", ha=True)],
        clock=clock,
        timing=HeartbeatTiming.from_settings(Settings()),
    )


def host(world: World, host_id: str) -> Host:
    found = world.directory.find_host(host_id)
    assert found is not None
    return found


# -- the port contracts ------------------------------------------------------------------


def test_world_ports_implement_their_protocols() -> None:
    world = small_world()
    ports = world.ports()
    assert isinstance(ports["gateway"], AgentGateway)
    assert isinstance(ports["directory"], HostDirectory)
    assert isinstance(ports["orchestrator"], VmOrchestrator)
    assert isinstance(ports["hypervisor"], HypervisorControl)
    assert isinstance(ports["pools"], StoragePoolDirectory)
    assert isinstance(ports["direct_resources"], DirectAgentResource)
    assert [d.name for d in ports["oobm_drivers"]] == ["ipmi", "redfish"]
    assert isinstance(ports["shell"], HostShell)


def test_host_shell_contract_with_a_hung_host() -> None:
    world = small_world()
    world.hosts["h2"].hung = True
    check_host_shell(WorldHostShell(world), host(world, "h1"), host(world, "h2"))


def test_systemctl_restart_over_ssh_starts_a_stopped_agent_only_where_ssh_reaches() -> None:
    world = small_world()
    started: list[str] = []
    world.on_agent_start = lambda h: started.append(h.spec.id)
    shell = WorldHostShell(world)
    restart = ["systemctl", "restart", "cloudstack-agent"]
    for host_id in ("h1", "h2", "h3"):
        world.hosts[host_id].agent_running = False
    world.hosts["h2"].mgmt_link = False  # SSH takes the agent's network
    world.hosts["h3"].booting = True  # sshd is not up yet
    assert shell.run(host(world, "h1"), restart, timeout=5).exit_status == 0
    for host_id in ("h2", "h3"):
        with pytest.raises(ProbeTimeout):
            shell.run(host(world, host_id), restart, timeout=5)
    assert started == ["h1"]
    assert world.hosts["h1"].agent_running
    assert not world.hosts["h2"].agent_running
    other = shell.run(host(world, "h1"), ["systemctl", "restart", "nginx"], timeout=5)
    assert other.exit_status == 5
    assert shell.run(host(world, "h1"), ["reboot"], timeout=5).exit_status == 127
    assert started == ["h1"]  # a running agent is not started twice
    assert shell.run(host(world, "h1"), restart, timeout=5).exit_status == 0
    assert started == ["h1"]


def test_agent_gateway_contract_with_a_powered_off_host() -> None:
    world = small_world()
    world.power_off(world.hosts["h2"])
    check_agent_gateway(WorldAgentGateway(world), host(world, "h1"), host(world, "h2"))


def test_agent_gateway_contract_with_a_stopped_agent_and_a_cut_link() -> None:
    world = small_world()
    world.hosts["h2"].agent_running = False
    world.hosts["h3"].mgmt_link = False
    gateway = WorldAgentGateway(world)
    check_agent_gateway(gateway, host(world, "h1"), host(world, "h2"))
    check_agent_gateway(gateway, host(world, "h1"), host(world, "h3"))
    with pytest.raises(ProbeConnectionError, match="refused"):
        gateway.check_health(host(world, "h2"), timeout=1.0)
    with pytest.raises(ProbeTimeout):
        gateway.check_health(host(world, "h3"), timeout=1.0)


def test_host_directory_contract_and_outage() -> None:
    world = small_world()
    directory = WorldHostDirectory(world)
    check_host_directory(directory, "h1")
    world.orchestrator_out = True
    with pytest.raises(ProbeConnectionError, match="orchestrator outage"):
        directory.find_host("h1")
    with pytest.raises(ProbeConnectionError):
        directory.list_hosts()


def test_vm_orchestrator_contract() -> None:
    def make() -> tuple[WorldOrchestrator, str, list[str]]:
        world = small_world()
        return world.orchestrator, "vm1", ["h1", "h2", "h3"]

    check_vm_orchestrator(make)


def test_the_orchestrator_fails_in_an_outage() -> None:
    world = small_world()
    world.orchestrator_out = True
    with pytest.raises(ProbeConnectionError, match="orchestrator outage"):
        world.orchestrator.find_vm("vm1")


def test_power_driver_switches_the_world_and_the_other_ports_see_it() -> None:
    world = small_world()
    driver = WorldPowerDriver(world, "ipmi")
    config = OobmConfig("ipmi", "bmc-h1", "admin", "simulated", host_id="h1")
    direct = WorldDirectResources(world)
    report = direct.current_status(host(world, "h1"))
    assert report is not None
    assert report.vms == frozenset({"vm1"})
    assert driver.execute(config, PowerOperation.STATUS, timeout=5.0).state is PowerState.ON
    driver.execute(config, PowerOperation.OFF, timeout=5.0)
    assert not world.hosts["h1"].powered
    assert not world.vms["vm1"].running_on
    assert direct.current_status(host(world, "h1")) is None
    with pytest.raises(ProbeTimeout, match="silent"):
        WorldHypervisors(world).probe_host(host(world, "h1"), timeout=1.0)
    driver.execute(config, PowerOperation.ON, timeout=5.0)
    assert world.hosts["h1"].powered
    assert world.hosts["h1"].agent_running  # no on_power_on: the agent runs at once
    world.hosts["h1"].bmc_up = False
    with pytest.raises(ProbeTimeout, match="BMC of h1 silent"):
        driver.execute(config, PowerOperation.STATUS, timeout=5.0)


def test_power_on_hands_the_boot_to_the_callback() -> None:
    booted: list[str] = []
    clock = FakeClock(0.0)
    world = World(
        [HostSpec("h1", "c1")],
        [],
        clock=clock,
        on_power_on=lambda h: booted.append(h.spec.id),
    )
    world.power_cut(world.hosts["h1"], "test")
    world.power_on(world.hosts["h1"], "test")
    assert booted == ["h1"]
    assert world.hosts["h1"].powered
    assert not world.hosts["h1"].agent_running


def test_dead_hardware_stays_off_and_a_reset_clears_a_hang() -> None:
    world = small_world()
    driver = WorldPowerDriver(world, "ipmi")
    config = OobmConfig("ipmi", "bmc-h1", "admin", "simulated", host_id="h1")
    h1 = world.hosts["h1"]
    h1.broken = True  # what host_crash marks until host_recover
    world.power_off(h1)
    for operation in (PowerOperation.ON, PowerOperation.RESET, PowerOperation.CYCLE):
        assert driver.execute(config, operation, timeout=5.0).success  # the BMC accepts
        assert not h1.powered
        assert driver.execute(config, PowerOperation.STATUS, timeout=5.0).state is PowerState.OFF
    h1.broken = False  # repaired
    driver.execute(config, PowerOperation.ON, timeout=5.0)
    assert h1.powered
    # A hung OS keeps the power on; a RESET clears the hang (the host boots anew).
    h2 = world.hosts["h2"]
    h2.hung = True
    of_h2 = OobmConfig("ipmi", "bmc-h2", "admin", "simulated", host_id="h2")
    driver.execute(of_h2, PowerOperation.RESET, timeout=5.0)
    assert h2.powered
    assert not h2.hung


def test_storage_is_cut_by_a_pool_outage_and_by_isolation() -> None:
    world = small_world()
    path = heartbeat_path("/mnt/p1", world.hosts["h1"].ip)
    world.storage["h1"].write_atomic(path, b"stamp")
    assert world.storage["h2"].read_bytes(path, max_bytes=64) == b"stamp"
    world.hosts["h2"].isolated = True
    with pytest.raises(OSError, match="cannot reach pool p1"):
        world.storage["h2"].read_bytes(path, max_bytes=64)
    world.storage_out.add("p1")
    with pytest.raises(OSError, match="not responding"):
        world.storage["h3"].mtime(path)
    with pytest.raises(FileNotFoundError):
        world.storage["h1"].read_bytes("/elsewhere/x", max_bytes=64)


def test_pick_target_takes_the_least_loaded_enabled_reachable_host_with_room() -> None:
    world = small_world(capacity=2)
    assert world.pick_target("h1") == "h2"  # h2 and h3 empty: the first id
    world.start_vm(world.vms["vm1"], "h2")
    assert world.vms["vm1"].running_on == {"h1", "h2"}
    assert world.double_runs == {"vm1"}
    assert world.pick_target("h1") == "h3"  # least loaded
    world.hosts["h3"].agent_running = False
    others = frozenset({"h1", "h2"})
    assert world.pick_target("h1", avoid=others) is None  # avoided, or no agent running
    world.hosts["h3"].agent_running = True
    assert world.pick_target("h1", avoid=others) == "h3"
    world.hosts["h3"].mgmt_link = False
    assert world.pick_target("h1", avoid=others) is None  # unreachable
    world.hosts["h3"].mgmt_link = True
    row = host(world, "h3")
    world.directory.replace(attrs.evolve(row, resource_state=ResourceState.DISABLED))
    assert world.pick_target("h1", avoid=others) is None  # Disabled
    world.directory.replace(attrs.evolve(row, resource_state=ResourceState.ENABLED))
    world.start_vm(world.vms["vm1"], "h3")
    world.start_vm(world.vms["vm1"], "h3")  # the same VM twice is one VM: h3 runs 1 of 2
    assert world.pick_target("h1", avoid=others) == "h3"
    world.vms["vm1"].running_on.discard("h3")
    for _ in range(2):
        other = f"x{len(world.vms)}"
        world.vms[other] = attrs.evolve(world.vms["vm1"], id=other, running_on={"h3"})
    assert world.pick_target("h1", avoid=others) is None  # h3 full (capacity 2)


def test_a_booting_host_is_not_alive() -> None:
    world = small_world()
    h1 = world.hosts["h1"]
    assert world.alive_with_storage(h1)
    h1.booting = True
    assert not world.alive_with_storage(h1)


# -- a ManagementServer on a World, without the simulator -----------------------------------


class _Driver:
    """Runs a server's loops on the fake clock, with the world's hosts doing their part.

    Every second: each powered host writes its heartbeat stamp on its pools
    (as cloudha's writer would), each reachable agent pings (or reconnects
    with its VM report), and every loop that is due ticks (a LoopRunner).
    """

    def __init__(
        self, world: World, server: ManagementServer, clock: FakeClock, *, direct: bool = False
    ) -> None:
        self.world, self.server, self.clock = world, server, clock
        self.direct = direct
        """Leave directly managed hosts to the server's own pings (its DirectPings loop)."""
        self.runner = LoopRunner(server, clock, each_step=self._hosts)

    def _hosts(self, _now: float) -> None:
        world, agents = self.world, self.server.agents
        for h in world.hosts.values():
            if not h.powered:
                continue
            for pool in world.pools.of(h.spec.id):
                stamp = format_heartbeat(self.clock.now())
                world.storage[h.spec.id].write_atomic(heartbeat_path(pool.mount_point, h.ip), stamp)
            if self.direct and h.spec.hypervisor.has_direct_agent:
                continue
            if h.agent_running and world.reachable(h) and not agents.ping_received(h.spec.id):
                running = sorted(v.id for v in world.vms.values() if h.spec.id in v.running_on)
                agents.agent_connected(h.spec.id, vms=running)

    def run(self, seconds: float) -> None:
        self.runner.run_for(seconds)


def _server_on(world: World, clock: FakeClock, timeline: EventTimeline) -> ManagementServer:
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    return ManagementServer(
        settings=Settings.from_mapping({"ping.interval": 10}),
        clock=clock,
        alerts=RecordingAlertSink(),
        engine=engine,
        evidence=timeline,
        fence_runner=InlineRunner(clock),
        discover_plugins=False,
        **world.ports(),
    )


def _kinds(timeline: EventTimeline, kind: str, host_id: str) -> Sequence[str]:
    return [str(e.get("to")) for e in timeline.events if e["kind"] == kind and e["host"] == host_id]


def test_a_server_built_on_a_world_restarts_a_dead_hosts_ha_vm_elsewhere() -> None:
    clock = FakeClock(0.0)
    timeline = EventTimeline()
    world = World(
        [HostSpec(f"h{i}", "c1", pools=("p1",), watchdog=True) for i in (1, 2, 3)],
        [VmSpec("vm1", "h1", ha=True), VmSpec("vm2", "h1"), VmSpec("vm3", "h2", ha=True)],
        clock=clock,
        recorder=Recorder(timeline, clock, "world"),
    )
    server = _server_on(world, clock, timeline)
    server.recover(connected=list(world.hosts))
    driver = _Driver(world, server, clock)
    driver.run(120)  # a healthy cloud: nothing happens
    assert [host(world, h).status for h in ("h1", "h2", "h3")] == [Status.UP] * 3
    assert world.vms["vm1"].running_on == {"h1"}

    world.power_off(world.hosts["h1"])  # h1 dies: its VMs, agent and heartbeat stop
    assert not world.vms["vm1"].running_on
    driver.run(1200)

    assert host(world, "h1").status is Status.DOWN
    assert "Down" in _kinds(timeline, "host_status", "h1")
    (target,) = world.vms["vm1"].running_on  # the HA VM runs again, once ...
    assert target in {"h2", "h3"}  # ... on another host
    assert world.orchestrator.rows["vm1"].host_id == target
    assert not world.vms["vm2"].running_on  # not HA: left stopped
    assert world.vms["vm3"].running_on == {"h2"}  # untouched
    assert world.double_runs == set()


def test_a_server_pings_its_directly_managed_hosts_and_restarts_a_dead_ones_ha_vm() -> None:
    # XenServer hosts have no agent that pings: the server's own DirectPings loop
    # probes them through the DirectAgentResource port (WorldDirectResources here).
    clock = FakeClock(0.0)
    timeline = EventTimeline()
    world = World(
        [
            HostSpec(f"x{i}", "c1", hypervisor=HypervisorType.XEN_SERVER, oobm="ipmi")
            for i in (1, 2, 3)
        ],
        [VmSpec("vm1", "x1", ha=True), VmSpec("vm2", "x2", ha=True)],
        clock=clock,
        recorder=Recorder(timeline, clock, "world"),
    )
    server = _server_on(world, clock, timeline)
    server.recover(connected=list(world.hosts))
    driver = _Driver(world, server, clock, direct=True)
    driver.run(120)
    assert [host(world, h).status for h in ("x1", "x2", "x3")] == [Status.UP] * 3
    assert set(server.direct_pings.tasks) == {"x1", "x2", "x3"}
    assert not [e for e in timeline.events if e["kind"] == "behind_on_ping"]

    world.power_off(world.hosts["x1"])  # its direct probe now fails
    driver.run(600)
    assert host(world, "x1").status is Status.DOWN
    (target,) = world.vms["vm1"].running_on
    assert target in {"x2", "x3"}
    assert world.vms["vm2"].running_on == {"x2"}
    assert world.double_runs == set()
