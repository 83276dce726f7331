"""The host ``Status`` state machine, exactly CloudStack's (spec §1).

:func:`host_transition` is a pure table look-up over the 51 transitions of
spec §1.3; anything else raises :class:`~cloudha.errors.NoTransitionError`.
``None`` stands for the initial state of a host that has no status yet.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from cloudha.errors import NoTransitionError
from cloudha.transitions import transition_table

__all__ = [
    "TRANSITIONS",
    "Event",
    "Status",
    "host_transition",
    "next_status_on_disconnection",
]


class Status(enum.Enum):
    """Host status (CloudStack ``com.cloud.host.Status``).

    ``UNKNOWN`` is only ever an answer ("cannot tell"); it is never stored.
    """

    CREATING = "Creating"
    CONNECTING = "Connecting"
    UP = "Up"
    DOWN = "Down"
    DISCONNECTED = "Disconnected"
    ALERT = "Alert"
    REMOVED = "Removed"
    ERROR = "Error"
    REBALANCING = "Rebalancing"
    UNKNOWN = "Unknown"

    @property
    def updates_management_server(self) -> bool:
        """Entering this status rewrites the row's owning management server."""
        return self is not Status.UNKNOWN

    @property
    def checks_management_server(self) -> bool:
        """Entering this status requires ``last_ping`` and the owner to be unchanged."""
        return self in (Status.DOWN, Status.DISCONNECTED, Status.ALERT)

    @property
    def lost_connection(self) -> bool:
        """In this status no management server holds the agent's connection."""
        return self in (
            Status.DOWN,
            Status.DISCONNECTED,
            Status.ALERT,
            Status.REMOVED,
            Status.ERROR,
            Status.REBALANCING,
        )

    def next_status(self, event: Event) -> Status:
        """The status ``event`` leads to from this one; raises NoTransitionError."""
        return host_transition(self, event)

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """Host status events (CloudStack ``Status.Event``)."""

    AGENT_CONNECTED = "AgentConnected"
    PING_TIMEOUT = "PingTimeout"
    SHUTDOWN_REQUESTED = "ShutdownRequested"
    AGENT_DISCONNECTED = "AgentDisconnected"
    HOST_DOWN = "HostDown"
    PING = "Ping"
    MANAGEMENT_SERVER_DOWN = "ManagementServerDown"
    WAITED_TOO_LONG = "WaitedTooLong"
    REMOVE = "Remove"
    READY = "Ready"
    REQUEST_AGENT_REBALANCE = "RequestAgentRebalance"
    START_AGENT_REBALANCE = "StartAgentRebalance"
    REBALANCE_COMPLETED = "RebalanceCompleted"
    REBALANCE_FAILED = "RebalanceFailed"
    ERROR = "Error"

    @property
    def is_user_request(self) -> bool:
        """Only ``Remove`` is asked for by a user."""
        return self is Event.REMOVE

    @property
    def refreshes_last_ping(self) -> bool:
        """Transitions on these events set the row's ``last_ping`` to now."""
        return self in (Event.PING, Event.AGENT_CONNECTED)

    def __str__(self) -> str:
        return self.value


_S = Status
_E = Event

# (from, event, to) in the source order of spec §1.3.
_ROWS: tuple[tuple[Status | None, Event, Status], ...] = (
    (None, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.CREATING, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.CREATING, _E.ERROR, _S.ERROR),
    (_S.CONNECTING, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.CONNECTING, _E.READY, _S.UP),
    (_S.CONNECTING, _E.PING_TIMEOUT, _S.ALERT),
    (_S.CONNECTING, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.CONNECTING, _E.HOST_DOWN, _S.DOWN),
    (_S.CONNECTING, _E.PING, _S.CONNECTING),
    (_S.CONNECTING, _E.MANAGEMENT_SERVER_DOWN, _S.DISCONNECTED),
    (_S.CONNECTING, _E.START_AGENT_REBALANCE, _S.REBALANCING),
    (_S.CONNECTING, _E.AGENT_DISCONNECTED, _S.ALERT),
    (_S.UP, _E.PING_TIMEOUT, _S.ALERT),
    (_S.UP, _E.AGENT_DISCONNECTED, _S.ALERT),
    (_S.UP, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.DISCONNECTED, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.DOWN, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.REBALANCING, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.UP, _E.HOST_DOWN, _S.DOWN),
    (_S.UP, _E.PING, _S.UP),
    (_S.UP, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.UP, _E.MANAGEMENT_SERVER_DOWN, _S.DISCONNECTED),
    (_S.UP, _E.START_AGENT_REBALANCE, _S.REBALANCING),
    (_S.UP, _E.REMOVE, _S.REMOVED),
    (_S.DISCONNECTED, _E.PING_TIMEOUT, _S.ALERT),
    (_S.DISCONNECTED, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.DISCONNECTED, _E.PING, _S.UP),
    (_S.DISCONNECTED, _E.HOST_DOWN, _S.DOWN),
    (_S.DISCONNECTED, _E.MANAGEMENT_SERVER_DOWN, _S.DISCONNECTED),
    (_S.DISCONNECTED, _E.WAITED_TOO_LONG, _S.ALERT),
    (_S.DISCONNECTED, _E.REMOVE, _S.REMOVED),
    (_S.DISCONNECTED, _E.AGENT_DISCONNECTED, _S.DISCONNECTED),
    (_S.DOWN, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.DOWN, _E.REMOVE, _S.REMOVED),
    (_S.DOWN, _E.MANAGEMENT_SERVER_DOWN, _S.DOWN),
    (_S.DOWN, _E.AGENT_DISCONNECTED, _S.DOWN),
    (_S.DOWN, _E.PING_TIMEOUT, _S.DOWN),
    (_S.DOWN, _E.HOST_DOWN, _S.DOWN),
    (_S.ALERT, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.ALERT, _E.PING, _S.UP),
    (_S.ALERT, _E.REMOVE, _S.REMOVED),
    (_S.ALERT, _E.MANAGEMENT_SERVER_DOWN, _S.ALERT),
    (_S.ALERT, _E.AGENT_DISCONNECTED, _S.ALERT),
    (_S.ALERT, _E.SHUTDOWN_REQUESTED, _S.DISCONNECTED),
    (_S.ALERT, _E.HOST_DOWN, _S.DOWN),
    (_S.REBALANCING, _E.REBALANCE_FAILED, _S.DISCONNECTED),
    (_S.REBALANCING, _E.REBALANCE_COMPLETED, _S.CONNECTING),
    (_S.REBALANCING, _E.MANAGEMENT_SERVER_DOWN, _S.DISCONNECTED),
    (_S.REBALANCING, _E.AGENT_CONNECTED, _S.CONNECTING),
    (_S.REBALANCING, _E.AGENT_DISCONNECTED, _S.REBALANCING),
    (_S.ERROR, _E.AGENT_CONNECTED, _S.CONNECTING),
)


TRANSITIONS: Mapping[tuple[Status | None, Event], Status] = transition_table(_ROWS, "host")
"""Every ``(from, event) -> to`` of spec §1.3; ``from`` is ``None`` for the initial state."""


def host_transition(current: Status | None, event: Event) -> Status:
    """Return the status ``event`` leads to from ``current``.

    Args:
        current: the host's status, or ``None`` for a host that has none yet.
        event: what happened.

    Raises:
        NoTransitionError: the table has no such transition.
    """
    try:
        return TRANSITIONS[(current, event)]
    except KeyError:
        raise NoTransitionError(current, event) from None


def next_status_on_disconnection(current: Status | None, event: Event) -> Status:
    """The status a disconnect leaves the agent in (``getNextStatusOnDisconnection``).

    Down, Alert and Removed hosts keep their status; every other status follows
    the table, and a missing transition raises NoTransitionError.
    """
    if current in (Status.DOWN, Status.ALERT, Status.REMOVED):
        assert current is not None
        return current
    return host_transition(current, event)
