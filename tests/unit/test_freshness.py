"""Freshness: the monitor judges others only while its own view is fresh."""

from __future__ import annotations

import pytest

from cloudha.detection import PingMap
from cloudha.detection.freshness import Freshness
from cloudha.errors import ProbeConnectionError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.settings import Settings
from cloudha.testing import FakeClock, RecordingAlertSink

INTERVAL = 60.0


def make(
    hosts: int = 10, **settings: object
) -> tuple[Freshness, FakeClock, PingMap, EvidenceLog, RecordingAlertSink, set[str]]:
    clock = FakeClock(1000.0)
    ping_map = PingMap(clock)
    for i in range(hosts):
        ping_map.connect(f"h{i}")
    log = EvidenceLog()
    alerts = RecordingAlertSink()
    off: set[str] = set()
    freshness = Freshness(
        Settings.from_mapping({"ping.interval": INTERVAL, **settings}),
        clock,
        ping_map,
        Recorder(log, clock, "ms1"),
        alerts,
        powered_off=off.__contains__,
    )
    return freshness, clock, ping_map, log, alerts, off


def tick(freshness: Freshness, clock: FakeClock, ping_map: PingMap, pinging: list[str]) -> bool:
    clock.advance(INTERVAL)
    for host in pinging:
        ping_map.ping_by(host)
    freshness.note_directory(None)
    return freshness.evaluate()


def test_a_new_server_judges_only_after_two_fresh_intervals() -> None:
    freshness, clock, ping_map, log, _, _ = make()
    everyone = ping_map.hosts()
    assert not freshness.judging()
    assert not tick(freshness, clock, ping_map, everyone)
    assert tick(freshness, clock, ping_map, everyone)
    kinds = [r.details["judging"] for r in log.records(kind="freshness")]
    assert kinds == [False, True]


def test_too_few_pings_stop_judging_with_a_reason_and_an_alert() -> None:
    freshness, clock, ping_map, log, alerts, _ = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    # only 2 of 10 hosts ping (20 % < 30 %): the observer is the likelier fault, once the
    # others' last pings are older than the window (2 intervals)
    assert tick(freshness, clock, ping_map, everyone[:2])
    assert tick(freshness, clock, ping_map, everyone[:2])
    assert not tick(freshness, clock, ping_map, everyone[:2])
    record = log.records(kind="freshness")[-1]
    assert record.reason.startswith("not fresh, because only 2 of 10 monitored hosts pinged")
    assert record.details["ping_share"] == 0.2
    assert alerts.subjects() == ["cloudha stops judging hosts"]
    # back: judging resumes after two fresh intervals in a row
    assert not tick(freshness, clock, ping_map, everyone)
    assert tick(freshness, clock, ping_map, everyone)


def test_three_of_ten_pinging_is_still_fresh() -> None:
    freshness, clock, ping_map, _, _, _ = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    for _ in range(4):
        assert tick(freshness, clock, ping_map, everyone[:3])


def test_hosts_whose_bmc_reads_off_are_not_expected_to_ping() -> None:
    freshness, clock, ping_map, _, _, off = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    off.update(everyone[2:])  # a rack lost its power: 8 of 10 read Off
    for _ in range(3):  # their last pings age past the window: silent, but known Off
        assert tick(freshness, clock, ping_map, everyone[:2])
    view = freshness.view
    assert view is not None
    assert (view.monitored, view.pinged) == (2, 2)


def test_a_pause_longer_than_the_window_is_seen_at_once() -> None:
    freshness, clock, ping_map, log, _, _ = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    clock.advance(600.0)  # the process stalled; it wakes with every ping stale
    freshness.note_directory(None)
    assert not freshness.evaluate()
    assert "did not run for 600 s (a pause)" in log.records(kind="freshness")[-1].reason
    assert freshness.hold("investigation", host="h1")
    assert freshness.hold("investigation", host="h1")  # recorded once per interval
    held = [r for r in log.records(kind="freshness") if r.details.get("held")]
    assert [(r.host, r.details["held"]) for r in held] == [("h1", "investigation")]
    assert freshness.hold("HA work", record=False)
    assert len(log.records(kind="freshness")) == len(held) + 3


def test_a_silent_directory_makes_the_desired_state_stale() -> None:
    freshness, clock, ping_map, _log, _, _ = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    for _ in range(3):
        clock.advance(INTERVAL)
        for host in everyone:
            ping_map.ping_by(host)
        freshness.note_directory(ProbeConnectionError("the host directory does not answer"))
        freshness.evaluate()
    view = freshness.view
    assert view is not None
    assert view.actual
    assert not view.desired
    assert "the host directory last answered" in view.reasons[0]
    assert "ProbeConnectionError" in view.reasons[0]
    assert not freshness.judging()


def test_a_store_that_refuses_writes_makes_the_actual_state_stale() -> None:
    freshness, clock, ping_map, _, _, _ = make()
    everyone = ping_map.hosts()
    tick(freshness, clock, ping_map, everyone)
    tick(freshness, clock, ping_map, everyone)
    freshness.note_store(OSError("disk full"))
    assert not tick(freshness, clock, ping_map, everyone)
    view = freshness.view
    assert view is not None
    assert "the HA work store refused its last write (OSError: disk full)" in view.reasons
    freshness.note_store(None)
    tick(freshness, clock, ping_map, everyone)
    assert tick(freshness, clock, ping_map, everyone)


def test_the_directory_is_probed_when_nothing_asked_it() -> None:
    clock = FakeClock(0.0)
    ping_map = PingMap(clock)
    ping_map.connect("h1")
    probes: list[float] = []
    freshness: Freshness

    def probe() -> None:
        probes.append(clock.monotonic())
        freshness.note_directory(None)

    freshness = Freshness(
        Settings(),
        clock,
        ping_map,
        Recorder(EvidenceLog(), clock, "ms1"),
        RecordingAlertSink(),
        probe_directory=probe,
    )
    for _ in range(4):
        clock.advance(60.0)
        ping_map.ping_by("h1")
        freshness.evaluate()
    assert probes == [120.0, 240.0]  # whenever its last answer is half a window old
    assert freshness.judging()


def test_disabled_freshness_always_judges() -> None:
    freshness, clock, _ping_map, _, _, _ = make(**{"cloudha.freshness.enabled": False})
    assert freshness.judging()
    clock.advance(10_000.0)
    assert freshness.evaluate()
    assert not freshness.hold("investigation", host="h1")


def test_an_empty_fleet_is_fresh() -> None:
    freshness, clock, ping_map, _, _, _ = make(hosts=0)
    tick(freshness, clock, ping_map, [])
    assert tick(freshness, clock, ping_map, [])


@pytest.mark.parametrize("resume", [1, 3])
def test_resume_intervals_is_the_number_of_fresh_evaluations(resume: int) -> None:
    freshness, clock, ping_map, _, _, _ = make(**{"cloudha.freshness.resume.intervals": resume})
    everyone = ping_map.hosts()
    results = [tick(freshness, clock, ping_map, everyone) for _ in range(resume + 1)]
    assert results == [False] * (resume - 1) + [True, True]
