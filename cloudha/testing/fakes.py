"""In-memory fakes of every port, for unit tests and the simulator.

They behave like the real thing (optimistic updates really check the row)
and record what they were asked, so tests can assert on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from cloudha.clock import Clock
from cloudha.errors import ProbeConnectionError, ProbeError, ProbeTimeout
from cloudha.evidence import Evidence
from cloudha.fencing.base import BaseFenceBuilder, FenceOutcome, FenceResult
from cloudha.hostha.provider import BaseHAProvider, HAProviderConfig
from cloudha.investigators import BaseInvestigator, Finding, Verdict
from cloudha.model import Host, Pool, ReasonType, Vm
from cloudha.ports import (
    Alert,
    Answer,
    Command,
    DomainState,
    GuestNic,
    HypervisorReport,
    PingReport,
    ShellResult,
    StatusChange,
)
from cloudha.testing.clock import FakeClock

if TYPE_CHECKING:
    from cloudha.server import ManagementServer

__all__ = [
    "FakeAgentGateway",
    "FakeDirectAgentResource",
    "FakeHostPoller",
    "FakeHostShell",
    "FakeHypervisorProbe",
    "InMemoryHostDirectory",
    "InMemoryStoragePools",
    "InMemoryVmNetworks",
    "InMemoryVolumeDirectory",
    "RecordingAlertSink",
    "RecordingHAScheduler",
    "RecordingMetricsSink",
    "RecordingMigrationFailures",
    "ScheduledRestart",
    "ScriptedFencer",
    "ScriptedHAProvider",
    "ScriptedInvestigator",
    "ScriptedSuspicion",
]


class InMemoryHostDirectory:
    """A host table in a dict, with CloudStack's optimistic status update."""

    def __init__(self, hosts: Iterable[Host] = ()) -> None:
        self._hosts: dict[str, Host] = {}
        self._lock = threading.Lock()
        self.changes: list[StatusChange] = []
        for host in hosts:
            self.add(host)

    def add(self, host: Host) -> None:
        with self._lock:
            self._hosts[host.id] = host

    def remove(self, host_id: str) -> None:
        with self._lock:
            self._hosts.pop(host_id, None)

    def replace(self, host: Host) -> None:
        """Overwrite a row as an administrator would (bumps ``update_count``)."""
        with self._lock:
            self._hosts[host.id] = attrs.evolve(host, update_count=host.update_count + 1)

    def find_host(self, host_id: str) -> Host | None:
        with self._lock:
            return self._hosts.get(host_id)

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        with self._lock:
            hosts = list(self._hosts.values())
        return [
            h
            for h in hosts
            if (cluster is None or h.cluster == cluster)
            and (pod is None or h.pod == pod)
            and (zone is None or h.zone == zone)
            and (management_server_id is None or h.management_server_id == management_server_id)
        ]

    def update_status(self, change: StatusChange) -> bool:
        with self._lock:
            host = self._hosts.get(change.host_id)
            if (
                host is None
                or host.status is not change.from_status
                or host.update_count != change.expected_update_count
            ):
                return False
            updated = change.applied_to(host)
            self._hosts[host.id] = updated
            self.changes.append(change)
            return True


class FakeAgentGateway:
    """Agents as a dict of answers: ``healthy[host_id] = True`` answers CheckHealth.

    A host missing from ``healthy`` (or mapped to None) is unreachable and
    raises :class:`~cloudha.errors.ProbeConnectionError`. ``handler``, when
    set, answers :meth:`send`.
    """

    def __init__(
        self,
        healthy: dict[str, bool | None] | None = None,
        handler: Callable[[Host, Command], Answer] | None = None,
    ) -> None:
        self.healthy: dict[str, bool | None] = {} if healthy is None else healthy
        self.handler = handler
        self.calls: list[tuple[str, str]] = []

    def check_health(self, host: Host, *, timeout: float) -> bool:
        self.calls.append((host.id, "CheckHealth"))
        answer = self.healthy.get(host.id)
        if answer is None:
            raise ProbeConnectionError(f"agent of {host.id} is unreachable", host_id=host.id)
        return answer

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        self.calls.append((host.id, command.name))
        if self.handler is None:
            raise ProbeConnectionError(f"agent of {host.id} is unreachable", host_id=host.id)
        return self.handler(host, command)


class FakeHostShell:
    """Hosts' shells as a script (a :class:`~cloudha.ports.HostShell`).

    A host in :attr:`reachable` answers; any other raises
    :class:`~cloudha.errors.ProbeTimeout` (SSH timed out). It knows
    ``true``, ``false``, ``echo ARGS…`` and ``systemctl restart UNIT`` (exit
    0; :attr:`on_restart` is called with the host id and the unit, e.g. to
    reconnect its agent); another command exits 127. A host in
    :attr:`results` answers that result to every command instead. Every
    command run is kept in :attr:`runs` as ``(host_id, argv)``.
    """

    def __init__(
        self,
        reachable: Iterable[str] = (),
        *,
        on_restart: Callable[[str, str], object] | None = None,
    ) -> None:
        self.reachable: set[str] = set(reachable)
        self.results: dict[str, ShellResult] = {}
        self.on_restart = on_restart
        self.runs: list[tuple[str, tuple[str, ...]]] = []
        self._lock = threading.Lock()

    def run(self, host: Host, argv: Sequence[str], *, timeout: float) -> ShellResult:
        args = tuple(argv)
        with self._lock:
            self.runs.append((host.id, args))
            reachable = host.id in self.reachable
            scripted = self.results.get(host.id)
        if not reachable:
            raise ProbeTimeout(f"ssh to {host.id} timed out after {timeout:g} s", host_id=host.id)
        if scripted is not None:
            return scripted
        if args == ("true",):
            return ShellResult(0)
        if args == ("false",):
            return ShellResult(1)
        if args and args[0] == "echo":
            return ShellResult(0, " ".join(args[1:]) + "\n")
        if len(args) == 3 and args[:2] == ("systemctl", "restart"):
            if self.on_restart is not None:
                self.on_restart(host.id, args[2])
            return ShellResult(0)
        return ShellResult(127, "", f"sh: {args[0] if args else ''}: command not found")


class FakeDirectAgentResource:
    """A direct-agent resource whose answer is set per host (True: answers)."""

    def __init__(self, answering: dict[str, bool] | None = None) -> None:
        self.answering: dict[str, bool] = {} if answering is None else answering
        self.calls: list[str] = []

    def current_status(self, host: Host) -> PingReport | None:
        self.calls.append(host.id)
        return PingReport(host.id) if self.answering.get(host.id, False) else None


class FakeHostPoller:
    """A :class:`~cloudha.ports.HostPoller` whose answer is set per host.

    ``answering[host_id]`` True answers (a :class:`~cloudha.ports.PingReport`
    with ``vms[host_id]`` when set, else ``vms=None``); False or missing
    raises a :class:`~cloudha.errors.ProbeConnectionError` (or returns None
    with ``fail_with_none``). ``took[host_id]`` seconds are spent on the
    ``clock`` (a FakeClock is advanced) before answering, to play a slow host.
    Every call is kept in :attr:`calls` (thread-safe).
    """

    def __init__(
        self,
        answering: dict[str, bool] | None = None,
        *,
        vms: dict[str, frozenset[str]] | None = None,
        took: dict[str, float] | None = None,
        clock: FakeClock | None = None,
        fail_with_none: bool = False,
    ) -> None:
        self.answering: dict[str, bool] = {} if answering is None else answering
        self.vms: dict[str, frozenset[str]] = {} if vms is None else vms
        self.took: dict[str, float] = {} if took is None else took
        self.clock = clock
        self.fail_with_none = fail_with_none
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def poll(self, host: Host, *, timeout: float) -> PingReport | None:
        with self._lock:
            self.calls.append(host.id)
        spent = self.took.get(host.id, 0.0)
        if spent and self.clock is not None:
            self.clock.advance(spent)
        if not self.answering.get(host.id, False):
            if self.fail_with_none:
                return None
            raise ProbeConnectionError(f"{host.id} does not answer", host_id=host.id)
        return PingReport(host.id, vms=self.vms.get(host.id))


class RecordingAlertSink:
    """Keeps every alert it is sent."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def subjects(self) -> list[str]:
        return [a.subject for a in self.alerts]


class RecordingMigrationFailures:
    """A :class:`~cloudha.ports.MigrationFailureSink` keeping ``(host_id, vm_id)`` per call."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    def migrate_away_failed(self, host_id: str, vm: Vm) -> None:
        self.failures.append((host_id, vm.id))


@attrs.frozen
class ScheduledRestart:
    host_id: str
    investigate: bool
    reason: ReasonType


class RecordingHAScheduler:
    """Records hosts handed over for VM restarts."""

    def __init__(self) -> None:
        self.scheduled: list[ScheduledRestart] = []

    def schedule_restart_for_vms_on_host(
        self, host: Host, *, investigate: bool, reason: ReasonType
    ) -> None:
        self.scheduled.append(ScheduledRestart(host.id, investigate, reason))


class ScriptedInvestigator(BaseInvestigator):
    """An investigator whose findings are set per host by the test.

    ``script[host_id]`` is a Verdict (ALIVE means reachable unless
    ``unreachable`` lists the host). Hosts not in the script get UNKNOWN.
    A host in ``nothing_runs`` gets findings that show no VM running
    (:attr:`~cloudha.investigators.Finding.no_vm_runs`: a power read Off, an
    idle hypervisor).
    """

    def __init__(
        self,
        clock: Clock,
        name: str = "Scripted",
        *,
        script: dict[str, Verdict] | None = None,
        unreachable: Iterable[str] = (),
        supported: Callable[[Host], bool] | None = None,
    ) -> None:
        super().__init__(clock)
        self.name = name
        self.script: dict[str, Verdict] = {} if script is None else script
        self.unreachable = set(unreachable)
        self._supported = supported
        self.asked: list[str] = []
        self.nothing_runs: set[str] = set()

    def supports(self, host: Host) -> bool:
        return True if self._supported is None else self._supported(host)

    def _agent_alive(self, host: Host) -> Finding:
        self.asked.append(host.id)
        verdict = self.script.get(host.id, Verdict.UNKNOWN)
        reachable = None
        if verdict is Verdict.ALIVE:
            reachable = host.id not in self.unreachable
        return self.finding(
            verdict,
            f"scripted {verdict}",
            reachable=reachable,
            no_vm_runs=host.id in self.nothing_runs,
        )

    def _vm_alive(self, vm: Vm, host: Host) -> Finding:
        return self.finding(self.script.get(vm.id, Verdict.UNKNOWN), "scripted")


class InMemoryStoragePools:
    """Pools by cluster (and zone-wide pools by zone), as a StoragePoolDirectory."""

    def __init__(self, pools: Iterable[Pool] = ()) -> None:
        self.pools: list[Pool] = list(pools)

    def pools_for_host(self, host: Host) -> Sequence[Pool]:
        cluster_wide = [
            p for p in self.pools if p.cluster is not None and p.cluster == host.cluster
        ]
        zone_wide = [p for p in self.pools if p.cluster is None and p.zone == host.zone]
        return cluster_wide + zone_wide


class InMemoryVmNetworks:
    """Guest NICs and management addresses per VM id, as a VmNetworkDirectory."""

    def __init__(
        self,
        guest: dict[str, Sequence[GuestNic]] | None = None,
        management: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.guest: dict[str, Sequence[GuestNic]] = {} if guest is None else guest
        self.management: dict[str, Sequence[str]] = {} if management is None else management

    def guest_nics(self, vm: Vm) -> Sequence[GuestNic]:
        return list(self.guest.get(vm.id, ()))

    def management_ips(self, vm: Vm) -> Sequence[str]:
        return list(self.management.get(vm.id, ()))


class FakeHypervisorProbe:
    """A HypervisorProbe answering from dicts.

    ``answering[host_id]`` True answers probes; False or missing raises
    ``error`` (a ProbeConnectionError by default). ``domains[(host_id, name)]``
    is a DomainState; unknown domains on an answering host are MISSING.
    """

    def __init__(
        self,
        answering: dict[str, bool] | None = None,
        domains: dict[tuple[str, str], DomainState] | None = None,
        error: Callable[[Host], ProbeError] | None = None,
    ) -> None:
        self.answering: dict[str, bool] = {} if answering is None else answering
        self.domains: dict[tuple[str, str], DomainState] = {} if domains is None else domains
        self._error = error
        self.calls: list[tuple[str, str]] = []

    def _require(self, host: Host) -> None:
        if not self.answering.get(host.id, False):
            if self._error is not None:
                raise self._error(host)
            raise ProbeConnectionError(f"hypervisor of {host.id} does not answer", host_id=host.id)

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        self.calls.append((host.id, "probe"))
        self._require(host)
        running = frozenset(
            name
            for (h, name), st in self.domains.items()
            if h == host.id and st is DomainState.RUNNING
        )
        return HypervisorReport(
            uri=f"fake://{host.id}",
            hostname=host.name,
            running_domains=len(running),
            domains=running,
        )

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        self.calls.append((host.id, domain))
        self._require(host)
        return self.domains.get((host.id, domain), DomainState.MISSING)


class ScriptedFencer(BaseFenceBuilder):
    """A fencer whose outcome is set per host by the test.

    ``script[host_id]`` is a :class:`~cloudha.fencing.FenceOutcome`; hosts
    not in the script get ``default``. Every call is kept in :attr:`calls`
    as ``(vm_id, host_id)``.
    """

    def __init__(
        self,
        clock: Clock,
        name: str = "ScriptedFencer",
        *,
        script: dict[str, FenceOutcome] | None = None,
        default: FenceOutcome = FenceOutcome.NOT_APPLICABLE,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(clock, timeout=timeout)
        self.name = name
        self.script: dict[str, FenceOutcome] = {} if script is None else script
        self.default = default
        self.calls: list[tuple[str, str]] = []

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        self.calls.append((vm.id, host.id))
        outcome = self.script.get(host.id, self.default)
        return self.result(outcome, f"scripted {outcome}")


class ScriptedSuspicion:
    """A :class:`~cloudha.ports.SuspicionCheck` answering from a script.

    ``fence[host_id]`` True makes :meth:`consider` report a confirmed fence
    for that host (hosts not in the script: False); a host in ``raises``
    makes it raise. Every host considered is kept in :attr:`considered`.
    """

    def __init__(self, fence: dict[str, bool] | None = None) -> None:
        self.fence: dict[str, bool] = {} if fence is None else fence
        self.raises: set[str] = set()
        self.considered: list[str] = []

    def consider(self, host: Host) -> bool:
        self.considered.append(host.id)
        if host.id in self.raises:
            raise RuntimeError(f"scripted failure for {host.id}")
        return self.fence.get(host.id, False)


class InMemoryVolumeDirectory:
    """VM disks by host id, as a :class:`~cloudha.ports.VolumeDirectory`.

    ``volumes[host_id][pool_id]`` lists the disk paths (relative to the pool's
    mount point) of the VMs on that host; unknown hosts have none.
    """

    def __init__(self, volumes: dict[str, dict[str, Sequence[str]]] | None = None) -> None:
        self.volumes: dict[str, dict[str, Sequence[str]]] = {} if volumes is None else volumes

    def volumes_on_host(self, host: Host) -> Mapping[str, Sequence[str]]:
        return {pool: list(paths) for pool, paths in self.volumes.get(host.id, {}).items()}


class ScriptedHAProvider(BaseHAProvider):
    """A Host-HA provider answering from a script (a :class:`~cloudha.ports.HAProvider`).

    Every answer is per host id, with a default for hosts not listed:
    ``eligible`` (True), ``healthy`` (True), ``activity`` (a list consumed one
    answer per check, the last one repeated; default ``[True]``),
    ``recovers`` (False), ``fences`` (False), ``proven`` (False). A
    ``(method, host_id)`` pair in ``raises`` makes that call raise
    ``RuntimeError``, or the exception given as its value. Every call is kept
    in :attr:`calls` as ``(method, host_id)``. ``on_call``, when set, runs
    before each answer (a test moves its clock there, or blocks).
    """

    name = "scriptedhaprovider"

    def __init__(self, config: HAProviderConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config)
        if name is not None:
            self.name = name
        self.eligible: dict[str, bool] = {}
        self.healthy: dict[str, bool] = {}
        self.activity: dict[str, list[bool | None]] = {}
        self.recovers: dict[str, bool] = {}
        self.fences: dict[str, bool] = {}
        self.proven: dict[str, bool] = {}
        self.raises: dict[tuple[str, str], BaseException | None] = {}
        self.calls: list[tuple[str, str]] = []
        self.on_call: Callable[[str, Host], None] | None = None
        self._lock = threading.Lock()

    def _called(self, method: str, host: Host) -> None:
        with self._lock:
            self.calls.append((method, host.id))
        if self.on_call is not None:
            self.on_call(method, host)
        if (method, host.id) in self.raises:
            raise self.raises[(method, host.id)] or RuntimeError(f"scripted {method} failure")

    def count(self, method: str, host_id: str | None = None) -> int:
        """How many times ``method`` was called (for ``host_id``, when given)."""
        with self._lock:
            return sum(1 for m, h in self.calls if m == method and host_id in (None, h))

    def supports(self, host: Host) -> bool:
        return True

    def is_eligible(self, host: Host) -> bool:
        self._called("is_eligible", host)
        return self.eligible.get(host.id, True)

    def is_healthy(self, host: Host) -> bool:
        self._called("is_healthy", host)
        return self.healthy.get(host.id, True)

    def has_activity(self, host: Host, suspect_since: float) -> bool | None:
        self._called("has_activity", host)
        answers = self.activity.get(host.id, [True])
        with self._lock:
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def recover(self, host: Host) -> bool:
        self._called("recover", host)
        return self.recovers.get(host.id, False)

    def fence(self, host: Host) -> bool:
        self._called("fence", host)
        return self.fences.get(host.id, False)

    def proves_dead(self, host: Host) -> bool:
        self._called("proves_dead", host)
        return self.proven.get(host.id, False)


class RecordingMetricsSink:
    """A :class:`~cloudha.ports.MetricsSink` that keeps every call (thread-safe).

    ``ManagementServer(..., metrics=RecordingMetricsSink())`` shows what a
    metrics adapter would be given: :attr:`records` (every evidence record, in
    order) and :attr:`servers` (every server that called :meth:`watch`).
    """

    def __init__(self) -> None:
        self.records: list[Evidence] = []
        self.servers: list[ManagementServer] = []
        self._lock = threading.Lock()

    def record(self, evidence: Evidence) -> None:
        with self._lock:
            self.records.append(evidence)

    def watch(self, server: ManagementServer) -> None:
        with self._lock:
            self.servers.append(server)

    @property
    def watched(self) -> ManagementServer | None:
        """The server watched last (None before any)."""
        with self._lock:
            return self.servers[-1] if self.servers else None

    def kinds(self) -> list[str]:
        """The kinds of the records, in order."""
        with self._lock:
            return [r.kind for r in self.records]
