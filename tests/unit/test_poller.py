"""The agent poller: hosts whose agents do not ping are probed, and answers fed in as pings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cloudha import (
    ConfigurationError,
    FenceChain,
    FenceOutcome,
    Host,
    HostType,
    HypervisorType,
    InvestigatorChain,
    ManagementServer,
    Settings,
    Status,
    Verdict,
    Vm,
    VmState,
)
from cloudha.detection.poller import AgentPoller, HypervisorPoller
from cloudha.errors import ProbeTimeout
from cloudha.hostha.executor import InlineExecutor
from cloudha.ports import DomainState, PingReport
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeHostPoller,
    FakeHypervisorProbe,
    FakeOrchestratorHost,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedInvestigator,
    check_host_poller,
)

SETTINGS = Settings.from_mapping(
    {"ping.interval": 10, "cloudha.poll.timeout": 3, "cloudha.poll.workers": 4}
)
HOSTS = [Host(h, private_ip=f"10.0.0.{i}") for i, h in enumerate(("h1", "h2", "h3"), start=1)]


class Deferred:
    """An executor that keeps the tasks until the test runs them."""

    def __init__(self) -> None:
        self.tasks: list[Callable[[], None]] = []
        self.refuse = False

    def submit(self, task: Callable[[], None]) -> bool:
        if self.refuse:
            return False
        self.tasks.append(task)
        return True

    def call(self, fn: Callable[[], object], timeout: float) -> object:
        return fn()

    def shutdown(self, timeout: float) -> None:
        self.tasks.clear()

    def run_all(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task()


def poller_over(
    fake: FakeHostPoller,
    clock: FakeClock,
    *,
    hosts: Callable[[], list[Host]] = lambda: HOSTS,
    executor: object | None = None,
) -> tuple[AgentPoller, list[PingReport]]:
    fed: list[PingReport] = []
    poller = AgentPoller(
        fake,
        hosts,
        fed.append,
        settings=SETTINGS,
        clock=clock,
        executor=executor if executor is not None else InlineExecutor(clock),  # type: ignore[arg-type]
    )
    return poller, fed


# -- the loop ---------------------------------------------------------------------------


def test_answers_are_fed_as_pings_and_failures_feed_nothing() -> None:
    clock = FakeClock(100.0)
    fake = FakeHostPoller({"h1": True, "h3": True}, vms={"h1": frozenset({"vm1"})})
    poller, fed = poller_over(fake, clock)
    assert poller.tick() == 10.0
    assert fed == [PingReport("h1", vms=frozenset({"vm1"})), PingReport("h3")]
    assert sorted(fake.calls) == ["h1", "h2", "h3"]
    assert (poller.stats.probes, poller.stats.answered, poller.stats.failed) == (3, 2, 1)


def test_a_probe_returning_none_feeds_nothing() -> None:
    clock = FakeClock()
    poller, fed = poller_over(FakeHostPoller({}, fail_with_none=True), clock)
    poller.tick()
    assert fed == []
    assert poller.stats.failed == 3


def test_an_answer_later_than_the_timeout_is_not_a_ping() -> None:
    clock = FakeClock()
    fake = FakeHostPoller({"h1": True, "h2": True}, took={"h1": 3.5}, clock=clock)
    poller, fed = poller_over(fake, clock, hosts=lambda: HOSTS[:2])
    poller.tick()
    assert fed == [PingReport("h2")]
    assert poller.stats.late == 1


def test_a_report_about_another_host_is_ignored() -> None:
    class Confused:
        def poll(self, host: Host, *, timeout: float) -> PingReport | None:
            return PingReport("someone-else")

    clock = FakeClock()
    fed: list[PingReport] = []
    poller = AgentPoller(
        Confused(),
        lambda: HOSTS[:1],
        fed.append,
        settings=SETTINGS,
        clock=clock,
        executor=InlineExecutor(clock),
    )
    poller.tick()
    assert fed == []
    assert poller.stats.failed == 1


def test_rounds_keep_a_fixed_rate() -> None:
    clock = FakeClock()
    fake = FakeHostPoller({"h1": True}, took={"h1": 2.0}, clock=clock)
    poller, fed = poller_over(fake, clock, hosts=lambda: HOSTS[:1])
    assert poller.tick() == pytest.approx(8.0)  # the probe took 2 of the 10 seconds
    clock.advance(8.0)
    assert poller.tick() == pytest.approx(8.0)
    clock.advance(30.0)  # a stalled loop starts afresh instead of catching up
    assert poller.tick() == pytest.approx(8.0)
    assert len(fed) == 3


def test_a_host_whose_probe_has_not_returned_is_not_probed_again() -> None:
    clock = FakeClock()
    executor = Deferred()
    fake = FakeHostPoller({"h1": True, "h2": True})
    poller, fed = poller_over(fake, clock, executor=executor)
    poller.tick()
    assert poller.in_flight() == {"h1", "h2", "h3"}
    clock.advance(10.0)
    poller.tick()  # nothing returned yet: nothing is queued twice
    assert len(executor.tasks) == 3
    assert poller.stats.skipped == 3
    executor.run_all()
    assert poller.in_flight() == frozenset()
    # Lateness counts from when a probe ran, not from when it was queued.
    assert [r.host_id for r in fed] == ["h1", "h2"]
    poller.tick()
    assert len(executor.tasks) == 3


def test_a_refused_probe_is_counted_and_tried_next_round() -> None:
    clock = FakeClock()
    executor = Deferred()
    executor.refuse = True
    poller, fed = poller_over(FakeHostPoller({"h1": True}), clock, executor=executor)
    poller.tick()
    assert poller.stats.refused == 3
    assert poller.in_flight() == frozenset()
    executor.refuse = False
    poller.tick()
    executor.run_all()
    assert [r.host_id for r in fed] == ["h1"]


def test_a_failing_host_list_keeps_the_hosts_known() -> None:
    clock = FakeClock()
    calls = 0

    def hosts() -> list[Host]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("directory down")
        return HOSTS[:1]

    poller, fed = poller_over(FakeHostPoller({"h1": True}), clock, hosts=hosts)
    poller.tick()
    poller.tick()
    assert [r.host_id for r in fed] == ["h1", "h1"]


def test_a_probe_that_raises_something_else_is_logged_and_feeds_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def poll(self, host: Host, *, timeout: float) -> PingReport | None:
            raise ValueError("bug")

    clock = FakeClock()
    fed: list[PingReport] = []
    poller = AgentPoller(
        Broken(),
        lambda: HOSTS[:1],
        fed.append,
        settings=SETTINGS,
        clock=clock,
        executor=InlineExecutor(clock),
    )
    poller.tick()
    assert fed == []
    assert "the probe of h1 raised" in caplog.text


def test_after_close_nothing_is_probed_or_fed() -> None:
    clock = FakeClock()
    executor = Deferred()
    fake = FakeHostPoller({"h1": True})
    poller, fed = poller_over(fake, clock, executor=executor)
    poller.tick()
    tasks = list(executor.tasks)
    poller.close()
    for task in tasks:
        task()
    assert fed == []
    assert fake.calls == []
    poller.tick()
    assert executor.tasks == []


def test_on_real_threads_a_hung_host_does_not_delay_the_others() -> None:
    from cloudha.clock import SystemClock

    release = threading.Event()
    answered: dict[str, float] = {}

    class Slow:
        def poll(self, host: Host, *, timeout: float) -> PingReport | None:
            if host.id == "h1":
                release.wait(timeout)
                raise ProbeTimeout("no answer", host_id=host.id)
            return PingReport(host.id)

    settings = Settings.from_mapping(
        {"ping.interval": 10, "cloudha.poll.timeout": 2, "cloudha.poll.workers": 2}
    )
    started = time.monotonic()
    poller = AgentPoller(
        Slow(),
        lambda: HOSTS,
        lambda report: answered.setdefault(report.host_id, time.monotonic() - started),
        settings=settings,
        clock=SystemClock(),
    )
    try:
        poller.tick()
        deadline = time.monotonic() + 5
        while len(answered) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(answered) == {"h2", "h3"}
        assert max(answered.values()) < 1.0  # not after h1's 2 s timeout
        assert poller.in_flight() == {"h1"}
    finally:
        release.set()
        poller.close()


# -- the hypervisor poller and the contract ------------------------------------------------


def test_the_hypervisor_poller_reports_the_running_domains() -> None:
    probe = FakeHypervisorProbe(
        {"h1": True},
        domains={("h1", "web-1"): DomainState.RUNNING, ("h1", "old"): DomainState.SHUTOFF},
    )
    poller = HypervisorPoller(probe)
    assert poller.poll(HOSTS[0], timeout=1.0) == PingReport("h1", vms=frozenset({"web-1"}))
    mapped = HypervisorPoller(probe, vm_ids=lambda host, names: {f"{host.id}/{n}" for n in names})
    assert mapped.poll(HOSTS[0], timeout=1.0) == PingReport("h1", vms=frozenset({"h1/web-1"}))


def test_the_hypervisor_poller_needs_a_probe() -> None:
    with pytest.raises(ConfigurationError, match="HypervisorProbe"):
        HypervisorPoller(object())  # type: ignore[arg-type]


def test_the_fakes_keep_the_poller_contract() -> None:
    check_host_poller(FakeHostPoller({"h1": True}), HOSTS[0], HOSTS[1])
    check_host_poller(FakeHostPoller({"h1": True}, fail_with_none=True), HOSTS[0], HOSTS[1])
    probe = FakeHypervisorProbe({"h1": True}, domains={("h1", "a"): DomainState.RUNNING})
    check_host_poller(HypervisorPoller(probe), HOSTS[0], HOSTS[1])


def test_the_contract_checker_catches_a_broken_poller() -> None:
    class Wrong:
        def poll(self, host: Host, *, timeout: float) -> PingReport | None:
            if host.id == "h1":
                return PingReport("h9", vms={"x"})  # type: ignore[arg-type]
            raise RuntimeError("not a ProbeError")

    with pytest.raises(AssertionError) as err:
        check_host_poller(Wrong(), HOSTS[0], HOSTS[1], threads=1)
    text = str(err.value)
    assert "reported host 'h9'" in text
    assert "frozenset" in text
    assert "RuntimeError, not a ProbeError" in text


# -- in the management server -----------------------------------------------------------------


class Fleet:
    """A KVM fleet with no agents: only the poller tells the server who is alive."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self.clock = FakeClock(1000.0)
        self.settings = Settings.from_mapping(
            {"ping.interval": 10, "cloudha.poll.timeout": 3, "cloudha.freshness.enabled": False}
        )
        self.directory = InMemoryHostDirectory(
            Host(h.id, private_ip=h.private_ip, cluster="c1") for h in HOSTS
        )
        self.gateway = FakeAgentGateway(dict.fromkeys(("h1", "h2", "h3"), True))
        self.orchestrator = InMemoryOrchestrator(
            [FakeOrchestratorHost(h.id) for h in HOSTS],
            [Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)],
        )
        self.investigator = ScriptedInvestigator(self.clock)
        self.poller = FakeHostPoller(
            dict.fromkeys(("h1", "h2", "h3"), True), vms={"h1": frozenset({"vm1"})}
        )
        self.server = ManagementServer(
            settings=self.settings,
            clock=self.clock,
            directory=self.directory,
            gateway=self.gateway,
            orchestrator=self.orchestrator,
            alerts=RecordingAlertSink(),
            engine=sa.create_engine(
                "sqlite://",
                poolclass=sa.pool.StaticPool,
                connect_args={"check_same_thread": False},
            ),
            investigators=InvestigatorChain([self.investigator]),
            fence_chain=FenceChain(
                [ScriptedFencer(self.clock, default=FenceOutcome.FENCED)], clock=self.clock
            ),
            discover_plugins=False,
            poller=self.poller,
            poll_executor=InlineExecutor(self.clock),
        )

    def run(self, seconds: float) -> None:
        loops = self.server.loops()
        due = {loop.name: self.clock.monotonic() for loop in loops}
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            for loop in loops:
                if due[loop.name] <= self.clock.monotonic():
                    due[loop.name] = self.clock.monotonic() + loop.tick()
            self.clock.advance(1.0)

    def status(self, host_id: str) -> Status | None:
        host = self.directory.find_host(host_id)
        assert host is not None
        return host.status


def test_the_server_runs_the_poller_loop_only_when_given_a_poller() -> None:
    fleet = Fleet()
    assert "AgentPoller" in [loop.name for loop in fleet.server.loops()]
    assert fleet.server.agent_poller is not None


def test_polled_hosts_are_connected_then_a_silent_one_is_found_down() -> None:
    fleet = Fleet()
    assert fleet.server.recover()
    fleet.run(15)
    assert [fleet.status(h) for h in ("h1", "h2", "h3")] == [Status.UP] * 3
    assert set(fleet.server.ping_map.hosts()) == {"h1", "h2", "h3"}
    # h1 dies: its probes fail, so no pings; the investigation finds it dead.
    fleet.poller.answering["h1"] = False
    fleet.gateway.healthy["h1"] = None
    fleet.investigator.script["h1"] = Verdict.DEAD
    fleet.investigator.script["vm1"] = Verdict.DEAD
    fleet.orchestrator.set_host_up("h1", False)
    fleet.run(200)
    assert fleet.status("h1") is Status.DOWN
    assert [fleet.status(h) for h in ("h2", "h3")] == [Status.UP] * 2
    vm = fleet.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING
    assert vm.host_id in ("h2", "h3")


def test_a_polled_vm_report_feeds_the_vm_sync() -> None:
    fleet = Fleet()
    assert fleet.server.recover()
    fleet.run(15)
    # vm1 crashed alone on h1: h1's reports stop listing it; past the grace it is restarted.
    fleet.poller.vms["h1"] = frozenset()
    fleet.investigator.script["vm1"] = Verdict.DEAD
    fleet.run(90)
    assert fleet.status("h1") is Status.UP
    kinds = [e.kind for e in fleet.server.evidence.records() if e.kind == "vm_sync"]  # type: ignore[attr-defined]
    assert kinds
    vm = fleet.orchestrator.find_vm("vm1")
    assert vm is not None
    assert vm.state is VmState.RUNNING


def test_hosts_with_a_direct_agent_or_of_a_system_vm_are_not_polled() -> None:
    fleet = Fleet()
    fleet.directory.add(Host("x1", hypervisor=HypervisorType.XEN_SERVER))
    fleet.directory.add(Host("cp1", type=HostType.CONSOLE_PROXY))
    fleet.directory.add(Host("other", management_server_id="ms2"))
    assert fleet.server.recover()
    fleet.run(1)
    assert sorted(fleet.poller.calls) == ["h1", "h2", "h3"]
