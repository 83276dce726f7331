"""Every branch of the disconnect decision table (spec §2.6) and the skip rules (§2.3)."""

from __future__ import annotations

import pytest

from cloudha import DisconnectAction, Event, HostType, ResourceState, Status
from cloudha.detection import decide_after_investigation, monitor_event_for, needs_investigation

WAIT = 1800.0


def decide(
    determined: Status | None,
    *,
    current: Status = Status.UP,
    event: Event = Event.PING_TIMEOUT,
    since: float = 100.0,
    state: ResourceState = ResourceState.ENABLED,
    host_type: HostType = HostType.ROUTING,
) -> tuple[DisconnectAction, Event, str | None]:
    d = decide_after_investigation(
        host_id="h1",
        current=current,
        event=event,
        determined=determined,
        resource_state=state,
        host_type=host_type,
        since_last_ping=since,
        alert_wait=WAIT,
    )
    assert d.reason
    return d.action, d.event, d.alert


def test_investigate_only_when_next_status_is_alert() -> None:
    assert needs_investigation(Status.UP, Event.PING_TIMEOUT)
    assert needs_investigation(Status.UP, Event.AGENT_DISCONNECTED)
    assert needs_investigation(Status.DISCONNECTED, Event.PING_TIMEOUT)
    assert needs_investigation(Status.CONNECTING, Event.PING_TIMEOUT)
    assert not needs_investigation(Status.DOWN, Event.PING_TIMEOUT)  # Down -> Down
    assert not needs_investigation(Status.ALERT, Event.PING_TIMEOUT)  # no transition at all
    assert not needs_investigation(Status.UP, Event.SHUTDOWN_REQUESTED)


def test_null_within_alert_wait_does_nothing() -> None:
    assert decide(None, since=WAIT) == (DisconnectAction.WAIT, Event.PING_TIMEOUT, None)


def test_null_past_alert_wait_goes_alert_with_alert() -> None:
    assert decide(None, since=WAIT + 0.001) == (
        DisconnectAction.DISCONNECT,
        Event.PING_TIMEOUT,
        "Host in ALERT state, h1",
    )


def test_down_becomes_host_down_with_alert() -> None:
    assert decide(Status.DOWN) == (DisconnectAction.DISCONNECT, Event.HOST_DOWN, "Host down, h1")


def test_down_no_alert_when_already_down_or_quiet_type() -> None:
    assert decide(Status.DOWN, current=Status.DOWN)[2] is None
    assert decide(Status.DOWN, host_type=HostType.CONSOLE_PROXY)[2] is None
    assert decide(Status.DOWN, host_type=HostType.SECONDARY_STORAGE)[2] is None


def test_up_refreshes_with_ping() -> None:
    assert decide(Status.UP) == (DisconnectAction.REFRESH, Event.PING, None)


def test_disconnected_while_disconnected_waits_then_waited_too_long() -> None:
    assert decide(Status.DISCONNECTED, current=Status.DISCONNECTED)[0] is DisconnectAction.WAIT
    assert decide(Status.DISCONNECTED, current=Status.DISCONNECTED, since=WAIT + 1) == (
        DisconnectAction.DISCONNECT,
        Event.WAITED_TOO_LONG,
        None,
    )


def test_disconnected_up_preparing_for_maintenance_behaves_as_disconnected() -> None:
    prep = ResourceState.PREPARE_FOR_MAINTENANCE
    assert decide(Status.DISCONNECTED, state=prep)[0] is DisconnectAction.WAIT
    assert decide(Status.DISCONNECTED, state=prep, since=WAIT + 1)[1] is Event.WAITED_TOO_LONG


def test_disconnected_from_up_is_agent_disconnected_with_alert() -> None:
    assert decide(Status.DISCONNECTED) == (
        DisconnectAction.DISCONNECT,
        Event.AGENT_DISCONNECTED,
        "Host disconnected, h1",
    )
    assert decide(Status.DISCONNECTED, host_type=HostType.CONSOLE_PROXY)[2] is None


def test_disconnected_from_other_status_keeps_event() -> None:
    assert decide(Status.DISCONNECTED, current=Status.CONNECTING) == (
        DisconnectAction.DISCONNECT,
        Event.PING_TIMEOUT,
        None,
    )


@pytest.mark.parametrize("other", [Status.ALERT, Status.UNKNOWN])
def test_anything_else_alerts(other: Status) -> None:
    assert decide(other) == (
        DisconnectAction.DISCONNECT,
        Event.PING_TIMEOUT,
        "Host in ALERT state, h1",
    )


@pytest.mark.parametrize("state", [ResourceState.DISABLED, ResourceState.MAINTENANCE])
def test_disabled_and_maintenance_skip_investigation(state: ResourceState) -> None:
    assert monitor_event_for(state, HostType.ROUTING) == (Event.SHUTDOWN_REQUESTED, False)


@pytest.mark.parametrize(
    "host_type",
    [
        HostType.CONSOLE_PROXY,
        HostType.SECONDARY_STORAGE_VM,
        HostType.SECONDARY_STORAGE_CMD_EXECUTOR,
    ],
)
def test_system_vm_agents_skip_investigation(host_type: HostType) -> None:
    assert monitor_event_for(ResourceState.ENABLED, host_type) == (Event.SHUTDOWN_REQUESTED, False)


@pytest.mark.parametrize(
    "state",
    [
        ResourceState.ENABLED,
        ResourceState.ERROR_IN_MAINTENANCE,
        ResourceState.PREPARE_FOR_MAINTENANCE,
        ResourceState.ERROR_IN_PREPARE_FOR_MAINTENANCE,
        ResourceState.DEGRADED,
    ],
)
def test_other_states_are_investigated(state: ResourceState) -> None:
    assert monitor_event_for(state, HostType.ROUTING) == (Event.PING_TIMEOUT, True)
