"""Contract checks for users' own investigators and fencers.

``check_investigator(MyInvestigator(...))`` asks the investigator about a
spread of hosts and VMs (every hypervisor, with and without an address, in
several states), from several threads at once, and fails with every
broken rule listed, so a plugin author learns all of them in one run.
``check_fencer(MyFencer(...))`` does the same for a fence builder.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from cloudha.fencing.base import FenceBuilder, FenceOutcome, FenceResult
from cloudha.fencing.chain import GRACE
from cloudha.investigators.base import Finding, Investigator, Verdict
from cloudha.model import Host, HostType, HypervisorType, Vm, VmType
from cloudha.status import Status

__all__ = ["check_fencer", "check_investigator", "sample_hosts", "sample_vms"]


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
