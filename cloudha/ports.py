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
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from cloudha.model import AlertType, Host, Pool, ReasonType, Vm
from cloudha.status import Event, Status

__all__ = [
    "KEEP",
    "AgentGateway",
    "Alert",
    "AlertSink",
    "Answer",
    "Command",
    "CommandListener",
    "ConnectionListener",
    "DirectAgentResource",
    "DomainState",
    "GuestNic",
    "HAScheduler",
    "HostDirectory",
    "HypervisorControl",
    "HypervisorProbe",
    "HypervisorReport",
    "Keep",
    "MaintenanceChecker",
    "MigrationFailureSink",
    "PingReport",
    "Router",
    "StatusChange",
    "StoragePoolDirectory",
    "VmNetworkDirectory",
    "Watchdog",
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
    ``update_count`` and returns True. Otherwise it changes nothing and
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
    """

    host_id: str
    from_status: Status | None
    to_status: Status
    event: Event | None
    expected_update_count: int
    last_ping: float | Keep = KEEP
    management_server_id: str | Keep | None = KEEP
    disconnected_on: float | Keep = KEEP


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
    """What a ping says: the host is there (and whether it sees its gateway)."""

    host_id: str
    gateway_accessible: bool = True


@runtime_checkable
class DirectAgentResource(Protocol):
    """The management-server side of a directly managed host (XenServer, VMware ...).

    ``current_status`` asks the hypervisor for its status; it returns None, or
    raises a ProbeError, when the host does not answer.
    """

    def current_status(self, host: Host) -> PingReport | None:
        """One status probe of ``host``."""


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
