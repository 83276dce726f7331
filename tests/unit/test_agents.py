"""AgentManager: connections, disconnect handling with and without investigation (spec §2.4-2.6)."""

from __future__ import annotations

import attrs

from cloudha import Event, HostType, ReasonType, Status, Verdict
from cloudha.testing import ScheduledRestart

from .conftest import World, make_world


def test_agent_connect_goes_connecting_then_up_and_monitors(world: World) -> None:
    world.add_host("h1", status=None, connect=False, last_ping=0.0)
    assert world.agents.agent_connected("h1")
    host = world.directory.find_host("h1")
    assert host is not None
    assert host.status is Status.UP
    assert host.last_ping == world.clock.monotonic()  # AgentConnected refreshes last_ping
    assert host.management_server_id == "ms1"
    assert "h1" in world.agents.ping_map
    steps = [
        (r.details["from"], r.details["to"]) for r in world.evidence.records(kind="host_status")
    ]
    assert steps == [(None, "Connecting"), ("Connecting", "Up")]


def test_connect_unknown_host_is_refused_with_evidence(world: World) -> None:
    assert not world.agents.agent_connected("nope")
    assert world.kinds("nope") == ["connection_refused"]


def test_ping_received_reports_whether_monitored(world: World) -> None:
    world.add_host("h1")
    assert world.agents.ping_received("h1")
    world.agents.ping_map.disconnect("h1")
    assert not world.agents.ping_received("h1")  # the agent should reconnect


def test_direct_check_up_refreshes_last_ping_and_keeps_monitoring(world: World) -> None:
    world.add_host("h1", last_ping=0.0)
    world.gateway.healthy["h1"] = True
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    host = world.directory.find_host("h1")
    assert host is not None
    assert host.status is Status.UP
    assert host.last_ping == world.clock.monotonic()
    assert "h1" in world.agents.ping_map
    inv = world.evidence.records(kind="investigation")[-1]
    assert inv.details["result"] == "Up"
    assert inv.details["decided_by"] == "CheckHealth"
    assert world.investigator.asked == []  # the chain is not asked when the agent answers


def test_chain_down_moves_host_down_alerts_and_schedules_ha(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DOWN
    assert "h1" not in world.agents.ping_map
    assert world.alerts.subjects() == ["Host down, h1"]
    assert world.scheduler.scheduled == [ScheduledRestart("h1", True, ReasonType.HOST_DOWN)]
    inv = world.evidence.records(kind="investigation")[-1]
    assert [f["source"] for f in inv.details["findings"]] == ["CheckHealth", "Scripted"]
    assert inv.details["findings"][0]["verdict"] == "UNKNOWN"
    host = world.directory.find_host("h1")
    assert host is not None
    assert host.management_server_id == "ms1"  # the owner follows the host up (cloudha keeps it)
    assert host.disconnected_on == world.clock.monotonic()


def test_undetermined_waits_until_alert_wait(world: World) -> None:
    world.add_host("h1", last_ping=world.clock.monotonic())
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.UP
    assert "h1" in world.agents.ping_map
    assert world.alerts.alerts == []
    world.clock.advance(world.settings.alert_wait + 1)
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.ALERT
    assert world.alerts.subjects() == ["Host in ALERT state, h1"]
    assert world.scheduler.scheduled == []


def test_alive_but_unreachable_from_up_goes_alert_at_once(world: World) -> None:
    # CloudStack's quirk kept: Up + AgentDisconnected -> Alert, despite the alert text.
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.ALERT
    assert world.alerts.subjects() == ["Host disconnected, h1"]


def test_disconnected_host_waited_too_long(world: World) -> None:
    world.add_host("h1", status=Status.DISCONNECTED, last_ping=world.clock.monotonic())
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DISCONNECTED
    world.clock.advance(world.settings.alert_wait + 1)
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.ALERT
    assert world.directory.changes[-1].event is Event.WAITED_TOO_LONG


def test_chain_up_applies_ping(world: World) -> None:
    world.add_host("h1", status=Status.DISCONNECTED, last_ping=0.0)
    world.investigator.script["h1"] = Verdict.ALIVE
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.UP  # Disconnected + Ping -> Up


def test_no_investigation_when_not_heading_to_alert(world: World) -> None:
    world.add_host("h1", status=Status.DOWN)
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DOWN
    assert world.evidence.records(kind="investigation") == []
    # Re-read Down: CloudStack schedules again; the work queue de-duplicates.
    assert world.scheduler.scheduled == [ScheduledRestart("h1", True, ReasonType.HOST_DOWN)]


def test_virtual_host_types_are_alert_without_asking(world: World) -> None:
    world.add_host("cp", host_type=HostType.CONSOLE_PROXY)
    world.gateway.healthy["cp"] = True
    assert world.agents.disconnect_with_investigation("cp", Event.AGENT_DISCONNECTED)
    assert world.status("cp") is Status.ALERT
    assert world.gateway.calls == []


def test_vm_ha_disabled_makes_investigation_alert() -> None:
    w = make_world({"vm.ha.enabled": False})
    w.add_host("h1")
    w.investigator.script["h1"] = Verdict.DEAD
    assert w.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert w.status("h1") is Status.ALERT
    assert w.investigator.asked == []
    assert w.alerts.subjects() == ["VM HA disabled, h1", "Host in ALERT state, h1"]


def test_without_investigation_disconnects(world: World) -> None:
    world.add_host("h1")
    assert world.agents.disconnect_without_investigation("h1", Event.SHUTDOWN_REQUESTED)
    assert world.status("h1") is Status.DISCONNECTED
    assert "h1" not in world.agents.ping_map


def test_without_investigation_missing_transition_is_recorded_not_raised(world: World) -> None:
    world.add_host("h1", status=Status.ALERT)
    assert not world.agents.disconnect_without_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.ALERT
    assert "transition_refused" in world.kinds("h1")
    assert "h1" not in world.agents.ping_map


def test_lost_race_is_reported_not_applied(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD

    original = world.directory.update_status

    def racing(change: object) -> bool:
        host = world.directory.find_host("h1")
        assert host is not None
        world.directory.replace(host)  # someone else updates the row first
        world.directory.update_status = original  # type: ignore[method-assign]
        return original(change)  # type: ignore[arg-type]

    world.directory.update_status = racing  # type: ignore[method-assign]
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.UP
    assert "status_conflict" in world.kinds("h1")
    assert world.scheduler.scheduled == []


def test_removed_host_is_forgotten(world: World) -> None:
    world.add_host("h1")
    world.directory.remove("h1")
    assert not world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert "h1" not in world.agents.ping_map
    assert world.kinds("h1") == ["monitor_dropped"]


def test_mark_hosts_as_disconnected_gives_fresh_grace(world: World) -> None:
    world.add_host("up", connect=False)
    world.add_host("alert", status=Status.ALERT, connect=False)
    other = world.add_host("other", connect=False)
    world.directory.replace(attrs.evolve(other, management_server_id="ms2"))
    marked = world.agents.mark_hosts_as_disconnected()
    assert marked == ["up"]
    host = world.directory.find_host("up")
    assert host is not None
    assert host.status is Status.DISCONNECTED
    assert host.last_ping == world.clock.monotonic() - world.settings.behind_on_ping_timeout
    assert "up" in world.agents.ping_map
    assert world.agents.ping_map.last_ping("up") == world.clock.monotonic()
    assert "alert" not in world.agents.ping_map
    assert "other" not in world.agents.ping_map


def test_listener_is_told_of_connect_and_disconnect(world: World) -> None:
    seen: list[tuple[str, str]] = []

    class Listener:
        def process_connect(self, host: object) -> None:
            seen.append(("connect", getattr(host, "id", "")))

        def process_disconnect(self, host_id: str, status: Status) -> None:
            seen.append(("disconnect", f"{host_id}:{status}"))

    world.agents.add_connection_listener(Listener())
    world.add_host("h1", status=None, connect=False)
    world.agents.agent_connected("h1")
    world.agents.agent_shutdown("h1")
    assert seen == [("connect", "h1"), ("disconnect", "h1:Disconnected")]


def test_link_closed_investigates_with_agent_disconnected(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    assert world.agents.agent_link_closed("h1")
    inv = world.evidence.records(kind="investigation")[-1]
    assert inv.details["trigger"] == "AgentDisconnected"
    assert world.status("h1") is Status.DOWN


def test_alert_sink_failure_does_not_stop_handling() -> None:
    w = make_world()
    w.add_host("h1")
    w.investigator.script["h1"] = Verdict.DEAD

    def broken(alert: object) -> None:
        raise OSError("smtp down")

    w.alerts.send = broken  # type: ignore[method-assign]
    assert w.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert w.status("h1") is Status.DOWN
    assert w.scheduler.scheduled


# -- hosts left in Alert are investigated again -----------------------------------


def test_host_left_in_alert_is_rechecked_until_found_down(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    world.clock.advance(world.settings.behind_on_ping_timeout + 1)
    world.monitor.tick()
    assert world.status("h1") is Status.ALERT
    assert "h1" not in world.agents.ping_map
    assert world.agents.alert_watch == frozenset({"h1"})

    world.run_monitor(world.clock.monotonic() + 3 * world.settings.ping_interval)
    rechecks = list(world.evidence.records(kind="investigation", host="h1"))[1:]
    assert len(rechecks) == 3
    assert {r.details["trigger"] for r in rechecks} == {"AlertRecheck"}
    assert world.status("h1") is Status.ALERT
    assert world.scheduler.scheduled == []

    world.investigator.script["h1"] = Verdict.DEAD
    world.run_monitor(world.clock.monotonic() + world.settings.ping_interval + 1)
    assert world.status("h1") is Status.DOWN
    assert world.scheduler.scheduled == [ScheduledRestart("h1", True, ReasonType.HOST_DOWN)]
    assert world.agents.alert_watch == frozenset()
    assert "Host down, h1" in world.alerts.subjects()


def test_alert_watch_ends_when_the_agent_reconnects(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    world.clock.advance(world.settings.behind_on_ping_timeout + 1)
    world.monitor.tick()
    assert world.agents.alert_watch == frozenset({"h1"})
    assert world.agents.agent_connected("h1")
    assert world.status("h1") is Status.UP
    assert world.agents.alert_watch == frozenset()
    assert world.agents.recheck_alerted() == []


def test_alert_watch_drops_hosts_changed_or_removed_elsewhere(world: World) -> None:
    world.add_host("h1")
    world.add_host("h2")
    world.investigator.script.update({"h1": Verdict.ALIVE, "h2": Verdict.ALIVE})
    world.investigator.unreachable.update({"h1", "h2"})
    world.clock.advance(world.settings.behind_on_ping_timeout + 1)
    world.monitor.tick()
    assert world.agents.alert_watch == frozenset({"h1", "h2"})
    world.directory.remove("h1")
    row = world.directory.find_host("h2")
    assert row is not None
    world.directory.replace(attrs.evolve(row, status=Status.DISCONNECTED))
    world.investigator.script.update({"h1": Verdict.DEAD, "h2": Verdict.DEAD})
    world.clock.advance(world.settings.ping_interval)
    assert world.agents.recheck_alerted() == []
    assert world.agents.alert_watch == frozenset()
    assert world.scheduler.scheduled == []


def test_system_vm_agents_in_alert_are_not_watched(world: World) -> None:
    world.add_host("cp", host_type=HostType.CONSOLE_PROXY)
    world.agents.disconnect_with_investigation("cp", Event.AGENT_DISCONNECTED)
    assert world.status("cp") is Status.ALERT
    assert world.agents.alert_watch == frozenset()


# -- a verdict that shows nothing running: the VMs are handed over proven stopped ------


class _FlakyScheduler:
    """Fails ``failures`` hand-overs, then records them like RecordingHAScheduler."""

    def __init__(self, world: World, failures: int) -> None:
        self.world = world
        self.failures = failures

    def schedule_restart_for_vms_on_host(
        self, host: object, *, investigate: bool, reason: ReasonType
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("orchestrator down")
        self.world.scheduler.schedule_restart_for_vms_on_host(
            host,  # type: ignore[arg-type]
            investigate=investigate,
            reason=reason,
        )


def test_a_down_verdict_that_shows_nothing_running_hands_over_without_investigation(
    world: World,
) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    world.investigator.nothing_runs.add("h1")  # the BMC read its power Off, say
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DOWN
    assert world.scheduler.scheduled == [ScheduledRestart("h1", False, ReasonType.HOST_DOWN)]
    (scheduled,) = world.evidence.records(kind="ha_scheduled")
    assert scheduled.details["investigate"] is False
    assert "no fence needed" in scheduled.reason
    (inv,) = world.evidence.records(kind="investigation")
    assert inv.details["findings"][-1]["no_vm_runs"] is True


def test_a_dead_verdict_without_such_a_finding_still_investigates(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD  # a stale heartbeat: no VM was seen dead
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.scheduler.scheduled == [ScheduledRestart("h1", True, ReasonType.HOST_DOWN)]
    (scheduled,) = world.evidence.records(kind="ha_scheduled")
    assert scheduled.details["investigate"] is True


def test_the_proof_holds_for_the_retries_of_a_failed_hand_over(world: World) -> None:
    world.agents.scheduler = _FlakyScheduler(world, failures=2)
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    world.investigator.nothing_runs.add("h1")
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    for _ in range(2):
        at = world.agents.next_hand_over_at()
        assert at is not None
        world.clock.set(at)
        world.agents.retry_hand_overs()
    assert world.agents.pending_hand_overs == frozenset()
    assert world.scheduler.scheduled == [ScheduledRestart("h1", False, ReasonType.HOST_DOWN)]


def test_a_proof_never_outlives_its_verdict(world: World) -> None:
    # Down with the power read Off, hand-over failing; the host comes back Up,
    # and is Down again later on a stale heartbeat alone: that verdict proves
    # nothing, and its hand-over must investigate.
    world.agents.scheduler = _FlakyScheduler(world, failures=1)
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    world.investigator.nothing_runs.add("h1")
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.agents.pending_hand_overs == frozenset({"h1"})
    host = world.directory.find_host("h1")
    assert host is not None
    world.directory.add(attrs.evolve(host, status=Status.UP))  # reconnected
    world.agents.ping_map.connect("h1")
    world.investigator.nothing_runs.clear()
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DOWN
    assert world.scheduler.scheduled == [ScheduledRestart("h1", True, ReasonType.HOST_DOWN)]


def test_declare_down_takes_host_ha_s_word_without_an_investigation(world: World) -> None:
    world.add_host("h1")
    world.agents.agent_connected("h1")
    assert "h1" in world.agents.ping_map
    assert world.agents.declare_down("h1", "Host-HA fenced the host", no_vm_runs=True)
    assert world.status("h1") is Status.DOWN
    assert "h1" not in world.agents.ping_map
    assert world.investigator.asked == []
    assert world.alerts.subjects() == ["Host down, h1"]
    assert world.scheduler.scheduled == [ScheduledRestart("h1", False, ReasonType.HOST_DOWN)]
    # Already Down: handed over again (the scheduler skips VMs that have work), no new alert.
    assert world.agents.declare_down("h1", "again", no_vm_runs=False)
    assert world.scheduler.scheduled[-1] == ScheduledRestart("h1", True, ReasonType.HOST_DOWN)
    assert world.alerts.subjects() == ["Host down, h1"]
    assert not world.agents.declare_down("nope", "no such host", no_vm_runs=True)
