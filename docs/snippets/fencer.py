"""How-to "Write a fencer" (docs/how-to/fencer.md), as one program.

A fencer that switches off a host's outlets on a switched PDU and proves it
by reading them back. tests/unit/test_docs_snippets.py runs it:
``python docs/snippets/fencer.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

from cloudha import (
    BaseFenceBuilder,
    FenceOutcome,
    FencerContext,
    FenceResult,
    Host,
    HypervisorType,
    ProbeAuthError,
    ProbeTimeout,
    Recorder,
    Vm,
    build_fence_chain,
)
from cloudha.clock import Clock
from cloudha.evidence import EvidenceLog
from cloudha.fencing.chain import InlineRunner
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    RecordingAlertSink,
    check_fencer,
)

# --8<-- [start:pdu]


class Pdu(Protocol):
    """Your own port to switched PDUs (SNMP, the vendor's HTTP API ...)."""

    def switch_off(self, outlet: str, *, password: str, timeout: float) -> None:
        """Ask for the outlet to go off; raises a ProbeError when the PDU fails."""
        ...

    def outlet_is_on(self, outlet: str, *, password: str, timeout: float) -> bool:
        """Read the outlet's state back."""
        ...


# --8<-- [end:pdu]
# --8<-- [start:fencer]


class PduFencer(BaseFenceBuilder):
    """Power fencing through a switched PDU: FENCED only once every outlet reads off."""

    name = "PduFencer"  # what ha.fence.builders.exclude and fence levels refer to

    def __init__(
        self,
        clock: Clock,
        pdu: Pdu,
        outlets: Mapping[str, Sequence[str]],  # host id -> its outlets (both PSUs)
        *,
        password: str,
        timeout: float = 30.0,
        poll: float = 2.0,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        self.pdu = pdu
        self.outlets = dict(outlets)
        self._password = password  # never in a result, a log or an exception
        self.poll = poll

    def supports(self, vm: Vm, host: Host) -> bool:
        # Cheap, no I/O: hosts without outlets of ours are NOT_APPLICABLE.
        return host.id in self.outlets

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        # A ProbeError raised here (PDU silent, password refused) becomes NOT_FENCED.
        outlets = self.outlets[host.id]
        deadline = self.clock.monotonic() + self.timeout - self.poll
        for outlet in outlets:
            self.pdu.switch_off(outlet, password=self._password, timeout=self.poll)
        while True:
            # "The command was accepted" is no proof: read every outlet back.
            on = [
                o
                for o in outlets
                if self.pdu.outlet_is_on(o, password=self._password, timeout=self.poll)
            ]
            if not on:
                return self.fenced(f"outlets of {host.id} read back off", outlets=list(outlets))
            if self.clock.monotonic() >= deadline:
                return self.not_fenced(f"outlets {on} of {host.id} still on", outlets=on)
            self.clock.wait(threading.Event(), self.poll)  # the injected clock, never time.sleep


# --8<-- [end:fencer]


class LabPdu:
    """A PDU the test scripts: outlet states, a silent or lying PDU, its password."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.on: set[str] = set()
        self.stuck: set[str] = set()  # outlets that ignore "off" (a welded relay)
        self.silent = False
        self.lock = threading.Lock()

    def _login(self, password: str, timeout: float) -> None:
        if self.silent:
            raise ProbeTimeout(f"PDU silent for {timeout:g}s")
        if password != self.password:
            raise ProbeAuthError("PDU refused the password")

    def switch_off(self, outlet: str, *, password: str, timeout: float) -> None:
        with self.lock:
            self._login(password, timeout)
            if outlet not in self.stuck:
                self.on.discard(outlet)

    def outlet_is_on(self, outlet: str, *, password: str, timeout: float) -> bool:
        with self.lock:
            self._login(password, timeout)
            return outlet in self.on


SECRET = "pdu-s3cret"

# --8<-- [start:contract]


def check_the_contract() -> None:
    pdu = LabPdu(SECRET)
    outlets = {"contract-kvm": ["A1", "B1"], "contract-xenserver": ["A2"]}
    fencer = PduFencer(FakeClock(), pdu, outlets, password=SECRET)
    # Fences the sample VMs off hosts of every hypervisor, from several threads;
    # fails on a missing reason, non-JSON evidence, a leaked secret, an overrun ...
    check_fencer(fencer, secrets=[SECRET])
    pdu.silent = True  # a PDU that does not answer: NOT_FENCED, on time, no exception
    check_fencer(fencer, secrets=[SECRET])
    pdu.silent = False
    pdu.on.add("A1")
    pdu.stuck.add("A1")  # a relay that stays on: never FENCED
    check_fencer(fencer, secrets=[SECRET])


# --8<-- [end:contract]
# --8<-- [start:outcomes]


def check_the_outcomes() -> None:
    clock = FakeClock()
    pdu = LabPdu(SECRET)
    pdu.on.update({"A1", "B1"})
    fencer = PduFencer(clock, pdu, {"h1": ["A1", "B1"]}, password=SECRET)
    h1, h2 = Host("h1", cluster="c1"), Host("h2", cluster="c1")
    vm = Vm("vm1", host_id="h1")

    assert fencer.fence_off(vm, h2).outcome is FenceOutcome.NOT_APPLICABLE
    assert fencer.fence_off(vm, h1).outcome is FenceOutcome.FENCED
    assert not pdu.on
    pdu.on.add("B1")
    pdu.stuck.add("B1")
    started = clock.monotonic()
    stuck = fencer.fence_off(vm, h1)
    assert stuck.outcome is FenceOutcome.NOT_FENCED
    assert clock.monotonic() - started <= fencer.timeout  # bounded by its own timeout
    wrong = PduFencer(clock, pdu, {"h1": ["A1"]}, password="wrong").fence_off(vm, h1)
    assert wrong.outcome is FenceOutcome.NOT_FENCED
    assert SECRET not in str(wrong.to_dict())


# --8<-- [end:outcomes]
# --8<-- [start:chain]


def in_the_chain() -> str:
    clock = FakeClock()
    pdu = LabPdu(SECRET)
    pdu.on.update({"A1", "B1"})
    host = Host("h1", cluster="c1", hypervisor=HypervisorType.KVM)
    evidence = EvidenceLog()
    chain = build_fence_chain(
        FencerContext(
            clock=clock,
            directory=InMemoryHostDirectory([host]),
            gateway=FakeAgentGateway(),
            alerts=RecordingAlertSink(),
            recorder=Recorder(evidence, clock, "ms1"),
            runner=InlineRunner(clock),  # on a FakeClock; the default runs each call on a thread
        ),
        extra=[PduFencer(clock, pdu, {"h1": ["A1", "B1"]}, password=SECRET)],
        discover=False,
        levels=[["PduFencer"]],  # fence levels by name; without levels: registration order
    )
    decision = chain.fence_off(Vm("vm1", host_id="h1"), host)
    assert decision.fenced
    assert decision.fenced_by == ("PduFencer",)
    (record,) = [e for e in evidence.records() if e.kind == "fence"]
    return f"{decision.vm_id} fenced off {decision.host_id} by {record.details['fencer']}"


# --8<-- [end:chain]


def main() -> str:
    check_the_contract()
    check_the_outcomes()
    return in_the_chain()


if __name__ == "__main__":
    print(main())
