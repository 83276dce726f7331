"""The deterministic simulator: the real library on virtual time.

Simulated hosts run agents that ping, VMs, and a network that faults can
cut; the management server side is the real :class:`~cloudha.detection.AgentManager`,
:class:`~cloudha.detection.MonitorTask`, :class:`~cloudha.detection.PingTask`
and status machine, driven by a :class:`~cloudha.testing.FakeClock` through
a discrete-event queue. The same scenario and seed always give the same
document (ARCHITECTURE.md §3.1).

What is simulated in this version: host power, agent processes, the
management network (per host, per management server), management server
crash and restart (the host table survives, memory does not), and the
invariant checker. Storage heartbeats, BMCs and VM restarts come with the
investigators, fencing and HA work queue; their fault kinds are accepted and
reported as ``unsupported``.
"""

from __future__ import annotations

import functools
import heapq
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from cloudha.detection import AgentManager, MonitorTask, PingTask
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.evidence import Evidence, Recorder
from cloudha.investigators import InvestigatorChain
from cloudha.model import Host
from cloudha.ports import PingReport
from cloudha.status import Status
from cloudha.testing.clock import FakeClock
from cloudha.testing.fakes import (
    InMemoryHostDirectory,
    RecordingAlertSink,
    RecordingHAScheduler,
)
from cloudha.testing.scenario import (
    SUPPORTED_FAULT_KINDS,
    HostSpec,
    Scenario,
    load_scenario,
    parse_scenario,
)

__all__ = ["Simulation", "simulate"]

MANAGEMENT_SERVER_ID = "ms1"
BOOT_SECONDS = 60.0
"""Seconds from power-on (``host_recover``) until the host's agent runs."""
AGENT_START_SECONDS = 1.0
"""Seconds from ``agent_start`` until the agent tries to connect."""


class _Timeline:
    """Evidence sink that keeps the JSON events in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, evidence: Evidence) -> None:
        self.events.append(evidence.to_event())


@attrs.define
class _SimHost:
    spec: HostSpec
    powered: bool = True
    agent_running: bool = True
    mgmt_link: bool = True
    isolated: bool = False
    connected: bool = True
    died: bool = False


@attrs.define
class _SimVm:
    id: str
    ha: bool
    original_host: str
    running_on: set[str] = attrs.Factory(set)
    last_host: str | None = None

    @property
    def host(self) -> str | None:
        return min(self.running_on) if self.running_on else self.last_host


class _ManagementServer:
    def __init__(self, sim: Simulation, epoch: int) -> None:
        self.epoch = epoch
        self.alive = True
        self.agents = AgentManager(
            management_server_id=MANAGEMENT_SERVER_ID,
            settings=sim.settings,
            clock=sim.clock,
            directory=sim.directory,
            gateway=_Gateway(sim),
            chain=InvestigatorChain(
                [],
                order=sim.settings.ha_investigators_order,
                exclude=sim.settings.ha_investigators_exclude,
            ),
            scheduler=sim.scheduler,
            alerts=sim.alerts,
            evidence=sim.timeline,
        )
        self.monitor = MonitorTask(self.agents)


class _Gateway:
    """Answers CheckHealth for agents the management server can reach."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def check_health(self, host: Host, *, timeout: float) -> bool:
        sim_host = self.sim.hosts[host.id]
        if not self.sim.reachable(sim_host):
            raise ProbeTimeout(f"no answer from {host.id} within {timeout:g}s", host_id=host.id)
        if not sim_host.agent_running:
            raise ProbeConnectionError(
                f"agent of {host.id} refused the connection", host_id=host.id
            )
        return True

    def send(self, host: Host, command: Any, *, timeout: float) -> Any:
        raise ProbeConnectionError(f"{command.name} is not simulated", host_id=host.id)


class _DirectResource:
    """The management-server-side resource of a directly managed simulated host."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def current_status(self, host: Host) -> PingReport | None:
        sim_host = self.sim.hosts[host.id]
        if self.sim.reachable(sim_host) and sim_host.agent_running:
            return PingReport(host.id)
        return None


class Simulation:
    """One run of a scenario. Use :func:`simulate` unless you need the pieces."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.settings = scenario.settings
        self.clock = FakeClock(0.0)
        self.rng = random.Random(scenario.seed)
        self.timeline = _Timeline()
        self.recorder = Recorder(self.timeline, self.clock, "simulator")
        self.alerts = RecordingAlertSink()
        self.scheduler = RecordingHAScheduler()
        self.directory = InMemoryHostDirectory()
        self.hosts: dict[str, _SimHost] = {}
        self.vms: dict[str, _SimVm] = {}
        self.ms_isolated = False
        self.unsupported: list[dict[str, Any]] = []
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._epoch = 0
        for spec in scenario.hosts:
            self.hosts[spec.id] = _SimHost(spec)
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
                    last_ping=0.0,
                    management_server_id=MANAGEMENT_SERVER_ID,
                )
            )
        for vm in scenario.vms:
            self.vms[vm.id] = _SimVm(vm.id, vm.ha, vm.host, {vm.host}, vm.host)
        self.ms: _ManagementServer | None = None

    # -- the event queue ---------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, action))

    def run(self) -> dict[str, Any]:
        self._start_ms(first=True)
        for fault in self.scenario.faults:
            self.at(fault.at, functools.partial(self._fault, fault.kind, fault.target))
        interval = self.settings.ping_interval
        for host_id in self.hosts:
            phase = self.rng.uniform(0.0, interval)
            if self.hosts[host_id].spec.hypervisor.has_direct_agent:
                continue
            self.at(phase, functools.partial(self._agent_slot, host_id))
        until = self.scenario.until
        while self._queue and self._queue[0][0] <= until:
            when, _, action = heapq.heappop(self._queue)
            self.clock.set(when)
            action()
        self.clock.set(until)
        return self._document()

    # -- reachability --------------------------------------------------------

    def reachable(self, host: _SimHost) -> bool:
        """Can the management server and the host's agent talk right now?"""
        ms = self.ms
        return (
            ms is not None
            and ms.alive
            and not self.ms_isolated
            and host.powered
            and host.mgmt_link
            and not host.isolated
        )

    # -- management server ---------------------------------------------------

    def _start_ms(self, *, first: bool) -> None:
        self._epoch += 1
        ms = _ManagementServer(self, self._epoch)
        self.ms = ms
        if first:
            for host in self.directory.list_hosts():
                ms.agents.ping_map.connect(host.id, host.type)
        else:
            ms.agents.mark_hosts_as_disconnected()
        interval = self.settings.ping_interval
        resource = _DirectResource(self)
        for host_id, sim_host in self.hosts.items():
            if sim_host.spec.hypervisor.has_direct_agent:
                row = self.directory.find_host(host_id)
                assert row is not None
                task = PingTask(
                    row,
                    resource,
                    self._direct_ping(ms, host_id),
                    settings=self.settings,
                    clock=self.clock,
                )
                self.at(
                    self.clock.monotonic() + self.rng.uniform(0.0, interval),
                    functools.partial(self._ping_task_tick, task, ms.epoch),
                )
        self.at(
            self.clock.monotonic() + ms.monitor.next_delay(), lambda: self._monitor_tick(ms.epoch)
        )

    def _current(self, epoch: int) -> _ManagementServer | None:
        ms = self.ms
        if ms is None or not ms.alive or ms.epoch != epoch:
            return None
        return ms

    def _monitor_tick(self, epoch: int) -> None:
        ms = self._current(epoch)
        if ms is None:
            return
        delay = ms.monitor.tick()
        self.at(self.clock.monotonic() + delay, lambda: self._monitor_tick(epoch))

    def _ping_task_tick(self, task: PingTask, epoch: int) -> None:
        if self._current(epoch) is None:
            return
        delay = task.tick()
        self.at(self.clock.monotonic() + delay, lambda: self._ping_task_tick(task, epoch))

    def _direct_ping(self, ms: _ManagementServer, host_id: str) -> Callable[[PingReport], None]:
        def on_ping(report: PingReport) -> None:
            if not ms.agents.ping_received(report):
                # The host answers but is no longer monitored: load it again.
                ms.agents.agent_connected(host_id)

        return on_ping

    # -- agents ---------------------------------------------------------------

    def _agent_slot(self, host_id: str) -> None:
        host = self.hosts[host_id]
        self.at(
            self.clock.monotonic() + self.settings.ping_interval, lambda: self._agent_slot(host_id)
        )
        if not (host.powered and host.agent_running):
            return
        if not self.reachable(host):
            host.connected = False  # the agent's ping failed: it drops the link
            return
        assert self.ms is not None
        if host.connected and self.ms.agents.ping_received(host_id):
            return
        self._connect(host)

    def _connect(self, host: _SimHost) -> None:
        if self.ms is None or not self.reachable(host) or not host.agent_running:
            return
        host.connected = self.ms.agents.agent_connected(host.spec.id)

    # -- faults ---------------------------------------------------------------

    def _fault(self, kind: str, target: str | None) -> None:
        if kind not in SUPPORTED_FAULT_KINDS:
            self.unsupported.append(
                {"t": round(self.clock.monotonic(), 3), "kind": kind, "target": target}
            )
            self.recorder.emit(
                "fault",
                reason="fault kind not simulated in this version",
                fault=kind,
                target=target,
                status="unsupported",
            )
            return
        self.recorder.emit(
            "fault", reason="fault injected", fault=kind, target=target, status="applied"
        )
        host = self.hosts.get(target) if target is not None else None
        now = self.clock.monotonic()
        if kind == "host_crash":
            assert host is not None
            host.powered = host.agent_running = host.connected = False
            host.died = True
            for vm in self.vms.values():
                vm.running_on.discard(host.spec.id)
        elif kind == "host_recover":
            assert host is not None
            if not host.powered:
                host.powered = True
                self.at(now + BOOT_SECONDS, lambda: self._boot_done(host))
        elif kind == "agent_stop":
            assert host is not None
            was_connected = host.connected and self.reachable(host)
            host.agent_running = host.connected = False
            if was_connected and not host.spec.hypervisor.has_direct_agent:
                assert self.ms is not None
                self.ms.agents.agent_link_closed(host.spec.id)  # the socket closes at once
        elif kind == "agent_start":
            assert host is not None
            if host.powered and not host.agent_running:
                host.agent_running = True
                self.at(now + AGENT_START_SECONDS, lambda: self._connect_indirect(host))
        elif kind == "mgmt_partition":
            assert host is not None
            host.mgmt_link = False
        elif kind == "mgmt_heal":
            assert host is not None
            host.mgmt_link = True
        elif kind == "host_isolation":
            assert host is not None
            host.isolated = True
        elif kind == "host_heal":
            assert host is not None
            host.isolated = False
        elif kind == "ms_crash":
            if self.ms is not None and self.ms.alive:
                self.ms.alive = False
                for sim_host in self.hosts.values():
                    sim_host.connected = False
        elif kind == "ms_restart":
            if self.ms is None or not self.ms.alive:
                self._start_ms(first=False)
        elif kind == "ms_isolation":
            self.ms_isolated = True
        elif kind == "ms_heal":
            self.ms_isolated = False

    def _boot_done(self, host: _SimHost) -> None:
        if host.powered and not host.agent_running:
            host.agent_running = True
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
        vms: dict[str, Any] = {}
        for vm in self.vms.values():
            vms[vm.id] = {"state": "Running" if vm.running_on else "Stopped", "host": vm.host}
        return {
            "scenario": {
                "source": self.scenario.source,
                "seed": self.scenario.seed,
                "until": self.scenario.until,
                "hosts": len(self.hosts),
                "vms": len(self.vms),
            },
            "events": self.timeline.events,
            "final": {"hosts": hosts, "vms": vms},
            "invariants": self._invariants(vms),
            "unsupported_faults": self.unsupported,
            "ha_scheduled": [
                {"host": s.host_id, "investigate": s.investigate, "reason": str(s.reason)}
                for s in self.scheduler.scheduled
            ],
        }

    def _invariants(self, vms: Mapping[str, Any]) -> dict[str, int]:
        unrecovered = 0
        for vm in self.vms.values():
            if not vm.ha or not self.hosts[vm.original_host].died:
                continue
            if vms[vm.id]["state"] == "Running":
                continue
            if self._capacity_elsewhere(vm.original_host):
                unrecovered += 1
        return {
            "double_run": sum(1 for vm in self.vms.values() if len(vm.running_on) > 1),
            "fenced_alive_host": 0,
            "lost_work": 0,
            "unrecovered_ha_vm": unrecovered,
        }

    def _capacity_elsewhere(self, dead_host: str) -> bool:
        for host_id, host in self.hosts.items():
            if host_id == dead_host or not host.powered:
                continue
            capacity = host.spec.capacity
            if capacity is None:
                return True
            load = sum(1 for vm in self.vms.values() if host_id in vm.running_on)
            if load < capacity:
                return True
        return False


def simulate(scenario: Scenario | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Run a scenario (a :class:`Scenario`, a parsed TOML mapping, or a file path).

    Returns the JSON document of ARCHITECTURE.md §3.1 as a dict.
    """
    if isinstance(scenario, str | Path):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = parse_scenario(scenario)
    return Simulation(scenario).run()


def to_json(document: Mapping[str, Any]) -> str:
    """The document as canonical JSON text (stable for byte-identical comparisons)."""
    return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"
