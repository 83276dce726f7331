"""A custom fencer (a switched PDU) and a custom power driver, in one fence chain.

Run: ``python examples/custom_fencer.py`` (about a second).

Before an HA VM runs elsewhere, the fence chain must prove it no longer runs
on its old host (docs/fencing.md). This example adds two ways to prove it:

* ``AcmeBmcDriver``, a power driver for a vendor's BMC API
  (``cloudha.BasePowerDriver``): cloudha's own ``PowerFencer`` uses it to
  switch the host off and read the power back Off;
* ``PduFencer``, a fence builder (``cloudha.BaseFenceBuilder``) that switches
  the host's outlets off on a switched PDU and reads the power draw back: only
  0 W on every outlet is proof (FENCED). An outlet still drawing power is
  NOT_FENCED; a host without outlets is NOT_APPLICABLE; a PDU that does not
  answer raises a ``ProbeError``, which the base class turns into NOT_FENCED.

The PDU and the BMC API are small in-memory stand-ins for the devices. The
fencer is checked with ``cloudha.testing.check_fencer`` (including that its
password never appears in a result), then the chain is built with two levels,
the BMC first and the PDU second, and fences two hosts: one whose BMC answers
and one whose BMC is dead, where the PDU level takes over.

Shipped as a package, the fencer would be an entry point of the
``cloudha.fencers`` group (its factory gets the ``FencerContext``)::

    [project.entry-points."cloudha.fencers"]
    pdu = "acme_ha.pdu:PduFencer.from_context"
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence

from cloudha import (
    BaseFenceBuilder,
    BasePowerDriver,
    Clock,
    EvidenceLog,
    FencerContext,
    FenceResult,
    Host,
    OobmConfig,
    OutOfBandManager,
    PowerOperation,
    PowerState,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeTimeout,
    Recorder,
    Settings,
    StaticOobmConfigs,
    Status,
    Vm,
    build_fence_chain,
)
from cloudha.fencing import InlineRunner
from cloudha.oobm.power import PowerResult
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    RecordingAlertSink,
    check_fencer,
)
from cloudha.testing.contract import sample_hosts

# -- the devices (stand-ins for their network APIs) -------------------------------------------


class Pdu:
    """A switched PDU: outlets that can be switched off; an outlet off draws 0 W a second later."""

    def __init__(self, clock: Clock, password: str, outlets: Mapping[str, float]) -> None:
        self.clock, self._password = clock, password
        self.watts = dict(outlets)  # outlet -> power draw while on
        self.off_since: dict[str, float] = {}
        self.answering = True
        self.stuck: set[str] = set()  # relays welded shut: switching them off does nothing
        self._lock = threading.Lock()

    def _login(self, password: str) -> None:
        if not self.answering:
            raise ProbeTimeout("the PDU does not answer")
        if password != self._password:
            raise ProbeAuthError("the PDU refused the login")

    def switch_off(self, password: str, outlet: str) -> None:
        self._login(password)
        with self._lock:
            if outlet not in self.stuck:
                self.off_since.setdefault(outlet, self.clock.monotonic())

    def draw(self, password: str, outlet: str) -> float:
        self._login(password)
        with self._lock:
            off = self.off_since.get(outlet)
            if off is not None and self.clock.monotonic() - off >= 1.0:
                return 0.0
            return self.watts[outlet]


class AcmeBmcApi:
    """A vendor's BMC API: power state per BMC address; a dead BMC does not answer."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.on = dict.fromkeys(addresses, True)
        self.dead: set[str] = set()


# -- the custom power driver -------------------------------------------------------------------


class AcmeBmcDriver(BasePowerDriver):
    """A PowerDriver: ``name`` is what an OobmConfig's ``driver`` names.

    Contract (cloudha.PowerDriver): return within ``timeout``; a successful
    STATUS carries the state; OFF is immediate; failures are ProbeErrors
    (ProbeAuthError, ProbeTimeout, ProbeConnectionError, PowerCommandError);
    the password appears nowhere.
    """

    name = "acme"

    def __init__(self, api: AcmeBmcApi, password: str) -> None:
        self.api, self._password = api, password

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        if config.address not in self.api.on:
            raise ProbeConnectionError(f"no BMC answers at {config.address}")
        if config.address in self.api.dead:
            raise ProbeTimeout(f"BMC {config.address} silent for {timeout:g}s")
        if config.password != self._password:
            raise ProbeAuthError(f"BMC {config.address} refused user {config.username!r}")
        if operation is PowerOperation.STATUS:
            state = PowerState.ON if self.api.on[config.address] else PowerState.OFF
            return PowerResult(operation, True, state)
        self.api.on[config.address] = operation not in (PowerOperation.OFF, PowerOperation.SOFT)
        return PowerResult(operation, True)


# -- the custom fencer -------------------------------------------------------------------------


POLL = 0.5  # seconds between read-backs of the outlets


class PduFencer(BaseFenceBuilder):
    """Switch every outlet of the host off; FENCED once each reads 0 W.

    Args:
        clock: stamps results; the read-back waits through it (never time.sleep).
        pdu: the PDU client.
        password: the PDU's password (kept out of every result).
        outlets: host id -> its outlets (a host with two power supplies has two).
        timeout: the longest one attempt may take, in seconds.
    """

    name = "PduFencer"  # what fence levels and ha.fence.builders.exclude refer to

    def __init__(
        self,
        clock: Clock,
        pdu: Pdu,
        password: str,
        outlets: Mapping[str, Sequence[str]],
        *,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        self.pdu, self._password, self.outlets = pdu, password, dict(outlets)
        self._never = threading.Event()

    def supports(self, vm: Vm, host: Host) -> bool:  # no I/O: False is NOT_APPLICABLE
        return bool(self.outlets.get(host.id))

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        outlets = self.outlets[host.id]
        deadline = self.clock.monotonic() + self.timeout - POLL  # time left for a last read
        for outlet in outlets:
            self.pdu.switch_off(self._password, outlet)  # a ProbeError here: NOT_FENCED
        while True:
            draws = {o: self.pdu.draw(self._password, o) for o in outlets}
            if all(watts == 0.0 for watts in draws.values()):
                return self.fenced(f"every outlet of {host.id} reads 0 W", watts=draws)
            if self.clock.monotonic() >= deadline:
                return self.not_fenced(f"an outlet of {host.id} still draws power", watts=draws)
            self.clock.wait(self._never, POLL)


# -- the demonstration -------------------------------------------------------------------------

HOSTS = ("h1", "h2", "h3")
PDU_PASSWORD, BMC_PASSWORD = "pdu-s3cret", "bmc-s3cret"  # from your vault in real life


def check(clock: FakeClock) -> None:
    """The contract checker, with the PDU answering, with a stuck relay, and silent."""
    outlets = {"h1": ["1", "2"], "h2": ["3"]}  # sample hosts and h3 have none: NOT_APPLICABLE
    pdu = Pdu(clock, PDU_PASSWORD, {"1": 250.0, "2": 240.0, "3": 300.0})
    pdu.stuck.add("3")
    hosts = [*sample_hosts(), *(Host(h, cluster="c1", status=Status.DOWN) for h in HOSTS)]
    for answering in (True, False):
        pdu.answering = answering
        check_fencer(
            PduFencer(clock, pdu, PDU_PASSWORD, outlets), hosts=hosts, secrets=[PDU_PASSWORD]
        )
    print("PduFencer passes cloudha.testing.check_fencer")


def main() -> int:
    clock = FakeClock(0.0)
    check(clock)
    evidence = EvidenceLog()
    recorder = Recorder(evidence, clock, "ms1")
    directory = InMemoryHostDirectory(Host(h, cluster="c1", status=Status.DOWN) for h in HOSTS)
    api = AcmeBmcApi([f"bmc-{h}" for h in HOSTS])
    configs = StaticOobmConfigs(
        {h: OobmConfig("acme", f"bmc-{h}", "admin", BMC_PASSWORD, host_id=h) for h in HOSTS}
    )
    oobm = OutOfBandManager(
        clock=clock, configs=configs, drivers=[AcmeBmcDriver(api, BMC_PASSWORD)], recorder=recorder
    )
    pdu = Pdu(clock, PDU_PASSWORD, {"1": 250.0, "2": 240.0, "3": 300.0})
    pdu_fencer = PduFencer(clock, pdu, PDU_PASSWORD, {"h1": ["1"], "h2": ["2", "3"]})
    chain = build_fence_chain(
        FencerContext(
            clock=clock,
            directory=directory,
            gateway=FakeAgentGateway(),  # no agent answers: these hosts are down
            settings=Settings(),
            oobm=oobm,
            alerts=RecordingAlertSink(),
            recorder=recorder,
            runner=InlineRunner(clock),  # ThreadRunner (the default) in production
        ),
        extra=[pdu_fencer],
        levels=[["PowerFencer"], ["PduFencer"]],  # the BMC first, then the PDU
        discover=False,
    )
    print(f"fence levels: {chain.names}")

    api.dead.add("bmc-h2")  # h2's BMC died with the host
    ok = True
    for host_id, vm_id in (("h1", "vm1"), ("h2", "vm2")):
        host = directory.find_host(host_id)
        assert host is not None
        decision = chain.fence_off(Vm(vm_id, host_id=host_id), host)
        print(f"fence {vm_id} off {host_id}: {decision.outcome} by {decision.fenced_by}")
        for attempt in decision.attempts:
            print(
                f"  level {attempt.evidence['level']}: {attempt.fencer} {attempt.outcome}:"
                f" {attempt.reason}"
            )
        ok = ok and decision.fenced
    records = evidence.records(kind="fence")
    leaked = [r for r in records if PDU_PASSWORD in str(r) or BMC_PASSWORD in str(r)]
    print(f"{len(records)} fence evidence records, {len(leaked)} with a password")
    if not ok or leaked:
        return 1
    print("h1 fenced by its BMC, h2 by its PDU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
