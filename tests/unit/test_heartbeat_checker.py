"""The heartbeat checker: per-pool readings and their aggregation (spec §6.3, its differences)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudha.errors import ConfigurationError, ProbeAuthError, ProbeTimeout
from cloudha.heartbeat import (
    HeartbeatChecker,
    HeartbeatReport,
    HeartbeatTiming,
    PoolReading,
    heartbeat_path,
)
from cloudha.investigators.base import Verdict
from cloudha.model import Pool
from cloudha.testing.clock import FakeClock
from cloudha.testing.heartbeat import MemoryStorage

T0 = 1_700_000_000
IP = "10.0.0.9"
TIMING = HeartbeatTiming()
LIMIT = TIMING.stale_after(1)  # 465 s
P1 = Pool("nfs1", "/mnt/nfs1")
P2 = Pool("nfs2", "/mnt/nfs2")
P3 = Pool("nfs3", "/mnt/nfs3")


class Setup:
    def __init__(self) -> None:
        self.clock = FakeClock(float(T0))
        self.storage = MemoryStorage(self.clock)
        self.checker = HeartbeatChecker(self.storage, self.clock, TIMING)

    def beat(self, pool: Pool, data: bytes | int) -> None:
        content = b"%d\n" % data if isinstance(data, int) else data
        self.storage.put(heartbeat_path(pool.mount_point, IP), content)

    def check(self, *pools: Pool, fail_on_one_pool: bool = False) -> HeartbeatReport:
        return self.checker.check(list(pools), IP, fail_on_one_pool=fail_on_one_pool)


class ErroringStorage(MemoryStorage):
    def __init__(self, clock: FakeClock, error: Exception) -> None:
        super().__init__(clock)
        self.error = error

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        raise self.error


@pytest.fixture
def s() -> Setup:
    return Setup()


# -- one pool --------------------------------------------------------------


def test_fresh_heartbeat_is_alive(s: Setup) -> None:
    s.beat(P1, T0 - 30)
    report = s.check(P1)
    assert report.verdict is Verdict.ALIVE
    assert report.threshold == LIMIT
    assert report.target_ip == IP
    (reading,) = report.readings
    assert reading == PoolReading(
        "nfs1",
        "/mnt/nfs1",
        Verdict.ALIVE,
        "heartbeat on nfs1 is 30 s old, limit 465 s",
        T0 - 30,
        30.0,
    )
    assert report.reason == reading.reason


def test_stale_by_exactly_the_threshold_is_alive(s: Setup) -> None:
    s.beat(P1, T0)
    s.clock.advance(LIMIT)
    assert s.check(P1).verdict is Verdict.ALIVE
    assert s.check(P1).readings[0].age == LIMIT


def test_stale_by_the_threshold_plus_epsilon_is_dead(s: Setup) -> None:
    s.beat(P1, T0)
    s.clock.advance(LIMIT + 0.001)
    report = s.check(P1)
    assert report.verdict is Verdict.DEAD
    assert report.reason == "heartbeat on nfs1 is 465 s old, limit 465 s"
    assert report.readings[0].age == pytest.approx(LIMIT + 0.001)


def test_dead_reason_shows_the_age(s: Setup) -> None:
    s.beat(P1, T0 - 412)
    timing = HeartbeatTiming(frequency=60, max_tries=1, retry_sleep=1, write_timeout=170)
    report = HeartbeatChecker(s.storage, s.clock, timing).check([P1], IP)
    assert report.verdict is Verdict.DEAD
    assert report.reason == "heartbeat on nfs1 is 412 s old, limit 405 s"


def test_no_modulo_256_ages(s: Setup) -> None:
    s.beat(P1, T0 - 512)  # CloudStack's script reads 512 as exit code 0 -> ALIVE
    timing = HeartbeatTiming(frequency=10, max_tries=1, retry_sleep=1, write_timeout=10)
    assert HeartbeatChecker(s.storage, s.clock, timing).check([P1], IP).verdict is Verdict.DEAD


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "bad heartbeat file on nfs1: empty"),
        (b"garbage\n", "bad heartbeat file on nfs1: not a number: b'garbage'"),
        (b"1\n2\n", "bad heartbeat file on nfs1: several lines"),
        (b"-1700000000\n", "bad heartbeat file on nfs1: negative"),
    ],
)
def test_empty_or_garbage_is_unknown_never_dead(s: Setup, content: bytes, reason: str) -> None:
    s.beat(P1, content)
    report = s.check(P1)
    assert report.verdict is Verdict.UNKNOWN
    assert report.readings[0].reason.startswith(reason)
    assert report.readings[0].written_at is None
    assert report.reason.startswith("no readable heartbeat: " + reason)


def test_written_in_the_future_beyond_the_skew_is_unknown(s: Setup) -> None:
    s.beat(P1, T0 + 6)
    reading = s.check(P1).readings[0]
    assert reading.verdict is Verdict.UNKNOWN
    assert "written in the future (6 s ahead" in reading.reason
    assert reading.written_at == T0 + 6
    assert reading.age == -6.0


def test_written_in_the_future_within_the_skew_is_alive(s: Setup) -> None:
    s.beat(P1, T0 + 5)
    assert s.check(P1).verdict is Verdict.ALIVE


def test_missing_file_is_unknown(s: Setup) -> None:
    report = s.check(P1)
    assert report.verdict is Verdict.UNKNOWN
    assert report.readings[0].reason == "no heartbeat file on nfs1 (/mnt/nfs1/KVMHA/hb-10.0.0.9)"


def test_unreadable_file_is_unknown(s: Setup) -> None:
    s.beat(P1, T0 - 1_000_000)
    s.storage.fail_reads = True
    report = s.check(P1)
    assert report.verdict is Verdict.UNKNOWN
    assert report.readings[0].reason == "unreadable on nfs1: simulated storage outage"


@pytest.mark.parametrize(
    "error", [ProbeTimeout("no answer from the storage agent"), ProbeAuthError("refused")]
)
def test_probe_error_is_unknown(error: Exception) -> None:
    clock = FakeClock(float(T0))
    checker = HeartbeatChecker(ErroringStorage(clock, error), clock, TIMING)
    reading = checker.check([P1], IP).readings[0]
    assert reading.verdict is Verdict.UNKNOWN
    assert reading.reason == f"unreadable on nfs1: {error}"


def test_only_64_bytes_are_read(s: Setup) -> None:
    s.beat(P1, b"1" * 64 + b"\n")
    assert "too long: 64 digits" in s.check(P1).readings[0].reason


def test_bad_target_ip_or_mount_point_raise(s: Setup) -> None:
    with pytest.raises(ConfigurationError) as info:
        s.checker.check([P1], "nope")
    assert info.value.key == "host_ip"
    with pytest.raises(ConfigurationError) as info:
        s.checker.check([Pool("x", "relative")], IP)
    assert info.value.key == "mount_point"


def test_target_ip_is_normalised(s: Setup) -> None:
    s.storage.put("/mnt/nfs1/KVMHA/hb-fd00::1", b"%d\n" % T0)
    report = s.checker.check([P1], "FD00:0::1")
    assert report.target_ip == "fd00::1"
    assert report.verdict is Verdict.ALIVE


# -- several pools ---------------------------------------------------------


def test_no_pools_is_unknown(s: Setup) -> None:
    report = s.check()
    assert report.verdict is Verdict.UNKNOWN
    assert report.reason == "no HA storage pools"
    assert report.readings == ()
    assert report.threshold == LIMIT


def test_threshold_grows_with_the_number_of_pools(s: Setup) -> None:
    limit2 = TIMING.stale_after(2)
    s.beat(P1, T0 - int(limit2))
    s.beat(P2, T0 - int(limit2))
    report = s.check(P1, P2)
    assert report.threshold == limit2
    assert report.verdict is Verdict.ALIVE  # would be DEAD with a one-pool limit


def test_one_stale_pool_among_fresh_ones(s: Setup) -> None:
    s.beat(P1, T0 - 10)
    s.beat(P2, T0 - 10_000)
    s.beat(P3, T0 - 20)
    report = s.check(P1, P2, P3)
    assert report.verdict is Verdict.ALIVE
    assert report.reason.startswith("heartbeat on nfs1 is 10 s old")
    assert [r.verdict for r in report.readings] == [Verdict.ALIVE, Verdict.DEAD, Verdict.ALIVE]
    flagged = s.check(P1, P2, P3, fail_on_one_pool=True)
    assert flagged.verdict is Verdict.DEAD
    assert flagged.reason.startswith("heartbeat on nfs2 is 10000 s old")
    assert flagged.reason.endswith("(one stale pool is enough)")


def test_last_pool_does_not_decide(s: Setup) -> None:
    # CloudStack judges by the last pool; a fresh first pool keeps the host alive.
    s.beat(P1, T0)
    s.beat(P2, T0 - 10_000)
    assert s.check(P1, P2).verdict is Verdict.ALIVE
    assert s.check(P2, P1).verdict is Verdict.ALIVE


def test_every_readable_pool_stale_plus_an_unreadable_one_is_dead(s: Setup) -> None:
    s.beat(P1, T0 - 10_000)
    s.beat(P2, b"junk")
    s.beat(P3, T0 - 20_000)
    report = s.check(P1, P2, P3)
    assert report.verdict is Verdict.DEAD
    assert "nfs1 is 10000 s old" in report.reason
    assert "nfs3 is 20000 s old" in report.reason
    assert "(1 pool(s) unreadable: bad heartbeat file on nfs2" in report.reason


def test_every_pool_stale_is_dead_without_the_flag(s: Setup) -> None:
    s.beat(P1, T0 - 10_000)
    s.beat(P2, T0 - 10_000)
    assert s.check(P1, P2).verdict is Verdict.DEAD


def test_all_unreadable_is_unknown(s: Setup) -> None:
    s.beat(P1, b"junk")
    s.storage.failing_prefixes.add("/mnt/nfs2/")
    report = s.check(P1, P2, P3, fail_on_one_pool=True)
    assert report.verdict is Verdict.UNKNOWN
    assert report.reason.startswith("no readable heartbeat: bad heartbeat file on nfs1")
    assert "unreadable on nfs2" in report.reason
    assert "no heartbeat file on nfs3" in report.reason


def test_stale_pool_with_an_unreadable_one_and_the_flag_is_dead(s: Setup) -> None:
    s.beat(P1, T0 - 10_000)
    assert s.check(P1, P2, fail_on_one_pool=True).verdict is Verdict.DEAD


def test_each_pool_is_judged_with_the_time_before_its_own_read() -> None:
    clock = FakeClock(float(T0))

    class SlowStorage(MemoryStorage):
        def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
            data = super().read_bytes(path, max_bytes=max_bytes)
            clock.advance(100)  # each read takes 100 s
            return data

    storage = SlowStorage(clock)
    for pool in (P1, P2):
        storage.put(heartbeat_path(pool.mount_point, IP), b"%d\n" % T0)
    report = HeartbeatChecker(storage, clock, TIMING).check([P1, P2], IP)
    assert [r.age for r in report.readings] == [0.0, 100.0]


# -- serialisation ---------------------------------------------------------


def _report(s: Setup) -> HeartbeatReport:
    s.beat(P1, T0 - 10)
    s.beat(P2, b"junk")
    return s.check(P1, P2, P3)


def test_report_round_trips_through_json(s: Setup) -> None:
    report = _report(s)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["verdict"] == "ALIVE"
    assert document["readings"][1] == {
        "pool_id": "nfs2",
        "mount_point": "/mnt/nfs2",
        "verdict": "UNKNOWN",
        "reason": "bad heartbeat file on nfs2: not a number: b'junk'",
        "written_at": None,
        "age": None,
    }
    assert HeartbeatReport.from_dict(document) == report
    for reading in report.readings:
        assert PoolReading.from_dict(reading.to_dict()) == reading


def test_from_dict_accepts_absent_optional_keys() -> None:
    assert HeartbeatReport.from_dict(
        {"target_ip": IP, "verdict": "UNKNOWN", "reason": "r", "threshold": 465}
    ) == HeartbeatReport(IP, Verdict.UNKNOWN, "r", 465.0)
    assert PoolReading.from_dict(
        {"pool_id": "p", "mount_point": "/m", "verdict": "DEAD", "reason": "r", "age": 3}
    ) == PoolReading("p", "/m", Verdict.DEAD, "r", None, 3.0)


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


@pytest.mark.parametrize("key", ["target_ip", "verdict", "reason", "threshold"])
def test_report_from_dict_names_the_missing_key(s: Setup, key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"missing key '{key}'") as info:
        HeartbeatReport.from_dict(_without(_report(s).to_dict(), key))
    assert info.value.key == key


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("verdict", "MAYBE", "verdict must be ALIVE, DEAD or UNKNOWN"),
        ("verdict", None, "verdict must be"),
        ("threshold", "465", "threshold must be a finite number"),
        ("threshold", True, "threshold must be a finite number"),
        ("threshold", float("nan"), "threshold must be a finite number"),
        ("target_ip", 10, "target_ip must be a string"),
        ("readings", "none", "readings must be a list"),
    ],
)
def test_report_from_dict_names_the_bad_key(s: Setup, key: str, value: Any, message: str) -> None:
    document = _report(s).to_dict() | {key: value}
    with pytest.raises(ConfigurationError, match=message) as info:
        HeartbeatReport.from_dict(document)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pool_id", None, "pool_id must be a string"),
        ("written_at", 1.5, "written_at must be an integer"),
        ("written_at", False, "written_at must be an integer"),
        ("age", "old", "age must be a finite number"),
        ("verdict", "dead", "verdict must be"),
    ],
)
def test_reading_errors_name_the_reading_and_key(
    s: Setup, key: str, value: Any, message: str
) -> None:
    document = _report(s).to_dict()
    document["readings"][1][key] = value
    with pytest.raises(ConfigurationError, match=r"readings\[1\]: " + message) as info:
        HeartbeatReport.from_dict(document)
    assert info.value.key == key


def test_from_dict_rejects_what_is_not_a_mapping(s: Setup) -> None:
    with pytest.raises(ConfigurationError, match="expected a mapping, got list"):
        HeartbeatReport.from_dict([])  # type: ignore[arg-type]
    document = _report(s).to_dict()
    document["readings"] = [3]
    with pytest.raises(ConfigurationError, match=r"readings\[0\]: expected a mapping"):
        HeartbeatReport.from_dict(document)
    with pytest.raises(ConfigurationError, match="missing key 'mount_point'"):
        PoolReading.from_dict({"pool_id": "p"})
