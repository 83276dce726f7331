from __future__ import annotations

from typing import Any

import attrs
import pytest

from cloudha import (
    AgentManager,
    EvidenceLog,
    Host,
    HostType,
    InvestigatorChain,
    MonitorTask,
    ResourceState,
    Settings,
    Status,
)
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    RecordingAlertSink,
    RecordingHAScheduler,
    ScriptedInvestigator,
)


@attrs.define
class World:
    clock: FakeClock
    settings: Settings
    directory: InMemoryHostDirectory
    gateway: FakeAgentGateway
    investigator: ScriptedInvestigator
    scheduler: RecordingHAScheduler
    alerts: RecordingAlertSink
    evidence: EvidenceLog
    agents: AgentManager
    monitor: MonitorTask

    def add_host(
        self,
        host_id: str,
        *,
        status: Status | None = Status.UP,
        resource_state: ResourceState = ResourceState.ENABLED,
        host_type: HostType = HostType.ROUTING,
        last_ping: float | None = None,
        connect: bool = True,
    ) -> Host:
        host = Host(
            id=host_id,
            status=status,
            resource_state=resource_state,
            type=host_type,
            cluster="c1",
            last_ping=self.clock.monotonic() if last_ping is None else last_ping,
            management_server_id="ms1",
        )
        self.directory.add(host)
        if connect:
            self.agents.ping_map.connect(host_id, host_type)
        return host

    def status(self, host_id: str) -> Status | None:
        host = self.directory.find_host(host_id)
        assert host is not None
        return host.status

    def kinds(self, host_id: str | None = None) -> list[str]:
        return [r.kind for r in self.evidence.records(host=host_id)]

    def run_monitor(self, until: float) -> int:
        """Tick the monitor on virtual time until ``until``; returns the number of ticks."""
        ticks = 0
        while True:
            delay = self.monitor.tick()
            ticks += 1
            if self.clock.monotonic() + delay > until:
                self.clock.set(until)
                return ticks
            self.clock.advance(delay)


def make_world(settings: dict[str, Any] | None = None) -> World:
    clock = FakeClock(10_000.0)
    cfg = Settings.from_mapping(settings or {})
    directory = InMemoryHostDirectory()
    gateway = FakeAgentGateway()
    investigator = ScriptedInvestigator(clock, "Scripted", script={})
    scheduler = RecordingHAScheduler()
    alerts = RecordingAlertSink()
    evidence = EvidenceLog()
    agents = AgentManager(
        management_server_id="ms1",
        settings=cfg,
        clock=clock,
        directory=directory,
        gateway=gateway,
        chain=InvestigatorChain([investigator]),
        scheduler=scheduler,
        alerts=alerts,
        evidence=evidence,
    )
    return World(
        clock,
        cfg,
        directory,
        gateway,
        investigator,
        scheduler,
        alerts,
        evidence,
        agents,
        MonitorTask(agents),
    )


@pytest.fixture
def world() -> World:
    return make_world()
