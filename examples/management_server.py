"""A ManagementServer over the public fakes: three KVM hosts, one is killed.

Run: ``python examples/management_server.py``. The hosts' side (agents that
ping, heartbeat writers on the shared pool, BMCs) is played by this script;
the server side is ``cloudha.ManagementServer`` on real threads. Prints where
the killed host's HA VM runs again, and how long it took.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cloudha import (
    Answer,
    Command,
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
from cloudha.commands import CHECK_ON_HOST, CHECK_VM
from cloudha.errors import ProbeConnectionError
from cloudha.heartbeat import HeartbeatChecker, HeartbeatTiming, format_heartbeat, heartbeat_path
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
SETTINGS = Settings.from_mapping(
    {
        "ping.interval": 1,
        "time.to.sleep": 1,
        "kvm.heartbeat.update.frequency": 1000,  # milliseconds (agent property)
        "kvm.heartbeat.update.max.tries": 1,
        "kvm.heartbeat.update.retry.sleep": 100,
        "heartbeat.update.timeout": 200,
    }
)


def main() -> None:
    clock = SystemClock()
    alive = set(HOSTS)
    storage = MemoryStorage(clock)
    orchestrator = InMemoryOrchestrator(
        [FakeOrchestratorHost(h) for h in HOSTS],
        [Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)],
    )

    def agent(host: Host, command: Command) -> Answer:  # what each host's agent answers
        if host.id not in alive:
            raise ProbeConnectionError(f"agent of {host.id} is gone", host_id=host.id)
        if command.name == CHECK_ON_HOST:
            checker = HeartbeatChecker(storage, clock, HeartbeatTiming.from_settings(SETTINGS))
            report = checker.check([POOL], str(command.params["host_ip"]))
            return Answer(True, report.reason, report.to_dict())
        if command.name == CHECK_VM:
            vm = orchestrator.find_vm(str(command.params["vm_name"]))
            on = vm is not None and vm.host_id == host.id and vm.state is VmState.RUNNING
            power = VmPowerState.POWER_ON if on else VmPowerState.POWER_OFF
            return Answer(True, data={"power_state": power.value})
        raise ProbeConnectionError(f"{command.name} is not implemented here", host_id=host.id)

    bmcs = FakePowerDriver("fake")
    configs = StaticOobmConfigs()
    for host_id in HOSTS:
        bmcs.add(f"bmc-{host_id}", FakeBmc())
        configs.set(host_id, OobmConfig("fake", f"bmc-{host_id}", "admin", "password"))
    gateway = FakeAgentGateway(dict.fromkeys(HOSTS, True), handler=agent)

    # The wiring an embedder writes: settings, clock, ports.
    server = ManagementServer(
        settings=SETTINGS,
        clock=clock,
        directory=InMemoryHostDirectory(
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
        ),
        gateway=gateway,
        orchestrator=orchestrator,
        alerts=RecordingAlertSink(),
        engine=sa.create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'ha.db'}"),
        pools=InMemoryStoragePools([POOL]),
        oobm_drivers=[bmcs],
        oobm_configs=configs,
    )

    stop = threading.Event()
    connected: set[str] = set()

    def hosts() -> None:  # agents ping and writers stamp the pool, while alive
        while not stop.wait(0.2):
            for host_id in sorted(alive):
                path = heartbeat_path(POOL.mount_point, HOSTS[host_id])
                storage.write_atomic(path, format_heartbeat(clock.now()))
                if host_id in connected and server.agents.ping_received(host_id):
                    continue
                running = [vm.id for vm in orchestrator.list_vms_on_host(host_id)]
                if server.agents.agent_connected(host_id, vms=running):
                    connected.add(host_id)

    threading.Thread(target=hosts, name="hosts", daemon=True).start()
    server.start()
    try:
        time.sleep(2)
        killed = time.monotonic()
        alive.discard("h1")
        gateway.healthy["h1"] = None
        orchestrator.set_host_up("h1", False)
        print("h1 killed")
        while time.monotonic() - killed < 60:
            vm = orchestrator.find_vm("vm1")
            if vm is not None and vm.state is VmState.RUNNING and vm.host_id != "h1":
                print(f"vm1 runs on {vm.host_id}, {time.monotonic() - killed:.1f}s after the kill")
                break
            time.sleep(0.2)
        else:
            print("vm1 was not restarted within 60s")
    finally:
        stop.set()
        server.stop(timeout=10)


if __name__ == "__main__":
    main()
