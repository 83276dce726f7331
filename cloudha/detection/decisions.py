"""The disconnect decision table of spec §2.6, as pure functions.

``handleDisconnectWithInvestigation`` mixes I/O and decisions; here the
decisions are separated out so that every branch can be tested without a
database, an agent or a clock.
"""

from __future__ import annotations

import enum

import attrs

from cloudha.errors import NoTransitionError
from cloudha.model import HostType, ResourceState
from cloudha.status import Event, Status, host_transition

__all__ = [
    "DisconnectAction",
    "DisconnectDecision",
    "decide_after_investigation",
    "monitor_event_for",
    "needs_investigation",
]

_QUIET_ALERT_TYPES = frozenset({HostType.SECONDARY_STORAGE, HostType.CONSOLE_PROXY})


class DisconnectAction(enum.Enum):
    """What to do with a host after its investigation."""

    WAIT = "wait"
    """Change nothing; the host stays monitored and is examined again next round."""
    REFRESH = "refresh"
    """The host is Up: apply ``Ping`` (refreshing the row's ``last_ping``) and keep monitoring."""
    DISCONNECT = "disconnect"
    """Disconnect the agent and apply ``event`` to the host's status."""


@attrs.frozen
class DisconnectDecision:
    """The outcome of the decision table.

    Attributes:
        action: see :class:`DisconnectAction`.
        event: the event to apply (``Ping`` for REFRESH; unused for WAIT).
        alert: subject of the operator alert to send, or None.
        reason: why, for the evidence record.
    """

    action: DisconnectAction
    event: Event
    alert: str | None
    reason: str


def needs_investigation(current: Status | None, event: Event) -> bool:
    """Step 2: investigate only when ``event`` would move the host to Alert."""
    try:
        return host_transition(current, event) is Status.ALERT
    except NoTransitionError:
        return False


def monitor_event_for(resource_state: ResourceState, host_type: HostType) -> tuple[Event, bool]:
    """What the monitor does with a host behind on ping (spec §2.3).

    Returns ``(event, investigate)``: Disabled or Maintenance hosts, and the
    agents of console-proxy and secondary-storage VMs, are disconnected with
    ``ShutdownRequested`` and no investigation; every other host is
    investigated with ``PingTimeout``.
    """
    if resource_state in (ResourceState.DISABLED, ResourceState.MAINTENANCE):
        return Event.SHUTDOWN_REQUESTED, False
    if host_type.is_system_vm_agent:
        return Event.SHUTDOWN_REQUESTED, False
    return Event.PING_TIMEOUT, True


def decide_after_investigation(
    *,
    host_id: str,
    current: Status | None,
    event: Event,
    determined: Status | None,
    resource_state: ResourceState,
    host_type: HostType,
    since_last_ping: float,
    alert_wait: float,
) -> DisconnectDecision:
    """Step 4 of spec §2.6: act on the investigation's outcome.

    Args:
        host_id: for alert texts.
        current: the host's status now.
        event: the event that started the disconnect (PingTimeout, AgentDisconnected ...).
        determined: the investigation's outcome: Up, Down, Disconnected, Alert or None.
        resource_state: the host's resource state.
        host_type: the host's type.
        since_last_ping: seconds since the row's ``last_ping`` (not the ping map).
        alert_wait: ``alert.wait`` in seconds.
    """
    waited_too_long = since_last_ping > alert_wait
    quiet = host_type in _QUIET_ALERT_TYPES
    alert_state = f"Host in ALERT state, {host_id}"

    if determined is None:
        if not waited_too_long:
            return DisconnectDecision(
                DisconnectAction.WAIT,
                event,
                None,
                f"state cannot be determined; {since_last_ping:.0f}s since last_ping, "
                f"alert.wait is {alert_wait:.0f}s",
            )
        return DisconnectDecision(
            DisconnectAction.DISCONNECT,
            event,
            alert_state,
            f"state cannot be determined for longer than alert.wait ({alert_wait:.0f}s)",
        )
    if determined is Status.DOWN:
        send = None if current is Status.DOWN or quiet else f"Host down, {host_id}"
        return DisconnectDecision(
            DisconnectAction.DISCONNECT, Event.HOST_DOWN, send, "investigation found the host Down"
        )
    if determined is Status.UP:
        return DisconnectDecision(
            DisconnectAction.REFRESH, Event.PING, None, "investigation found the host Up"
        )
    if determined is Status.DISCONNECTED:
        preparing = current is Status.UP and resource_state is ResourceState.PREPARE_FOR_MAINTENANCE
        if current is Status.DISCONNECTED or preparing:
            if waited_too_long:
                return DisconnectDecision(
                    DisconnectAction.DISCONNECT,
                    Event.WAITED_TOO_LONG,
                    None,
                    f"disconnected for longer than alert.wait ({alert_wait:.0f}s)",
                )
            return DisconnectDecision(
                DisconnectAction.WAIT,
                event,
                None,
                f"host alive but disconnected; {since_last_ping:.0f}s of alert.wait "
                f"({alert_wait:.0f}s) used",
            )
        if current is Status.UP:
            send = None if quiet else f"Host disconnected, {host_id}"
            return DisconnectDecision(
                DisconnectAction.DISCONNECT,
                Event.AGENT_DISCONNECTED,
                send,
                "investigation found the host alive but its agent disconnected",
            )
        return DisconnectDecision(
            DisconnectAction.DISCONNECT,
            event,
            None,
            "investigation found the host alive but its agent disconnected",
        )
    return DisconnectDecision(
        DisconnectAction.DISCONNECT, event, alert_state, f"investigation answered {determined}"
    )
