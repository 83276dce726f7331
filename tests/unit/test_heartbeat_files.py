"""Heartbeat files, local storage and timing (spec §6.2, its differences)."""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudha.errors import ConfigurationError
from cloudha.heartbeat import (
    HEARTBEAT_DIR,
    HeartbeatFormatError,
    HeartbeatTiming,
    LocalStorage,
    StorageAccess,
    activity_state_path,
    format_heartbeat,
    heartbeat_path,
    normalize_host_ip,
    parse_heartbeat,
)
from cloudha.settings import Settings
from cloudha.testing.clock import FakeClock
from cloudha.testing.heartbeat import MemoryStorage

# -- paths -----------------------------------------------------------------


def test_paths_follow_the_kvmheartbeat_layout() -> None:
    assert HEARTBEAT_DIR == "KVMHA"
    assert heartbeat_path("/mnt/p1", "10.0.0.7") == "/mnt/p1/KVMHA/hb-10.0.0.7"
    assert heartbeat_path("/mnt/p1/", "10.0.0.7") == "/mnt/p1/KVMHA/hb-10.0.0.7"
    assert activity_state_path("/mnt/p1", "10.0.0.7") == "/mnt/p1/KVMHA/ac-10.0.0.7"


def test_ip_is_normalised_so_every_host_names_the_same_file() -> None:
    assert normalize_host_ip("FD00:0:0::1") == "fd00::1"
    assert heartbeat_path("/mnt/p1", "FD00:0:0::1") == "/mnt/p1/KVMHA/hb-fd00::1"


@pytest.mark.parametrize("bad", ["", "10.0.0", "10.0.0.256", "host1", " 10.0.0.1", "../x", "1/2"])
def test_bad_ip_is_a_configuration_error_naming_the_value(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="not an IP address") as info:
        heartbeat_path("/mnt/p1", bad)
    assert info.value.key == "host_ip"
    assert info.value.value == bad
    assert repr(bad) in str(info.value)


def test_scoped_ipv6_is_kept_but_not_with_a_nul() -> None:
    assert normalize_host_ip("fe80::1%eth0") == "fe80::1%eth0"
    with pytest.raises(ConfigurationError):
        normalize_host_ip("fe80::1%a\0")


def test_non_string_ip_is_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        normalize_host_ip(167772161)  # type: ignore[arg-type]
    assert info.value.key == "host_ip"


@pytest.mark.parametrize("bad", ["", "mnt/p1", "./p1", "/mnt/\0p1"])
def test_relative_mount_point_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="absolute") as info:
        activity_state_path(bad, "10.0.0.1")
    assert info.value.key == "mount_point"
    assert info.value.value == bad


# -- content ---------------------------------------------------------------


def test_format_heartbeat_writes_whole_seconds_on_one_line() -> None:
    assert format_heartbeat(1_700_000_000.9) == b"1700000000\n"
    assert format_heartbeat(0) == b"0\n"
    assert format_heartbeat(FakeClock(1_700_000_123.5).now()) == b"1700000123\n"
    assert parse_heartbeat(format_heartbeat(1_700_000_000.9)) == 1_700_000_000


@pytest.mark.parametrize(
    "bad",
    [-1.0, float("nan"), float("inf"), dt.datetime(2024, 1, 1)],  # noqa: DTZ001
)
def test_format_heartbeat_rejects_negative_non_finite_and_naive(bad: float | dt.datetime) -> None:
    with pytest.raises(ValueError, match="heartbeat time"):
        format_heartbeat(bad)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"1700000000\n", 1_700_000_000),
        (b"1700000000", 1_700_000_000),
        (b"  1700000000 \r\n", 1_700_000_000),
        (b"\t0\n", 0),
        (b"000123", 123),
    ],
)
def test_parse_heartbeat_accepts_one_line_of_digits(data: bytes, expected: int) -> None:
    assert parse_heartbeat(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b" \n\t ", "empty"),
        (b"1700000000\n1700000001\n", "several lines"),
        (b"17000\r00000", "several lines"),
        (b"-5\n", "negative"),
        (b"garbage\n", "not a number: b'garbage'"),
        (b"+5", "not a number"),
        (b"1_000", "not a number"),
        (b"1.5", "not a number"),
        (b"\xff\xfe", "not a number"),
        (b"\x00" * 10, "not a number"),
        (b"1" * 16, "too long: 16 digits"),
        (b"x" * 100, "not a number: b'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'..."),
    ],
)
def test_parse_heartbeat_is_strict(data: bytes, reason: str) -> None:
    with pytest.raises(HeartbeatFormatError) as info:
        parse_heartbeat(data)
    assert info.value.reason.startswith(reason)
    assert str(info.value) == info.value.reason
    assert isinstance(info.value, ValueError)


def test_long_garbage_is_truncated_in_the_reason() -> None:
    with pytest.raises(HeartbeatFormatError) as info:
        parse_heartbeat(b"y" * 5000)
    assert len(info.value.reason) < 80


# -- LocalStorage ----------------------------------------------------------


def test_local_storage_is_a_storage_access() -> None:
    assert isinstance(LocalStorage(), StorageAccess)
    assert isinstance(MemoryStorage(), StorageAccess)
    assert repr(LocalStorage()) == "LocalStorage()"


def test_write_atomic_creates_the_directory_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    storage = LocalStorage()
    path = heartbeat_path(str(tmp_path), "10.0.0.1")
    storage.write_atomic(path, b"100\n")
    storage.write_atomic(path, b"200\n")
    assert os.listdir(tmp_path / "KVMHA") == ["hb-10.0.0.1"]
    assert storage.read_bytes(path, max_bytes=64) == b"200\n"
    assert storage.read_bytes(path, max_bytes=2) == b"20"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert storage.mtime(path) == os.stat(path).st_mtime


def test_failed_write_keeps_the_old_content_and_removes_its_temporary(tmp_path: Path) -> None:
    storage = LocalStorage()
    target = tmp_path / "KVMHA" / "hb-10.0.0.1"
    target.mkdir(parents=True)  # a directory in the way: os.replace fails
    with pytest.raises(IsADirectoryError):
        storage.write_atomic(str(target), b"1\n")
    assert sorted(os.listdir(tmp_path / "KVMHA")) == ["hb-10.0.0.1"]
    assert target.is_dir()


def test_write_atomic_fails_when_the_directory_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        LocalStorage().write_atomic(str(tmp_path / "file" / "KVMHA" / "hb-1.2.3.4"), b"1\n")


def _fsync_failing_on_directories(code: int) -> Callable[[int], None]:
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real(fd)

    return fsync


def test_a_directory_that_cannot_be_fsynced_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(errno.EINVAL))
    LocalStorage().write_atomic(str(tmp_path / "hb"), b"1\n")
    assert (tmp_path / "hb").read_bytes() == b"1\n"


def test_a_directory_fsync_error_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        LocalStorage().write_atomic(str(tmp_path / "hb"), b"1\n")


def test_local_storage_errors(tmp_path: Path) -> None:
    storage = LocalStorage()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing"), max_bytes=64)
    with pytest.raises(FileNotFoundError):
        storage.mtime(str(tmp_path / "missing"))
    with pytest.raises(IsADirectoryError):
        storage.read_bytes(str(tmp_path), max_bytes=64)
    with pytest.raises(ValueError, match="max_bytes"):
        storage.read_bytes(str(tmp_path), max_bytes=0)


# -- MemoryStorage ---------------------------------------------------------


def test_memory_storage_records_writes_and_simulates_outages() -> None:
    clock = FakeClock(1000.0)
    storage = MemoryStorage(clock)
    storage.write_atomic("/mnt/p1/KVMHA/hb-1.2.3.4", b"1000\n")
    assert storage.files == {"/mnt/p1/KVMHA/hb-1.2.3.4": (b"1000\n", 1000.0)}
    assert storage.writes == 1
    assert storage.mtime("/mnt/p1/KVMHA/hb-1.2.3.4") == 1000.0
    storage.failing_prefixes.add("/mnt/p1/")
    with pytest.raises(OSError, match="outage"):
        storage.read_bytes("/mnt/p1/KVMHA/hb-1.2.3.4", max_bytes=64)
    with pytest.raises(OSError, match="outage"):
        storage.write_atomic("/mnt/p1/KVMHA/hb-1.2.3.4", b"1\n")
    storage.failing_prefixes.clear()
    storage.fail_reads = True
    with pytest.raises(OSError, match="outage"):
        storage.mtime("/mnt/p1/KVMHA/hb-1.2.3.4")
    storage.fail_reads = False
    with pytest.raises(FileNotFoundError):
        storage.mtime("/mnt/p2/x")
    storage.put("/mnt/p2/x", b"data")
    assert storage.mtime("/mnt/p2/x") == 1000.0
    bare = MemoryStorage()
    bare.write_atomic("/a", b"")
    assert bare.files == {"/a": (b"", 0.0)}
    assert "2 files" in repr(storage)


# -- timing ----------------------------------------------------------------


def test_timing_defaults_and_derived_values() -> None:
    timing = HeartbeatTiming()
    assert timing.write_budget == 5 * 60 + 4 * 10 == 340
    assert timing.stale_after() == 60 + 340 + 60 + 5 == 465
    assert timing.stale_after(0) == timing.stale_after(1)
    assert timing.stale_after(2) == 60 + 2 * 340 + 60 + 5
    assert HeartbeatTiming(max_tries=1, write_timeout=7).write_budget == 7


def test_timing_from_settings_reads_the_agent_properties_in_ms() -> None:
    settings = Settings.from_mapping(
        {
            "kvm.heartbeat.update.frequency": 30000,
            "kvm.heartbeat.update.max.tries": 3,
            "kvm.heartbeat.update.retry.sleep": 2000,
            "heartbeat.update.timeout": 20000,
        }
    )
    timing = HeartbeatTiming.from_settings(settings, clock_skew=1)
    assert timing == HeartbeatTiming(30.0, 3, 2.0, 20.0, 1.0)
    assert isinstance(timing.clock_skew, float)
    assert HeartbeatTiming.from_settings(Settings()) == HeartbeatTiming()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frequency", 0),
        ("frequency", -1.0),
        ("retry_sleep", float("nan")),
        ("write_timeout", float("inf")),
        ("write_timeout", "60"),
        ("clock_skew", -0.1),
        ("frequency", True),
        ("max_tries", 0),
        ("max_tries", 2.0),
        ("max_tries", True),
    ],
)
def test_timing_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=field) as info:
        HeartbeatTiming(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field


def test_zero_clock_skew_is_allowed() -> None:
    assert HeartbeatTiming(clock_skew=0).stale_after() == 460
