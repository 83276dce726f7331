"""The management server's side of host connections (CloudStack's AgentManager).

:class:`AgentManager` owns the ping map and turns connection events into
host status transitions: agents connect, ping, and go away; the monitor
reports hosts behind on ping; :meth:`AgentManager.disconnect_with_investigation`
runs the investigation and the decision table of spec §2.6, and hands a host
that ends Down to the HA scheduler.

Every transition, investigation and alert is recorded as evidence.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Collection, Iterable

import attrs
import tenacity

from cloudha.clock import Clock
from cloudha.detection.deadlines import START_GRACE_FACTOR, HostDeadlines
from cloudha.detection.decisions import (
    DisconnectAction,
    decide_after_investigation,
    needs_investigation,
)
from cloudha.detection.freshness import Freshness
from cloudha.detection.pingmap import PingMap
from cloudha.detection.sightings import Sightings
from cloudha.errors import NoTransitionError, ProbeError
from cloudha.evidence import EvidenceSink, JSONValue, Recorder
from cloudha.investigators import (
    ChainResult,
    Finding,
    InvestigatorChain,
    Verdict,
    proves_no_vm_runs,
)
from cloudha.model import AlertType, Host, ReasonType, ResourceState
from cloudha.ports import (
    KEEP,
    AgentGateway,
    Alert,
    AlertSink,
    CommandListener,
    ConnectionListener,
    Escalation,
    HAScheduler,
    HostDirectory,
    Keep,
    MaintenanceChecker,
    PingReport,
    StatusChange,
    SuspicionCheck,
    VmSync,
)
from cloudha.settings import Settings
from cloudha.status import Event, Status, host_transition, next_status_on_disconnection

__all__ = ["AgentManager", "BehindOnPingListener", "Investigation"]

log = logging.getLogger(__name__)

DIRECT_CHECK = "CheckHealth"
_LOCK_STRIPES = 64


@attrs.frozen
class Investigation:
    """The outcome of investigating a host, with every witness's finding."""

    status: Status | None
    decided_by: str | None
    findings: tuple[Finding, ...]
    reason: str

    @property
    def no_vm_runs(self) -> bool:
        """Down, with a finding that shows no VM running on the host (no fence needed)."""
        return proves_no_vm_runs(self.status, self.findings)


class BehindOnPingListener:
    """Keeps the ping map in step with connections and pings (spec §2.2)."""

    def __init__(self, ping_map: PingMap) -> None:
        self.ping_map = ping_map

    def process_connect(self, host: Host) -> None:
        self.ping_map.connect(host.id, host.type)

    def process_disconnect(self, host_id: str, status: Status) -> None:
        self.ping_map.disconnect(host_id)

    def process_ping(self, report: PingReport) -> None:
        if not self.ping_map.ping_by(report.host_id):
            log.debug("ping from %s, which is not monitored", report.host_id)


class AgentManager:
    """Host connections, disconnect handling and host investigation.

    Args:
        management_server_id: this management server's id (owner of the hosts it connects).
        settings: ``ping.*``, ``alert.wait``, ``vm.ha.*`` are read.
        clock: the time source.
        directory: the host inventory.
        gateway: sends CheckHealth to agents (the direct check).
        chain: the investigators asked when the direct check fails.
        scheduler: receives hosts found Down.
        alerts: operator alerts.
        evidence: where decisions are recorded.
        ping_map: the ping map to use (a new one by default).
        maintenance: the resource manager's maintenance step, called once per
            monitor round for hosts preparing for maintenance (optional).
        check_timeout: seconds the direct check may take; by default one
            ``ping.interval`` (an answer later than the next ping is no answer).
        vm_sync: told which VMs a reconnecting agent reports running
            (:meth:`agent_connected` with ``vms``) and which VMs each ping
            report lists (:meth:`ping_received`); None: no VM sync.
        hand_over_wait: a tenacity wait strategy giving the delay before the
            n-th retry of a failed hand-over to the HA scheduler; by default
            exponential from 1 s up to one ``ping.interval``.
        suspicion: the fast path for hosts in Alert (fence on suspicion):
            offered every host that enters Alert and every host in Alert at
            its recheck; a host it fenced (power read back Off) is Down at
            once. None: hosts in Alert wait for the slower proofs.
        sightings: where every connect and ping received is noted (the
            storage heartbeat's lease rule reads it); a new one by default.
        freshness: this server's own view; while it is not fresh no host is
            investigated, rechecked, declared Down or handed over (they wait
            and are taken up again once it is). None: always judging.
        deadlines: each host's deadline (fixed timeout with jitter and grace
            multiplier, start grace, phi); by default the ping map's own, or
            :meth:`HostDeadlines.from_settings` seeded with the server id,
            installed in the ping map.
        escalation: the escalation ladder (docs/escalation.md): offered every
            host in Alert at its recheck, after the investigation and before
            the fast path; while it holds a host (a level in progress) the
            fast path waits. Told when a host is Up again (its ladder starts
            over). None: no ladder.

    A host declared Down whose hand-over to the HA scheduler raised is kept
    in a retry list (due times on the injected clock, driven by the monitor's
    :meth:`retry_hand_overs`), until the scheduler returns. ``ha_scheduled``
    is recorded once it did, ``ha_schedule_failed`` on every failure.
    """

    def __init__(
        self,
        *,
        management_server_id: str,
        settings: Settings,
        clock: Clock,
        directory: HostDirectory,
        gateway: AgentGateway,
        chain: InvestigatorChain,
        scheduler: HAScheduler,
        alerts: AlertSink,
        evidence: EvidenceSink,
        ping_map: PingMap | None = None,
        maintenance: MaintenanceChecker | None = None,
        check_timeout: float | None = None,
        vm_sync: VmSync | None = None,
        hand_over_wait: Callable[[tenacity.RetryCallState], float] | None = None,
        suspicion: SuspicionCheck | None = None,
        sightings: Sightings | None = None,
        freshness: Freshness | None = None,
        deadlines: HostDeadlines | None = None,
        escalation: Escalation | None = None,
    ) -> None:
        self.management_server_id = management_server_id
        self.settings = settings
        self.clock = clock
        self.directory = directory
        self.gateway = gateway
        self.chain = chain
        self.scheduler = scheduler
        self.maintenance = maintenance
        self.alerts = alerts
        self.recorder = Recorder(evidence, clock, management_server_id)
        self.ping_map = ping_map if ping_map is not None else PingMap(clock)
        if deadlines is None:
            deadlines = self.ping_map.deadlines
        if deadlines is None:
            deadlines = HostDeadlines.from_settings(settings, seed=management_server_id)
        if self.ping_map.deadlines is not deadlines:
            self.ping_map.use_deadlines(deadlines)
        self.deadlines = deadlines
        self.check_timeout = settings.ping_interval if check_timeout is None else check_timeout
        behind = BehindOnPingListener(self.ping_map)
        self._connection_listeners: list[ConnectionListener] = [behind]
        self._command_listeners: list[CommandListener] = [behind]
        self._locks = tuple(threading.RLock() for _ in range(_LOCK_STRIPES))
        self.vm_sync = vm_sync
        self.suspicion = suspicion
        self.sightings = sightings if sightings is not None else Sightings(clock)
        self.freshness = freshness
        self.shadow = False
        """Shadow mode (``cloudha.shadow``): a Down host's VMs are recorded as what would be
        restarted (``ha_scheduled`` with ``shadow``), never handed to the scheduler."""
        self.escalation = escalation
        self.clustered = False
        """One of several management servers (:class:`cloudha.cluster.ClusterMember`): a host
        row is written only while it names this server at :attr:`owner_epoch`."""
        self.owner_epoch = 0
        """This server's registration epoch (0 alone); written into each row it claims."""
        self._alert_watch: dict[str, float] = {}
        self._adopted: set[str] = set()  # re-adopted while Disconnected, by recover()
        self._watch_lock = threading.Lock()
        self._hand_over_wait = (
            hand_over_wait
            if hand_over_wait is not None
            else tenacity.wait_exponential(
                multiplier=1.0, min=1.0, max=max(1.0, settings.ping_interval)
            )
        )
        self._hand_over_due: dict[str, tuple[int, float]] = {}
        # Down hosts whose verdict showed no VM running (power Off, an idle
        # hypervisor, a confirmed fence): handed over with investigate=False.
        self._no_vm_runs: set[str] = set()

    # -- listeners -------------------------------------------------------

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Register ``listener``; it is told after the ping map."""
        self._connection_listeners.append(listener)

    def add_command_listener(self, listener: CommandListener) -> None:
        """Register ``listener`` for pings; it is told after the ping map."""
        self._command_listeners.append(listener)

    # -- connections ------------------------------------------------------

    def agent_connected(self, host_id: str, vms: Collection[str] | None = None) -> bool:
        """An agent connected: ``AgentConnected``, start monitoring, then ``Ready``.

        ``vms``: the ids of the VMs the agent reports running on its host
        (CloudStack's start-up report); when given, the VM sync reconciles
        them with what the orchestrator believes (``ha.vm.restart.hostup``).
        Returns False (and records why) when the host is unknown, its status
        has no such transition, or the host directory cannot be read.
        """
        self.sightings.seen(host_id)
        with self._lock(host_id):
            try:
                host = self.directory.find_host(host_id)
            except Exception as exc:
                self.recorder.emit(
                    "connection_refused", host=host_id, reason=f"host directory failed: {exc}"
                )
                return False
            if host is None:
                self.recorder.emit(
                    "connection_refused", host=host_id, reason="no such host in the directory"
                )
                return False
            if self.clustered and not self._may_connect(host):
                self.recorder.emit(
                    "connection_refused",
                    host=host_id,
                    reason=(
                        f"owned by management server {host.management_server_id} "
                        f"(epoch {host.owner_epoch}): its agent belongs there"
                    ),
                    owner=host.management_server_id,
                )
                return False
            try:
                connecting = self._transit(host, Event.AGENT_CONNECTED)
                if connecting is None:
                    return False
                for listener in self._connection_listeners:
                    listener.process_connect(connecting)
                ready = self._transit(connecting, Event.READY)
            except Exception as exc:
                self.ping_map.disconnect(host_id)
                self.recorder.emit(
                    "connection_refused", host=host_id, reason=f"host directory failed: {exc}"
                )
                return False
            if ready is None:
                return False
            self._unwatch(host_id)
            if vms is not None and self.vm_sync is not None:
                try:
                    self.vm_sync.host_connected(ready, frozenset(vms))
                except Exception as exc:
                    log.warning("VM sync of %s failed: %s", host_id, exc)
                    self.recorder.emit(
                        "vm_sync_failed", host=host_id, reason=f"VM sync failed: {exc}"
                    )
            return True

    def ping_received(self, report: PingReport | str) -> bool:
        """A ping arrived; returns False if the host is not monitored (it should reconnect).

        A report of a monitored host that lists its VMs goes to the VM sync
        (``VmSync.host_reported``), which never raises into the ping path.
        """
        if isinstance(report, str):
            report = PingReport(report)
        self.sightings.seen(report.host_id)
        for listener in self._command_listeners:
            listener.process_ping(report)
        monitored = report.host_id in self.ping_map
        if monitored and report.vms is not None and self.vm_sync is not None:
            try:
                self.vm_sync.host_reported(report.host_id, report.vms)
            except Exception as exc:
                log.warning("VM sync of %s failed: %s", report.host_id, exc)
                self.recorder.emit(
                    "vm_sync_failed", host=report.host_id, reason=f"VM sync failed: {exc}"
                )
        return monitored

    def agent_link_closed(self, host_id: str) -> bool:
        """The agent's connection closed: investigate with ``AgentDisconnected``.

        Called by the embedder's connection layer, so it never raises for a
        failing port: the host stays in the ping map and the monitor examines
        it once it falls behind on ping (see :meth:`_deferred`).
        """
        return self._deferred(
            host_id,
            Event.AGENT_DISCONNECTED,
            lambda: self.disconnect_with_investigation(host_id, Event.AGENT_DISCONNECTED),
        )

    def agent_shutdown(self, host_id: str) -> bool:
        """The agent announced a shutdown: disconnect with ``ShutdownRequested`` (never raises)."""
        return self._deferred(
            host_id,
            Event.SHUTDOWN_REQUESTED,
            lambda: self.disconnect_without_investigation(host_id, Event.SHUTDOWN_REQUESTED),
        )

    def _deferred(self, host_id: str, event: Event, handle: Callable[[], bool]) -> bool:
        """Run a connection-layer disconnect; if a port fails, leave it to the monitor.

        The host is not taken out of the ping map, so it is still examined
        when it falls behind on ping; nothing is lost while the directory or
        the orchestrator is down.
        """
        try:
            return handle()
        except Exception as exc:
            log.warning("%s of %s deferred to the monitor: %s", event, host_id, exc)
            self.recorder.emit(
                "disconnect_deferred",
                host=host_id,
                reason=f"{event} not handled now ({exc}); the monitor examines the host",
                event=str(event),
            )
            return False

    def mark_hosts_as_disconnected(self, *, skip: Collection[str] = ()) -> list[str]:
        """At start: every host this server owned becomes Disconnected (UNKNOWN), doubled grace.

        The row's ``last_ping`` is set one ping timeout in the past (as
        CloudStack does) and its ``disconnected_on`` to now, and every such
        host enters the ping map held for
        :data:`~cloudha.detection.deadlines.START_GRACE_FACTOR` x its ping
        timeout (swarmkit's doubled grace after a leadership change): no
        investigation, hence no verdict, about it before that unless its
        agent connects or pings first (which ends the grace). A host whose
        agent does not come back is then investigated like any other host
        behind on ping, instead of staying Disconnected forever. The
        ``grace`` record names the hosts and the grace.
        """
        timeout = self.settings.behind_on_ping_timeout
        wall = self.clock.now().timestamp()
        marked: list[str] = []
        longest = 0.0
        for host in self.directory.list_hosts(management_server_id=self.management_server_id):
            if host.status not in (Status.UP, Status.CONNECTING, Status.REBALANCING):
                continue
            if host.id in skip:
                continue
            change = StatusChange(
                host_id=host.id,
                from_status=host.status,
                to_status=Status.DISCONNECTED,
                event=None,
                expected_update_count=host.update_count,
                last_ping=wall - timeout,
                disconnected_on=wall,
                management_server_id=self.management_server_id,
                owner_epoch=self.owner_epoch,
            )
            if self.directory.update_status(change):
                self.recorder.emit(
                    "host_status",
                    host=host.id,
                    reason="management server started: hosts it owned wait for their agents",
                    **{"from": str(host.status), "to": str(Status.DISCONNECTED), "event": None},
                )
                if self.ping_map.connect(host.id, host.type, grace=START_GRACE_FACTOR):
                    longest = max(longest, self.deadlines.start_grace(host.id))
                marked.append(host.id)
        if marked:
            self.recorder.emit(
                "grace",
                reason=(
                    f"{len(marked)} hosts start UNKNOWN with a doubled grace of {longest:.0f}s"
                    f" ({START_GRACE_FACTOR:g} x their ping timeout) to reconnect"
                ),
                hosts=len(marked),
                timeout=timeout,
                grace=round(longest, 3),
                factor=START_GRACE_FACTOR,
                host_ids=marked,
            )
        return marked

    def _grace_left(self, host: Host, wall: float, least: float) -> float:
        """Seconds until a re-adopted host's doubled grace ends (at least ``least``).

        The grace runs from the row's ``disconnected_on`` (when it lost its
        agent, durable), not from this start: a server restarting in a loop
        cannot put a verdict off for ever.
        """
        lost = wall if host.disconnected_on is None else host.disconnected_on
        return max(least, lost + self.deadlines.start_grace(host.id) - wall)

    def recover(
        self,
        *,
        needs_hand_over: Callable[[Host], bool] | None = None,
        connected: Collection[str] = (),
    ) -> list[str]:
        """At start or takeover: take up every host left unfinished, from the directory alone.

        First :meth:`mark_hosts_as_disconnected`. Then every other host the
        directory holds in Alert, Disconnected or Down, owned by this server
        or by no one, is re-adopted (nothing of a previous process's memory
        is needed). Each host in Alert or Disconnected is UNKNOWN for a
        doubled grace (:meth:`HostDeadlines.start_grace`) counted from the
        row's ``disconnected_on``, and at least one ``ping.interval`` for a
        Disconnected host: a host in Alert is then rechecked; a Disconnected
        host whose agent has not reconnected by then is investigated
        (``PingTimeout``); both are watched until Up or Down (the ``recovery``
        record gives each one's grace, seconds). A Down host for which ``needs_hand_over``
        says yes (by default every Down host) is handed over to the HA
        scheduler again (the scheduler skips VMs that already have work).
        Hosts in ``connected`` are known to have their agent connected (a
        first start in a running cloud): they are monitored as if they had
        just pinged instead of being marked Disconnected (in a group only
        those whose row names this server at its epoch; the others wait for
        the group's claims).
        Returns the re-adopted host ids.
        """
        marked = set(self.mark_hosts_as_disconnected(skip=connected))
        for host_id in sorted(connected):
            host = self.directory.find_host(host_id)
            if host is None or host.status is not Status.UP:
                continue
            if self.clustered and not (
                host.management_server_id == self.management_server_id and self._current(host)
            ):
                continue  # in a group a host is monitored by its owner: the claims decide
            self.ping_map.connect(host.id, host.type)
        now = self.clock.monotonic()
        wall = self.clock.now().timestamp()
        adopted: list[str] = []
        held: dict[str, float] = {}
        for host in self.directory.list_hosts():
            if host.id in marked:
                continue
            owner = host.management_server_id
            if owner != self.management_server_id and (self.clustered or owner is not None):
                continue  # in a group, hosts without an owner are claimed (take_over)
            if self.clustered and not self._current(host):
                claimed = self._claim(host)
                if claimed is None:
                    continue
                host = claimed
            if self._adopt(host, now, wall, held, needs_hand_over):
                adopted.append(host.id)
        if adopted:
            self.recorder.emit(
                "recovery",
                reason=f"{len(adopted)} hosts left in Alert, Disconnected or Down re-adopted",
                hosts=sorted(adopted),
                grace=held,
            )
        return adopted

    def _adopt(
        self,
        host: Host,
        now: float,
        wall: float,
        held: dict[str, float],
        needs_hand_over: Callable[[Host], bool] | None,
    ) -> bool:
        """Follow up a host left unfinished (Alert, Disconnected, Down); True if it is followed."""
        if host.status in (Status.ALERT, Status.DISCONNECTED) and not host.type.is_virtual:
            least = 0.0 if host.status is Status.ALERT else self.settings.ping_interval
            left = self._grace_left(host, wall, least)
            held[host.id] = round(left, 3)
            with self._watch_lock:
                self._alert_watch[host.id] = now + left
                if host.status is Status.DISCONNECTED:
                    self._adopted.add(host.id)
            return True
        if host.status is Status.DOWN and (needs_hand_over is None or needs_hand_over(host)):
            with self._watch_lock:
                self._hand_over_due.setdefault(host.id, (0, now))
            return True
        return False

    def _owner_change(self, host: Host, owner: str | None, epoch: int) -> StatusChange:
        """``host``'s row given to ``owner`` at ``epoch``: a host that was Up (Connecting,
        Rebalancing) becomes Disconnected (``ManagementServerDown``: ``last_ping`` one ping
        timeout back, ``disconnected_on`` now); any other status is kept."""
        if host.status not in (Status.UP, Status.CONNECTING, Status.REBALANCING):
            return StatusChange(
                host_id=host.id,
                from_status=host.status,
                to_status=host.status,
                event=None,
                expected_update_count=host.update_count,
                management_server_id=owner,
                owner_epoch=epoch,
            )
        wall = self.clock.now().timestamp()
        event = Event.MANAGEMENT_SERVER_DOWN
        return StatusChange(
            host_id=host.id,
            from_status=host.status,
            to_status=host_transition(host.status, event),
            event=event,
            expected_update_count=host.update_count,
            last_ping=wall - self.settings.behind_on_ping_timeout,
            management_server_id=owner,
            disconnected_on=wall,
            owner_epoch=epoch,
        )

    def _claim(self, host: Host) -> Host | None:
        """Write this server as ``host``'s owner at :attr:`owner_epoch`; the new row, or None.

        A host that was Up (Connecting, Rebalancing) under its previous owner
        becomes Disconnected (``ManagementServerDown``: its ``last_ping`` one
        ping timeout back, ``disconnected_on`` now): its agent must come to
        this server, and until it does or its grace ends no verdict is made.
        Any other status is kept. None when the row changed underneath
        (another server claimed it first).
        """
        if self._lease_out(host.id, "claim"):
            return None
        change = self._owner_change(host, self.management_server_id, self.owner_epoch)
        if not self.directory.update_status(change):
            return None
        claimed = change.applied_to(host)  # the row as written: no second read per claim
        to_status, event = change.to_status, change.event
        if to_status is not host.status:
            self.recorder.emit(
                "host_status",
                host=host.id,
                reason=(
                    f"taken over from {host.management_server_id or 'no management server'}:"
                    " its agent must connect to this server"
                ),
                **{
                    "from": None if host.status is None else str(host.status),
                    "to": None if to_status is None else str(to_status),
                    "event": None if event is None else str(event),
                },
            )
        return claimed

    def release(self, hosts: Iterable[Host]) -> list[str]:
        """Give ``hosts`` up (graceful stop, rebalancing): no owner, for the group to claim.

        A host that was Up (Connecting, Rebalancing) becomes Disconnected
        (``ManagementServerDown``) as when it is claimed, so its new owner
        waits for its agent. Only rows this server owns at its epoch are
        released; each leaves this server's watch. Returns those released.
        """
        released: list[str] = []
        for host in hosts:
            if host.management_server_id != self.management_server_id or not self._current(host):
                continue
            with self._lock(host.id):
                if not self.directory.update_status(self._owner_change(host, None, 0)):
                    continue
                self.drop(host.id)
                released.append(host.id)
        return released

    def take_over(
        self,
        hosts: Iterable[Host],
        *,
        needs_hand_over: Callable[[Host], bool] | None = None,
    ) -> list[str]:
        """Claim ``hosts`` (rows as read: orphans of a group) and follow them up; those claimed.

        Each row is claimed optimistically (:meth:`_claim`), so of several
        servers claiming one host exactly one gets it. A claimed host gets
        the start grace before any verdict: a host that was Up is
        Disconnected until its agent connects here, investigated as behind
        on ping if it has not within the grace
        (:meth:`HostDeadlines.start_grace`, counted from now); one in Alert
        or Disconnected is rechecked after the rest of its grace; a Down one
        is handed over to the HA scheduler again when ``needs_hand_over``
        says so. The ``takeover`` record names the hosts, their previous
        owners and graces.
        """
        now = self.clock.monotonic()
        wall = self.clock.now().timestamp()
        claimed: list[str] = []
        previous: dict[str, JSONValue] = {}
        held: dict[str, float] = {}
        for host in hosts:
            with self._lock(host.id):
                row = self._claim(host)
                if row is None:
                    continue
                claimed.append(host.id)
                previous[host.id] = host.management_server_id
                self._adopt(row, now, wall, held, needs_hand_over)
        if claimed:
            self.recorder.emit(
                "takeover",
                reason=(
                    f"{len(claimed)} hosts claimed at epoch {self.owner_epoch};"
                    " no verdict on them before their grace ends"
                ),
                hosts=claimed,
                previous=previous,
                grace=dict(held),
                epoch=self.owner_epoch,
            )
        return claimed

    # -- disconnects ------------------------------------------------------

    def disconnect_without_investigation(
        self, host_id: str, event: Event, *, transit_state: bool = True
    ) -> bool:
        """Spec §2.5: stop monitoring the host and apply ``event`` to its status."""
        with self._lock(host_id):
            host = self.directory.find_host(host_id)
            if host is None:
                self._forget(host_id, "no such host in the directory")
                return False
            if not self._owns(host, f"disconnect ({event})"):
                return False
            return self._disconnect(host, event, transit_state=transit_state)

    def disconnect_with_investigation(self, host_id: str, event: Event) -> bool:
        """Spec §2.6: investigate when the host would go to Alert, then act.

        Returns True if the host was disconnected (it left the ping map), False
        if it stays monitored (Up, or not determined yet within ``alert.wait``).
        """
        if self._held("investigation", host_id):
            return False
        with self._lock(host_id):
            host = self.directory.find_host(host_id)
            if host is None:
                self._forget(host_id, "no such host in the directory")
                return False
            if not self._owns(host, f"investigation ({event})"):
                return False
            no_vm_runs = False
            if needs_investigation(host.status, event):
                investigation = self.investigate(host)
                no_vm_runs = investigation.no_vm_runs
                decision = decide_after_investigation(
                    host_id=host.id,
                    current=host.status,
                    event=event,
                    determined=investigation.status,
                    resource_state=host.resource_state,
                    host_type=host.type,
                    since_last_ping=self.clock.now().timestamp() - host.last_ping,
                    alert_wait=self.settings.alert_wait,
                )
                self._record(
                    investigation, host, decision.reason, str(event), decision.action.value
                )
                if decision.alert is not None:
                    self._alert(host, decision.alert, decision.reason)
                if decision.action is DisconnectAction.WAIT:
                    return False
                if decision.action is DisconnectAction.REFRESH:
                    self._transit(host, Event.PING)
                    return False
                event = decision.event
            if not self._disconnect(host, event, transit_state=True):
                return False
            fenced = self._fence_on_suspicion(host.id)
            self._hand_over(host.id, no_vm_runs=no_vm_runs or fenced)
            return True

    def declare_down(self, host_id: str, reason: str, *, no_vm_runs: bool) -> bool:
        """Host-HA reset or fenced the host (spec §7.5 ``fenceSubResources``): Down now.

        The host leaves the ping map and goes Down (``HostDown``) whatever its
        status, without an investigation: Host-HA's reset or fence is the
        proof. Its VMs are handed over to the HA scheduler, with
        ``investigate=False`` when ``no_vm_runs`` (the reset, or the power
        read back Off, killed them). A host already Down is handed over
        again only if its VMs still need it. True once the host is Down.
        """
        with self._lock(host_id):
            host = self.directory.find_host(host_id)
            if host is None:
                self._forget(host_id, "no such host in the directory")
                return False
            if not self._owns(host, "declaring it Down"):
                return False
            if host.status is not Status.DOWN:
                self._alert(host, f"Host down, {host.id}", reason)
                if not self._disconnect(host, Event.HOST_DOWN, transit_state=True):
                    return False
            self._hand_over(host_id, no_vm_runs=no_vm_runs)
            return True

    @property
    def alert_watch(self) -> frozenset[str]:
        """Hosts in Alert that :meth:`recheck_alerted` investigates again."""
        with self._watch_lock:
            return frozenset(self._alert_watch)

    def next_recheck_at(self) -> float | None:
        """``clock.monotonic()`` when the next host in Alert is due, or None."""
        with self._watch_lock:
            return min(self._alert_watch.values(), default=None)

    def recheck_alerted(self) -> list[str]:
        """Investigate again every routing host this server left in Alert (or re-adopted).

        CloudStack leaves a host in Alert once an investigation could not
        prove it dead (its agent is gone, so nothing examines it again), and
        its HA VMs are never restarted. cloudha asks the chain again, once
        per ``ping.interval`` from the monitor, until the host is found Down
        (then its VMs are handed to the HA scheduler) or its agent
        reconnects. A host is due one ``ping.interval`` after it entered
        Alert and after each recheck. A Disconnected host re-adopted by
        :meth:`recover` whose agent has not reconnected is investigated as
        behind on ping. Returns the hosts found Down.
        """
        now = self.clock.monotonic()
        with self._watch_lock:
            due = sorted(h for h, at in self._alert_watch.items() if at <= now)
            for host_id in due:
                self._alert_watch[host_id] = now + self.settings.ping_interval
        down: list[str] = []
        for host_id in due:
            try:
                if self._recheck(host_id):
                    down.append(host_id)
            except Exception:
                # NOTE: the host stays watched; the next round asks again.
                log.exception("re-investigating %s failed", host_id)
        return down

    def _held(self, what: str, host_id: str) -> bool:
        """Whether ``what`` about ``host_id`` must wait for a fresh view (recorded)."""
        return self.freshness is not None and self.freshness.hold(what, host=host_id)

    def _recheck(self, host_id: str) -> bool:
        if self._held("recheck", host_id):
            return False
        with self._lock(host_id):
            host = self.directory.find_host(host_id)
            if host is not None and not self._owns(host, "recheck"):
                return False
            with self._watch_lock:
                adopted = host_id in self._adopted
            if host is not None and host.status is Status.DISCONNECTED and adopted:
                if host_id in self.ping_map or host.type.is_virtual:
                    self._unwatch(host_id)  # its agent is back: the monitor watches it
                    return False
                self.disconnect_with_investigation(host_id, Event.PING_TIMEOUT)
                after = self.directory.find_host(host_id)
                if after is not None and after.status is Status.DISCONNECTED:
                    if host_id not in self.ping_map:  # still undetermined: ask again later
                        with self._watch_lock:
                            self._alert_watch.setdefault(
                                host_id, self.clock.monotonic() + self.settings.ping_interval
                            )
                            self._adopted.add(host_id)
                elif after is None or after.status is not Status.ALERT:
                    self._unwatch(host_id)
                return after is not None and after.status is Status.DOWN
            if host is None or host.status is not Status.ALERT or host.type.is_virtual:
                self._unwatch(host_id)
                return False
            investigation = self.investigate(host)
            found_down = investigation.status is Status.DOWN
            self._record(
                investigation,
                host,
                f"still in Alert: {'found Down' if found_down else investigation.reason}",
                "AlertRecheck",
                "disconnect" if found_down else "wait",
            )
            if not found_down:
                if self._escalate(host, investigation):
                    after = self.directory.find_host(host_id)  # a level may have settled it
                    return after is not None and after.status is Status.DOWN
                if not self._fence_on_suspicion(host.id):
                    return False
                no_vm_runs = True  # fenced: its power was read back Off
            else:
                self._alert(host, f"Host down, {host.id}", "investigation found the host Down")
                if self._transit(host, Event.HOST_DOWN, disconnecting=True) is None:
                    return False
                no_vm_runs = investigation.no_vm_runs
            self._hand_over(host.id, no_vm_runs=no_vm_runs)
            return True

    @property
    def pending_hand_overs(self) -> frozenset[str]:
        """Hosts Down whose hand-over to the HA scheduler failed and is retried."""
        with self._watch_lock:
            return frozenset(self._hand_over_due)

    def next_hand_over_at(self) -> float | None:
        """``clock.monotonic()`` when the next hand-over retry is due, or None."""
        with self._watch_lock:
            return min((at for _, at in self._hand_over_due.values()), default=None)

    def retry_hand_overs(self) -> list[str]:
        """Hand every Down host whose retry is due to the HA scheduler again; those that went."""
        now = self.clock.monotonic()
        with self._watch_lock:
            due = sorted(h for h, (_, at) in self._hand_over_due.items() if at <= now)
        handed: list[str] = []
        for host_id in due:
            with self._lock(host_id):
                if self._hand_over(host_id):
                    handed.append(host_id)
        return handed

    def check_maintenance(self) -> list[str]:
        """Spec §2.3 step 3: give hosts preparing for maintenance their maintenance step.

        Each host this server owns in PrepareForMaintenance or
        ErrorInPrepareForMaintenance is passed to the maintenance checker; for
        those that are ready an alert says so. Returns their ids.
        """
        if self.maintenance is None:
            return []
        preparing = (
            ResourceState.PREPARE_FOR_MAINTENANCE,
            ResourceState.ERROR_IN_PREPARE_FOR_MAINTENANCE,
        )
        ready: list[str] = []
        for host in self.directory.list_hosts(management_server_id=self.management_server_id):
            if host.resource_state not in preparing:
                continue
            try:
                done = self.maintenance.check_and_maintain(host)
            except Exception:
                log.exception("maintenance step of %s failed", host.id)
                continue
            if done:
                ready.append(host.id)
                self._alert(
                    host,
                    f"Migration Complete for host {host.id}",
                    f"host {host.id} is ready for maintenance",
                )
        return ready

    # -- investigation ----------------------------------------------------

    def investigate(self, host: Host) -> Investigation:
        """Spec §2.6 step 3: system-VM agents are Alert; then the direct check; then the chain."""
        if host.type.is_virtual:
            return Investigation(Status.ALERT, None, (), f"{host.type} agents are not investigated")
        direct = self._direct_check(host)
        if direct is not None and direct.verdict is Verdict.ALIVE:
            return Investigation(
                Status.UP, DIRECT_CHECK, (direct,), "the agent answered CheckHealth"
            )
        findings: tuple[Finding, ...] = () if direct is None else (direct,)
        if not self.settings.vm_ha_enabled:
            if self.settings.vm_ha_alerts_enabled:
                self._alert(host, f"VM HA disabled, {host.id}", "vm.ha.enabled is false")
            return Investigation(Status.ALERT, None, findings, "vm.ha.enabled is false")
        result: ChainResult = self.chain.investigate_host(host)
        reason = (
            f"{result.decided_by} decided {result.status}"
            if result.decided_by is not None
            else "no investigator could tell"
        )
        return Investigation(result.status, result.decided_by, findings + result.findings, reason)

    def _direct_check(self, host: Host) -> Finding | None:
        # easySend only talks to agents the row says are Up or Connecting.
        if host.status not in (Status.UP, Status.CONNECTING):
            return None
        started = self.clock.monotonic()
        try:
            healthy = self.gateway.check_health(host, timeout=self.check_timeout)
        except Exception as exc:
            # easySend semantics: any failure to get an answer is "no answer".
            if not isinstance(exc, ProbeError):
                log.warning("CheckHealth of %s raised %r", host.id, exc)
            return Finding(
                Verdict.UNKNOWN,
                DIRECT_CHECK,
                f"agent did not answer: {exc}",
                observed_at=started,
                evidence={"error": type(exc).__name__},
            )
        if healthy:
            return Finding(Verdict.ALIVE, DIRECT_CHECK, "agent answered healthy", True, started)
        return Finding(Verdict.UNKNOWN, DIRECT_CHECK, "agent answered unhealthy", None, started)

    # -- internals --------------------------------------------------------

    def _lock(self, host_id: str) -> threading.RLock:
        return self._locks[zlib.crc32(host_id.encode()) % _LOCK_STRIPES]

    def _disconnect(self, host: Host, event: Event, *, transit_state: bool) -> bool:
        try:
            next_status = next_status_on_disconnection(host.status, event)
        except NoTransitionError as exc:
            self._forget(host.id, f"cannot disconnect: {exc}")
            return False
        for listener in self._connection_listeners:
            listener.process_disconnect(host.id, next_status)
        if transit_state:
            return self._transit(host, event, disconnecting=True) is not None
        return True

    def _record(
        self, investigation: Investigation, host: Host, reason: str, trigger: str, action: str
    ) -> None:
        self.recorder.emit(
            "investigation",
            host=host.id,
            reason=reason,
            result=None if investigation.status is None else str(investigation.status),
            decided_by=investigation.decided_by,
            findings=[f.to_dict() for f in investigation.findings],
            trigger=trigger,
            action=action,
        )

    def _hand_over(self, host_id: str, *, no_vm_runs: bool | None = None) -> bool:
        """Give a Down host's VMs to the HA scheduler; on failure, retry later (True: done).

        ``no_vm_runs``: from a fresh verdict, whether it showed that no VM
        runs on the host (its power read Off, its hypervisor idle, a
        confirmed fence); None for a retry, which keeps what the verdict
        said. The proof holds while the host stays Down (nothing is started
        on a Down host), so for the retries too: the works are scheduled with
        ``investigate=False``, so the VMs are stopped at once and no fence
        is asked for. A fence minutes later could otherwise power off a host
        that has booted since, with nothing on it (an investigation then may
        see nothing: the management network cut off, say).
        """
        with self._watch_lock:
            if no_vm_runs is True:
                self._no_vm_runs.add(host_id)
            elif no_vm_runs is False:
                self._no_vm_runs.discard(host_id)
            proven = host_id in self._no_vm_runs
        if self._held("HA scheduling", host_id):
            with self._watch_lock:
                attempt = self._hand_over_due.get(host_id, (0, 0.0))[0]
                self._hand_over_due[host_id] = (
                    attempt,
                    self.clock.monotonic() + self.settings.ping_interval,
                )
            return False
        try:
            after = self.directory.find_host(host_id)
            if after is not None and not self._owns(after, "HA scheduling"):
                return True  # not ours to hand over any more: its owner does it
            if after is None or after.status is not Status.DOWN:
                with self._watch_lock:
                    self._hand_over_due.pop(host_id, None)
                    self._no_vm_runs.discard(host_id)
                return True
            if self.shadow:
                return self._shadow_hand_over(host_id, proven)
            self.scheduler.schedule_restart_for_vms_on_host(
                after, investigate=not proven, reason=ReasonType.HOST_DOWN
            )
        except Exception as exc:
            with self._watch_lock:
                attempt = self._hand_over_due.get(host_id, (0, 0.0))[0] + 1
                delay = self._retry_delay(attempt)
                self._hand_over_due[host_id] = (attempt, self.clock.monotonic() + delay)
            log.warning("handing %s over to the HA scheduler failed: %s", host_id, exc)
            self.recorder.emit(
                "ha_schedule_failed",
                host=host_id,
                reason=f"handing the host's HA VMs over failed: {exc}; retry in {delay:g}s",
                attempt=attempt,
                retry_in=delay,
                error=type(exc).__name__,
            )
            return False
        with self._watch_lock:
            self._hand_over_due.pop(host_id, None)
            self._no_vm_runs.discard(host_id)
        self.recorder.emit(
            "ha_scheduled",
            host=host_id,
            reason="host is Down: its HA VMs are scheduled for restart"
            + ("; none runs (proven at the verdict): no fence needed" if proven else ""),
            ha_reason=str(ReasonType.HOST_DOWN),
            investigate=not proven,
        )
        return True

    def _escalate(self, host: Host, investigation: Investigation) -> bool:
        """Offer ``host`` (in Alert, not found Down) to the ladder; True while it holds it."""
        if self.escalation is None:
            return False
        alive = investigation.status is Status.UP or any(
            f.verdict is Verdict.ALIVE for f in investigation.findings
        )
        try:
            return self.escalation.offer(host, proven_alive=alive)
        except Exception:
            # NOTE: a broken ladder leaves the host to the existing path.
            log.exception("escalation of %s raised", host.id)
            return False

    def _reset_escalation(self, host_id: str, status: Status) -> None:
        if self.escalation is None:
            return
        try:
            self.escalation.reset(host_id, f"{host_id} is {status} again")
        except Exception:
            log.exception("escalation reset of %s raised", host_id)

    def _shadow_hand_over(self, host_id: str, proven: bool) -> bool:
        """Shadow mode: record which HA VMs would be restarted; schedule nothing."""
        with self._watch_lock:
            self._hand_over_due.pop(host_id, None)
            self._no_vm_runs.discard(host_id)
        self.recorder.emit(
            "ha_scheduled",
            host=host_id,
            reason="shadow mode: the host is Down, its HA VMs would be scheduled for restart"
            + ("; none runs (proven at the verdict)" if proven else "")
            + "; nothing was scheduled",
            ha_reason=str(ReasonType.HOST_DOWN),
            investigate=not proven,
            shadow=True,
        )
        return True

    def _fence_on_suspicion(self, host_id: str) -> bool:
        """Offer ``host_id``, if in Alert, to the fast path; True once it was fenced and is Down."""
        if self.suspicion is None:
            return False
        host = self.directory.find_host(host_id)
        if host is None or host.status is not Status.ALERT or host.type.is_virtual:
            return False
        # A fence is the one action with effects outside the database: asked again right
        # before it (an investigation may have taken long), not only when the round began.
        if self._held("fence on suspicion", host_id) or not self._owns(host, "fence on suspicion"):
            return False
        try:
            fenced = self.suspicion.consider(host)
        except Exception:
            # NOTE: a broken fast path leaves the host in Alert, watched: the slow proofs remain.
            log.exception("fence on suspicion of %s raised", host_id)
            return False
        if not fenced:
            return False
        self._alert(
            host,
            f"Host down, {host.id}",
            "fenced on suspicion: every witness lost the host, its power was read back Off",
        )
        return self._transit(host, Event.HOST_DOWN, disconnecting=True) is not None

    def _retry_delay(self, attempt: int) -> float:
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._hand_over_wait(state))

    def _watch(self, host: Host, status: Status) -> None:
        with self._watch_lock:
            if status is Status.ALERT and not host.type.is_virtual:
                due = self.clock.monotonic() + self.settings.ping_interval
                self._alert_watch.setdefault(host.id, due)
            else:
                self._alert_watch.pop(host.id, None)
                self._adopted.discard(host.id)

    def _unwatch(self, host_id: str) -> None:
        with self._watch_lock:
            self._alert_watch.pop(host_id, None)
            self._adopted.discard(host_id)

    def _forget(self, host_id: str, reason: str) -> None:
        self.ping_map.disconnect(host_id)
        self.recorder.emit("monitor_dropped", host=host_id, reason=reason)

    def _transit(self, host: Host, event: Event, *, disconnecting: bool = False) -> Host | None:
        """Apply ``event`` to the row optimistically; the new row, or None.

        The row gets this server as owner at :attr:`owner_epoch`, also when
        the host lost its connection (CloudStack clears the owner then): the
        server that follows a host in Alert or Down up stays the only one.
        In a group the write is refused (``ownership_lost``) unless the row
        names this server at its current epoch (a connecting agent may also
        take a host that has no owner).
        """
        if self.clustered and self._lease_out(host.id, f"status change ({event})"):
            return None
        connecting = event is Event.AGENT_CONNECTED and self._may_connect(host)
        if self.clustered and not connecting and not self._owns(host, f"status change ({event})"):
            return None
        try:
            target = host_transition(host.status, event)
        except NoTransitionError as exc:
            self.recorder.emit(
                "transition_refused",
                host=host.id,
                reason=str(exc),
                status=None if host.status is None else str(host.status),
                event=str(event),
            )
            return None
        wall = self.clock.now().timestamp()
        last_ping: float | Keep = KEEP
        if event.refreshes_last_ping:
            last_ping = wall
        elif event is Event.MANAGEMENT_SERVER_DOWN:
            last_ping = wall - self.settings.behind_on_ping_timeout
        change = StatusChange(
            host_id=host.id,
            from_status=host.status,
            to_status=target,
            event=event,
            expected_update_count=host.update_count,
            last_ping=last_ping,
            management_server_id=self.management_server_id,
            disconnected_on=wall if disconnecting else KEEP,
            owner_epoch=self.owner_epoch,
        )
        if not self.directory.update_status(change):
            self.recorder.emit(
                "status_conflict",
                host=host.id,
                reason="the host row changed underneath us; transition not applied",
                event=str(event),
            )
            return None
        self._watch(host, target)
        if target is not host.status:
            self.recorder.emit(
                "host_status",
                host=host.id,
                reason=f"event {event}",
                **{
                    "from": None if host.status is None else str(host.status),
                    "to": str(target),
                    "event": str(event),
                },
            )
        if target is Status.UP and host.status is not Status.UP:
            self._reset_escalation(host.id, target)
        return self.directory.find_host(host.id)

    # -- ownership (several management servers) ----------------------------

    def _lease_out(self, host_id: str, what: str) -> bool:
        """In a group: whether this server's lease ran out, so it writes no host row (recorded).

        A peer may have declared it departed already; a row still naming it is
        not its to write until a heartbeat goes through again (or is refused).
        """
        return self.freshness is not None and self.freshness.hold(
            what, host=host_id, lease_only=True
        )

    def _may_connect(self, host: Host) -> bool:
        """Whether an agent of ``host`` may connect here: no owner, or this server at its epoch."""
        owner = host.management_server_id
        return owner is None or (owner == self.management_server_id and self._current(host))

    def _current(self, host: Host) -> bool:
        return host.owner_epoch == self.owner_epoch

    def _owns(self, host: Host, what: str) -> bool:
        """Whether this server may act on ``host``; if not, ``ownership_lost`` and it is dropped.

        Alone (not :attr:`clustered`) a server acts on every host it is given.
        In a group it acts only on a row that names it at :attr:`owner_epoch`:
        a server that was declared departed (paused, cut off) and came back
        finds its hosts claimed by others, records the refused action and
        stops monitoring them.
        """
        if not self.clustered or (
            host.management_server_id == self.management_server_id and self._current(host)
        ):
            return True
        self.drop(host.id)
        self.recorder.emit(
            "ownership_lost",
            host=host.id,
            reason=(
                f"{what} refused: the host is owned by "
                f"{host.management_server_id or 'no management server'}"
                f" at epoch {host.owner_epoch}, this server is {self.management_server_id}"
                f" at epoch {self.owner_epoch}"
            ),
            owner=host.management_server_id,
            owner_epoch=host.owner_epoch,
            epoch=self.owner_epoch,
        )
        return False

    def drop(self, host_id: str) -> None:
        """Stop following ``host_id`` up at all (its ownership went elsewhere)."""
        self.ping_map.disconnect(host_id)
        with self._watch_lock:
            self._alert_watch.pop(host_id, None)
            self._adopted.discard(host_id)
            self._hand_over_due.pop(host_id, None)
            self._no_vm_runs.discard(host_id)

    def forget_all(self) -> list[str]:
        """Drop every host this server follows (its ownership was lost); their ids."""
        hosts = set(self.ping_map.hosts())
        with self._watch_lock:
            hosts |= set(self._alert_watch) | set(self._hand_over_due)
        for host_id in hosts:
            self.drop(host_id)
        return sorted(hosts)

    def _alert(self, host: Host, subject: str, body: str) -> None:
        self.recorder.emit(
            "alert", host=host.id, reason=body, alert=str(AlertType.HOST), subject=subject
        )
        try:
            self.alerts.send(
                Alert(AlertType.HOST, subject, body, host_id=host.id, zone=host.zone, pod=host.pod)
            )
        except Exception:
            log.exception("alert sink failed for %s", host.id)
