"""Ports: what the embedding orchestrator implements for cloudha.

Each port is a :class:`typing.Protocol`, so the orchestrator's own classes
fit without inheriting from cloudha. In-memory fakes of every port live in
:mod:`cloudha.testing`.

Contract shared by all ports: methods may block (they talk to a database or
an agent) and are called from cloudha's worker threads, several at once, so
they must be thread-safe. Infrastructure faults are raised as
:class:`~cloudha.errors.ProbeError` subclasses (agent gateway) or returned as
``False`` from optimistic updates (directory); anything else is treated as a
bug and logged with its traceback.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import attrs

from cloudha.ha.work import QueueState, Step, Work, WorkListing, WorkTally, WorkType
from cloudha.model import AlertType, Host, Pool, ReasonType, Vm, VmState, VmType
from cloudha.status import Event, Status

if TYPE_CHECKING:
    from cloudha.evidence import Evidence
    from cloudha.ha.orchestrator import Planner, StartParams
    from cloudha.hostha.provider import HAProviderConfig
    from cloudha.server import ManagementServer

_T = TypeVar("_T")

__all__ = [
    "KEEP",
    "AgentGateway",
    "AgentSightings",
    "Alert",
    "AlertSink",
    "Answer",
    "Command",
    "CommandListener",
    "ConnectionListener",
    "DirectAgentResource",
    "DomainState",
    "Escalation",
    "GuestNic",
    "HAProvider",
    "HAScheduler",
    "HostDirectory",
    "HostPoller",
    "HostShell",
    "HypervisorControl",
    "HypervisorProbe",
    "HypervisorReport",
    "IsolationProbe",
    "Keep",
    "MaintenanceChecker",
    "MetricsSink",
    "MigrationFailureSink",
    "PingReport",
    "RecoveryLevel",
    "RecoveryOutcome",
    "RecoveryResult",
    "Router",
    "ServerRecord",
    "ServerRegistry",
    "ServerState",
    "ShellResult",
    "StatusChange",
    "StoragePoolDirectory",
    "SuspicionCheck",
    "TaskExecutor",
    "VmNetworkDirectory",
    "VmOrchestrator",
    "VmSync",
    "VolumeDirectory",
    "Watchdog",
    "WorkQueueAdmin",
    "WorkStore",
]


class Keep(enum.Enum):
    """Sentinel type: leave a column as it is."""

    KEEP = "keep"

    def __repr__(self) -> str:
        return "KEEP"


KEEP = Keep.KEEP


@attrs.frozen
class StatusChange:
    """An optimistic update of one host row.

    The directory applies it only if the row still has ``from_status`` and
    ``expected_update_count``; it then sets the new values, increments
    ``update_count`` by one and returns True (the row is then
    :meth:`applied_to` of the row read: the agent manager relies on it
    instead of reading a claimed row again). Otherwise it changes nothing and
    returns False (someone else changed the host first).

    Attributes:
        host_id: the row.
        from_status: the status the row must still have (None: no status yet).
        to_status: the new status.
        event: the event that caused it (None for an administrative reset, such
            as a management server marking its hosts Disconnected at start).
        expected_update_count: the ``update_count`` read with the row.
        last_ping: new wall-clock ``last_ping``, or KEEP.
        management_server_id: new owner (None clears it), or KEEP.
        disconnected_on: new wall-clock ``disconnected_on``, or KEEP.
        owner_epoch: new ``owner_epoch`` (the owner's registration epoch), or KEEP.

    ``to_status`` is None only with ``from_status`` None: a change of owner
    alone of a host that never connected (a claim).
    """

    host_id: str
    from_status: Status | None
    to_status: Status | None
    event: Event | None
    expected_update_count: int
    last_ping: float | Keep = KEEP
    management_server_id: str | Keep | None = KEEP
    disconnected_on: float | Keep = KEEP
    owner_epoch: int | Keep = KEEP

    def __attrs_post_init__(self) -> None:
        if self.to_status is None and self.from_status is not None:
            raise ValueError(
                f"StatusChange of {self.host_id}: to_status None needs from_status None"
            )

    def applied_to(self, host: Host) -> Host:
        """``host`` (the row read, at ``expected_update_count``) as this change leaves it."""
        return attrs.evolve(
            host,
            status=self.to_status,
            update_count=host.update_count + 1,
            last_ping=host.last_ping if self.last_ping is KEEP else self.last_ping,
            management_server_id=(
                host.management_server_id
                if self.management_server_id is KEEP
                else self.management_server_id
            ),
            disconnected_on=(
                host.disconnected_on if self.disconnected_on is KEEP else self.disconnected_on
            ),
            owner_epoch=host.owner_epoch if self.owner_epoch is KEEP else self.owner_epoch,
        )


@runtime_checkable
class HostDirectory(Protocol):
    """The orchestrator's host inventory (CloudStack's ``host`` table)."""

    def find_host(self, host_id: str) -> Host | None:
        """The host's current row, or None if there is no such host (or it was removed)."""

    def list_hosts(
        self,
        *,
        cluster: str | None = None,
        pod: str | None = None,
        zone: str | None = None,
        management_server_id: str | None = None,
    ) -> Sequence[Host]:
        """Hosts matching every given filter (None means any)."""

    def update_status(self, change: StatusChange) -> bool:
        """Apply ``change`` if the row is as expected; see :class:`StatusChange`."""


class ServerState(enum.Enum):
    """A management server's registration state (:class:`ServerRegistry`)."""

    UP = "Up"
    """Registered and heartbeating."""
    DOWN = "Down"
    """Left gracefully (:meth:`ServerRegistry.leave`)."""
    DEPARTED = "Departed"
    """Declared departed by a peer: its heartbeat lapsed past the takeover timeout."""

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class ServerRecord:
    """One management server of a group, as the registry holds it.

    Attributes:
        id: the server id (owner of hosts and HA works).
        address: where operators reach it (free text, e.g. ``host:port``).
        state: Up, Down or Departed.
        epoch: its registration epoch, one more at each :meth:`ServerRegistry.register`.
        beat: its heartbeat counter, one more at each :meth:`ServerRegistry.heartbeat`.
        heartbeat_at: wall-clock seconds of its last heartbeat (its own clock; for
            display, never for decisions).
        registered_at: wall-clock seconds of its last registration.
        departed_by: the server that declared it departed, or None.
    """

    id: str
    address: str
    state: ServerState
    epoch: int
    beat: int
    heartbeat_at: float
    registered_at: float
    departed_by: str | None = None


@runtime_checkable
class ServerRegistry(Protocol):
    """The management servers sharing one database (CloudStack's ``mshost``).

    Every method is one atomic database operation, safe across processes.
    Departure is decided by the observers (:class:`cloudha.cluster.ClusterMember`)
    on their own monotonic clocks: a peer whose ``(epoch, beat)`` did not move
    for ``cloudha.ms.takeover.timeout`` is declared departed with
    :meth:`declare_departed`, which succeeds for exactly one caller. The
    contract checker is :func:`cloudha.testing.check_server_registry`.
    """

    def register(self, server_id: str, address: str) -> int:
        """(Re-)register ``server_id`` Up at ``address``; its new epoch (previous + 1; 1 first)."""

    def heartbeat(self, server_id: str, epoch: int) -> bool:
        """Count one beat; False (nothing changed) unless the row is Up at ``epoch``."""

    def servers(self) -> Sequence[ServerRecord]:
        """Every registered server (any state), by id."""

    def declare_departed(self, server_id: str, epoch: int, beat: int, by: str) -> bool:
        """Mark ``server_id`` Departed if it is still Up at ``epoch`` and ``beat``; True if so.

        Exactly one of several concurrent callers gets True: that one acts on
        the departure (releases the server's works and Host-HA ownership).
        """

    def leave(self, server_id: str, epoch: int) -> bool:
        """Graceful stop: mark ``server_id`` Down if it is Up at ``epoch``; True if so."""


@attrs.frozen
class Command:
    """A command for a host's agent: a name and JSON-able parameters."""

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Answer:
    """An agent's answer: ``result`` is the command's own success flag."""

    result: bool
    details: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class AgentGateway(Protocol):
    """Sends commands to host agents.

    Both methods raise :class:`~cloudha.errors.ProbeTimeout` when no answer
    comes within ``timeout`` seconds and :class:`~cloudha.errors.ProbeConnectionError`
    when the agent cannot be reached; they never hang past ``timeout``.
    """

    def check_health(self, host: Host, *, timeout: float) -> bool:
        """CloudStack's CheckHealthCommand: True if the agent answers healthy."""

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        """Send ``command`` to the host's agent and return its answer."""


@runtime_checkable
class AlertSink(Protocol):
    """Where operator alerts go (email, chat, the orchestrator's alert table)."""

    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; must not raise for delivery problems (log them)."""


@attrs.frozen
class Alert:
    """An operator alert."""

    type: AlertType
    subject: str
    body: str = ""
    host_id: str | None = None
    zone: str | None = None
    pod: str | None = None


@runtime_checkable
class HAScheduler(Protocol):
    """Receives hosts found Down, to restart their HA VMs (the HA work queue)."""

    def schedule_restart_for_vms_on_host(
        self, host: Host, *, investigate: bool, reason: ReasonType
    ) -> None:
        """Schedule HA work for every VM of ``host`` (spec §3.4)."""


@runtime_checkable
class MaintenanceChecker(Protocol):
    """The resource manager's maintenance step (CloudStack's ``checkAndMaintain``)."""

    def check_and_maintain(self, host: Host) -> bool:
        """Move ``host`` (preparing for maintenance) on; True when it is ready for maintenance."""


@runtime_checkable
class MigrationFailureSink(Protocol):
    """The resource manager, told when a VM could not be migrated off a host for lack of room.

    CloudStack's ``ResourceManager.migrateAwayFailed(host, vm)``: the host
    being prepared for maintenance cannot be emptied (CloudStack moves it to
    ErrorInMaintenance). The HA manager calls it from a worker thread each
    time a Migration work finds no room, then retries after
    ``migrate.retry.interval``.
    """

    def migrate_away_failed(self, host_id: str, vm: Vm) -> None:
        """``vm`` could not be moved off ``host_id``; must not raise for its own problems."""


@attrs.frozen
class PingReport:
    """What a ping says: the host is there (and whether it sees its gateway).

    ``vms``: the ids of the VMs the host reports running (a directly managed
    host's status report carries them, like CloudStack's ``PingRoutingCommand``
    VM state report); None when the report does not say. The VM sync gets
    them: a direct host loaded again after a ping hands them over at once,
    and a monitored host's reports are compared with the orchestrator's view,
    so VMs that died with the host while it was away are restarted
    (``ha.vm.restart.hostup``), also when it rebooted without being declared Down.
    """

    host_id: str
    gateway_accessible: bool = True
    vms: frozenset[str] | None = None


@runtime_checkable
class DirectAgentResource(Protocol):
    """The management-server side of a directly managed host (XenServer, VMware ...).

    ``current_status`` asks the hypervisor for its status; it returns None, or
    raises a ProbeError, when the host does not answer.
    """

    def current_status(self, host: Host) -> PingReport | None:
        """One status probe of ``host``."""


@runtime_checkable
class HostPoller(Protocol):
    """A status probe of a host whose agent does not ping the management server by itself.

    A deployment without agents of its own (``cloudha run`` on a KVM fleet)
    polls each such host instead: every ``ping.interval`` the management
    server's agent poller (:class:`cloudha.detection.poller.AgentPoller`)
    calls :meth:`poll` for every owned host that has no direct agent, several
    at once, and feeds every report into the
    :class:`~cloudha.detection.AgentManager` exactly as an agent's ping. A
    failed probe feeds nothing: the missing pings are what the monitor
    detects. :class:`cloudha.detection.poller.HypervisorPoller` polls a
    host's hypervisor (libvirt), reporting its running domains.

    Contract:
        * :meth:`poll` returns a :class:`PingReport` for ``host.id`` when the
          host answers, with ``vms`` the ids of the VMs it runs when it can
          tell (None otherwise); it returns None, or raises a
          :class:`~cloudha.errors.ProbeError`, when the host does not answer.
        * It never blocks past ``timeout`` seconds (an answer later than
          that is discarded by the poller anyway).
        * Thread-safe: called for many hosts at once.
    """

    def poll(self, host: Host, *, timeout: float) -> PingReport | None:
        """One status probe of ``host``."""
        ...


@runtime_checkable
class ConnectionListener(Protocol):
    """Told when an agent connects and disconnects (CloudStack's ``Listener``)."""

    def process_connect(self, host: Host) -> None:
        """``host``'s agent has connected."""

    def process_disconnect(self, host_id: str, status: Status) -> None:
        """``host_id``'s agent is gone, leaving it in ``status``."""


@runtime_checkable
class CommandListener(Protocol):
    """Told about every ping received from an agent."""

    def process_ping(self, report: PingReport) -> None:
        """A ping arrived."""


@runtime_checkable
class StoragePoolDirectory(Protocol):
    """Which primary storage pools each host mounts (for the storage heartbeat)."""

    def pools_for_host(self, host: Host) -> Sequence[Pool]:
        """The pools ``host`` mounts: its cluster's pools, then zone-wide pools."""


@runtime_checkable
class VolumeDirectory(Protocol):
    """Where the disks of each host's VMs live (Host-HA's VM activity check, spec §6.4)."""

    def volumes_on_host(self, host: Host) -> Mapping[str, Sequence[str]]:
        """The volume files of the VMs on ``host``, by pool id.

        Each path is relative to the pool's mount point (``Pool.mount_point``),
        without ``..``. A host without VMs maps to an empty mapping.
        """


@attrs.frozen
class Router:
    """A virtual router of a guest network: where it runs and its private address."""

    id: str
    host_id: str
    private_ip: str
    pod: str = "p1"


@attrs.frozen
class GuestNic:
    """One IPv4 guest address of a VM and the routers of that network."""

    ip: str
    routers: tuple[Router, ...] = ()


@runtime_checkable
class VmNetworkDirectory(Protocol):
    """VM addresses, for the ping-based investigators."""

    def guest_nics(self, vm: Vm) -> Sequence[GuestNic]:
        """The VM's guest NICs that have an IPv4 address, with their networks' routers."""

    def management_ips(self, vm: Vm) -> Sequence[str]:
        """The IPv4 addresses of a system VM's management NICs (empty if none)."""


class DomainState(enum.Enum):
    """A hypervisor's view of one VM (libvirt's domain states, folded)."""

    RUNNING = "Running"
    """Running, blocked or paused: the VM holds its disks."""
    SHUTOFF = "Shutoff"
    """Defined but not running (shut off or crashed)."""
    MISSING = "Missing"
    """The hypervisor has no such domain."""
    OTHER = "Other"
    """A transitional or unknown state (shutting down, pm-suspended, no state)."""


@attrs.frozen
class HypervisorReport:
    """What a hypervisor said when probed."""

    uri: str
    hostname: str = ""
    version: int = 0
    running_domains: int = 0
    domains: frozenset[str] | None = None
    """The names of the running domains, when the probe lists them (None: it does not say)."""


@runtime_checkable
class HypervisorProbe(Protocol):
    """Talks to a host's hypervisor directly, bypassing the agent.

    Both methods raise :class:`~cloudha.errors.ProbeError` subclasses
    (ProbeTimeout, ProbeConnectionError, ProbeAuthError) when the hypervisor
    does not answer, and never block past ``timeout``.
    """

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        """Connect to ``host``'s hypervisor and ask it something cheap."""

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        """The state of the domain named ``domain`` on ``host``."""


@runtime_checkable
class HypervisorControl(HypervisorProbe, Protocol):
    """A hypervisor connection that may also act: destroy (hard-stop) a domain.

    Raises :class:`~cloudha.errors.ProbeError` subclasses like
    :class:`HypervisorProbe` and never blocks past ``timeout``.
    """

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        """Hard-stop the domain named ``domain`` on ``host`` and return its state read back.

        A domain that is already shut off or missing is left alone and its
        state returned.
        """


@runtime_checkable
class WorkStore(Protocol):
    """The HA work queue (CloudStack's ``op_ha_work``) that the HA manager runs on.

    Adapters: :class:`cloudha.ha.store.SqlWorkStore` (SQLite, PostgreSQL) and
    :class:`cloudha.testing.InMemoryWorkStore`; ``cloudha.testing.check_work_store``
    is the contract every adapter passes. Times come from the store's
    injected clock: ``created``/``taken`` are aware UTC datetimes,
    ``time_to_try`` epoch seconds.

    Contract:

    * **claims** — :meth:`claim` atomically takes one *claimable* work
      (unclaimed, ``taken`` unset, ``time_to_try <= now``, step not
      terminal), highest ``priority`` first, then lowest ``id``; two callers,
      threads or processes never get the same work. The claimed work gets the
      VM's next fencing token as ``generation``.
    * **fencing tokens** — per VM, handed out by :meth:`next_generation` and
      by every claim, only ever growing (never repeated, even across
      processes sharing the store).
    * **held writes** — :meth:`confirm`, :meth:`reschedule`, :meth:`finish`
      and :meth:`update_step` act only on a row that is still the claim given
      (same ``id``, ``generation`` and ``mgmt_server_id``), else raise
      :class:`~cloudha.ha.work.StaleWorkError`; :meth:`confirm` also fails on
      a work in a terminal step.
    * **unreadable rows** — a method returning :class:`~cloudha.ha.work.Work`
      values raises :class:`~cloudha.ha.work.UnreadableWorkError` (row id,
      column, value) for a row holding an unknown value; :meth:`mark_error`
      puts such a row in step Error without reading it, after which the list
      readers skip it. A :meth:`claim` that picks one commits the claim and
      then raises.
    * **errors** — transient faults raise
      :class:`~cloudha.errors.StoreUnavailableError` (the manager retries),
      other failures :class:`~cloudha.errors.StoreError`; never a driver's
      exception. Thread-safe.
    """

    def add(
        self,
        instance_id: str,
        type: WorkType,
        previous_state: VmState,
        *,
        vm_type: VmType = ...,
        step: Step = ...,
        host_id: str | None = None,
        reason: ReasonType = ...,
        tried: int = 0,
        updated: int = 0,
        priority: int = 0,
        time_to_try: float | None = None,
    ) -> Work:
        """Persist a new unclaimed work (``created`` now, claimable from ``time_to_try``,
        default now; generation 0) and return it."""

    def get(self, work_id: int) -> Work | None:
        """The work with this id, or None."""

    def pending_for_vm(self, instance_id: str) -> list[Work]:
        """The VM's works of any type whose step is not terminal, oldest (lowest id) first."""

    def pending_ha_for_host(self, host_id: str) -> list[Work]:
        """Works of type HA on the host whose step is not terminal, oldest first."""

    def works_for_vm(self, instance_id: str) -> list[Work]:
        """Every work of the VM still stored, terminal ones included, oldest first."""

    def works_for_vms(self, instance_ids: Iterable[str]) -> list[Work]:
        """:meth:`works_for_vm` for many VMs at once, oldest first."""

    def has_been_scheduled(self, instance_id: str, type: WorkType) -> bool:
        """Whether an untaken work of this VM and type exists (any step)."""

    def tally(self) -> list[WorkTally]:
        """How many works of each stored type are in each stored step, with the oldest
        ``created`` of each group, ordered by type then step; hand-edited values as
        stored (never raises UnreadableWorkError). Cheap: metrics call it per scrape."""

    def claim(self, server_id: str) -> Work | None:
        """Take one claimable work for ``server_id`` (see the class contract); None if none."""

    def next_generation(self, instance_id: str) -> int:
        """Hand out the VM's next fencing token (1, 2, 3...)."""

    def current_generation(self, instance_id: str) -> int:
        """The VM's last fencing token handed out; 0 when none was."""

    def confirm(self, work: Work) -> None:
        """Check that ``work`` is still the caller's claim, not terminal; else StaleWorkError."""

    def reschedule(
        self,
        work: Work,
        time_to_try: float,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """Give the held work back: ``tried + 1``, unclaimed, not before ``time_to_try``.

        ``previous_state`` / ``updated``, when given, replace the VM snapshot.
        """

    def finish(
        self,
        work: Work,
        step: Step = ...,
        *,
        attempt: bool = False,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """End the held work in a terminal step (Done by default); the claim stays.

        ``attempt``: also ``tried + 1``. ValueError for a non-terminal step.
        """

    def update_step(
        self,
        work: Work,
        step: Step,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        """Record the held work's progress (any step), optionally a new VM snapshot."""

    def mark_error(self, work_id: int) -> bool:
        """Step Error by id, without reading the row; True when the row exists."""

    def release_server(self, server_id: str) -> int:
        """Unclaim the server's non-terminal works (server and taken cleared); how many."""

    def cancel_untaken(self, host_id: str, types: Iterable[WorkType], server_id: str) -> int:
        """Cancel the host's untaken, non-terminal works of these types (taken now, owner
        ``server_id``); how many."""

    def delete_untaken(self, instance_id: str, type: WorkType) -> int:
        """Delete the VM's untaken works of ``type``; how many."""

    def mark_pending_as_investigating(self) -> int:
        """Give every claimable work step Investigating, except those in step Stopping
        (a stop of theirs may have happened unrecorded); how many."""

    def mark_server_pending_as_investigating(self, server_id: str) -> int:
        """Give the server's non-terminal works step Investigating (claim kept), except
        those in step Stopping; how many."""

    def cleanup(self, older_than_seconds: float) -> int:
        """Delete Done and Cancelled works whose ``taken`` (else ``created``) is older; how many."""

    def delete(self, work_ids: Iterable[int]) -> int:
        """Delete these rows; how many."""


@runtime_checkable
class WorkQueueAdmin(Protocol):
    """An operator's view of the HA work queue: list works, retry or cancel one (``cloudha queue``).

    Apart from :class:`WorkStore` because the HA manager never needs it; both
    shipped adapters (:class:`cloudha.ha.store.SqlWorkStore`,
    :class:`cloudha.testing.InMemoryWorkStore`) implement both, and
    ``cloudha.testing.check_work_store`` checks this contract too
    (``WORK_QUEUE_ADMIN_CHECKS``).

    Contract:

    * :meth:`list_works` never fails on a hand-edited row: such rows are
      listed apart (:attr:`~cloudha.ha.work.WorkListing.unreadable`).
    * :meth:`retry_work` and :meth:`cancel_work` change one row in one
      transaction, after checking it in that transaction; a refusal
      (:class:`~cloudha.ha.work.WorkRefusedError`) or an unknown id
      (:class:`~cloudha.ha.work.UnknownWorkError`) changes nothing.
    * Neither touches a fencing token: the row's ``generation`` stays (its
      next claim takes a fresh token, as every claim does) and the VM's last
      token (:meth:`WorkStore.current_generation`) never changes.
    * A claimed work is never changed: its worker may be fencing or starting
      the VM at this moment.
    """

    def list_works(
        self,
        *,
        states: Collection[QueueState] | None = None,
        host_id: str | None = None,
        instance_id: str | None = None,
        type: WorkType | None = None,
    ) -> WorkListing:
        """The works in one of ``states`` (None: all), of this host, VM and type when given,
        oldest (lowest id) first."""

    def retry_work(self, work_id: int) -> Work:
        """Send an Error or Cancelled work back to the queue, to be investigated anew, due now.

        The row gets step Investigating (never Scheduled: the VM is proven dead
        or fenced again before any start), no claim (``mgmt_server_id`` and
        ``taken`` cleared), ``time_to_try`` now and ``tried`` 0 (the full
        ``vm.ha.migration.max.retries`` again); its VM snapshot and
        ``generation`` are kept. Refused (:class:`~cloudha.ha.work.WorkRefusedError`)
        for a work in another step, an unreadable row, or a VM that already
        has a pending work of the same type (that one would supersede it).
        """

    def cancel_work(self, work_id: int, canceller: str) -> Work:
        """Cancel a pending work that no server holds, or dismiss an Error work.

        The row gets step Cancelled, ``taken`` now and ``mgmt_server_id``
        ``canceller`` (as ``cancel_untaken`` does), so the cleanup deletes it
        after ``time.between.failures``. Refused
        (:class:`~cloudha.ha.work.WorkRefusedError`) for a claimed work, a
        Done or Cancelled one, or an unreadable row.
        """


@runtime_checkable
class Watchdog(Protocol):
    """A watchdog that resets this host unless it is petted in time (Linux ``/dev/watchdog``).

    The heartbeat writer arms it and pets it after every round in which it
    wrote the heartbeat to all its pools, so a hung, isolated or stopped
    writer lets it reset the host before a neighbour can call the heartbeat
    stale (docs/heartbeat.md, "The watchdog").

    Contract:
        * :meth:`arm` starts the countdown (opening ``/dev/watchdog`` starts
          it) with ``timeout`` seconds and returns the timeout the device
          really uses; a device that cannot say raises, since the guarantee
          could not be checked. Arming twice is an error.
        * :meth:`keepalive` restarts the countdown; it raises
          :class:`OSError` when the device refuses, and is an error before
          :meth:`arm` or after :meth:`close`.
        * :meth:`close` with ``disarm=True`` stops the countdown (the magic
          close, ``V``): only for a deliberate, clean stop of the writer.
          With ``disarm=False`` the countdown goes on and the host is reset
          unless a new writer arms the watchdog again in time. Closing twice
          does nothing.
        * Not thread-safe: one writer owns it.
    """

    def arm(self, timeout: float) -> float:
        """Start the countdown with ``timeout`` seconds; the effective timeout."""

    def keepalive(self) -> None:
        """Pet the watchdog: the countdown starts again."""

    def close(self, *, disarm: bool) -> None:
        """Release the device, stopping the countdown only when ``disarm``."""


@runtime_checkable
class IsolationProbe(Protocol):
    """What a host knows of its own connection, for isolation-aware self-fencing.

    The heartbeat writer asks it when a heartbeat write fails
    (:func:`cloudha.heartbeat.isolation.link_state`; docs/heartbeat.md,
    "Isolation").

    Contract:
        * :meth:`acknowledged_at` gives the wall-clock epoch seconds at which
          the host's agent *sent* the last ping that the management server
          acknowledged, or None when there is none (never a later time: the
          lease the writer renews on it must end before the server, which
          received that ping, may call the heartbeat stale).
        * :meth:`isolation_answers` pings the isolation address once, within
          about a second: True when it answered, False when not, None when no
          address is configured. It never raises.
        * Both may be called from the writer's thread at any time.
    """

    def acknowledged_at(self) -> float | None:
        """When the agent sent its last acknowledged ping (epoch seconds), or None."""

    def isolation_answers(self) -> bool | None:
        """Whether the isolation address answers now (None: none is configured)."""


@runtime_checkable
class AgentSightings(Protocol):
    """When this management server last heard from each host's agent.

    Contract:
        * :meth:`last_seen` gives the wall-clock epoch seconds of the last
          connect or ping of ``host_id``'s agent that this server received; a
          host not heard from since the server started gives the start time
          (a previous process may have heard from it until then). Never None.
        * Thread-safe; cheap (called for every investigation).
    """

    def last_seen(self, host_id: str) -> float:
        """Epoch seconds of the last message from the agent (at least the server's start)."""


@runtime_checkable
class VmOrchestrator(Protocol):
    """The VM manager the HA work queue drives (CloudStack ``VirtualMachineManager``).

    Contract:

    * Thread-safe: called from several HA worker threads at once, possibly
      for the same VM. Methods may block (they talk to a database or to
      hypervisors); adapters bound every wait with their own timeouts.
    * Every change of a VM's state increments its :attr:`Vm.updated`
      counter; a call that changes nothing leaves it alone.
    * Infrastructure faults (a hypervisor that does not answer) are raised as
      :class:`~cloudha.errors.ProbeError` subclasses; an operation that timed
      out may still take effect later, so an adapter that cannot tell leaves
      the VM ``Unknown`` on that host and a forced stop is needed before the
      next start.
    * Fencing tokens: :meth:`advance_start` refuses a generation lower than
      or equal to the highest one already used for the VM
      (:class:`~cloudha.ha.orchestrator.StaleGenerationError`), checked
      before anything else happens.
      A generation is used once a start with it has begun; a start refused
      for want of capacity (or any other definite failure before the VM was
      started) does not use it, so the HA planner fallback may retry with
      the same generation.
    """

    def find_vm(self, vm_id: str) -> Vm | None:
        """A snapshot of the VM, or None when there is no such VM."""
        ...

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        """Snapshots of the VMs whose ``host_id`` is ``host_id``, sorted by id."""
        ...

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        """Stop the VM (re-read by ``vm.id``) wherever it runs and mark it Stopped.

        ``force=True`` powers it off at once (the HA path after fencing);
        ``force=False`` asks the guest to shut down. On return the VM is
        ``Stopped`` with ``host_id`` None and ``last_host_id`` the host it
        was on. Stopping a VM that is already Stopped or Destroyed changes
        nothing (it does not run; a Destroyed VM stays Destroyed).

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: another operation on the VM is under way.
            ProbeError: the VM's host could not be reached (state unchanged,
                or ``Unknown`` when the stop may still happen).
        """
        ...

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        """Start the Stopped VM (re-read by ``vm.id``) on a host the planner picks.

        The host must not be in ``params.avoid_hosts``, must carry
        ``params.ha_tag`` when that is set, and must have room. On success
        the VM is ``Running`` on that host and ``params.generation`` is the
        VM's highest used generation.

        Returns:
            The id of the host the VM was started on.

        Raises:
            UnknownVmError: no such VM.
            StaleGenerationError: ``params.generation`` is not higher than
                every generation already used for the VM (nothing happens).
            ConcurrentOperationError: the VM is not Stopped (it runs, or
                another operation on it is under way).
            InsufficientCapacityError: no eligible host has room (the VM
                stays Stopped and the generation is not used).
            ProbeError: the chosen host could not be reached.
        """
        ...

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        """False when the VM cannot run anywhere but its own host (e.g. local storage)."""
        ...

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        """Live-migrate the VM (re-read by ``vm.id``), Running on ``source_host_id``, elsewhere.

        The planner picks an Up host other than the source with room (the
        maintenance path of spec §3.7). On success the VM is ``Running`` on
        that host.

        Returns:
            The id of the host the VM now runs on.

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: the VM is not Running on ``source_host_id``,
                or another operation on it is under way.
            InsufficientCapacityError: no other host has room (the VM keeps
                running on the source).
            ProbeError: a host could not be reached (the VM keeps running on
                the source, or is ``Unknown`` when the outcome cannot be told).
        """
        ...

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        """Destroy the VM (re-read by ``vm.id``), stopping it first (forced) if it runs.

        On return the VM is ``Destroyed`` (not running, kept in the inventory)
        or, with ``expunge=True``, gone: :meth:`find_vm` returns None.
        Destroying a Destroyed VM again changes nothing unless ``expunge``.

        Raises:
            UnknownVmError: no such VM.
            ConcurrentOperationError: another operation on the VM is under way.
            ProbeError: its host could not be reached (nothing changed).
        """
        ...


class VmSync(Protocol):
    """Reconciles the VMs a reconnecting agent reports with the orchestrator's view.

    CloudStack's VM sync on agent start-up (spec §3, ``ha.vm.restart.hostup``):
    a VM the orchestrator believes Running on the host that the host does not
    run is marked Stopped and, when HA-enabled, scheduled for restart.
    :class:`cloudha.server.HostVmSync` is the implementation the
    management server wires in.
    """

    def host_connected(self, host: Host, running: Collection[str]) -> None:
        """``host`` reconnected and reports ``running`` (VM ids) as running on it."""
        ...

    def host_reported(self, host_id: str, running: Collection[str]) -> None:
        """A ping report of monitored host ``host_id`` lists ``running`` (VM ids).

        A VM missing from the host's reports for longer than a grace is
        reconciled as on reconnect; the call never blocks on the VM's restart.
        """
        ...


class SuspicionCheck(Protocol):
    """The fast path for a host in Alert: fence on suspicion (docs/suspicion.md).

    :class:`cloudha.detection.suspicion.SuspicionFencer` is the implementation
    the management server wires in.
    """

    def consider(self, host: Host) -> bool:
        """Fence ``host`` (in Alert) if every witness has lost it.

        True only once the fence was confirmed (the power read back Off): the
        host may then be declared Down. False changes nothing. Never raises
        for an unreachable agent, neighbour or BMC.
        """
        ...


@attrs.frozen
class ShellResult:
    """What a command run through a :class:`HostShell` gave.

    Attributes:
        exit_status: the remote exit status (-1: killed by a signal).
        stdout: its standard output, decoded (UTF-8, bad bytes replaced).
        stderr: its standard error, decoded likewise.
    """

    exit_status: int
    stdout: str = ""
    stderr: str = ""


@runtime_checkable
class HostShell(Protocol):
    """Runs a command on a host as an operator would, over SSH (the escalation ladder's
    ``agent.restart``, docs/escalation.md).

    :class:`cloudha.transport.shell.SSHHostShell` is the implementation over
    :class:`~cloudha.transport.ssh.SSHTransport` (host keys verified). The
    implementation picks the user, the key and the host's address; secrets
    never appear in results or errors.
    """

    def run(self, host: Host, argv: Sequence[str], *, timeout: float) -> ShellResult:
        """Run ``argv`` (each argument literally, no shell syntax) on ``host``.

        A non-zero exit status is returned, not raised. Raises
        :class:`~cloudha.errors.ProbeTimeout` when ``timeout`` seconds pass and
        another :class:`~cloudha.errors.ProbeError` (connection refused, host
        key refused, login refused) when the host cannot be reached.
        """
        ...


class RecoveryOutcome(enum.Enum):
    """What one step of the escalation ladder came to (evidence kind ``escalation``)."""

    STARTED = "started"
    """The level acted; its success is confirmed later (the host goes Up) or it times out."""
    SUCCEEDED = "succeeded"
    """The level is done: the host is back Up, or the level settled it (Down, VMs handed over)."""
    FAILED = "failed"
    """The level could not act (SSH refused, BMC failed): the next level is taken at once."""
    TIMED_OUT = "timed_out"
    """The level did not confirm success within its timeout: abandoned."""
    SKIPPED = "skipped"
    """The level does not apply to the host (a port missing, Host-HA owns it, proven alive)."""


@attrs.frozen
class RecoveryResult:
    """What :meth:`RecoveryLevel.attempt` did: ``outcome`` is STARTED, SUCCEEDED or FAILED."""

    outcome: RecoveryOutcome
    reason: str


@runtime_checkable
class RecoveryLevel(Protocol):
    """One level of the escalation ladder (docs/escalation.md).

    :class:`cloudha.detection.escalation.BaseRecoveryLevel` is the base to
    subclass; its docstring holds the full contract.
    """

    name: str
    """The level's name in ``cloudha.escalation.levels`` (``agent.restart``)."""
    timeout: float | None
    """Seconds a STARTED attempt has to confirm success (None: the level ends the ladder)."""
    disruptive: bool
    """True when the level kills the host's VMs (a power action): never on a live host."""

    def applies(self, host: Host) -> str | None:
        """None when the level can act on ``host``; else why not (the step is skipped)."""
        ...

    def attempt(self, host: Host) -> RecoveryResult:
        """Act on ``host`` (every side effect of the level is here); never raises."""
        ...


class Escalation(Protocol):
    """The escalation ladder as :class:`~cloudha.detection.AgentManager` sees it.

    :class:`cloudha.detection.escalation.EscalationLadder` is the
    implementation the management server wires in.
    """

    def offer(self, host: Host, *, proven_alive: bool) -> bool:
        """``host`` is in Alert at its recheck; True when the ladder holds it this round.

        ``proven_alive``: the recheck's investigation found the host alive
        (a witness saw it). False: the ladder has nothing (more) to do and the
        existing path goes on (fence on suspicion, then VM HA once the host is
        proven Down). Never raises.
        """
        ...

    def reset(self, host_id: str, reason: str) -> None:
        """``host_id`` is back Up: its ladder starts again from the first level next time."""
        ...


class HAProvider(Protocol):
    """A Host-HA provider: how one kind of host is judged, recovered and fenced (spec §7.5).

    :class:`cloudha.hostha.BaseHAProvider` is the base to subclass (its
    docstring holds the full contract); :class:`cloudha.hostha.KVMHAProvider`
    is the built-in one. The Host-HA manager calls each method on one of its
    bounded executors, within the time limit of :attr:`config`.
    """

    name: str
    """The provider's name in ``ha_config.provider`` (``kvmhaprovider``)."""

    @property
    def config(self) -> HAProviderConfig:
        """The limits and thresholds the manager applies to this provider's hosts."""
        ...

    def supports(self, host: Host) -> bool:
        """Whether ``host`` is of this provider's kind (its hypervisor)."""
        ...

    def is_eligible(self, host: Host) -> bool:
        """Whether Host-HA can act on ``host`` now (fence path, neighbours, not in maintenance)."""
        ...

    def is_healthy(self, host: Host) -> bool:
        """True when ``host`` is known to be up; False (or a raise) fails the health check."""
        ...

    def has_activity(self, host: Host, suspect_since: float) -> bool | None:
        """Signs of life of ``host`` since ``suspect_since`` (epoch seconds).

        True: activity, False: none (one failed sample), None: cannot tell
        (never counted as "no activity"). Raises
        :class:`~cloudha.errors.HACheckError` when the check cannot apply to
        the host at all (the host then becomes Ineligible).
        """
        ...

    def recover(self, host: Host) -> bool:
        """Try to bring ``host`` back (a power reset); True when done: its VMs died with it."""
        ...

    def fence(self, host: Host) -> bool:
        """Power ``host`` off; True only once the power was confirmed Off."""
        ...

    def proves_dead(self, host: Host) -> bool:
        """The fallback when :meth:`fence` fails: proof without the BMC that ``host`` is dead."""
        ...


class TaskExecutor(Protocol):
    """Runs the Host-HA manager's tasks (:mod:`cloudha.hostha.executor` has two)."""

    def submit(self, task: Callable[[], None]) -> bool:
        """Run ``task`` now or later; False when refused (full, or stopped)."""
        ...

    def call(self, fn: Callable[[], _T], timeout: float) -> _T:
        """``fn()``, or :class:`TimeoutError` when it did not finish within ``timeout`` s."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Refuse new tasks; let the started ones finish within ``timeout`` s."""
        ...


@runtime_checkable
class MetricsSink(Protocol):
    """Where a :class:`~cloudha.ManagementServer` sends what metrics count (``metrics=``).

    :class:`cloudha.metrics.Metrics` is the Prometheus adapter;
    ``cloudha.testing.RecordingMetricsSink`` records the calls, and
    ``cloudha.testing.check_metrics_sink`` is the contract.

    Contract: :meth:`record` gets every evidence record the server makes, from
    any thread, as it is made; it must be quick (no I/O: counting only), must
    accept every kind and any details (unknown kinds, missing or ill-typed
    fields) and should not raise (a sink that raises is logged, and the
    decision goes on). :meth:`watch` is called once by each server built with
    the sink (a restarted server calls it again: the newest is the one to read);
    whatever is read from the server later (at a scrape) must be its cheap,
    local state or its host directory and work store, never a BMC or a host.
    """

    def record(self, evidence: Evidence) -> None:
        """Count one evidence record."""
        ...

    def watch(self, server: ManagementServer) -> None:
        """Read ``server``'s state (directory, work queue, freshness, detector) from now on."""
        ...
