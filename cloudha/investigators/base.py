"""The investigator extension point: tri-state findings about hosts and VMs.

An investigator is one witness. Asked about a host it answers with a
:class:`Finding` whose :class:`Verdict` is ALIVE, DEAD or UNKNOWN, never
``None`` or a bare bool. A witness that cannot judge a host at all (another
hypervisor, no shared storage) says so through :meth:`Investigator.supports`
and is not asked.

:func:`host_outcome` is the one place where findings become CloudStack's
host outcomes (Up / Down / Disconnected / None) for the disconnect decision
table.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.errors import ProbeError
from cloudha.model import Host, Vm
from cloudha.status import Status

__all__ = [
    "HOST_HA_BRIDGE",
    "BaseInvestigator",
    "Finding",
    "Investigator",
    "Verdict",
    "Witness",
    "host_outcome",
]

HOST_HA_BRIDGE = "HostHAInvestigator"
"""The name of Host-HA's bridge investigator (:class:`cloudha.hostha.HostHAInvestigator`):
its ALIVE on a VM means "Host-HA has not decided yet", a wait that uses up no HA retries."""

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What a witness concluded."""

    ALIVE = "ALIVE"
    """The host (or VM) is running: something it did was observed recently."""
    DEAD = "DEAD"
    """The host (or VM) is not running, with positive evidence (not just silence)."""
    UNKNOWN = "UNKNOWN"
    """The witness cannot tell; never treated as DEAD."""

    def __str__(self) -> str:
        return self.value


class Witness(enum.Enum):
    """What a host finding rests on: the host's own signs of life, or its VMs'.

    The chain lets a VM-level ALIVE outrank a host-level DEAD
    (:meth:`~cloudha.investigators.InvestigatorChain.investigate_host`):
    a heartbeat or an agent can stop while the VMs run on.
    """

    HOST = "host"
    """The host's agent, storage heartbeat or network answers."""
    VM = "vm"
    """The host's VMs themselves were seen (running domains, volume activity)."""

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Finding:
    """One witness's answer.

    Attributes:
        verdict: ALIVE, DEAD or UNKNOWN.
        source: the investigator's name.
        reason: why, in one sentence.
        reachable: for host findings: whether the management path to the
            host's agent works. False means "cut off from us" (CloudStack's
            Disconnected): alive but unreachable with ALIVE, unreachable and
            undecidable with UNKNOWN. None when not known or not relevant.
        observed_at: ``clock.monotonic()`` of the observation.
        evidence: what was seen (JSON-able, no secrets).
        witness: :attr:`Witness.VM` when the finding rests on the host's
            VMs having been seen (an ALIVE because domains run there);
            :attr:`Witness.HOST` otherwise.
        no_vm_runs: the finding itself shows that no VM runs on the host at
            ``observed_at``: its power read Off, or its hypervisor answering
            with no domain running. A Down verdict with such a finding needs
            no fence for the VMs the host had (they died), however the host
            looks later (:attr:`~cloudha.investigators.ChainResult.no_vm_runs`).
    """

    verdict: Verdict
    source: str
    reason: str
    reachable: bool | None = None
    observed_at: float = 0.0
    evidence: Mapping[str, Any] = attrs.field(factory=dict)
    witness: Witness = Witness.HOST
    no_vm_runs: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form used in evidence records."""
        out: dict[str, Any] = {
            "source": self.source,
            "verdict": self.verdict.value,
            "reason": self.reason,
        }
        if self.reachable is not None:
            out["reachable"] = self.reachable
        if self.witness is Witness.VM:
            out["witness"] = self.witness.value
        if self.no_vm_runs:
            out["no_vm_runs"] = True
        if self.evidence:
            out["evidence"] = dict(self.evidence)
        return out


def host_outcome(finding: Finding | None) -> Status | None:
    """Map a host finding to CloudStack's ``isAgentAlive`` outcome.

    ============================================  ================
    finding                                       outcome
    ============================================  ================
    DEAD                                          Down
    ALIVE, reachable                              Up
    ALIVE, ``reachable=False``                    Disconnected
    UNKNOWN, ``reachable=False``                  Disconnected
    UNKNOWN otherwise, or no finding              None
    ============================================  ================

    ``reachable=False`` on an UNKNOWN finding is how a witness says "nobody
    can reach this host, stop asking" (CloudStack's KVM investigator answers
    Disconnected when neither the host nor a neighbour answers); the host then
    goes to Alert and its VMs stay where they are.
    """
    if finding is None:
        return None
    if finding.verdict is Verdict.DEAD:
        return Status.DOWN
    if finding.reachable is False:
        return Status.DISCONNECTED
    if finding.verdict is Verdict.UNKNOWN:
        return None
    return Status.UP


@runtime_checkable
class Investigator(Protocol):
    """A witness about hosts and VMs.

    Contract:
        * ``name`` is stable: it is what ``ha.investigators.order`` and
          ``ha.investigators.exclude`` refer to.
        * ``supports(host)`` is cheap and does no I/O.
        * ``is_agent_alive`` / ``is_vm_alive`` may block, but must return
          within their own timeouts; they are called from several threads at
          once. Infrastructure faults are UNKNOWN findings, not exceptions.
        * DEAD needs positive evidence of death; silence is UNKNOWN.
        * Optional class attribute ``vm_witness`` (False when absent): True
          for a witness that can see the host's VMs (its findings may carry
          :attr:`Witness.VM`). The chain asks such witnesses even after
          another said DEAD, and a VM-level ALIVE of theirs overrules it.
        * Optional class attribute ``death_proof`` (False when absent): True
          for a witness whose DEAD is physical proof (the power read Off),
          never an inference from silence. The chain asks such witnesses even
          after a host-level witness decided Disconnected, and their DEAD
          decides instead.
    """

    name: str

    def supports(self, host: Host) -> bool:
        """True if this witness can judge ``host`` at all."""

    def is_agent_alive(self, host: Host) -> Finding:
        """Is ``host`` running (and is its agent reachable)?"""

    def is_vm_alive(self, vm: Vm, host: Host) -> Finding:
        """Is ``vm`` running on ``host``?"""


class BaseInvestigator(abc.ABC):
    """Template for investigators: subclasses implement :meth:`_agent_alive`.

    The public methods call the ``_`` hooks, turn a
    :class:`~cloudha.errors.ProbeError` into an UNKNOWN finding, and stamp
    ``observed_at`` from the injected clock. ``_vm_alive`` defaults to
    UNKNOWN ("this witness does not look at VMs").

    Args:
        clock: the time source used to stamp findings.
    """

    name: str = "BaseInvestigator"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def supports(self, host: Host) -> bool:
        """Every host by default; override to decline hosts this witness cannot judge."""
        return True

    def is_agent_alive(self, host: Host) -> Finding:
        try:
            finding = self._agent_alive(host)
        except ProbeError as exc:
            finding = self.unknown(f"probe failed: {exc}", error=type(exc).__name__)
        return self._stamp(finding, "_agent_alive")

    def is_vm_alive(self, vm: Vm, host: Host) -> Finding:
        try:
            finding = self._vm_alive(vm, host)
        except ProbeError as exc:
            finding = self.unknown(f"probe failed: {exc}", error=type(exc).__name__)
        return self._stamp(finding, "_vm_alive")

    @abc.abstractmethod
    def _agent_alive(self, host: Host) -> Finding:
        """Judge ``host``; may raise ProbeError."""

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        return self.unknown("this investigator does not check VMs")

    vm_witness: bool = False
    """True for a witness that can see the host's VMs (see :class:`Investigator`)."""

    death_proof: bool = False
    """True for a witness whose DEAD is physical proof (see :class:`Investigator`)."""

    def finding(
        self,
        verdict: Verdict,
        reason: str,
        *,
        reachable: bool | None = None,
        witness: Witness = Witness.HOST,
        no_vm_runs: bool = False,
        **evidence: Any,
    ) -> Finding:
        """A finding from this investigator."""
        return Finding(
            verdict,
            self.name,
            reason,
            reachable=reachable,
            evidence=evidence,
            witness=witness,
            no_vm_runs=no_vm_runs,
        )

    def unknown(self, reason: str, **evidence: Any) -> Finding:
        """An UNKNOWN finding from this investigator."""
        return self.finding(Verdict.UNKNOWN, reason, **evidence)

    def _stamp(self, finding: Finding, hook: str) -> Finding:
        if not isinstance(finding, Finding):
            raise TypeError(f"{type(self).__name__}.{hook} returned {finding!r}, not a Finding")
        return attrs.evolve(finding, observed_at=self.clock.monotonic())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
