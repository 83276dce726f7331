"""SSHTransport and SFTPStorage against a real OpenSSH server on loopback."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cloudha.errors import (
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeHostKeyError,
    ProbeTimeout,
)
from cloudha.transport.ssh import CommandResult, SFTPStorage, SSHTransport
from tests.integration.sshd import SshServer, sshd_server  # noqa: F401

pytestmark = pytest.mark.integration

HOSTILE = [
    "; touch MARKER",
    "$(touch MARKER)",
    "`touch MARKER`",
    "&& touch MARKER",
    "|| touch MARKER |",
    "> MARKER",
    "line one\nline two; touch MARKER",
    "  spaces  inside  ",
    "it's",
    '"double" quotes',
    "*",
    "$HOME ${PATH}",
    "",
    "#comment",
]


def make_transport(server: SshServer, **kwargs: Any) -> SSHTransport:
    options: dict[str, Any] = {
        "username": server.username,
        "port": server.port,
        "key_filename": server.client_key,
        "known_hosts": server.known_hosts,
        "connect_timeout": 5.0,
    }
    options.update(kwargs)
    return SSHTransport(**options)


@pytest.fixture
def ssh(sshd_server: SshServer) -> Iterator[SSHTransport]:  # noqa: F811
    with make_transport(sshd_server) as transport:
        yield transport


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def test_hostile_arguments_are_passed_literally(ssh: SSHTransport, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    args = [a.replace("MARKER", str(marker)) for a in HOSTILE]
    result = ssh.run("127.0.0.1", ["echo", *args], timeout=10)
    assert result.exit_status == 0
    assert result.stdout.decode() == " ".join(args) + "\n"
    assert result.stderr == b""
    assert not marker.exists()


def test_arguments_round_trip_exactly_through_printf(ssh: SSHTransport, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    args = [a.replace("MARKER", str(marker)) for a in HOSTILE] + [
        "-n",
        "--",
        "back\\slash",
        "tab\there",
    ]
    result = ssh.run("127.0.0.1", ["printf", "%s\\0", *args], timeout=10).check()
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not marker.exists()


def test_exit_status_and_stderr_propagate(ssh: SSHTransport) -> None:
    result = ssh.run(
        "127.0.0.1", ["sh", "-c", "echo out; echo oops >&2; exit 3"], timeout=10, host_id="h1"
    )
    assert isinstance(result, CommandResult)
    assert result.argv == ("sh", "-c", "echo out; echo oops >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, b"out\n", b"oops\n")
    assert 0 < result.duration < 10
    with pytest.raises(ProbeError, match=r"'sh' exited with status 3: oops"):
        result.check()


def test_stdin_is_sent_and_closed(ssh: SSHTransport) -> None:
    result = ssh.run("127.0.0.1", ["cat"], timeout=10, stdin=b"hello\x00world\n").check()
    assert result.stdout == b"hello\x00world\n"
    assert ssh.run("127.0.0.1", ["cat"], timeout=10).check().stdout == b""


def test_output_is_truncated_at_max_output(ssh: SSHTransport) -> None:
    result = ssh.run(
        "127.0.0.1",
        ["sh", "-c", "head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2; exit 4"],
        timeout=10,
        max_output=1000,
    )
    assert (len(result.stdout), len(result.stderr), result.exit_status) == (1000, 1000, 4)


def test_python_one_liner_through_run(ssh: SSHTransport) -> None:
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    result = ssh.run("127.0.0.1", [sys.executable, "-c", code, "a b", "$(x)", "'"], timeout=10)
    assert result.check().stdout.decode().strip() == '["a b", "$(x)", "\'"]'


def test_sleeping_command_times_out(ssh: SSHTransport) -> None:
    start = time.monotonic()
    with pytest.raises(ProbeTimeout, match=r"127\.0\.0\.1:\d+") as info:
        ssh.run("127.0.0.1", ["sleep", "30"], timeout=1.0, host_id="h7")
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.5
    assert info.value.host_id == "h7"
    # The connection survives a timed-out command.
    assert ssh.run("127.0.0.1", ["true"], timeout=5).exit_status == 0


def test_file_round_trip(ssh: SSHTransport, tmp_path: Path) -> None:
    target = str(tmp_path / "hb")
    ssh.write_file_atomic("127.0.0.1", target, b"one", timeout=5)
    assert ssh.read_file("127.0.0.1", target, timeout=5) == b"one"
    ssh.write_file_atomic("127.0.0.1", target, b"two\x00" * 1000, timeout=5)
    assert ssh.read_file("127.0.0.1", target, timeout=5) == b"two\x00" * 1000
    assert ssh.read_file("127.0.0.1", target, timeout=5, max_bytes=5) == b"two\x00t"
    assert ssh.stat_mtime("127.0.0.1", target, timeout=5) == int(os.stat(target).st_mtime)
    assert abs(ssh.stat_mtime("127.0.0.1", target, timeout=5) - time.time()) < 5
    assert os.listdir(tmp_path) == ["hb"]  # no temporary file left behind


def test_missing_files_raise_file_not_found(ssh: SSHTransport, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1"):
        ssh.read_file("127.0.0.1", missing, timeout=5)
    with pytest.raises(FileNotFoundError):
        ssh.stat_mtime("127.0.0.1", missing, timeout=5)
    with pytest.raises(FileNotFoundError):
        ssh.write_file_atomic("127.0.0.1", str(tmp_path / "no" / "dir"), b"x", timeout=5)
    assert os.listdir(tmp_path) == []


def test_reading_a_directory_is_a_probe_error(ssh: SSHTransport, tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"127\.0\.0\.1:\d+") as info:
        ssh.read_file("127.0.0.1", str(tmp_path), timeout=5, host_id="h3")
    assert info.value.host_id == "h3"


def test_sftp_storage_round_trip(ssh: SSHTransport, tmp_path: Path) -> None:
    storage = SFTPStorage(ssh, "127.0.0.1", timeout=5)
    path = str(tmp_path / "pool" / "hb" / "host-1")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(path, max_bytes=100)
    with pytest.raises(FileNotFoundError):
        storage.mtime(path)
    storage.write_atomic(path, b"1700000000")  # creates pool/hb
    assert storage.read_bytes(path, max_bytes=100) == b"1700000000"
    assert storage.read_bytes(path, max_bytes=4) == b"1700"
    assert storage.mtime(path) == int(os.stat(path).st_mtime)
    storage.write_atomic(path, b"1700000001")
    assert Path(path).read_bytes() == b"1700000001"
    assert os.listdir(tmp_path / "pool" / "hb") == ["host-1"]
    with pytest.raises(OSError, match="failed") as info:
        storage.read_bytes(str(tmp_path), max_bytes=10)  # a directory
    assert not isinstance(info.value, FileNotFoundError)


def test_sftp_storage_failures_are_oserrors(sshd_server: SshServer, tmp_path: Path) -> None:  # noqa: F811
    ssh = make_transport(sshd_server, port=closed_port())
    with ssh, pytest.raises(OSError, match=r"127\.0\.0\.1"):
        SFTPStorage(ssh, "127.0.0.1", timeout=5).read_bytes("/etc/hostname", max_bytes=10)
    wrong = keygen(tmp_path / "wrong")
    with make_transport(sshd_server, key_filename=wrong) as ssh:
        with pytest.raises(OSError, match="authentication failed") as info:
            SFTPStorage(ssh, "127.0.0.1", timeout=5).mtime("/etc/hostname")
        assert isinstance(info.value.__cause__, ProbeAuthError)


def test_unknown_host_key_is_rejected_by_default(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = make_transport(sshd_server, known_hosts=empty)
    with ssh, pytest.raises(ProbeHostKeyError, match="not in known_hosts") as info:
        ssh.run("127.0.0.1", ["true"], timeout=5, host_id="h9")
    assert info.value.host_id == "h9"
    assert f"127.0.0.1:{sshd_server.port}" in str(info.value)


def test_default_known_hosts_missing_rejects_every_host(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts there
    with make_transport(sshd_server, known_hosts=None) as ssh, pytest.raises(ProbeHostKeyError):
        ssh.run("127.0.0.1", ["true"], timeout=5)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text(sshd_server.known_hosts.read_text())
    with make_transport(sshd_server, known_hosts=None) as ssh:
        assert ssh.run("127.0.0.1", ["true"], timeout=5).exit_status == 0


def test_changed_host_key_is_rejected(sshd_server: SshServer, tmp_path: Path) -> None:  # noqa: F811
    other = keygen(tmp_path / "other_host")
    key_type, key = Path(f"{other}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {key_type} {key}\n")
    for accept in (False, True):
        with (
            make_transport(
                sshd_server, known_hosts=known_hosts, accept_unknown_host_keys=accept
            ) as ssh,
            pytest.raises(ProbeHostKeyError, match="does not match") as info,
        ):
            ssh.run("127.0.0.1", ["true"], timeout=5)
        assert key not in str(info.value)


def test_accept_unknown_host_keys_connects_and_warns(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    caplog.set_level(logging.WARNING, logger="cloudha.transport.ssh")
    with make_transport(sshd_server, known_hosts=empty, accept_unknown_host_keys=True) as ssh:
        assert ssh.run("127.0.0.1", ["echo", "ok"], timeout=5).stdout == b"ok\n"
        ssh.close()
        assert ssh.run("127.0.0.1", ["true"], timeout=5).exit_status == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("man-in-the-middle" in m for m in messages)
    assert sum("accepting unverified" in m for m in messages) == 1
    assert empty.read_text() == ""  # accepted keys are not written back


def test_wrong_client_key_is_an_auth_error(sshd_server: SshServer, tmp_path: Path) -> None:  # noqa: F811
    wrong = keygen(tmp_path / "wrong")
    ssh = make_transport(sshd_server, key_filename=wrong)
    with ssh, pytest.raises(ProbeAuthError) as info:
        ssh.run("127.0.0.1", ["true"], timeout=5)
    assert not isinstance(info.value, ProbeHostKeyError)
    assert f"127.0.0.1:{sshd_server.port}" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_closed_port_is_a_connection_error(sshd_server: SshServer) -> None:  # noqa: F811
    port = closed_port()
    with make_transport(sshd_server, port=port) as ssh:
        start = time.monotonic()
        with pytest.raises(ProbeConnectionError, match=f"127.0.0.1:{port}") as info:
            ssh.run("127.0.0.1", ["true"], timeout=5)
        assert time.monotonic() - start < 1.0
    assert info.value.host_id == "127.0.0.1"


def test_eight_threads_share_one_connection(ssh: SSHTransport) -> None:
    def work(i: int) -> bytes:
        return b"".join(
            ssh.run("127.0.0.1", ["echo", f"{i}-{j}"], timeout=10).check().stdout for j in range(2)
        )

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(work, range(8)))
    assert outputs == [f"{i}-0\n{i}-1\n".encode() for i in range(8)]
    assert len(ssh._connections) == 1


def test_more_threads_than_channels_per_connection(ssh: SSHTransport) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda i: ssh.run("127.0.0.1", ["sleep", "0.2"], timeout=10), range(16))
        )
    assert [r.exit_status for r in results] == [0] * 16


def test_reconnects_after_the_connection_is_closed_underneath(ssh: SSHTransport) -> None:
    assert ssh.run("127.0.0.1", ["true"], timeout=5).exit_status == 0
    first = ssh._connections["127.0.0.1"]
    first.transport.close()  # e.g. sshd restarted, or a NAT dropped the flow
    assert ssh.run("127.0.0.1", ["echo", "again"], timeout=5).stdout == b"again\n"
    assert ssh._connections["127.0.0.1"] is not first
    assert ssh.read_file("127.0.0.1", "/proc/self/stat", timeout=5, max_bytes=1) != b""


def test_reconnects_when_the_server_drops_the_connection(
    ssh: SSHTransport,
    sshd_server: SshServer,  # noqa: F811
) -> None:
    # Kill the per-connection sshd process: the client notices only on next use.
    pid = int(ssh.run("127.0.0.1", ["sh", "-c", "echo $PPID"], timeout=5).stdout)
    os.kill(pid, 9)
    assert ssh.run("127.0.0.1", ["echo", "back"], timeout=5).stdout == b"back\n"


@pytest.mark.parametrize(("timeout", "connect_timeout"), [(0.5, 5.0), (5.0, 0.5)])
def test_a_silent_server_cannot_hold_a_call_past_its_deadline(
    sshd_server: SshServer,  # noqa: F811
    timeout: float,
    connect_timeout: float,
) -> None:
    # A listener that never speaks: TCP connects, the SSH banner never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        ssh = make_transport(sshd_server, port=port, connect_timeout=connect_timeout)
        start = time.monotonic()
        with ssh, pytest.raises(ProbeTimeout, match=f"127.0.0.1:{port}"):
            ssh.run("127.0.0.1", ["true"], timeout=timeout)
        assert 0.4 < time.monotonic() - start < 1.0
