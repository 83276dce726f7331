"""Contract checks for users' own investigators, fencers and ports.

``check_investigator(MyInvestigator(...))`` asks the investigator about a
spread of hosts and VMs (every hypervisor, with and without an address, in
several states), from several threads at once, and fails with every
broken rule listed, so a plugin author learns all of them in one run.
``check_fencer(MyFencer(...))`` does the same for a fence builder.
``check_host_directory``, ``check_agent_gateway`` and
``check_vm_orchestrator`` check an implementation of those ports.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs

from cloudha.commands import PING_TEST
from cloudha.errors import HACheckError, ProbeAuthError, ProbeError
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
    PingReport,
    ShellResult,
    StatusChange,
    SuspicionCheck,
    VmOrchestrator,
    VolumeDirectory,
)
from cloudha.server import validate_port
from cloudha.status import Status

__all__ = [
    "Make",
    "check_agent_gateway",
    "check_fencer",
    "check_ha_provider",
    "check_host_directory",
    "check_host_poller",
    "check_host_shell",
    "check_investigator",
    "check_power_driver",
    "check_suspicion_check",
    "check_vm_orchestrator",
    "check_volume_directory",
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
    applies the change, bumps ``update_count`` and honours ``KEEP``); of two
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
    if not directory.update_status(change(host, target, host.update_count)):
        problems.append("update_status with the current update_count returned False")
    after = directory.find_host(host_id)
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


def check_power_driver(
    driver: PowerDriver,
    on: OobmConfig,
    *,
    unreachable: OobmConfig,
    wrong_password: OobmConfig | None = None,
    timeout: float = 5.0,
) -> None:
    """Check a power driver against the contract of :class:`~cloudha.oobm.power.PowerDriver`.

    The driver must be wired to a BMC the test controls: ``on`` names a
    machine that is powered on, ``unreachable`` a BMC nobody answers at, and
    ``wrong_password`` (optional) a real BMC with a password it refuses. The
    check only asks STATUS and powers ``on``'s machine OFF and then ON again
    (read back after each), so run it against a fake or emulated BMC.

    Rules checked: ``name`` is a non-empty lower-case str; every call returns
    a :class:`PowerResult` for the operation asked, within ``timeout`` (plus
    the chain's grace) of wall time; a successful STATUS carries a state;
    OFF is read back Off (an immediate power-off, not a graceful shutdown;
    within ``timeout``) and ON is read back On; the unreachable BMC raises a
    :class:`~cloudha.errors.ProbeError` (never another exception), the
    refused password :class:`~cloudha.errors.ProbeAuthError`; no password
    appears in a result or an exception message; STATUS asked from several
    threads at once gives the same answers.

    Raises:
        AssertionError: listing every broken rule.
    """
    problems: list[str] = []
    name = getattr(driver, "name", None)
    if not isinstance(name, str) or not name or name != name.lower():
        raise AssertionError(f"power driver {driver!r}: name must be a non-empty lower-case str")
    secrets = [c.password for c in (on, unreachable, wrong_password) if c and c.password]

    def leaks(text: str) -> bool:
        return any(secret in text for secret in secrets)

    def call(config: OobmConfig, operation: PowerOperation) -> PowerResult | BaseException:
        label = f"{name}.execute({config.address}, {operation.value})"
        started = time.monotonic()
        try:
            result: PowerResult | BaseException = driver.execute(config, operation, timeout=timeout)
        except Exception as exc:
            result = exc
        took = time.monotonic() - started
        if took > timeout + GRACE:
            problems.append(f"{label} took {took:.1f}s, more than its timeout {timeout:g}s")
        if isinstance(result, BaseException):
            if leaks(str(result)):
                problems.append(f"{label}: its {type(result).__name__} shows a password")
            return result
        if not isinstance(result, PowerResult):
            problems.append(f"{label} returned {result!r}, not a PowerResult")
        elif result.operation is not operation:
            problems.append(f"{label} returned a result for {result.operation.value}")
        elif leaks(json.dumps(result.to_dict())):
            problems.append(f"{label}: its result shows a password")
        return result

    def state_of(config: OobmConfig, when: str) -> PowerState | None:
        result = call(config, PowerOperation.STATUS)
        if isinstance(result, BaseException):
            problems.append(f"STATUS {when} raised {type(result).__name__}: {result}")
            return None
        if isinstance(result, PowerResult) and result.success and result.state is None:
            problems.append(f"STATUS {when} succeeded without a power state")
        return result.state if isinstance(result, PowerResult) else None

    first = state_of(on, "of the powered machine")
    if first is not PowerState.ON:
        problems.append(f"STATUS of the powered machine read {first}, not On")
    for operation, expected in ((PowerOperation.OFF, PowerState.OFF), (PowerOperation.ON, None)):
        result = call(on, operation)
        if isinstance(result, BaseException):
            problems.append(f"{operation.value} raised {type(result).__name__}: {result}")
            continue
        if isinstance(result, PowerResult) and not result.success:
            problems.append(f"{operation.value} of the powered machine failed: {result.message}")
        wanted = expected or PowerState.ON
        settle = time.monotonic() + timeout  # a BMC may take a moment to report the change
        read = state_of(on, f"after {operation.value}")
        while read is not wanted and time.monotonic() < settle:
            time.sleep(0.05)
            read = state_of(on, f"after {operation.value}")
        if read is not wanted:
            problems.append(f"{operation.value} read back {read}, not {wanted.value}")

    gone = call(unreachable, PowerOperation.STATUS)
    if not isinstance(gone, ProbeError):
        problems.append(
            f"STATUS of an unreachable BMC gave {gone!r}, not a ProbeError"
            " (ProbeConnectionError or ProbeTimeout)"
        )
    if wrong_password is not None:
        refused = call(wrong_password, PowerOperation.STATUS)
        if not isinstance(refused, ProbeAuthError):
            problems.append(f"STATUS with a refused password gave {refused!r}, not ProbeAuthError")

    answers: list[object] = []
    lock = threading.Lock()

    def ask() -> None:
        result = call(on, PowerOperation.STATUS)
        with lock:
            answers.append(
                result.state if isinstance(result, PowerResult) else type(result).__name__
            )

    workers = [threading.Thread(target=ask) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout + GRACE + 5)
    if set(answers) != {PowerState.ON}:
        problems.append(f"STATUS from 4 threads at once gave {answers}, not On each time")
    if problems:
        raise AssertionError(f"power driver {name!r}:\n  " + "\n  ".join(problems))
