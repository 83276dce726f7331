"""Fence on suspicion: Pacemaker's rule, "in doubt, fence, then recover", with witnesses.

A hung host keeps its power on, so the BMC cannot prove it dead, and its
storage heartbeat takes the whole stale bound (465 s with the defaults) to
prove anything. Waiting for that is the slow path. The fast path powers such
a host off through its BMC when every witness has lost it:

* it is in Alert (an investigation could not tell);
* its agent does not answer;
* no neighbour reaches it: every Up neighbour asked fails a PingTest to its
  address, and at least one could be asked (where it has neighbours);
* its storage heartbeat is *late* on every pool the checkers can read: older
  than a healthy writer ever leaves it (one ``kvm.heartbeat.update.frequency``
  + one ``heartbeat.update.timeout`` + the clock skew), with at least one pool
  read (where it has heartbeat pools);
* at least one of the last two is a positive sign (a failed ping, a late
  heartbeat): the management server losing a host alone is no suspicion;
* no VM witness (the libvirt witness) sees its VMs running;
* its fence path is ready: the BMC answers STATUS now.

Then it is fenced by the power fencer: OFF, confirmed by reading the power
back Off. Only a confirmed fence makes it Down; the HA work queue then finds
it fenced (the power is Off) and restarts its VMs at once. A fresh heartbeat,
a neighbour that reaches the host, a silent BMC or an unconfirmed fence mean
no fast path: the host waits in Alert for the slower proofs.

The decision is the pure :func:`decide_suspicion`; :class:`SuspicionFencer`
gathers the witnesses' answers, records every decision (evidence kind
``suspicion``, listing each witness's answer) and carries out the fence.
``cloudha.fence.on.suspicion`` switches it off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from cloudha.clock import Clock
from cloudha.commands import answer_reached, check_on_host, ping_test
from cloudha.detection.storm import StormGuard
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.evidence import Recorder
from cloudha.fencing.base import FenceOutcome, FenceResult
from cloudha.fencing.power import PowerFencer
from cloudha.heartbeat.checker import HeartbeatReport
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators.base import Investigator, Verdict, Witness
from cloudha.investigators.support import list_neighbours
from cloudha.model import Host
from cloudha.oobm.manager import OutOfBandManager
from cloudha.ports import AgentGateway, HostDirectory, StoragePoolDirectory
from cloudha.settings import Settings
from cloudha.status import Status

__all__ = [
    "SuspicionDecision",
    "SuspicionFencer",
    "WitnessAnswer",
    "decide_suspicion",
    "late_after",
]

log = logging.getLogger(__name__)


def late_after(timing: HeartbeatTiming) -> float:
    """The age above which a heartbeat is late: one period + one write timeout + the skew.

    A writer that runs and reaches its pool stamps it at least that often;
    a late heartbeat is a suspicion, not a proof (a writer retrying a slow
    pool may fall behind it, :meth:`HeartbeatTiming.stale_after` is the proof).
    """
    return timing.frequency + timing.write_timeout + timing.clock_skew


@attrs.frozen
class WitnessAnswer:
    """One witness's answer, and whether it speaks for fencing.

    Attributes:
        witness: ``agent``, ``ping <neighbour>``, ``heartbeat <pool>`` or ``fence path``.
        answer: what it said, in one sentence.
        for_fence: True when the answer speaks for the fence (the host is lost
            to this witness; for the fence path: the BMC is ready).
    """

    witness: str
    answer: str
    for_fence: bool

    def to_dict(self) -> dict[str, Any]:
        return {"witness": self.witness, "answer": self.answer, "for_fence": self.for_fence}


@attrs.frozen
class SuspicionDecision:
    """Whether a host qualifies for a fence on suspicion, and why (or why not)."""

    qualifies: bool
    reason: str
    witnesses: tuple[WitnessAnswer, ...]


def _seconds(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def decide_suspicion(
    *,
    host_id: str,
    status: Status | None,
    agent: str | None,
    pings: Mapping[str, bool | None],
    heartbeat_pools: Sequence[str],
    heartbeat_ages: Mapping[str, float] | None,
    late: float,
    fence_ready: bool,
    fence_answer: str,
    vms_seen: Mapping[str, str] | None = None,
) -> SuspicionDecision:
    """Does ``host_id`` qualify for a fence on suspicion? (Pure; see the module docstring.)

    Args:
        host_id: for the reasons.
        status: the host's status now.
        agent: the agent's answer to CheckHealth, None when it did not answer.
        pings: per Up neighbour asked: True (it reached the host), False (it
            did not), None (the neighbour itself could not be asked).
        heartbeat_pools: the host's heartbeat pools.
        heartbeat_ages: per pool read by some checker, the youngest age seen;
            None when the checkers were not asked (another witness already
            ruled the fast path out).
        late: :func:`late_after`.
        fence_ready: the BMC answered a STATUS just now.
        fence_answer: what the BMC said.
        vms_seen: per VM witness asked (the libvirt witness), what it said;
            a witness listed here saw the host's VMs running, which rules the
            fence out (VM-level witnesses outrank the host's own signs).
    """
    answers: list[WitnessAnswer] = []

    def no(reason: str) -> SuspicionDecision:
        return SuspicionDecision(False, f"no fence on suspicion: {reason}", tuple(answers))

    if status is not Status.ALERT:
        return no(f"{host_id} is {status}, not Alert")
    answers.append(
        WitnessAnswer(
            "agent", "no answer" if agent is None else f"answered: {agent}", agent is None
        )
    )
    if agent is not None:
        return no(f"the agent of {host_id} answers")
    for neighbour, reached in sorted(pings.items()):
        text = {True: "reaches it", False: "does not reach it", None: "could not be asked"}
        answers.append(WitnessAnswer(f"ping {neighbour}", text[reached], reached is False))
    ages = {} if heartbeat_ages is None else heartbeat_ages
    for pool in heartbeat_pools:
        age = ages.get(pool)
        if heartbeat_ages is None:
            answers.append(WitnessAnswer(f"heartbeat {pool}", "not asked", False))
        elif age is None:
            answers.append(WitnessAnswer(f"heartbeat {pool}", "no checker could read it", False))
        else:
            shown = f"{_seconds(age)} s old, late after {_seconds(late)} s"
            answers.append(WitnessAnswer(f"heartbeat {pool}", shown, age > late))
    reaching = sorted(n for n, reached in pings.items() if reached)
    if reaching:
        return no(f"{', '.join(reaching)} reach {host_id}")
    failed_pings = [n for n, reached in pings.items() if reached is False]
    if pings and not failed_pings:
        return no(f"no neighbour of {host_id} could be asked to ping it")
    read = {p: a for p, a in ages.items() if p in heartbeat_pools}
    fresh = sorted(p for p, age in read.items() if age <= late)
    if fresh:
        return no(f"the heartbeat of {host_id} is not late on {', '.join(fresh)}")
    if heartbeat_pools and not read:
        return no(f"no checker could read the heartbeat of {host_id}")
    if not failed_pings and not read:
        return no(f"only the management server lost {host_id}: no neighbour, no heartbeat")
    for witness, said in sorted((vms_seen or {}).items()):
        answers.append(WitnessAnswer(witness, said, False))
    if vms_seen:
        return no(f"{', '.join(sorted(vms_seen))} sees the VMs of {host_id} running")
    answers.append(WitnessAnswer("fence path", fence_answer, fence_ready))
    if not fence_ready:
        return no(f"the fence path of {host_id} is not ready ({fence_answer})")
    return SuspicionDecision(
        True,
        f"{host_id} is lost to every witness: agent silent, "
        f"{len(failed_pings)} neighbour(s) cannot reach it, "
        f"heartbeat late on {len(read)} pool(s); its BMC is ready",
        tuple(answers),
    )


def _never(host: Host) -> bool:
    return False


class SuspicionFencer:
    """Gathers the witnesses of :func:`decide_suspicion` and fences a host that qualifies.

    Args:
        clock: the time source.
        directory: the host inventory (neighbours).
        gateway: asks agents (CheckHealth, PingTest, CheckOnHost).
        oobm: out-of-band management (readiness and the power fence).
        pools: which pools each host mounts; None: no heartbeat witness.
        timing: the heartbeat writers' timing (what "late" means).
        recorder: where every decision goes (kind ``suspicion``).
        timeout: limit on each agent command, in seconds.
        fence_timeout: limit on the whole power fence, in seconds.
        fail_on_one_pool: ``kvm.ha.fence.on.storage.heartbeat.failure``, passed
            on in the heartbeat checks.
        vm_witnesses: investigators that can see the host's VMs (``vm_witness``,
            the libvirt witness); asked last, one that sees them running
            stops the fence.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        directory: HostDirectory,
        gateway: AgentGateway,
        oobm: OutOfBandManager,
        pools: StoragePoolDirectory | None,
        timing: HeartbeatTiming,
        recorder: Recorder,
        timeout: float,
        fence_timeout: float,
        fail_on_one_pool: bool = False,
        vm_witnesses: Sequence[Investigator] = (),
    ) -> None:
        for key, value in (("timeout", timeout), ("fence_timeout", fence_timeout)):
            if not value > 0:
                raise ConfigurationError(
                    f"SuspicionFencer {key} must be positive, got {value!r}", key=key, value=value
                )
        self.clock = clock
        self.directory = directory
        self.gateway = gateway
        self.oobm = oobm
        self.pools = pools
        self.timing = timing
        self.recorder = recorder
        self.timeout = timeout
        self.fail_on_one_pool = fail_on_one_pool
        self.vm_witnesses = tuple(vm_witnesses)
        self.fencer = PowerFencer(clock, oobm=oobm, timeout=fence_timeout)
        self.stands_aside: Callable[[Host], bool] = _never
        """True for a host another authority recovers and fences (Host-HA owns it)."""
        self.guard: StormGuard | None = None
        """Storm protection: paces these fences per failure domain (docs/safety.md)."""
        self.shadow = False
        """Shadow mode: decide, record what would be fenced, fence nothing."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock,
        directory: HostDirectory,
        gateway: AgentGateway,
        oobm: OutOfBandManager,
        pools: StoragePoolDirectory | None,
        recorder: Recorder,
        vm_witnesses: Sequence[Investigator] = (),
    ) -> SuspicionFencer:
        """One with each command bounded by ``ping.interval`` (as the direct check), the
        fence by ``outofbandmanagement.action.timeout``, and the writers' timing of
        ``settings``."""
        return cls(
            clock=clock,
            directory=directory,
            gateway=gateway,
            oobm=oobm,
            pools=pools,
            timing=HeartbeatTiming.from_settings(settings),
            recorder=recorder,
            timeout=settings.ping_interval,
            fence_timeout=settings.outofbandmanagement_action_timeout,
            fail_on_one_pool=settings.kvm_ha_fence_on_storage_heartbeat_failure,
            vm_witnesses=vm_witnesses,
        )

    def applies(self, host: Host) -> bool:
        """Could ``host`` be fenced this way at all? It has out-of-band management, and
        nothing else owns its recovery (:attr:`stands_aside`: Host-HA)."""
        return (
            bool(self.oobm.driver_names)
            and self.oobm.configured(host)
            and not self.stands_aside(host)
        )

    def consider(self, host: Host) -> bool:
        """Fence ``host`` if it qualifies; True only once the fence was confirmed (power Off)."""
        if not self.applies(host):
            return False
        try:
            decision = self._decide(host)
        except ProbeError as exc:
            # The host directory (neighbours) did not answer: no judgement, the next recheck asks.
            log.warning("%s: fence on suspicion not judged: %s", host.id, exc)
            return False
        if not decision.qualifies:
            self._emit(host, decision, None)
            return False
        if self.guard is not None:
            admission = self.guard.admit(host)
            if not admission.allowed:
                self._emit(host, decision, None, held=admission.reason)
                return False
        if self.shadow:
            self._emit(host, decision, None, shadow=True)
            return False
        result = self.fencer.power_off(host)
        self._emit(host, decision, result)
        if result.outcome is FenceOutcome.FENCED:
            if self.guard is not None:
                self.guard.spend(host)
            log.warning("%s fenced on suspicion: %s", host.id, decision.reason)
            return True
        log.warning("%s: fence on suspicion not confirmed: %s", host.id, result.reason)
        return False

    def _decide(self, host: Host) -> SuspicionDecision:
        agent = self._agent(host)
        neighbours = list_neighbours(self.directory, host, hypervisors=(host.hypervisor,))
        pings: dict[str, bool | None] = {}
        if host.private_ip and agent is None:
            pings = {n.id: self._ping(n, host.private_ip) for n in neighbours}
        pool_ids = (
            [p.id for p in self.pools.pools_for_host(host) if p.supports_ha]
            if self.pools is not None
            else []
        )
        ages: dict[str, float] | None = None
        if pool_ids and agent is None and not any(pings.values()):
            ages = self._heartbeat_ages(host, neighbours, set(pool_ids))
        ready, answer = False, "not asked"
        seen: dict[str, str] = {}
        if agent is None and not any(pings.values()):
            seen = self._vms_seen(host)
            if not seen:
                readiness = self.oobm.check_readiness(host, timeout=self.timeout)
                ready, answer = readiness.ready, readiness.reason
        return decide_suspicion(
            host_id=host.id,
            status=host.status,
            agent=agent,
            pings=pings,
            heartbeat_pools=pool_ids,
            heartbeat_ages=ages,
            late=late_after(self.timing),
            fence_ready=ready,
            fence_answer=answer,
            vms_seen=seen,
        )

    def _vms_seen(self, host: Host) -> dict[str, str]:
        """The VM witnesses that see ``host``'s VMs running, with what they said."""
        seen: dict[str, str] = {}
        for witness in self.vm_witnesses:
            if not witness.supports(host):
                continue
            try:
                finding = witness.is_agent_alive(host)
            except Exception as exc:  # a plugin bug is no sign of life, and no reason to fence
                log.warning("%s: VM witness %s raised %r", host.id, witness.name, exc)
                continue
            if finding.verdict is Verdict.ALIVE and finding.witness is Witness.VM:
                seen[witness.name] = finding.reason
        return seen

    def _agent(self, host: Host) -> str | None:
        try:
            healthy = self.gateway.check_health(host, timeout=self.timeout)
        except ProbeError:
            return None
        return "healthy" if healthy else "unhealthy"

    def _ping(self, neighbour: Host, ip: str) -> bool | None:
        """True: ``neighbour`` reached ``ip``; False: its ping got no reply; None: not run."""
        try:
            return answer_reached(self.gateway.send(neighbour, ping_test(ip), timeout=self.timeout))
        except ProbeError:
            return None

    def _heartbeat_ages(
        self, host: Host, neighbours: Sequence[Host], pools: set[str]
    ) -> dict[str, float]:
        """The youngest heartbeat age per pool, as the Up neighbours read it."""
        command = check_on_host(host, fail_on_one_pool=self.fail_on_one_pool)
        ages: dict[str, float] = {}
        for neighbour in neighbours:
            try:
                answer = self.gateway.send(neighbour, command, timeout=self.timeout)
                report = HeartbeatReport.from_dict(answer.data)
            except (ProbeError, ConfigurationError):
                continue
            for reading in report.readings:
                readable = reading.verdict in (Verdict.ALIVE, Verdict.DEAD)
                if reading.pool_id in pools and readable and reading.age is not None:
                    ages[reading.pool_id] = min(reading.age, ages.get(reading.pool_id, reading.age))
        return ages

    def _emit(
        self,
        host: Host,
        decision: SuspicionDecision,
        result: FenceResult | None,
        *,
        held: str | None = None,
        shadow: bool = False,
    ) -> None:
        details: dict[str, Any] = {
            "qualifies": decision.qualifies,
            "witnesses": [w.to_dict() for w in decision.witnesses],
        }
        if held is not None:
            details["outcome"] = "held"
            details["held"] = held
        if shadow:
            details["outcome"] = "would fence"
            details["shadow"] = True
        if result is not None:
            details["fencer"] = result.fencer
            details["outcome"] = result.outcome.value
            details["fence"] = result.reason
            details["fence_evidence"] = dict(result.evidence)
            details["seconds"] = round(max(0.0, result.finished_at - result.started_at), 3)
        reason = decision.reason
        if result is not None and result.outcome is not FenceOutcome.FENCED:
            reason = f"{reason}; the fence was not confirmed: {result.reason}"
        if held is not None:
            reason = f"{reason}; held by storm protection: {held}"
        if shadow:
            reason = f"{reason}; shadow mode: would power it off, did nothing"
        self.recorder.emit("suspicion", host=host.id, reason=reason, **details)
