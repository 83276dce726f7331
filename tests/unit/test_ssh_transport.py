"""SSHTransport without a server: quoting, validation, error mapping, connection reuse."""

from __future__ import annotations

import errno
import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeHostKeyError,
    ProbeTimeout,
)
from cloudha.transport import _ssh_keys as ssh_keys
from cloudha.transport import ssh as ssh_module
from cloudha.transport.ssh import CommandResult, SFTPStorage, SSHTransport

# -- quoting ---------------------------------------------------------------------

HOSTILE = [
    "; touch /tmp/x",
    "$(touch /tmp/x)",
    "`touch /tmp/x`",
    "a\nb",
    "  spaces  ",
    "it's",
    '"dq"',
    "\\",
    "*",
    "",
    "-n",
    "$HOME",
    "|&<>",
]


def test_command_line_is_shlex_join() -> None:
    argv = ["echo", *HOSTILE]
    line = ssh_module._command_line(argv)
    assert line == shlex.join(argv)
    assert shlex.split(line) == argv


@given(st.lists(st.text(st.characters(exclude_characters="\0")), min_size=1))
def test_any_argv_round_trips_through_the_shell_quoting(argv: list[str]) -> None:
    assert shlex.split(ssh_module._command_line(argv)) == argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "must not be empty"),
        ("ls -l", "not a string"),
        (["echo", "a\0b"], "NUL"),
        (["echo", b"bytes"], "must be str"),
    ],
)
def test_bad_argv_is_a_configuration_error(argv: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SSHTransport().run("h1", argv, timeout=1)


@pytest.mark.parametrize("address", ["", "a b", "-oProxyCommand=touch /tmp/x", "h\0", "h\n", "\th"])
def test_bad_address_is_a_configuration_error(address: str) -> None:
    transport = SSHTransport()
    with pytest.raises(ConfigurationError, match="invalid SSH address") as info:
        transport.run(address, ["true"], timeout=1)
    assert info.value.value == address
    with pytest.raises(ConfigurationError):
        transport.read_file(address, "/x", timeout=1)
    with pytest.raises(ConfigurationError):
        SFTPStorage(transport, address, timeout=1)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_bad_timeout_is_a_configuration_error(timeout: float) -> None:
    transport = SSHTransport()
    with pytest.raises(ConfigurationError, match="timeout"):
        transport.run("h1", ["true"], timeout=timeout)
    with pytest.raises(ConfigurationError, match="timeout"):
        transport.stat_mtime("h1", "/x", timeout=timeout)


def test_bad_limits_and_paths_are_configuration_errors() -> None:
    transport = SSHTransport()
    with pytest.raises(ConfigurationError, match="max_output"):
        transport.run("h1", ["true"], timeout=1, max_output=-1)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        transport.read_file("h1", "/x", timeout=1, max_bytes=-1)
    for path in ("", "/a\0b"):
        with pytest.raises(ConfigurationError, match="remote path"):
            transport.read_file("h1", path, timeout=1)
    with pytest.raises(ConfigurationError, match="file path"):
        transport.write_file_atomic("h1", "/dir/", b"", timeout=1)


# -- construction ------------------------------------------------------------------


def test_missing_known_hosts_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "known_hosts"
    with pytest.raises(ConfigurationError, match=str(missing)) as info:
        SSHTransport(known_hosts=missing)
    assert info.value.key == "known_hosts"


def test_default_known_hosts_may_be_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    SSHTransport()  # no ~/.ssh/known_hosts: every host will be refused, but no error yet


@pytest.fixture(scope="module")
def rsa_key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(1024)


def test_key_file_problems_are_configuration_errors(
    tmp_path: Path, rsa_key: paramiko.RSAKey
) -> None:
    with pytest.raises(ConfigurationError, match="cannot load SSH key") as info:
        SSHTransport(key_filename=tmp_path / "missing")
    assert info.value.key == "key_filename"
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigurationError, match="cannot load SSH key"):
        SSHTransport(key_filename=garbage)
    encrypted = tmp_path / "encrypted"
    rsa_key.write_private_key_file(str(encrypted), password="secret")
    with pytest.raises(ConfigurationError, match="encrypted") as info:
        SSHTransport(key_filename=str(encrypted))
    assert "secret" not in str(info.value)
    plain = tmp_path / "plain"
    rsa_key.write_private_key_file(str(plain))
    SSHTransport(key_filename=plain)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 65536},
        {"port": True},
        {"username": ""},
        {"connect_timeout": 0},
        {"keepalive_interval": -1},
    ],
)
def test_bad_options_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SSHTransport(**kwargs)


def test_accepting_unknown_host_keys_warns_once_at_construction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cloudha.transport.ssh")
    SSHTransport()
    assert caplog.records == []
    SSHTransport(accept_unknown_host_keys=True)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "man-in-the-middle" in record.getMessage()


# -- CommandResult -----------------------------------------------------------------


def test_check_returns_self_on_success() -> None:
    result = CommandResult(("true",), 0, b"", b"", 0.1)
    assert result.check() is result


def test_check_names_command_status_and_first_stderr_line() -> None:
    result = CommandResult(("virsh", "list"), 2, b"out", b"\nerror: no connection\nmore\n", 0.1)
    with pytest.raises(ProbeError, match=r"^'virsh' exited with status 2: error: no connection$"):
        result.check()
    with pytest.raises(ProbeError, match=r"^'sh' exited with status -1$"):
        CommandResult(("sh",), -1, b"", b"", 0.1).check()


# -- error mapping -------------------------------------------------------------------


def _key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


GOT, EXPECTED = _key(), _key()

MAPPING: list[tuple[BaseException, type[ProbeError]]] = [
    (
        ssh_keys.UnknownHostKeyError("Server '[h1]:2222' not found in known_hosts"),
        ProbeHostKeyError,
    ),
    (paramiko.SSHException("Server 'h1' not found in known_hosts"), ProbeHostKeyError),
    (paramiko.BadHostKeyException("h1", GOT, EXPECTED), ProbeHostKeyError),
    (paramiko.AuthenticationException("Authentication failed."), ProbeAuthError),
    (paramiko.BadAuthenticationType("Bad authentication type", ["password"]), ProbeAuthError),
    (socket.timeout("timed out"), ProbeTimeout),  # noqa: UP041 (what paramiko raises)
    (TimeoutError(), ProbeTimeout),
    (
        paramiko.ssh_exception.NoValidConnectionsError(
            {("127.0.0.1", 22): ConnectionRefusedError(errno.ECONNREFUSED, "refused")}
        ),
        ProbeConnectionError,
    ),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ProbeConnectionError),
    (ConnectionResetError(errno.ECONNRESET, "reset"), ProbeConnectionError),
    (OSError(errno.EHOSTUNREACH, "No route to host"), ProbeConnectionError),
    (socket.gaierror(-2, "Name or service not known"), ProbeConnectionError),
    (EOFError(), ProbeConnectionError),
    (paramiko.SSHException("Error reading SSH protocol banner"), ProbeConnectionError),
    (paramiko.ChannelException(2, "Connect failed"), ProbeConnectionError),
    (PermissionError(errno.EACCES, "Permission denied"), ProbeError),
    (OSError("Failure"), ProbeError),
]


@pytest.mark.parametrize(("exc", "expected"), MAPPING, ids=lambda v: type(v).__name__)
def test_foreign_errors_map_to_the_most_specific_class(
    exc: BaseException, expected: type[ProbeError]
) -> None:
    assert isinstance(exc, ssh_module._foreign_errors())
    mapped = ssh_module._map_error(exc, where="h1:2222", host_id="host-1", what="connecting to")
    assert type(mapped) is expected
    assert isinstance(mapped, ProbeError)
    assert mapped.host_id == "host-1"
    assert "h1:2222" in str(mapped)
    assert GOT.get_base64() not in str(mapped)
    assert EXPECTED.get_base64() not in str(mapped)


@pytest.mark.parametrize(("exc", "expected"), MAPPING, ids=lambda v: type(v).__name__)
def test_anything_after_the_deadline_is_a_timeout(
    exc: BaseException, expected: type[ProbeError]
) -> None:
    mapped = ssh_module._map_error(exc, where="h1:22", host_id="h1", what="x", timed_out=True)
    assert type(mapped) is ProbeTimeout


@pytest.mark.parametrize(("exc", "expected"), MAPPING, ids=lambda v: type(v).__name__)
def test_public_methods_raise_mapped_errors(
    exc: BaseException, expected: type[ProbeError], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: SSHTransport, address: str, watchdog: object) -> Any:
        raise exc

    monkeypatch.setattr(SSHTransport, "_new_client", fail)
    transport = SSHTransport(port=2222)
    with pytest.raises(expected) as info:
        transport.run("10.0.0.9", ["true"], timeout=5, host_id="host-9")
    assert type(info.value) is expected
    assert info.value.host_id == "host-9"
    assert "10.0.0.9:2222" in str(info.value)
    with pytest.raises(expected) as info:
        transport.read_file("10.0.0.9", "/x", timeout=5)
    assert info.value.host_id == "10.0.0.9"


# -- connection handling with fake paramiko objects ---------------------------------


class FakeChannel:
    """Enough of paramiko.Channel for SSHTransport.run."""

    def __init__(self, stdout: bytes = b"", stderr: bytes = b"", status: int | None = 0) -> None:
        self._out = bytearray(stdout)
        self._err = bytearray(stderr)
        self.exit_status = -1 if status is None else status
        self.status_event = threading.Event()
        if status is not None:
            self.status_event.set()
        self.eof_received = status is not None
        self.closed = False
        self.command: str | None = None
        self.stdin = b""
        self.write_shut = False
        self._read_fd, self._write_fd = os.pipe()
        if status is not None:
            os.write(self._write_fd, b"x")  # "data or EOF arrived"

    def settimeout(self, timeout: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command = command

    def sendall(self, data: bytes) -> None:
        self.stdin += data

    def shutdown_write(self) -> None:
        self.write_shut = True

    def fileno(self) -> int:
        return self._read_fd

    def recv_ready(self) -> bool:
        return bool(self._out)

    def recv(self, n: int) -> bytes:
        data, self._out[:n] = bytes(self._out[:n]), b""
        return data

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv_stderr(self, n: int) -> bytes:
        data, self._err[:n] = bytes(self._err[:n]), b""
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)


class FakeTransport:
    def __init__(self, channels: list[FakeChannel | BaseException]) -> None:
        self.active = True
        self.channels = channels

    def is_active(self) -> bool:
        return self.active

    def set_keepalive(self, interval: float) -> None:
        self.keepalive = interval

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        item = self.channels.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class FakeClient:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.closed = False

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        self.closed = True
        self.transport.active = False


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeClient]]:
    """Queue FakeClients here; SSHTransport connects to them in order."""
    queue: list[FakeClient] = []
    made: list[FakeClient] = []

    def connect(self: SSHTransport, address: str, watchdog: object) -> FakeClient:
        client = queue.pop(0)
        made.append(client)
        return client

    monkeypatch.setattr(SSHTransport, "_new_client", connect)
    yield queue
    assert not queue, "not every queued client was used"


def test_run_sends_the_quoted_command_and_stdin(clients: list[FakeClient]) -> None:
    chan = FakeChannel(stdout=b"out", stderr=b"err", status=3)
    clients.append(FakeClient(FakeTransport([chan])))
    result = SSHTransport().run("h1", ["echo", "a b", "$(x)"], timeout=5, stdin=b"in")
    assert chan.command == "echo 'a b' '$(x)'"
    assert (chan.stdin, chan.write_shut, chan.closed) == (b"in", True, True)
    assert (result.argv, result.exit_status, result.stdout, result.stderr) == (
        ("echo", "a b", "$(x)"),
        3,
        b"out",
        b"err",
    )


def test_output_beyond_max_output_is_dropped(clients: list[FakeClient]) -> None:
    chan = FakeChannel(stdout=b"o" * 100_000, stderr=b"e" * 10, status=0)
    clients.append(FakeClient(FakeTransport([chan])))
    result = SSHTransport().run("h1", ["yes"], timeout=5, max_output=50)
    assert (result.stdout, result.stderr) == (b"o" * 50, b"e" * 10)


def test_a_command_without_exit_status_times_out(clients: list[FakeClient]) -> None:
    chan = FakeChannel(status=None)
    clients.append(FakeClient(FakeTransport([chan])))
    with pytest.raises(ProbeTimeout, match="'sleep'") as info:
        SSHTransport().run("h1", ["sleep", "9"], timeout=0.05, host_id="host-1")
    assert info.value.host_id == "host-1"
    assert chan.closed


def test_a_lost_connection_is_not_an_exit_status(clients: list[FakeClient]) -> None:
    transport = FakeTransport([])

    class Dying(FakeChannel):
        def exec_command(self, command: str) -> None:
            transport.active = False  # the connection drops: no exit status comes

    transport.channels.append(Dying(status=-1))
    clients.append(FakeClient(transport))
    with pytest.raises(ProbeConnectionError, match=r"connection to h1:22 lost"):
        SSHTransport().run("h1", ["true"], timeout=5)


def test_connections_are_cached_per_address(clients: list[FakeClient]) -> None:
    one = FakeClient(FakeTransport([FakeChannel(), FakeChannel()]))
    two = FakeClient(FakeTransport([FakeChannel()]))
    clients.extend([one, two])
    ssh = SSHTransport(keepalive_interval=7)
    ssh.run("h1", ["true"], timeout=5)
    ssh.run("h2", ["true"], timeout=5)
    ssh.run("h1", ["true"], timeout=5)
    assert one.transport.keepalive == 7
    with ssh:
        pass
    assert one.closed
    assert two.closed


def test_an_inactive_cached_connection_is_replaced(clients: list[FakeClient]) -> None:
    first = FakeClient(FakeTransport([FakeChannel()]))
    second = FakeClient(FakeTransport([FakeChannel(stdout=b"2")]))
    clients.extend([first, second])
    ssh = SSHTransport()
    ssh.run("h1", ["true"], timeout=5)
    first.transport.active = False
    assert ssh.run("h1", ["true"], timeout=5).stdout == b"2"
    assert first.closed


def test_a_cached_connection_failing_to_open_a_channel_is_replaced_once(
    clients: list[FakeClient],
) -> None:
    broken = FakeClient(FakeTransport([FakeChannel(), paramiko.SSHException("dead")]))
    fresh = FakeClient(FakeTransport([FakeChannel(stdout=b"ok")]))
    clients.extend([broken, fresh])
    ssh = SSHTransport()
    ssh.run("h1", ["true"], timeout=5)
    assert ssh.run("h1", ["true"], timeout=5).stdout == b"ok"
    assert broken.closed
    assert not fresh.closed


def test_reconnecting_happens_only_once(clients: list[FakeClient]) -> None:
    broken = FakeClient(FakeTransport([FakeChannel(), EOFError()]))
    also_broken = FakeClient(FakeTransport([paramiko.ChannelException(1, "prohibited")]))
    clients.extend([broken, also_broken])
    ssh = SSHTransport()
    ssh.run("h1", ["true"], timeout=5)
    with pytest.raises(ProbeConnectionError, match="opening a channel") as info:
        ssh.run("h1", ["true"], timeout=5, host_id="host-1")
    assert info.value.host_id == "host-1"
    assert broken.closed
    assert also_broken.closed


def test_a_fresh_connection_failing_to_open_a_channel_is_not_retried(
    clients: list[FakeClient],
) -> None:
    clients.append(FakeClient(FakeTransport([paramiko.SSHException("no")])))
    with pytest.raises(ProbeConnectionError):
        SSHTransport().run("h1", ["true"], timeout=5)


def test_close_defers_closing_a_connection_in_use(clients: list[FakeClient]) -> None:
    client = FakeClient(FakeTransport([FakeChannel()]))
    clients.append(client)
    ssh = SSHTransport()
    seen: list[bool] = []
    chan = client.transport.channels[0]
    assert isinstance(chan, FakeChannel)

    def exec_command(command: str) -> None:
        ssh.close()  # another thread closes the transport mid-call
        seen.append(client.closed)

    chan.exec_command = exec_command  # type: ignore[method-assign]
    assert ssh.run("h1", ["true"], timeout=5).exit_status == 0
    assert seen == [False]
    assert client.closed


# -- SFTPStorage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [ProbeAuthError("auth failed on h1:22", host_id="h1"), ProbeError("Failure on h1:22")],
)
def test_sftp_storage_wraps_probe_errors_in_oserror(
    error: ProbeError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> Any:
        raise error

    transport = SSHTransport()
    for name in ("read_file", "stat_mtime", "_write_atomic"):
        monkeypatch.setattr(transport, name, fail)
    storage = SFTPStorage(transport, "h1", timeout=1)
    for call in (
        lambda: storage.read_bytes("/p", max_bytes=1),
        lambda: storage.mtime("/p"),
        lambda: storage.write_atomic("/p", b""),
    ):
        with pytest.raises(OSError, match=str(error)) as info:
            call()
        assert info.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "no such file", "/p"),
        ProbeTimeout("timed out", host_id="h1"),
        ProbeConnectionError("refused", host_id="h1"),
    ],
)
def test_sftp_storage_raises_oserrors_as_they_are(
    error: OSError, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> Any:
        raise error

    transport = SSHTransport()
    monkeypatch.setattr(transport, "read_file", fail)
    with pytest.raises(type(error), match=re.escape(str(error))) as info:
        SFTPStorage(transport, "h1", timeout=1).read_bytes("/p", max_bytes=1)
    assert info.value is error


def test_sftp_storage_passes_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def read_file(address: str, path: str, **kwargs: Any) -> bytes:
        calls.append((address, path, kwargs))
        return b"data"

    transport = SSHTransport()
    monkeypatch.setattr(transport, "read_file", read_file)
    storage = SFTPStorage(transport, "10.0.0.2", timeout=3.0, host_id="host-2")
    assert storage.read_bytes("/hb", max_bytes=10) == b"data"
    assert calls == [("10.0.0.2", "/hb", {"timeout": 3.0, "max_bytes": 10, "host_id": "host-2"})]


# -- helpers -------------------------------------------------------------------------


class FakeSFTP:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.made: list[str] = []

    def stat(self, path: str) -> None:
        if path not in self.existing:
            raise FileNotFoundError(errno.ENOENT, "No such file", path)

    def mkdir(self, path: str) -> None:
        self.existing.add(path)
        self.made.append(path)


def test_makedirs_creates_only_the_missing_directories() -> None:
    sftp = FakeSFTP({"/srv"})
    ssh_module._makedirs(sftp, "/srv/pool/hb")  # type: ignore[arg-type]
    assert sftp.made == ["/srv/pool", "/srv/pool/hb"]
    ssh_module._makedirs(sftp, "/srv/pool/hb")  # type: ignore[arg-type]
    assert sftp.made == ["/srv/pool", "/srv/pool/hb"]


def test_watchdog_runs_closers_once_the_deadline_passes() -> None:
    fired: list[str] = []
    watchdog = ssh_module._Watchdog(0.0)
    watchdog.guard(lambda: fired.append("early"))
    watchdog._timer.join(5)
    assert watchdog.expired()
    watchdog.guard(lambda: fired.append("late"))  # already past: runs at once
    assert fired == ["early", "late"]
    assert watchdog.disarm() is False


def test_disarmed_watchdog_never_fires() -> None:
    fired: list[str] = []
    watchdog = ssh_module._Watchdog(time.monotonic() + 3600.0)
    watchdog.guard(lambda: fired.append("x"))
    assert watchdog.disarm() is True
    watchdog.guard(lambda: fired.append("y"))
    assert fired == []
    assert not watchdog.expired()


@pytest.mark.parametrize("path", ["", "/a\0b"])
def test_sftp_storage_reports_a_bad_path_as_oserror(path: str) -> None:
    storage = SFTPStorage(SSHTransport(), "h1", timeout=1)
    for call in (
        lambda: storage.read_bytes(path, max_bytes=1),
        lambda: storage.mtime(path),
        lambda: storage.write_atomic(path, b""),
    ):
        with pytest.raises(OSError, match="path") as info:
            call()
        assert isinstance(info.value.__cause__, ConfigurationError)
