"""Contract checks for users' own investigators, fencers and ports.

``check_investigator(MyInvestigator(...))`` asks the investigator about a
spread of hosts and VMs (every hypervisor, with and without an address, in
several states), from several threads at once, and fails with every
broken rule listed, so a plugin author learns all of them in one run.
``check_fencer(MyFencer(...))`` does the same for a fence builder.
``check_host_directory``, ``check_agent_gateway`` and
``check_vm_orchestrator`` check an implementation of those ports;
``check_metrics_sink`` a metrics adapter, and ``check_power_driver`` a power
driver against a BMC it can switch.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import sqlalchemy as sa

from cloudha.commands import PING_TEST
from cloudha.errors import (
    HACheckError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
    StoreUnavailableError,
)
from cloudha.evidence import Evidence
from cloudha.fencing.base import FenceBuilder, FenceOutcome, FenceResult
from cloudha.fencing.chain import GRACE
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.ha.store import SqlWorkStore, create_schema
from cloudha.ha.work import WorkTally, WorkType
from cloudha.hostha.provider import HAProviderConfig
from cloudha.investigators.base import Finding, Investigator, Verdict
from cloudha.model import Host, HostType, HypervisorType, Vm, VmState, VmType
from cloudha.oobm.power import OobmConfig, PowerDriver, PowerOperation, PowerResult, PowerState
from cloudha.ports import (
    KEEP,
    AgentGateway,
    Answer,
    Command,
    HAProvider,
    HostDirectory,
    HostPoller,
    HostShell,
    MetricsSink,
    PingReport,
    ShellResult,
    StatusChange,
    SuspicionCheck,
    VmOrchestrator,
    VolumeDirectory,
)
from cloudha.server import validate_port
from cloudha.status import Status
from cloudha.testing.fakes import InMemoryHostDirectory

__all__ = [
    "Make",
    "check_agent_gateway",
    "check_fencer",
    "check_ha_provider",
    "check_host_directory",
    "check_host_poller",
    "check_host_shell",
    "check_investigator",
    "check_metrics_sink",
    "check_power_driver",
    "check_suspicion_check",
    "check_vm_orchestrator",
    "check_volume_directory",
    "sample_evidence",
    "sample_hosts",
    "sample_vms",
]

_E = TypeVar("_E", bound=BaseException)


@attrs.define
class _Caught:
    value: Any = None


@contextmanager
def _raises(kind: type[BaseException]) -> Iterator[_Caught]:
    caught = _Caught()
    try:
        yield caught
    except kind as exc:
        caught.value = exc
        return
    raise AssertionError(f"{kind.__name__} was not raised")


def sample_hosts() -> list[Host]:
    """Hosts of every hypervisor and a few awkward shapes (no address, no cluster).

    Their addresses are on loopback, so a real probe run against them by
    mistake never sends traffic off the machine.
    """
    hosts = [
        Host(
            id=f"contract-{hv.value.lower()}",
            hypervisor=hv,
            status=Status.ALERT,
            cluster="contract-c1",
            private_ip="127.0.0.254",
        )
        for hv in HypervisorType
    ]
    hosts.append(Host(id="contract-no-ip", status=Status.UP, cluster="contract-c1"))
    hosts.append(Host(id="contract-no-cluster", status=Status.DOWN, private_ip="127.0.0.253"))
    hosts.append(Host(id="contract-cpvm", type=HostType.CONSOLE_PROXY, status=Status.ALERT))
    return hosts


def sample_vms(host: Host) -> list[Vm]:
    """A user VM and a system VM on ``host``."""
    return [
        Vm(id=f"{host.id}-vm", host_id=host.id, ha_enabled=True, hypervisor=host.hypervisor),
        Vm(
            id=f"{host.id}-router",
            type=VmType.DOMAIN_ROUTER,
            host_id=host.id,
            ha_enabled=True,
            hypervisor=host.hypervisor,
        ),
    ]


def check_investigator(
    investigator: Investigator,
    *,
    hosts: Iterable[Host] | None = None,
    vms: Callable[[Host], Sequence[Vm]] | None = None,
    threads: int = 4,
) -> None:
    """Check ``investigator`` against the contract of :class:`~cloudha.Investigator`.

    Rules checked: a non-empty string ``name``; ``supports`` returns a bool;
    ``is_agent_alive``/``is_vm_alive`` return a :class:`~cloudha.Finding`
    (never None, never raise) whose ``source`` is the name, whose verdict is
    a :class:`~cloudha.Verdict`, with a non-empty reason and JSON-able
    evidence; a DEAD finding never claims the host is reachable; the same
    answers come back when asked from ``threads`` threads at once.

    Args:
        investigator: the instance under test, wired to the user's fakes.
        hosts: hosts to ask about (default :func:`sample_hosts`).
        vms: VMs to ask about for each host (default :func:`sample_vms`).
        threads: how many threads ask at once in the concurrency round.

    Raises:
        AssertionError: listing every broken rule.
    """
    problems: list[str] = []
    name = getattr(investigator, "name", None)
    if not isinstance(name, str) or not name:
        raise AssertionError(f"investigator {investigator!r}: name must be a non-empty str")
    subjects = list(sample_hosts() if hosts is None else hosts)
    vms_of = sample_vms if vms is None else vms

    def ask_all() -> list[tuple[str, object]]:
        answers: list[tuple[str, object]] = []
        for host in subjects:
            try:
                supported = investigator.supports(host)
            except Exception as exc:
                problems.append(f"supports({host.id}) raised {type(exc).__name__}: {exc}")
                continue
            if not isinstance(supported, bool):
                problems.append(f"supports({host.id}) returned {supported!r}, not a bool")
                continue
            if not supported:
                continue
            label = f"is_agent_alive({host.id})"
            finding = _call(problems, label, investigator.is_agent_alive, host)
            if finding is not None:
                _check_finding(problems, name, label, finding, host_finding=True)
                answers.append((label, finding.verdict))
            for vm in vms_of(host):
                label = f"is_vm_alive({vm.id}, {host.id})"
                finding = _call(problems, label, investigator.is_vm_alive, vm, host)
                if finding is not None:
                    _check_finding(problems, name, label, finding, host_finding=False)
                    answers.append((label, finding.verdict))
        return answers

    _judge(problems, f"investigator {name!r}", "answers", ask_all, threads)


def _call(
    problems: list[str], label: str, fn: Callable[..., object], *args: object
) -> Finding | None:
    try:
        result = fn(*args)
    except Exception as exc:
        problems.append(f"{label} raised {type(exc).__name__}: {exc} (return an UNKNOWN finding)")
        return None
    if not isinstance(result, Finding):
        problems.append(f"{label} returned {result!r}, not a Finding")
        return None
    return result


def _check_finding(
    problems: list[str], name: str, label: str, finding: Finding, *, host_finding: bool
) -> None:
    if finding.source != name:
        problems.append(f"{label}: source is {finding.source!r}, not the name {name!r}")
    if not isinstance(finding.verdict, Verdict):
        problems.append(f"{label}: verdict {finding.verdict!r} is not a Verdict")
    if not isinstance(finding.reason, str) or not finding.reason.strip():
        problems.append(f"{label}: a finding needs a reason")
    if finding.verdict is Verdict.DEAD and finding.reachable is True:
        problems.append(f"{label}: DEAD but reachable=True contradicts itself")
    if not host_finding and finding.reachable is not None:
        problems.append(f"{label}: reachable is about hosts; leave it None on VM findings")
    try:
        json.dumps(finding.to_dict())
    except (TypeError, ValueError) as exc:
        problems.append(f"{label}: evidence is not JSON-able ({exc})")


def check_fencer(
    fencer: FenceBuilder,
    *,
    hosts: Iterable[Host] | None = None,
    vms: Callable[[Host], Sequence[Vm]] | None = None,
    threads: int = 4,
    secrets: Iterable[str] = (),
) -> None:
    """Check ``fencer`` against the contract of :class:`~cloudha.fencing.base.FenceBuilder`.

    Rules checked: a non-empty string ``name``; a positive number
    ``timeout``; ``fence_off`` returns a :class:`FenceResult` (never None,
    never raises) whose ``fencer`` is the name, whose outcome is a
    :class:`FenceOutcome`, with a non-empty reason and JSON-able evidence
    containing none of ``secrets``; each call returns within ``timeout``
    (plus the chain's grace) of wall time; the same outcomes come back when
    asked from ``threads`` threads at once.

    Args:
        fencer: the instance under test, wired to the user's fakes.
        hosts: hosts to fence (default :func:`sample_hosts`).
        vms: VMs to fence off each host (default :func:`sample_vms`).
        threads: how many threads ask at once in the concurrency round.
        secrets: strings (passwords, tokens) that must never appear in a result.

    Raises:
        AssertionError: listing every broken rule.
    """
    problems: list[str] = []
    name = getattr(fencer, "name", None)
    if not isinstance(name, str) or not name:
        raise AssertionError(f"fencer {fencer!r}: name must be a non-empty str")
    limit = getattr(fencer, "timeout", None)
    if not isinstance(limit, int | float) or isinstance(limit, bool) or not limit > 0:
        raise AssertionError(f"fencer {name!r}: timeout must be a positive number, got {limit!r}")
    subjects = list(sample_hosts() if hosts is None else hosts)
    vms_of = sample_vms if vms is None else vms
    hidden = [s for s in secrets if s]

    def ask_all() -> list[tuple[str, object]]:
        answers: list[tuple[str, object]] = []
        for host in subjects:
            for vm in vms_of(host):
                label = f"fence_off({vm.id}, {host.id})"
                started = time.monotonic()
                try:
                    result = fencer.fence_off(vm, host)
                except Exception as exc:
                    problems.append(
                        f"{label} raised {type(exc).__name__}: {exc} (return NOT_FENCED)"
                    )
                    continue
                took = time.monotonic() - started
                if took > limit + GRACE:
                    problems.append(f"{label} took {took:.1f}s, more than its timeout {limit:g}s")
                if not isinstance(result, FenceResult):
                    problems.append(f"{label} returned {result!r}, not a FenceResult")
                    continue
                _check_fence_result(problems, name, label, result, hidden)
                answers.append((label, result.outcome))
        return answers

    _judge(problems, f"fencer {name!r}", "outcomes", ask_all, threads)


def _judge(
    problems: list[str],
    subject: str,
    what: str,
    ask_all: Callable[[], list[tuple[str, object]]],
    threads: int,
) -> None:
    """Ask once, then from ``threads`` threads at once; raise listing every problem."""
    baseline = ask_all()
    results: list[list[tuple[str, object]]] = []
    lock = threading.Lock()

    def worker() -> None:
        got = ask_all()
        with lock:
            results.append(got)

    pool = [threading.Thread(target=worker, name=f"contract-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for got in results:
        if got != baseline:
            problems.append(f"{what} from concurrent calls differ: {got} != {baseline}")
            break
    if problems:
        unique = list(dict.fromkeys(problems))
        raise AssertionError(f"{subject} breaks the contract:\n  - " + "\n  - ".join(unique))


def _check_fence_result(
    problems: list[str], name: str, label: str, result: FenceResult, secrets: Sequence[str]
) -> None:
    if result.fencer != name:
        problems.append(f"{label}: fencer is {result.fencer!r}, not the name {name!r}")
    if not isinstance(result.outcome, FenceOutcome):
        problems.append(f"{label}: outcome {result.outcome!r} is not a FenceOutcome")
    if not isinstance(result.reason, str) or not result.reason.strip():
        problems.append(f"{label}: a result needs a reason")
    try:
        text = json.dumps(result.to_dict())
    except (TypeError, ValueError) as exc:
        problems.append(f"{label}: evidence is not JSON-able ({exc})")
        return
    for secret in secrets:
        if secret in text:
            problems.append(f"{label}: the result contains a secret")


# -- ports -----------------------------------------------------------------------


def check_host_directory(directory: HostDirectory, host_id: str) -> None:
    """Check a :class:`~cloudha.ports.HostDirectory` holding host ``host_id``.

    Rules: every method exists; ``find_host`` finds the host and returns None
    for an unknown id; ``list_hosts`` lists it and filters by cluster and
    owner; ``update_status`` is optimistic (a stale ``expected_update_count``
    or ``from_status`` changes nothing and returns False; a current one
    applies the change, bumps ``update_count`` by one and honours ``KEEP``, leaving
    the row as :meth:`StatusChange.applied_to` says); of two
    racing updates with the same expected count exactly one wins. The row is
    put back to its status afterwards (with a higher ``update_count``).

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("directory", directory, HostDirectory)
    problems: list[str] = []
    host = directory.find_host(host_id)
    if host is None:
        raise AssertionError(f"find_host({host_id!r}) returned None; seed the directory first")
    if directory.find_host(f"{host_id}-no-such-host") is not None:
        problems.append("find_host of an unknown id did not return None")
    if host_id not in [h.id for h in directory.list_hosts()]:
        problems.append("list_hosts() does not list the host")
    if host_id not in [h.id for h in directory.list_hosts(cluster=host.cluster)]:
        problems.append(f"list_hosts(cluster={host.cluster!r}) does not list the host")
    if any(h.id == host_id for h in directory.list_hosts(cluster=f"{host.cluster}-none")):
        problems.append("list_hosts(cluster=...) lists a host of another cluster")
    if any(h.id == host_id for h in directory.list_hosts(management_server_id="no-such-ms")):
        problems.append("list_hosts(management_server_id=...) lists a host of another owner")
    target = Status.DISCONNECTED if host.status is not Status.DISCONNECTED else Status.ALERT

    def change(row: Host, to: Status | None, count: int) -> StatusChange:
        return StatusChange(
            host_id=row.id,
            from_status=row.status,
            to_status=to if to is not None else Status.ALERT,
            event=None,
            expected_update_count=count,
            last_ping=KEEP,
        )

    if directory.update_status(change(host, target, host.update_count + 1000)):
        problems.append("update_status with a stale update_count returned True")
    after = directory.find_host(host_id)
    if after != host:
        problems.append("update_status with a stale update_count changed the row")
    current = change(host, target, host.update_count)
    if not directory.update_status(current):
        problems.append("update_status with the current update_count returned False")
    after = directory.find_host(host_id)
    if after is not None and after.status is target and after != current.applied_to(host):
        problems.append(
            "update_status left the row other than StatusChange.applied_to(row):"
            " update_count + 1, the columns given, nothing else"
        )
    if after is None or after.status is not target:
        problems.append(f"update_status did not set the status to {target}")
    elif after.update_count <= host.update_count:
        problems.append("update_status did not increment update_count")
    elif after.last_ping != host.last_ping or after.management_server_id != (
        host.management_server_id
    ):
        problems.append("update_status changed a column given as KEEP")
    if after is not None:
        wins: list[bool] = []
        lock = threading.Lock()

        def race() -> None:
            won = directory.update_status(
                attrs.evolve(change(after, host.status, after.update_count), to_status=host.status)
                if host.status is not None
                else change(after, None, after.update_count)
            )
            with lock:
                wins.append(won)

        racers = [threading.Thread(target=race) for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        if wins.count(True) != 1:
            problems.append(f"two racing updates with the same update_count: {wins} won")
    if problems:
        raise AssertionError(f"host directory {directory!r}:\n- " + "\n- ".join(problems))


def check_agent_gateway(
    gateway: AgentGateway, live: Host, dead: Host, *, timeout: float = 2.0
) -> None:
    """Check an :class:`~cloudha.ports.AgentGateway` with one live and one dead host.

    Rules: every method exists; ``check_health(live)`` returns a bool;
    ``check_health(dead)`` raises a :class:`~cloudha.errors.ProbeError`;
    ``send`` returns an :class:`~cloudha.ports.Answer` or raises a ProbeError
    (a dead host's agent cannot answer, but a gateway may relay through a
    neighbour); never another exception, never a hang past ``timeout`` plus a
    grace.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("gateway", gateway, AgentGateway)
    problems: list[str] = []
    command = Command(PING_TEST, {"ip": live.private_ip or "127.0.0.1"})

    def timed(label: str, call: Callable[[], object]) -> tuple[object, BaseException | None]:
        started = time.monotonic()
        result: object = None
        error: BaseException | None = None
        try:
            result = call()
        except Exception as exc:
            error = exc
        spent = time.monotonic() - started
        if spent > timeout + GRACE:
            problems.append(f"{label} took {spent:.1f}s, more than its {timeout:g}s timeout")
        return result, error

    healthy, error = timed(
        "check_health(live)", lambda: gateway.check_health(live, timeout=timeout)
    )
    if error is not None:
        problems.append(f"check_health(live) raised {type(error).__name__}: {error}")
    elif not isinstance(healthy, bool):
        problems.append(f"check_health(live) returned {healthy!r}, not a bool")
    _, error = timed("check_health(dead)", lambda: gateway.check_health(dead, timeout=timeout))
    if error is None:
        problems.append("check_health(dead) did not raise (a dead agent raises a ProbeError)")
    elif not isinstance(error, ProbeError):
        problems.append(f"check_health(dead) raised {type(error).__name__}, not a ProbeError")
    answer, error = timed("send(dead)", lambda: gateway.send(dead, command, timeout=timeout))
    if error is not None and not isinstance(error, ProbeError):
        problems.append(f"send(dead) raised {type(error).__name__}, not a ProbeError")
    elif error is None and not isinstance(answer, Answer):
        problems.append(f"send(dead) returned {answer!r}, not an Answer")
    answer, error = timed("send(live)", lambda: gateway.send(live, command, timeout=timeout))
    if error is not None and not isinstance(error, ProbeError):
        problems.append(f"send(live) raised {type(error).__name__}, not a ProbeError")
    elif error is None and not isinstance(answer, Answer):
        problems.append(f"send(live) returned {answer!r}, not an Answer")
    if problems:
        raise AssertionError(f"agent gateway {gateway!r}:\n- " + "\n- ".join(problems))


def check_host_poller(
    poller: HostPoller, live: Host, dead: Host, *, timeout: float = 2.0, threads: int = 4
) -> None:
    """Check a :class:`~cloudha.ports.HostPoller` with one answering and one dead host.

    Rules: ``poll`` exists; ``poll(live)`` returns a :class:`~cloudha.ports.PingReport`
    for ``live.id`` whose ``vms`` is None or a set of strings; ``poll(dead)``
    returns None or raises a :class:`~cloudha.errors.ProbeError` (never
    another exception); no call takes longer than ``timeout`` plus a grace;
    the same answers come back when asked from ``threads`` threads at once.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("poller", poller, HostPoller)
    problems: list[str] = []

    def timed(host: Host) -> tuple[object, BaseException | None, float]:
        started = time.monotonic()
        try:
            return poller.poll(host, timeout=timeout), None, time.monotonic() - started
        except Exception as exc:
            return None, exc, time.monotonic() - started

    def judge(
        label: str, host: Host, alive: bool, outcome: tuple[object, BaseException | None, float]
    ) -> None:
        report, error, spent = outcome
        if spent > timeout + GRACE:
            problems.append(f"{label} took {spent:.1f}s, more than its {timeout:g}s timeout")
        if error is not None and not isinstance(error, ProbeError):
            problems.append(f"{label} raised {type(error).__name__}, not a ProbeError: {error}")
            return
        if not alive:
            if error is None and report is not None:
                problems.append(f"{label} returned {report!r} (a dead host gives None or raises)")
            return
        if error is not None:
            problems.append(f"{label} raised {type(error).__name__}: {error}")
        elif not isinstance(report, PingReport):
            problems.append(f"{label} returned {report!r}, not a PingReport")
        else:
            if report.host_id != host.id:
                problems.append(f"{label} reported host {report.host_id!r}, not {host.id!r}")
            if report.vms is not None and not (
                isinstance(report.vms, frozenset) and all(isinstance(v, str) for v in report.vms)
            ):
                problems.append(f"{label}: vms must be None or a frozenset of VM ids")

    judge("poll(live)", live, True, timed(live))
    judge("poll(dead)", dead, False, timed(dead))
    if threads > 1:
        outcomes: list[tuple[str, Host, bool, tuple[object, BaseException | None, float]]] = []
        lock = threading.Lock()

        def ask(index: int) -> None:
            host, alive = (live, True) if index % 2 == 0 else (dead, False)
            outcome = timed(host)
            with lock:
                outcomes.append(
                    (f"poll({'live' if alive else 'dead'}) in thread {index}", host, alive, outcome)
                )

        workers = [threading.Thread(target=ask, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout + GRACE + 5.0)
        if len(outcomes) < threads:
            problems.append(f"{threads - len(outcomes)} concurrent polls did not return")
        for label, host, alive, outcome in outcomes:
            judge(label, host, alive, outcome)
    if problems:
        raise AssertionError(f"host poller {poller!r}:\n- " + "\n- ".join(problems))


def check_host_shell(shell: HostShell, live: Host, dead: Host, *, timeout: float = 5.0) -> None:
    """Check a :class:`~cloudha.ports.HostShell` with one reachable and one unreachable host.

    Rules: ``run`` exists; on ``live``, ``true`` exits 0 and ``false`` exits
    non-zero (returned, not raised) as a :class:`~cloudha.ports.ShellResult`
    with ``str`` output; ``echo 'a;b' '$HOME'`` prints its arguments
    literally (no shell syntax gets through); on ``dead`` it raises a
    :class:`~cloudha.errors.ProbeError`, never another exception, and never
    past ``timeout`` plus a grace.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("shell", shell, HostShell)
    problems: list[str] = []

    def timed(label: str, host: Host, argv: list[str]) -> ShellResult | BaseException:
        started = time.monotonic()
        try:
            outcome: ShellResult | BaseException = shell.run(host, argv, timeout=timeout)
        except Exception as exc:
            outcome = exc
        spent = time.monotonic() - started
        if spent > timeout + GRACE:
            problems.append(f"{label} took {spent:.1f}s, more than its {timeout:g}s timeout")
        if isinstance(outcome, ShellResult) and not (
            isinstance(outcome.exit_status, int)
            and isinstance(outcome.stdout, str)
            and isinstance(outcome.stderr, str)
        ):
            problems.append(f"{label} returned {outcome!r}: exit status int, output str")
        return outcome

    for argv, ok in ((["true"], True), (["false"], False)):
        got = timed(f"run(live, {argv})", live, argv)
        if not isinstance(got, ShellResult):
            problems.append(f"run(live, {argv}) raised {type(got).__name__}: {got}")
        elif (got.exit_status == 0) is not ok:
            problems.append(f"run(live, {argv}) exited {got.exit_status}")
    got = timed("run(live, echo)", live, ["echo", "a;b", "$HOME"])
    if not isinstance(got, ShellResult):
        problems.append(f"run(live, echo) raised {type(got).__name__}: {got}")
    elif got.stdout.strip() != "a;b $HOME":
        problems.append(f"run(live, echo 'a;b' '$HOME') printed {got.stdout!r}: not literal")
    got = timed("run(dead, true)", dead, ["true"])
    if isinstance(got, ShellResult):
        problems.append(f"run(dead, true) returned {got!r}: an unreachable host raises")
    elif not isinstance(got, ProbeError):
        problems.append(f"run(dead, true) raised {type(got).__name__}, not a ProbeError")
    if problems:
        raise AssertionError(f"host shell {shell!r}:\n- " + "\n- ".join(problems))


Make = Callable[[], tuple[VmOrchestrator, str, Sequence[str]]]
"""Returns ``(orchestrator, vm_id, host_ids)``: a fresh VM (no generation used
yet) Running on ``host_ids[0]``; at least two hosts, each with room for one
more VM and no tag restriction; the VM can restart on another server."""


def _vm_of(orch: VmOrchestrator, vm_id: str) -> Vm:
    vm = orch.find_vm(vm_id)
    assert vm is not None, vm_id
    return vm


def check_vm_orchestrator(make: Make) -> None:
    """Fail with an AssertionError when ``make()``'s orchestrator breaks the port's contract.

    ``make()`` returns ``(orchestrator, vm_id, host_ids)``: a fresh VM (no
    generation used yet) Running on ``host_ids[0]``; at least two hosts, each
    with room for one more VM and no tag restriction. Checked: find and list,
    forced and graceful stops, fencing tokens (a stale generation is refused
    before anything happens; a start refused for want of room does not use
    its generation), ``avoid_hosts`` winning over ``prefer_host``, unknown
    VMs, migration away and destroy/expunge.
    """
    orch, vm_id, hosts = make()
    assert isinstance(orch, VmOrchestrator)
    assert len(hosts) >= 2
    first, others = hosts[0], set(hosts[1:])

    # Look-ups.
    vm = _vm_of(orch, vm_id)
    assert (vm.id, vm.state, vm.host_id) == (vm_id, VmState.RUNNING, first)
    assert orch.find_vm("contract-no-such-vm") is None
    assert vm_id in [v.id for v in orch.list_vms_on_host(first)]
    assert all(v.host_id == first for v in orch.list_vms_on_host(first))
    assert orch.list_vms_on_host("contract-no-such-host") == []
    assert orch.can_restart_on_another_server(vm) is True

    # A forced stop: Stopped, off its host, counter moved; a second stop changes nothing.
    orch.advance_stop(vm, force=True)
    stopped = _vm_of(orch, vm_id)
    assert (stopped.state, stopped.host_id, stopped.last_host_id) == (VmState.STOPPED, None, first)
    assert stopped.updated > vm.updated
    assert vm_id not in [v.id for v in orch.list_vms_on_host(first)]
    orch.advance_stop(stopped, force=True)
    assert _vm_of(orch, vm_id).updated == stopped.updated

    # Nowhere to go: capacity error, VM stays Stopped, the generation is not used.
    with _raises(InsufficientCapacityError) as no_room:
        orch.advance_start(
            stopped, StartParams(generation=1, avoid_hosts=frozenset(hosts)), Planner.HA
        )
    assert no_room.value.vm_id == vm_id
    assert _vm_of(orch, vm_id).state is VmState.STOPPED

    # Start with generation 1 away from the first host: avoided, even when preferred.
    host = orch.advance_start(
        stopped,
        StartParams(generation=1, avoid_hosts=frozenset({first}), prefer_host=first),
        Planner.DEFAULT,
    )
    assert host in others
    running = _vm_of(orch, vm_id)
    assert (running.state, running.host_id) == (VmState.RUNNING, host)
    assert running.updated > stopped.updated
    assert vm_id in [v.id for v in orch.list_vms_on_host(host)]

    # A duplicate of generation 1 is stale; nothing changes.
    with _raises(StaleGenerationError) as stale:
        orch.advance_start(running, StartParams(generation=1), Planner.DEFAULT)
    assert (stale.value.vm_id, stale.value.generation, stale.value.highest) == (vm_id, 1, 1)
    assert _vm_of(orch, vm_id) == running
    # A newer generation while the VM runs: refused, nothing changes.
    with _raises(ConcurrentOperationError):
        orch.advance_start(running, StartParams(generation=2), Planner.DEFAULT)
    assert _vm_of(orch, vm_id) == running

    # Stop gracefully, then a newer generation starts it again; the old ones stay stale.
    orch.advance_stop(running, force=False)
    assert _vm_of(orch, vm_id).state is VmState.STOPPED
    with _raises(StaleGenerationError):
        orch.advance_start(running, StartParams(generation=1), Planner.HA)
    again = orch.advance_start(running, StartParams(generation=2), Planner.HA)
    assert again in hosts
    assert _vm_of(orch, vm_id).host_id == again
    orch.advance_stop(_vm_of(orch, vm_id), force=True)

    # Unknown VMs.
    ghost = Vm("contract-no-such-vm")
    with _raises(UnknownVmError):
        orch.advance_stop(ghost, force=True)
    with _raises(UnknownVmError):
        orch.advance_start(ghost, StartParams(generation=1), Planner.DEFAULT)

    # A second, fresh VM has generations of its own.
    orch2, vm2, hosts2 = make()
    assert vm2 != vm_id or orch2 is not orch
    orch2.advance_stop(_vm_of(orch2, vm2), force=True)
    assert orch2.advance_start(_vm_of(orch2, vm2), StartParams(generation=1), Planner.DEFAULT) in (
        hosts2
    )
    orch2.advance_stop(_vm_of(orch2, vm2), force=True)

    _check_migrate_away(make)
    _check_destroy(make)


def _ids_on(orch: VmOrchestrator, host_id: str) -> list[str]:
    return [v.id for v in orch.list_vms_on_host(host_id)]


def _check_migrate_away(make: Make) -> None:
    orch, vm_id, hosts = make()
    first = hosts[0]
    vm = _vm_of(orch, vm_id)

    # From a host the VM does not run on: refused, nothing changes.
    for wrong in ("contract-no-such-host", hosts[1]):
        with _raises(ConcurrentOperationError) as wrong_source:
            orch.migrate_away(vm, wrong)
        assert wrong_source.value.vm_id == vm_id
        assert _vm_of(orch, vm_id) == vm

    # A Running VM moves to another host and keeps running there.
    target = orch.migrate_away(vm, first)
    assert target in hosts
    assert target != first
    moved = _vm_of(orch, vm_id)
    assert (moved.state, moved.host_id) == (VmState.RUNNING, target)
    assert moved.updated > vm.updated
    assert vm_id in _ids_on(orch, target)
    assert vm_id not in _ids_on(orch, first)

    # The old source is wrong now; the new one works (back to a host other than it).
    with _raises(ConcurrentOperationError):
        orch.migrate_away(moved, first)
    assert _vm_of(orch, vm_id) == moved
    back = orch.migrate_away(moved, target)
    assert back != target
    assert _vm_of(orch, vm_id).host_id == back

    # A Stopped VM is not migrated, whatever the source.
    orch.advance_stop(_vm_of(orch, vm_id), force=True)
    stopped = _vm_of(orch, vm_id)
    for source in (back, first):
        with _raises(ConcurrentOperationError):
            orch.migrate_away(stopped, source)
    assert _vm_of(orch, vm_id) == stopped

    with _raises(UnknownVmError):
        orch.migrate_away(Vm("contract-no-such-vm"), first)


def _check_destroy(make: Make) -> None:
    # A running VM: stopped, Destroyed, off its host; destroying it again changes nothing.
    orch, vm_id, hosts = make()
    first = hosts[0]
    running = _vm_of(orch, vm_id)
    orch.destroy(running, expunge=False)
    destroyed = _vm_of(orch, vm_id)
    assert (destroyed.state, destroyed.host_id) == (VmState.DESTROYED, None)
    assert destroyed.updated > running.updated
    assert vm_id not in _ids_on(orch, first)
    orch.destroy(destroyed, expunge=False)
    assert _vm_of(orch, vm_id) == destroyed
    # Stopping a Destroyed VM changes nothing: it does not run, and stays Destroyed.
    orch.advance_stop(destroyed, force=True)
    assert _vm_of(orch, vm_id) == destroyed
    # A Destroyed VM is neither started nor migrated.
    with _raises(ConcurrentOperationError):
        orch.advance_start(destroyed, StartParams(generation=1), Planner.HA)
    with _raises(ConcurrentOperationError):
        orch.migrate_away(destroyed, first)
    assert _vm_of(orch, vm_id) == destroyed
    # Expunging a Destroyed VM: gone; it is then unknown.
    orch.destroy(destroyed, expunge=True)
    assert orch.find_vm(vm_id) is None
    for host in hosts:
        assert vm_id not in _ids_on(orch, host)
    with _raises(UnknownVmError):
        orch.destroy(destroyed, expunge=True)

    # Expunging a running VM at once.
    orch2, vm2, hosts2 = make()
    orch2.destroy(_vm_of(orch2, vm2), expunge=True)
    assert orch2.find_vm(vm2) is None
    assert vm2 not in _ids_on(orch2, hosts2[0])

    # A Stopped VM is destroyed too.
    orch3, vm3, _hosts3 = make()
    orch3.advance_stop(_vm_of(orch3, vm3), force=True)
    stopped = _vm_of(orch3, vm3)
    orch3.destroy(stopped, expunge=False)
    after = _vm_of(orch3, vm3)
    assert (after.state, after.host_id) == (VmState.DESTROYED, None)
    assert after.updated > stopped.updated

    ghost = Vm("contract-no-such-vm")
    for expunge in (False, True):
        with _raises(UnknownVmError):
            orch3.destroy(ghost, expunge=expunge)


def check_suspicion_check(check: SuspicionCheck) -> None:
    """Check a :class:`~cloudha.ports.SuspicionCheck` (the fast path for hosts in Alert).

    Rules: ``consider`` exists; for every sample host (every hypervisor, no
    address, no cluster, a console-proxy agent) it returns a bool, never
    None, and never raises, however its ports answer; a host that is not in
    Alert is never fenced (False). Give it ports that know none of the sample
    hosts (or fail): nothing may be fenced by accident.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("suspicion", check, SuspicionCheck)
    problems: list[str] = []
    for host in sample_hosts() + [attrs.evolve(h, status=Status.UP) for h in sample_hosts()]:
        try:
            fenced = check.consider(host)
        except Exception as exc:  # the rule under test: it must not raise
            problems.append(
                f"consider({host.id}, {host.status}) raised {type(exc).__name__}: {exc}"
            )
            continue
        if not isinstance(fenced, bool):
            problems.append(f"consider({host.id}) returned {fenced!r}, not a bool")
        elif fenced and host.status is not Status.ALERT:
            problems.append(f"consider({host.id}) fenced a host that is {host.status}, not Alert")
    if problems:
        raise AssertionError("SuspicionCheck contract broken:\n- " + "\n- ".join(problems))


def check_ha_provider(provider: HAProvider) -> None:
    """Check a :class:`~cloudha.ports.HAProvider` (a Host-HA provider).

    Rules: it has every method of the Protocol and a non-empty ``name``;
    ``config`` is an :class:`~cloudha.hostha.HAProviderConfig`; for every
    sample host (every hypervisor, no address, no cluster, a console-proxy
    agent) ``supports`` and ``is_eligible`` return a bool and never raise;
    ``is_healthy`` returns a bool; ``has_activity`` returns True, False or
    None (or raises :class:`~cloudha.errors.HACheckError`); ``recover``,
    ``fence`` and ``proves_dead`` return a bool, and never True for a host
    their ports do not know. Give it ports that know none of the sample hosts
    (or fail): nothing may be reset or fenced by accident. Exceptions other
    than those named are allowed where the contract reads them as "could not".

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("provider", provider, HAProvider)
    problems: list[str] = []
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name:
        problems.append(f"name is {name!r}, not a non-empty string")
    if not isinstance(provider.config, HAProviderConfig):
        problems.append(f"config is {type(provider.config).__name__}, not an HAProviderConfig")
    for host in sample_hosts():
        for method in ("supports", "is_eligible"):
            try:
                answer = getattr(provider, method)(host)
            except Exception as exc:  # the rule under test: it must not raise
                problems.append(f"{method}({host.id}) raised {type(exc).__name__}: {exc}")
                continue
            if not isinstance(answer, bool):
                problems.append(f"{method}({host.id}) returned {answer!r}, not a bool")
        checks: list[tuple[str, Callable[[], object], tuple[object, ...]]] = [
            ("is_healthy", functools.partial(provider.is_healthy, host), (True, False)),
            (
                "has_activity",
                functools.partial(provider.has_activity, host, 0.0),
                (True, False, None),
            ),
            ("recover", functools.partial(provider.recover, host), (False,)),
            ("fence", functools.partial(provider.fence, host), (False,)),
            ("proves_dead", functools.partial(provider.proves_dead, host), (False,)),
        ]
        for method, call, allowed in checks:
            try:
                answer = call()
            except HACheckError:
                if method != "has_activity":
                    problems.append(f"{method}({host.id}) raised HACheckError")
                continue
            except Exception:
                continue  # "could not": allowed, never a proof
            if not any(answer is a for a in allowed):
                problems.append(
                    f"{method}({host.id}) returned {answer!r} for a host its ports do not know;"
                    f" expected one of {list(allowed)}"
                )
    if problems:
        raise AssertionError("HAProvider contract broken:\n- " + "\n- ".join(problems))


def check_volume_directory(volumes: VolumeDirectory, host: Host) -> None:
    """Check a :class:`~cloudha.ports.VolumeDirectory` on one host it knows.

    Rules: ``volumes_on_host`` returns a mapping of pool ids (non-empty
    strings) to sequences of paths, each relative (not absolute), without
    ``..`` and without NUL; and a mapping (empty or not) for every sample host.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("volumes", volumes, VolumeDirectory)
    problems: list[str] = []
    for subject in [host, *sample_hosts()]:
        try:
            found = volumes.volumes_on_host(subject)
        except Exception as exc:
            problems.append(f"volumes_on_host({subject.id}) raised {type(exc).__name__}: {exc}")
            continue
        if not isinstance(found, Mapping):
            problems.append(f"volumes_on_host({subject.id}) returned {type(found).__name__}")
            continue
        for pool, paths in found.items():
            if not isinstance(pool, str) or not pool:
                problems.append(f"{subject.id}: pool id {pool!r} is not a non-empty string")
            if isinstance(paths, str) or not isinstance(paths, Sequence):
                problems.append(f"{subject.id}: pool {pool!r} maps to {paths!r}, not a list")
                continue
            for path in paths:
                if (
                    not isinstance(path, str)
                    or not path
                    or "\0" in path
                    or path.startswith("/")
                    or ".." in path.split("/")
                ):
                    problems.append(
                        f"{subject.id}: volume path {path!r} on {pool!r} is not relative"
                    )
    if problems:
        raise AssertionError("VolumeDirectory contract broken:\n- " + "\n- ".join(problems))


def sample_evidence() -> list[Evidence]:
    """Evidence records a metrics sink must take: one of each kind the server records,
    as it records them, then unknown kinds and every field missing, ill-typed or absurd."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    finding = {"source": "KVMInvestigator", "verdict": "DEAD", "reason": "stale"}
    typical: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
        ("behind_on_ping", "h1", None, {"since_last_ping": 151.5, "timeout": 150.0}),
        ("investigation", "h1", None, {"result": "Down", "decided_by": "K", "findings": [finding]}),
        ("host_status", "h1", None, {"from": "Up", "to": "Alert", "event": "AgentDisconnected"}),
        ("host_status", "h1", None, {"from": "Alert", "to": "Down", "event": "HostDown"}),
        ("ha_scheduled", "h1", None, {"ha_reason": "HostDown", "investigate": True}),
        ("ha_work", "h1", "vm1", {"work": 1, "type": "HA", "step": "Investigating", "tried": 0}),
        ("fence", "h1", "vm1", {"fencer": "F", "outcome": "FENCED", "level": 0, "seconds": 2.5}),
        ("fence_escalated", "h1", "vm1", {"attempts": []}),
        ("ha_work", "h1", "vm1", {"type": "HA", "step": "Done", "started_on": "h2"}),
        ("ha_work", "h1", "vm2", {"type": "HA", "step": "Rescheduled", "retry_in": 30.0}),
        ("suspicion", "h1", None, {"qualifies": True, "fencer": "P", "outcome": "FENCED"}),
        ("suspicion", "h1", None, {"qualifies": True, "outcome": "held", "held": "budget"}),
        ("suspicion", "h1", None, {"qualifies": True, "outcome": "would fence", "shadow": True}),
        ("storm", "h1", None, {"rule": "budget", "domains": []}),
        ("escalation", "h1", None, {"level": "agent.restart", "step": 1, "outcome": "failed"}),
        ("escalation", "h1", None, {"level": None, "step": None, "outcome": "reset"}),
        ("freshness", None, None, {"fresh": False, "judging": False, "causes": ["pings"]}),
        ("freshness", "h1", None, {"fresh": False, "held": "investigation"}),
        ("host_ha_fence", "h1", None, {"fenced": True, "proven": False, "provider": "kvm"}),
        ("host_ha_recovery", "h1", None, {"recovered": False, "provider": "kvm"}),
        ("host_status", "h1", None, {"from": "Down", "to": "Up", "event": "AgentConnected"}),
    ]
    kinds = sorted({kind for kind, _, _, _ in typical})
    odd: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
        ("a_kind_nobody_knows", None, None, {"anything": [1, 2, {"x": None}]})
    ]
    odd += [(kind, None, None, {}) for kind in kinds]
    odd += [(kind, "h1", "vm1", {}) for kind in kinds]
    odd += [
        ("behind_on_ping", "h1", None, {"since_last_ping": "soon"}),
        ("behind_on_ping", "h1", None, {"since_last_ping": float("nan")}),
        ("behind_on_ping", "h1", None, {"since_last_ping": -5.0}),
        ("behind_on_ping", "h1", None, {"since_last_ping": None}),
        ("host_status", "h1", None, {"from": None, "to": None}),
        ("host_status", "h1", None, {"to": "Down"}),
        ("investigation", "h1", None, {"findings": "not a list"}),
        ("investigation", "h1", None, {"findings": [None, 3, {"verdict": 1}]}),
        ("fence", "h1", "vm1", {"seconds": float("inf"), "outcome": 7}),
        ("fence", "h1", "vm1", {"seconds": True}),
        ("ha_work", "h1", "vm1", {"type": "Teleport", "step": "Dancing"}),
        ("ha_work", None, "vm1", {"type": "HA", "step": "Done", "started_on": "h2"}),
        ("suspicion", "h1", None, {"outcome": ["not", "a", "string"]}),
    ]
    return [
        Evidence(kind, float(t), at, "contract", host, vm, "a contract sample", details)
        for t, (kind, host, vm, details) in enumerate(typical + odd)
    ]


class _FailingDirectory(InMemoryHostDirectory):
    """A host directory that stops answering when ``failing`` is set."""

    failing = False

    def list_hosts(self, **kw: Any) -> Sequence[Host]:
        if self.failing:
            raise ProbeConnectionError("the host directory is down (contract check)")
        return super().list_hosts(**kw)


class _FailingWorkStore(SqlWorkStore):
    """A work store whose reads fail when ``failing`` is set."""

    failing = False

    def tally(self) -> list[WorkTally]:
        if self.failing:
            raise StoreUnavailableError("the HA work store is down (contract check)")
        return super().tally()


def check_metrics_sink(sink: MetricsSink, *, scrape: Callable[[], object] | None = None) -> None:
    """Check a :class:`~cloudha.ports.MetricsSink` (a metrics adapter).

    Rules: it has ``record`` and ``watch``; ``record`` takes every record of
    :func:`sample_evidence` (each kind the server makes, unknown kinds, fields
    missing, ill-typed or absurd), from eight threads at once, without raising;
    a :class:`~cloudha.ManagementServer` built with ``metrics=sink`` (which
    calls ``watch``) builds and recovers. With ``scrape`` (what
    reads the sink's view of the server, e.g. ``Metrics.render``): a scrape of
    the watched server never raises, never contacts an agent or a BMC, and still
    answers while the host directory and the work store fail.

    Raises:
        AssertionError: listing every broken rule.
    """
    validate_port("metrics", sink, MetricsSink)
    problems: list[str] = []
    samples = sample_evidence()
    for evidence in samples:
        try:
            sink.record(evidence)
        except Exception as exc:  # the rule under test: it must not raise
            problems.append(
                f"record({evidence.kind}, {dict(evidence.details)!r}) raised"
                f" {type(exc).__name__}: {exc}"
            )
    errors: list[str] = []

    def hammer() -> None:
        for evidence in samples:
            try:
                sink.record(evidence)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        problems.append(f"record() raised from concurrent threads: {errors[0]}")

    from cloudha.evidence import EvidenceLog
    from cloudha.oobm.manager import StaticOobmConfigs
    from cloudha.oobm.power import OobmConfig
    from cloudha.server import ManagementServer
    from cloudha.settings import Settings
    from cloudha.testing.clock import FakeClock
    from cloudha.testing.fakes import FakeAgentGateway, RecordingAlertSink
    from cloudha.testing.oobm import FakePowerDriver
    from cloudha.testing.orchestrator import FakeOrchestratorHost, InMemoryOrchestrator

    clock = FakeClock(1_000.0)
    hosts = ("h1", "h2")
    directory = _FailingDirectory(
        Host(h, status=Status.UP, last_ping=1_000.0, management_server_id="ms1") for h in hosts
    )
    gateway = FakeAgentGateway(dict.fromkeys(hosts, True))
    power = FakePowerDriver("fake")
    bmcs = {h: power.add(f"bmc-{h}") for h in hosts}
    configs = StaticOobmConfigs(
        {h: OobmConfig("fake", f"bmc-{h}", "admin", "password", host_id=h) for h in hosts}
    )
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    create_schema(engine)
    store = _FailingWorkStore(engine, clock)
    store.add("vm1", WorkType.HA, VmState.RUNNING, host_id="h1")
    try:
        server = ManagementServer(
            settings=Settings(),
            clock=clock,
            directory=directory,
            gateway=gateway,
            orchestrator=InMemoryOrchestrator(
                [FakeOrchestratorHost(h) for h in hosts], [Vm("vm1", host_id="h1")]
            ),
            alerts=RecordingAlertSink(),
            store=store,
            evidence=EvidenceLog(),
            discover_plugins=False,
            oobm_drivers=[power],
            oobm_configs=configs,
            metrics=sink,
        )
        server.recover(connected=hosts)
        server.freshness.evaluate()
    except Exception as exc:
        problems.append(f"a ManagementServer built with it failed: {type(exc).__name__}: {exc}")
        server = None
    if server is not None and scrape is not None:
        gateway.calls.clear()
        for bmc in bmcs.values():
            bmc.calls.clear()
        for failing in (False, True):
            directory.failing = store.failing = failing
            what = "while the directory and the work store fail" if failing else "of a server"
            try:
                scrape()
            except Exception as exc:
                problems.append(f"a scrape {what} raised {type(exc).__name__}: {exc}")
        directory.failing = store.failing = False
        if gateway.calls:
            problems.append(f"a scrape called agents: {gateway.calls}")
        touched = {h: list(b.calls) for h, b in bmcs.items() if b.calls}
        if touched:
            problems.append(f"a scrape contacted BMCs: {touched}")
    engine.dispose()
    if problems:
        raise AssertionError("MetricsSink contract broken:\n- " + "\n- ".join(problems))


def check_power_driver(
    driver: PowerDriver,
    config: OobmConfig,
    *,
    unreachable: OobmConfig | None = None,
    timeout: float = 5.0,
    threads: int = 4,
) -> None:
    """Check a :class:`~cloudha.oobm.PowerDriver` against a BMC it can reach.

    ``config`` points at a BMC that may be switched off and on (a test BMC or
    a fake, never a production host): the checker powers it OFF, reads it
    back, powers it ON and leaves it on. ``unreachable`` (optional) points at
    an address where nothing answers.

    Rules: a non-empty, lower-case ``name``; ``execute`` returns a
    :class:`~cloudha.oobm.power.PowerResult` of the operation asked, or raises
    a :class:`~cloudha.errors.ProbeError` (``ProbeAuthError``, ``ProbeTimeout``,
    ``ProbeConnectionError``, ``PowerCommandError``), never another exception;
    a successful STATUS carries a power state; OFF is immediate (STATUS
    reads Off within ``timeout``: a power cut, never a graceful shutdown) and
    ON is read back On; a wrong password raises
    ``ProbeAuthError``; nothing answering raises ``ProbeTimeout`` or
    ``ProbeConnectionError``; every call returns within ``timeout`` plus a
    grace of wall time; the password never appears in a result, an exception
    message or the driver's ``repr``; concurrent STATUS calls agree.

    Raises:
        AssertionError: listing every broken rule.
    """
    problems: list[str] = []
    name = getattr(driver, "name", None)
    if not isinstance(name, str) or not name or name != name.lower():
        raise AssertionError(f"power driver {driver!r}: name must be a non-empty lower-case str")
    secret = config.password

    def call(
        label: str, target: OobmConfig, operation: PowerOperation
    ) -> tuple[PowerResult | None, BaseException | None]:
        started = time.monotonic()
        try:
            result = driver.execute(target, operation, timeout=timeout)
        except ProbeError as exc:
            error: BaseException | None = exc
            result = None
        except Exception as exc:
            problems.append(f"{label} raised {type(exc).__name__}: {exc} (raise a ProbeError)")
            return None, exc
        else:
            error = None
        spent = time.monotonic() - started
        if spent > timeout + GRACE:
            problems.append(f"{label} took {spent:.1f}s, more than its {timeout:g}s timeout")
        if error is not None:
            if secret and secret in str(error):
                problems.append(f"{label}: the exception message contains the password")
            return None, error
        if not isinstance(result, PowerResult):
            problems.append(f"{label} returned {result!r}, not a PowerResult")
            return None, None
        if result.operation is not operation:
            problems.append(f"{label} returned a result for {result.operation}, not {operation}")
        if secret and secret in json.dumps(result.to_dict()):
            problems.append(f"{label}: the result contains the password")
        return result, None

    def state(label: str) -> PowerState | None:
        result, error = call(label, config, PowerOperation.STATUS)
        if error is not None:
            problems.append(f"{label} failed: {type(error).__name__}: {error}")
            return None
        if result is not None and result.success and result.state is None:
            problems.append(f"{label} succeeded without a power state")
        return None if result is None else result.state

    state("STATUS")
    for operation, expected in (
        (PowerOperation.OFF, PowerState.OFF),
        (PowerOperation.ON, PowerState.ON),
    ):
        result, error = call(str(operation), config, operation)
        if error is not None or result is None or not result.success:
            why = error if error is not None else (result.message if result else "no result")
            problems.append(f"{operation} on a reachable BMC did not succeed: {why}")
            continue
        read = state(f"STATUS after {operation}")
        settle = time.monotonic() + timeout  # a real BMC may report the change a moment late
        while read is not expected and read is not None and time.monotonic() < settle:
            time.sleep(0.05)
            read = state(f"STATUS after {operation}")
        if read is not expected:
            problems.append(f"STATUS right after {operation} read {read}, not {expected}")
    # Same length, last character changed: a BMC limits password length (IPMI: 20 bytes),
    # and an overlong one is refused before authentication is even tried.
    wrong_secret = secret[:-1] + ("x" if secret[-1:] != "x" else "y") if secret else "wrong"
    wrong = attrs.evolve(config, password=wrong_secret)
    _, error = call("STATUS with a wrong password", wrong, PowerOperation.STATUS)
    if not isinstance(error, ProbeAuthError):
        problems.append(
            "STATUS with a wrong password did not raise ProbeAuthError"
            + (f" (raised {type(error).__name__})" if error is not None else "")
        )
    if unreachable is not None:
        _, error = call("STATUS of an unreachable BMC", unreachable, PowerOperation.STATUS)
        if not isinstance(error, ProbeTimeout | ProbeConnectionError):
            problems.append(
                "STATUS of an unreachable BMC did not raise ProbeTimeout or ProbeConnectionError"
            )
    if secret and secret in repr(driver):
        problems.append("repr(driver) contains the password")
    answers: list[PowerState | None] = []
    lock = threading.Lock()

    def ask() -> None:
        got = state("concurrent STATUS")
        with lock:
            answers.append(got)

    pool = [threading.Thread(target=ask, name=f"contract-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout + GRACE + 5)
    if len(set(answers)) > 1:
        problems.append(f"concurrent STATUS calls disagree: {answers}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise AssertionError(
            f"power driver {name!r} breaks the contract:\n  - " + "\n  - ".join(unique)
        )
