"""Every branch of the built-in investigators, the registry and the contract checker."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import pytest

from cloudha import (
    AgentCheckInvestigator,
    Answer,
    Command,
    ConfigurationError,
    DomainState,
    Finding,
    GuestNic,
    Host,
    HostType,
    HypervisorInvestigator,
    HypervisorType,
    InvestigatorChain,
    InvestigatorContext,
    KVMInvestigator,
    ManagementIPInvestigator,
    PingInvestigator,
    Pool,
    ProbeTimeout,
    Router,
    Settings,
    Status,
    Verdict,
    Vm,
    VmType,
    VMwareInvestigator,
    XenServerInvestigator,
    build_chain,
    host_outcome,
)
from cloudha.commands import CHECK_ON_HOST, CHECK_VM, PING_TEST
from cloudha.errors import ProbeConnectionError
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators import (
    BaseInvestigator,
    BMCInvestigator,
    Witness,
    builtin_investigators,
    discover_investigators,
)
from cloudha.oobm.manager import OutOfBandManager, StaticOobmConfigs
from cloudha.oobm.power import BasePowerDriver, OobmConfig, PowerOperation, PowerResult, PowerState
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeHypervisorProbe,
    InMemoryHostDirectory,
    InMemoryStoragePools,
    InMemoryVmNetworks,
    RecordingAlertSink,
    check_investigator,
)
from cloudha.testing.oobm import FakeBmc, FakePowerDriver

T = 5.0
Reply = Answer | Exception | None


class Agents:
    """A scripted gateway: ``replies[(host_id, command_name)]`` is an Answer or an exception."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], Reply | Callable[[Command], Answer]] = {}
        self.sent: list[tuple[str, Command]] = []
        self.gateway = FakeAgentGateway(handler=self._handle)

    def _handle(self, host: Host, command: Command) -> Answer:
        self.sent.append((host.id, command))
        reply = self.replies.get((host.id, command.name))
        if reply is None:
            raise ProbeConnectionError(f"{host.id} unreachable", host_id=host.id)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, Answer):
            return reply
        return reply(command)

    def heartbeat(self, host_id: str, verdict: Verdict | None, reason: str = "") -> None:
        """``host_id`` answers CheckOnHost with ``verdict`` (None: unreachable)."""
        if verdict is None:
            self.replies[(host_id, CHECK_ON_HOST)] = ProbeTimeout("silent", host_id=host_id)
        else:
            data = {"verdict": verdict.value, "reason": reason or f"hb {verdict}"}
            self.replies[(host_id, CHECK_ON_HOST)] = Answer(True, data=data)

    def asked(self, command: str) -> list[str]:
        return [h for h, c in self.sent if c.name == command]


def kvm_world(
    *neighbours: tuple[str, Status, HypervisorType],
    pools: bool = True,
    watchdog: bool = True,
    self_fence: bool = True,
) -> tuple[FakeClock, InMemoryHostDirectory, Agents, KVMInvestigator, Host]:
    clock = FakeClock()
    target = Host(
        id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1", watchdog=watchdog
    )
    directory = InMemoryHostDirectory([target])
    for hid, status, hv in neighbours:
        directory.add(Host(id=hid, status=status, cluster="c1", hypervisor=hv))
    directory.add(Host(id="other-cluster", status=Status.UP, cluster="c2"))
    pool_dir = InMemoryStoragePools(
        [Pool("nfs1", "/mnt/nfs1", cluster="c1")] if pools else [Pool("l", "/l", supports_ha=False)]
    )
    agents = Agents()
    inv = KVMInvestigator(
        clock,
        directory=directory,
        gateway=agents.gateway,
        pools=pool_dir,
        timeout=T,
        self_fence=self_fence,
    )
    return clock, directory, agents, inv, target


KVM = HypervisorType.KVM
UP = Status.UP


# -- KVM: the aggregation table of spec §4 ------------------------------------


@pytest.mark.parametrize(
    ("host_says", "neighbour_says", "verdict", "outcome"),
    [
        # the host answers: it is running, whatever neighbours think
        (Verdict.ALIVE, Verdict.DEAD, Verdict.ALIVE, Status.UP),
        (Verdict.UNKNOWN, Verdict.DEAD, Verdict.ALIVE, Status.UP),
        (Verdict.ALIVE, None, Verdict.ALIVE, Status.UP),
        # the host reports its own heartbeat stale
        (Verdict.DEAD, Verdict.ALIVE, Verdict.ALIVE, Status.DISCONNECTED),
        (Verdict.DEAD, Verdict.DEAD, Verdict.DEAD, Status.DOWN),
        (Verdict.DEAD, None, Verdict.DEAD, Status.DOWN),
        (Verdict.DEAD, Verdict.UNKNOWN, Verdict.DEAD, Status.DOWN),
        # the host does not answer
        (None, Verdict.ALIVE, Verdict.ALIVE, Status.DISCONNECTED),
        (None, Verdict.DEAD, Verdict.DEAD, Status.DOWN),
        (None, None, Verdict.UNKNOWN, Status.DISCONNECTED),
        (None, Verdict.UNKNOWN, Verdict.UNKNOWN, Status.DISCONNECTED),
    ],
)
def test_kvm_aggregation(
    host_says: Verdict | None, neighbour_says: Verdict | None, verdict: Verdict, outcome: Status
) -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM))
    agents.heartbeat("h1", host_says)
    agents.heartbeat("h2", neighbour_says)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is verdict
    assert host_outcome(finding) is outcome
    assert finding.source == "KVMInvestigator"
    assert set(finding.evidence) == {"pools", "host", "neighbours"}


def test_host_unknown_answer_still_means_up() -> None:
    # CloudStack maps any answer but "dead" to Up: the host answered, so it runs
    _, _, agents, inv, target = kvm_world()
    agents.heartbeat("h1", Verdict.UNKNOWN)
    assert host_outcome(inv.is_agent_alive(target)) is Status.UP


def test_kvm_asks_only_up_kvm_neighbours_of_the_cluster_and_stops_at_alive() -> None:
    _, _, agents, inv, target = kvm_world(
        ("h2", UP, KVM),
        ("h3", UP, HypervisorType.LXC),
        ("h4", UP, KVM),
        ("h5", Status.DOWN, KVM),
        ("h6", UP, HypervisorType.XEN_SERVER),
    )
    agents.heartbeat("h2", Verdict.DEAD)
    agents.heartbeat("h3", Verdict.ALIVE)
    agents.heartbeat("h4", Verdict.DEAD)
    finding = inv.is_agent_alive(target)
    assert agents.asked(CHECK_ON_HOST) == ["h1", "h2", "h3"]
    assert host_outcome(finding) is Status.DISCONNECTED
    assert "h3" in finding.reason


def test_kvm_later_dead_neighbour_after_unreachable_one() -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM), ("h3", UP, KVM))
    agents.heartbeat("h3", Verdict.DEAD)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.DEAD
    assert finding.evidence["neighbours"]["h2"].startswith("no answer")


def test_kvm_passes_the_fence_on_one_pool_flag_and_the_target() -> None:
    clock, directory, agents, _, target = kvm_world(("h2", UP, KVM))
    inv = KVMInvestigator(
        clock,
        directory=directory,
        gateway=agents.gateway,
        pools=InMemoryStoragePools([Pool("nfs1", "/mnt/nfs1", cluster="c1")]),
        timeout=T,
        fail_on_one_pool=True,
    )
    agents.heartbeat("h2", Verdict.DEAD)
    inv.is_agent_alive(target)
    params = next(c.params for h, c in agents.sent if h == "h2")
    assert params == {"host_id": "h1", "host_ip": "10.0.0.1", "fail_on_one_pool": True}


def test_kvm_without_ha_pool_is_unknown_and_asks_nobody() -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM), pools=False)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.UNKNOWN
    assert host_outcome(finding) is None
    assert agents.sent == []


def test_kvm_supports_kvm_and_lxc_only() -> None:
    _, _, _, inv, target = kvm_world()
    assert inv.supports(target)
    assert inv.supports(Host(id="x", hypervisor=HypervisorType.LXC))
    assert not inv.supports(Host(id="x", hypervisor=HypervisorType.XEN_SERVER))


@pytest.mark.parametrize(
    ("host_says", "verdict"),
    [(Verdict.ALIVE, Verdict.ALIVE), (Verdict.DEAD, Verdict.UNKNOWN), (None, Verdict.UNKNOWN)],
)
def test_kvm_vm_alive_follows_the_host(host_says: Verdict | None, verdict: Verdict) -> None:
    _, _, agents, inv, target = kvm_world()
    agents.heartbeat("h1", host_says)
    assert inv.is_vm_alive(Vm("vm1", host_id="h1"), target).verdict is verdict


def test_malformed_answers_are_unknown_never_dead() -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM), ("h3", UP, KVM))
    agents.replies[("h2", CHECK_ON_HOST)] = Answer(True, data={"verdict": "dead-ish"})
    agents.replies[("h3", CHECK_ON_HOST)] = Answer(False, details="script failed")
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.UNKNOWN
    assert "dead-ish" in finding.evidence["neighbours"]["h2"]
    assert "script failed" in finding.evidence["neighbours"]["h3"]


# -- agent check (SimpleInvestigator) ----------------------------------------


def agent_check() -> tuple[Agents, AgentCheckInvestigator, Host]:
    host = Host(id="h1", status=Status.UP, cluster="c1")
    agents = Agents()
    inv = AgentCheckInvestigator(
        FakeClock(), directory=InMemoryHostDirectory([host]), gateway=agents.gateway, timeout=T
    )
    return agents, inv, host


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (Answer(True, data={"power_state": "PowerOn"}), Verdict.ALIVE),
        (Answer(True, data={"power_state": "PowerOff"}), Verdict.DEAD),
        (Answer(True, data={"power_state": "PowerUnknown"}), Verdict.UNKNOWN),
        (Answer(True, data={"power_state": "PowerReportMissing"}), Verdict.UNKNOWN),
        (Answer(True, data={}), Verdict.UNKNOWN),
        (Answer(False, data={"power_state": "PowerOff"}), Verdict.UNKNOWN),
        (ProbeTimeout("slow"), Verdict.UNKNOWN),
        (None, Verdict.UNKNOWN),
    ],
)
def test_agent_check_vm(reply: Reply, verdict: Verdict) -> None:
    agents, inv, host = agent_check()
    agents.replies[("h1", CHECK_VM)] = reply
    finding = inv.is_vm_alive(Vm("vm1", name="i-2-1-VM", host_id="h1"), host)
    assert finding.verdict is verdict
    assert agents.sent[0][1].params == {"vm_name": "i-2-1-VM"}


def test_agent_check_never_judges_hosts() -> None:
    agents, inv, host = agent_check()
    assert inv.is_agent_alive(host).verdict is Verdict.UNKNOWN
    assert agents.sent == []


# -- XenServer ----------------------------------------------------------------


def xen_world(*neighbours: tuple[str, Status]) -> tuple[Agents, XenServerInvestigator, Host]:
    xen = HypervisorType.XEN_SERVER
    target = Host(id="x1", status=Status.ALERT, cluster="c1", hypervisor=xen)
    directory = InMemoryHostDirectory([target])
    for hid, status in neighbours:
        directory.add(Host(id=hid, status=status, cluster="c1", hypervisor=xen))
    directory.add(Host(id="k1", status=UP, cluster="c1"))
    agents = Agents()
    return (
        agents,
        XenServerInvestigator(FakeClock(), directory=directory, gateway=agents.gateway, timeout=T),
        target,
    )


def test_xen_dead_neighbour_decides() -> None:
    agents, inv, target = xen_world(("x2", UP), ("x3", UP))
    agents.heartbeat("x2", Verdict.UNKNOWN)
    agents.heartbeat("x3", Verdict.DEAD)
    assert inv.is_agent_alive(target).verdict is Verdict.DEAD
    assert agents.asked(CHECK_ON_HOST) == ["x2", "x3"]


def test_xen_alive_neighbour_means_dont_know_and_stops() -> None:
    agents, inv, target = xen_world(("x2", Status.CONNECTING), ("x3", UP))
    agents.heartbeat("x2", Verdict.ALIVE)
    agents.heartbeat("x3", Verdict.DEAD)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.UNKNOWN
    assert host_outcome(finding) is None
    assert agents.asked(CHECK_ON_HOST) == ["x2"]


def test_xen_skips_down_neighbours_and_other_hypervisors() -> None:
    agents, inv, target = xen_world(("x2", Status.ALERT))
    assert inv.is_agent_alive(target).verdict is Verdict.UNKNOWN
    assert agents.sent == []
    assert not inv.supports(Host(id="k", hypervisor=KVM))
    assert inv.is_vm_alive(Vm("v"), target).verdict is Verdict.UNKNOWN


# -- ping and management-address investigators --------------------------------


def pod_world(
    hypervisor: HypervisorType = KVM,
) -> tuple[Agents, InMemoryHostDirectory, InMemoryVmNetworks, Host]:
    target = Host(
        id="h1", status=Status.ALERT, pod="p1", private_ip="10.0.0.1", hypervisor=hypervisor
    )
    directory = InMemoryHostDirectory(
        [
            target,
            Host(id="h2", status=UP, pod="p1"),
            Host(id="h3", status=UP, pod="p1"),
            Host(id="h4", status=Status.DOWN, pod="p1"),
            Host(id="h5", status=UP, pod="p2"),
            Host(id="ssvm", status=UP, pod="p1", type=HostType.SECONDARY_STORAGE_VM),
        ]
    )
    return Agents(), directory, InMemoryVmNetworks(), target


def ping_ok(ip: str) -> Callable[[Command], Answer]:
    return lambda cmd: Answer(cmd.params.get("ip") == ip)


def test_ping_host_reachable_from_a_pod_neighbour_is_disconnected() -> None:
    agents, directory, _networks, target = pod_world()
    inv = PingInvestigator(FakeClock(), directory=directory, gateway=agents.gateway, timeout=T)
    agents.replies[("h2", PING_TEST)] = Answer(False)
    agents.replies[("h3", PING_TEST)] = ping_ok("10.0.0.1")
    finding = inv.is_agent_alive(target)
    assert host_outcome(finding) is Status.DISCONNECTED
    assert agents.asked(PING_TEST) == ["h2", "h3"]


def test_ping_host_unanswered_or_without_address_is_unknown() -> None:
    agents, directory, _, target = pod_world()
    inv = PingInvestigator(FakeClock(), directory=directory, gateway=agents.gateway, timeout=T)
    assert inv.is_agent_alive(target).verdict is Verdict.UNKNOWN
    assert inv.is_agent_alive(Host(id="n", pod="p1")).verdict is Verdict.UNKNOWN


def test_ping_vm_through_router_host_for_kvm() -> None:
    agents, directory, networks, target = pod_world()
    router = Router("r1", host_id="h2", private_ip="169.254.0.5")
    networks.guest["vm1"] = [GuestNic("10.1.1.10", (router,))]
    inv = PingInvestigator(
        FakeClock(), directory=directory, gateway=agents.gateway, timeout=T, networks=networks
    )
    agents.replies[("h2", PING_TEST)] = ping_ok("10.1.1.10")
    finding = inv.is_vm_alive(Vm("vm1", host_id="h1"), target)
    assert finding.verdict is Verdict.ALIVE
    assert agents.sent[0][1].params == {"ip": "10.1.1.10", "router_ip": "169.254.0.5"}


def test_ping_vm_of_other_hypervisors_tries_every_up_host_of_the_router_pod() -> None:
    agents, directory, networks, target = pod_world(HypervisorType.VMWARE)
    networks.guest["vm1"] = [GuestNic("10.1.1.10", (Router("r1", "h2", "169.254.0.5", pod="p1"),))]
    inv = PingInvestigator(
        FakeClock(), directory=directory, gateway=agents.gateway, timeout=T, networks=networks
    )
    vm = Vm("vm1", host_id="h1", hypervisor=HypervisorType.VMWARE)
    finding = inv.is_vm_alive(vm, target)
    assert finding.verdict is Verdict.UNKNOWN
    assert sorted(agents.asked(PING_TEST)) == ["h2", "h3", "ssvm"]


def test_ping_vm_only_user_vms_and_needs_networks() -> None:
    agents, directory, networks, target = pod_world()
    bare = PingInvestigator(FakeClock(), directory=directory, gateway=agents.gateway, timeout=T)
    assert bare.is_vm_alive(Vm("vm1"), target).verdict is Verdict.UNKNOWN
    inv = PingInvestigator(
        FakeClock(), directory=directory, gateway=agents.gateway, timeout=T, networks=networks
    )
    assert inv.is_vm_alive(Vm("r", type=VmType.DOMAIN_ROUTER), target).verdict is Verdict.UNKNOWN
    assert agents.sent == []


def test_management_ip_pings_system_vms_from_pod_neighbours() -> None:
    agents, directory, networks, target = pod_world()
    networks.management["cpvm"] = ["10.2.0.7"]
    inv = ManagementIPInvestigator(
        FakeClock(), directory=directory, gateway=agents.gateway, timeout=T, networks=networks
    )
    agents.replies[("h3", PING_TEST)] = ping_ok("10.2.0.7")
    vm = Vm("cpvm", type=VmType.CONSOLE_PROXY, host_id="h1")
    assert inv.is_vm_alive(vm, target).verdict is Verdict.ALIVE
    assert inv.is_agent_alive(target).verdict is Verdict.UNKNOWN
    assert inv.is_vm_alive(Vm("user"), target).verdict is Verdict.UNKNOWN
    assert inv.is_vm_alive(Vm("ssvm2", type=VmType.SECONDARY_STORAGE_VM), target).verdict is (
        Verdict.UNKNOWN
    )
    networks.management["cpvm"] = ["10.2.0.8"]
    assert inv.is_vm_alive(vm, target).verdict is Verdict.UNKNOWN


def test_management_ip_without_networks_is_unknown() -> None:
    agents, directory, _, target = pod_world()
    inv = ManagementIPInvestigator(
        FakeClock(), directory=directory, gateway=agents.gateway, timeout=T
    )
    vm = Vm("cpvm", type=VmType.CONSOLE_PROXY)
    assert inv.is_vm_alive(vm, target).verdict is Verdict.UNKNOWN


# -- VMware and the hypervisor probe ----------------------------------------


def test_vmware_host_is_always_disconnected_and_its_vms_alive() -> None:
    inv = VMwareInvestigator(FakeClock())
    host = Host(id="esx", hypervisor=HypervisorType.VMWARE)
    assert inv.supports(host)
    assert not inv.supports(Host(id="k"))
    assert host_outcome(inv.is_agent_alive(host)) is Status.DISCONNECTED
    assert inv.is_vm_alive(Vm("v"), host).verdict is Verdict.ALIVE


def test_hypervisor_probe_answering_means_alive_but_cut_off() -> None:
    probe = FakeHypervisorProbe(answering={"h1": True})
    inv = HypervisorInvestigator(FakeClock(), probe=probe, timeout=T)
    host = Host(id="h1")
    finding = inv.is_agent_alive(host)
    assert finding.verdict is Verdict.ALIVE
    assert finding.reachable is False
    assert host_outcome(finding) is Status.DISCONNECTED
    assert finding.evidence["uri"] == "fake://h1"


def test_hypervisor_probe_silence_is_unknown() -> None:
    probe = FakeHypervisorProbe(error=lambda h: ProbeTimeout("no answer in 5 s", host_id=h.id))
    inv = HypervisorInvestigator(FakeClock(), probe=probe, timeout=T)
    finding = inv.is_agent_alive(Host(id="h1"))
    assert finding.verdict is Verdict.UNKNOWN
    assert finding.evidence["error"] == "ProbeTimeout"


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        (DomainState.RUNNING, Verdict.ALIVE),
        (DomainState.SHUTOFF, Verdict.DEAD),
        (DomainState.MISSING, Verdict.DEAD),
        (DomainState.OTHER, Verdict.UNKNOWN),
    ],
)
def test_hypervisor_probe_domain_states(state: DomainState, verdict: Verdict) -> None:
    probe = FakeHypervisorProbe(answering={"h1": True}, domains={("h1", "i-1"): state})
    inv = HypervisorInvestigator(FakeClock(), probe=probe, timeout=T)
    assert inv.is_vm_alive(Vm("vm1", name="i-1"), Host(id="h1")).verdict is verdict


def test_hypervisor_probe_supports_configured_hypervisors() -> None:
    inv = HypervisorInvestigator(FakeClock(), probe=FakeHypervisorProbe(), timeout=T)
    assert inv.supports(Host(id="k"))
    assert not inv.supports(Host(id="x", hypervisor=HypervisorType.XEN_SERVER))
    with pytest.raises(ValueError, match="timeout"):
        HypervisorInvestigator(FakeClock(), probe=FakeHypervisorProbe(), timeout=0)


# -- registry, discovery, contract -------------------------------------------


def context(**kwargs: object) -> InvestigatorContext:
    return InvestigatorContext(
        clock=FakeClock(),
        directory=InMemoryHostDirectory(),
        gateway=FakeAgentGateway(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_builtins_depend_on_the_ports_given() -> None:
    bare = [i.name for i in builtin_investigators(context())]
    assert bare == [
        "SimpleInvestigator",
        "XenServerInvestigator",
        "VMwareInvestigator",
        "PingInvestigator",
        "ManagementIPSysVMInvestigator",
    ]
    full = builtin_investigators(
        context(pools=InMemoryStoragePools(), hypervisor_probe=FakeHypervisorProbe())
    )
    assert {"KVMInvestigator", "LibvirtInvestigator"} <= {i.name for i in full}


def test_build_chain_applies_order_and_exclude() -> None:
    settings = Settings.from_mapping({"ha.investigators.exclude": "PingInvestigator"})
    chain = build_chain(
        context(
            settings=settings, pools=InMemoryStoragePools(), hypervisor_probe=FakeHypervisorProbe()
        ),
        discover=False,
    )
    assert chain.names == [
        "SimpleInvestigator",
        "XenServerInvestigator",
        "KVMInvestigator",
        "VMwareInvestigator",
        "ManagementIPSysVMInvestigator",
        "LibvirtInvestigator",
    ]
    reordered = Settings.from_mapping(
        {"ha.investigators.order": "LibvirtInvestigator,KVMInvestigator"}
    )
    chain = build_chain(
        context(
            settings=reordered, pools=InMemoryStoragePools(), hypervisor_probe=FakeHypervisorProbe()
        ),
        discover=False,
    )
    assert chain.names[:2] == ["LibvirtInvestigator", "KVMInvestigator"]


def test_build_chain_uses_the_timeout_or_ping_interval() -> None:
    chain = build_chain(
        context(settings=Settings.from_mapping({"ping.interval": 7})), discover=False
    )
    assert chain.investigators[0].timeout == 7  # type: ignore[attr-defined]
    chain = build_chain(context(timeout=2.5), discover=False)
    assert chain.investigators[0].timeout == 2.5  # type: ignore[attr-defined]


def ep(name: str, target: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(
        name, f"tests.unit.plugin_examples:{target}", "cloudha.investigators"
    )


def test_discovery_loads_factories_and_from_context() -> None:
    found = discover_investigators(
        context(), entry_points=[ep("b", "WithFromContext"), ep("a", "ExampleInvestigator")]
    )
    assert [i.name for i in found] == ["ExamplePlugin", "FromContextPlugin"]
    chain = build_chain(context(), entry_points=[ep("a", "ExampleInvestigator")])
    assert chain.names[-1] == "ExamplePlugin"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("DoesNotExist", "failed to load"),
        ("raising_factory", "raised while being built: RuntimeError: cannot reach"),
        ("not_an_investigator", "not an Investigator"),
        ("NOT_CALLABLE", "not callable"),
    ],
)
def test_broken_plugins_are_configuration_errors(target: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        discover_investigators(context(), entry_points=[ep("broken", target)])
    assert info.value.key == "cloudha.investigators"
    assert "'broken'" in str(info.value)


def test_missing_module_plugin_is_a_configuration_error() -> None:
    bad = importlib.metadata.EntryPoint("gone", "no_such_module_xyz:Thing", "cloudha.investigators")
    with pytest.raises(ConfigurationError, match="ModuleNotFoundError"):
        discover_investigators(context(), entry_points=[bad])


def test_installed_entry_points_are_discovered_by_default() -> None:
    # nothing third-party is installed in the test venv: discovery finds nothing, quietly
    assert discover_investigators(context()) == []


def test_every_builtin_meets_the_contract() -> None:
    directory = InMemoryHostDirectory([Host(id="n1", status=UP, cluster="contract-c1")])
    agents = Agents()
    agents.heartbeat("n1", Verdict.DEAD)
    ctx = InvestigatorContext(
        clock=FakeClock(),
        directory=directory,
        gateway=agents.gateway,
        pools=InMemoryStoragePools([Pool("nfs", "/mnt/nfs", cluster="contract-c1")]),
        networks=InMemoryVmNetworks(),
        hypervisor_probe=FakeHypervisorProbe(answering={"contract-kvm": True}),
    )
    for inv in builtin_investigators(ctx):
        check_investigator(inv)


class Broken(BaseInvestigator):
    name = "Broken"

    def _agent_alive(self, host: Host) -> Finding:
        if host.private_ip is None:
            raise RuntimeError("boom")
        return Finding(Verdict.DEAD, "SomeoneElse", "", reachable=True, evidence={"x": object()})

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        return None  # type: ignore[return-value]


def test_contract_checker_lists_every_problem() -> None:
    with pytest.raises(AssertionError) as info:
        check_investigator(Broken(FakeClock()))
    text = str(info.value)
    for expected in (
        "raised RuntimeError: boom",
        "source is 'SomeoneElse'",
        "needs a reason",
        "DEAD but reachable=True",
        "not JSON-able",
        "_vm_alive returned None, not a Finding",
    ):
        assert expected in text


def test_contract_checker_rejects_nameless_investigators() -> None:
    class Nameless(BaseInvestigator):
        name = ""

        def _agent_alive(self, host: Host) -> Finding:
            return self.unknown("x")

    with pytest.raises(AssertionError, match="name must be a non-empty str"):
        check_investigator(Nameless(FakeClock()))


def zone_world(zone_witnesses: int = 3) -> tuple[Agents, KVMInvestigator, Host]:
    target = Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1", watchdog=True)
    directory = InMemoryHostDirectory([target])
    for i in range(1, 6):
        directory.add(Host(id=f"w{i}", status=UP, cluster="c2"))
    directory.add(Host(id="x1", status=UP, cluster="c3", hypervisor=HypervisorType.XEN_SERVER))
    directory.add(Host(id="w0", status=Status.ALERT, cluster="c2"))
    agents = Agents()
    inv = KVMInvestigator(
        FakeClock(),
        directory=directory,
        gateway=agents.gateway,
        pools=InMemoryStoragePools([Pool("zp", "/mnt/zp")]),  # zone-wide
        timeout=T,
        zone_witnesses=zone_witnesses,
    )
    return agents, inv, target


def test_whole_cluster_lost_asks_hosts_sharing_a_zone_wide_pool() -> None:
    agents, inv, target = zone_world()
    agents.heartbeat("w2", Verdict.DEAD)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.DEAD
    assert agents.asked(CHECK_ON_HOST) == ["h1", "w1", "w2", "w3"]  # capped at three witnesses


def test_zone_witness_alive_keeps_the_host_disconnected() -> None:
    agents, inv, target = zone_world()
    agents.heartbeat("w1", Verdict.DEAD)
    agents.heartbeat("w2", Verdict.ALIVE)
    assert host_outcome(inv.is_agent_alive(target)) is Status.DISCONNECTED
    assert agents.asked(CHECK_ON_HOST) == ["h1", "w1", "w2"]


def test_zone_witnesses_off_is_cloudstack_behaviour() -> None:
    agents, inv, target = zone_world(zone_witnesses=0)
    agents.heartbeat("w1", Verdict.DEAD)
    assert host_outcome(inv.is_agent_alive(target)) is Status.DISCONNECTED
    assert agents.asked(CHECK_ON_HOST) == ["h1"]
    with pytest.raises(ValueError, match="zone_witnesses"):
        zone_world(zone_witnesses=-1)


def test_zone_witnesses_are_not_asked_when_the_cluster_decided() -> None:
    _, directory, agents, inv, target = kvm_world(("h2", UP, KVM))
    directory.add(Host(id="w1", status=UP, cluster="c2"))
    agents.heartbeat("h2", Verdict.DEAD)
    assert inv.is_agent_alive(target).verdict is Verdict.DEAD
    assert "w1" not in agents.asked(CHECK_ON_HOST)


def test_an_answering_host_is_up_without_asking_neighbours() -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM))
    agents.heartbeat("h1", Verdict.ALIVE)
    agents.heartbeat("h2", Verdict.DEAD)
    assert host_outcome(inv.is_agent_alive(target)) is Status.UP
    assert agents.asked(CHECK_ON_HOST) == ["h1"]


# -- a stale heartbeat is proof only with a watchdog (issue 12) -------------------


@pytest.mark.parametrize(
    ("host_says", "neighbour_says", "outcome"),
    [
        # the host answers that its own heartbeat is stale: it runs, so Up
        (Verdict.DEAD, Verdict.DEAD, Status.UP),
        (Verdict.DEAD, None, Status.UP),
        # silent host, stale heartbeat: nobody can tell, never Down
        (None, Verdict.DEAD, Status.DISCONNECTED),
        (None, Verdict.ALIVE, Status.DISCONNECTED),
    ],
)
def test_kvm_without_watchdog_never_downs_a_host_on_a_stale_heartbeat(
    host_says: Verdict | None, neighbour_says: Verdict | None, outcome: Status
) -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM), watchdog=False, self_fence=False)
    agents.heartbeat("h1", host_says)
    agents.heartbeat("h2", neighbour_says)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is not Verdict.DEAD
    assert host_outcome(finding) is outcome
    said = finding.evidence["neighbours"]
    if neighbour_says is Verdict.DEAD and host_says is None:
        assert said["h2"] == (
            "UNKNOWN: hb DEAD; stale is no proof: h1 has no watchdog and self-fencing is"
            " off: a hung or isolated host may resume with its VMs"
        )


def test_kvm_without_watchdog_asks_every_neighbour_after_a_stale_answer() -> None:
    _, _, agents, inv, target = kvm_world(("h2", UP, KVM), ("h3", UP, KVM), watchdog=False)
    agents.heartbeat("h1", None)
    agents.heartbeat("h2", Verdict.DEAD)
    agents.heartbeat("h3", Verdict.ALIVE)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.ALIVE
    assert host_outcome(finding) is Status.DISCONNECTED
    assert agents.asked(CHECK_ON_HOST) == ["h1", "h2", "h3"]


def test_stale_proof_rule() -> None:
    from cloudha.investigators import judge_stale, stale_proof

    guarded = stale_proof(Host("h1", watchdog=True), self_fence=False)
    assert guarded.proves_death
    for self_fence in (True, False):
        bare = stale_proof(Host("h1"), self_fence=self_fence)
        assert not bare.proves_death
        assert "a hung" in bare.reason
    off = stale_proof(Host("h1"), self_fence=False)
    assert off.reason == (
        "h1 has no watchdog and self-fencing is off: a hung or isolated host may resume"
        " with its VMs"
    )
    assert judge_stale(Verdict.DEAD, "stale", guarded) == (Verdict.DEAD, "stale")
    assert judge_stale(Verdict.DEAD, "stale", off) == (
        Verdict.UNKNOWN,
        f"stale; stale is no proof: {off.reason}",
    )
    assert judge_stale(Verdict.ALIVE, "fresh", off) == (Verdict.ALIVE, "fresh")
    assert judge_stale(Verdict.UNKNOWN, "?", off) == (Verdict.UNKNOWN, "?")


def test_registry_passes_the_self_fence_setting_to_the_kvm_investigator() -> None:
    from cloudha.investigators import InvestigatorContext

    directory = InMemoryHostDirectory()
    ctx = InvestigatorContext(
        clock=FakeClock(),
        directory=directory,
        gateway=FakeAgentGateway(),
        settings=Settings.from_mapping(
            {"reboot.host.and.alert.management.on.heartbeat.timeout": False}
        ),
        pools=InMemoryStoragePools([]),
    )
    kvm = [i for i in builtin_investigators(ctx) if isinstance(i, KVMInvestigator)]
    assert len(kvm) == 1
    assert kvm[0].self_fence is False


def test_libvirt_host_finding_is_vm_level_only_with_running_domains() -> None:
    from cloudha.investigators import Witness

    host = Host(id="h1", status=Status.ALERT)
    probe = FakeHypervisorProbe(answering={"h1": True})
    inv = HypervisorInvestigator(FakeClock(), probe=probe, timeout=T)
    assert inv.vm_witness is True
    idle = inv.is_agent_alive(host)
    assert idle.verdict is Verdict.ALIVE
    assert idle.witness is Witness.HOST
    assert idle.no_vm_runs is True  # an idle hypervisor: nothing runs there
    assert idle.to_dict()["no_vm_runs"] is True
    probe.domains[("h1", "vm1")] = DomainState.RUNNING
    busy = inv.is_agent_alive(host)
    assert busy.witness is Witness.VM
    assert busy.no_vm_runs is False
    assert "no_vm_runs" not in busy.to_dict()
    assert busy.reason == "the hypervisor on h1 answers, 1 domain(s) running; its agent does not"
    assert busy.to_dict()["witness"] == "vm"


@pytest.mark.parametrize(
    ("connected_ago", "verdict"), [(464.0, Verdict.UNKNOWN), (466.0, Verdict.DEAD)]
)
def test_kvm_stale_heartbeat_of_a_host_back_within_the_stale_bound_proves_nothing(
    connected_ago: float, verdict: Verdict
) -> None:
    # A host that reconnected (a reboot) less than stale_after ago runs a
    # writer that may not have reached this pool yet: the stamp left by its
    # previous life is no proof (465 s: the default one-pool bound).
    clock = FakeClock()
    now = clock.now().timestamp()
    target = Host(
        id="h1",
        status=Status.UP,
        cluster="c1",
        private_ip="10.0.0.1",
        watchdog=True,
        last_ping=now - connected_ago,
    )
    directory = InMemoryHostDirectory([target, Host(id="h2", status=UP, cluster="c1")])
    agents = Agents()
    agents.heartbeat("h1", None)
    agents.heartbeat("h2", Verdict.DEAD, "heartbeat on nfs1 is 500 s old, limit 465 s")
    inv = KVMInvestigator(
        clock,
        directory=directory,
        gateway=agents.gateway,
        pools=InMemoryStoragePools([Pool("nfs1", "/mnt/nfs1", cluster="c1")]),
        timeout=T,
        timing=HeartbeatTiming(),
    )
    finding = inv.is_agent_alive(target)
    assert finding.verdict is verdict
    if verdict is Verdict.UNKNOWN:
        assert "within the 465 s stale bound" in finding.evidence["neighbours"]["h2"]


def test_the_builtin_kvm_investigator_knows_the_heartbeat_timing() -> None:
    settings = Settings()
    ctx = InvestigatorContext(
        clock=FakeClock(),
        settings=settings,
        directory=InMemoryHostDirectory([]),
        gateway=FakeAgentGateway(),
        pools=InMemoryStoragePools([]),
    )
    (kvm,) = [i for i in builtin_investigators(ctx) if isinstance(i, KVMInvestigator)]
    assert kvm.timing == HeartbeatTiming.from_settings(settings)


# -- BMCInvestigator: the power state as a witness ------------------------------


def bmc_world(
    bmc: FakeBmc | None = None, *, configured: bool = True
) -> tuple[FakeClock, OutOfBandManager, FakeBmc, BMCInvestigator, Host, RecordingAlertSink]:
    clock = FakeClock()
    driver = FakePowerDriver(advance=clock.advance)
    fake = driver.add("10.1.0.1", bmc if bmc is not None else FakeBmc("secret"))
    configs = StaticOobmConfigs(
        {"h1": OobmConfig("fake", "10.1.0.1", "admin", "secret", host_id="h1")}
        if configured
        else {}
    )
    alerts = RecordingAlertSink()
    oobm = OutOfBandManager(clock=clock, configs=configs, drivers=[driver], alerts=alerts)
    inv = BMCInvestigator(clock, oobm=oobm, timeout=T)
    return clock, oobm, fake, inv, Host(id="h1", status=Status.ALERT), alerts


def test_bmc_power_off_is_dead_and_drives_the_power_state_machine() -> None:
    clock, oobm, bmc, inv, host, _ = bmc_world(FakeBmc("secret", power="off"))
    clock.advance(7.0)
    finding = inv.is_agent_alive(host)
    assert finding.verdict is Verdict.DEAD
    assert finding.source == "BMCInvestigator"
    assert finding.reason == "BMC reads the power Off"
    assert finding.evidence == {"power": "Off", "power_state_machine": "Off"}
    assert finding.no_vm_runs is True  # a powered-off host runs nothing
    assert finding.observed_at == 7.0
    assert host_outcome(finding) is Status.DOWN
    assert bmc.calls == [PowerOperation.STATUS]
    assert oobm.power_state("h1") is PowerState.OFF


def test_bmc_power_on_is_no_proof_of_life() -> None:
    _, oobm, _, inv, host, _ = bmc_world(FakeBmc("secret", power="on"))
    finding = inv.is_agent_alive(host)
    assert finding.verdict is Verdict.UNKNOWN
    assert "no proof of life" in finding.reason
    assert finding.evidence["power"] == "On"
    assert finding.no_vm_runs is False
    assert host_outcome(finding) is None
    assert oobm.power_state("h1") is PowerState.ON


@pytest.mark.parametrize(
    ("bmc", "configured", "reason"),
    [
        (FakeBmc("secret", silent=True), True, "BMC did not answer: BMC 10.1.0.1 silent for 5s"),
        (FakeBmc("other", power="off"), True, "BMC did not answer: BMC 10.1.0.1 refused"),
        (FakeBmc("secret", power="off"), False, "host has no out-of-band management"),
    ],
)
def test_a_bmc_that_cannot_tell_is_unknown(bmc: FakeBmc, configured: bool, reason: str) -> None:
    _, _, _, inv, host, alerts = bmc_world(bmc, configured=configured)
    finding = inv.is_agent_alive(host)
    assert finding.verdict is Verdict.UNKNOWN
    assert finding.reason.startswith(reason)
    # A refused password raises the OOBM authentication alert, without the password.
    if bmc.password == "other":
        assert [a.type.value for a in alerts.alerts] == ["ALERT.OOBM_AUTH_ERROR"]
        assert "secret" not in repr(alerts.alerts) + repr(finding)


def test_a_bmc_answer_without_a_power_state_is_unknown() -> None:
    class Vague(BasePowerDriver):
        name = "fake"

        def _execute(
            self, config: OobmConfig, operation: PowerOperation, timeout: float
        ) -> PowerResult:
            return PowerResult(operation, False, None, "Chassis Power is unknown")

    clock = FakeClock()
    configs = StaticOobmConfigs({"h1": OobmConfig("fake", "10.1.0.1", "admin", "secret")})
    oobm = OutOfBandManager(clock=clock, configs=configs, drivers=[Vague()])
    finding = BMCInvestigator(clock, oobm=oobm, timeout=T).is_agent_alive(Host(id="h1"))
    assert finding.verdict is Verdict.UNKNOWN
    assert finding.reason == "BMC answered without a power state: Chassis Power is unknown"
    assert oobm.power_state("h1") is PowerState.UNKNOWN


def test_bmc_investigator_needs_a_positive_timeout_and_a_driver() -> None:
    clock = FakeClock()
    oobm = OutOfBandManager(clock=clock, configs=StaticOobmConfigs(), drivers=[])
    with pytest.raises(ConfigurationError, match="timeout must be positive"):
        BMCInvestigator(clock, oobm=oobm, timeout=0)
    assert not BMCInvestigator(clock, oobm=oobm, timeout=T).supports(Host(id="h1"))
    # No power driver, no witness in the built chain.
    ctx = InvestigatorContext(
        clock=clock, directory=InMemoryHostDirectory(), gateway=Agents().gateway, oobm=oobm
    )
    assert "BMCInvestigator" not in [i.name for i in builtin_investigators(ctx)]


def test_the_bmc_power_off_overrules_a_heartbeat_disconnected_but_not_running_vms() -> None:
    clock, oobm, bmc, _, _, _ = bmc_world(FakeBmc("secret", power="on"))
    target = Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1")
    directory = InMemoryHostDirectory([target, Host(id="h2", status=UP, cluster="c1")])
    agents = Agents()
    agents.heartbeat("h2", Verdict.ALIVE, "heartbeat on nfs1 is 30 s old")
    probe = FakeHypervisorProbe()  # the hypervisor does not answer: it has nothing to say
    ctx = InvestigatorContext(
        clock=clock,
        directory=directory,
        gateway=agents.gateway,
        pools=InMemoryStoragePools([Pool("nfs1", "/mnt/nfs1", cluster="c1")]),
        hypervisor_probe=probe,
        oobm=oobm,
        timeout=T,
    )
    chain = build_chain(ctx, discover=False)
    # CloudStack's default order does not list it: it comes after every listed witness.
    assert chain.names.index("BMCInvestigator") > chain.names.index("ManagementIPSysVMInvestigator")
    # Power On: the neighbour's fresh heartbeat decides, as in CloudStack.
    result = chain.investigate_host(target)
    assert (result.status, result.decided_by) == (Status.DISCONNECTED, "KVMInvestigator")
    assert [f.source for f in result.findings][-2:] == ["KVMInvestigator", "BMCInvestigator"]
    assert result.no_vm_runs is False
    # Power Off is physical proof: it outranks a heartbeat that is merely not stale yet.
    bmc.power = "off"
    result = chain.investigate_host(target)
    assert (result.status, result.decided_by) == (Status.DOWN, "BMCInvestigator")
    assert result.verdict is Verdict.DEAD
    assert result.no_vm_runs is True  # the host's VMs died: no fence needed
    # Domains seen running on the host outrank the power reading (a BMC wired to the wrong host).
    probe.answering["h1"] = True
    probe.domains[("h1", "i-1")] = DomainState.RUNNING
    result = chain.investigate_host(target)
    assert result.decided_by == "LibvirtInvestigator"
    assert result.status is not Status.DOWN
    assert result.no_vm_runs is False  # a verdict other than Down proves nothing dead


def test_a_death_proof_witness_does_not_overrule_up_or_a_vm_level_disconnected() -> None:
    clock = FakeClock()

    class Says(BaseInvestigator):
        def __init__(self, name: str, finding: Finding, death_proof: bool = False) -> None:
            super().__init__(clock)
            self.name = name
            self.death_proof = death_proof
            self.answer = finding
            self.asked = 0

        def _agent_alive(self, host: Host) -> Finding:
            self.asked += 1
            return self.answer

    dead = Says("Power", Finding(Verdict.DEAD, "Power", "read Off"), death_proof=True)
    host = Host(id="h1", status=Status.ALERT)
    for first, expected in (
        (Finding(Verdict.ALIVE, "A", "agent answered", reachable=True), Status.UP),
        (
            Finding(Verdict.ALIVE, "A", "domains run", reachable=False, witness=Witness.VM),
            Status.DISCONNECTED,
        ),
    ):
        chain = InvestigatorChain([Says("A", first), dead])
        result = chain.investigate_host(host)
        assert (result.status, result.decided_by) == (expected, "A")
    assert dead.asked == 0
    # A DEAD of a witness without death_proof does not overrule a Disconnected.
    unreachable = Finding(Verdict.UNKNOWN, "A", "nobody can judge", reachable=False)
    plain = Says("Plain", Finding(Verdict.DEAD, "Plain", "guess"))
    result = InvestigatorChain([Says("A", unreachable), plain]).investigate_host(host)
    assert (result.status, result.decided_by, plain.asked) == (Status.DISCONNECTED, "A", 0)
    result = InvestigatorChain([Says("A", unreachable), plain, dead]).investigate_host(host)
    assert (result.status, result.decided_by) == (Status.DOWN, "Power")


def test_bmc_investigator_passes_the_contract_checker() -> None:
    _, _, _, inv, _, _ = bmc_world(FakeBmc("secret", power="off"))
    check_investigator(inv)
