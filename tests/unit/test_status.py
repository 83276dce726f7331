"""The host Status FSM is exactly spec §1.3."""

from __future__ import annotations

import pytest

import cloudha
from cloudha import Event, NoTransitionError, Status, host_transition
from cloudha.status import TRANSITIONS, next_status_on_disconnection

S, E = Status, Event

# Spec §1.3, written out independently of the implementation's table.
SPEC_ROWS: list[tuple[Status | None, Event, Status]] = [
    (None, E.AGENT_CONNECTED, S.CONNECTING),
    (S.CREATING, E.AGENT_CONNECTED, S.CONNECTING),
    (S.CREATING, E.ERROR, S.ERROR),
    (S.CONNECTING, E.AGENT_CONNECTED, S.CONNECTING),
    (S.CONNECTING, E.READY, S.UP),
    (S.CONNECTING, E.PING_TIMEOUT, S.ALERT),
    (S.CONNECTING, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.CONNECTING, E.HOST_DOWN, S.DOWN),
    (S.CONNECTING, E.PING, S.CONNECTING),
    (S.CONNECTING, E.MANAGEMENT_SERVER_DOWN, S.DISCONNECTED),
    (S.CONNECTING, E.START_AGENT_REBALANCE, S.REBALANCING),
    (S.CONNECTING, E.AGENT_DISCONNECTED, S.ALERT),
    (S.UP, E.PING_TIMEOUT, S.ALERT),
    (S.UP, E.AGENT_DISCONNECTED, S.ALERT),
    (S.UP, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.DISCONNECTED, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.DOWN, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.REBALANCING, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.UP, E.HOST_DOWN, S.DOWN),
    (S.UP, E.PING, S.UP),
    (S.UP, E.AGENT_CONNECTED, S.CONNECTING),
    (S.UP, E.MANAGEMENT_SERVER_DOWN, S.DISCONNECTED),
    (S.UP, E.START_AGENT_REBALANCE, S.REBALANCING),
    (S.UP, E.REMOVE, S.REMOVED),
    (S.DISCONNECTED, E.PING_TIMEOUT, S.ALERT),
    (S.DISCONNECTED, E.AGENT_CONNECTED, S.CONNECTING),
    (S.DISCONNECTED, E.PING, S.UP),
    (S.DISCONNECTED, E.HOST_DOWN, S.DOWN),
    (S.DISCONNECTED, E.MANAGEMENT_SERVER_DOWN, S.DISCONNECTED),
    (S.DISCONNECTED, E.WAITED_TOO_LONG, S.ALERT),
    (S.DISCONNECTED, E.REMOVE, S.REMOVED),
    (S.DISCONNECTED, E.AGENT_DISCONNECTED, S.DISCONNECTED),
    (S.DOWN, E.AGENT_CONNECTED, S.CONNECTING),
    (S.DOWN, E.REMOVE, S.REMOVED),
    (S.DOWN, E.MANAGEMENT_SERVER_DOWN, S.DOWN),
    (S.DOWN, E.AGENT_DISCONNECTED, S.DOWN),
    (S.DOWN, E.PING_TIMEOUT, S.DOWN),
    (S.DOWN, E.HOST_DOWN, S.DOWN),
    (S.ALERT, E.AGENT_CONNECTED, S.CONNECTING),
    (S.ALERT, E.PING, S.UP),
    (S.ALERT, E.REMOVE, S.REMOVED),
    (S.ALERT, E.MANAGEMENT_SERVER_DOWN, S.ALERT),
    (S.ALERT, E.AGENT_DISCONNECTED, S.ALERT),
    (S.ALERT, E.SHUTDOWN_REQUESTED, S.DISCONNECTED),
    (S.ALERT, E.HOST_DOWN, S.DOWN),
    (S.REBALANCING, E.REBALANCE_FAILED, S.DISCONNECTED),
    (S.REBALANCING, E.REBALANCE_COMPLETED, S.CONNECTING),
    (S.REBALANCING, E.MANAGEMENT_SERVER_DOWN, S.DISCONNECTED),
    (S.REBALANCING, E.AGENT_CONNECTED, S.CONNECTING),
    (S.REBALANCING, E.AGENT_DISCONNECTED, S.REBALANCING),
    (S.ERROR, E.AGENT_CONNECTED, S.CONNECTING),
]
SPEC = {(current, event): target for current, event, target in SPEC_ROWS}
STATES: list[Status | None] = [None, *[s for s in Status if s is not Status.UNKNOWN]]


def test_table_has_exactly_the_51_spec_rows() -> None:
    assert len(SPEC_ROWS) == 51
    assert dict(TRANSITIONS) == SPEC


@pytest.mark.parametrize(("current", "event", "target"), SPEC_ROWS)
def test_each_spec_row(current: Status | None, event: Event, target: Status) -> None:
    assert host_transition(current, event) is target
    assert cloudha.host_transition(current, event) is target
    if current is not None:
        assert current.next_status(event) is target


@pytest.mark.parametrize("current", [*STATES, Status.UNKNOWN])
@pytest.mark.parametrize("event", list(Event))
def test_everything_else_raises(current: Status | None, event: Event) -> None:
    if (current, event) in SPEC:
        return
    with pytest.raises(NoTransitionError) as info:
        host_transition(current, event)
    assert info.value.current is current
    assert info.value.event is event
    assert isinstance(info.value, cloudha.CloudHAError)


def test_enum_values_are_cloudstack_strings() -> None:
    assert Status("Up") is Status.UP
    assert Status("Unknown") is Status.UNKNOWN
    assert Event("PingTimeout") is Event.PING_TIMEOUT
    assert Event("WaitedTooLong") is Event.WAITED_TOO_LONG
    assert [e.value for e in Event][:5] == [
        "AgentConnected",
        "PingTimeout",
        "ShutdownRequested",
        "AgentDisconnected",
        "HostDown",
    ]
    assert str(Status.ALERT) == "Alert"


def test_status_flags_match_spec_1_1() -> None:
    lost = {s for s in Status if s.lost_connection}
    assert lost == {S.DOWN, S.DISCONNECTED, S.ALERT, S.REMOVED, S.ERROR, S.REBALANCING}
    assert {s for s in Status if s.checks_management_server} == {S.DOWN, S.DISCONNECTED, S.ALERT}
    assert not Status.UNKNOWN.updates_management_server
    assert Event.REMOVE.is_user_request
    assert not any(e.is_user_request for e in Event if e is not Event.REMOVE)


def test_removed_is_terminal_and_alert_has_no_ping_timeout() -> None:
    assert not [k for k in SPEC if k[0] is S.REMOVED]
    with pytest.raises(NoTransitionError):
        host_transition(S.ALERT, E.PING_TIMEOUT)
    with pytest.raises(NoTransitionError):
        host_transition(S.DOWN, E.PING)


@pytest.mark.parametrize("kept", [S.DOWN, S.ALERT, S.REMOVED])
def test_disconnection_keeps_down_alert_removed(kept: Status) -> None:
    assert next_status_on_disconnection(kept, E.SHUTDOWN_REQUESTED) is kept
    assert next_status_on_disconnection(kept, E.PING_TIMEOUT) is kept


def test_disconnection_follows_table_otherwise() -> None:
    assert next_status_on_disconnection(S.UP, E.SHUTDOWN_REQUESTED) is S.DISCONNECTED
    assert next_status_on_disconnection(S.UP, E.AGENT_DISCONNECTED) is S.ALERT
    with pytest.raises(NoTransitionError):
        next_status_on_disconnection(S.ERROR, E.PING_TIMEOUT)
