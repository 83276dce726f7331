"""ManagementServer: assembly, port validation, recovery from durable state, VM sync."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import pytest
import sqlalchemy as sa

from cloudha import (
    Answer,
    ConfigurationError,
    EvidenceLog,
    FenceChain,
    FenceOutcome,
    Host,
    InvestigatorChain,
    ManagementServer,
    ReasonType,
    Settings,
    Status,
    StatusChange,
    Verdict,
    Vm,
    VmState,
)
from cloudha.ha.store import Step, WorkType
from cloudha.hostha import HAExecutors, HAProviderConfig, HAState
from cloudha.ports import PingReport
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeOrchestratorHost,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedHAProvider,
    ScriptedInvestigator,
    check_agent_gateway,
    check_host_directory,
)

HOSTS = ("h1", "h2", "h3")


class Cloud:
    """The ports of a small cloud, shared by the servers built over it (durable state)."""

    def __init__(self, vms: Iterable[Vm] = ()) -> None:
        self.clock = FakeClock(1000.0)
        self.settings = Settings.from_mapping({"ping.interval": 10})
        self.directory = InMemoryHostDirectory(
            Host(h, status=Status.UP, last_ping=1000.0, management_server_id="ms1") for h in HOSTS
        )
        self.gateway = FakeAgentGateway(dict.fromkeys(HOSTS, True))
        self.orchestrator = InMemoryOrchestrator(
            [FakeOrchestratorHost(h) for h in HOSTS],
            list(vms) or [Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)],
        )
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        self.investigator = ScriptedInvestigator(self.clock)
        self.fencer = ScriptedFencer(self.clock, default=FenceOutcome.FENCED)
        self.engine = sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )

    def server(self, **overrides: object) -> ManagementServer:
        ports: dict[str, object] = {
            "settings": self.settings,
            "clock": self.clock,
            "directory": self.directory,
            "gateway": self.gateway,
            "orchestrator": self.orchestrator,
            "alerts": self.alerts,
            "engine": self.engine,
            "evidence": self.evidence,
            "investigators": InvestigatorChain([self.investigator]),
            "fence_chain": FenceChain([self.fencer], clock=self.clock),
            "discover_plugins": False,
        }
        ports.update(overrides)
        return ManagementServer(**ports)  # type: ignore[arg-type]

    def status(self, host_id: str) -> Status | None:
        host = self.directory.find_host(host_id)
        assert host is not None
        return host.status

    def set_status(self, host_id: str, status: Status, owner: str | None = None) -> None:
        host = self.directory.find_host(host_id)
        assert host is not None
        self.directory.replace(attrs.evolve(host, status=status, management_server_id=owner))

    def kill(self, host_id: str) -> None:
        self.gateway.healthy[host_id] = None
        self.investigator.script[host_id] = Verdict.DEAD
        self.investigator.script["vm1"] = Verdict.DEAD
        self.orchestrator.set_host_up(host_id, False)


def run(
    server: ManagementServer, clock: FakeClock, seconds: float, *, alive: Iterable[str]
) -> None:
    """Drive every loop of ``server`` on virtual time; hosts in ``alive`` ping each second."""
    loops = server.loops()
    due = {loop.name: clock.monotonic() for loop in loops}

    def wake() -> None:
        due.update({loop.name: clock.monotonic() for loop in loops if loop.wake_on_work})

    server.on_work_added = wake
    end = clock.monotonic() + seconds
    pinging = list(alive)
    while clock.monotonic() < end:
        for host_id in pinging:
            if not server.agents.ping_received(host_id):
                server.agents.agent_connected(host_id)
        for loop in loops:
            if due[loop.name] <= clock.monotonic():
                due[loop.name] = clock.monotonic() + loop.tick()
        clock.advance(1.0)


def ha_works(server: ManagementServer, vm_id: str) -> list[tuple[WorkType, Step]]:
    return [(w.type, w.step) for w in server.store.works_for_vm(vm_id)]


# -- ports ------------------------------------------------------------------------


class _NoUpdate:
    def find_host(self, host_id: str) -> Host | None:
        return None

    def list_hosts(self, **_: object) -> list[Host]:
        return []


def test_a_port_missing_a_method_is_rejected_naming_port_and_method() -> None:
    cloud = Cloud()
    with pytest.raises(ConfigurationError, match=r"port directory .*update_status") as err:
        cloud.server(directory=_NoUpdate())
    assert err.value.key == "directory"


def test_a_non_callable_attribute_is_rejected() -> None:
    cloud = Cloud()

    class Gateway(FakeAgentGateway):
        send = 3  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match=r"port gateway .*send is not callable"):
        cloud.server(gateway=Gateway())


def test_the_work_queue_is_an_engine_or_a_store_never_neither() -> None:
    cloud = Cloud()
    with pytest.raises(ConfigurationError, match="engine"):
        cloud.server(engine=None)


def test_it_builds_and_exposes_every_component() -> None:
    server = Cloud().server()
    assert server.agents.ping_map is server.ping_map
    assert server.monitor.agents is server.agents
    assert server.ha.store is server.store
    assert server.ha.fence_chain is server.fence_chain
    assert [loop.name for loop in server.loops()] == [
        "AgentMonitor",
        "HA-Worker-0",
        "HA-Worker-1",
        "HA-Worker-2",
        "HA-Worker-3",
        "HA-Worker-4",
        "HA-Cleanup",
    ]
    assert [loop.wake_on_work for loop in server.loops()].count(True) == 5


# -- a dead host's VMs are restarted ------------------------------------------------


def test_a_dead_host_is_declared_down_and_its_ha_vm_restarted_elsewhere() -> None:
    cloud = Cloud()
    server = cloud.server()
    assert server.recover()
    cloud.kill("h1")
    run(server, cloud.clock, 120, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DOWN
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id in ("h2", "h3")
    assert ha_works(server, "vm1") == [(WorkType.HA, Step.DONE)]


# -- recovery from durable state ---------------------------------------------------


def test_a_host_left_in_alert_by_a_dead_server_is_rechecked_and_recovered() -> None:
    cloud = Cloud()
    cloud.kill("h1")
    cloud.set_status("h1", Status.ALERT)  # the previous process left it there and died
    server = cloud.server()
    server.recover()
    assert "h1" in server.agents.alert_watch
    run(server, cloud.clock, 60, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DOWN
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id != "h1"


def test_a_disconnected_host_whose_agent_never_returns_is_investigated() -> None:
    cloud = Cloud()
    cloud.kill("h1")
    cloud.set_status("h1", Status.DISCONNECTED)
    server = cloud.server()
    server.recover()
    run(server, cloud.clock, 5, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DISCONNECTED  # one ping.interval to reconnect first
    run(server, cloud.clock, 60, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DOWN
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.host_id != "h1"


def test_a_disconnected_host_whose_agent_reconnects_is_up_again() -> None:
    cloud = Cloud()
    cloud.set_status("h1", Status.DISCONNECTED)
    server = cloud.server()
    server.recover()
    run(server, cloud.clock, 60, alive=HOSTS)
    assert cloud.status("h1") is Status.UP
    assert "h1" not in server.agents.alert_watch
    assert cloud.investigator.asked == []


def test_a_down_host_without_works_gets_them_at_start() -> None:
    cloud = Cloud()
    cloud.kill("h1")
    cloud.set_status("h1", Status.DOWN)  # declared Down, then the server died before scheduling
    server = cloud.server()
    server.recover()
    run(server, cloud.clock, 30, alive=("h2", "h3"))
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id != "h1"
    assert [e.kind for e in cloud.evidence.records(kind="ha_scheduled")] == ["ha_scheduled"]


def test_hosts_of_another_server_are_not_adopted() -> None:
    cloud = Cloud()
    cloud.set_status("h1", Status.ALERT, owner="ms2")
    server = cloud.server()
    server.recover()
    assert server.agents.alert_watch == frozenset()


def test_a_down_host_whose_vms_have_work_is_not_handed_over_again() -> None:
    cloud = Cloud()
    cloud.kill("h1")
    first = cloud.server()
    first.recover()
    run(first, cloud.clock, 120, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DOWN
    scheduled = len(cloud.evidence.records(kind="ha_scheduled"))
    second = cloud.server()
    second.recover()
    run(second, cloud.clock, 30, alive=("h2", "h3"))
    assert len(cloud.evidence.records(kind="ha_scheduled")) == scheduled
    assert ha_works(second, "vm1") == [(WorkType.HA, Step.DONE)]


def test_recovery_that_fails_is_retried_by_the_monitor_loop() -> None:
    cloud = Cloud()
    cloud.kill("h1")
    cloud.set_status("h1", Status.ALERT)
    broken = {"on": True}
    real = cloud.directory.list_hosts

    def list_hosts(**kw: object) -> object:
        if broken["on"]:
            raise ConnectionError("directory down")
        return real(**kw)  # type: ignore[arg-type]

    cloud.directory.list_hosts = list_hosts  # type: ignore[method-assign,assignment]
    server = cloud.server()
    assert not server.recover()
    assert cloud.evidence.records(kind="recovery_failed")
    broken["on"] = False
    run(server, cloud.clock, 60, alive=("h2", "h3"))
    assert server.recovered
    assert cloud.status("h1") is Status.DOWN


# -- a failed hand-over is retried ---------------------------------------------------


def test_a_failed_hand_over_is_retried_with_backoff_until_the_works_exist() -> None:
    cloud = Cloud()
    server = cloud.server()
    server.recover()
    failures = {"left": 3}
    real = cloud.orchestrator.list_vms_on_host

    def flaky(host_id: str) -> object:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("orchestrator down")
        return real(host_id)

    cloud.orchestrator.list_vms_on_host = flaky  # type: ignore[method-assign,assignment]
    cloud.kill("h1")
    run(server, cloud.clock, 120, alive=("h2", "h3"))
    failed = cloud.evidence.records(kind="ha_schedule_failed")
    assert [e.details["attempt"] for e in failed] == [1, 2, 3]
    retry_in = [e.details["retry_in"] for e in failed]
    assert retry_in == sorted(retry_in)
    assert retry_in[0] < retry_in[-1]
    scheduled = cloud.evidence.records(kind="ha_scheduled")
    assert len(scheduled) == 1
    assert scheduled[0].t > failed[-1].t
    assert server.agents.pending_hand_overs == frozenset()
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id != "h1"


# -- VM sync on reconnect ----------------------------------------------------------


def test_a_host_that_reconnects_without_its_ha_vm_gets_it_restarted() -> None:
    cloud = Cloud(
        [
            Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True),
            Vm("vm2", host_id="h1", last_host_id="h1", ha_enabled=False),
            Vm("vm3", host_id="h1", last_host_id="h1", ha_enabled=True),
        ]
    )
    server = cloud.server()
    server.recover()
    cloud.investigator.script["vm1"] = Verdict.DEAD  # the host no longer runs it
    server.ping_map.disconnect("h1")  # the power cycle: the agent comes back
    assert server.agents.agent_connected("h1", vms=["vm3"])
    vm2 = cloud.orchestrator.find_vm("vm2")
    assert vm2 is not None
    assert vm2.state is VmState.STOPPED
    synced = cloud.evidence.records(kind="vm_sync")
    assert [(e.vm, e.details["restart"]) for e in synced] == [("vm1", True), ("vm2", False)]
    run(server, cloud.clock, 30, alive=HOSTS)
    vm1 = cloud.orchestrator.find_vm("vm1")
    assert vm1 is not None
    assert vm1.state is VmState.RUNNING
    vm3 = cloud.orchestrator.find_vm("vm3")
    assert vm3 is not None
    assert vm3.state is VmState.RUNNING
    assert vm3.host_id == "h1"
    assert ha_works(server, "vm3") == []


def test_a_reconnect_without_the_vm_supersedes_a_host_down_work_that_is_never_cancelled() -> None:
    # vm1 has the Investigating HostDown work of a failed fence. h1 comes back
    # without it, but no investigator can say h1 is Up (nobody to ask), so
    # that work is never cancelled: the VM sync's restart must supersede it,
    # or it ends as "the VM has been changed" and vm1 stays Stopped.
    cloud = Cloud([Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)])
    server = cloud.server()
    server.recover()
    vm1 = cloud.orchestrator.find_vm("vm1")
    assert vm1 is not None
    old = server.ha.schedule_restart(vm1, investigate=True, reason=ReasonType.HOST_DOWN)
    assert old is not None
    server.ping_map.disconnect("h1")
    assert server.agents.agent_connected("h1", vms=[])
    (synced,) = cloud.evidence.records(kind="vm_sync")
    assert (synced.vm, synced.details["restart"]) == ("vm1", True)
    assert ha_works(server, "vm1") == [
        (WorkType.HA, Step.INVESTIGATING),
        (WorkType.HA, Step.INVESTIGATING),
    ]
    run(server, cloud.clock, 30, alive=HOSTS)
    vm1 = cloud.orchestrator.find_vm("vm1")
    assert vm1 is not None
    assert vm1.state is VmState.RUNNING
    reasons = [e.reason for e in cloud.evidence.records(kind="ha_work") if e.vm == "vm1"]
    assert any(r.startswith("superseded by HA work") for r in reasons), reasons


def test_a_vm_missing_from_every_ping_report_over_the_grace_is_synced() -> None:
    # A host that rebooted without being declared Down (no reconnect) reports
    # no vm1: after 2 x ping.interval of reports without it, vm1 is stopped and
    # restarted; one report without vm1 (a start in flight) is no reason.
    cloud = Cloud(
        [
            Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True),
            Vm("vm2", host_id="h1", last_host_id="h1", ha_enabled=True),
        ]
    )
    server = cloud.server()
    server.recover()
    report = PingReport("h1", vms=frozenset({"vm2"}))
    assert server.agents.ping_received(report)
    cloud.clock.advance(10.0)
    assert server.agents.ping_received(PingReport("h1", vms=frozenset({"vm1", "vm2"})))
    cloud.clock.advance(20.0)
    assert server.agents.ping_received(report)  # vm1 missing again: a new grace starts
    cloud.clock.advance(20.0)
    assert server.agents.ping_received(report)
    assert cloud.evidence.records(kind="vm_sync") == []  # 20 s is not more than the grace
    cloud.clock.advance(0.5)
    assert server.agents.ping_received(report)
    synced = cloud.evidence.records(kind="vm_sync")
    assert [(e.vm, e.details["restart"]) for e in synced] == [("vm1", True)]
    assert "has not reported vm1 for more than 20s" in synced[0].reason
    vm1 = cloud.orchestrator.find_vm("vm1")
    assert vm1 is not None
    assert vm1.state is VmState.STOPPED
    assert ha_works(server, "vm1") == [(WorkType.HA, Step.INVESTIGATING)]
    assert ha_works(server, "vm2") == []


def test_a_failing_vm_sync_never_breaks_the_ping_path() -> None:
    cloud = Cloud()
    server = cloud.server()
    server.recover()

    def broken(host_id: str) -> list[Vm]:
        raise ConnectionError("orchestrator down")

    cloud.orchestrator.list_vms_on_host = broken  # type: ignore[method-assign]
    assert server.agents.ping_received(PingReport("h1", vms=frozenset()))
    assert [e.reason for e in cloud.evidence.records(kind="vm_sync_failed")] == [
        "VM sync failed: orchestrator down"
    ]


def test_agent_connected_without_a_report_syncs_nothing() -> None:
    cloud = Cloud()
    server = cloud.server()
    server.ping_map.disconnect("h1")
    assert server.agents.agent_connected("h1")
    assert cloud.evidence.records(kind="vm_sync") == []


# -- port contract checkers ----------------------------------------------------------


def test_the_fake_directory_and_gateway_keep_their_contracts() -> None:
    cloud = Cloud()
    check_host_directory(cloud.directory, "h1")
    live = cloud.directory.find_host("h1")
    dead = cloud.directory.find_host("h2")
    assert live is not None
    assert dead is not None
    cloud.gateway.healthy["h2"] = None
    cloud.gateway.handler = lambda host, command: Answer(True)
    check_agent_gateway(cloud.gateway, live, dead)


def test_the_directory_checker_catches_a_directory_that_is_not_optimistic() -> None:
    class Blind(InMemoryHostDirectory):
        def update_status(self, change: StatusChange) -> bool:  # ignores the expected count
            return super().update_status(
                attrs.evolve(change, expected_update_count=self._count(change.host_id))
            )

        def _count(self, host_id: str) -> int:
            host = self.find_host(host_id)
            return 0 if host is None else host.update_count

    directory = Blind([Host("h1", status=Status.UP)])
    with pytest.raises(AssertionError, match="stale update_count returned True"):
        check_host_directory(directory, "h1")


def test_the_gateway_checker_catches_a_gateway_that_raises_the_wrong_error() -> None:
    class Sloppy(FakeAgentGateway):
        def check_health(self, host: Host, *, timeout: float) -> bool:
            if host.id == "h2":
                raise KeyError(host.id)
            return True

    gateway = Sloppy(handler=lambda host, command: Answer(True))
    with pytest.raises(AssertionError, match=r"check_health\(dead\) raised KeyError"):
        check_agent_gateway(gateway, Host("h1"), Host("h2"))


def test_a_first_start_with_connected_agents_monitors_them_without_marking_them() -> None:
    cloud = Cloud()
    server = cloud.server()
    assert server.recover(connected=["h1", "h2"])
    assert [cloud.status(h) for h in HOSTS] == [Status.UP, Status.UP, Status.DISCONNECTED]
    assert set(server.ping_map.hosts()) == set(HOSTS)  # h3 with its fresh grace


def judging(server: ManagementServer, clock: FakeClock) -> None:
    """Let ``server``'s freshness see enough fresh intervals to judge (docs/safety.md)."""
    for _ in range(server.settings.cloudha_freshness_resume_intervals):
        server.freshness.evaluate()
        clock.advance(server.settings.ping_interval / 2)
    server.freshness.evaluate()
    assert server.freshness.judging()


def test_a_worker_claims_nothing_while_the_servers_view_is_not_fresh() -> None:
    cloud = Cloud()
    server = cloud.server()
    server.recover()
    cloud.kill("h1")
    cloud.set_status("h1", Status.DOWN)
    host = cloud.directory.find_host("h1")
    assert host is not None
    server.ha.schedule_restart_for_vms_on_host(host, investigate=True, reason=ReasonType.HOST_DOWN)
    assert not server.freshness.judging()  # a new server first watches its view fill up
    assert server.work_tick(0) == min(server.settings.time_to_sleep, server.settings.ping_interval)
    (work,) = server.store.works_for_vm("vm1")
    assert work.mgmt_server_id is None
    judging(server, cloud.clock)
    server.work_tick(0)
    (work,) = server.store.works_for_vm("vm1")
    assert work.step is Step.DONE


def test_with_work_seconds_a_worker_holds_its_claim_for_one_tick() -> None:
    cloud = Cloud()
    server = cloud.server(work_seconds=2.5)
    server.recover()
    judging(server, cloud.clock)
    cloud.kill("h1")
    cloud.set_status("h1", Status.DOWN)
    host = cloud.directory.find_host("h1")
    assert host is not None
    server.ha.schedule_restart_for_vms_on_host(host, investigate=True, reason=ReasonType.HOST_DOWN)
    assert server.work_tick(0) == 2.5  # claimed, held
    (work,) = server.store.works_for_vm("vm1")
    assert work.mgmt_server_id == "ms1"
    assert work.step is Step.INVESTIGATING
    assert server.work_tick(0) == 0.0  # processed
    (work,) = server.store.works_for_vm("vm1")
    assert work.step is Step.DONE


def test_work_seconds_must_be_finite_and_not_negative() -> None:
    with pytest.raises(ConfigurationError, match="work_seconds"):
        Cloud().server(work_seconds=-1)


# -- Host-HA ---------------------------------------------------------------------


def test_host_ha_is_wired_only_with_a_provider_and_speaks_first_for_its_hosts() -> None:
    cloud = Cloud()
    assert cloud.server().host_ha is None  # no provider: no Host-HA, no loop, no bridge
    provider = ScriptedHAProvider()
    server = cloud.server(
        ha_providers=[provider], host_ha_executors=HAExecutors.inline(cloud.clock)
    )
    assert server.host_ha is not None
    assert server.investigators.names == ["HostHAInvestigator", "Scripted"]
    assert [loop.name for loop in server.loops()][-1] == "HostHA-Poll"
    excluded = cloud.server(
        settings=Settings.from_mapping({"ha.investigators.exclude": ["HostHAInvestigator"]}),
        ha_providers=[provider],
    )
    assert excluded.investigators.names == ["Scripted"]


def test_a_host_ha_fence_declares_the_host_down_and_restarts_its_vms_unfenced() -> None:
    cloud = Cloud()
    provider = ScriptedHAProvider(
        HAProviderConfig(activity_check_interval=1.0, activity_check_max_attempts=2)
    )
    server = cloud.server(
        ha_providers=[provider], host_ha_executors=HAExecutors.inline(cloud.clock)
    )
    assert server.recover()
    assert server.host_ha is not None
    server.host_ha.configure("h1", provider.name)
    server.host_ha.enable("h1")
    # h1's agent stops answering; VM-HA alone cannot tell (the scripted chain says nothing).
    cloud.gateway.healthy["h1"] = None
    provider.healthy["h1"] = False
    provider.activity["h1"] = [False]
    provider.fences["h1"] = True
    run(server, cloud.clock, 300, alive=("h2", "h3"))
    assert cloud.status("h1") is Status.DOWN
    assert cloud.fencer.calls == []  # Host-HA fenced it: the fence chain was not asked
    vm = cloud.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id in ("h2", "h3")
    (scheduled,) = [e for e in cloud.evidence if e.kind == "ha_scheduled"]
    assert scheduled.details["investigate"] is False
    config = server.host_ha.store.find("h1")
    assert config is not None
    assert config.state is HAState.FENCED
