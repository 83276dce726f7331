"""``cloudha heartbeat``: write, check and activity on real files."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import cloudha.cli.heartbeat as cli_heartbeat
from cloudha.cli import main
from cloudha.clock import SystemClock
from cloudha.heartbeat import (
    ActivityReport,
    HeartbeatReport,
    HeartbeatTiming,
    HeartbeatWriter,
    heartbeat_path,
    parse_heartbeat,
)
from cloudha.investigators.base import Verdict
from cloudha.model import Pool
from cloudha.testing.heartbeat import MemoryStorage, RecordingSelfFencer

IP = "10.1.2.3"
ONCE = ("heartbeat", "write", "--once", "--host-ip", IP)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fast_settings(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        '"kvm.heartbeat.update.max.tries" = 2\n"kvm.heartbeat.update.retry.sleep" = 1\n'
        '"heartbeat.update.timeout" = 5000\n'
    )
    return path


def beat(mount: Path, written_at: float) -> None:
    path = Path(heartbeat_path(str(mount), IP))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%d\n" % int(written_at))


def mounts(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(tmp_path / name)
    return out


# -- check -----------------------------------------------------------------


def test_check_json_with_a_fresh_and_a_stale_pool(runner: CliRunner, tmp_path: Path) -> None:
    fresh, stale = mounts(tmp_path, "fresh", "stale")
    beat(fresh, time.time() - 5)
    beat(stale, time.time() - 10_000)
    args = ["heartbeat", "check", "--json", "--host-ip", IP]
    args += ["--allow-unmounted", "--mount", str(fresh), "--mount", str(stale)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = HeartbeatReport.from_dict(json.loads(result.stdout))
    assert report.verdict is Verdict.ALIVE
    assert [r.verdict for r in report.readings] == [Verdict.ALIVE, Verdict.DEAD]
    assert report.readings[0].pool_id == str(fresh)
    flagged = runner.invoke(main, [*args, "--fail-on-one-pool"])
    assert flagged.exit_code == 0
    assert json.loads(flagged.stdout)["verdict"] == "DEAD"


def test_check_human_output_and_exit_0_for_every_verdict(runner: CliRunner, tmp_path: Path) -> None:
    (stale,) = mounts(tmp_path, "stale")
    beat(stale, time.time() - 10_000)
    result = runner.invoke(
        main, ["heartbeat", "check", "--host-ip", IP, "--allow-unmounted", "--mount", str(stale)]
    )
    assert result.exit_code == 0
    first, second = result.stdout.splitlines()
    assert first.startswith(f"{IP}: DEAD: heartbeat on {stale} is ")
    assert second.startswith(f"  {stale}: DEAD: ")


def test_check_without_pools_is_unknown(runner: CliRunner) -> None:
    result = runner.invoke(main, ["heartbeat", "check", "--json", "--host-ip", IP])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["reason"] == "no HA storage pools"


def test_check_reads_the_settings_file(runner: CliRunner, tmp_path: Path) -> None:
    (mount,) = mounts(tmp_path, "m")
    beat(mount, time.time() - 100)
    settings = tmp_path / "s.toml"
    settings.write_text('"kvm.heartbeat.update.frequency" = 1000\n')
    args = [
        "heartbeat",
        "check",
        "--json",
        "--host-ip",
        IP,
        "--allow-unmounted",
        "--mount",
        str(mount),
    ]
    result = runner.invoke(main, [*args, "--settings", str(settings)])
    assert json.loads(result.stdout)["threshold"] == 1 + 340 + 60 + 5


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--host-ip", "10.1.2"], "'--host-ip': not an IP address: '10.1.2'"),
        (["--host-ip", IP, "--mount", "relative/dir"], "'--mount'"),
        (["--host-ip", IP, "--settings", "/nonexistent/s.toml"], "'--settings'"),
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_exit_2(
    runner: CliRunner, args: list[str], named: str
) -> None:
    result = runner.invoke(main, ["heartbeat", "check", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cloudha heartbeat check: invalid value for ")
    assert named in lines[0]
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_bad_environment_is_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(
        main,
        ["heartbeat", "check", "--host-ip", IP],
        env={"CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY": "often"},
    )
    assert result.exit_code == 2
    assert "CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY" in result.stderr


def test_bad_settings_value_names_the_settings_option(runner: CliRunner, tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text('"kvm.heartbeat.update.max.tries" = 0\n')
    result = runner.invoke(
        main, ["heartbeat", "check", "--host-ip", IP, "--settings", str(settings)]
    )
    assert result.exit_code == 2
    assert "'--settings'" in result.stderr
    assert "kvm.heartbeat.update.max.tries" in result.stderr


# -- write -----------------------------------------------------------------


def test_write_once_creates_the_heartbeat(runner: CliRunner, tmp_path: Path) -> None:
    first, second = mounts(tmp_path, "a", "b")
    before = int(time.time())
    result = runner.invoke(
        main,
        [
            *ONCE,
            "--allow-unmounted",
            "--mount",
            str(first),
            "--allow-unmounted",
            "--mount",
            str(second),
        ],
    )
    assert result.exit_code == 0, result.output
    for mount in (first, second):
        written = parse_heartbeat(Path(heartbeat_path(str(mount), IP)).read_bytes())
        assert before <= written <= time.time()


def test_write_once_exits_1_when_a_pool_cannot_be_written(
    runner: CliRunner, tmp_path: Path, fast_settings: Path
) -> None:
    (good,) = mounts(tmp_path, "good")
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")  # a file where the mount's directory should be
    result = runner.invoke(
        main,
        [
            *ONCE,
            "--allow-unmounted",
            "--mount",
            str(good),
            "--allow-unmounted",
            "--mount",
            str(blocked),
            "--settings",
            str(fast_settings),
        ],
    )
    assert result.exit_code == 1
    assert f"not written to {blocked}" in result.stderr
    assert Path(heartbeat_path(str(good), IP)).exists()


def test_write_bad_ip_exits_2_without_traceback(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        ["heartbeat", "write", "--host-ip", "nope", "--allow-unmounted", "--mount", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "--host-ip" in result.stderr
    assert "'nope'" in result.stderr
    assert "Traceback" not in result.output


def test_write_requires_a_mount(runner: CliRunner) -> None:
    result = runner.invoke(main, ["heartbeat", "write", "--host-ip", IP])
    assert result.exit_code == 2
    assert "--mount" in result.stderr


def test_write_forever_runs_the_writer_with_the_reboot_setting(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[HeartbeatWriter] = []

    def fake_run(writer: HeartbeatWriter, *, again: bool = False) -> int:
        seen.append(writer)
        return 0

    monkeypatch.setattr(cli_heartbeat, "_run_until_signalled", fake_run)
    settings = tmp_path / "s.toml"
    settings.write_text('"reboot.host.and.alert.management.on.heartbeat.timeout" = false\n')
    result = runner.invoke(
        main, ["heartbeat", "write", "--host-ip", IP, "--allow-unmounted", "--mount", str(tmp_path)]
    )
    assert result.exit_code == 0
    args = ["heartbeat", "write", "--host-ip", IP, "--allow-unmounted", "--mount", str(tmp_path)]
    result = runner.invoke(main, [*args, "--settings", str(settings)])
    assert result.exit_code == 0
    assert [writer.reboot_on_failure for writer in seen] == [True, False]


def _writer(storage: MemoryStorage, fencer: RecordingSelfFencer) -> HeartbeatWriter:
    return HeartbeatWriter(
        storage=storage,
        clock=SystemClock(),
        timing=HeartbeatTiming(max_tries=2, retry_sleep=0.001),
        host_ip=IP,
        pools=[Pool("p", "/mnt/p")],
        self_fencer=fencer,
    )


def test_sigterm_stops_the_writer_with_status_0() -> None:
    storage = MemoryStorage(SystemClock())
    storage.on_write = lambda path, data: os.kill(os.getpid(), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_heartbeat._run_until_signalled(_writer(storage, RecordingSelfFencer())) == 0
    assert storage.writes == 1
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_writer_that_ends_by_itself_is_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    storage = MemoryStorage(SystemClock())
    storage.fail_writes = True
    fencer = RecordingSelfFencer()
    assert cli_heartbeat._run_until_signalled(_writer(storage, fencer)) == 1
    assert len(fencer.calls) == 1
    assert "self-fenced, but this host is still running" in capsys.readouterr().err


def test_a_writer_that_crashes_is_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    class Failing(RecordingSelfFencer):
        def self_fence(self, reason: str) -> None:
            raise PermissionError(13, "Permission denied")

    storage = MemoryStorage(SystemClock())
    storage.fail_writes = True
    assert cli_heartbeat._run_until_signalled(_writer(storage, Failing())) == 1
    assert "the writer stopped: [Errno 13] Permission denied" in capsys.readouterr().err


def test_threads_left_are_daemons() -> None:
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("cloudha-heartbeat"))


# -- activity --------------------------------------------------------------


def test_activity_json(runner: CliRunner, tmp_path: Path) -> None:
    (mount,) = mounts(tmp_path, "pool")
    now = time.time()
    beat(mount, now - 10_000)
    volume = mount / "vols" / "v1.qcow2"
    volume.parent.mkdir()
    volume.write_bytes(b"qcow")
    os.utime(volume, (now - 50, now - 50))
    args = [
        "heartbeat",
        "activity",
        "--json",
        "--allow-unmounted",
        "--mount",
        str(mount),
        "--host-ip",
        IP,
    ]
    args += ["--volume", "vols/v1.qcow2"]
    result = runner.invoke(main, [*args, "--suspect-time", str(now - 100)])
    assert result.exit_code == 0, result.output
    report = ActivityReport.from_dict(json.loads(result.stdout))
    assert report.verdict is Verdict.ALIVE
    assert report.latest_mtime == pytest.approx(now - 50)
    assert (mount / "KVMHA" / f"ac-{IP}").exists()
    again = runner.invoke(main, [*args, "--suspect-time", str(now - 100)])
    assert json.loads(again.stdout)["verdict"] == "DEAD"  # nothing written since


def test_activity_human_output(runner: CliRunner, tmp_path: Path) -> None:
    (mount,) = mounts(tmp_path, "pool")
    beat(mount, time.time())
    result = runner.invoke(
        main,
        [
            "heartbeat",
            "activity",
            "--allow-unmounted",
            "--mount",
            str(mount),
            "--host-ip",
            IP,
            "--suspect-time",
            "0",
        ],
    )
    assert result.exit_code == 0
    assert result.stdout.startswith(f"{IP}: ALIVE: heartbeat fresh: ")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--volume", "../escape"], "'--volume'"),
        (["--volume", "/abs"], "'--volume'"),
        (["--suspect-time", "soon"], "'--suspect-time'"),
    ],
)
def test_activity_bad_input_exits_2(
    runner: CliRunner, tmp_path: Path, extra: list[str], named: str
) -> None:
    args = ["heartbeat", "activity", "--allow-unmounted", "--mount", str(tmp_path), "--host-ip", IP]
    if "--suspect-time" not in extra:
        args += ["--suspect-time", "0"]
    result = runner.invoke(main, [*args, *extra])
    assert result.exit_code == 2
    assert named in result.stderr
    assert "Traceback" not in result.output


def test_write_with_a_watchdog_refuses_unsafe_settings(runner: CliRunner, tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text('"cloudha.watchdog.timeout" = 450\n', encoding="utf-8")
    device = tmp_path / "watchdog"
    result = runner.invoke(
        main,
        [
            "heartbeat",
            "write",
            "--host-ip",
            IP,
            "--allow-unmounted",
            "--mount",
            str(tmp_path),
            "--watchdog",
            str(device),
            "--settings",
            str(settings),
        ],
    )
    assert result.exit_code == 2
    assert "cloudha.watchdog.timeout (450 s) + cloudha.watchdog.reset.margin (30 s)" in (
        result.stderr
    )
    assert "Traceback" not in result.output
    assert not device.exists()  # refused before anything was opened


def test_write_once_and_a_watchdog_do_not_mix(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        [
            *ONCE,
            "--allow-unmounted",
            "--mount",
            str(tmp_path),
            "--watchdog",
            str(tmp_path / "watchdog"),
        ],
    )
    assert result.exit_code == 2
    assert "--once and --watchdog cannot be used together" in result.stderr


def test_write_with_an_agent_ack_file_is_isolation_aware(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[HeartbeatWriter] = []

    def fake_run(writer: HeartbeatWriter, *, again: bool = False) -> int:
        seen.append(writer)
        return 0

    monkeypatch.setattr(cli_heartbeat, "_run_until_signalled", fake_run)
    ack = tmp_path / "ack"
    args = ["heartbeat", "write", "--host-ip", IP, "--allow-unmounted", "--mount", str(tmp_path)]
    settings = tmp_path / "s.toml"
    settings.write_text('"cloudha.isolation.address" = ""\n"cloudha.isolation.agent.window" = 90\n')
    result = runner.invoke(main, [*args, "--agent-ack-file", str(ack), "--settings", str(settings)])
    assert result.exit_code == 0, result.output
    (writer,) = seen
    assert writer.isolation is not None
    assert writer.agent_window == 90.0
    assert writer.isolation.isolation_answers() is None  # no address: the agent's link decides
    off = tmp_path / "off.toml"
    off.write_text('"cloudha.isolation.aware" = false\n')
    result = runner.invoke(main, [*args, "--agent-ack-file", str(ack), "--settings", str(off)])
    assert result.exit_code == 0
    assert seen[-1].isolation is None
    result = runner.invoke(main, args)
    assert seen[-1].isolation is None  # without the file there is no link to judge


def test_write_in_shadow_mode_never_resets_and_starts_the_writer_over(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[HeartbeatWriter, bool]] = []

    def fake_run(writer: HeartbeatWriter, *, again: bool = False) -> int:
        seen.append((writer, again))
        return 0

    monkeypatch.setattr(cli_heartbeat, "_run_until_signalled", fake_run)
    settings = tmp_path / "s.toml"
    settings.write_text('"cloudha.shadow" = true\n')
    args = ["heartbeat", "write", "--host-ip", IP, "--allow-unmounted", "--mount", str(tmp_path)]
    result = runner.invoke(main, [*args, "--settings", str(settings)])
    assert result.exit_code == 0, result.output
    ((writer, again),) = seen
    assert again is True
    assert isinstance(writer.self_fencer, cli_heartbeat.ShadowSelfFencer)
    assert writer.watchdog is None


def test_a_shadow_writer_that_self_fenced_runs_again_until_stopped() -> None:
    storage = MemoryStorage(SystemClock())
    storage.fail_writes = True
    runs: list[int] = []

    class Fencer(RecordingSelfFencer):
        def self_fence(self, reason: str) -> None:
            super().self_fence(reason)
            runs.append(1)
            if len(runs) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    fencer = Fencer()
    writer = _writer(storage, fencer)
    assert cli_heartbeat._run_until_signalled(writer, again=True) == 0
    assert len(fencer.calls) >= 3


# -- mount points ----------------------------------------------------------


def one_line_exit_2(result: Result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0]


def test_write_refuses_a_mount_point_that_does_not_exist(runner: CliRunner) -> None:
    result = runner.invoke(main, [*ONCE, "--mount", "/nonexistent"])
    one_line_exit_2(result, "cloudha heartbeat write:", "'--mount'", "/nonexistent")
    assert not Path("/nonexistent").exists()


def test_write_refuses_a_directory_where_nothing_is_mounted(
    runner: CliRunner, tmp_path: Path
) -> None:
    (pool,) = mounts(tmp_path, "pool")
    result = runner.invoke(main, [*ONCE, "--mount", str(pool)])
    one_line_exit_2(result, f"nothing is mounted at {pool}", "neighbours", "--allow-unmounted")
    assert list(pool.iterdir()) == []  # nothing written to the local disk
    allowed = runner.invoke(main, [*ONCE, "--mount", str(pool), "--allow-unmounted"])
    assert allowed.exit_code == 0, allowed.output
    assert Path(heartbeat_path(str(pool), IP)).exists()


@pytest.mark.parametrize(
    "command",
    [
        ["heartbeat", "check", "--host-ip", IP],
        ["heartbeat", "activity", "--host-ip", IP, "--suspect-time", "0"],
    ],
)
def test_readers_refuse_a_directory_where_nothing_is_mounted(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    (pool,) = mounts(tmp_path, "pool")
    beat(pool, time.time())
    result = runner.invoke(main, [*command, "--mount", str(pool)])
    one_line_exit_2(result, f"cloudha {command[0]} {command[1]}:", "nothing is mounted")
    allowed = runner.invoke(main, [*command, "--mount", str(pool), "--allow-unmounted", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["verdict"] == "ALIVE"


def test_a_real_mount_point_is_accepted(runner: CliRunner) -> None:
    assert cli_heartbeat.is_mount_point("/proc")
    result = runner.invoke(
        main, ["heartbeat", "check", "--json", "--host-ip", IP, "--mount", "/proc"]
    )
    assert result.exit_code == 0, result.output
    (reading,) = json.loads(result.stdout)["readings"]
    assert reading["pool_id"] == "/proc"


def test_a_bind_mount_is_found_in_mountinfo(tmp_path: Path) -> None:
    pool = tmp_path / "my pool"
    pool.mkdir()
    escaped = str(pool).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"99 22 8:1 /srv/nfs {escaped} rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    )
    assert not os.path.ismount(pool)
    assert cli_heartbeat.is_mount_point(str(pool), mountinfo=str(mountinfo))
    assert not cli_heartbeat.is_mount_point(str(tmp_path), mountinfo=str(mountinfo))
    assert not cli_heartbeat.is_mount_point(str(pool), mountinfo=str(tmp_path / "missing"))


def test_write_once_json(runner: CliRunner, tmp_path: Path, fast_settings: Path) -> None:
    (good,) = mounts(tmp_path, "good")
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")
    args = [*ONCE, "--allow-unmounted", "--json", "--mount", str(good)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"host_ip": IP, "written": [str(good)], "failed": []}
    args += ["--mount", str(blocked), "--settings", str(fast_settings)]
    failed = runner.invoke(main, args)
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["failed"] == [str(blocked)]
    assert failed.stderr.splitlines() == [f"cloudha heartbeat write: not written to {blocked}"]


@pytest.mark.parametrize(("status", "stopped"), [(0, "signal"), (1, "writer")])
def test_write_forever_json_says_why_it_stopped(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, stopped: str
) -> None:
    monkeypatch.setattr(cli_heartbeat, "_run_until_signalled", lambda writer, again=False: status)
    args = ["heartbeat", "write", "--json", "--allow-unmounted", "--host-ip", IP]
    result = runner.invoke(main, [*args, "--mount", str(tmp_path)])
    assert result.exit_code == status
    assert json.loads(result.stdout) == {
        "host_ip": IP,
        "pools": [str(tmp_path)],
        "stopped": stopped,
    }
