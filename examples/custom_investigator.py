"""A custom investigator: a serial-console witness that recognises a kernel panic.

Run: ``python examples/custom_investigator.py`` (about a second).

An investigator is one witness of the chain that decides whether a host that
stopped answering is dead (docs/investigators.md). This one reads the last
lines of each host's serial console from a console server (here a small
in-memory stand-in for its API):

* the console's last line is a kernel panic: DEAD, with positive evidence,
  and no VM runs there any more (a panicked kernel runs nothing);
* the console printed something recently: ALIVE (the kernel runs) but not
  reachable, which the chain reads as Disconnected: the host goes to Alert
  and its VMs stay where they are;
* the console is quiet: UNKNOWN, because silence is not death;
* the console server does not answer: the ``ProbeError`` becomes UNKNOWN
  (``BaseInvestigator`` does that).

The example checks it with ``cloudha.testing.check_investigator``, puts it in
the chain of a ``ManagementServer`` (built over ``cloudha.testing``'s fakes, on
virtual time), and runs the same kernel panic twice: without the witness the
host is only in Alert (nothing proves it dead: no BMC, no heartbeat); with it,
the host is Down and its HA VM runs elsewhere. The investigation's evidence
record shows every witness's finding.

Registered here explicitly (``build_chain(..., extra=[...])``). Shipped as a
package, it would be an entry point of the ``cloudha.investigators`` group,
whose factory gets the ``InvestigatorContext``::

    [project.entry-points."cloudha.investigators"]
    console = "acme_ha.console:ConsoleInvestigator.from_context"
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping

import sqlalchemy as sa

from cloudha import (
    BaseInvestigator,
    Clock,
    EvidenceLog,
    Finding,
    Host,
    InvestigatorContext,
    ManagementServer,
    ProbeTimeout,
    Settings,
    Status,
    Verdict,
    Vm,
    VmState,
    build_chain,
)
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeOrchestratorHost,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    RecordingAlertSink,
    check_investigator,
)
from cloudha.testing.contract import sample_hosts

PANIC = "Kernel panic - not syncing"


class ConsoleServer:
    """Stand-in for a console server's API: timestamped lines per console port."""

    def __init__(self) -> None:
        self.lines: dict[str, list[tuple[float, str]]] = {}  # port -> (epoch seconds, text)
        self.answering = True
        self._lock = threading.Lock()

    def write(self, port: str, at: float, text: str) -> None:
        with self._lock:
            self.lines.setdefault(port, []).append((at, text))

    def tail(self, port: str, count: int) -> list[tuple[float, str]]:
        if not self.answering:
            raise ProbeTimeout("the console server does not answer")
        with self._lock:
            return list(self.lines.get(port, [])[-count:])


class ConsoleInvestigator(BaseInvestigator):
    """Judges a host by its serial console (see the module docstring for the rules).

    Args:
        clock: stamps findings and ages the console lines (injected: no time.time()).
        console: the console server's client.
        ports: host id -> console port; hosts without one are not supported.
        fresh_within: console output younger than this (seconds) shows a running kernel.
    """

    name = "ConsoleInvestigator"  # what ha.investigators.order / .exclude refer to

    def __init__(
        self,
        clock: Clock,
        console: ConsoleServer,
        ports: Mapping[str, str],
        *,
        fresh_within: float = 30.0,
    ) -> None:
        super().__init__(clock)
        self.console, self.ports, self.fresh_within = console, dict(ports), fresh_within

    def supports(self, host: Host) -> bool:  # cheap, no I/O
        return host.id in self.ports

    def _last_line(self, host: Host) -> tuple[float, str] | None:
        """The console's last line, as (epoch seconds, text); may raise ProbeError."""
        lines = self.console.tail(self.ports[host.id], 1)
        return lines[-1] if lines else None

    def _agent_alive(self, host: Host) -> Finding:
        port = self.ports[host.id]
        last = self._last_line(host)
        if last is not None and PANIC in last[1]:
            return self.finding(
                Verdict.DEAD,
                f"the console of {host.id} shows a kernel panic",
                no_vm_runs=True,  # a panicked kernel runs no VM: no fence needed for them
                port=port,
                line=last[1],
            )
        if last is not None:
            age = self.clock.now().timestamp() - last[0]
            if age <= self.fresh_within:
                return self.finding(
                    Verdict.ALIVE,
                    f"the console of {host.id} printed {age:.0f}s ago: its kernel runs",
                    reachable=False,  # alive, but nothing says its agent answers
                    port=port,
                    age=round(age, 1),
                )
        return self.unknown(f"the console of {host.id} is quiet: silence is not death", port=port)

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        last = self._last_line(host)
        if last is not None and PANIC in last[1]:
            return self.finding(Verdict.DEAD, f"{host.id} panicked: {vm.id} cannot run there")
        return self.unknown("the console does not show VMs")


# -- the demonstration -------------------------------------------------------------------------

HOSTS = ("h1", "h2", "h3")


def check(clock: FakeClock) -> None:
    """The contract checker, on cloudha's sample hosts and on consoles in every state."""
    console = ConsoleServer()
    now = clock.now().timestamp()
    console.write("c-h1", now - 5, "systemd[1]: Started Session 4 of user root.")
    console.write("c-h2", now - 5, f"{PANIC}: Fatal exception in interrupt")
    ports = {"h1": "c-h1", "h2": "c-h2", "h3": "c-h3"} | {h.id: "c-x" for h in sample_hosts()}
    hosts = [*sample_hosts(), *(Host(h, cluster="c1", status=Status.ALERT) for h in HOSTS)]
    check_investigator(ConsoleInvestigator(clock, console, ports), hosts=hosts)
    console.answering = False
    check_investigator(ConsoleInvestigator(clock, console, ports), hosts=hosts)
    print("ConsoleInvestigator passes cloudha.testing.check_investigator")


def run(with_console: bool) -> tuple[Status | None, str | None, EvidenceLog]:
    """h1's kernel panics at t=60 s; returns h1's status, where vm1 runs, and the evidence."""
    clock = FakeClock(1_700_000_000.0)
    settings = Settings.from_mapping({"ping.interval": 10})
    directory = InMemoryHostDirectory(
        Host(h, cluster="c1", status=Status.UP, management_server_id="ms1") for h in HOSTS
    )
    gateway = FakeAgentGateway(dict.fromkeys(HOSTS, True))
    orchestrator = InMemoryOrchestrator(
        [FakeOrchestratorHost(h) for h in HOSTS],
        [Vm("vm1", host_id="h1", last_host_id="h1", ha_enabled=True)],
    )
    console = ConsoleServer()
    witness = ConsoleInvestigator(clock, console, {h: f"c-{h}" for h in HOSTS})
    # The built-in witnesses these ports allow, then the new one (registration order;
    # "ha.investigators.order" could put it first).
    chain = build_chain(
        InvestigatorContext(clock=clock, directory=directory, gateway=gateway, settings=settings),
        extra=[witness] if with_console else [],
        discover=False,
    )
    evidence = EvidenceLog()
    server = ManagementServer(
        settings=settings,
        clock=clock,
        directory=directory,
        gateway=gateway,
        orchestrator=orchestrator,
        alerts=RecordingAlertSink(),
        engine=sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        ),
        investigators=chain,
        evidence=evidence,
        discover_plugins=False,
    )
    server.recover(connected=HOSTS)
    loops = server.loops()
    due = {loop.name: clock.monotonic() for loop in loops}
    server.on_work_added = lambda: due.update(
        {loop.name: clock.monotonic() for loop in loops if loop.wake_on_work}
    )
    for second in range(300):  # five virtual minutes, one step a second
        now = clock.monotonic()
        if second == 60:
            console.write("c-h1", clock.now().timestamp(), f"{PANIC}: Fatal exception")
            gateway.healthy["h1"] = None  # its agent stops answering
            orchestrator.set_host_up("h1", False)
        for h in HOSTS:
            if gateway.healthy[h] and second % 10 == 0 and not server.agents.ping_received(h):
                server.agents.agent_connected(
                    h, vms=[v.id for v in orchestrator.list_vms_on_host(h)]
                )
        for loop in loops:
            if due[loop.name] <= now:
                due[loop.name] = now + loop.tick()
        clock.advance(1.0)
    h1 = directory.find_host("h1")
    vm1 = orchestrator.find_vm("vm1")
    running = vm1.host_id if vm1 is not None and vm1.state is VmState.RUNNING else None
    return (None if h1 is None else h1.status), running, evidence


def main() -> int:
    check(FakeClock(1_700_000_000.0))
    before, _, _ = run(with_console=False)
    print(f"without ConsoleInvestigator: h1 is {before} (nothing proves it dead)")
    status, where, evidence = run(with_console=True)
    print(f"with ConsoleInvestigator: h1 is {status}, vm1 runs on {where}")
    for record in evidence.records(kind="investigation", host="h1"):
        print(f"investigation of h1: {record.details['result']}, {record.reason}")
        for finding in record.details["findings"]:
            print(f"  {finding['source']:<30} {finding['verdict']:<7} {finding['reason']}")
    decided = [r.details.get("decided_by") for r in evidence.records(kind="investigation")]
    if before is not Status.ALERT or status is not Status.DOWN or where in (None, "h1"):
        return 1
    if "ConsoleInvestigator" not in decided:
        return 1
    print("h1 found Down by ConsoleInvestigator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
