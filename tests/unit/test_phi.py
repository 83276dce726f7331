"""Phi accrual detection: the formula, its inverse, the window, and the monitor's use of it."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from cloudha import ConfigurationError, PingMap, Settings, Verdict
from cloudha.detection.deadlines import HostDeadlines
from cloudha.detection.phi import MAX_PHI, ArrivalWindow, PhiAccrualDetector, phi
from cloudha.testing import FakeClock

from .conftest import make_world

PHI_ON = {"cloudha.phi.enabled": True}


def akka_phi(elapsed: float, mean: float, std: float) -> float:
    """Akka's PhiAccrualFailureDetector.phi, as written there (two branches)."""
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def detector(**overrides: float) -> PhiAccrualDetector:
    params: dict[str, Any] = {
        "threshold": 8.0,
        "min_std_deviation": 6.0,
        "acceptable_pause": 30.0,
        "window": 100,
        "expected_interval": 60.0,
    }
    params.update(overrides)
    return PhiAccrualDetector(**params)


# -- the formula -------------------------------------------------------------------


@pytest.mark.parametrize("elapsed", [0.0, 30.0, 59.0, 60.0, 61.0, 75.0, 90.0, 100.0])
def test_phi_is_akkas_formula(elapsed: float) -> None:
    assert phi(elapsed, 60.0, 10.0) == pytest.approx(akka_phi(elapsed, 60.0, 10.0), rel=1e-9)


def test_phi_at_the_mean_is_log10_2_and_grows_with_time() -> None:
    assert phi(60.0, 60.0, 5.0) == pytest.approx(math.log10(2.0))
    values = [phi(t, 60.0, 5.0) for t in range(0, 200, 5)]
    assert values == sorted(values)
    assert values[0] >= 0.0


def test_phi_never_overflows_and_is_capped() -> None:
    # Akka's own expression raises here: exp underflows to 0 and log10(0) is undefined.
    with pytest.raises(ValueError, match="math domain"):
        akka_phi(1e6, 60.0, 0.1)
    assert phi(1e6, 60.0, 0.1) == MAX_PHI
    assert phi(1e300, 60.0, 1e-300) == MAX_PHI
    assert phi(-1e300, 60.0, 1e-300) == 0.0
    assert 0.0 <= phi(0.0, 1e9, 1.0) < 1e-300


def test_phi_needs_a_positive_std_deviation() -> None:
    with pytest.raises(ValueError, match="std_deviation"):
        phi(1.0, 1.0, 0.0)


@pytest.mark.parametrize("threshold", [1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0])
@pytest.mark.parametrize(("mean", "std"), [(60.0, 6.0), (60.0, 20.0), (5.0, 0.5)])
def test_crossing_inverts_phi(threshold: float, mean: float, std: float) -> None:
    d = detector(threshold=threshold, acceptable_pause=0.1, min_std_deviation=0.1)
    window = ArrivalWindow(100, mean)
    for _ in range(99):
        window.add(mean)  # the two bootstrap samples keep a spread
    at = d.crossing(window)
    assert d.phi(window, at) == pytest.approx(threshold, rel=1e-9)
    assert d.phi(window, at - 0.01) < threshold <= d.phi(window, at + 1e-9)


def test_crossing_with_cloudhas_defaults_is_121_s_for_regular_pings() -> None:
    d = PhiAccrualDetector.from_settings(Settings.from_mapping(PHI_ON))
    assert d is not None
    window = d.new_window()
    for _ in range(200):
        window.add(60.0)
    # mean 60 + pause 30 + 5.226 x the 6 s floor: earlier than the fixed 150 s.
    assert d.crossing(window) == pytest.approx(60 + 30 + 5.226 * 6, abs=0.01)


# -- the window --------------------------------------------------------------------


def test_window_bootstraps_from_the_expected_interval_like_akka() -> None:
    window = ArrivalWindow(10, 60.0)
    assert len(window) == 2
    assert window.mean == pytest.approx(60.0)
    assert window.std_deviation == pytest.approx(15.0)


def test_window_keeps_only_its_last_samples_and_stays_exact() -> None:
    rng = random.Random(7)
    window = ArrivalWindow(50, 60.0)
    samples = [60.0 - 15.0, 60.0 + 15.0]
    for n in range(1, 1000):
        sample = rng.uniform(40.0, 80.0) if n % 7 else 1000.0
        window.add(sample)
        samples.append(sample)
        last = samples[-50:]
        assert len(window) == len(last)
        assert window.mean == pytest.approx(statistics.fmean(last), rel=1e-9)
        assert window.std_deviation == pytest.approx(statistics.pstdev(last), rel=1e-6, abs=1e-9)


def test_window_of_identical_samples_has_zero_spread_not_nan() -> None:
    window = ArrivalWindow(2, 60.0)
    for _ in range(5):
        window.add(60.0)
    assert window.std_deviation == 0.0
    assert window.mean == 60.0


def test_window_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ArrivalWindow(1, 60.0)


# -- the detector's parameters --------------------------------------------------------


def test_min_std_deviation_floors_the_spread_and_the_pause_shifts_the_mean() -> None:
    d = detector(min_std_deviation=6.0, acceptable_pause=30.0)
    window = ArrivalWindow(2, 60.0)
    window.add(60.0)
    window.add(60.0)  # spread 0: the floor applies
    assert d.phi(window, 90.0) == pytest.approx(math.log10(2.0))  # 60 + 30 is the mean
    assert d.phi(window, 96.0) == pytest.approx(phi(96.0, 90.0, 6.0))


def test_detector_is_off_by_default_and_built_from_settings() -> None:
    assert PhiAccrualDetector.from_settings(Settings()) is None
    d = PhiAccrualDetector.from_settings(
        Settings.from_mapping(
            {
                "cloudha.phi.enabled": True,
                "cloudha.phi.threshold": 12,
                "cloudha.phi.min.std.deviation": 2,
                "cloudha.phi.acceptable.pause": 10,
                "cloudha.phi.window": 1000,
                "ping.interval": 30,
            }
        )
    )
    assert d == PhiAccrualDetector(
        threshold=12.0,
        min_std_deviation=2.0,
        acceptable_pause=10.0,
        window=1000,
        expected_interval=30.0,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threshold", 0.0),
        ("threshold", math.inf),
        ("min_std_deviation", 0.0),
        ("acceptable_pause", -1.0),
        ("window", 1),
        ("expected_interval", math.nan),
    ],
)
def test_bad_detector_parameters_name_the_parameter(key: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=key) as excinfo:
        detector(**{key: value})
    assert excinfo.value.key == key


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cloudha.phi.threshold", 0.5),
        ("cloudha.phi.threshold", 17),
        ("cloudha.phi.min.std.deviation", 0),
        ("cloudha.phi.acceptable.pause", -5),
        ("cloudha.phi.window", 1),
        ("cloudha.phi.enabled", "yes"),
    ],
)
def test_bad_phi_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")) as excinfo:
        Settings.from_mapping({key: value})
    assert excinfo.value.key == key


# -- in the ping map -------------------------------------------------------------------


def phi_map(clock: FakeClock, **settings: object) -> PingMap:
    cfg = Settings.from_mapping({**PHI_ON, **{k.replace("_", "."): v for k, v in settings.items()}})
    return PingMap(clock, deadlines=HostDeadlines.from_settings(cfg, seed="ms1"))


def test_regular_pings_bring_the_deadline_earlier_than_the_timeout() -> None:
    clock = FakeClock(0.0)
    pm = phi_map(clock)
    pm.connect("h1")
    assert pm.deadline("h1") == 150.0  # the bootstrap spread: the fixed timeout rules
    for _ in range(30):
        clock.advance(60.0)
        pm.ping_by("h1")
    deadline = pm.deadline("h1")
    assert deadline is not None
    assert clock.monotonic() + 120.0 < deadline < clock.monotonic() + 150.0
    assert pm.next_due() == deadline
    clock.set(deadline)
    assert pm.overdue() == []
    clock.advance(1e-6)
    assert pm.overdue() == ["h1"]
    held = pm.phi("h1")
    assert held is not None
    assert held >= 8.0


def test_irregular_pings_never_push_the_deadline_past_the_timeout() -> None:
    clock = FakeClock(0.0)
    pm = phi_map(clock)
    pm.connect("h1")
    rng = random.Random(3)
    for _ in range(50):
        clock.advance(rng.choice([5.0, 60.0, 140.0]))
        pm.ping_by("h1")
        assert pm.deadline("h1") == clock.monotonic() + 150.0


def test_phi_never_triggers_before_one_interval() -> None:
    clock = FakeClock(0.0)
    pm = phi_map(
        clock,
        cloudha_phi_acceptable_pause=0.1,
        cloudha_phi_min_std_deviation=0.1,
        cloudha_phi_window=2,
    )
    pm.connect("h1")
    for _ in range(20):
        clock.advance(1.0)  # a host pinging far faster than ping.interval
        pm.ping_by("h1")
    assert pm.deadline("h1") == clock.monotonic() + 60.0


def test_phi_is_none_without_the_detector_or_for_a_host_not_monitored() -> None:
    clock = FakeClock(0.0)
    plain = PingMap(clock, deadlines=HostDeadlines.from_settings(Settings()))
    plain.connect("h1")
    assert plain.phi("h1") is None
    assert phi_map(clock).phi("ghost") is None


# -- in the monitor --------------------------------------------------------------------


def test_monitor_examines_a_regular_host_when_its_phi_crosses_and_records_it() -> None:
    world = make_world(PHI_ON)
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    for _ in range(30):
        world.clock.advance(60.0)
        world.agents.ping_received("h1")
        world.monitor.tick()
    last = world.clock.monotonic()
    deadline = world.agents.ping_map.deadline("h1")
    assert deadline is not None
    world.run_monitor(last + 400)
    (record,) = world.evidence.records(kind="behind_on_ping")
    assert deadline < record.t <= deadline + world.monitor.resolution + 1e-9
    assert record.t - last < 150.0
    assert record.details["detector"] == "phi"
    assert record.details["phi_threshold"] == 8.0
    assert record.details["phi"] >= 8.0
    assert record.details["timeout"] == 150.0
    assert record.reason.startswith("no ping for ")
    assert "phi " in record.reason
    assert world.scheduler.scheduled  # detection only triggered it: the verdict was the chain's


def test_without_phi_the_record_has_no_phi_and_the_timeout_fires() -> None:
    world = make_world()
    world.add_host("h1")
    world.run_monitor(world.clock.monotonic() + 200)
    record = world.evidence.records(kind="behind_on_ping")[0]
    assert "phi" not in record.details
    assert "phi_threshold" not in record.details
    assert record.details["detector"] == "timeout"
    assert record.details["timeout"] == 150.0


def test_concurrent_pings_connects_and_disconnects_keep_the_deadline_index_exact() -> None:
    import threading

    from cloudha import SystemClock

    clock = SystemClock()
    deadlines = HostDeadlines.from_settings(Settings.from_mapping(PHI_ON), seed="ms1")
    pm = PingMap(clock, deadlines=deadlines)
    hosts = [f"h{i}" for i in range(1000)]
    for h in hosts:
        pm.connect(h)
    gone = set(hosts[::3])
    start = threading.Barrier(4)

    def pinger() -> None:
        start.wait()
        for _ in range(10):
            for h in hosts:
                pm.ping_by(h)

    def churn() -> None:
        start.wait()
        for h in gone:
            pm.connect(h)
            pm.disconnect(h)

    def watcher() -> None:
        start.wait()
        for _ in range(100):
            pm.next_due()
            pm.overdue()

    threads = [threading.Thread(target=f) for f in (pinger, pinger, churn, watcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert set(pm.hosts()) == set(hosts) - gone
    due = [d for h in pm.hosts() if (d := pm.deadline(h)) is not None]
    assert len(due) == len(pm)
    assert pm.next_due() == min(due)
