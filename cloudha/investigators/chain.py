"""The investigator chain: ordering, exclusion and the first-decisive rule.

Ordering follows CloudStack's extension registry (spec §4): names listed in
``ha.investigators.order`` come first, in that order; investigators not
listed follow in registration order; names in ``ha.investigators.exclude``
are dropped. For a host, the first investigator whose finding maps to a
non-null outcome decides (:func:`~cloudha.investigators.base.host_outcome`),
with two exceptions: VM-level witnesses outrank host-level ones, so a DEAD
is overruled by a later VM-level ALIVE; and a death-proof witness (the power
read Off) outranks a host-level Disconnected (see
:meth:`InvestigatorChain.investigate_host`). For a VM, the first ALIVE or
DEAD finding decides. Every finding asked for is kept, so the decision can
be explained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from cloudha.errors import ConfigurationError
from cloudha.investigators.base import Finding, Investigator, Verdict, Witness, host_outcome
from cloudha.model import Host, Vm
from cloudha.status import Status

__all__ = ["ChainResult", "InvestigatorChain", "order_by_name", "proves_no_vm_runs"]

log = logging.getLogger(__name__)


@attrs.frozen
class ChainResult:
    """What the chain concluded and from whom.

    Attributes:
        status: for hosts, the CloudStack outcome (Up / Down / Disconnected)
            or None when nobody could tell.
        verdict: ALIVE / DEAD / UNKNOWN of the deciding finding.
        decided_by: the deciding investigator's name, or None.
        findings: every finding collected, in the order asked.
    """

    status: Status | None
    verdict: Verdict
    decided_by: str | None
    findings: tuple[Finding, ...]

    @property
    def no_vm_runs(self) -> bool:
        """Down, with a finding that shows no VM running on the host (``Finding.no_vm_runs``).

        Its VMs died by then: they need no fence, and an HA restart may stop
        them at once (``investigate=False``).
        """
        return proves_no_vm_runs(self.status, self.findings)

    def findings_as_dicts(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.findings]


def proves_no_vm_runs(status: Status | None, findings: Iterable[Finding]) -> bool:
    """Whether a verdict ``status`` backed by ``findings`` proves the host's VMs dead.

    Only a Down verdict does (the VM witnesses had their say: none saw the
    VMs run), and only with a finding that shows nothing running (the power
    read Off, or the hypervisor answering with no domain).
    """
    return status is Status.DOWN and any(f.no_vm_runs for f in findings)


def order_by_name(
    names: Sequence[str], order: Sequence[str], exclude: Iterable[str] = ()
) -> list[str]:
    """Registry ordering: ``order`` first, then the rest as registered, minus ``exclude``."""
    excluded = set(exclude)
    listed = [n for n in order if n in names and n not in excluded]
    rest = [n for n in names if n not in order and n not in excluded]
    return listed + rest


class InvestigatorChain:
    """An ordered list of investigators asked in turn.

    Args:
        investigators: in registration order; names must be unique.
        order: names to put first, in this order (``ha.investigators.order``).
        exclude: names to leave out (``ha.investigators.exclude``).
    """

    def __init__(
        self,
        investigators: Iterable[Investigator],
        *,
        order: Sequence[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        registered = list(investigators)
        by_name: dict[str, Investigator] = {}
        for inv in registered:
            name = getattr(inv, "name", None)
            if not isinstance(name, str) or not name:
                raise ConfigurationError(
                    f"investigator {inv!r} has no name", key="ha.investigators.order"
                )
            if name in by_name:
                raise ConfigurationError(
                    f"two investigators are named {name!r}",
                    key="ha.investigators.order",
                    value=name,
                )
            by_name[name] = inv
        excluded = list(exclude)
        for name in excluded:
            if name not in by_name:
                log.warning("ha.investigators.exclude names %r, which is not registered", name)
        names = order_by_name(list(by_name), order, excluded)
        self._investigators: tuple[Investigator, ...] = tuple(by_name[n] for n in names)

    @property
    def investigators(self) -> tuple[Investigator, ...]:
        """The investigators in the order they are asked."""
        return self._investigators

    @property
    def names(self) -> list[str]:
        return [inv.name for inv in self._investigators]

    def investigate_host(self, host: Host) -> ChainResult:
        """Ask each supporting investigator in turn; the first non-null outcome decides.

        Except that the host's VMs outrank the host's own signs of life: a
        DEAD (Down) is final only if no VM witness asked after it sees the
        host's VMs running. After a DEAD the chain goes on with the
        supporting investigators that declare ``vm_witness``, in order; the
        first ALIVE finding of theirs with :attr:`Witness.VM` decides
        instead (Disconnected when it says the host is unreachable), so a
        host whose agent and heartbeat stopped while its VMs run is never
        Down. Their other findings leave the DEAD standing.

        And physical proof outranks a guess: when a host-level witness
        decides Disconnected (alive but unreachable, or unreachable and
        undecidable: a heartbeat not yet stale proves no life), the chain
        goes on with the supporting investigators that declare
        ``death_proof`` (the BMC reading the power Off), in order; the first
        DEAD of theirs decides Down instead, still subject to the VM
        witnesses. Otherwise nothing changes: CloudStack's first-decisive
        order.
        """
        findings: list[Finding] = []
        order = self._investigators
        for index, inv in enumerate(order):
            if not inv.supports(host):
                continue
            finding = _ask(inv.name, inv.is_agent_alive, host)
            findings.append(finding)
            status = host_outcome(finding)
            if status is None:
                continue
            rest = list(order[index + 1 :])
            decided_by = inv.name
            if status is Status.DISCONNECTED and finding.witness is Witness.HOST:
                proof = self._death_proof(host, rest, findings)
                if proof is not None:
                    decided_by, finding = proof
                    status = Status.DOWN
                    rest = [i for i in rest if i.name != decided_by]
            if status is Status.DOWN:
                veto = self._vm_veto(host, rest, findings, dead_by=decided_by)
                if veto is not None:
                    return veto
            return ChainResult(status, finding.verdict, decided_by, tuple(findings))
        return ChainResult(None, Verdict.UNKNOWN, None, tuple(findings))

    @staticmethod
    def _death_proof(
        host: Host, rest: Iterable[Investigator], findings: list[Finding]
    ) -> tuple[str, Finding] | None:
        """Ask the remaining death-proof witnesses; the first DEAD overrules a Disconnected."""
        for inv in rest:
            if not getattr(inv, "death_proof", False) or not inv.supports(host):
                continue
            finding = _ask(inv.name, inv.is_agent_alive, host)
            findings.append(finding)
            if finding.verdict is Verdict.DEAD:
                log.info(
                    "%s: %s proves it dead although it looked alive but unreachable: %s",
                    host.id,
                    inv.name,
                    finding.reason,
                )
                return inv.name, finding
        return None

    @staticmethod
    def _vm_veto(
        host: Host, rest: Iterable[Investigator], findings: list[Finding], *, dead_by: str
    ) -> ChainResult | None:
        """Ask the remaining VM witnesses; the first that sees the VMs running overrules a DEAD."""
        for inv in rest:
            if not getattr(inv, "vm_witness", False) or not inv.supports(host):
                continue
            finding = _ask(inv.name, inv.is_agent_alive, host)
            findings.append(finding)
            if finding.verdict is Verdict.ALIVE and finding.witness is Witness.VM:
                status = host_outcome(finding)
                log.warning(
                    "%s: %s overrules the DEAD verdict of %s: %s",
                    host.id,
                    inv.name,
                    dead_by,
                    finding.reason,
                )
                return ChainResult(status, finding.verdict, inv.name, tuple(findings))
        return None

    def investigate_vm(self, vm: Vm, host: Host) -> ChainResult:
        """Ask each supporting investigator in turn; the first ALIVE or DEAD decides."""
        findings: list[Finding] = []
        for inv in self._investigators:
            if not inv.supports(host):
                continue
            finding = _ask(inv.name, inv.is_vm_alive, vm, host)
            findings.append(finding)
            if finding.verdict is not Verdict.UNKNOWN:
                status = Status.UP if finding.verdict is Verdict.ALIVE else Status.DOWN
                return ChainResult(status, finding.verdict, inv.name, tuple(findings))
        return ChainResult(None, Verdict.UNKNOWN, None, tuple(findings))

    def __len__(self) -> int:
        return len(self._investigators)

    def __repr__(self) -> str:
        return f"InvestigatorChain({self.names})"


def _ask(name: str, question: Callable[..., object], *args: object) -> Finding:
    # NOTE: a plugin bug must not stop detection for every other host: it is
    # logged with its traceback and counts as "cannot tell", never as DEAD.
    try:
        finding = question(*args)
    except Exception as exc:
        log.exception("investigator %s raised", name)
        return Finding(Verdict.UNKNOWN, name, f"investigator raised {type(exc).__name__}: {exc}")
    if not isinstance(finding, Finding):
        log.error("investigator %s returned %r, not a Finding", name, finding)
        return Finding(Verdict.UNKNOWN, name, f"investigator returned {type(finding).__name__}")
    return finding
