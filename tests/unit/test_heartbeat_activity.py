"""The VM activity check on a pool (spec §6.4, with cloudha's fixes)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cloudha.errors import ConfigurationError, ProbeTimeout
from cloudha.heartbeat import (
    ActivityReport,
    HeartbeatTiming,
    activity_state_path,
    check_vm_activity,
    heartbeat_path,
)
from cloudha.investigators.base import Verdict
from cloudha.testing.clock import FakeClock
from cloudha.testing.heartbeat import MemoryStorage

T0 = 1_700_000_000
MOUNT = "/mnt/nfs1"
IP = "10.0.0.3"
TIMING = HeartbeatTiming()
LIMIT = TIMING.stale_after(1)
HB = heartbeat_path(MOUNT, IP)
STATE = activity_state_path(MOUNT, IP)
VOLUMES = ("vol-a.qcow2", "sub/vol-b.qcow2")


class Setup:
    def __init__(self) -> None:
        self.clock = FakeClock(float(T0))
        self.storage = MemoryStorage(self.clock)

    def beat(self, written_at: int | bytes) -> None:
        data = b"%d\n" % written_at if isinstance(written_at, int) else written_at
        self.storage.put(HB, data)

    def touch(self, volume: str, mtime: float) -> None:
        self.storage.put(f"{MOUNT}/{volume}", b"qcow", mtime)

    def check(
        self, suspect_time: float, volumes: tuple[str, ...] = VOLUMES, *, watchdog: bool = True
    ) -> ActivityReport:
        return check_vm_activity(
            self.storage,
            self.clock,
            TIMING,
            mount_point=MOUNT,
            host_ip=IP,
            volumes=volumes,
            suspect_time=suspect_time,
            watchdog=watchdog,
        )

    def state(self) -> bytes:
        return self.storage.files[STATE][0]


@pytest.fixture
def s() -> Setup:
    setup = Setup()
    setup.beat(T0 - 10_000)  # stale unless a test says otherwise
    setup.touch(VOLUMES[0], T0 - 500)
    setup.touch(VOLUMES[1], T0 - 300)
    return setup


# -- the heartbeat ---------------------------------------------------------


def test_fresh_heartbeat_is_activity(s: Setup) -> None:
    s.beat(T0 - int(LIMIT))
    report = s.check(T0 - 100)
    assert report == ActivityReport(
        IP, Verdict.ALIVE, "heartbeat fresh: 465 s old, limit 465 s", None, LIMIT
    )
    assert STATE not in s.storage.files


def test_stale_heartbeat_without_volumes_is_no_activity(s: Setup) -> None:
    report = s.check(T0 - 100, volumes=())
    assert report.verdict is Verdict.DEAD
    assert report.reason == "heartbeat 10000 s old, limit 465 s and no volumes to check"
    assert report.heartbeat_age == 10_000


def test_stale_by_epsilon_without_volumes_is_no_activity(s: Setup) -> None:
    s.beat(T0)
    s.clock.advance(LIMIT + 0.001)
    assert s.check(T0, volumes=()).verdict is Verdict.DEAD


@pytest.mark.parametrize(
    ("self_fence", "why"),
    [
        (False, "no watchdog and self-fencing is off: a hung or isolated host may resume"),
        (True, "no watchdog and its writer's self-fence cannot act while the host is hung"),
    ],
)
def test_stale_heartbeat_without_a_watchdog_proves_nothing(
    s: Setup, self_fence: bool, why: str
) -> None:
    report = check_vm_activity(
        s.storage,
        s.clock,
        TIMING,
        mount_point=MOUNT,
        host_ip=IP,
        volumes=(),
        suspect_time=T0 - 100,
        self_fence=self_fence,
    )
    assert report.verdict is Verdict.UNKNOWN
    assert report.reason.startswith(
        "heartbeat 10000 s old, limit 465 s and no volumes to check; stale is no proof: "
    )
    assert why in report.reason
    assert report.heartbeat_age == 10_000


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "no heartbeat file"),
        ("garbage", "bad heartbeat file: not a number: b'garbage'"),
        ("empty", "bad heartbeat file: empty"),
        ("unreadable", "heartbeat unreadable: simulated storage outage"),
        ("future", "heartbeat written in the future (100 s ahead)"),
    ],
)
def test_unusable_heartbeat_without_volumes_is_unknown(s: Setup, setup: str, reason: str) -> None:
    if setup == "missing":
        del s.storage.files[HB]
    elif setup == "garbage":
        s.beat(b"garbage")
    elif setup == "empty":
        s.beat(b"")
    elif setup == "unreadable":
        s.storage.fail_reads = True
    else:
        s.beat(T0 + 100)
    report = s.check(T0 - 100, volumes=())
    assert report.verdict is Verdict.UNKNOWN
    assert report.reason == f"{reason} and no volumes to check"


def test_probe_error_reading_the_heartbeat_is_not_stale(s: Setup) -> None:
    class Erroring(MemoryStorage):
        def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
            raise ProbeTimeout("storage agent silent")

    s.storage = Erroring(s.clock)
    report = s.check(T0 - 100, volumes=())
    assert report.verdict is Verdict.UNKNOWN
    assert "storage agent silent" in report.reason


def test_unusable_heartbeat_with_volumes_goes_on_to_the_volumes(s: Setup) -> None:
    s.beat(b"garbage")
    report = s.check(T0 - 400)
    assert report.verdict is Verdict.ALIVE
    assert report.latest_mtime == T0 - 300
    assert report.heartbeat_age is None


# -- the volumes and the state file ----------------------------------------


def test_first_check_compares_with_the_suspect_time(s: Setup) -> None:
    report = s.check(T0 - 400)
    assert report.verdict is Verdict.ALIVE
    assert report.latest_mtime == T0 - 300
    assert report.heartbeat_age == 10_000
    assert "after suspect time" in report.reason
    assert s.state() == b"1699999600.0:1699999700.0:1700000000.0\n"


def test_first_check_without_activity_since_the_suspect_time(s: Setup) -> None:
    report = s.check(T0 - 300)  # latest == suspect time: not after it
    assert report.verdict is Verdict.DEAD
    assert "no volume changed after suspect time" in report.reason
    assert s.state() == b"1699999700.0:1699999700.0:1700000000.0\n"


def test_second_check_compares_with_the_latest_seen_before(s: Setup) -> None:
    assert s.check(T0 - 400).verdict is Verdict.ALIVE
    s.clock.advance(60)
    report = s.check(T0 - 400)  # nothing written since the first check
    assert report.verdict is Verdict.DEAD
    assert "previous check" in report.reason
    s.touch(VOLUMES[0], T0 + 30)
    s.clock.advance(60)
    assert s.check(T0 - 400).verdict is Verdict.ALIVE
    assert s.state() == b"1699999600.0:1700000030.0:1700000120.0\n"


def test_a_newer_suspect_time_still_compares_with_the_latest_seen_before(s: Setup) -> None:
    s.check(T0 - 400)
    s.touch(VOLUMES[1], T0 - 200)
    # suspect_time >= stored suspect time: compare with the stored latest (T0 - 300)
    assert s.check(T0 - 100).verdict is Verdict.ALIVE


def test_an_older_suspect_time_compares_with_the_suspect_time(s: Setup) -> None:
    s.storage.put(STATE, b"1699999900:1699999999:1700000000\n")
    # stored latest is newer than any volume, but the new suspect time is older
    report = s.check(T0 - 400)
    assert report.verdict is Verdict.ALIVE
    assert "after suspect time" in report.reason
    s.storage.put(STATE, b"1699999900:1699999999:1700000000\n")
    assert s.check(T0 - 250).verdict is Verdict.DEAD


@pytest.mark.parametrize(
    "garbage", [b"", b"junk", b"1:2", b"1:2:3:4", b"a:b:c", b"1:nan:3", b"\xff:1:2"]
)
def test_garbage_state_file_is_treated_as_absent(
    s: Setup, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    s.storage.put(STATE, garbage)
    with caplog.at_level(logging.WARNING, logger="cloudha.heartbeat"):
        report = s.check(T0 - 400)
    assert report.verdict is Verdict.ALIVE  # latest > suspect time, as with no state file
    assert "ignoring garbage activity state file" in caplog.text
    assert s.state() == b"1699999600.0:1699999700.0:1700000000.0\n"


def test_unreadable_state_file_is_unknown(s: Setup) -> None:
    class StateUnreadable(MemoryStorage):
        def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
            if path == STATE:
                raise PermissionError(13, "Permission denied")
            return super().read_bytes(path, max_bytes=max_bytes)

    storage = StateUnreadable(s.clock, files=s.storage.files)
    s.storage = storage
    report = s.check(T0 - 400)
    assert report.verdict is Verdict.UNKNOWN
    assert "cannot read the activity state file: Permission denied" in report.reason
    assert report.latest_mtime == T0 - 300


def test_failing_to_write_the_state_file_is_unknown(s: Setup) -> None:
    s.storage.fail_writes = True
    report = s.check(T0 - 400)
    assert report.verdict is Verdict.UNKNOWN
    assert "cannot write the activity state file" in report.reason


def test_a_volume_that_cannot_be_examined_is_unknown(s: Setup) -> None:
    report = s.check(T0 - 400, volumes=(*VOLUMES, "missing.qcow2"))
    assert report.verdict is Verdict.UNKNOWN
    assert "cannot examine the volumes" in report.reason
    assert STATE not in s.storage.files


def test_an_unreadable_pool_is_unknown(s: Setup) -> None:
    s.storage.failing_prefixes.add(MOUNT)
    assert s.check(T0 - 400).verdict is Verdict.UNKNOWN


# -- input validation ------------------------------------------------------


@pytest.mark.parametrize(
    "volume", ["/etc/passwd", "../other/vol", "a/../../b", "a\0b", "", "..\\x"]
)
def test_volume_paths_must_stay_inside_the_mount(s: Setup, volume: str) -> None:
    with pytest.raises(ConfigurationError, match="relative to the mount point") as info:
        s.check(T0, volumes=(volume,))
    assert info.value.key == "volume"
    assert info.value.value == volume


def test_bad_volume_is_rejected_even_when_the_heartbeat_is_fresh(s: Setup) -> None:
    s.beat(T0)
    with pytest.raises(ConfigurationError):
        s.check(T0, volumes=("../x",))


@pytest.mark.parametrize("suspect", [float("nan"), float("inf"), "1"])
def test_suspect_time_must_be_finite(s: Setup, suspect: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        s.check(suspect)
    assert info.value.key == "suspect_time"


def test_bad_ip_or_mount_point(s: Setup) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_vm_activity(
            s.storage, s.clock, TIMING, mount_point=MOUNT, host_ip="h", volumes=(), suspect_time=0
        )
    assert info.value.key == "host_ip"
    with pytest.raises(ConfigurationError) as info:
        check_vm_activity(
            s.storage, s.clock, TIMING, mount_point="m", host_ip=IP, volumes=(), suspect_time=0
        )
    assert info.value.key == "mount_point"


# -- serialisation ---------------------------------------------------------


def test_report_round_trips(s: Setup) -> None:
    for report in (s.check(T0 - 400), s.check(T0 - 400, volumes=())):
        assert ActivityReport.from_dict(report.to_dict()) == report
    assert ActivityReport.from_dict(
        {"host_ip": IP, "verdict": "UNKNOWN", "reason": "r"}
    ) == ActivityReport(IP, Verdict.UNKNOWN, "r")


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"verdict": "DEAD", "reason": "r"}, "host_ip"),
        ({"host_ip": IP, "reason": "r"}, "verdict"),
        ({"host_ip": IP, "verdict": "no", "reason": "r"}, "verdict"),
        ({"host_ip": IP, "verdict": "DEAD"}, "reason"),
        ({"host_ip": IP, "verdict": "DEAD", "reason": "r", "latest_mtime": "x"}, "latest_mtime"),
        ({"host_ip": IP, "verdict": "DEAD", "reason": "r", "heartbeat_age": []}, "heartbeat_age"),
    ],
)
def test_report_from_dict_names_the_key(document: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError, match=key) as info:
        ActivityReport.from_dict(document)
    assert info.value.key == key
