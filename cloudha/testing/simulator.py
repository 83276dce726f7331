"""The deterministic simulator: the real library on virtual time.

Simulated hosts run agents that ping, VMs, and a network that faults can
cut; each management server process is one :class:`cloudha.ManagementServer`
(a restart builds a new one on the same durable state: the host table, the
VM rows and the SQL work queue), whose loops (:meth:`~cloudha.ManagementServer.loops`:
the monitor, the HA workers, the cleanup, the direct hosts' ping tasks) are
driven by a :class:`~cloudha.testing.FakeClock` through a discrete-event
queue. The same scenario and seed always give the same document
(docs/simulator.md, "The JSON document").

What is simulated in this version: host power, agent processes (which report
their VMs when they connect: VM sync), the management network (per host, per
management server), management server crash and restart (recovery from
durable state), shared storage pools with each KVM host's real heartbeat
writer plan (:func:`cloudha.heartbeat.writer_plan`, self-fencing included),
the real heartbeat checker on neighbours, BMCs (read and switched through the
server's :class:`~cloudha.oobm.OutOfBandManager`, with ``bmc_down``/``bmc_up``),
orchestrator outages (every VM orchestrator and host directory call of the
server fails), and the invariant checker. The simulated cloud and every port
the server reaches it through are a public :class:`cloudha.testing.world.World`
and its ``World*`` fakes (:meth:`~cloudha.testing.world.World.ports`); this
module adds the event queue, the time-driven parts of the hosts (boot, agent
pings, heartbeat writers, watchdogs), the fault effects (:data:`FAULT_EFFECTS`),
the management server processes and the checker.

HA works run through the server's own worker loops on an in-memory SQLite
work queue that survives management server crashes; a worker holds a claimed
work :data:`WORK_SECONDS` of virtual time before processing it
(``ManagementServer(work_seconds=...)``), so an ``ms_crash`` can hit a claimed
work. VMs are started through the World's orchestrator on the least loaded Up,
Enabled host, reachable with its agent running, of the same zone and
hypervisor with room (``capacity``; :meth:`World.pick_target`). Other
synchronous calls (a BMC or an agent that times out) take no virtual time.
"""

from __future__ import annotations

import functools
import heapq
import json
import random
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cloudha.cluster import SqlServerRegistry
from cloudha.errors import ProbeConnectionError, ScenarioError
from cloudha.evidence import Evidence, Recorder
from cloudha.fencing.chain import FenceChain, FenceDecision, InlineRunner
from cloudha.ha.store import Step, WorkStore, create_schema
from cloudha.heartbeat import (
    HeartbeatChecker,
    HeartbeatTiming,
    Pet,
    SelfFence,
    Sleep,
    StorageFault,
    Write,
    WriterAction,
    format_heartbeat,
    heartbeat_path,
    writer_plan,
)
from cloudha.heartbeat.isolation import LinkState, link_state
from cloudha.hostha import HAExecutors, KVMHAProvider, SqlHAConfigStore
from cloudha.hostha.provider import ForwardingHAProvider
from cloudha.model import (
    Host,
    HostType,
    HypervisorType,
    ReasonType,
    ResourceState,
    Vm,
)
from cloudha.ports import (
    HAProvider,
    MetricsSink,
    PingReport,
    RecoveryLevel,
    RecoveryOutcome,
    RecoveryResult,
    ServerRegistry,
    ServerState,
    StatusChange,
)
from cloudha.runtime import Loop
from cloudha.server import ManagementServer
from cloudha.status import Status
from cloudha.testing.clock import FakeClock
from cloudha.testing.fakes import (
    RecordingAlertSink,
    ScheduledRestart,
)
from cloudha.testing.faults import Target, by_name
from cloudha.testing.scenario import (
    EVENT_HARD_CAP,
    Scenario,
    load_scenario,
    parse_scenario,
)
from cloudha.testing.world import EventTimeline, World
from cloudha.testing.world import WorldHost as _SimHost
from cloudha.testing.world import WorldVm as _SimVm

__all__ = ["Simulation", "simulate"]

WORK_SECONDS = 1.0
"""Virtual seconds an HA worker spends on a work between claiming and processing it."""
BOOT_SECONDS = 60.0
"""Seconds from power-on (``host_recover``) until the host's agent runs."""
AGENT_START_SECONDS = 1.0
"""Seconds from ``agent_start`` until the agent tries to connect."""
_KVM = (HypervisorType.KVM, HypervisorType.LXC)


class _ManagementServer:
    """One management server process: a :class:`~cloudha.ManagementServer`, its server id
    and its process generation (``gen``: unique over every process of the run)."""

    def __init__(self, sim: Simulation, server_id: str, gen: int) -> None:
        self.server_id = server_id
        self.gen = gen
        self.alive = True
        self.started_at = sim.clock.monotonic()
        self.server = ManagementServer(
            settings=sim.settings,
            clock=sim.clock,
            alerts=sim.alerts,
            store=sim.store,
            evidence=sim.timeline,
            server_id=server_id,
            fence_runner=InlineRunner(sim.clock),
            discover_plugins=False,
            work_seconds=WORK_SECONDS,
            ha_config=sim.ha_config,
            host_ha_executors=HAExecutors.inline(sim.clock),
            metrics=sim.metrics,
            registry=sim.registry,
            address=f"sim://{server_id}" if sim.registry is not None else "",
            **sim.world.ports(server_id),
        )
        host_ha = self.server.host_ha
        if host_ha is not None:
            # The invariant checker sees every Host-HA reset and fence too.
            host_ha.providers = {
                name: _WatchedProvider(provider, sim)
                for name, provider in host_ha.providers.items()
            }
        chain = self.server.fence_chain
        watched = _WatchedFenceChain(
            chain.levels,
            clock=chain.clock,
            runner=chain.runner,
            alerts=chain.alerts,
            recorder=chain.recorder,
        )
        watched.sim = sim
        self.server.ha.fence_chain = watched  # the invariant checker sees every fence
        ladder = self.server.escalation
        if ladder is not None:
            # The invariant checker sees every power cycle of the ladder too.
            ladder.levels = tuple(
                _WatchedLevel(level, sim) if level.disruptive else level for level in ladder.levels
            )
        self.agents = self.server.agents
        self.ha = self.server.ha
        self.oobm = self.server.oobm
        self.monitor = self.server.monitor
        self.idle_workers: set[str] = set()
        self.loop_token: dict[str, int] = {}
        self.paused = False
        """``ms_pause``: no loop runs and no agent is answered until ``ms_resume``."""
        self.deferred: list[Callable[[], None]] = []
        """What came due while paused, run at ``ms_resume``."""


class _CurrentScheduler:
    """The HA scheduler of the first management server running now
    (``ManagementServer.scheduler``)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def schedule_restart_for_vms_on_host(
        self, host: Host, *, investigate: bool, reason: ReasonType
    ) -> None:
        for server_id in self.sim.server_ids:
            ms = self.sim.procs.get(server_id)
            if ms is not None and ms.alive and not ms.paused:
                ms.server.ha.schedule_restart_for_vms_on_host(
                    host, investigate=investigate, reason=reason
                )
                return
        raise ProbeConnectionError("no management server is running")


class _WatchedFenceChain(FenceChain):
    """The real fence chain, counting fences of hosts that were alive at that moment."""

    sim: Simulation

    def fence_off(self, vm: Vm, host: Host) -> FenceDecision:
        sim_host = self.sim.hosts.get(host.id)
        alive = sim_host is not None and self.sim.alive_with_storage(sim_host)
        decision = super().fence_off(vm, host)
        if decision.fenced and alive:
            self.sim.fenced_alive_host += 1
        return decision


class _WatchedLevel:
    """A disruptive escalation level whose power actions on live hosts the checker counts."""

    def __init__(self, level: RecoveryLevel, sim: Simulation) -> None:
        self.level = level
        self.sim = sim
        self.name = level.name
        self.timeout = level.timeout
        self.disruptive = level.disruptive

    def applies(self, host: Host) -> str | None:
        return self.level.applies(host)

    def attempt(self, host: Host) -> RecoveryResult:
        sim_host = self.sim.hosts.get(host.id)
        alive = sim_host is not None and self.sim.alive_with_storage(sim_host)
        result = self.level.attempt(host)
        if alive and result.outcome is not RecoveryOutcome.FAILED:
            self.sim.fenced_alive_host += 1
        return result


class _WatchedProvider(ForwardingHAProvider):
    """A Host-HA provider whose resets and fences of live hosts the checker counts."""

    def __init__(self, provider: HAProvider, sim: Simulation) -> None:
        super().__init__(provider)
        self.sim = sim

    def _watched(self, host: Host, act: Callable[[], bool]) -> bool:
        sim_host = self.sim.hosts.get(host.id)
        alive = sim_host is not None and self.sim.alive_with_storage(sim_host)
        done = act()
        if done and alive:
            self.sim.fenced_alive_host += 1
        return done

    def recover(self, host: Host) -> bool:
        return self._watched(host, lambda: self.provider.recover(host))

    def fence(self, host: Host) -> bool:
        return self._watched(host, lambda: self.provider.fence(host))

    def proves_dead(self, host: Host) -> bool:
        return self._watched(host, lambda: self.provider.proves_dead(host))


class Simulation:
    """One run of a scenario. Use :func:`simulate` unless you need the pieces.

    ``metrics``: a :class:`~cloudha.ports.MetricsSink` (e.g. :class:`cloudha.metrics.Metrics`)
    given to every management server process of the run, so it counts the run's
    decisions as it would a production server's (each restarted server watched in turn).
    """

    def __init__(self, scenario: Scenario, *, metrics: MetricsSink | None = None) -> None:
        self.scenario = scenario
        self.metrics = metrics
        self.settings = scenario.settings
        self.clock = FakeClock(0.0)
        self.rng = random.Random(scenario.seed)
        self.timeline = EventTimeline()
        self.recorder = Recorder(self.timeline, self.clock, "simulator")
        self.alerts = RecordingAlertSink()
        self.scheduled: list[ScheduledRestart] = []
        self.scheduler = _CurrentScheduler(self)
        self.engine = sa.create_engine(
            "sqlite://",
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False},
        )
        create_schema(self.engine)
        self.server_ids: tuple[str, ...] = scenario.management_servers
        """The management servers of the run (``[run] management_servers``), in order."""
        self.group = len(self.server_ids) > 1
        """Several servers: a group on one registry (each host owned by one of them)."""
        self.registry: ServerRegistry | None = (
            SqlServerRegistry(self.engine, self.clock) if self.group else None
        )
        """The servers' registry in the shared database (None for one server: it runs alone)."""
        self.store = WorkStore(self.engine, self.clock)
        self.ha_config = SqlHAConfigStore(self.engine, self.clock)
        self.ha_expected: list[tuple[float, str]] = []
        self.ha_seen: dict[str, float] = {}
        self.fenced_alive_host = 0
        self.timing = HeartbeatTiming.from_settings(self.settings)
        self.world = World(
            scenario.hosts,
            scenario.vms,
            clock=self.clock,
            recorder=self.recorder,
            timing=self.timing,
            server_running=self._server_running,
            on_power_on=self._boot,
            # A group starts with no owner on any host: its servers claim their fair shares.
            server_id=None if self.group else self.server_ids[0],
            servers=self.server_ids,
            servers_running=self._running,
        )
        world = self.world
        world.on_host_write = self._host_written
        for sim_host in world.hosts.values():
            # A lone server's agents are connected at t=0; a group's wait for their owner.
            sim_host.connected = not self.group
            sim_host.connected_to = None if self.group else self.server_ids[0]
        world.agent_service = self.settings.cloudha_escalation_agent_service
        world.on_agent_start = self._agent_started
        # The world's state under the names the writers and the checker read.
        self.oobm_configs = world.oobm_configs
        self.double_runs = world.double_runs
        self.directory = world.directory
        self.hosts = world.hosts
        self.vms = world.vms
        self.storage_out = world.storage_out
        self.orchestrator = world.orchestrator
        self.pools = world.pools
        self.down_with_running_vms = 0
        self.timeline.on_record = self._watch
        self.stale_writes = 0
        """Host row writes by a server the registry no longer had Up at its epoch."""
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._gen = 0
        self.procs: dict[str, _ManagementServer] = {}
        """Each server's latest process (dead ones too: ``alive`` says)."""
        self._by_gen: dict[int, _ManagementServer] = {}
        self._down_since: dict[str, float] = {}
        """When each crashed or paused server stopped running."""

    @property
    def ms(self) -> _ManagementServer | None:
        """The first management server's latest process (the only one of a lone server)."""
        return self.procs.get(self.server_ids[0])

    def _server_running(self) -> bool:
        return self._running(self.server_ids[0])

    def _running(self, server_id: str) -> bool:
        """Is management server ``server_id`` running (alive, not paused) now?"""
        ms = self.procs.get(server_id)
        return ms is not None and ms.alive and not ms.paused

    def _host_written(self, server_id: str | None, change: StatusChange) -> None:
        """A server wrote a host row: count it if the registry had it departed (fencing)."""
        if self.registry is None or server_id is None:
            return
        ms = self.procs.get(server_id)
        epoch = None if ms is None or ms.server.cluster is None else ms.server.cluster.epoch
        up = any(
            r.id == server_id and r.state is ServerState.UP and r.epoch == epoch
            for r in self.registry.servers()
        )
        if not up:
            self.stale_writes += 1
            self.recorder.emit(
                "stale_write",
                host=change.host_id,
                reason=(
                    f"{server_id} wrote the host row while the registry did not have it Up"
                    f" at epoch {epoch}"
                ),
                server=server_id,
                epoch=epoch,
            )

    def checker(self, host: _SimHost) -> HeartbeatChecker:
        """The heartbeat checker running on ``host`` (:meth:`World.checker`)."""
        return self.world.checker(host)

    @property
    def ms_isolated(self) -> bool:
        """Every management server is cut off the management network (``World.ms_isolated``)."""
        return self.world.ms_isolated

    @ms_isolated.setter
    def ms_isolated(self, value: bool) -> None:
        self.world.ms_isolated = value

    @property
    def orchestrator_out(self) -> bool:
        """An orchestrator outage (``World.orchestrator_out``)."""
        return self.world.orchestrator_out

    @orchestrator_out.setter
    def orchestrator_out(self, value: bool) -> None:
        self.world.orchestrator_out = value

    def _watch(self, evidence: Evidence) -> None:
        if (
            evidence.kind == "ha_scheduled"
            and evidence.host is not None
            and not evidence.details.get("shadow")  # shadow mode scheduled nothing
        ):
            reason = ReasonType(str(evidence.details.get("ha_reason", "HostDown")))
            investigate = evidence.details.get("investigate", True) is not False
            self.scheduled.append(ScheduledRestart(evidence.host, investigate, reason))
        if evidence.kind == "ha_work" and evidence.vm is not None:
            self.ha_seen[evidence.vm] = evidence.t
        if (
            evidence.kind == "host_status"
            and evidence.details.get("to") == str(Status.DOWN)
            and evidence.host is not None
        ):
            for vm_id, row in sorted(self.orchestrator.rows.items()):
                if row.host_id == evidence.host and self.vms[vm_id].ha:
                    self.ha_expected.append((evidence.t, vm_id))
        # A host declared Down while VMs still run on it is how HA ends up
        # running a VM twice; the checker counts every such verdict. (Not in shadow
        # mode: its writers arm no watchdog, and nothing acts on its verdicts.)
        if (
            not self.settings.cloudha_shadow
            and evidence.kind == "host_status"
            and evidence.details.get("to") == str(Status.DOWN)
            and any(evidence.host in vm.running_on for vm in self.vms.values())
        ):
            self.down_with_running_vms += 1

    # -- the event queue ---------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def run(self) -> dict[str, Any]:
        for server_id in self.server_ids:
            self._start_ms(server_id, first=True)
        for fault in self.scenario.faults:
            self.at(fault.at, functools.partial(self._fault, fault.kind, fault.target))
        interval = self.settings.ping_interval
        for host_id in self.hosts:
            phase = self.rng.uniform(0.0, interval)
            if self.hosts[host_id].spec.hypervisor.has_direct_agent:
                continue
            self.at(phase, functools.partial(self._agent_slot, host_id))
        for sim_host in self.hosts.values():
            if self._writes_heartbeat(sim_host):
                self._start_writer(sim_host, self.rng.uniform(0.0, self.timing.frequency))
                if sim_host.spec.watchdog:
                    # The cloud ran before t=0: its writers armed their watchdogs then.
                    self._pet_watchdog(sim_host)
        until = self.scenario.until
        processed = 0
        while self._queue and self._queue[0][0] <= until:
            when, _, action = heapq.heappop(self._queue)
            processed += 1
            if processed > EVENT_HARD_CAP:
                raise ScenarioError(
                    f"{self.scenario.source}: the run processed {EVENT_HARD_CAP:,} events by"
                    f" t={self.clock.monotonic():g}s of run.until={until:g}s and was stopped"
                    " (the event budget); shorten run.until or use longer intervals",
                    key="until",
                    value=until,
                    source=self.scenario.source,
                )
            # A synchronous call may have taken virtual time (a fencer polling a
            # BMC); what was due meanwhile runs as soon as it returns.
            if when > self.clock.monotonic():
                self.clock.set(when)
            action()
        if until > self.clock.monotonic():
            self.clock.set(until)
        return self._document()

    # -- reachability --------------------------------------------------------

    def reachable(self, host: _SimHost) -> bool:
        """Can the server and the host's agent talk right now (:meth:`World.reachable`)?"""
        return self.world.reachable(host)

    # -- management server ---------------------------------------------------

    def _start_ms(self, server_id: str, *, first: bool) -> None:
        """Start a process of server ``server_id`` on the durable state (SQL, host table)."""
        self._gen += 1
        ms = _ManagementServer(self, server_id, self._gen)
        self.procs[server_id] = ms
        self._by_gen[ms.gen] = ms
        epoch = ms.gen
        server = ms.server
        server.on_work_added = lambda: self.wake_workers(epoch)
        # The first start joins a running cloud whose agents are connected (to it, when
        # it runs alone; a group's servers claim the hosts, whose agents then connect).
        connected = [h.id for h in self.directory.list_hosts()] if first and not self.group else ()
        server.recover(connected=connected)
        if first and server_id == self.server_ids[0] and server.host_ha is not None:
            # The operator enabled Host-HA on these hosts before the run (durable rows).
            for sim_host in self.hosts.values():
                if sim_host.spec.ha_provider:
                    server.host_ha.configure(sim_host.spec.id, KVMHAProvider.name)
                    server.host_ha.enable(sim_host.spec.id)
        now = self.clock.monotonic()
        interval = self.settings.ping_interval
        loops = {loop.name: loop for loop in server.loops()}
        # One seeded phase per directly managed host; their ping loop starts at the first.
        phases = [
            self.rng.uniform(0.0, interval)
            for sim_host in self.hosts.values()
            if sim_host.spec.hypervisor.has_direct_agent
        ]
        direct = loops.pop("DirectAgents", None)
        if direct is not None and phases:
            self._schedule_loop(ms, direct, now + min(phases))
        for name, loop in loops.items():
            if name == "AgentMonitor":
                self._schedule_loop(ms, loop, now + server.monitor.next_delay())
            elif name == "OobmSync":
                # The readiness sync, one host after the other (deterministic order).
                if self.oobm_configs.host_ids():
                    self.at(now, lambda: self._oobm_tick(epoch))
            else:
                self._schedule_loop(ms, loop, now)

    # -- the server's loops on virtual time ---------------------------------------

    def _schedule_loop(self, ms: _ManagementServer, loop: Loop, when: float) -> None:
        token = ms.loop_token.get(loop.name, 0) + 1
        ms.loop_token[loop.name] = token
        self.at(when, functools.partial(self._loop_tick, ms.gen, loop, token))

    def _loop_tick(self, epoch: int, loop: Loop, token: int) -> None:
        ms = self._current(epoch)
        if ms is None or ms.loop_token.get(loop.name) != token:
            return  # the server died, or a wake-up ran this loop meanwhile
        if ms.paused:
            ms.deferred.append(functools.partial(self._loop_tick, epoch, loop, token))
            return
        ms.idle_workers.discard(loop.name)
        delay = loop.tick()
        if loop.wake_on_work and delay >= self.settings.time_to_sleep:
            ms.idle_workers.add(loop.name)  # nothing was due: woken by new work
        self._schedule_loop(ms, loop, self.clock.monotonic() + delay)

    def wake_workers(self, epoch: int) -> None:
        """Scheduling wakes the idle workers at once."""
        ms = self._current(epoch)
        if ms is None or ms.paused:
            return
        loops = {loop.name: loop for loop in ms.server.loops() if loop.wake_on_work}
        for name in sorted(ms.idle_workers):
            ms.idle_workers.discard(name)
            self._schedule_loop(ms, loops[name], self.clock.monotonic())

    def _oobm_tick(self, epoch: int) -> None:
        ms = self._current(epoch)
        if ms is None:
            return
        if ms.paused:
            ms.deferred.append(functools.partial(self._oobm_tick, epoch))
            return
        hosts = [h for h in self.directory.list_hosts() if h.id in self.hosts]
        if self.group:  # each server of a group checks the BMCs of its own hosts
            hosts = [h for h in hosts if h.management_server_id == ms.server_id]
        ms.oobm.sync(hosts, parallel=False)
        interval = ms.server.oobm_sync.interval
        self.at(self.clock.monotonic() + interval, lambda: self._oobm_tick(epoch))

    def _current(self, epoch: int) -> _ManagementServer | None:
        """The process of generation ``epoch`` if it is still alive."""
        ms = self._by_gen.get(epoch)
        if ms is None or not ms.alive:
            return None
        return ms

    # -- agents ---------------------------------------------------------------

    def _agent_slot(self, host_id: str) -> None:
        host = self.hosts[host_id]
        self.at(
            self.clock.monotonic() + self.settings.ping_interval, lambda: self._agent_slot(host_id)
        )
        if not (host.powered and host.agent_running):
            return
        # The agent talks to the server its host row names as owner (in a group, a host
        # without one waits for a claim); a new owner gets a new connection.
        owner = self.world.owner(host)
        if owner is None or owner not in self.procs or not self.reachable(host):
            host.connected = False  # the agent's ping failed: it drops the link
            host.connected_to = None
            return
        ms = self.procs[owner]
        sent = self.clock.now().timestamp()
        # A KVM agent's ping carries its host's VM report (CloudStack's hostVmStateReport).
        running = frozenset(vm.id for vm in self.vms.values() if host_id in vm.running_on)
        if (
            host.connected
            and host.connected_to == owner
            and ms.agents.ping_received(PingReport(host_id, vms=running))
        ):
            host.last_ack = sent  # the isolation probe of the host's writer reads it
            return
        self._connect(host)

    def _connect(self, host: _SimHost) -> None:
        owner = self.world.owner(host)
        if owner is None or owner not in self.procs:
            return
        if not self.reachable(host) or not host.agent_running:
            return
        running = sorted(vm.id for vm in self.vms.values() if host.spec.id in vm.running_on)
        sent = self.clock.now().timestamp()
        host.connected = self.procs[owner].agents.agent_connected(host.spec.id, vms=running)
        host.connected_to = owner if host.connected else None
        if host.connected:
            host.last_ack = sent

    # -- storage heartbeat writers ----------------------------------------------

    @staticmethod
    def _writes_heartbeat(host: _SimHost) -> bool:
        return host.spec.hypervisor in _KVM and bool(host.spec.pools)

    def _start_writer(self, host: _SimHost, delay: float) -> None:
        host.writer_epoch += 1
        epoch = host.writer_epoch
        host_id = host.spec.id
        plan = writer_plan(
            lambda: self.pools.of(host_id),
            self.timing,
            reboot_on_failure=self.settings.reboot_host_and_alert_management_on_heartbeat_timeout,
            watchdog=host.spec.watchdog,
            link=functools.partial(self._link, host)
            if self.settings.cloudha_isolation_aware
            else None,
        )
        host.round_started = None
        # The writer arms the watchdog at its first Pet (writer_plan): a countdown a
        # previous writer left running goes on until then.
        self.at(
            self.clock.monotonic() + delay,
            functools.partial(self._writer_step, host, epoch, plan, None),
        )

    def _writer_step(
        self,
        host: _SimHost,
        epoch: int,
        plan: Generator[WriterAction, bool | None, None],
        result: bool | None,
    ) -> None:
        if host.writer_epoch != epoch or not (
            host.powered and host.heartbeat_running and not host.hung
        ):
            return
        try:
            action = plan.send(result)
        except StopIteration:
            return
        now = self.clock.monotonic()
        if isinstance(action, Write):
            path = heartbeat_path(action.pool.mount_point, host.ip)
            stamp = format_heartbeat(self.clock.now())
            if self._try_write(host, path, stamp):
                self._written(host, now)
                self._writer_step(host, epoch, plan, True)
            else:
                # A write to a pool that does not answer blocks; it completes if
                # the pool comes back within the write timeout, else it fails.
                def late() -> None:
                    written = self._try_write(host, path, stamp)
                    if written:
                        self._written(host, now)
                    self._writer_step(host, epoch, plan, written)

                self.at(now + self.timing.write_timeout, late)
        elif isinstance(action, Pet) and action.proof == "agent":
            # The lease renewed on the agent's link, as old as its last acknowledged ping.
            acknowledged = host.last_ack
            if acknowledged is not None and self.timing.may_pet(
                self.clock.now().timestamp() - acknowledged,
                self.settings.cloudha_watchdog_timeout,
                self.settings.cloudha_watchdog_reset_margin,
            ):
                self._pet_watchdog(host)
            self._writer_step(host, epoch, plan, None)
        elif isinstance(action, StorageFault):
            self.recorder.emit(
                "storage_fault",
                host=host.spec.id,
                reason=action.reason,
                pool=action.pool.id,
                link=action.link.value,
            )
            self._writer_step(host, epoch, plan, None)
        elif isinstance(action, Pet):
            started = host.round_started
            host.round_started = None
            assert started is not None
            if self.timing.may_pet(
                now - started,
                self.settings.cloudha_watchdog_timeout,
                self.settings.cloudha_watchdog_reset_margin,
            ):
                self._pet_watchdog(host)
                if host.awaiting_arm:  # armed: the host's agent may start now
                    host.awaiting_arm = False
                    host.agent_running = True
                    self._connect_indirect(host)
            self._writer_step(host, epoch, plan, None)
        elif isinstance(action, Sleep):
            if action.reason == "round":
                host.round_started = None
            self.at(
                now + action.seconds, functools.partial(self._writer_step, host, epoch, plan, None)
            )
        elif isinstance(action, SelfFence):
            self._self_fence(host, action.reason)

    def _link(self, host: _SimHost) -> LinkState:
        """What ``host``'s writer knows of its link: its agent's last acknowledged ping, then
        the isolation address (it answers unless the host lost every network)."""
        acknowledged = host.last_ack
        age = None if acknowledged is None else self.clock.now().timestamp() - acknowledged
        answers = None if not self.settings.cloudha_isolation_address else not host.isolated
        return link_state(age, self.settings.cloudha_isolation_agent_window, answers)

    @staticmethod
    def _written(host: _SimHost, started: float) -> None:
        """A write that started at ``started`` succeeded: the round's first, if none yet."""
        if host.round_started is None:
            host.round_started = started

    def _pet_watchdog(self, host: _SimHost) -> None:
        """(Re)start the countdown; it resets the host unless petted again in time.

        The reset comes ``cloudha.watchdog.reset.margin`` after the timeout:
        the latest the timing allows. In shadow mode no writer arms a watchdog
        (a reset is an action), so there is no countdown.
        """
        if self.settings.cloudha_shadow:
            return
        host.pet_seq += 1
        seq = host.pet_seq
        delay = self.settings.cloudha_watchdog_timeout + self.settings.cloudha_watchdog_reset_margin
        self.at(self.clock.monotonic() + delay, lambda: self._watchdog_expired(host, seq))

    def _watchdog_expired(self, host: _SimHost, seq: int) -> None:
        """Nobody petted the watchdog in time: it resets the host, which boots again.

        A hung, isolated or writer-less host gets here. Its VMs die; at boot
        its writer service starts again (so ``heartbeat_stop`` ends).
        """
        if host.pet_seq != seq or not host.powered:
            return
        self.recorder.emit(
            "watchdog_reset",
            host=host.spec.id,
            reason=f"no heartbeat round completed for {self.settings.cloudha_watchdog_timeout:g} s",
        )
        self.world.power_off(host)
        host.heartbeat_running = True
        self._boot(host)

    def _try_write(self, host: _SimHost, path: str, data: bytes) -> bool:
        try:
            self.world.storage[host.spec.id].write_atomic(path, data)
        except OSError:
            return False
        return True

    def _self_fence(self, host: _SimHost, reason: str) -> None:
        """The writer gave up: the host resets itself (sysrq ``b``) and boots again.

        In shadow mode it records that it would, and a new writer goes on a round later.
        """
        if self.settings.cloudha_shadow:
            self.recorder.emit(
                "self_fence",
                host=host.spec.id,
                reason=f"{reason}; shadow mode: would reset the host, did nothing",
                shadow=True,
            )
            self._start_writer(host, self.timing.frequency)
            return
        self.recorder.emit("self_fence", host=host.spec.id, reason=reason)
        self.world.power_off(host)
        self._boot(host)

    def power_cut(self, host: _SimHost, reason: str) -> None:
        """The BMC switched ``host`` off (:meth:`World.power_cut`)."""
        self.world.power_cut(host, reason)

    def power_on(self, host: _SimHost, reason: str) -> None:
        """The BMC switched ``host`` on: it boots (:meth:`World.power_on`, then :meth:`_boot`)."""
        self.world.power_on(host, reason)

    def alive_with_storage(self, host: _SimHost) -> bool:
        """Is ``host`` up and reaching one of its pools (:meth:`World.alive_with_storage`)?"""
        return self.world.alive_with_storage(host)

    def _boot(self, host: _SimHost) -> None:
        """Power ``host`` on: its OS is up (agent, writer) ``BOOT_SECONDS`` later."""
        host.powered = host.booting = True
        host.boot_seq += 1
        seq = host.boot_seq
        self.at(self.clock.monotonic() + BOOT_SECONDS, lambda: self._boot_done(host, seq))

    # -- faults ---------------------------------------------------------------

    def _fault(self, kind: str, target: str | None) -> None:
        # A fault on a host or a VM names it as the event's subject too, so that
        # `cloudha explain` shows the fault that began a host's or a VM's chain.
        aim = by_name(kind).target
        self.recorder.emit(
            "fault",
            host=target if aim is Target.HOST else None,
            vm=target if aim is Target.VM else None,
            reason="fault injected",
            fault=kind,
            target=target,
            status="applied",
        )
        FAULT_EFFECTS[kind](self, target)

    def _fault_host_crash(self, target: str | None) -> None:
        host = self._target_host(target)
        host.broken = True  # until host_recover: a BMC power-on or reset does not revive it
        self.world.power_off(host)

    def _fault_host_recover(self, target: str | None) -> None:
        host = self._target_host(target)
        host.broken = False
        if not host.powered:
            self._boot(host)
        elif host.hung:
            self._unhang(host)

    def _fault_host_hang(self, target: str | None) -> None:
        host = self._target_host(target)
        if host.powered and not host.hung:
            host.hung = True
            host.agent_running = host.connected = False
            for vm in self.vms.values():
                if host.spec.id in vm.running_on:
                    self.world.vm_leaves(vm, host.spec.id)
                    vm.frozen_on.add(host.spec.id)

    def _fault_bmc_down(self, target: str | None) -> None:
        host = self._target_host(target)
        host.bmc_up = False

    def _fault_bmc_up(self, target: str | None) -> None:
        host = self._target_host(target)
        host.bmc_up = True

    def _fault_agent_stop(self, target: str | None) -> None:
        host = self._target_host(target)
        server = host.connected_to
        was_connected = host.connected and server is not None and self.world.reachable(host, server)
        host.agent_running = host.connected = False
        host.connected_to = None
        if was_connected and server is not None and not host.spec.hypervisor.has_direct_agent:
            # The socket closes at once: the server it was connected to sees it.
            self.procs[server].agents.agent_link_closed(host.spec.id)

    def _fault_agent_start(self, target: str | None) -> None:
        # A host still booting (or waiting for its writer to arm the watchdog) starts its
        # agent with the boot; a hung one starts nothing (World.start_agent).
        self.world.start_agent(self._target_host(target))

    def _agent_started(self, host: _SimHost) -> None:
        """An agent started (``agent_start``, or a restart over SSH): it connects soon."""
        self.at(self.clock.monotonic() + AGENT_START_SECONDS, lambda: self._connect_indirect(host))

    def _fault_vm_crash(self, target: str | None) -> None:
        assert target is not None  # the scenario parser checked it names a VM
        vm = self.vms[target]
        vm.frozen_on.clear()  # a frozen copy dies too
        for host_id in sorted(vm.running_on):
            self.world.vm_leaves(vm, host_id)
            self.recorder.emit("vm_state", vm=vm.id, host=host_id, state="Stopped")

    def _fault_mgmt_partition(self, target: str | None) -> None:
        host = self._target_host(target)
        host.mgmt_link = False

    def _fault_mgmt_heal(self, target: str | None) -> None:
        host = self._target_host(target)
        host.mgmt_link = True

    def _fault_host_isolation(self, target: str | None) -> None:
        host = self._target_host(target)
        host.isolated = True

    def _fault_host_heal(self, target: str | None) -> None:
        host = self._target_host(target)
        host.isolated = False

    def _fault_heartbeat_stop(self, target: str | None) -> None:
        host = self._target_host(target)
        host.heartbeat_running = False

    def _fault_heartbeat_start(self, target: str | None) -> None:
        host = self._target_host(target)
        if not host.heartbeat_running:
            host.heartbeat_running = True
            if host.powered and self._writes_heartbeat(host):
                self._start_writer(host, 0.0)

    def _fault_storage_outage(self, target: str | None) -> None:
        assert target is not None
        self.storage_out.add(target)

    def _fault_storage_heal(self, target: str | None) -> None:
        assert target is not None
        self.storage_out.discard(target)

    def _target_server(self, target: str | None) -> str:
        """The server a management server fault names (the scenario parser checked it), or
        the first."""
        return target if target is not None else self.server_ids[0]

    def _fault_ms_crash(self, target: str | None) -> None:
        server_id = self._target_server(target)
        ms = self.procs.get(server_id)
        if ms is not None and ms.alive:
            ms.alive = False
            self._down_since[server_id] = self.clock.monotonic()
            for sim_host in self.hosts.values():
                if not self.group or sim_host.connected_to == server_id:
                    sim_host.connected = False
                    sim_host.connected_to = None

    def _fault_ms_restart(self, target: str | None) -> None:
        server_id = self._target_server(target)
        ms = self.procs.get(server_id)
        if ms is None or not ms.alive:
            self._down_since.pop(server_id, None)
            self._start_ms(server_id, first=False)

    def _fault_ms_isolation(self, target: str | None) -> None:
        self.world.isolated_servers.add(self._target_server(target))

    def _fault_ms_heal(self, target: str | None) -> None:
        self.world.isolated_servers.discard(self._target_server(target))

    def _fault_ms_pause(self, target: str | None) -> None:
        server_id = self._target_server(target)
        ms = self.procs.get(server_id)
        if ms is not None and ms.alive and not ms.paused:
            ms.paused = True
            self._down_since[server_id] = self.clock.monotonic()

    def _fault_ms_resume(self, target: str | None) -> None:
        server_id = self._target_server(target)
        ms = self.procs.get(server_id)
        if ms is not None and ms.alive and ms.paused:
            self._down_since.pop(server_id, None)
            ms.paused = False
            deferred, ms.deferred = ms.deferred, []
            for action in deferred:
                self.at(self.clock.monotonic(), action)

    def _fault_orchestrator_outage(self, target: str | None) -> None:
        self.orchestrator_out = True

    def _fault_orchestrator_heal(self, target: str | None) -> None:
        self.orchestrator_out = False

    def _target_host(self, target: str | None) -> _SimHost:
        assert target is not None  # the scenario parser checked it names a host
        return self.hosts[target]

    def _unhang(self, host: _SimHost) -> None:
        """The hang ends: frozen VMs run again where they were, the agent and writer go on."""
        host.hung = False
        for vm in sorted(self.vms.values(), key=lambda v: v.id):
            if host.spec.id in vm.frozen_on:
                vm.frozen_on.discard(host.spec.id)
                vm.running_on.add(host.spec.id)
                if len(vm.running_on) > 1:
                    self.double_runs.add(vm.id)
        host.agent_running = True
        if host.heartbeat_running and self._writes_heartbeat(host):
            self._start_writer(host, 0.0)
        self._connect_indirect(host)

    def _boot_done(self, host: _SimHost, seq: int) -> None:
        if host.boot_seq != seq or not host.powered:
            return
        host.booting = False
        if host.agent_running or host.awaiting_arm:
            return
        if host.spec.watchdog and self._writes_heartbeat(host):
            # Host.watchdog promises that the host runs no VM unguarded: its agent
            # starts once the writer has armed the watchdog (after a round that
            # wrote every pool), as a cluster manager starts after SBD.
            host.awaiting_arm = True
            if host.heartbeat_running:
                self._start_writer(host, 0.0)
            return
        host.agent_running = True
        if host.heartbeat_running and self._writes_heartbeat(host):
            self._start_writer(host, 0.0)
        self._connect_indirect(host)

    def _connect_indirect(self, host: _SimHost) -> None:
        if not host.spec.hypervisor.has_direct_agent:
            self._connect(host)

    # -- the result -------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        hosts: dict[str, Any] = {}
        for host_id, sim_host in self.hosts.items():
            row = self.directory.find_host(host_id)
            status = None if row is None or row.status is None else str(row.status)
            hosts[host_id] = {"status": status, "power": "On" if sim_host.powered else "Off"}
            if sim_host.spec.oobm != "none":
                hosts[host_id]["bmc"] = "up" if sim_host.bmc_up else "down"
            config = self.ha_config.find(host_id)
            if config is not None and config.state is not None:
                hosts[host_id]["ha_state"] = config.state.value
            if self.group:
                hosts[host_id]["owner"] = None if row is None else row.management_server_id
        vms: dict[str, Any] = {}
        for vm in self.vms.values():
            vms[vm.id] = {"state": "Running" if vm.running_on else "Stopped", "host": vm.host}
        scenario: dict[str, Any] = {
            "source": self.scenario.source,
            "seed": self.scenario.seed,
            "until": self.scenario.until,
            "hosts": len(self.hosts),
            "vms": len(self.vms),
        }
        final: dict[str, Any] = {"hosts": hosts, "vms": vms}
        if self.group:
            scenario["management_servers"] = list(self.server_ids)
            final["servers"] = self._servers()
        return {
            "scenario": scenario,
            "events": self.timeline.events,
            "final": final,
            "invariants": self._invariants(vms),
            "ha_scheduled": [
                {"host": s.host_id, "investigate": s.investigate, "reason": str(s.reason)}
                for s in self.scheduled
            ],
        }

    def _invariants(self, vms: Mapping[str, Any]) -> dict[str, int]:
        unrecovered = sum(
            1
            for vm in self.vms.values()
            if self._ha_applies(vm) and not vm.running_on and self._recovery_possible(vm)
        )
        return {
            "double_run": len(
                self.double_runs | {vm.id for vm in self.vms.values() if len(vm.running_on) > 1}
            ),
            "fenced_alive_host": self.fenced_alive_host,
            "down_with_running_vms": self.down_with_running_vms,
            "lost_work": self._lost_work(),
            "unrecovered_ha_vm": unrecovered,
            **(
                {"stale_write": self.stale_writes, "unowned_host": self._unowned_hosts()}
                if self.group
                else {}
            ),
        }

    def _servers(self) -> dict[str, Any]:
        """Each server of a group at the end: its process, registry row and host count."""
        assert self.registry is not None
        records = {r.id: r for r in self.registry.servers()}
        owned: dict[str, int] = {}
        for row in self.directory.list_hosts():
            if row.management_server_id is not None:
                owned[row.management_server_id] = owned.get(row.management_server_id, 0) + 1
        servers: dict[str, Any] = {}
        for server_id in self.server_ids:
            ms = self.procs.get(server_id)
            process = "Paused" if ms is not None and ms.alive and ms.paused else "Running"
            if ms is None or not ms.alive:
                process = "Dead"
            record = records.get(server_id)
            servers[server_id] = {
                "process": process,
                "state": None if record is None else str(record.state),
                "epoch": None if record is None else record.epoch,
                "hosts": owned.get(server_id, 0),
            }
        return servers

    def _unowned_hosts(self) -> int:
        """Hosts a group left without a live owner: the row names no server Up at its
        ``owner_epoch`` while some server runs (its claims should have taken them)."""
        assert self.registry is not None
        if not any(self._running(s) for s in self.server_ids):
            return 0
        up = {r.id: r.epoch for r in self.registry.servers() if r.state is ServerState.UP}
        return sum(
            1
            for row in self.directory.list_hosts()
            if row.id in self.hosts
            and (
                row.management_server_id is None
                or up.get(row.management_server_id) != row.owner_epoch
            )
        )

    def _ha_applies(self, vm: _SimVm) -> bool:
        """Is ``vm`` one that cloudha's VM HA must bring back (spec §3.4)?

        HA-enabled, in a zone with ``vm.ha.enabled``, last on a Routing host
        whose hypervisor is not one that does its own HA (VMware, Hyper-V).
        In shadow mode (``cloudha.shadow``) cloudha brings nothing back by design.
        """
        if not vm.ha or not self.settings.vm_ha_enabled or self.settings.cloudha_shadow:
            return False
        host = self.hosts[vm.host or vm.original_host].spec
        return host.type is HostType.ROUTING and host.hypervisor not in (
            HypervisorType.VMWARE,
            HypervisorType.HYPERV,
        )

    def _recovery_possible(self, vm: _SimVm) -> bool:
        """Could ``vm``, running nowhere now, be restarted safely right now?

        Safe needs ``H``'s owner running and not isolated (the first server
        when ``H`` has no owner), a proof that the VM does not run on ``H``
        and room for it (:meth:`_capacity_elsewhere`).
        The proof exists when ``H`` answers its management server (its
        agent or hypervisor shows the VM is not there); or ``H`` has a BMC that
        answers (a fence can be confirmed); or ``H`` is off or hung and its
        heartbeat writer has a self-fence guarantee (a watchdog) while a
        powered neighbour reads one of its pools (staleness then proves
        death); or ``H`` is an unpowered XenServer with a reachable pool
        member of its cluster (the pool fences).
        """
        home = self.hosts[vm.host or vm.original_host]
        # The host's owner (the first server when it has none) must be running and not
        # isolated: it is the one that follows the host up.
        owner = self.world.owner(home) or self.server_ids[0]
        if not self._running(owner) or owner in self.world.isolated_servers:
            return False
        return self._absence_provable(home) and self._capacity_elsewhere(vm)

    def _absence_provable(self, home: _SimHost) -> bool:
        """Can the server prove no VM runs on ``home`` now (see :meth:`_recovery_possible`)?"""
        if self.reachable(home) and (home.agent_running or home.spec.hypervisor.has_direct_agent):
            return True
        if home.spec.oobm != "none" and home.bmc_up:
            return True
        if (not home.powered or home.hung) and self._writes_heartbeat(home):
            if not getattr(home.spec, "watchdog", True):
                return False
            return any(
                other is not home
                and other.powered
                and not other.hung
                and not other.isolated
                and any(
                    p in home.spec.pools and p not in self.storage_out for p in other.spec.pools
                )
                for other in self.hosts.values()
            )
        if not home.powered and home.spec.hypervisor is HypervisorType.XEN_SERVER:
            return any(
                other is not home
                and other.spec.cluster == home.spec.cluster
                and other.spec.hypervisor is HypervisorType.XEN_SERVER
                and self.reachable(other)
                for other in self.hosts.values()
            )
        return False

    def _reads_pool_of(self, reader: _SimHost, host: _SimHost) -> bool:
        return any(p in host.spec.pools and p not in self.storage_out for p in reader.spec.pools)

    def _lost_work(self) -> int:
        """HA work lost: a Down host's HA VM never given a work, or a claim nobody will finish.

        A claim is stuck when the server holding it is running but took it
        before its own (re)start: it will never be processed or released. In
        a group a claim is also stuck when its holder is one the registry no
        longer has Up (declared departed, or gone Down) while a peer runs:
        the departure must have released it for a survivor to finish.
        VMs that VM HA leaves alone by design (``vm.ha.enabled`` false, a
        non-Routing host, VMware and Hyper-V hosts) never count.
        """
        missing = {
            vm
            for t, vm in self.ha_expected
            if self.ha_seen.get(vm, -1.0) < t and self._ha_applies(self.vms[vm])
        }
        finished = (Step.DONE, Step.CANCELLED, Step.ERROR)
        up: set[str] | None = None
        if self.registry is not None:
            up = {r.id for r in self.registry.servers() if r.state is ServerState.UP}
        survivor = any(self._running(s) for s in self.server_ids)
        stuck = 0
        for work in self.store.works_for_vms(sorted(self.vms)):
            holder = work.mgmt_server_id
            if holder is None or work.step in finished or work.taken is None:
                continue
            ms = self.procs.get(holder)
            if ms is not None and ms.alive:
                if work.taken.timestamp() < ms.started_at:
                    stuck += 1  # taken before its holder's (re)start
            elif up is not None and holder not in up and survivor:
                stuck += 1  # held by a departed server: the departure did not release it
        return len(missing) + stuck

    def _capacity_elsewhere(self, vm: _SimVm) -> bool:
        """Has some Up, Enabled, running host of ``vm``'s zone and hypervisor room for it?"""
        home = self.hosts[vm.original_host].spec
        for host_id, host in self.hosts.items():
            row = self.directory.find_host(host_id)
            if (
                row is None
                or row.status is not Status.UP
                or row.resource_state is not ResourceState.ENABLED
                or not host.powered
                or host.hung
                or host.spec.zone != home.zone
                or host.spec.hypervisor is not home.hypervisor
            ):
                continue
            capacity = host.spec.capacity
            if capacity is None:
                return True
            load = sum(1 for other in self.vms.values() if host_id in other.running_on)
            if load < capacity:
                return True
        return False


FAULT_EFFECTS: dict[str, Callable[[Simulation, str | None], None]] = {
    "host_crash": Simulation._fault_host_crash,
    "host_recover": Simulation._fault_host_recover,
    "host_hang": Simulation._fault_host_hang,
    "bmc_down": Simulation._fault_bmc_down,
    "bmc_up": Simulation._fault_bmc_up,
    "agent_stop": Simulation._fault_agent_stop,
    "agent_start": Simulation._fault_agent_start,
    "vm_crash": Simulation._fault_vm_crash,
    "mgmt_partition": Simulation._fault_mgmt_partition,
    "mgmt_heal": Simulation._fault_mgmt_heal,
    "host_isolation": Simulation._fault_host_isolation,
    "host_heal": Simulation._fault_host_heal,
    "heartbeat_stop": Simulation._fault_heartbeat_stop,
    "heartbeat_start": Simulation._fault_heartbeat_start,
    "storage_outage": Simulation._fault_storage_outage,
    "storage_heal": Simulation._fault_storage_heal,
    "ms_crash": Simulation._fault_ms_crash,
    "ms_restart": Simulation._fault_ms_restart,
    "ms_isolation": Simulation._fault_ms_isolation,
    "ms_heal": Simulation._fault_ms_heal,
    "ms_pause": Simulation._fault_ms_pause,
    "ms_resume": Simulation._fault_ms_resume,
    "orchestrator_outage": Simulation._fault_orchestrator_outage,
    "orchestrator_heal": Simulation._fault_orchestrator_heal,
}
"""What each fault kind does to the simulated world, keyed by kind (the scenario's ``kind``)."""


def simulate(scenario: Scenario | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Run a scenario (a :class:`Scenario`, a parsed TOML mapping, or a file path).

    Returns the JSON document of docs/simulator.md ("The JSON document") as a dict.
    """
    if isinstance(scenario, str | Path):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = parse_scenario(scenario)
    return Simulation(scenario).run()


def to_json(document: Mapping[str, Any]) -> str:
    """The document as canonical JSON text (stable for byte-identical comparisons)."""
    return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"
