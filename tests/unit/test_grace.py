"""Grace and jitter: per-host timeouts, the doubled grace after a start, and exact deadlines."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

from cloudha import ConfigurationError, PingMap, Settings, Status, Verdict
from cloudha.detection.deadlines import START_GRACE_FACTOR, HostDeadlines
from cloudha.testing import FakeClock

from .conftest import World, make_world

TIMEOUT = Settings().behind_on_ping_timeout  # 150 s


# -- the formula -------------------------------------------------------------------


def test_defaults_give_cloudstacks_timeout_to_every_host() -> None:
    deadlines = HostDeadlines.from_settings(Settings(), seed="ms1")
    assert deadlines.base_timeout == TIMEOUT
    assert {deadlines.timeout_for(f"h{i}") for i in range(50)} == {TIMEOUT}
    assert deadlines.start_grace("h1") == 2 * TIMEOUT
    assert START_GRACE_FACTOR == 2.0


def test_timeout_is_interval_plus_epsilon_times_ping_timeout_times_multiplier() -> None:
    settings = Settings.from_mapping(
        {"cloudha.ping.jitter": 0.1, "cloudha.ping.grace.multiplier": 1.5}
    )
    deadlines = HostDeadlines.from_settings(settings, seed="ms1")
    for i in range(200):
        host = f"h{i}"
        epsilon = deadlines.epsilon(host)
        assert 0.0 <= epsilon <= 6.0  # 0.1 x the 60 s interval
        assert deadlines.timeout_for(host) == pytest.approx((60.0 + epsilon) * 2.5 * 1.5)
    spread = {deadlines.epsilon(f"h{i}") for i in range(200)}
    assert len(spread) == 200
    assert max(spread) - min(spread) > 5.0  # the hosts really are spread over [0, 6 s]


def test_epsilon_is_seeded_by_server_and_host_and_does_not_depend_on_order() -> None:
    settings = Settings.from_mapping({"cloudha.ping.jitter": 0.1})
    one = HostDeadlines.from_settings(settings, seed="ms1")
    again = HostDeadlines.from_settings(settings, seed="ms1")
    other = HostDeadlines.from_settings(settings, seed="ms2")
    hosts = [f"h{i}" for i in range(20)]
    forward = [one.epsilon(h) for h in hosts]
    backward = [again.epsilon(h) for h in reversed(hosts)][::-1]
    assert forward == backward
    assert forward != [other.epsilon(h) for h in hosts]


def test_the_random_source_can_be_injected() -> None:
    asked: list[str] = []

    def rng_for(host_id: str) -> random.Random:
        asked.append(host_id)
        return random.Random(42)

    deadlines = HostDeadlines(interval=60, timeout=2.5, jitter=6.0, rng_for=rng_for)
    expected = random.Random(42).uniform(0.0, 6.0)
    assert deadlines.epsilon("h1") == expected
    assert deadlines.timeout_for("h2") == (60 + expected) * 2.5
    assert asked == ["h1", "h2"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cloudha.ping.grace.multiplier", 0.5),
        ("cloudha.ping.grace.multiplier", 11),
        ("cloudha.ping.jitter", 1.5),
        ("cloudha.ping.jitter", -0.1),
        ("cloudha.ping.jitter", "a lot"),
    ],
)
def test_bad_grace_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")) as excinfo:
        Settings.from_mapping({key: value})
    assert excinfo.value.key == key


@pytest.mark.parametrize(
    ("name", "value"),
    [("interval", 0.0), ("timeout", float("nan")), ("grace_multiplier", -1.0), ("jitter", -1.0)],
)
def test_bad_deadline_parameters_name_the_parameter(name: str, value: float) -> None:
    params: dict[str, Any] = {"interval": 60.0, "timeout": 2.5, name: value}
    with pytest.raises(ConfigurationError, match=name) as excinfo:
        HostDeadlines(**params)
    assert excinfo.value.key == name


def test_a_grace_below_one_timeout_is_refused() -> None:
    pm = PingMap(FakeClock(0.0), deadlines=HostDeadlines(interval=60, timeout=2.5))
    with pytest.raises(ValueError, match="at least 1 timeout"):
        pm.connect("h1", grace=0.5)


# -- the ping map's deadlines are exact -------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"cloudha.ping.jitter": 0.2},
        {"cloudha.ping.jitter": 0.05, "cloudha.ping.grace.multiplier": 2.0},
        {"cloudha.phi.enabled": True, "cloudha.ping.jitter": 0.1},
        {"cloudha.phi.enabled": True, "cloudha.phi.window": 5, "cloudha.phi.threshold": 3},
    ],
)
def test_overdue_and_next_due_match_a_full_scan(settings: dict[str, object]) -> None:
    clock = FakeClock(0.0)
    deadlines = HostDeadlines.from_settings(Settings.from_mapping(settings), seed="ms1")
    pm = PingMap(clock, deadlines=deadlines)
    rng = random.Random(11)
    hosts = [f"h{i}" for i in range(300)]
    for host in hosts:
        pm.connect(host, grace=START_GRACE_FACTOR if rng.random() < 0.3 else 1.0)
    silent = set(rng.sample(hosts, 40))
    checks = 0
    for _ in range(400):
        clock.advance(rng.uniform(0.0, 3.0))
        for host in rng.sample(hosts, 12):
            if host not in silent:
                pm.ping_by(host)
        if rng.random() < 0.02:
            pm.disconnect(rng.choice(hosts))
        if rng.random() < 0.02:
            pm.connect(rng.choice(hosts))  # a reconnect, or a host back after a disconnect
        now = clock.monotonic()
        due = {h: d for h in pm.hosts() if (d := pm.deadline(h)) is not None}
        assert len(due) == len(pm)
        assert pm.overdue() == [h for h in pm.hosts() if due[h] < now]
        ahead = [d for d in due.values() if d >= now]
        assert pm.next_due() == (min(ahead) if ahead else None)
        checks += 1
    assert checks == 400
    assert pm.overdue()  # the silent hosts did fall behind


def test_without_deadlines_nothing_is_ever_overdue() -> None:
    clock = FakeClock(0.0)
    pm = PingMap(clock)
    pm.connect("h1")
    clock.advance(1e6)
    assert pm.overdue() == []
    assert pm.next_due() is None
    assert pm.deadline("h1") is None
    assert pm.timeout("h1") is None
    pm.use_deadlines(HostDeadlines(interval=60, timeout=2.5))
    assert pm.deadline("h1") == 150.0  # counted from its last ping
    assert pm.timeout("h1") == 150.0


def test_a_first_ping_ends_the_grace() -> None:
    clock = FakeClock(0.0)
    pm = PingMap(clock, deadlines=HostDeadlines(interval=60, timeout=2.5))
    pm.connect("h1", grace=START_GRACE_FACTOR)
    assert pm.held("h1")
    assert pm.deadline("h1") == 300.0
    clock.advance(20)
    pm.ping_by("h1")
    assert not pm.held("h1")
    assert pm.deadline("h1") == 170.0


# -- the doubled grace after a start -------------------------------------------------------


def restarted(settings: dict[str, object] | None = None) -> World:
    """A world whose server just started: h1 was Up and its agent has not reconnected."""
    world = make_world(settings)
    world.add_host("h1", connect=False)
    world.add_host("h2", connect=False)
    world.investigator.script.update({"h1": Verdict.DEAD, "h2": Verdict.DEAD})
    return world


def test_hosts_marked_at_a_start_get_no_verdict_for_two_timeouts(world: World) -> None:
    world = restarted()
    start = world.clock.monotonic()
    assert world.agents.mark_hosts_as_disconnected() == ["h1", "h2"]
    (grace,) = world.evidence.records(kind="grace")
    assert grace.details["grace"] == 2 * TIMEOUT
    assert grace.details["factor"] == 2.0
    assert grace.details["host_ids"] == ["h1", "h2"]
    assert grace.details["hosts"] == 2
    assert grace.details["timeout"] == TIMEOUT
    assert "doubled grace of 300s" in grace.reason
    row = world.directory.find_host("h1")
    assert row is not None
    assert row.disconnected_on == world.clock.now().timestamp()

    world.clock.advance(30)
    assert world.agents.agent_connected("h2")  # h2's agent is back: its grace ends
    assert not world.agents.ping_map.held("h2")
    assert world.agents.ping_map.deadline("h2") == start + 30 + TIMEOUT
    world.investigator.script["h2"] = Verdict.ALIVE
    while world.clock.monotonic() + 60 < start + 2 * TIMEOUT:
        world.run_monitor(world.clock.monotonic() + 60)
        world.agents.ping_received("h2")
    world.run_monitor(start + 2 * TIMEOUT)
    assert world.evidence.records(kind="investigation") == []
    assert world.evidence.records(kind="behind_on_ping") == []
    assert world.status("h1") is Status.DISCONNECTED

    world.run_monitor(start + 2 * TIMEOUT + world.monitor.resolution + 1e-6)
    (behind,) = world.evidence.records(kind="behind_on_ping")
    assert behind.host == "h1"
    assert behind.details["detector"] == "grace"
    assert "start grace 300.0s" in behind.reason
    assert world.status("h1") is Status.DOWN
    assert world.status("h2") is Status.UP


def test_the_grace_record_gives_the_longest_grace_with_jitter() -> None:
    world = restarted({"cloudha.ping.jitter": 0.1})
    world.agents.mark_hosts_as_disconnected()
    (grace,) = world.evidence.records(kind="grace")
    longest = max(world.agents.deadlines.start_grace(h) for h in ("h1", "h2"))
    assert grace.details["grace"] == round(longest, 3)
    assert 2 * TIMEOUT < longest <= 2 * (60 + 6) * 2.5


def lost_agent(world: World, host_id: str, status: Status, ago: float) -> None:
    row = world.directory.find_host(host_id)
    assert row is not None
    lost = world.clock.now().timestamp() - ago
    world.directory.replace(attrs.evolve(row, status=status, disconnected_on=lost))


@pytest.mark.parametrize("status", [Status.DISCONNECTED, Status.ALERT])
def test_a_re_adopted_host_waits_out_its_grace_from_when_it_lost_its_agent(
    status: Status,
) -> None:
    world = restarted()
    lost_agent(world, "h1", status, ago=100.0)
    start = world.clock.monotonic()
    assert world.agents.recover() == ["h1"]
    (recovery,) = world.evidence.records(kind="recovery")
    assert recovery.details["grace"] == {"h1": 2 * TIMEOUT - 100.0}
    world.run_monitor(start + 2 * TIMEOUT - 100.0 - 1.0)
    assert world.evidence.records(kind="investigation", host="h1") == []
    world.run_monitor(start + 2 * TIMEOUT)
    assert world.evidence.records(kind="investigation", host="h1")
    assert world.status("h1") is Status.DOWN


@pytest.mark.parametrize(("status", "first"), [(Status.DISCONNECTED, 60.0), (Status.ALERT, 0.0)])
def test_a_host_that_lost_its_agent_long_ago_is_not_held_again(
    status: Status, first: float
) -> None:
    # A server restarting in a loop must not put the verdict off for ever.
    world = restarted()
    lost_agent(world, "h1", status, ago=10 * TIMEOUT)
    start = world.clock.monotonic()
    world.agents.recover()
    (recovery,) = world.evidence.records(kind="recovery")
    assert recovery.details["grace"] == {"h1": first}
    world.run_monitor(start + first + 1.0)
    assert world.status("h1") is Status.DOWN


def test_hosts_known_connected_at_a_first_start_are_not_held() -> None:
    world = restarted()
    start = world.clock.monotonic()
    world.agents.recover(connected=["h1", "h2"])
    assert world.evidence.records(kind="grace") == []
    assert not world.agents.ping_map.held("h1")
    assert world.agents.ping_map.deadline("h1") == start + TIMEOUT


def test_the_grace_multiplier_stretches_detection() -> None:
    world = make_world({"cloudha.ping.grace.multiplier": 2.0})
    world.add_host("h1")
    start = world.clock.monotonic()
    world.run_monitor(start + 2 * TIMEOUT + world.monitor.resolution + 1e-6)
    (behind,) = world.evidence.records(kind="behind_on_ping")
    assert behind.t - start > 2 * TIMEOUT
    assert behind.details["timeout"] == 2 * TIMEOUT
