"""Storm protection: suspicion fences paced per failure domain, held when a domain is silent."""

from __future__ import annotations

import attrs
import pytest

from cloudha.detection.storm import StormGuard
from cloudha.errors import ConfigurationError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.model import Host, ResourceState
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import FakeClock, InMemoryHostDirectory, RecordingAlertSink


def fleet(
    clusters: int = 2, per_cluster: int = 20, settings: dict[str, object] | None = None
) -> tuple[StormGuard, FakeClock, InMemoryHostDirectory, EvidenceLog, RecordingAlertSink]:
    clock = FakeClock(0.0)
    directory = InMemoryHostDirectory(
        Host(f"c{c}h{i}", cluster=f"c{c}", status=Status.UP, rack=f"r{i % 4}")
        for c in range(clusters)
        for i in range(per_cluster)
    )
    log = EvidenceLog()
    alerts = RecordingAlertSink()
    guard = StormGuard(
        Settings.from_mapping(settings or {}), clock, directory, Recorder(log, clock, "ms1"), alerts
    )
    return guard, clock, directory, log, alerts


def silence(directory: InMemoryHostDirectory, *host_ids: str) -> None:
    for host_id in host_ids:
        host = directory.find_host(host_id)
        assert host is not None
        directory.replace(attrs.evolve(host, status=Status.ALERT))


def fence(guard: StormGuard, directory: InMemoryHostDirectory, host_id: str) -> bool:
    host = directory.find_host(host_id)
    assert host is not None
    admission = guard.admit(host)
    if admission.allowed:
        guard.spend(host)
    return admission.allowed


def test_the_budget_is_a_tenth_of_the_domain_per_window() -> None:
    guard, clock, directory, log, _ = fleet()
    dead = [f"c0h{i}" for i in range(5)]
    silence(directory, *dead)
    # cluster c0: 20 hosts, 10 % = 2 per 300 s (the zone's 4 is not the limit here)
    assert [fence(guard, directory, h) for h in dead] == [True, True, False, False, False]
    (held, *_) = log.records(kind="storm")
    assert held.details["rule"] == "budget"
    assert "cluster c0: the fence budget is spent (2 of 2 suspicion fences in 300 s)" in held.reason
    clock.advance(299.0)
    assert not fence(guard, directory, dead[2])
    clock.advance(1.0)
    assert [fence(guard, directory, h) for h in dead[2:]] == [True, True, False]


def test_a_small_domain_still_gets_one_fence_per_window() -> None:
    guard, _, directory, _, _ = fleet(clusters=1, per_cluster=3)
    silence(directory, "c0h0")
    assert fence(guard, directory, "c0h0")
    silence(directory, "c0h1")
    assert not fence(guard, directory, "c0h1")


def test_the_zone_budget_binds_across_clusters() -> None:
    guard, _, directory, _, _ = fleet(clusters=4, per_cluster=10)  # zone of 40: 4 per window
    dead = [f"c{c}h0" for c in range(4)] + ["c0h1"]
    silence(directory, *dead)
    # each cluster (10 hosts) allows 1; the zone allows 4
    assert [fence(guard, directory, h) for h in dead] == [True, True, True, True, False]


def test_a_domain_more_than_half_silent_is_held_with_an_alert_once() -> None:
    guard, _, directory, log, alerts = fleet()
    dead = [f"c0h{i}" for i in range(11)]  # 11 of 20: 55 % > 50 %
    silence(directory, *dead)
    assert not fence(guard, directory, "c0h0")
    assert not fence(guard, directory, "c0h1")
    held = log.records(kind="storm")
    assert {r.details["rule"] for r in held} == {"disruption"}
    assert "11 of 20 hosts are silent, more than 50%" in held[0].reason
    assert alerts.subjects() == ["cloudha holds suspicion fences in cluster c0"]
    facts = held[0].details["domains"][0]
    assert (facts["domain"], facts["size"], facts["silent"]) == ("cluster", 20, 11)


def test_exactly_half_silent_is_not_a_disruption() -> None:
    guard, _, directory, _, _ = fleet(per_cluster=10)
    silence(directory, *[f"c0h{i}" for i in range(5)])
    assert fence(guard, directory, "c0h0")


def test_the_rack_domain_counts_hosts_by_their_rack_label() -> None:
    guard, _, directory, log, _ = fleet(settings={"cloudha.storm.domains": ["rack"]})
    # rack r1: c0h1, c0h5, ..., c1h17 (10 hosts over both clusters); 6 silent
    rack = [h.id for h in directory.list_hosts() if h.rack == "r1"]
    assert len(rack) == 10
    silence(directory, *rack[:6])
    assert not fence(guard, directory, rack[0])
    assert log.records(kind="storm")[0].details["domains"][0]["name"] == "r1"


def test_maintenance_hosts_are_not_part_of_a_domain() -> None:
    guard, _, directory, _, _ = fleet(clusters=1, per_cluster=4)
    for i in (2, 3):
        host = directory.find_host(f"c0h{i}")
        assert host is not None
        directory.replace(attrs.evolve(host, resource_state=ResourceState.MAINTENANCE))
    silence(directory, "c0h0")
    assert fence(guard, directory, "c0h0")  # 1 of 2 silent: not more than half


def test_a_budget_of_zero_stops_every_suspicion_fence() -> None:
    guard, _, directory, _, _ = fleet(settings={"cloudha.storm.fence.budget": 0.0})
    silence(directory, "c0h0")
    assert not fence(guard, directory, "c0h0")


def test_a_threshold_of_one_turns_the_disruption_stop_off() -> None:
    guard, _, directory, _, _ = fleet(
        clusters=1, per_cluster=3, settings={"cloudha.storm.disruption.threshold": 1.0}
    )
    silence(directory, "c0h0", "c0h1", "c0h2")
    assert fence(guard, directory, "c0h0")


def test_an_unknown_domain_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as raised:
        fleet(settings={"cloudha.storm.domains": ["cluster", "building"]})
    assert raised.value.key == "cloudha.storm.domains"
    assert "'building'" in str(raised.value)
