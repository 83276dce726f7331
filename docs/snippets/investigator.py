"""How-to "Write an investigator" (docs/how-to/investigator.md), as one program.

A witness that asks the top-of-rack switch whether a host's port still
carries traffic. tests/unit/test_docs_snippets.py runs it:
``python docs/snippets/investigator.py``.
"""

from __future__ import annotations

import threading
from typing import Protocol

from cloudha import (
    BaseInvestigator,
    Finding,
    Host,
    InvestigatorChain,
    InvestigatorContext,
    ProbeTimeout,
    Settings,
    Status,
    Verdict,
    build_chain,
)
from cloudha.clock import Clock
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    check_investigator,
)

# --8<-- [start:switch]


class SwitchPorts(Protocol):
    """Your own port to the switches (SNMP, a vendor API ...)."""

    def port_state(self, host: Host, *, timeout: float) -> str:
        """``"up"``, ``"down"`` or ``"unknown"``; raises ProbeTimeout when the switch is silent."""
        ...

    def saw_frames(self, host: Host, *, seconds: float, timeout: float) -> bool:
        """Whether frames from the host crossed its port in the last ``seconds``."""
        ...


# --8<-- [end:switch]
# --8<-- [start:investigator]


class RackSwitchInvestigator(BaseInvestigator):
    """Traffic on a host's switch port: the host runs, even if its agent is silent."""

    name = "RackSwitchInvestigator"  # what ha.investigators.order/.exclude refer to

    def __init__(self, clock: Clock, switch: SwitchPorts, *, timeout: float = 5.0) -> None:
        super().__init__(clock)
        self.switch = switch
        self.timeout = timeout

    @classmethod
    def from_context(cls, ctx: InvestigatorContext) -> RackSwitchInvestigator:
        """The entry-point factory: build it from what the registry hands every plugin."""
        return cls(ctx.clock, connect_to_switches(), timeout=ctx.timeout or 5.0)

    def supports(self, host: Host) -> bool:
        # Cheap and without I/O: only hosts cabled to a switch we manage.
        return host.cluster is not None and host.private_ip is not None

    def _agent_alive(self, host: Host) -> Finding:
        # A ProbeError raised here (the switch did not answer) becomes UNKNOWN.
        state = self.switch.port_state(host, timeout=self.timeout)
        if state != "up":
            # A dark port is no proof of death: the cable, the switch, the NIC ...
            return self.unknown(f"switch port of {host.id} is {state}: cannot tell", port=state)
        if self.switch.saw_frames(host, seconds=10, timeout=self.timeout):
            # Alive, but the management path to its agent is cut: Disconnected.
            return self.finding(
                Verdict.ALIVE, f"frames from {host.id} within 10s", reachable=False, port=state
            )
        return self.unknown(f"no frames from {host.id}, but silence is not death", port=state)


# --8<-- [end:investigator]


class LabSwitch:
    """A switch the test scripts: port states and traffic per host id."""

    def __init__(self) -> None:
        self.ports: dict[str, str] = {}
        self.traffic: set[str] = set()
        self.silent = False
        self.lock = threading.Lock()

    def port_state(self, host: Host, *, timeout: float) -> str:
        with self.lock:
            if self.silent:
                raise ProbeTimeout(f"switch silent for {timeout:g}s")
            return self.ports.get(host.id, "unknown")

    def saw_frames(self, host: Host, *, seconds: float, timeout: float) -> bool:
        with self.lock:
            return host.id in self.traffic


def connect_to_switches() -> SwitchPorts:
    return LabSwitch()  # yours: an SNMP session, a REST client ...


# --8<-- [start:contract]


def check_the_contract() -> None:
    clock = FakeClock()
    switch = LabSwitch()
    inv = RackSwitchInvestigator(clock, switch)
    # The sample hosts of every hypervisor, from several threads, with the port in
    # each state: check_investigator lists every broken rule at once.
    check_investigator(inv)
    for host in ("contract-kvm", "contract-xenserver"):
        switch.ports[host] = "up"
        switch.traffic.add(host)
    check_investigator(inv)
    switch.silent = True
    check_investigator(inv)


# --8<-- [end:contract]
# --8<-- [start:verdicts]


def check_the_verdicts() -> None:
    clock = FakeClock()
    switch = LabSwitch()
    inv = RackSwitchInvestigator(clock, switch)
    host = Host("h1", cluster="c1", private_ip="10.0.0.1", status=Status.ALERT)

    assert inv.is_agent_alive(host).verdict is Verdict.UNKNOWN  # port state unknown
    switch.ports["h1"] = "up"
    assert inv.is_agent_alive(host).verdict is Verdict.UNKNOWN  # no frames: still unknown
    switch.traffic.add("h1")
    finding = inv.is_agent_alive(host)
    assert finding.verdict is Verdict.ALIVE
    assert finding.reachable is False  # CloudStack's Disconnected
    assert finding.source == "RackSwitchInvestigator"
    switch.silent = True
    assert inv.is_agent_alive(host).verdict is Verdict.UNKNOWN  # ProbeTimeout, caught
    assert not inv.supports(Host("h9"))  # no cluster, no address: not asked


# --8<-- [end:verdicts]
# --8<-- [start:chain]


def in_the_chain() -> str:
    clock = FakeClock()
    switch = LabSwitch()
    switch.ports["h1"] = "up"
    switch.traffic.add("h1")
    host = Host("h1", cluster="c1", private_ip="10.0.0.1", status=Status.ALERT)
    settings = Settings.from_mapping(
        # Listed names come first, in this order; the others follow.
        {"ha.investigators.order": "RackSwitchInvestigator,SimpleInvestigator,KVMInvestigator"}
    )
    chain: InvestigatorChain = build_chain(
        InvestigatorContext(
            clock=clock,
            directory=InMemoryHostDirectory([host]),
            gateway=FakeAgentGateway(),  # every agent unreachable
            settings=settings,
        ),
        extra=[RackSwitchInvestigator(clock, switch)],
        discover=False,
    )
    assert chain.names[0] == "RackSwitchInvestigator"
    result = chain.investigate_host(host)
    assert result.status is Status.DISCONNECTED  # alive but unreachable: not Down
    assert result.decided_by == "RackSwitchInvestigator"
    return f"{host.id}: {result.status} ({result.decided_by}: {result.findings[0].reason})"


# --8<-- [end:chain]


def main() -> str:
    check_the_contract()
    check_the_verdicts()
    return in_the_chain()


if __name__ == "__main__":
    print(main())
