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
