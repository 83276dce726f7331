"""Embedding cloudha in a (toy) orchestrator: a host dies, its HA VM runs again elsewhere.

Run: ``python examples/toy_orchestrator.py`` (a few seconds; no server, no root).

The orchestrator below keeps its own tiny model of the cloud (hosts with a
power switch, VMs with a host) and implements cloudha's ports over it, as
your orchestrator would over its database and agents:

* ``HostDirectory`` (the host table, with optimistic status updates),
* ``AgentGateway`` (commands to the hosts' agents),
* ``VmOrchestrator`` (find, stop and start VMs; fencing tokens),
* ``AlertSink`` (operator alerts),
* a ``PowerDriver`` for the hosts' BMCs (the proof that a dead host is dead).

It checks each port with ``cloudha.testing``'s contract checkers, wires one
``cloudha.ManagementServer`` and runs the server's loops on virtual time (a
``FakeClock``), so the run is deterministic and takes no real minutes. In
production you would call ``server.start()`` with ``SystemClock()`` instead:
the same loops then run on threads.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import attrs
import sqlalchemy as sa

from cloudha import (
    KEEP,
    Alert,
    Answer,
    BasePowerDriver,
    Command,
    EvidenceLog,
    Host,
    ManagementServer,
    OobmConfig,
    PowerOperation,
    PowerState,
    ProbeAuthError,
    ProbeConnectionError,
    Settings,
    StaticOobmConfigs,
    Status,
    StatusChange,
    Vm,
    VmPowerState,
    VmState,
)
from cloudha.commands import CHECK_VM, PING_TEST, UNSUPPORTED
from cloudha.fencing import InlineRunner
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.oobm.power import PowerResult
from cloudha.testing import (
    FakeClock,
    LoopRunner,
    check_agent_gateway,
    check_host_directory,
    check_vm_orchestrator,
)

# -- the orchestrator's own model ------------------------------------------------------------


@attrs.define
class ToyVm:
    id: str
    host: str | None  # where it runs (None: stopped)
    ha: bool = False
    state: VmState = VmState.RUNNING
    last_host: str | None = None
    updated: int = 0  # bumped by every change: cloudha reads it to see a VM changed
    generation: int = 0  # the highest fencing token a start used


class ToyCloud:
    """Hosts, their power, their VMs: what the orchestrator believes (and, here, the truth)."""

    def __init__(self, hosts: dict[str, str], vms: Sequence[ToyVm], capacity: int = 4) -> None:
        self.lock = threading.RLock()  # cloudha calls the ports from several threads
        self.capacity = capacity
        self.powered = dict.fromkeys(hosts, True)
        self.rows = {  # the host table; cloudha owns the status columns
            h: Host(h, cluster="c1", private_ip=ip, status=Status.UP, management_server_id="ms1")
            for h, ip in hosts.items()
        }
        self.vms = {vm.id: vm for vm in vms}
        self.alerts: list[Alert] = []

    def snapshot(self, vm: ToyVm) -> Vm:
        return Vm(
            vm.id,
            state=vm.state,
            host_id=vm.host,
            last_host_id=vm.last_host,
            ha_enabled=vm.ha,
            updated=vm.updated,
        )


# -- the ports, over that model ----------------------------------------------------------------


class ToyHostTable:
    """cloudha.ports.HostDirectory."""

    def __init__(self, cloud: ToyCloud) -> None:
        self.cloud = cloud

    def find_host(self, host_id: str) -> Host | None:
        with self.cloud.lock:
            return self.cloud.rows.get(host_id)

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        wanted = {
            "cluster": cluster,
            "pod": pod,
            "zone": zone,
            "management_server_id": management_server_id,
        }
        with self.cloud.lock:
            return [
                h
                for h in self.cloud.rows.values()
                if all(v is None or getattr(h, k) == v for k, v in wanted.items())
            ]

    def update_status(self, change: StatusChange) -> bool:
        # Optimistic: apply only if nobody changed the row since cloudha read it.
        with self.cloud.lock:
            row = self.cloud.rows.get(change.host_id)
            if row is None or (row.status, row.update_count) != (
                change.from_status,
                change.expected_update_count,
            ):
                return False
            new = attrs.evolve(row, status=change.to_status, update_count=row.update_count + 1)
            for column in ("last_ping", "management_server_id", "disconnected_on", "owner_epoch"):
                value = getattr(change, column)
                if value is not KEEP:  # KEEP: leave the column alone
                    new = attrs.evolve(new, **{column: value})
            self.cloud.rows[row.id] = new
            return True


class ToyAgents:
    """cloudha.ports.AgentGateway: a dead host's agent does not answer."""

    def __init__(self, cloud: ToyCloud) -> None:
        self.cloud = cloud

    def _reach(self, host: Host) -> None:
        if not self.cloud.powered.get(host.id, False):
            raise ProbeConnectionError(f"agent of {host.id} does not answer", host_id=host.id)

    def check_health(self, host: Host, *, timeout: float) -> bool:
        self._reach(host)
        return True

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        self._reach(host)
        cloud = self.cloud
        with cloud.lock:
            if command.name == CHECK_VM:  # is this VM running on you?
                vm = cloud.vms.get(str(command.params["vm_name"]))
                on = vm is not None and vm.host == host.id and vm.state is VmState.RUNNING
                power = VmPowerState.POWER_ON if on else VmPowerState.POWER_OFF
                return Answer(True, data={"power_state": power.value})
            if command.name == PING_TEST:  # can you ping this address?
                ip = command.params["ip"]
                return Answer(
                    any(r.private_ip == ip and cloud.powered[h] for h, r in cloud.rows.items())
                )
        return Answer(False, f"toy agent cannot run {command.name}", UNSUPPORTED)


class ToyVmManager:
    """cloudha.ports.VmOrchestrator: the HA work queue stops and starts VMs through it."""

    def __init__(self, cloud: ToyCloud) -> None:
        self.cloud = cloud

    def _vm(self, vm_id: str) -> ToyVm:
        if vm_id not in self.cloud.vms:
            raise UnknownVmError(vm_id)
        return self.cloud.vms[vm_id]

    def _pick(self, avoid: frozenset[str], prefer: str | None = None) -> str | None:
        """The least loaded Up host with room, not avoided (``prefer`` if it qualifies)."""
        load = {h: 0 for h, row in self.cloud.rows.items() if row.status is Status.UP}
        for vm in self.cloud.vms.values():
            if vm.host in load and vm.state is VmState.RUNNING:
                load[vm.host] += 1
        free = sorted((n, h) for h, n in load.items() if h not in avoid and n < self.cloud.capacity)
        hosts = [h for _, h in free]
        return prefer if prefer in hosts else next(iter(hosts), None)

    def _move(self, vm: ToyVm, state: VmState, host: str | None) -> None:
        if vm.host is not None:
            vm.last_host = vm.host
        vm.state, vm.host, vm.updated = state, host, vm.updated + 1

    def find_vm(self, vm_id: str) -> Vm | None:
        with self.cloud.lock:
            vm = self.cloud.vms.get(vm_id)
            return None if vm is None else self.cloud.snapshot(vm)

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        with self.cloud.lock:
            on = [v for v in self.cloud.vms.values() if v.host == host_id]
            return [self.cloud.snapshot(v) for v in sorted(on, key=lambda v: v.id)]

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        with self.cloud.lock:
            toy = self._vm(vm.id)
            if toy.state not in (VmState.STOPPED, VmState.DESTROYED):
                self._move(toy, VmState.STOPPED, None)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        with self.cloud.lock:
            toy = self._vm(vm.id)
            if params.generation <= toy.generation:  # a late or duplicate worker: refuse
                raise StaleGenerationError(
                    vm.id, generation=params.generation, highest=toy.generation
                )
            if toy.state is not VmState.STOPPED:
                raise ConcurrentOperationError(vm.id, f"VM is {toy.state}")
            if params.ha_tag is not None:  # the toy's hosts carry no tags
                raise InsufficientCapacityError(vm.id, reason=f"no host tagged {params.ha_tag}")
            host = self._pick(params.avoid_hosts, params.prefer_host)
            if host is None:  # the VM stays Stopped and the generation is not used
                raise InsufficientCapacityError(vm.id, reason="no Up host with room")
            if not self.cloud.powered[host]:
                raise ProbeConnectionError(f"{host} does not answer", host_id=host)
            toy.generation = params.generation  # used: a start with it has begun
            self._move(toy, VmState.RUNNING, host)
            return host

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        return True  # every toy VM lives on shared storage

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        with self.cloud.lock:
            toy = self._vm(vm.id)
            if toy.state is not VmState.RUNNING or toy.host != source_host_id:
                raise ConcurrentOperationError(vm.id, f"not Running on {source_host_id}")
            host = self._pick(frozenset({source_host_id}))
            if host is None:
                raise InsufficientCapacityError(vm.id, reason="no other host has room")
            self._move(toy, VmState.RUNNING, host)
            return host

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        with self.cloud.lock:
            toy = self._vm(vm.id)
            if expunge:
                del self.cloud.vms[vm.id]
            elif toy.state is not VmState.DESTROYED:
                self._move(toy, VmState.DESTROYED, None)


class ToyAlerts:
    """cloudha.ports.AlertSink: a real one mails or pages; never raises."""

    def __init__(self, cloud: ToyCloud) -> None:
        self.cloud = cloud

    def send(self, alert: Alert) -> None:
        self.cloud.alerts.append(alert)


class ToyBmc(BasePowerDriver):
    """A PowerDriver: the BMC of each host, addressed by host id, password-protected."""

    name = "toybmc"

    def __init__(self, cloud: ToyCloud, password: str) -> None:
        self.cloud, self._password = cloud, password

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        if config.password != self._password:
            raise ProbeAuthError(f"BMC {config.address} refused user {config.username!r}")
        with self.cloud.lock:
            if config.address not in self.cloud.powered:
                raise ProbeConnectionError(f"no BMC answers at {config.address}")
            if operation is PowerOperation.STATUS:
                on = self.cloud.powered[config.address]
                return PowerResult(operation, True, PowerState.ON if on else PowerState.OFF)
            # OFF and SOFT switch the host off; ON, RESET and CYCLE leave it on.
            self.cloud.powered[config.address] = operation not in (
                PowerOperation.OFF,
                PowerOperation.SOFT,
            )
            return PowerResult(operation, True)


# -- check the ports, then embed ---------------------------------------------------------------

SHOWN = ("behind_on_ping", "investigation", "host_status", "ha_scheduled", "ha_work")
HOSTS = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}


def check_ports() -> None:
    """Run cloudha.testing's contract checkers on fresh toy clouds (AssertionError if broken)."""

    def fresh() -> ToyCloud:
        return ToyCloud(HOSTS, [ToyVm("vm1", "h1", ha=True)])

    check_host_directory(ToyHostTable(fresh()), "h1")
    cloud = fresh()
    cloud.powered["h3"] = False
    check_agent_gateway(ToyAgents(cloud), cloud.rows["h1"], cloud.rows["h3"])
    check_vm_orchestrator(lambda: (ToyVmManager(fresh()), "vm1", ["h1", "h2", "h3"]))
    print("the toy ports pass cloudha.testing's contract checks")


def main() -> int:
    check_ports()
    cloud = ToyCloud(HOSTS, [ToyVm("vm1", "h1", ha=True), ToyVm("vm2", "h2", ha=True)])
    clock = FakeClock(0.0)  # virtual time: SystemClock() in production
    bmc_password = "s3cret"  # from your vault; never logged, never in evidence
    bmcs = StaticOobmConfigs()
    for h in HOSTS:
        bmcs.set(h, OobmConfig("toybmc", h, "admin", bmc_password, host_id=h))
    settings = Settings.from_mapping({"ping.interval": 10})  # CloudStack key names
    evidence = EvidenceLog()

    server = ManagementServer(
        settings=settings,
        clock=clock,
        directory=ToyHostTable(cloud),
        gateway=ToyAgents(cloud),
        orchestrator=ToyVmManager(cloud),
        alerts=ToyAlerts(cloud),
        engine=sa.create_engine(  # the HA work queue: SQLite here, PostgreSQL in production
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        ),
        oobm_drivers=[ToyBmc(cloud, bmc_password)],
        oobm_configs=bmcs,
        fence_runner=InlineRunner(clock),  # fencers run inline on virtual time
        evidence=evidence,  # every decision; SqlEvidenceStore keeps them for `cloudha explain`
    )

    # The orchestrator's connection layer tells cloudha about agents; the loops do the rest.
    server.recover(connected=list(HOSTS))  # what server.start() does first
    killed_at: float | None = None

    def hosts_do_their_part(now: float) -> None:
        nonlocal killed_at
        if now == 60:
            print(f"t={now:.0f}s h1 loses power (its agent and vm1 with it)")
            cloud.powered["h1"] = False
            killed_at = now
        if now % settings.ping_interval == 0:  # each live agent pings every ping.interval
            for h in HOSTS:
                if cloud.powered[h] and not server.agents.ping_received(h):
                    server.agents.agent_connected(
                        h, vms=[v.id for v in cloud.vms.values() if v.host == h]
                    )

    def vm1_runs_elsewhere() -> bool:
        vm1 = cloud.vms["vm1"]
        return killed_at is not None and vm1.state is VmState.RUNNING and vm1.host != "h1"

    # server.start() runs each of server.loops() on its own thread; the runner ticks them
    # on virtual time instead, one second per step.
    LoopRunner(server, clock, each_step=hosts_do_their_part).run_until(
        vm1_runs_elsewhere, within=600
    )

    for record in evidence.records():  # every decision, with its reason
        if record.kind in SHOWN:
            by = record.details.get("decided_by")
            print(
                f"t={record.t:.0f}s {record.kind:<14} {record.host or '':<3} {record.vm or '':<3}"
                f" {record.reason}" + (f" (decided by {by})" if by else "")
            )
    for alert in cloud.alerts:
        print(f"alert: {alert.subject}")
    vm1 = cloud.vms["vm1"]
    print(f"h1 is {cloud.rows['h1'].status}; vm2 still runs on {cloud.vms['vm2'].host}")
    if vm1.state is not VmState.RUNNING or vm1.host == "h1" or killed_at is None:
        print(f"vm1 was not restarted: {vm1}")
        return 1
    print(f"vm1 restarted on {vm1.host}, {clock.monotonic() - killed_at:.0f}s after h1 died")
    return 0


if __name__ == "__main__":
    sys.exit(main())
