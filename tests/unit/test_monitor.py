"""MonitorTask: deadline-driven examination, skip rules and re-examination (spec §2.3)."""

from __future__ import annotations

import itertools
import logging

import pytest

from cloudha import ConfigurationError, Host, HostType, MonitorTask, ResourceState, Status, Verdict
from cloudha.errors import ProbeConnectionError

from .conftest import World


def behind_events(world: World) -> list[tuple[str | None, float]]:
    return [(r.host, r.t) for r in world.evidence.records(kind="behind_on_ping")]


def test_host_examined_at_its_own_deadline_not_a_whole_interval_later(world: World) -> None:
    timeout = world.settings.behind_on_ping_timeout  # 150 s
    world.add_host("h1")
    start = world.clock.monotonic()
    world.clock.advance(37)  # the monitor's rounds do not line up with the host's pings
    world.add_host("h2")
    world.run_monitor(start + 400)
    events: dict[str | None, float] = {}
    for host, t in behind_events(world):
        events.setdefault(host, t)  # the first examination
    assert set(events) == {"h1", "h2"}
    for host, connected in (("h1", start), ("h2", start + 37)):
        delay = events[host] - connected
        assert timeout < delay <= timeout + world.monitor.resolution + 1e-9


def test_pinging_hosts_are_never_examined(world: World) -> None:
    world.add_host("h1")
    for _ in range(20):
        world.clock.advance(world.settings.ping_interval)
        world.agents.ping_received("h1")
        world.monitor.tick()
    assert behind_events(world) == []
    assert world.monitor.examined == 0


def test_undetermined_host_is_examined_again_each_interval(world: World) -> None:
    world.add_host("h1")
    start = world.clock.monotonic()
    world.run_monitor(start + 150 + 1.5 + 3 * 60 + 1)
    times = [t - start for _, t in behind_events(world)]
    assert len(times) == 4
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [60.0] * 3
    assert world.status("h1") is Status.UP  # not determined, alert.wait not reached


def test_dead_host_goes_down_once(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    world.run_monitor(world.clock.monotonic() + 1000)
    assert world.status("h1") is Status.DOWN
    assert len(behind_events(world)) == 1
    assert len(world.scheduler.scheduled) == 1


def test_monitor_wakes_rarely_when_idle(world: World) -> None:
    world.add_host("h1")
    for _ in range(10):
        delay = world.monitor.tick()
        assert delay > 0
        world.clock.advance(min(delay, 50))
        world.agents.ping_received("h1")
    assert world.monitor.next_delay() <= world.settings.ping_interval


@pytest.mark.parametrize("state", [ResourceState.DISABLED, ResourceState.MAINTENANCE])
def test_disabled_hosts_disconnect_without_investigation(
    world: World, state: ResourceState
) -> None:
    world.add_host("h1", resource_state=state)
    world.gateway.healthy["h1"] = True
    world.run_monitor(world.clock.monotonic() + 200)
    assert world.status("h1") is Status.DISCONNECTED
    assert world.evidence.records(kind="investigation") == []
    assert world.gateway.calls == []


def test_ssvm_agent_disconnects_without_investigation(world: World) -> None:
    world.add_host("s1", host_type=HostType.SECONDARY_STORAGE_VM)
    world.run_monitor(world.clock.monotonic() + 200)
    assert world.status("s1") is Status.DISCONNECTED
    assert world.evidence.records(kind="investigation") == []


def test_host_gone_from_directory_is_dropped(world: World) -> None:
    world.add_host("h1")
    world.directory.remove("h1")
    world.run_monitor(world.clock.monotonic() + 200)
    assert "h1" not in world.agents.ping_map
    assert "monitor_dropped" in world.kinds("h1")


def test_one_failing_host_does_not_stop_the_others(world: World) -> None:
    world.add_host("bad")
    world.add_host("good")
    world.investigator.script["good"] = Verdict.DEAD

    find = world.directory.find_host

    def explode(host_id: str) -> object:
        if host_id == "bad":
            raise RuntimeError("database hiccup")
        return find(host_id)

    world.directory.find_host = explode  # type: ignore[method-assign,assignment]
    world.run_monitor(world.clock.monotonic() + 200)
    world.directory.find_host = find  # type: ignore[method-assign]
    assert world.status("good") is Status.DOWN
    assert "bad" in world.agents.ping_map  # kept, examined again next round


def test_a_directory_that_does_not_answer_is_a_warning_not_a_traceback(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add_host("h1")
    find = world.directory.find_host

    def outage(host_id: str) -> object:
        raise ProbeConnectionError("the host directory does not answer")

    world.directory.find_host = outage  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING, logger="cloudha.detection.monitor"):
        world.run_monitor(world.clock.monotonic() + 200)
    world.directory.find_host = find  # type: ignore[method-assign]
    examined = [r for r in caplog.records if r.name == "cloudha.detection.monitor"]
    assert examined
    assert all(r.exc_info is None for r in examined)
    assert "examining h1: the host directory does not answer; examined again in 60s" in (
        examined[0].getMessage()
    )
    assert "h1" in world.agents.ping_map  # kept, examined again once it answers


def test_gateway_bugs_count_as_no_answer(world: World) -> None:
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD

    def explode(host: object, *, timeout: float) -> bool:
        raise ConnectionResetError("peer reset")

    world.gateway.check_health = explode  # type: ignore[method-assign]
    world.run_monitor(world.clock.monotonic() + 200)
    assert world.status("h1") is Status.DOWN
    finding = world.evidence.records(kind="investigation")[0].details["findings"][0]
    assert finding["source"] == "CheckHealth"
    assert finding["verdict"] == "UNKNOWN"


def test_resolution_must_be_positive(world: World) -> None:
    with pytest.raises(ConfigurationError, match="resolution"):
        MonitorTask(world.agents, resolution=0)


class Maintenance:
    def __init__(self, ready: set[str]) -> None:
        self.ready = ready
        self.asked: list[str] = []

    def check_and_maintain(self, host: Host) -> bool:
        self.asked.append(host.id)
        return host.id in self.ready


def test_hosts_preparing_for_maintenance_get_their_step_once_per_interval() -> None:
    from .conftest import make_world

    checker = Maintenance({"ready"})
    world = make_world()
    world.agents.maintenance = checker
    world.add_host("ready", resource_state=ResourceState.PREPARE_FOR_MAINTENANCE, connect=False)
    world.add_host(
        "busy", resource_state=ResourceState.ERROR_IN_PREPARE_FOR_MAINTENANCE, connect=False
    )
    world.add_host("plain", connect=False)
    ticks = world.run_monitor(world.clock.monotonic() + 3 * 60 + 1)
    assert ticks == 4
    assert sorted(checker.asked) == sorted(["ready", "busy"] * 4)
    assert world.alerts.subjects() == ["Migration Complete for host ready"] * 4
