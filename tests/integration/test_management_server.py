"""ManagementServer on real threads and the wall clock, over the public fakes.

Three KVM hosts on one pool, with BMCs. The test plays the hosts: live
agents ping, live heartbeat writers stamp the pool. h1 is killed (its agent
stops, its heartbeat goes stale, its BMC reads Off) and its HA VM must run on
another host within a bounded wall time, through the server's own threads:
the monitor, the built investigator chain (storage heartbeat read by the
neighbours), the built fence chain (power fencing through the BMC) and the
HA workers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from cloudha import (
    Answer,
    Command,
    ConfigurationError,
    Host,
    ManagementServer,
    OobmConfig,
    Pool,
    Settings,
    StaticOobmConfigs,
    Status,
    SystemClock,
    Vm,
    VmPowerState,
    VmState,
)
from cloudha.commands import CHECK_ON_HOST, CHECK_VM, PING_TEST
from cloudha.errors import ProbeConnectionError
from cloudha.heartbeat import HeartbeatChecker, HeartbeatTiming, format_heartbeat, heartbeat_path
from cloudha.runtime import PumpState
from cloudha.testing import (
    FakeAgentGateway,
    FakeBmc,
    FakeOrchestratorHost,
    FakePowerDriver,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    InMemoryStoragePools,
    MemoryStorage,
    RecordingAlertSink,
)

HOSTS = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}
POOL = Pool("p1", "/mnt/p1", cluster="c1")
SETTINGS = {
    "ping.interval": 1,
    "time.to.sleep": 1,
    "kvm.heartbeat.update.frequency": 1000,  # milliseconds (agent property)
    "kvm.heartbeat.update.max.tries": 1,
    "kvm.heartbeat.update.retry.sleep": 100,
    "heartbeat.update.timeout": 200,
}
RESTART_WITHIN = 45.0  # wall seconds from the kill


class Hosts:
    """The hosts' side: agents that ping and heartbeat writers, until killed."""

    def __init__(self, clock: SystemClock) -> None:
        self.clock = clock
        self.alive = set(HOSTS)
        self.storage = MemoryStorage(clock)
        self.stop = threading.Event()
        self.server: ManagementServer | None = None
        self.connected: set[str] = set()  # agents with a link to the server
        self.orchestrator: InMemoryOrchestrator | None = None

    def answer(self, host: Host, command: Command) -> Answer:
        if host.id not in self.alive:
            raise ProbeConnectionError(f"agent of {host.id} is gone", host_id=host.id)
        if command.name == CHECK_ON_HOST:
            settings = Settings.from_mapping(SETTINGS)
            report = HeartbeatChecker(
                self.storage, self.clock, HeartbeatTiming.from_settings(settings)
            ).check([POOL], str(command.params["host_ip"]))
            return Answer(True, report.reason, report.to_dict())
        if command.name == PING_TEST:
            target = next((h for h, ip in HOSTS.items() if ip == command.params["ip"]), None)
            return Answer(target in self.alive)
        if command.name == CHECK_VM:
            assert self.orchestrator is not None
            vm = self.orchestrator.find_vm(str(command.params["vm_name"]))
            on = vm is not None and vm.host_id == host.id and vm.state is VmState.RUNNING
            state = VmPowerState.POWER_ON if on else VmPowerState.POWER_OFF
            return Answer(True, data={"power_state": state.value})
        raise ProbeConnectionError(f"{command.name} is not simulated", host_id=host.id)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            server = self.server
            for host_id in sorted(self.alive):
                stamp = format_heartbeat(self.clock.now())
                self.storage.write_atomic(heartbeat_path(POOL.mount_point, HOSTS[host_id]), stamp)
                if server is None:
                    continue
                if host_id in self.connected and server.agents.ping_received(host_id):
                    continue
                if server.agents.agent_connected(host_id, vms=self.running_on(host_id)):
                    self.connected.add(host_id)

    def running_on(self, host_id: str) -> list[str]:
        assert self.orchestrator is not None
        return [vm.id for vm in self.orchestrator.list_vms_on_host(host_id)]


def build(hosts: Hosts, db: Path, **overrides: object) -> ManagementServer:
    clock = hosts.clock
    directory = InMemoryHostDirectory(
        # cloudha's writer arms a watchdog on these hosts: a stale heartbeat proves death.
        Host(
            h,
            cluster="c1",
            private_ip=ip,
            status=Status.UP,
            management_server_id="ms1",
            watchdog=True,
        )
        for h, ip in HOSTS.items()
    )
    orchestrator = InMemoryOrchestrator(
        [FakeOrchestratorHost(h) for h in HOSTS],
        [Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)],
    )
    hosts.orchestrator = orchestrator
    bmcs = FakePowerDriver("fake")
    configs = StaticOobmConfigs()
    for host_id in HOSTS:
        bmcs.add(f"bmc-{host_id}", FakeBmc())
        configs.set(
            host_id, OobmConfig("fake", f"bmc-{host_id}", "admin", "password", host_id=host_id)
        )
    ports: dict[str, object] = {
        "settings": Settings.from_mapping(SETTINGS),
        "clock": clock,
        "directory": directory,
        "gateway": FakeAgentGateway(dict.fromkeys(HOSTS, True), handler=hosts.answer),
        "orchestrator": orchestrator,
        "alerts": RecordingAlertSink(),
        "engine": sa.create_engine(f"sqlite:///{db}"),
        "pools": InMemoryStoragePools([POOL]),
        "oobm_drivers": [bmcs],
        "oobm_configs": configs,
        "discover_plugins": False,
    }
    ports.update(overrides)
    return ManagementServer(**ports)  # type: ignore[arg-type]


def kill_h1_and_wait_for_vm1(server: ManagementServer, hosts: Hosts) -> Vm:
    """h1 stops (agent, writer, answers to pings); vm1 once it runs on another host."""
    killed = time.monotonic()
    hosts.alive.discard("h1")
    server.gateway.healthy["h1"] = None  # type: ignore[attr-defined]
    assert hosts.orchestrator is not None
    hosts.orchestrator.set_host_up("h1", False)
    while time.monotonic() - killed < RESTART_WITHIN:
        vm = hosts.orchestrator.find_vm("vm1")
        assert vm is not None
        if vm.state is VmState.RUNNING and vm.host_id != "h1":
            return vm
        time.sleep(0.2)
    pytest.fail(f"vm1 not restarted within {RESTART_WITHIN}s: {vm}")


def test_a_killed_host_has_its_ha_vm_restarted_elsewhere_on_real_threads(tmp_path: Path) -> None:
    clock = SystemClock()
    hosts = Hosts(clock)
    server = build(hosts, tmp_path / "ha.db")
    writer = threading.Thread(target=hosts.run, name="hosts", daemon=True)
    assert server.oobm.driver_names == ["fake"]
    hosts.server = server
    writer.start()
    server.start()
    try:
        time.sleep(1.5)  # the agents reconnect after the start's grace marking
        assert server.directory.find_host("h1").status is Status.UP  # type: ignore[union-attr]
        vm = kill_h1_and_wait_for_vm1(server, hosts)
        assert vm.host_id in ("h2", "h3")
        h1 = server.directory.find_host("h1")
        assert h1 is not None
        assert h1.status is Status.DOWN
    finally:
        hosts.stop.set()
        writer.join(5)
        started = time.monotonic()
        server.stop(timeout=10)
        assert time.monotonic() - started < 10
    assert all(pump.state is PumpState.STOPPED for pump in server.pumps)


def test_a_hung_host_is_fenced_on_suspicion_and_its_ha_vm_restarted_on_real_threads(
    tmp_path: Path,
) -> None:
    # h1 hangs: its agent and its writer stop, its neighbours cannot ping it, its
    # BMC still reads On. Its writer arms no watchdog here, so its stale heartbeat
    # proves nothing: only the fast path (fence on suspicion) can recover vm1.
    clock = SystemClock()
    hosts = Hosts(clock)
    server = build(hosts, tmp_path / "ha.db")
    directory = server.directory
    assert isinstance(directory, InMemoryHostDirectory)
    h1 = directory.find_host("h1")
    assert h1 is not None
    directory.replace(attrs.evolve(h1, watchdog=False))
    config = server.oobm.config(h1)
    assert config is not None
    bmc = server.oobm.driver_for(h1, config)
    assert isinstance(bmc, FakePowerDriver)
    writer = threading.Thread(target=hosts.run, name="hosts", daemon=True)
    hosts.server = server
    writer.start()
    server.start()
    try:
        time.sleep(1.5)
        kill_h1_and_wait_for_vm1(server, hosts)  # hung: the BMC still reads On
        assert bmc.bmcs["bmc-h1"].power == "off"
        fenced = [
            e
            for e in server.evidence.records(kind="suspicion", host="h1")  # type: ignore[attr-defined]
            if e.details["qualifies"]
        ]
        assert [e.details["outcome"] for e in fenced] == ["FENCED"]
        after = directory.find_host("h1")
        assert after is not None
        assert after.status is Status.DOWN
    finally:
        hosts.stop.set()
        writer.join(5)
        server.stop(timeout=10)


def test_a_broken_port_is_rejected_at_construction(tmp_path: Path) -> None:
    hosts = Hosts(SystemClock())

    class NoStart:
        def find_vm(self, vm_id: str) -> Vm | None:
            return None

    with pytest.raises(ConfigurationError, match=r"orchestrator .*advance_start"):
        build(hosts, tmp_path / "ha.db", orchestrator=NoStart())
