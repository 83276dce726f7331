"""The management server: one assembly of everything on the management-server side.

:class:`ManagementServer` takes the settings, a clock, a thread factory and
the ports the embedding orchestrator implements, and builds and wires the
rest: the ping map, :class:`~cloudha.detection.AgentManager` and its
:class:`~cloudha.detection.MonitorTask`, the investigator chain, the fence
chain, out-of-band management and its readiness sync, and the HA work queue
(:class:`~cloudha.ha.manager.HighAvailabilityManager`) with its workers.

Every loop is data (:meth:`ManagementServer.loops`): :meth:`~ManagementServer.start`
runs each in a :class:`~cloudha.runtime.Pump` thread on the injected clock,
and the simulator drives the very same loops on virtual time.

:meth:`~ManagementServer.start` first recovers from durable state alone
(the host directory and the work queue), so a crash, a restart or a
takeover never strands a host or a VM:

* HA works this server held are released and due works are investigated again;
* hosts this server owned and that were Up are marked Disconnected, UNKNOWN
  for a doubled grace (docs/detection.md); hosts left in Alert, Disconnected
  or Down are re-adopted
  (:meth:`cloudha.detection.AgentManager.recover`);
* a Down host with an HA VM that has no pending HA work is handed over to
  the HA scheduler again.

When recovery fails (the directory does not answer), the monitor loop tries
it again on every round until it succeeds.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloudha.clock import Clock
from cloudha.cluster import ClusterMember
from cloudha.detection import AgentManager, MonitorTask, PingMap, PingTask
from cloudha.detection.escalation import EscalationLadder
from cloudha.detection.freshness import Freshness
from cloudha.detection.poller import AgentPoller
from cloudha.detection.sightings import Sightings
from cloudha.detection.storm import StormGuard
from cloudha.detection.suspicion import SuspicionFencer
from cloudha.errors import ConfigurationError, LifecycleError
from cloudha.evidence import EvidenceLog, EvidenceSink, Recorder, TeeSink
from cloudha.fencing.chain import FenceChain, FenceRunner
from cloudha.fencing.registry import FencerContext, build_fence_chain
from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.store import Work, WorkStore, create_schema
from cloudha.hostha.bridge import HostHAInvestigator
from cloudha.hostha.config import SqlHAConfigStore
from cloudha.hostha.manager import POLL_INTERVAL as HOST_HA_POLL_INTERVAL
from cloudha.hostha.manager import HAExecutors, HAManager
from cloudha.hostha.provider import KVMHAProvider, ShadowHAProvider
from cloudha.investigators import InvestigatorChain, InvestigatorContext, build_chain
from cloudha.investigators.base import HOST_HA_BRIDGE
from cloudha.model import Host, Vm, VmState
from cloudha.oobm.manager import (
    OobmConfigSource,
    OobmSyncTask,
    OutOfBandManager,
    StaticOobmConfigs,
)
from cloudha.oobm.power import PowerDriver, PowerState
from cloudha.ports import (
    AgentGateway,
    AlertSink,
    DirectAgentResource,
    HAProvider,
    HostDirectory,
    HostPoller,
    HostShell,
    HypervisorControl,
    HypervisorProbe,
    MaintenanceChecker,
    MetricsSink,
    MigrationFailureSink,
    PingReport,
    ServerRegistry,
    StatusChange,
    StoragePoolDirectory,
    TaskExecutor,
    VmNetworkDirectory,
    VmOrchestrator,
    VolumeDirectory,
)
from cloudha.runtime import Loop, Pump, ThreadFactory
from cloudha.settings import Settings

__all__ = ["HostVmSync", "ManagementServer", "WatchedDirectory", "validate_port"]

_R = TypeVar("_R")

log = logging.getLogger(__name__)

_VM_SYNC_STATES = (VmState.RUNNING, VmState.STARTING, VmState.STOPPING, VmState.UNKNOWN)


def _protocol_methods(protocol: type) -> list[str]:
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (Protocol, Generic, object):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and callable(value):
                names.add(name)
    return sorted(names)


def validate_port(name: str, port: object, protocol: type) -> None:
    """Raise :class:`ConfigurationError` unless ``port`` has every method of ``protocol``.

    The message names the port and the first missing (or non-callable) method.
    """
    for method in _protocol_methods(protocol):
        found = getattr(port, method, None)
        if found is None:
            raise ConfigurationError(
                f"port {name} ({type(port).__name__}) has no method {method}() "
                f"of {protocol.__name__}",
                key=name,
                value=method,
            )
        if not callable(found):
            raise ConfigurationError(
                f"port {name} ({type(port).__name__}): {method} is not callable "
                f"({protocol.__name__} needs a method)",
                key=name,
                value=method,
            )


class HostVmSync:
    """VM sync (spec §3 ``ha.vm.restart.hostup``; a :class:`~cloudha.ports.VmSync`).

    On reconnect (:meth:`host_connected`): a VM the orchestrator believes on
    the host (Running, Starting, Stopping or Unknown) that the host does not
    report is stopped (force: it does not run, the row is cleaned up) and,
    when HA-enabled, given an investigated HA restart unless HA work owns it
    already.

    On a ping report (:meth:`host_reported`, a directly managed host that
    came back without a reconnect, e.g. rebooted within ``alert.wait``): the
    same, for a VM missing from every report of the host for longer than
    ``grace`` seconds (CloudStack's power-report-missing grace): a VM being
    started may be missing from a report taken before it ran, never from
    every report over the grace. Such a VM crashed alone on a host that
    stayed Up and connected: its restart tries that host first
    (``cloudha.vm.restart.in.place``); a VM lost with a host that went away
    and came back restarts wherever the planner puts it.
    """

    def __init__(
        self,
        orchestrator: VmOrchestrator,
        ha: HighAvailabilityManager,
        recorder: Recorder,
        clock: Clock,
        grace: float,
    ) -> None:
        self.orchestrator = orchestrator
        self.ha = ha
        self.recorder = recorder
        self.clock = clock
        self.grace = grace
        self._missing: dict[str, dict[str, float]] = {}  # host -> vm -> first missing at
        self._lock = threading.Lock()
        self.shadow = False
        """Shadow mode: a VM to sync is recorded (``shadow``), not stopped or restarted."""

    def host_connected(self, host: Host, running: Collection[str]) -> None:
        with self._lock:
            self._missing.pop(host.id, None)
        for vm in self._unreported(host.id, running):
            self._stop(host.id, vm, f"{host.id} reconnected without {vm.id}", in_place=False)

    def host_reported(self, host_id: str, running: Collection[str]) -> None:
        now = self.clock.monotonic()
        unreported = self._unreported(host_id, running)
        due: list[Vm] = []
        with self._lock:
            previous = self._missing.get(host_id, {})
            missing = {vm.id: previous.get(vm.id, now) for vm in unreported}
            for vm in unreported:
                if now - missing[vm.id] > self.grace:
                    due.append(vm)
                    del missing[vm.id]
            if missing:
                self._missing[host_id] = missing
            else:
                self._missing.pop(host_id, None)
        for vm in due:
            self._stop(
                host_id,
                vm,
                f"{host_id} has not reported {vm.id} for more than {self.grace:g}s",
                in_place=True,
            )

    def _unreported(self, host_id: str, running: Collection[str]) -> list[Vm]:
        return [
            vm
            for vm in self.orchestrator.list_vms_on_host(host_id)
            if vm.id not in running
            and vm.state in _VM_SYNC_STATES
            and not self.ha.ha_work_owns_vm(vm.id, host_id)  # the HA path owns it already
        ]

    def _stop(self, host_id: str, vm: Vm, why: str, *, in_place: bool) -> None:
        if self.shadow:
            self.recorder.emit(
                "vm_sync",
                host=host_id,
                vm=vm.id,
                reason=f"{why}: shadow mode: would mark it Stopped (and restart it), did nothing",
                restart=False,
                shadow=True,
            )
            return
        self.orchestrator.advance_stop(vm, force=True)
        stopped = self.orchestrator.find_vm(vm.id)
        work = (
            None
            if stopped is None
            else self.ha.on_vm_powered_off(stopped, up_host_id=host_id, in_place=in_place)
        )
        restart = work is not None
        self.recorder.emit(
            "vm_sync",
            host=host_id,
            vm=vm.id,
            reason=f"{why}: marked Stopped" + ("; HA restart scheduled" if restart else ""),
            restart=restart,
        )


class WatchedDirectory:
    """The host directory, with every answer and failure told to ``note`` (freshness).

    It is the :class:`~cloudha.ports.HostDirectory` every part of the server
    uses, so the desired state's freshness needs no extra query.
    """

    def __init__(self, directory: HostDirectory, note: Callable[[Exception | None], None]) -> None:
        self.directory = directory
        self.note = note

    def _call(self, call: Callable[[], _R]) -> _R:
        try:
            result = call()
        except Exception as exc:
            self.note(exc)
            raise
        self.note(None)
        return result

    def find_host(self, host_id: str) -> Host | None:
        return self._call(lambda: self.directory.find_host(host_id))

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        return self._call(
            lambda: self.directory.list_hosts(
                cluster=cluster, pod=pod, zone=zone, management_server_id=management_server_id
            )
        )

    def update_status(self, change: StatusChange) -> bool:
        return self._call(lambda: self.directory.update_status(change))

    def __repr__(self) -> str:
        return f"WatchedDirectory({self.directory!r})"


class DirectPings:
    """One loop over the ``PingTask`` of every directly managed host the server owns.

    Each round re-reads the owned hosts from the directory (a host added or
    taken over later is pinged too, one removed is dropped), then runs every
    task that is due. A directory that does not answer keeps the tasks it had:
    the hosts already known are still pinged, and the list is read again next
    round, so a server started during an outage starts pinging once it ends.
    """

    def __init__(self, server: ManagementServer) -> None:
        self.server = server
        self.tasks: dict[str, PingTask] = {}
        self.due: dict[str, float] = {}

    def _refresh(self, now: float) -> None:
        server = self.server
        resources = server.direct_resources
        if resources is None:
            return
        try:
            hosts = [h for h in server._owned_hosts() if h.hypervisor.has_direct_agent]
        except Exception as exc:
            log.warning(
                "direct agents: host directory failed, keeping %d hosts: %s", len(self.tasks), exc
            )
            return
        wanted = {h.id: h for h in hosts}
        for host_id in set(self.tasks) - set(wanted):
            del self.tasks[host_id]
            del self.due[host_id]
        for host_id, host in sorted(wanted.items()):
            if host_id not in self.tasks:
                self.tasks[host_id] = PingTask(
                    host,
                    resources,
                    server._direct_ping(host_id),
                    settings=server.settings,
                    clock=server.clock,
                )
                self.due[host_id] = now

    def tick(self) -> float:
        """Run the due ping tasks; seconds until the next one is due (one ``ping.interval``
        when there is none)."""
        clock = self.server.clock
        self._refresh(clock.monotonic())
        for host_id in sorted(self.tasks):
            now = clock.monotonic()
            if self.due[host_id] <= now:
                self.due[host_id] = now + self.tasks[host_id].tick()
        now = clock.monotonic()
        interval = self.server.settings.ping_interval
        return max(0.0, min(min(self.due.values(), default=now + interval), now + interval) - now)


class ManagementServer:
    """One management server: detection, investigation, fencing, OOBM and the HA queue.

    Args:
        settings: every setting (CloudStack key names).
        clock: the only source of time (``SystemClock()`` in production).
        directory: the host inventory (:class:`~cloudha.ports.HostDirectory`).
        gateway: sends commands to agents (:class:`~cloudha.ports.AgentGateway`).
        orchestrator: the cloud's VM manager (:class:`~cloudha.ports.VmOrchestrator`).
        alerts: operator alerts (:class:`~cloudha.ports.AlertSink`).
        engine: the SQL database of the HA work queue; its tables are
            created when missing. Give ``engine`` or ``store``.
        store: the HA work queue itself, instead of ``engine``.
        evidence: where decisions are recorded (an :class:`~cloudha.evidence.EvidenceLog`
            by default, kept as :attr:`evidence`); a :class:`~cloudha.evidence.TeeSink`
            of a log and a :class:`~cloudha.evidence_store.SqlEvidenceStore` keeps
            both (docs/evidence.md).
        server_id: this server's id (owner of hosts and claims).
        thread_factory: makes every thread (``threading.Thread`` by default).
        oobm_drivers: power drivers (IPMI, Redfish ...) for power fencing.
        oobm_configs: each host's BMC address and credentials.
        pools: which shared pools each host mounts (storage heartbeat).
        hypervisor: a direct hypervisor connection (libvirt); when it can
            also destroy domains it is the libvirt fencer's control too.
        networks: VM addresses (ping investigators).
        maintenance: the resource manager's maintenance step.
        migration_failures: told when a migration off a host finds no room.
        direct_resources: status probes of directly managed hosts (one
            ``PingTask`` loop per such host in the directory at start).
        zone_settings: per-zone settings overrides for the HA manager.
        fence_runner: runs each fencer call with its time limit (a thread
            by default; the simulator runs them inline).
        discover_plugins: load investigator and fencer entry-point plugins.
        investigators: the investigator chain to use instead of the one built
            from the ports (:func:`cloudha.investigators.build_chain`).
        fence_chain: the fence chain to use instead of the one built from the
            ports (:func:`cloudha.fencing.build_fence_chain`).
        volumes: where the disks of each host's VMs live (Host-HA's activity
            check); with ``pools`` and a power driver it enables the built-in
            KVM Host-HA provider.
        ha_config: Host-HA's ``ha_config`` table; by default on ``engine``
            (no Host-HA when only ``store`` is given).
        ha_providers: the Host-HA providers; None: the built-in KVM provider
            when the ports allow it (``pools``, ``volumes``, a power driver).
        host_ha_executors: where Host-HA's checks, recoveries and fences run;
            by default thread pools sized by ``ha.max.*``.
        shell: runs commands on hosts over SSH (:class:`~cloudha.ports.HostShell`,
            e.g. :class:`cloudha.transport.shell.SSHHostShell`): the escalation
            ladder's ``agent.restart``; None: that level is skipped.
        poller: status probes of the hosts whose agents do not ping by
            themselves (:class:`~cloudha.ports.HostPoller`; a fleet without
            agents, ``cloudha run``): every ``ping.interval`` each owned host
            without a direct agent is probed and each answer fed in as its
            agent's ping (:class:`~cloudha.detection.poller.AgentPoller`, the
            ``AgentPoller`` loop); None: those hosts' agents ping by themselves.
        poll_executor: where the poller's probes run; by default
            ``cloudha.poll.workers`` threads (the simulator runs them inline).
        work_seconds: 0 (production): a worker claims and processes a work in
            one tick. Above 0 (the simulator): a worker's tick claims, it
            holds the claim that long, and its next tick processes the work,
            so a server that dies meanwhile dies holding the claim.
        registry: the group's :class:`~cloudha.ports.ServerRegistry` (e.g.
            :class:`cloudha.cluster.SqlServerRegistry` on the shared database):
            this server is one of several, each host owned by exactly one of
            them (the ``Cluster`` loop, :class:`~cloudha.cluster.ClusterMember`;
            docs/cluster.md). None: it runs alone.
        address: where operators reach this server (kept in the registry).
        metrics: where metrics are counted (:class:`~cloudha.ports.MetricsSink`,
            e.g. :class:`cloudha.metrics.Metrics`): every evidence record goes
            to it as well as to ``evidence``, and it is given this server to
            watch (:meth:`~cloudha.ports.MetricsSink.watch`; docs/metrics.md).

    A port missing a method of its Protocol raises :class:`ConfigurationError`
    naming the port and the method.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        directory: HostDirectory,
        gateway: AgentGateway,
        orchestrator: VmOrchestrator,
        alerts: AlertSink,
        engine: Engine | None = None,
        store: WorkStore | None = None,
        evidence: EvidenceSink | None = None,
        server_id: str = "ms1",
        thread_factory: ThreadFactory = threading.Thread,
        oobm_drivers: Iterable[PowerDriver] = (),
        oobm_configs: OobmConfigSource | None = None,
        pools: StoragePoolDirectory | None = None,
        hypervisor: HypervisorProbe | None = None,
        networks: VmNetworkDirectory | None = None,
        maintenance: MaintenanceChecker | None = None,
        migration_failures: MigrationFailureSink | None = None,
        direct_resources: DirectAgentResource | None = None,
        zone_settings: Mapping[str, Settings] | None = None,
        fence_runner: FenceRunner | None = None,
        discover_plugins: bool = True,
        investigators: InvestigatorChain | None = None,
        fence_chain: FenceChain | None = None,
        volumes: VolumeDirectory | None = None,
        ha_config: SqlHAConfigStore | None = None,
        ha_providers: Iterable[HAProvider] | None = None,
        host_ha_executors: HAExecutors | None = None,
        work_seconds: float = 0.0,
        shell: HostShell | None = None,
        poller: HostPoller | None = None,
        poll_executor: TaskExecutor | None = None,
        metrics: MetricsSink | None = None,
        registry: ServerRegistry | None = None,
        address: str = "",
    ) -> None:
        if not isinstance(settings, Settings):
            raise ConfigurationError("settings must be a cloudha.Settings", key="settings")
        if not isinstance(server_id, str) or not server_id:
            raise ConfigurationError("server_id must be a non-empty string", key="server_id")
        ports: list[tuple[str, object, type]] = [
            ("clock", clock, Clock),
            ("directory", directory, HostDirectory),
            ("gateway", gateway, AgentGateway),
            ("orchestrator", orchestrator, VmOrchestrator),
            ("alerts", alerts, AlertSink),
        ]
        optional: list[tuple[str, object | None, type]] = [
            ("evidence", evidence, EvidenceSink),
            ("pools", pools, StoragePoolDirectory),
            ("hypervisor", hypervisor, HypervisorProbe),
            ("networks", networks, VmNetworkDirectory),
            ("maintenance", maintenance, MaintenanceChecker),
            ("migration_failures", migration_failures, MigrationFailureSink),
            ("direct_resources", direct_resources, DirectAgentResource),
            ("volumes", volumes, VolumeDirectory),
            ("shell", shell, HostShell),
            ("poller", poller, HostPoller),
            ("metrics", metrics, MetricsSink),
            ("registry", registry, ServerRegistry),
        ]
        for name, port, protocol in ports:
            validate_port(name, port, protocol)
        for name, maybe, protocol in optional:
            if maybe is not None:
                validate_port(name, maybe, protocol)
        if not callable(thread_factory):
            raise ConfigurationError("thread_factory must be callable", key="thread_factory")
        if (engine is None) == (store is None):
            raise ConfigurationError(
                "give the HA work queue as engine (an SQLAlchemy engine) or store, not both",
                key="engine",
            )
        if store is None:
            assert engine is not None
            store = WorkStore(engine, clock)
            create_schema(engine)
        self.server_id = server_id
        self.settings = settings
        self.clock = clock
        # Every part of the server reads the directory through this: its answers
        # keep the desired state's freshness (self.freshness, made below).
        self.directory = directory
        """The host directory the embedder gave."""
        self.watched_directory = WatchedDirectory(
            directory, lambda error: self.freshness.note_directory(error)
        )
        """:attr:`directory` as every part of the server reads it (its answers keep the
        desired state's freshness)."""
        directory = self.watched_directory
        self.gateway = gateway
        self.orchestrator = orchestrator
        self.alerts = alerts
        self.store = store
        self.evidence: EvidenceSink = evidence if evidence is not None else EvidenceLog()
        """Where decisions are recorded (the ``evidence`` given, or an EvidenceLog)."""
        self.metrics = metrics
        """The metrics sink given (None: no metrics)."""
        # Every part of the server records through this: the evidence, and the metrics.
        sink: EvidenceSink = self.evidence if metrics is None else TeeSink(self.evidence, metrics)
        self.direct_resources = direct_resources
        self.thread_factory = thread_factory
        self.recorder = Recorder(sink, clock, server_id)
        self.ping_map = PingMap(clock)
        self.sightings = Sightings(clock)
        """When this server last heard from each agent (the heartbeat's lease rule)."""
        control = hypervisor if isinstance(hypervisor, HypervisorControl) else None
        self.oobm_configs: OobmConfigSource = (
            oobm_configs if oobm_configs is not None else StaticOobmConfigs()
        )
        self.oobm = OutOfBandManager(
            clock=clock,
            configs=self.oobm_configs,
            drivers=list(oobm_drivers),
            settings=settings,
            alerts=alerts,
            recorder=self.recorder,
        )
        self.oobm_sync = OobmSyncTask(self.oobm, self._owned_hosts)
        self.freshness = Freshness(
            settings,
            clock,
            self.ping_map,
            self.recorder,
            alerts,
            powered_off=lambda host_id: self.oobm.power_state(host_id) is PowerState.OFF,
            probe_directory=self._probe_directory,
        )
        """Whether this server's own view is fresh enough to judge others (hm9000)."""
        if investigators is not None:
            self.investigators: InvestigatorChain = investigators
        else:
            self.investigators = build_chain(
                InvestigatorContext(
                    clock=clock,
                    directory=directory,
                    gateway=gateway,
                    settings=settings,
                    pools=pools,
                    networks=networks,
                    hypervisor_probe=hypervisor,
                    oobm=self.oobm,
                    sightings=self.sightings,
                ),
                discover=discover_plugins,
            )
        if fence_chain is not None:
            self.fence_chain: FenceChain = fence_chain
        else:
            self.fence_chain = build_fence_chain(
                FencerContext(
                    clock=clock,
                    directory=directory,
                    gateway=gateway,
                    settings=settings,
                    pools=pools,
                    oobm=self.oobm,
                    hypervisor_control=control,
                    alerts=alerts,
                    recorder=self.recorder,
                    runner=fence_runner,
                    sightings=self.sightings,
                ),
                discover=discover_plugins,
            )
        if ha_config is None and engine is not None:
            ha_config = SqlHAConfigStore(engine, clock)
        self.host_ha: HAManager | None = None
        """Host-HA (spec §7): None without an ``ha_config`` table or any provider."""
        providers: list[HAProvider]
        if ha_providers is not None:
            providers = list(ha_providers)
        elif pools is not None and volumes is not None and self.oobm.driver_names:
            providers = [
                KVMHAProvider(
                    clock,
                    directory=directory,
                    gateway=gateway,
                    pools=pools,
                    volumes=volumes,
                    oobm=self.oobm,
                    settings=settings,
                )
            ]
        else:
            providers = []
        if settings.cloudha_shadow:
            providers = [ShadowHAProvider(p, self.recorder) for p in providers]
        if ha_config is not None and providers:
            self.host_ha = HAManager(
                server_id=server_id,
                store=ha_config,
                directory=directory,
                providers=providers,
                clock=clock,
                alerts=alerts,
                recorder=self.recorder,
                executors=host_ha_executors
                if host_ha_executors is not None
                else HAExecutors.bounded(settings, thread_factory=thread_factory),
                on_down=self._host_ha_down,
            )
            if HOST_HA_BRIDGE not in settings.ha_investigators_exclude:
                # Host-HA speaks first for the hosts it owns (and only for those).
                existing = self.investigators
                self.investigators = InvestigatorChain(
                    [HostHAInvestigator(self.host_ha), *existing.investigators],
                    order=[HOST_HA_BRIDGE, *existing.names],
                )
        self.ha = HighAvailabilityManager(
            server_id=server_id,
            store=store,
            orchestrator=orchestrator,
            directory=directory,
            investigators=self.investigators,
            fence_chain=self.fence_chain,
            settings=settings,
            clock=clock,
            alerts=alerts,
            evidence=sink,
            zone_settings=zone_settings,
            resource_manager=migration_failures,
            thread_factory=thread_factory,
        )
        # The HA manager calls this after every committed schedule: it wakes the workers.
        self.ha.on_work_added = self.work_added
        self.vm_sync = HostVmSync(
            orchestrator, self.ha, self.recorder, clock, grace=2 * settings.ping_interval
        )
        self.suspicion: SuspicionFencer | None = None
        """The fast path for hosts in Alert (``cloudha.fence.on.suspicion``, power drivers)."""
        if settings.cloudha_fence_on_suspicion and self.oobm.driver_names:
            self.suspicion = SuspicionFencer.from_settings(
                settings,
                clock=clock,
                directory=directory,
                gateway=gateway,
                oobm=self.oobm,
                pools=pools,
                recorder=self.recorder,
                vm_witnesses=[
                    i for i in self.investigators.investigators if getattr(i, "vm_witness", False)
                ],
            )
        self.storm = StormGuard(
            settings, clock, directory, self.recorder, alerts, last_seen=self.sightings.last_seen
        )
        """Storm protection of the fast path's fences (``cloudha.storm.*``)."""
        if self.suspicion is not None:
            self.suspicion.guard = self.storm
            self.suspicion.shadow = settings.cloudha_shadow
        self.vm_sync.shadow = settings.cloudha_shadow
        if self.suspicion is not None and self.host_ha is not None:
            self.suspicion.stands_aside = self.host_ha.owns
        self.agents = AgentManager(
            management_server_id=server_id,
            settings=settings,
            clock=clock,
            directory=directory,
            gateway=gateway,
            chain=self.investigators,
            scheduler=self.ha,
            alerts=alerts,
            evidence=sink,
            ping_map=self.ping_map,
            maintenance=maintenance,
            vm_sync=self.vm_sync,
            suspicion=self.suspicion,
            sightings=self.sightings,
            freshness=self.freshness,
        )
        self.escalation: EscalationLadder | None = None
        """The escalation ladder for hosts in Alert (``cloudha.escalation.*``)."""
        if settings.cloudha_escalation_enabled:
            self.escalation = EscalationLadder.from_settings(
                settings,
                clock=clock,
                recorder=self.recorder,
                shell=shell,
                oobm=self.oobm,
                declare_down=self._power_cycled,
            )
            if self.host_ha is not None:
                self.escalation.stands_aside = self.host_ha.owns
            self.escalation.shadow = settings.cloudha_shadow
            self.agents.escalation = self.escalation
        self.agents.shadow = settings.cloudha_shadow
        self.cluster: ClusterMember | None = None
        """This server's membership of a group (``registry``); None when it runs alone."""
        if registry is not None:
            self.agents.clustered = True
            self.cluster = ClusterMember(self, registry, address)
            if self.host_ha is not None:
                self.host_ha.follows = self.cluster.owns
        self.monitor = MonitorTask(self.agents)
        self.direct_pings = DirectPings(self)
        """The ``PingTask`` of every directly managed host this server owns, as one loop."""
        self.agent_poller: AgentPoller | None = None
        """Probes of the owned hosts without a direct agent, fed in as pings (``poller``)."""
        if poller is not None:
            self.agent_poller = AgentPoller(
                poller,
                self._polled_hosts,
                self._poll_answered,
                settings=settings,
                clock=clock,
                executor=poll_executor,
                thread_factory=thread_factory,
            )
        self.on_work_added: Callable[[], None] = self._wake_workers
        """Called after work was added; by default wakes the worker threads."""
        if not (isinstance(work_seconds, int | float) and 0.0 <= work_seconds < float("inf")):
            raise ConfigurationError(
                f"work_seconds must be a finite number >= 0, got {work_seconds!r}",
                key="work_seconds",
                value=work_seconds,
            )
        self.work_seconds = float(work_seconds)
        self._held: dict[int, Work] = {}
        self._recovered = False
        self._recovery_lock = threading.RLock()
        self._connected: frozenset[str] = frozenset()
        self._cleanup_due = False
        self._pumps: list[Pump] = []
        self._state = "new"
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.watch(self)

    def _power_cycled(self, host_id: str, reason: str) -> bool:
        """The ladder's power cycle reset ``host_id`` (read back On): Down, its VMs killed."""
        return self.agents.declare_down(host_id, reason, no_vm_runs=True)

    def _host_ha_down(self, host_id: str, reason: str, no_vm_runs: bool) -> None:
        """Host-HA reset or fenced ``host_id``: VM-HA takes its VMs."""
        self.agents.declare_down(host_id, reason, no_vm_runs=no_vm_runs)

    # -- recovery -------------------------------------------------------------

    @property
    def recovered(self) -> bool:
        """Whether the last :meth:`recover` finished."""
        return self._recovered

    def recover(self, *, connected: Collection[str] = ()) -> bool:
        """Take up from durable state (start or takeover); True when it finished.

        Releases this server's old claims and marks due works Investigating,
        then re-adopts every host left in Alert, Disconnected or Down
        (:meth:`AgentManager.recover`; a Down host only when one of its HA
        VMs has no pending HA work). ``connected``: hosts whose agents are
        known to be connected already (a first start in a running cloud; see
        :meth:`AgentManager.recover`). A failure is logged and recorded; the
        monitor loop calls this again until it succeeds.
        """
        with self._recovery_lock:  # the monitor and the Cluster loop (rejoin) both recover
            return self._recover(connected)

    def _recover(self, connected: Collection[str]) -> bool:
        self._connected = frozenset(connected)
        try:
            if self.cluster is not None and self.cluster.epoch is None:
                self.cluster.join()
            self.ha.recover()
            self.agents.recover(needs_hand_over=self._needs_hand_over, connected=self._connected)
        except Exception as exc:
            log.warning("recovery of %s failed, retried next round: %s", self.server_id, exc)
            self.recorder.emit(
                "recovery_failed", reason=f"recovery failed, retried next round: {exc}"
            )
            self._recovered = False
            return False
        self._recovered = True
        self.work_added()
        return True

    def rejoin(self) -> None:
        """This server lost its ownership (declared departed): start over from durable state.

        Its split-tick work claims are dropped (they were released), then
        :meth:`recover` registers it again with a new epoch and takes up
        what is still its own; the ``Cluster`` loop claims anew.
        """
        with self._recovery_lock:
            self._held.clear()
            self._recovered = False
            self.recover(connected=())

    def _needs_hand_over(self, host: Host) -> bool:
        force = self.settings.force_ha
        return any(
            (vm.ha_enabled or force) and not self.ha.has_pending_ha_work(vm.id)
            for vm in self.orchestrator.list_vms_on_host(host.id)
        )

    def _probe_directory(self) -> None:
        """One cheap directory query (freshness): a monitored host's row, or the owned list."""
        hosts = self.ping_map.hosts()
        if hosts:
            self.watched_directory.find_host(hosts[0])
        else:
            self.watched_directory.list_hosts(management_server_id=self.server_id)

    def _owned_hosts(self) -> list[Host]:
        """The hosts this server looks after: its own (in a group, at its epoch; alone, also
        those without an owner)."""
        hosts = self.watched_directory.list_hosts()
        if self.cluster is not None:
            return [h for h in hosts if self.cluster.owns(h)]
        return [h for h in hosts if h.management_server_id in (None, self.server_id)]

    # -- introspection --------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Desired against actual state, and the freshness of each (``cloudha dump``).

        *Desired*: what the host directory and the VM orchestrator say (each
        owned host's status, resource state, owner and VMs). *Actual*: what
        this server saw itself (each monitored host's last ping, the last
        message from its agent, its BMC's last power reading). ``freshness``
        is the last evaluation (:class:`~cloudha.detection.freshness.Freshness`).
        A port that does not answer leaves its side empty with the error.
        """
        now = self.clock.monotonic()
        wall = self.clock.now().timestamp()
        view = self.freshness.view
        fresh = view.to_dict() if view is not None else None
        desired: dict[str, Any] = {"hosts": {}, "error": None}
        try:
            for host in self._owned_hosts():
                vms = self.orchestrator.list_vms_on_host(host.id)
                desired["hosts"][host.id] = {
                    "status": None if host.status is None else str(host.status),
                    "resource_state": str(host.resource_state),
                    "owner": host.management_server_id,
                    "vms": {vm.id: str(vm.state) for vm in vms},
                }
        except Exception as exc:
            desired["error"] = f"{type(exc).__name__}: {exc}"
        actual: dict[str, Any] = {}
        for host_id in sorted(set(self.ping_map.hosts()) | set(desired["hosts"])):
            last = self.ping_map.last_ping(host_id)
            power = self.oobm.power_state(host_id)
            actual[host_id] = {
                "monitored": last is not None,
                "since_last_ping": None if last is None else round(now - last, 3),
                "since_last_seen": round(wall - self.sightings.last_seen(host_id), 3),
                "power": None if power is None else str(power),
            }
        return {
            "server": self.server_id,
            "t": round(now, 3),
            "at": self.clock.now().isoformat(),
            "judging": self.freshness.judging(),
            "desired": {
                "fresh": None if view is None else view.desired,
                **desired,
            },
            "actual": {"fresh": None if view is None else view.actual, "hosts": actual},
            "freshness": fresh,
        }

    # -- the loops ------------------------------------------------------------

    def monitor_tick(self) -> float:
        """One monitor round: recovery until it finished, then :meth:`MonitorTask.tick`."""
        if not self._recovered:
            self.recover(connected=self._connected)
        self.freshness.evaluate()
        delay = self.monitor.tick()
        if not self._recovered:
            delay = min(delay, self.settings.ping_interval)
        return delay

    def cluster_tick(self) -> float:
        """One round of the group membership (:meth:`ClusterMember.tick`)."""
        assert self.cluster is not None
        return self.cluster.tick()

    def work_tick(self, worker: int = 0) -> float:
        """One HA worker round: process one due work; 0 when one was processed.

        With :attr:`work_seconds` above 0 the round is split: a tick claims
        a work and returns ``work_seconds``; the worker's next tick processes it.
        """
        if self.settings.cloudha_shadow:
            return self.settings.time_to_sleep  # shadow mode schedules nothing and runs nothing
        if self.freshness.hold("HA work", record=False):
            return min(self.settings.time_to_sleep, self.settings.ping_interval)
        try:
            if self.work_seconds <= 0.0:
                delay = self.ha.work_tick()
            else:
                delay = self._split_work_tick(worker)
        except SQLAlchemyError as exc:
            self.freshness.note_store(exc)
            raise
        self.freshness.note_store(None)
        return delay

    def _split_work_tick(self, worker: int) -> float:
        held = self._held.pop(worker, None)
        if held is not None:
            self.ha.process(held)
            return 0.0
        work = self.store.claim(self.server_id)
        if work is None:
            return self.settings.time_to_sleep
        self._held[worker] = work
        return self.work_seconds

    def host_ha_tick(self) -> float:
        """One Host-HA poll, unless the view is not fresh (then nothing is checked or done)."""
        assert self.host_ha is not None
        if self.freshness.hold("Host-HA", record=False):
            return HOST_HA_POLL_INTERVAL
        return self.host_ha.tick()

    def cleanup_tick(self) -> float:
        """One cleanup round (the first only waits ``time.between.cleanup``)."""
        if not self._cleanup_due:
            self._cleanup_due = True
            return self.settings.time_between_cleanup
        return self.ha.cleanup_tick()

    def ping_task_loops(self) -> list[Loop]:
        """The ``DirectAgents`` loop: every directly managed host's ``PingTask`` (needs
        ``direct_resources``); empty without them."""
        if self.direct_resources is None:
            return []
        return [Loop("DirectAgents", self.direct_pings.tick)]

    def _polled_hosts(self) -> list[Host]:
        """The hosts the agent poller probes: owned, no direct agent, not a system VM's agent."""
        return [
            h
            for h in self._owned_hosts()
            if not h.hypervisor.has_direct_agent and not h.type.is_virtual
        ]

    def _poll_answered(self, report: PingReport) -> None:
        self._direct_ping(report.host_id)(report)

    def _direct_ping(self, host_id: str) -> Callable[[PingReport], None]:
        def on_ping(report: PingReport) -> None:
            if not self.agents.ping_received(report):
                # The host answers but is no longer monitored: load it again,
                # with its VM report so VMs lost while it was away get HA.
                self.agents.agent_connected(host_id, vms=report.vms)

        return on_ping

    def loops(self) -> list[Loop]:
        """Every loop of this server, in start order (ping tasks last)."""
        loops = [Loop("AgentMonitor", self.monitor_tick)]
        if self.cluster is not None:
            loops.append(Loop("Cluster", self.cluster_tick))
        if self.oobm.driver_names:
            loops.append(Loop("OobmSync", self.oobm_sync.tick))
        loops.extend(
            Loop(f"HA-Worker-{i}", functools.partial(self.work_tick, i), wake_on_work=True)
            for i in range(self.settings.ha_workers)
        )
        loops.append(Loop("HA-Cleanup", self.cleanup_tick))
        if self.host_ha is not None:
            loops.append(Loop("HostHA-Poll", self.host_ha_tick))
        if self.agent_poller is not None:
            loops.append(Loop("AgentPoller", self.agent_poller.tick))
        loops.extend(self.ping_task_loops())
        return loops

    def work_added(self) -> None:
        """HA work was added: call :attr:`on_work_added` (never raises)."""
        try:
            self.on_work_added()
        except Exception:
            log.exception("waking the HA workers failed")

    def _wake_workers(self) -> None:
        for pump, loop in self._pumps_with_loops:
            if loop.wake_on_work:
                pump.wake()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Recover (:meth:`recover`), then run every loop in its own :class:`Pump` thread."""
        with self._lock:
            if self._state != "new":
                raise LifecycleError(f"management server {self.server_id} is {self._state}")
            self._state = "running"
        self.recover()
        self._pumps_with_loops = [
            (
                loop.pump(
                    clock=self.clock,
                    error_delay=min(1.0, self.settings.ping_interval),
                    thread_factory=self.thread_factory,
                ),
                loop,
            )
            for loop in self.loops()
        ]
        self._pumps = [pump for pump, _ in self._pumps_with_loops]
        for pump in self._pumps:
            pump.start()

    _pumps_with_loops: Sequence[tuple[Pump, Loop]] = ()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every loop within ``timeout`` seconds in all, then hand unfinished works back.

        Raises :class:`~cloudha.errors.LifecycleError` naming the loops that did
        not stop in time (the works are handed back anyway).
        """
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        # The runtime edge: the wall clock bounds the joins, not the injected clock.
        deadline = time.monotonic() + timeout
        stuck: list[str] = []
        for pump in self._pumps:
            try:
                pump.stop(max(0.0, deadline - time.monotonic()))
            except LifecycleError:
                stuck.append(pump.name)
        if self.host_ha is not None:
            self.host_ha.stop(max(0.0, deadline - time.monotonic()))
        if self.agent_poller is not None:
            self.agent_poller.close(max(0.0, deadline - time.monotonic()))
        if self.cluster is not None:
            try:
                self.cluster.leave()
            except Exception:
                log.exception("leaving the group failed for %s", self.server_id)
        try:
            self.store.mark_server_pending_as_investigating(self.server_id)
            released = self.store.release_server(self.server_id)
            log.info("management server %s stopped; %d works handed back", self.server_id, released)
        except Exception:
            log.exception("handing the HA works of %s back failed", self.server_id)
        if stuck:
            raise LifecycleError(f"loops did not stop within {timeout}s: {stuck}")

    @property
    def pumps(self) -> Sequence[Pump]:
        """The running pumps (empty before :meth:`start`)."""
        return tuple(self._pumps)

    def __repr__(self) -> str:
        return f"ManagementServer({self.server_id!r}, {self._state})"
