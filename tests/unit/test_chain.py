"""Investigator chain: registry ordering, exclusion, first decisive finding (spec §4)."""

from __future__ import annotations

import pytest

from cloudha import (
    BaseInvestigator,
    ConfigurationError,
    Finding,
    Host,
    HypervisorType,
    InvestigatorChain,
    ProbeTimeout,
    Settings,
    Status,
    Verdict,
    Vm,
    host_outcome,
)
from cloudha.investigators import order_by_name
from cloudha.testing import FakeClock, ScriptedInvestigator


def test_registry_order_listed_first_then_registration_order_minus_excluded() -> None:
    names = ["Simulator Investigator", "KVMInvestigator", "Custom", "SimpleInvestigator"]
    order = Settings().ha_investigators_order
    assert order_by_name(names, order) == [
        "SimpleInvestigator",
        "KVMInvestigator",
        "Simulator Investigator",
        "Custom",
    ]
    assert order_by_name(names, order, ["KVMInvestigator"]) == [
        "SimpleInvestigator",
        "Simulator Investigator",
        "Custom",
    ]


def test_first_non_null_outcome_decides_and_later_ones_are_not_asked() -> None:
    clock = FakeClock()
    a = ScriptedInvestigator(clock, "A")
    b = ScriptedInvestigator(clock, "B", script={"h": Verdict.DEAD})
    c = ScriptedInvestigator(clock, "C", script={"h": Verdict.ALIVE})
    chain = InvestigatorChain([c, b, a], order=["A", "B"])
    assert chain.names == ["A", "B", "C"]
    result = chain.investigate_host(Host("h"))
    assert result.status is Status.DOWN
    assert result.decided_by == "B"
    assert [f.source for f in result.findings] == ["A", "B"]
    assert c.asked == []


def test_unsupported_investigators_are_skipped() -> None:
    clock = FakeClock()
    xen_only = ScriptedInvestigator(
        clock,
        "Xen",
        script={"h": Verdict.DEAD},
        supported=lambda host: host.hypervisor is HypervisorType.XEN_SERVER,
    )
    chain = InvestigatorChain([xen_only])
    result = chain.investigate_host(Host("h"))
    assert result.status is None
    assert result.findings == ()


def test_nobody_can_tell_is_null() -> None:
    chain = InvestigatorChain([ScriptedInvestigator(FakeClock(), "A")])
    result = chain.investigate_host(Host("h"))
    assert result.status is None
    assert result.verdict is Verdict.UNKNOWN
    assert len(result.findings) == 1


def test_alive_unreachable_maps_to_disconnected() -> None:
    assert host_outcome(Finding(Verdict.ALIVE, "x", "r", reachable=False)) is Status.DISCONNECTED
    assert host_outcome(Finding(Verdict.ALIVE, "x", "r", reachable=True)) is Status.UP
    assert host_outcome(Finding(Verdict.ALIVE, "x", "r")) is Status.UP
    assert host_outcome(Finding(Verdict.DEAD, "x", "r")) is Status.DOWN
    assert host_outcome(Finding(Verdict.UNKNOWN, "x", "r")) is None
    assert host_outcome(Finding(Verdict.UNKNOWN, "x", "r", reachable=True)) is None
    assert host_outcome(Finding(Verdict.UNKNOWN, "x", "r", reachable=False)) is Status.DISCONNECTED
    assert host_outcome(None) is None


def test_plugin_bugs_and_probe_errors_are_unknown_never_dead() -> None:
    class Buggy(BaseInvestigator):
        name = "Buggy"

        def _agent_alive(self, host: Host) -> Finding:
            raise ZeroDivisionError

    class Timid(BaseInvestigator):
        name = "Timid"

        def _agent_alive(self, host: Host) -> Finding:
            raise ProbeTimeout("slow", host_id=host.id)

    clock = FakeClock(5.0)
    result = InvestigatorChain([Buggy(clock), Timid(clock)]).investigate_host(Host("h"))
    assert result.status is None
    assert [f.verdict for f in result.findings] == [Verdict.UNKNOWN, Verdict.UNKNOWN]
    assert "ZeroDivisionError" in result.findings[0].reason
    assert result.findings[1].observed_at == 5.0
    assert result.findings[1].evidence == {"error": "ProbeTimeout"}


def test_vm_chain_first_alive_or_dead() -> None:
    clock = FakeClock()
    a = ScriptedInvestigator(clock, "A")
    b = ScriptedInvestigator(clock, "B", script={"vm1": Verdict.ALIVE})
    result = InvestigatorChain([a, b]).investigate_vm(Vm("vm1"), Host("h"))
    assert result.verdict is Verdict.ALIVE
    assert result.decided_by == "B"


def test_duplicate_or_missing_names_are_configuration_errors() -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError, match="'A'"):
        InvestigatorChain([ScriptedInvestigator(clock, "A"), ScriptedInvestigator(clock, "A")])
    with pytest.raises(ConfigurationError, match="no name"):
        InvestigatorChain([ScriptedInvestigator(clock, "")])


# -- VM-level witnesses outrank the host's heartbeat ---------------------------------


class VmWitness(BaseInvestigator):
    """A witness that sees the host's VMs (like libvirt): ALIVE at VM level, unreachable."""

    vm_witness = True

    def __init__(self, clock: FakeClock, name: str, sees_vms: bool | None) -> None:
        super().__init__(clock)
        self.name = name
        self.sees_vms = sees_vms
        self.asked = 0

    def _agent_alive(self, host: Host) -> Finding:
        from cloudha.investigators import Witness

        self.asked += 1
        if self.sees_vms is None:
            raise ProbeTimeout("silent", host_id=host.id)
        witness = Witness.VM if self.sees_vms else Witness.HOST
        return self.finding(Verdict.ALIVE, "domains", reachable=False, witness=witness)


def test_vm_level_alive_after_a_dead_overrules_it() -> None:
    clock = FakeClock()
    heartbeat = ScriptedInvestigator(clock, "Heartbeat", script={"h": Verdict.DEAD})
    other = ScriptedInvestigator(clock, "Other", script={"h": Verdict.ALIVE})
    libvirt = VmWitness(clock, "Libvirt", sees_vms=True)
    chain = InvestigatorChain([heartbeat, other, libvirt])
    result = chain.investigate_host(Host("h"))
    assert result.status is Status.DISCONNECTED
    assert result.verdict is Verdict.ALIVE
    assert result.decided_by == "Libvirt"
    assert [f.source for f in result.findings] == ["Heartbeat", "Libvirt"]
    assert other.asked == []  # not a VM witness: CloudStack's order still skips it


@pytest.mark.parametrize("sees_vms", [False, None])
def test_dead_stands_when_the_vm_witness_sees_no_vms(sees_vms: bool | None) -> None:
    clock = FakeClock()
    heartbeat = ScriptedInvestigator(clock, "Heartbeat", script={"h": Verdict.DEAD})
    libvirt = VmWitness(clock, "Libvirt", sees_vms=sees_vms)
    result = InvestigatorChain([heartbeat, libvirt]).investigate_host(Host("h"))
    assert result.status is Status.DOWN
    assert result.decided_by == "Heartbeat"
    assert [f.source for f in result.findings] == ["Heartbeat", "Libvirt"]


def test_vm_witness_is_not_asked_after_a_decision_other_than_dead() -> None:
    clock = FakeClock()
    agent = ScriptedInvestigator(clock, "Agent", script={"h": Verdict.ALIVE})
    libvirt = VmWitness(clock, "Libvirt", sees_vms=True)
    result = InvestigatorChain([agent, libvirt]).investigate_host(Host("h"))
    assert result.status is Status.UP
    assert libvirt.asked == 0
