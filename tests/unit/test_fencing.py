"""Fence builders, the fence chain and its levels, the registry, and the power fencer."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import threading
from collections.abc import Callable

import pytest

from cloudha import Answer, Command, ConfigurationError, Host, Pool, Verdict, Vm
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.fencing.base import BaseFenceBuilder, FenceOutcome, FenceResult
from cloudha.fencing.chain import GRACE, FenceChain, FenceLevel, InlineRunner, ThreadRunner
from cloudha.fencing.neighbour import KVMFenceBuilder, VMwareFenceBuilder, XenServerFenceBuilder
from cloudha.fencing.power import PowerFencer
from cloudha.fencing.registry import (
    FencerContext,
    build_fence_chain,
    builtin_fencers,
    discover_fencers,
)
from cloudha.model import AlertType, HypervisorType
from cloudha.oobm.manager import OutOfBandManager, StaticOobmConfigs
from cloudha.oobm.power import OobmConfig, PowerOperation
from cloudha.ports import DomainState
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    InMemoryStoragePools,
    RecordingAlertSink,
)
from cloudha.testing.contract import check_fencer
from cloudha.testing.oobm import FakeBmc, FakePowerDriver

UP = Status.UP
DOWN = Status.DOWN
PASSWORD = "s3cret-Pa55"
HOST = Host(id="h1", status=DOWN, cluster="c1", private_ip="127.0.0.11", watchdog=True)
VM = Vm(id="vm1", host_id="h1", ha_enabled=True)


class Scripted(BaseFenceBuilder):
    """Answers what the test says; may move the fake clock or raise."""

    def __init__(
        self,
        clock: FakeClock,
        name: str,
        outcome: FenceOutcome | Callable[[], FenceResult],
        *,
        timeout: float = 10.0,
        takes: float = 0.0,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        self.name = name
        self.outcome = outcome
        self.takes = takes
        self.calls = 0
        self.fake_clock = clock

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        self.calls += 1
        self.fake_clock.advance(self.takes)
        if callable(self.outcome):
            return self.outcome()
        return self.result(self.outcome, f"{self.name} says {self.outcome}")


def chain_of(clock: FakeClock, *levels: object, **kwargs: object) -> FenceChain:
    return FenceChain(levels, clock=clock, runner=InlineRunner(clock), **kwargs)  # type: ignore[arg-type]


# -- the base class ----------------------------------------------------------------


def test_base_fencer_declines_unsupported_hosts_and_maps_probe_errors() -> None:
    clock = FakeClock(100.0)

    class Picky(BaseFenceBuilder):
        name = "Picky"

        def supports(self, vm: Vm, host: Host) -> bool:
            return host.hypervisor is HypervisorType.KVM

        def _fence(self, vm: Vm, host: Host) -> FenceResult:
            clock.advance(3)
            raise ProbeTimeout("BMC silent", host_id=host.id)

    fencer = Picky(clock, timeout=5)
    xen = Host(id="x1", hypervisor=HypervisorType.XEN_SERVER)
    assert fencer.fence_off(VM, xen).outcome is FenceOutcome.NOT_APPLICABLE
    result = fencer.fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence == {"error": "ProbeTimeout"}
    assert (result.started_at, result.finished_at) == (100.0, 103.0)


def test_base_fencer_rejects_a_hook_that_returns_a_bool() -> None:
    class Sloppy(BaseFenceBuilder):
        name = "Sloppy"

        def _fence(self, vm: Vm, host: Host) -> FenceResult:
            return True  # type: ignore[return-value]

    with pytest.raises(TypeError, match="not a FenceResult"):
        Sloppy(FakeClock(), timeout=1).fence_off(VM, HOST)
    with pytest.raises(ValueError, match="timeout must be positive"):
        Sloppy(FakeClock(), timeout=0)


# -- the chain and its levels -------------------------------------------------------


def test_registration_order_first_fenced_wins_and_not_applicable_is_skipped() -> None:
    clock = FakeClock()
    na = Scripted(clock, "NA", FenceOutcome.NOT_APPLICABLE)
    fails = Scripted(clock, "Fails", FenceOutcome.NOT_FENCED)
    works = Scripted(clock, "Works", FenceOutcome.FENCED)
    never = Scripted(clock, "Never", FenceOutcome.FENCED)
    decision = FenceChain.from_builders(
        [na, fails, works, never], clock=clock, runner=InlineRunner(clock)
    ).fence_off(VM, HOST)
    assert decision.fenced
    assert decision.level == 2
    assert decision.fenced_by == ("Works",)
    assert [a.fencer for a in decision.attempts] == ["NA", "Fails", "Works"]
    assert never.calls == 0
    assert not decision.escalated


def test_exclude_drops_fencers_by_name() -> None:
    clock = FakeClock()
    a = Scripted(clock, "A", FenceOutcome.FENCED)
    b = Scripted(clock, "B", FenceOutcome.FENCED)
    chain = FenceChain.from_builders([a, b], exclude=["A"], clock=clock)
    assert chain.names == [["B"]]


def test_a_level_needs_every_applicable_member_to_fence() -> None:
    clock = FakeClock()
    power = Scripted(clock, "Power", FenceOutcome.FENCED)
    switch = Scripted(clock, "Switch", FenceOutcome.NOT_FENCED)
    skipped = Scripted(clock, "AfterFailure", FenceOutcome.FENCED)
    storage = Scripted(clock, "Storage", FenceOutcome.FENCED)
    decision = chain_of(clock, [power, switch, skipped], [storage]).fence_off(VM, HOST)
    assert decision.fenced
    assert decision.level == 1
    assert skipped.calls == 0  # the level failed at Switch
    assert decision.fenced_by == ("Storage",)

    both = chain_of(
        clock, FenceLevel([power, Scripted(clock, "NA", FenceOutcome.NOT_APPLICABLE)])
    ).fence_off(VM, HOST)
    assert both.fenced
    assert both.fenced_by == ("Power",)


def test_a_level_of_only_not_applicable_fencers_does_not_count_as_tried() -> None:
    clock = FakeClock()
    alerts = RecordingAlertSink()
    decision = chain_of(
        clock, Scripted(clock, "NA", FenceOutcome.NOT_APPLICABLE), alerts=alerts
    ).fence_off(VM, HOST)
    assert decision.outcome is FenceOutcome.NOT_APPLICABLE
    assert not decision.escalated
    assert alerts.alerts == []


def test_every_level_failing_escalates_with_an_alert_and_evidence() -> None:
    clock = FakeClock()
    alerts = RecordingAlertSink()
    log = EvidenceLog()
    decision = chain_of(
        clock,
        Scripted(clock, "Power", FenceOutcome.NOT_FENCED),
        Scripted(clock, "Storage", FenceOutcome.NOT_FENCED),
        alerts=alerts,
        recorder=Recorder(log, clock, "ms1"),
    ).fence_off(VM, HOST)
    assert decision.outcome is FenceOutcome.NOT_FENCED
    assert decision.escalated
    assert [a.subject for a in alerts.alerts] == ["Unable to fence off host: h1"]
    assert alerts.alerts[0].type is AlertType.HOST
    assert "Power: NOT_FENCED" in alerts.alerts[0].body
    fences = log.records(kind="fence")
    assert [(r.details["fencer"], r.details["outcome"], r.details["level"]) for r in fences] == [
        ("Power", "NOT_FENCED", 0),
        ("Storage", "NOT_FENCED", 1),
    ]
    (escalated,) = log.records(kind="fence_escalated")
    assert escalated.host == "h1"
    assert escalated.vm == "vm1"
    assert len(escalated.details["attempts"]) == 2
    json.dumps(decision.to_dict())


def test_a_fencer_that_overruns_its_timeout_fails_its_level() -> None:
    clock = FakeClock()
    slow = Scripted(clock, "Slow", FenceOutcome.FENCED, timeout=10, takes=10 + GRACE + 1)
    storage = Scripted(clock, "Storage", FenceOutcome.FENCED)
    decision = chain_of(clock, slow, storage).fence_off(VM, HOST)
    assert decision.fenced_by == ("Storage",)
    first = decision.attempts[0]
    assert first.outcome is FenceOutcome.NOT_FENCED
    assert first.evidence["error"] == "timeout"


def test_the_thread_runner_abandons_a_stuck_fencer_in_bounded_time() -> None:
    release = threading.Event()

    class Stuck(BaseFenceBuilder):
        name = "Stuck"

        def _fence(self, vm: Vm, host: Host) -> FenceResult:
            release.wait(30)
            return self.fenced("too late")

    clock = FakeClock()
    storage = Scripted(clock, "Storage", FenceOutcome.FENCED)
    stuck = Stuck(clock, timeout=0.05)
    chain = FenceChain([stuck, storage], clock=clock, runner=ThreadRunner())
    try:
        decision = chain.fence_off(VM, HOST)
    finally:
        release.set()
    assert decision.fenced_by == ("Storage",)
    assert decision.attempts[0].reason.startswith("gave up: no answer within")
    assert chain.bound == pytest.approx(0.05 + 10 + 2 * GRACE)


def test_the_thread_runner_passes_results_and_exceptions_through() -> None:
    runner = ThreadRunner()
    result = FenceResult(FenceOutcome.FENCED, "x", "ok")
    assert runner.run(lambda: result, 5) is result

    def boom() -> FenceResult:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        runner.run(boom, 5)


def test_a_fencer_that_raises_is_not_fenced_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    def bug() -> FenceResult:
        raise ZeroDivisionError("oops")

    decision = chain_of(
        clock,
        Scripted(clock, "Buggy", bug),
        Scripted(clock, "Storage", FenceOutcome.FENCED),
    ).fence_off(VM, HOST)
    assert decision.fenced_by == ("Storage",)
    assert "ZeroDivisionError" in decision.attempts[0].reason
    assert "fencer Buggy failed on host h1" in caplog.text


def test_chain_rejects_things_that_are_not_fencers() -> None:
    with pytest.raises(ConfigurationError, match="not a fence builder"):
        FenceChain([[object()]], clock=FakeClock())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one fencer"):
        FenceLevel([])


# -- KVM neighbours: proof through the storage heartbeat ------------------------------


class Neighbours:
    """Hosts of cluster c1 and their answers to CheckOnHost about h1."""

    def __init__(self, clock: FakeClock | None = None, *, takes: float = 0.0) -> None:
        self.directory = InMemoryHostDirectory([HOST])
        self.answers: dict[str, Verdict | None] = {}
        self.clock = clock
        self.takes = takes
        self.gateway = FakeAgentGateway(handler=self.handle)
        self.pools = InMemoryStoragePools([Pool("nfs", "/mnt/nfs", cluster="c1")])

    def add(self, host_id: str, verdict: Verdict | None, **kw: object) -> None:
        kw.setdefault("cluster", "c1")
        self.directory.add(Host(id=host_id, status=UP, **kw))  # type: ignore[arg-type]
        self.answers[host_id] = verdict

    def handle(self, host: Host, command: Command) -> Answer:
        assert command.name == "CheckOnHostCommand"
        if self.clock is not None:
            self.clock.advance(self.takes)
        verdict = self.answers[host.id]
        if verdict is None:
            raise ProbeConnectionError("silent", host_id=host.id)
        return Answer(True, data={"verdict": verdict.value, "reason": f"{host.id} read it"})

    def fencer(self, clock: FakeClock, **kw: float) -> KVMFenceBuilder:
        return KVMFenceBuilder(
            clock,
            directory=self.directory,
            gateway=self.gateway,
            pools=self.pools,
            command_timeout=kw.get("command_timeout", 5.0),
            timeout=kw.get("timeout", 60.0),
        )


def test_kvm_fencer_is_fenced_when_a_neighbour_proves_the_heartbeat_stale() -> None:
    n = Neighbours()
    n.add("n1", None)
    n.add("n2", Verdict.ALIVE)
    n.add("n3", Verdict.DEAD)
    n.add("n4", Verdict.DEAD)
    result = n.fencer(FakeClock()).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["proved_by"] == "n3"
    assert set(result.evidence["neighbours"]) == {"n1", "n2", "n3"}
    assert ("n4", "CheckOnHostCommand") not in n.gateway.calls


def test_kvm_fencer_without_proof_is_not_fenced() -> None:
    n = Neighbours()
    n.add("n1", Verdict.ALIVE)
    n.add("n2", Verdict.UNKNOWN)
    result = n.fencer(FakeClock()).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert "no neighbour could prove h1 dead (2 asked)" in result.reason


def test_kvm_fencer_refuses_without_ha_pools_and_without_neighbours() -> None:
    n = Neighbours()
    n.add("n1", Verdict.DEAD)
    n.pools.pools = [Pool("rbd", "/mnt/rbd", type="RBD", supports_ha=False, cluster="c1")]
    result = n.fencer(FakeClock()).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert "no way to prove" in result.reason
    assert n.gateway.calls == []

    lonely = Neighbours()
    result = lonely.fencer(FakeClock()).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert "no Up neighbour" in result.reason


def test_kvm_fencer_asks_zone_witnesses_when_the_cluster_is_silent() -> None:
    n = Neighbours()
    n.pools.pools.append(Pool("zone-nfs", "/mnt/zone", cluster=None))
    n.add("n1", None)
    n.add("w1", Verdict.DEAD, cluster="c2")
    result = n.fencer(FakeClock()).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["proved_by"] == "w1"


def test_kvm_fencer_stops_asking_when_its_time_is_up() -> None:
    clock = FakeClock()
    n = Neighbours(clock, takes=5.0)
    for i in range(10):
        n.add(f"n{i}", None)
    result = n.fencer(clock, timeout=12.0).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    asked = [c for c in n.gateway.calls if c[1] == "CheckOnHostCommand"]
    assert len(asked) == 3
    assert result.finished_at - result.started_at <= 12.0 + 5.0


def test_kvm_fencer_only_handles_kvm_and_lxc() -> None:
    n = Neighbours()
    n.add("n1", Verdict.DEAD)
    xen = Host(id="x1", hypervisor=HypervisorType.XEN_SERVER, cluster="c1")
    assert n.fencer(FakeClock()).fence_off(VM, xen).outcome is FenceOutcome.NOT_APPLICABLE


def test_xen_fencer_asks_xen_neighbours_to_fence() -> None:
    target = Host(id="x1", hypervisor=HypervisorType.XEN_SERVER, status=DOWN, cluster="c1")
    directory = InMemoryHostDirectory(
        [
            target,
            Host(id="x2", hypervisor=HypervisorType.XEN_SERVER, status=UP, cluster="c1"),
            Host(id="x3", hypervisor=HypervisorType.XEN_SERVER, status=UP, cluster="c1"),
        ]
    )

    def handle(host: Host, command: Command) -> Answer:
        assert command.name == "FenceCommand"
        assert command.params == {"vm_name": "vm1", "host_id": "x1", "host_ip": None}
        return Answer(host.id == "x3", "fenced" if host.id == "x3" else "pool busy")

    fencer = XenServerFenceBuilder(
        FakeClock(),
        directory=directory,
        gateway=FakeAgentGateway(handler=handle),
        command_timeout=5,
        timeout=30,
    )
    result = fencer.fence_off(VM, target)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["proved_by"] == "x3"
    assert fencer.fence_off(VM, HOST).outcome is FenceOutcome.NOT_APPLICABLE


def test_vmware_fencer_never_applies() -> None:
    assert VMwareFenceBuilder(FakeClock()).fence_off(VM, HOST).outcome is (
        FenceOutcome.NOT_APPLICABLE
    )


# -- power fencing ------------------------------------------------------------------


class Power:
    """An OOBM manager over fake BMCs for host h1."""

    def __init__(self, clock: FakeClock, bmc: FakeBmc | None = None) -> None:
        self.driver = FakePowerDriver(advance=clock.advance)
        self.bmc = self.driver.add("10.0.0.1", bmc if bmc is not None else FakeBmc(PASSWORD))
        self.configs = StaticOobmConfigs(
            {"h1": OobmConfig("fake", "10.0.0.1", "admin", PASSWORD, host_id="h1")}
        )
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        self.oobm = OutOfBandManager(
            clock=clock,
            configs=self.configs,
            drivers=[self.driver],
            alerts=self.alerts,
            recorder=Recorder(self.evidence, clock, "ms1"),
        )

    def fencer(self, clock: FakeClock, timeout: float = 60.0) -> PowerFencer:
        return PowerFencer(clock, oobm=self.oobm, timeout=timeout, poll_interval=2.0)


def test_power_fencer_powers_off_and_reads_back() -> None:
    clock = FakeClock()
    p = Power(clock)
    result = p.fencer(clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert "read back Off" in result.reason
    assert p.bmc.calls == [PowerOperation.STATUS, PowerOperation.OFF, PowerOperation.STATUS]
    assert p.bmc.power == "off"


def test_power_fencer_already_off_is_fenced_at_once() -> None:
    clock = FakeClock()
    p = Power(clock, FakeBmc(PASSWORD, power="off", conflict_when_off=True))
    result = p.fencer(clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert "already powered off" in result.reason
    assert p.bmc.calls == [PowerOperation.STATUS]
    assert result.finished_at == result.started_at


def test_power_fencer_trusts_the_read_back_not_the_bmc() -> None:
    clock = FakeClock()
    p = Power(clock, FakeBmc(PASSWORD, ignore_off=True))
    result = p.fencer(clock, timeout=10.0).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert "not read back Off within 10s" in result.reason
    assert result.finished_at - result.started_at == pytest.approx(10.0)
    statuses = [c for c in p.bmc.calls if c is PowerOperation.STATUS]
    assert len(statuses) == 6  # 1 before, 5 read-backs 2 s apart


def test_power_fencer_with_a_silent_bmc_ends_within_its_timeout() -> None:
    clock = FakeClock()
    p = Power(clock, FakeBmc(PASSWORD, silent=True))
    result = p.fencer(clock, timeout=30.0).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.finished_at - result.started_at == pytest.approx(30.0)
    assert p.bmc.calls == [PowerOperation.STATUS]


def test_power_fencer_auth_error_is_not_fenced_alerted_and_secret_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    p = Power(clock, FakeBmc(password="other"))
    chain = FenceChain(
        [p.fencer(clock)],
        clock=clock,
        runner=InlineRunner(clock),
        alerts=p.alerts,
        recorder=Recorder(p.evidence, clock, "ms1"),
    )
    decision = chain.fence_off(VM, HOST)
    assert decision.outcome is FenceOutcome.NOT_FENCED
    assert decision.escalated
    assert decision.attempts[0].evidence["error"] == "ProbeAuthError"
    assert [a.type for a in p.alerts.alerts] == [AlertType.OOBM_AUTH_ERROR, AlertType.HOST]
    everything = (
        caplog.text
        + json.dumps(decision.to_dict())
        + repr(p.alerts.alerts)
        + repr([e.to_event() for e in p.evidence])
        + repr(p.configs.oobm_config(HOST))
    )
    assert PASSWORD not in everything


def test_power_fencer_does_not_apply_without_a_bmc() -> None:
    clock = FakeClock()
    p = Power(clock)
    other = Host(id="h2", status=DOWN)
    assert p.fencer(clock).fence_off(VM, other).outcome is FenceOutcome.NOT_APPLICABLE


def test_power_fencer_falls_back_to_storage_proof_in_a_chain() -> None:
    clock = FakeClock()
    p = Power(clock, FakeBmc(PASSWORD, silent=True))
    n = Neighbours()
    n.add("n1", Verdict.DEAD)
    chain = chain_of(clock, p.fencer(clock, timeout=20.0), n.fencer(clock), alerts=p.alerts)
    decision = chain.fence_off(VM, HOST)
    assert decision.fenced_by == ("KVMFenceBuilder",)
    assert [a.outcome for a in decision.attempts] == [
        FenceOutcome.NOT_FENCED,
        FenceOutcome.FENCED,
    ]
    assert p.alerts.alerts == []


# -- the registry ---------------------------------------------------------------------


class Control:
    """A hypervisor connection for the libvirt fencer's registration."""

    def probe_host(self, host: Host, *, timeout: float) -> object:
        raise ProbeConnectionError("no hypervisor", host_id=host.id)

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        raise ProbeConnectionError("no hypervisor", host_id=host.id)

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        raise ProbeConnectionError("no hypervisor", host_id=host.id)


class Volumes:
    def volumes_of(self, vm: Vm) -> list[object]:
        return []


def full_context(clock: FakeClock, **kw: object) -> FencerContext:
    p = Power(clock)
    n = Neighbours()
    return FencerContext(
        clock=clock,
        directory=n.directory,
        gateway=n.gateway,
        pools=n.pools,
        oobm=p.oobm,
        hypervisor_control=Control(),  # type: ignore[arg-type]
        ssh_connect=lambda host: None,  # type: ignore[arg-type,return-value]
        volumes=Volumes(),  # type: ignore[arg-type]
        runner=InlineRunner(clock),
        **kw,  # type: ignore[arg-type]
    )


def test_builtin_registration_order_and_default_exclusion() -> None:
    clock = FakeClock()
    ctx = full_context(clock)
    assert [f.name for f in builtin_fencers(ctx)] == [
        "PowerFencer",
        "LibvirtFencer",
        "KVMFenceBuilder",
        "XenServerFenceBuilder",
        "VMwareFenceBuilder",
        "SSHSoftFencer",
        "RecreatableFencer",
    ]
    chain = build_fence_chain(ctx, discover=False)
    assert [n for (n,) in chain.names][-1] == "SSHSoftFencer"  # Recreatable is excluded
    minimal = FencerContext(clock=clock, directory=InMemoryHostDirectory(), gateway=None)  # type: ignore[arg-type]
    assert [f.name for f in builtin_fencers(minimal)] == [
        "XenServerFenceBuilder",
        "VMwareFenceBuilder",
    ]


def test_builtin_timeouts_come_from_settings() -> None:
    clock = FakeClock()
    settings = Settings.from_mapping(
        {"outofbandmanagement.action.timeout": 20, "kvm.ha.fence.timeout": 45}
    )
    by_name = {f.name: f for f in builtin_fencers(full_context(clock, settings=settings))}
    assert by_name["PowerFencer"].timeout == 20
    assert by_name["KVMFenceBuilder"].timeout == 45


def test_levels_by_name() -> None:
    clock = FakeClock()
    settings = Settings.from_mapping({"ha.fence.builders.exclude": "SSHSoftFencer"})
    ctx = full_context(clock, settings=settings)
    chain = build_fence_chain(
        ctx, discover=False, levels=[["PowerFencer", "LibvirtFencer"], ["KVMFenceBuilder"]]
    )
    assert chain.names == [["PowerFencer", "LibvirtFencer"], ["KVMFenceBuilder"]]
    with pytest.raises(ConfigurationError, match="'Nope', which is not a fencer here") as info:
        build_fence_chain(ctx, discover=False, levels=[["Nope"]])
    assert info.value.key == "fence levels"
    with pytest.raises(ConfigurationError, match=r"ha\.fence\.builders\.exclude leaves out"):
        build_fence_chain(ctx, discover=False, levels=[["SSHSoftFencer"]])
    with pytest.raises(ConfigurationError, match="non-empty list"):
        build_fence_chain(ctx, discover=False, levels=[[]])
    with pytest.raises(ConfigurationError, match="non-empty list"):
        build_fence_chain(ctx, discover=False, levels=["PowerFencer"])


def test_duplicate_fencer_names_are_a_configuration_error() -> None:
    clock = FakeClock()
    ctx = full_context(clock)
    twin = Scripted(clock, "PowerFencer", FenceOutcome.FENCED)
    with pytest.raises(ConfigurationError, match="two fencers are named 'PowerFencer'"):
        build_fence_chain(ctx, discover=False, extra=[twin])


def fep(name: str, target: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(
        name, f"tests.unit.plugin_examples:{target}", "cloudha.fencers"
    )


def test_fencer_plugins_are_discovered_and_broken_ones_refused() -> None:
    clock = FakeClock()
    ctx = full_context(clock)
    chain = build_fence_chain(ctx, entry_points=[fep("example", "ExampleFencer")])
    assert chain.names[-1] == ["ExampleFencer"]
    with pytest.raises(ConfigurationError, match="not a FenceBuilder") as info:
        discover_fencers(ctx, entry_points=[fep("bad", "not_a_fencer")])
    assert info.value.key == "cloudha.fencers"
    assert discover_fencers(ctx) == []


# -- the contract checker ---------------------------------------------------------------


def test_every_builtin_fencer_meets_the_contract() -> None:
    clock = FakeClock()
    n = Neighbours()
    n.directory.add(Host(id="n1", status=UP, cluster="contract-c1"))
    n.answers["n1"] = Verdict.DEAD
    n.pools.pools.append(Pool("c-nfs", "/mnt/c", cluster="contract-c1"))
    p = Power(clock)
    p.configs.set(
        "contract-kvm", OobmConfig("fake", "10.0.0.1", "admin", PASSWORD, host_id="contract-kvm")
    )
    ctx = FencerContext(
        clock=clock,
        directory=n.directory,
        gateway=n.gateway,
        pools=n.pools,
        oobm=p.oobm,
        runner=InlineRunner(clock),
    )
    for fencer in builtin_fencers(ctx):
        check_fencer(fencer, secrets=[PASSWORD])


def test_check_fencer_lists_every_broken_rule() -> None:
    class Broken(BaseFenceBuilder):
        name = "Broken"

        def _fence(self, vm: Vm, host: Host) -> FenceResult:
            if host.private_ip is None:
                raise RuntimeError("boom")
            return FenceResult(
                FenceOutcome.FENCED, "Other", "", {"password": PASSWORD, "x": object()}
            )

    with pytest.raises(AssertionError) as info:
        check_fencer(Broken(FakeClock(), timeout=1), secrets=[PASSWORD])
    text = str(info.value)
    assert "raised RuntimeError: boom" in text
    assert "not the name 'Broken'" in text
    assert "needs a reason" in text
    assert "not JSON-able" in text

    class Leaky(BaseFenceBuilder):
        name = "Leaky"

        def _fence(self, vm: Vm, host: Host) -> FenceResult:
            return self.not_fenced("bad", password=PASSWORD)

    with pytest.raises(AssertionError, match="contains a secret"):
        check_fencer(Leaky(FakeClock(), timeout=1), secrets=[PASSWORD])


def test_kvm_fencer_refuses_a_host_without_watchdog_without_asking_anyone() -> None:
    n = Neighbours()
    n.add("n1", Verdict.DEAD)
    bare = Host(id="h1", status=DOWN, cluster="c1", private_ip="127.0.0.11")
    result = n.fencer(FakeClock()).fence_off(VM, bare)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.reason.startswith("a stale heartbeat would prove nothing: h1 has no watchdog")
    assert n.gateway.calls == []


def test_power_fencer_fences_a_host_without_watchdog_after_the_storage_proof_refuses() -> None:
    # Without a watchdog the stale heartbeat is no proof: only the BMC can fence.
    clock = FakeClock()
    p = Power(clock)
    n = Neighbours()
    n.add("n1", Verdict.DEAD)
    bare = Host(id="h1", status=DOWN, cluster="c1", private_ip="127.0.0.11")
    chain = chain_of(clock, n.fencer(clock), p.fencer(clock), alerts=p.alerts)
    decision = chain.fence_off(VM, bare)
    assert decision.fenced_by == ("PowerFencer",)
    assert [a.outcome for a in decision.attempts] == [
        FenceOutcome.NOT_FENCED,
        FenceOutcome.FENCED,
    ]
    assert p.bmc.power == "off"
