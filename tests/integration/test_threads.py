"""The monitor on real threads and the real clock: agents ping, some die, the monitor notices."""

from __future__ import annotations

import threading

import pytest

from cloudha import (
    AgentManager,
    Evidence,
    EvidenceLog,
    Host,
    InvestigatorChain,
    MonitorTask,
    Pump,
    Settings,
    Status,
    SystemClock,
    Verdict,
)
from cloudha.testing import (
    FakeAgentGateway,
    InMemoryHostDirectory,
    RecordingAlertSink,
    RecordingHAScheduler,
    ScriptedInvestigator,
)

pytestmark = pytest.mark.integration


def test_killed_agents_are_detected_on_their_deadlines_with_real_threads() -> None:
    clock = SystemClock()
    settings = Settings.from_mapping({"ping.interval": 0.2, "ping.timeout": 2.5})
    timeout = settings.behind_on_ping_timeout  # 0.5 s
    hosts = [f"h{i}" for i in range(12)]
    killed = set(hosts[:4])
    directory = InMemoryHostDirectory(
        Host(h, status=Status.UP, management_server_id="ms1", cluster="c1") for h in hosts
    )
    investigator = ScriptedInvestigator(
        clock, "Scripted", script=dict.fromkeys(killed, Verdict.DEAD)
    )
    evidence = EvidenceLog()
    scheduler = RecordingHAScheduler()
    agents = AgentManager(
        management_server_id="ms1",
        settings=settings,
        clock=clock,
        directory=directory,
        gateway=FakeAgentGateway(),
        chain=InvestigatorChain([investigator]),
        scheduler=scheduler,
        alerts=RecordingAlertSink(),
        evidence=evidence,
    )
    for h in hosts:
        agents.ping_map.connect(h)
    detected: list[Evidence] = []
    all_down = threading.Event()

    def status(host_id: str) -> Status | None:
        host = directory.find_host(host_id)
        return None if host is None else host.status

    def watch(record: Evidence) -> None:
        if record.kind == "behind_on_ping":
            detected.append(record)
        down = [h for h in hosts if status(h) is Status.DOWN]
        if record.kind == "host_status" and len(down) == len(killed):
            all_down.set()

    evidence.subscribe(watch)
    stop = threading.Event()
    dead = threading.Event()
    last_ping: dict[str, float] = {}

    def agent_loop() -> None:
        while not stop.is_set():
            for h in hosts:
                if h in killed and dead.is_set():
                    continue
                last_ping[h] = clock.monotonic()
                agents.ping_received(h)
            stop.wait(settings.ping_interval)

    pinger = threading.Thread(target=agent_loop, name="agents", daemon=True)
    monitor = MonitorTask(agents)
    pump = Pump("AgentMonitor", monitor.tick, clock=clock)
    pinger.start()
    pump.start()
    try:
        stop.wait(0.6)
        dead.set()
        assert all_down.wait(10), [r.kind for r in evidence.records()]
    finally:
        stop.set()
        pump.stop()
        pinger.join(5)
    assert {r.host for r in detected} == killed
    for record in detected:
        since = record.details["since_last_ping"]
        assert timeout < since <= timeout + monitor.resolution + 0.25, record
    assert {s.host_id for s in scheduler.scheduled} == killed
    for h in set(hosts) - killed:
        assert status(h) is Status.UP
