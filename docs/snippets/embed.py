"""The tutorial "Embed cloudha in your orchestrator", as one program.

The page (docs/tutorial/embed.md) includes this file section by section, and
tests/unit/test_docs_snippets.py runs it: ``python docs/snippets/embed.py``.

``Cloud`` stands in for your orchestrator's database and its hosts; every
``Lab*`` class is a port implemented over it, the way you implement them over
yours. Nothing here comes from ``cloudha.testing`` except in the last two
sections, which test the ports and the wiring.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

import attrs
import sqlalchemy as sa

from cloudha import (
    Alert,
    Answer,
    BasePowerDriver,
    Command,
    EvidenceLog,
    EvidenceSink,
    Host,
    ManagementServer,
    OobmConfig,
    PowerOperation,
    PowerState,
    ProbeConnectionError,
    ProbeTimeout,
    Settings,
    StaticOobmConfigs,
    Status,
    StatusChange,
    SystemClock,
    Vm,
    VmPowerState,
    VmState,
)
from cloudha.clock import Clock
from cloudha.commands import CHECK_VM, PING_TEST
from cloudha.fencing.chain import FenceRunner, InlineRunner
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.oobm.power import PowerResult
from cloudha.ports import KEEP

# --8<-- [start:cloud]


class Cloud:
    """Your orchestrator's database, and (for this lab) the hosts themselves.

    ``hosts`` and ``vms`` are the rows cloudha reads through the ports;
    ``powered`` is what each host's BMC would report, and ``agents`` the hosts
    whose agent process runs.
    """

    def __init__(self, host_ids: Iterable[str], capacity: int = 4) -> None:
        self.lock = threading.RLock()
        self.hosts = {
            h: Host(h, cluster="c1", private_ip=f"10.0.0.{i}", status=Status.UP)
            for i, h in enumerate(host_ids, 1)
        }
        self.vms: dict[str, Vm] = {}
        self.capacity = capacity
        self.powered = set(self.hosts)
        self.agents = set(self.hosts)
        self.generations: dict[str, int] = {}  # the highest fencing token started, per VM

    def add_vm(self, vm_id: str, host_id: str, *, ha: bool = True) -> None:
        with self.lock:
            self.vms[vm_id] = Vm(vm_id, host_id=host_id, last_host_id=host_id, ha_enabled=ha)

    def crash(self, host_id: str) -> None:
        """The host loses its power: its agent and VMs die with it (the rows stay)."""
        with self.lock:
            self.powered.discard(host_id)
            self.agents.discard(host_id)


# --8<-- [end:cloud]
# --8<-- [start:directory]


class LabHostDirectory:
    """``HostDirectory``: the host table, with an optimistic status update."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def find_host(self, host_id: str) -> Host | None:
        with self.cloud.lock:
            return self.cloud.hosts.get(host_id)

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        with self.cloud.lock:
            rows = sorted(self.cloud.hosts.values(), key=lambda h: h.id)
        return [
            h
            for h in rows
            if (cluster is None or h.cluster == cluster)
            and (pod is None or h.pod == pod)
            and (zone is None or h.zone == zone)
            and (management_server_id is None or h.management_server_id == management_server_id)
        ]

    def update_status(self, change: StatusChange) -> bool:
        # In SQL: UPDATE host SET status=..., update_count=update_count+1
        #         WHERE id=? AND status=? AND update_count=?
        with self.cloud.lock:
            row = self.cloud.hosts.get(change.host_id)
            if row is None or row.status is not change.from_status:
                return False
            if row.update_count != change.expected_update_count:
                return False
            new = attrs.evolve(row, status=change.to_status, update_count=row.update_count + 1)
            if change.last_ping is not KEEP:
                new = attrs.evolve(new, last_ping=change.last_ping)
            if change.management_server_id is not KEEP:
                new = attrs.evolve(new, management_server_id=change.management_server_id)
            if change.disconnected_on is not KEEP:
                new = attrs.evolve(new, disconnected_on=change.disconnected_on)
            if change.owner_epoch is not KEEP:  # several management servers (docs/cluster.md)
                new = attrs.evolve(new, owner_epoch=change.owner_epoch)
            self.cloud.hosts[row.id] = new
            return True


# --8<-- [end:directory]
# --8<-- [start:gateway]


class LabAgents:
    """``AgentGateway``: commands to the agents, here answered by the lab's hosts."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def _reach(self, host: Host, timeout: float) -> None:
        with self.cloud.lock:
            if host.id not in self.cloud.powered:
                raise ProbeTimeout(f"no answer from {host.id} within {timeout:g}s", host_id=host.id)
            if host.id not in self.cloud.agents:
                raise ProbeConnectionError(f"agent of {host.id} refused", host_id=host.id)

    def check_health(self, host: Host, *, timeout: float) -> bool:
        self._reach(host, timeout)
        return True

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        self._reach(host, timeout)
        if command.name == CHECK_VM:  # is this VM running on you?
            with self.cloud.lock:
                vm = self.cloud.vms.get(str(command.params["vm_name"]))
            running = vm is not None and vm.host_id == host.id and vm.state is VmState.RUNNING
            power = VmPowerState.POWER_ON if running else VmPowerState.POWER_OFF
            return Answer(True, data={"power_state": power.value})
        if command.name == PING_TEST:  # can you ping this address?
            with self.cloud.lock:
                up = [self.cloud.hosts[h].private_ip for h in self.cloud.powered]
            return Answer(command.params["ip"] in up)
        # A command this agent cannot run is "no answer", never a negative one.
        return Answer(False, "not supported here", {"supported": False})


# --8<-- [end:gateway]
# --8<-- [start:orchestrator]


class LabVmManager:
    """``VmOrchestrator``: find, stop, start, migrate and destroy VMs."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def _row(self, vm_id: str) -> Vm:
        row = self.cloud.vms.get(vm_id)
        if row is None:
            raise UnknownVmError(vm_id)
        return row

    def _save(self, vm: Vm, state: VmState, host_id: str | None, last: str | None) -> None:
        # Every change of a VM bumps its counter: that is how HA tells its own
        # changes from somebody else's.
        self.cloud.vms[vm.id] = attrs.evolve(
            vm, state=state, host_id=host_id, last_host_id=last, updated=vm.updated + 1
        )

    def _targets(self, exclude: Iterable[str], tag: str | None) -> list[str]:
        load = dict.fromkeys(self.cloud.hosts, 0)
        for v in self.cloud.vms.values():
            if v.host_id in load:
                load[v.host_id] += 1
        return sorted(
            (
                h
                for h, row in self.cloud.hosts.items()
                if h not in exclude
                and row.status is Status.UP
                and h in self.cloud.powered
                and load[h] < self.cloud.capacity
                and tag is None  # the lab's hosts carry no tags
            ),
            key=lambda h: (load[h], h),
        )

    def find_vm(self, vm_id: str) -> Vm | None:
        with self.cloud.lock:
            return self.cloud.vms.get(vm_id)

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        with self.cloud.lock:
            return sorted(
                (v for v in self.cloud.vms.values() if v.host_id == host_id), key=lambda v: v.id
            )

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        with self.cloud.lock:
            row = self._row(vm.id)
            if row.state in (VmState.STOPPED, VmState.DESTROYED):
                return
            self._save(row, VmState.STOPPED, None, row.host_id)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        with self.cloud.lock:
            row = self._row(vm.id)
            highest = self.cloud.generations.get(vm.id, 0)
            if params.generation <= highest:  # a late or duplicate worker: refuse first
                raise StaleGenerationError(vm.id, generation=params.generation, highest=highest)
            if row.state is not VmState.STOPPED:
                raise ConcurrentOperationError(vm.id, f"VM is {row.state}")
            targets = self._targets(params.avoid_hosts, params.ha_tag)
            if not targets:
                raise InsufficientCapacityError(vm.id, reason="no Up host with room")
            host = params.prefer_host if params.prefer_host in targets else targets[0]
            self.cloud.generations[vm.id] = params.generation
            self._save(row, VmState.RUNNING, host, host)
            return host

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        return True  # every disk of the lab is on shared storage

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        with self.cloud.lock:
            row = self._row(vm.id)
            if row.state is not VmState.RUNNING or row.host_id != source_host_id:
                raise ConcurrentOperationError(vm.id, f"not running on {source_host_id}")
            targets = self._targets({source_host_id}, None)
            if not targets:
                raise InsufficientCapacityError(vm.id, reason="no other host has room")
            self._save(row, VmState.RUNNING, targets[0], targets[0])
            return targets[0]

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        with self.cloud.lock:
            row = self._row(vm.id)
            if expunge:
                del self.cloud.vms[vm.id]
            elif row.state is not VmState.DESTROYED:
                self._save(row, VmState.DESTROYED, None, row.host_id)


# --8<-- [end:orchestrator]
# --8<-- [start:alerts]


class LabAlerts:
    """``AlertSink``: operator alerts (mail, chat, your alert table)."""

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)  # must not raise: log delivery problems instead


# --8<-- [end:alerts]
# --8<-- [start:bmc]


class LabPowerDriver(BasePowerDriver):
    """A power driver for the lab's BMCs (yours speaks IPMI or Redfish: cloudha has both)."""

    name = "lab"

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        host_id = config.address.removeprefix("bmc-")
        with self.cloud.lock:
            if operation is PowerOperation.STATUS:
                on = host_id in self.cloud.powered
                return PowerResult(operation, True, PowerState.ON if on else PowerState.OFF)
            if operation is PowerOperation.OFF:
                self.cloud.crash(host_id)  # off at once: agent and VMs die with it
                return PowerResult(operation, True)
        return PowerResult(operation, False, message=f"{operation} is not wired in the lab")


def bmcs_of(cloud: Cloud) -> StaticOobmConfigs:
    """Each host's BMC address and credentials (from your inventory; never logged)."""
    configs = StaticOobmConfigs()
    for host_id in cloud.hosts:
        configs.set(host_id, OobmConfig("lab", f"bmc-{host_id}", "admin", "s3cret"))
    return configs


# --8<-- [end:bmc]
# --8<-- [start:server]


def build_server(
    cloud: Cloud,
    clock: Clock,
    engine: sa.Engine,
    *,
    evidence: EvidenceSink | None = None,
    fence_runner: FenceRunner | None = None,
) -> ManagementServer:
    """One management server over the lab's ports."""
    return ManagementServer(
        settings=Settings.from_mapping({"ping.interval": 10}),  # CloudStack key names
        clock=clock,
        directory=LabHostDirectory(cloud),
        gateway=LabAgents(cloud),
        orchestrator=LabVmManager(cloud),
        alerts=LabAlerts(),
        engine=engine,  # the HA work queue (op_ha_work) and Host-HA's table
        oobm_drivers=[LabPowerDriver(cloud)],
        oobm_configs=bmcs_of(cloud),
        server_id="ms1",
        evidence=evidence,  # None: an in-memory EvidenceLog
        fence_runner=fence_runner,  # None: each fencer call on a thread, bounded in time
    )


def memory_database() -> sa.Engine:
    """A throwaway SQLite database shared by every thread (tests, this lab)."""
    return sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )


# --8<-- [end:server]
# --8<-- [start:production]


def run_for_a_moment(cloud: Cloud, seconds: float) -> str:
    """Start a server on real threads, let the agents talk to it, stop it."""
    # Production: sa.create_engine("sqlite:////var/lib/myorch/ha.db"), or PostgreSQL
    # ("postgresql+psycopg://cloudha@db/cloudha") for several management servers.
    server = build_server(cloud, SystemClock(), memory_database())
    server.start()  # recovers from the directory and the queue, then runs every loop
    try:
        # Your connection layer: each agent that connects, with the VMs it runs ...
        for host_id in sorted(cloud.agents):
            running = [vm.id for vm in LabVmManager(cloud).list_vms_on_host(host_id)]
            server.agents.agent_connected(host_id, vms=running)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for host_id in sorted(cloud.agents):  # ... and each ping it sends
                server.agents.ping_received(host_id)
            time.sleep(0.1)
        # A connection that closes: server.agents.agent_link_closed(host_id).
    finally:
        server.stop(timeout=10)  # bounded; unfinished HA works are handed back
    return f"{len(server.loops())} loops ran: {', '.join(loop.name for loop in server.loops())}"


# --8<-- [end:production]
# --8<-- [start:contracts]


def check_my_ports() -> None:
    """cloudha.testing's contract checkers, on the lab's ports."""
    from cloudha.testing import check_agent_gateway, check_host_directory, check_vm_orchestrator

    cloud = Cloud(["h1", "h2"])
    cloud.crash("h2")
    check_host_directory(LabHostDirectory(cloud), "h1")
    check_agent_gateway(LabAgents(cloud), live=cloud.hosts["h1"], dead=cloud.hosts["h2"])

    def fresh() -> tuple[LabVmManager, str, list[str]]:
        lab = Cloud(["h1", "h2", "h3"])
        lab.add_vm("vm1", "h1")
        return LabVmManager(lab), "vm1", ["h1", "h2", "h3"]

    check_vm_orchestrator(fresh)


# --8<-- [end:contracts]
# --8<-- [start:failover]


def fail_over_on_a_fake_clock() -> str:
    """Crash a host on virtual time and watch its HA VM come back elsewhere."""
    from cloudha.testing import FakeClock

    clock = FakeClock(0.0)
    cloud = Cloud(["h1", "h2", "h3"])
    cloud.add_vm("vm1", "h1")
    cloud.add_vm("vm2", "h1", ha=False)
    evidence = EvidenceLog()
    server = build_server(
        cloud, clock, memory_database(), evidence=evidence, fence_runner=InlineRunner(clock)
    )
    server.recover(connected=cloud.agents)  # what start() does first
    loops = server.loops()
    due = dict.fromkeys((loop.name for loop in loops), 0.0)

    def wake() -> None:  # new HA work wakes the workers, as start() wires it
        due.update({loop.name: clock.monotonic() for loop in loops if loop.wake_on_work})

    server.on_work_added = wake

    def run(seconds: float) -> None:
        end = clock.monotonic() + seconds
        while clock.monotonic() < end:
            for host_id in sorted(cloud.agents):  # the hosts' side: agents ping
                if not server.agents.ping_received(host_id):
                    running = [v.id for v in LabVmManager(cloud).list_vms_on_host(host_id)]
                    server.agents.agent_connected(host_id, vms=running)
            for loop in loops:  # the server's side: every loop that is due
                if due[loop.name] <= clock.monotonic():
                    due[loop.name] = clock.monotonic() + loop.tick()
            clock.advance(1.0)

    run(60)  # a healthy cloud: nothing happens
    assert cloud.hosts["h1"].status is Status.UP
    cloud.crash("h1")
    crashed = clock.monotonic()
    run(120)

    h1, vm1, vm2 = cloud.hosts["h1"], cloud.vms["vm1"], cloud.vms["vm2"]
    assert h1.status is Status.DOWN  # its BMC read the power Off: proof of death
    assert vm1.state is VmState.RUNNING
    assert vm1.host_id in {"h2", "h3"}  # restarted elsewhere, once
    assert vm2.state is VmState.STOPPED  # not HA-enabled: left stopped
    decisions = [e for e in evidence.records() if e.host == "h1" or e.vm == "vm1"]
    down = next(e for e in decisions if e.kind == "host_status" and e.details["to"] == "Down")
    why = next(e for e in decisions if e.kind == "investigation" and e.details["result"] == "Down")
    return (
        f"h1 Down {down.t - crashed:.0f}s after its crash, decided by "
        f"{why.details['decided_by']}; vm1 runs on {vm1.host_id}"
    )


# --8<-- [end:failover]


def main() -> str:
    check_my_ports()
    summary = fail_over_on_a_fake_clock()
    lab = Cloud(["h1", "h2"])
    lab.add_vm("vm1", "h1")
    return summary + "\n" + run_for_a_moment(lab, seconds=0.5)


if __name__ == "__main__":
    print(main())
