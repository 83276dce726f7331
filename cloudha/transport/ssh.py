"""SSH transport over paramiko: run commands and read/write files on hosts.

:class:`SSHTransport` runs an argv on a host (quoted with :func:`shlex.join`,
so no argument can inject shell syntax) and reads, stats and atomically
writes files over SFTP. :class:`SFTPStorage` adapts it to the ``StorageAccess``
shape the storage heartbeat checker uses.

Contract shared by every public method:

* ``timeout`` is a hard deadline in seconds for the whole call: connecting
  (when there is no cached connection), opening the channel, running the
  command and reading its output. A watchdog closes the channel or socket
  when it passes, so no paramiko call can block past it (name resolution of
  a host *name* is the one step it cannot interrupt; use addresses).
* Errors are :mod:`cloudha.errors` classes with ``host_id`` set to the
  ``host_id`` argument, or to ``address`` when it is None, and a message
  naming ``address:port``:

  ========================================================  =========================
  paramiko / socket failure                                 raised as
  ========================================================  =========================
  deadline passed, ``socket.timeout`` / ``TimeoutError``    ProbeTimeout
  unknown host key (RejectPolicy), ``BadHostKeyException``  ProbeHostKeyError
  ``AuthenticationException``                               ProbeAuthError
  refused / unreachable / reset, ``EOFError``, other        ProbeConnectionError
  ``SSHException``
  SFTP status error (permission denied, failure)            ProbeError
  SFTP "no such file"                                       FileNotFoundError
  bad argument, unreadable known_hosts                      ConfigurationError
  ========================================================  =========================

* Host keys are checked against ``known_hosts`` with paramiko's
  ``RejectPolicy``: an unknown or changed host key is refused, unless the
  transport was built with ``accept_unknown_host_keys=True``.
* Every method is thread-safe. Connections are cached per address and shared
  by concurrent calls (each call gets its own channel).

Messages and logs never contain key material, passwords or the full
command line (only ``argv[0]``).

paramiko is the ``ssh`` extra (``pip install 'cloudha[ssh]'``): this module
imports without it, and building an :class:`SSHTransport` then raises
:class:`~cloudha.errors.MissingExtraError`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import posixpath
import secrets
import selectors
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self, TypeVar

import attrs

from cloudha._extras import lazy_module, require
from cloudha.errors import (
    CloudHAError,
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeHostKeyError,
    ProbeTimeout,
)

if TYPE_CHECKING:
    import paramiko

    from cloudha.transport import _ssh_keys
else:
    paramiko = lazy_module("paramiko", "ssh", "the SSH transport")
    _ssh_keys = lazy_module("cloudha.transport._ssh_keys", "ssh", "the SSH transport")

__all__ = ["CommandResult", "SFTPStorage", "SSHTransport"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_CHUNK: Final = 32768
_MAX_CHANNELS_PER_CONNECTION: Final = 8
"""Concurrent channels per cached connection; below OpenSSH's default MaxSessions (10)."""


def _foreign_errors() -> tuple[type[BaseException], ...]:
    """What paramiko and the socket layer raise; mapped by :func:`_map_error`."""
    return (paramiko.SSHException, OSError, EOFError)


@attrs.frozen
class CommandResult:
    """The outcome of one remote command.

    Attributes:
        argv: the command as given.
        exit_status: the remote exit status; -1 when the command ended without
            one (it was killed by a signal).
        stdout: standard output, truncated to ``max_output`` bytes.
        stderr: standard error, truncated to ``max_output`` bytes.
        duration: seconds the whole call took (connect included), by
            :func:`time.monotonic`.
    """

    argv: tuple[str, ...]
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration: float

    def check(self) -> CommandResult:
        """Return self if the command succeeded.

        Raises:
            ProbeError: ``exit_status`` is not 0; the message names ``argv[0]``,
                the exit status and the first line of stderr.
        """
        if self.exit_status == 0:
            return self
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        first = lines[0][:200] if lines else ""
        raise ProbeError(
            f"{self.argv[0]!r} exited with status {self.exit_status}"
            + (f": {first}" if first else "")
        )


class _Watchdog:
    """Runs the registered closers once ``deadline`` (time.monotonic) has passed.

    It turns paramiko's blocking waits (some of which have no timeout at
    all, e.g. waiting for the reply to an exec request) into calls bounded
    by the deadline: closing the channel or shutting the socket down wakes
    them with an error, which the caller maps to ProbeTimeout.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._closers: list[Callable[[], object]] = []
        self._state = "armed"  # armed -> fired | disarmed
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.name = "cloudha-ssh-watchdog"
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        """True once the deadline passed or the closers ran."""
        return self._state == "fired" or self.remaining() <= 0

    def guard(self, closer: Callable[[], object]) -> None:
        """Call ``closer`` at the deadline (at once if it already passed)."""
        with self._lock:
            if self._state == "armed":
                self._closers.append(closer)
                return
            fired = self._state == "fired"
        if fired:
            _quietly(closer)

    def disarm(self) -> bool:
        """Stop the watchdog; False if the closers already ran."""
        self._timer.cancel()
        with self._lock:
            if self._state == "armed":
                self._state = "disarmed"
            return self._state == "disarmed"

    def _fire(self) -> None:
        with self._lock:
            if self._state != "armed":
                return
            self._state = "fired"
            closers, self._closers = self._closers, []
        for closer in closers:
            _quietly(closer)


def _quietly(closer: Callable[[], object]) -> None:
    with contextlib.suppress(*_foreign_errors()):
        closer()


def _shutdown(sock: socket.socket) -> None:
    # NOTE: shutdown, not close: another thread (paramiko's) may be blocked in
    # recv on this descriptor, and closing it could hand the number to a new file.
    sock.shutdown(socket.SHUT_RDWR)


@attrs.define(eq=False)
class _Connection:
    """One cached SSH connection and its bookkeeping (guarded by SSHTransport._lock)."""

    client: paramiko.SSHClient
    transport: paramiko.Transport
    slots: threading.BoundedSemaphore = attrs.field(
        factory=lambda: threading.BoundedSemaphore(_MAX_CHANNELS_PER_CONNECTION)
    )
    users: int = 0
    retired: bool = False


def _map_error(
    exc: BaseException, *, where: str, host_id: str, what: str, timed_out: bool = False
) -> CloudHAError:
    """The cloudha error for a paramiko or socket failure of ``what`` ``where``.

    ``what`` reads as the start of a sentence ending with the address, e.g.
    "connecting to" or "running 'virsh' on".

    ``timed_out`` says the call's deadline passed, in which case whatever
    paramiko raised (the watchdog closed the channel under it) is a timeout.
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if timed_out or isinstance(exc, TimeoutError):
        return ProbeTimeout(f"{what} {where} timed out ({detail})", host_id=host_id)
    if isinstance(exc, paramiko.BadHostKeyException):
        # NOTE: its message holds the keys; say which host and stop there.
        return ProbeHostKeyError(
            f"host key of {where} does not match known_hosts (possible man-in-the-middle)",
            host_id=host_id,
        )
    if isinstance(exc, _ssh_keys.UnknownHostKeyError) or (
        type(exc) is paramiko.SSHException and "not found in known_hosts" in str(exc)
    ):
        return ProbeHostKeyError(f"host key of {where} is not in known_hosts", host_id=host_id)
    if isinstance(exc, paramiko.AuthenticationException):
        return ProbeAuthError(f"{what} {where}: authentication failed ({detail})", host_id=host_id)
    if isinstance(exc, PermissionError) or (type(exc) is OSError and exc.errno is None):
        # An SFTP status reply (permission denied, generic failure), not a socket fault.
        return ProbeError(f"{what} {where} failed ({detail})", host_id=host_id)
    return ProbeConnectionError(f"{what} {where} failed ({detail})", host_id=host_id)


def _append(buffer: bytearray, data: bytes, limit: int) -> int:
    """Append what fits under ``limit``; return how many bytes were dropped."""
    room = max(0, limit - len(buffer))
    buffer += data[:room]
    return max(0, len(data) - room)


def _check_address(address: str) -> None:
    if (
        not isinstance(address, str)
        or not address
        or address.startswith("-")
        or "\0" in address
        or any(c.isspace() for c in address)
    ):
        raise ConfigurationError(f"invalid SSH address {address!r}", key="address", value=address)


def _check_timeout(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(
            f"timeout must be a positive number of seconds, not {timeout!r}",
            key="timeout",
            value=timeout,
        )


def _check_limit(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(
            f"{name} must be an int >= 0, not {value!r}", key=name, value=value
        )


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigurationError(f"invalid remote path {path!r}", key="path", value=path)


def _command_line(argv: Sequence[str]) -> str:
    """The remote command line for ``argv``: each argument quoted for a POSIX shell.

    Raises:
        ConfigurationError: ``argv`` is a string, empty, or has a non-string
            or NUL-containing argument.
    """
    if isinstance(argv, str | bytes):
        raise ConfigurationError("argv must be a sequence of arguments, not a string", key="argv")
    if not argv:
        raise ConfigurationError("argv must not be empty", key="argv")
    for arg in argv:
        if not isinstance(arg, str):
            raise ConfigurationError(
                f"argv items must be str, not {type(arg).__name__}", key="argv"
            )
        if "\0" in arg:
            raise ConfigurationError("argv items must not contain NUL", key="argv")
    return shlex.join(argv)


class SSHTransport:
    """Runs commands and moves files on hosts over SSH (paramiko).

    Thread-safe: any number of threads may call any method at once, for the
    same host or different ones. One connection per address is cached and
    shared (up to 8 concurrent channels on it; more callers wait for a slot
    within their own deadline); a cached connection found broken is dropped
    and the call reconnects once. Use it as a context manager, or call
    :meth:`close`, to close the cached connections.

    Args:
        username: the remote user.
        port: the SSH port of every host.
        key_filename: a private key (unencrypted) to log in with; it is read
            once, here. When given, neither ssh-agent nor ~/.ssh keys are tried;
            when None, paramiko tries both.
        known_hosts: the known_hosts file that host keys are checked against,
            re-read on each new connection. None means ``~/.ssh/known_hosts``;
            if that file does not exist, no host is known and every host is
            refused (unless ``accept_unknown_host_keys``).
        accept_unknown_host_keys: accept (and pin, in memory only, for the
            life of this object) host keys not in known_hosts. This gives up
            protection against man-in-the-middle attacks: a WARNING is logged.
            A host whose known_hosts entry does not match is still refused.
        connect_timeout: upper bound on establishing a connection (TCP, key
            exchange, authentication), within each call's own ``timeout``.
        keepalive_interval: seconds between SSH keepalives on cached
            connections; 0 turns them off.

    Raises:
        MissingExtraError: paramiko is not installed (``pip install 'cloudha[ssh]'``).
        ConfigurationError: a bad argument, a ``known_hosts`` path that does
            not exist, or a key file that cannot be read or is encrypted.

    Remote commands run through the user's login shell, which must be a
    POSIX shell (sh, bash, dash, zsh) for the quoting to hold.
    """

    def __init__(
        self,
        *,
        username: str = "root",
        port: int = 22,
        key_filename: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        accept_unknown_host_keys: bool = False,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 5.0,
    ) -> None:
        require("paramiko", "ssh", "the SSH transport")
        if not isinstance(username, str) or not username or "\0" in username:
            raise ConfigurationError(f"invalid SSH username {username!r}", key="username")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigurationError(f"invalid SSH port {port!r}", key="port", value=port)
        _check_timeout(connect_timeout)
        if not (math.isfinite(keepalive_interval) and keepalive_interval >= 0):
            raise ConfigurationError(
                f"keepalive_interval must be >= 0, not {keepalive_interval!r}",
                key="keepalive_interval",
                value=keepalive_interval,
            )
        self._username = username
        self._port = port
        self._connect_timeout = float(connect_timeout)
        self._keepalive_interval = float(keepalive_interval)
        self._pkey: paramiko.PKey | None = None
        if key_filename is not None:
            self._pkey = self._load_key(Path(key_filename))
        self._known_hosts_explicit = known_hosts is not None
        if known_hosts is None:
            self._known_hosts = Path("~/.ssh/known_hosts").expanduser()
        else:
            self._known_hosts = Path(known_hosts)
            if not self._known_hosts.is_file():
                raise ConfigurationError(
                    f"known_hosts file {str(self._known_hosts)!r} does not exist",
                    key="known_hosts",
                    value=str(self._known_hosts),
                )
        self._lock = threading.Lock()
        self._connections: dict[str, _Connection] = {}
        self._gates: dict[str, threading.Lock] = {}
        self._policy: paramiko.MissingHostKeyPolicy
        if accept_unknown_host_keys:
            self._policy = _ssh_keys.AcceptPolicy()
            log.warning(
                "SSHTransport(port=%d) accepts unknown host keys: connections to new hosts are "
                "not authenticated and can be intercepted (man-in-the-middle)",
                port,
            )
        else:
            self._policy = _ssh_keys.RejectPolicy()

    @staticmethod
    def _load_key(path: Path) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(path)
        except (paramiko.PasswordRequiredException, TypeError):
            # cryptography raises TypeError for an encrypted key without a password.
            raise ConfigurationError(
                f"SSH key {str(path)!r} is encrypted; give an unencrypted key",
                key="key_filename",
                value=str(path),
            ) from None
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load SSH key {str(path)!r} ({type(exc).__name__})",
                key="key_filename",
                value=str(path),
            ) from exc

    # -- public API ---------------------------------------------------------

    def run(
        self,
        address: str,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        max_output: int = 1 << 20,
        host_id: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on ``address`` and return its exit status and output.

        The command line is ``shlex.join(argv)``: every argument reaches the
        program literally, whatever characters it holds. ``stdin`` (if any)
        is sent, then standard input is closed. Each of stdout and stderr
        keeps at most ``max_output`` bytes; the rest is read and dropped.
        A non-zero exit status is returned, not raised (see
        :meth:`CommandResult.check`). On timeout the channel is closed, but
        the remote process is not killed: bound long commands with
        ``timeout(1)`` on the remote side.

        Raises:
            ConfigurationError: bad ``address``, ``argv``, ``timeout`` or ``max_output``.
            ProbeTimeout: ``timeout`` passed.
            ProbeHostKeyError, ProbeAuthError, ProbeConnectionError: see the module docs.
        """
        _check_address(address)
        command = _command_line(argv)
        _check_timeout(timeout)
        _check_limit("max_output", max_output)
        host = host_id or address
        start = time.monotonic()
        watchdog = _Watchdog(start + timeout)
        where = self._where(address)
        try:
            with self._session(address, watchdog, host) as (conn, chan):
                chan.settimeout(max(watchdog.remaining(), 0.001))
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                status, out, err = self._collect(chan, watchdog, max_output, where)
        except CloudHAError:
            raise
        except _foreign_errors() as exc:
            raise _map_error(
                exc,
                where=where,
                host_id=host,
                what=f"running {argv[0]!r} on",
                timed_out=watchdog.expired(),
            ) from exc
        finally:
            watchdog.disarm()
        if status is None:
            raise ProbeTimeout(
                f"running {argv[0]!r} on {where} timed out after {timeout:g} s", host_id=host
            )
        if status == -1 and not conn.transport.is_active():
            raise ProbeConnectionError(
                f"connection to {where} lost while running {argv[0]!r}", host_id=host
            )
        duration = time.monotonic() - start
        log.debug("ssh %s %r: exit %d in %.3f s", where, argv[0], status, duration)
        return CommandResult(tuple(argv), status, bytes(out), bytes(err), duration)

    def read_file(
        self,
        address: str,
        path: str,
        *,
        timeout: float,
        max_bytes: int = 1 << 20,
        host_id: str | None = None,
    ) -> bytes:
        """Return the first ``max_bytes`` bytes of the remote file ``path`` (SFTP).

        A relative ``path`` is relative to the remote user's home directory.

        Raises:
            FileNotFoundError: ``path`` does not exist on the host.
            ProbeError: the SFTP server refused (e.g. permission denied, a directory).
            ProbeTimeout, ProbeHostKeyError, ProbeAuthError, ProbeConnectionError,
            ConfigurationError: as for :meth:`run`.
        """
        _check_limit("max_bytes", max_bytes)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as f:
                return f.read(max_bytes)

        return self._sftp_call(address, path, timeout, host_id, "reading", read)

    def stat_mtime(
        self, address: str, path: str, *, timeout: float, host_id: str | None = None
    ) -> float:
        """The modification time of the remote ``path`` in epoch seconds (SFTP).

        SFTP (protocol 3, which OpenSSH speaks) carries whole seconds only.

        Raises:
            FileNotFoundError: ``path`` does not exist on the host.
            others: as for :meth:`read_file`.
        """

        def mtime(sftp: paramiko.SFTPClient) -> float:
            st_mtime = sftp.stat(path).st_mtime
            if st_mtime is None:
                raise OSError(f"the SFTP server sent no mtime for {path!r}")
            return float(st_mtime)

        return self._sftp_call(address, path, timeout, host_id, "stat of", mtime)

    def write_file_atomic(
        self, address: str, path: str, data: bytes, *, timeout: float, host_id: str | None = None
    ) -> None:
        """Replace the remote file ``path`` with ``data`` atomically (SFTP).

        ``data`` goes to a temporary file in the same directory, which is then
        renamed over ``path`` (posix-rename@openssh.com): readers see the old
        content or the new, never a mix. The new file gets the server's
        default mode; it is not fsynced. The temporary file is removed if the
        write fails (best effort).

        Raises:
            FileNotFoundError: the parent directory does not exist.
            others: as for :meth:`read_file`.
        """
        self._write_atomic(address, path, data, timeout, host_id, make_parents=False)

    def close(self) -> None:
        """Close the cached connections (those in use close when their call ends).

        The transport stays usable: a later call connects again.
        """
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
            idle = [c for c in connections if c.users == 0]
            for conn in connections:
                conn.retired = True
        for conn in idle:
            conn.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SSHTransport {self._username}@*:{self._port}>"

    # -- connections ----------------------------------------------------------

    def _where(self, address: str) -> str:
        return f"[{address}]:{self._port}" if ":" in address else f"{address}:{self._port}"

    def _new_client(self, address: str, watchdog: _Watchdog) -> paramiko.SSHClient:
        """Connect and authenticate a new client; raises paramiko/socket errors as they are."""
        client = paramiko.SSHClient()
        try:
            if self._known_hosts_explicit:
                client.load_host_keys(str(self._known_hosts))
            elif self._known_hosts.is_file():
                client.load_system_host_keys(str(self._known_hosts))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read known_hosts file {str(self._known_hosts)!r} ({type(exc).__name__})",
                key="known_hosts",
                value=str(self._known_hosts),
            ) from exc
        if isinstance(self._policy, _ssh_keys.AcceptPolicy):
            for name, key in self._policy.pinned():
                if client.get_host_keys().lookup(name) is None:
                    client.get_host_keys().add(name, key.get_name(), key)
        client.set_missing_host_key_policy(self._policy)
        sock: socket.socket | None = None
        try:
            remaining = max(watchdog.remaining(), 0.001)
            sock = socket.create_connection((address, self._port), timeout=remaining)
            watchdog.guard(functools.partial(_shutdown, sock))
            remaining = max(watchdog.remaining(), 0.001)
            client.connect(
                address,
                port=self._port,
                username=self._username,
                pkey=self._pkey,
                sock=sock,
                timeout=remaining,
                banner_timeout=remaining,
                auth_timeout=remaining,
                channel_timeout=remaining,
                allow_agent=self._pkey is None,
                look_for_keys=self._pkey is None,
            )
        except BaseException:
            client.close()
            if sock is not None:
                sock.close()
            raise
        return client

    def _connect(self, address: str, deadline: float, host: str) -> _Connection:
        """A new connection, within ``connect_timeout`` and ``deadline``; raises cloudha errors."""
        connect_deadline = min(deadline, time.monotonic() + self._connect_timeout)
        watchdog = _Watchdog(connect_deadline)
        where = self._where(address)
        try:
            client = self._new_client(address, watchdog)
        except _foreign_errors() as exc:
            raise _map_error(
                exc, where=where, host_id=host, what="connecting to", timed_out=watchdog.expired()
            ) from exc
        finally:
            in_time = watchdog.disarm()
        if not in_time:
            client.close()
            raise ProbeTimeout(f"connecting to {where} timed out", host_id=host)
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            client.close()
            raise ProbeConnectionError(f"connection to {where} closed at once", host_id=host)
        if self._keepalive_interval > 0:
            transport.set_keepalive(self._keepalive_interval)
        log.debug("ssh %s: connected as %s", where, self._username)
        return _Connection(client, transport)

    def _acquire(self, address: str, watchdog: _Watchdog, host: str) -> tuple[_Connection, bool]:
        """A live connection to ``address`` (marked in use) and whether it is new."""
        with self._lock:
            conn = self._connections.get(address)
            if conn is not None and conn.transport.is_active():
                conn.users += 1
                return conn, False
            stale = conn is not None and self._retire_locked(address, conn)
            gate = self._gates.setdefault(address, threading.Lock())
        if stale and conn is not None:
            conn.client.close()
        if not gate.acquire(timeout=max(watchdog.remaining(), 0)):
            raise ProbeTimeout(
                f"timed out waiting for another connection to {self._where(address)}", host_id=host
            )
        try:
            with self._lock:
                conn = self._connections.get(address)
                if conn is not None and conn.transport.is_active():
                    conn.users += 1
                    return conn, False
            conn = self._connect(address, watchdog.deadline, host)
            with self._lock:
                self._connections[address] = conn
                conn.users += 1
            return conn, True
        finally:
            gate.release()

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            conn.users -= 1
            close = conn.retired and conn.users == 0
        if close:
            conn.client.close()

    def _retire_locked(self, address: str, conn: _Connection) -> bool:
        """Drop ``conn`` from the cache; True if the caller must close it now (no users).

        A connection still in use is closed when its last user releases it.
        """
        if self._connections.get(address) is conn:
            del self._connections[address]
        first = not conn.retired
        conn.retired = True
        return first and conn.users == 0

    @contextlib.contextmanager
    def _session(
        self, address: str, watchdog: _Watchdog, host: str
    ) -> Iterator[tuple[_Connection, paramiko.Channel]]:
        """A new session channel on a (cached) connection, closed on exit.

        A cached connection that fails to open a channel is dropped and the
        call reconnects once. The watchdog closes the channel at the deadline.
        """
        where = self._where(address)
        for attempt in (1, 2):
            conn, fresh = self._acquire(address, watchdog, host)
            if not conn.slots.acquire(timeout=max(watchdog.remaining(), 0)):
                self._release(conn)
                raise ProbeTimeout(f"timed out waiting for a channel to {where}", host_id=host)
            try:
                chan = conn.transport.open_session(timeout=max(watchdog.remaining(), 0.001))
            except _foreign_errors() as exc:
                conn.slots.release()
                with self._lock:
                    self._retire_locked(address, conn)  # still in use by us: closed on release
                self._release(conn)
                if fresh or attempt == 2 or watchdog.expired():
                    raise _map_error(
                        exc,
                        where=where,
                        host_id=host,
                        what="opening a channel on",
                        timed_out=watchdog.expired(),
                    ) from exc
                log.debug("ssh %s: cached connection is broken (%s); reconnecting", where, exc)
                continue
            break
        watchdog.guard(chan.close)
        try:
            yield conn, chan
        finally:
            chan.close()
            conn.slots.release()
            self._release(conn)

    # -- commands -------------------------------------------------------------

    @staticmethod
    def _collect(
        chan: paramiko.Channel,
        watchdog: _Watchdog,
        max_output: int,
        where: str,
    ) -> tuple[int | None, bytearray, bytearray]:
        """Read stdout and stderr until EOF, then wait for the exit status.

        Returns (None, ...) when the deadline passes first.
        """
        out, err = bytearray(), bytearray()
        dropped = 0
        with selectors.DefaultSelector() as selector:
            # The channel's fileno is a pipe paramiko sets when data or EOF arrives.
            selector.register(chan.fileno(), selectors.EVENT_READ)
            while True:
                # Sample EOF first: data that came before it is then buffered.
                done = bool(chan.eof_received) or chan.closed
                progressed = False
                while chan.recv_ready():
                    dropped += _append(out, chan.recv(_CHUNK), max_output)
                    progressed = True
                while chan.recv_stderr_ready():
                    dropped += _append(err, chan.recv_stderr(_CHUNK), max_output)
                    progressed = True
                if done:
                    break
                if progressed:
                    continue
                remaining = watchdog.remaining()
                if remaining <= 0:
                    return None, out, err
                selector.select(remaining)
        if not chan.status_event.wait(max(watchdog.remaining(), 0)):
            return None, out, err
        if chan.exit_status == -1 and watchdog.expired():
            return None, out, err  # the watchdog closed the channel: no status came
        if dropped:
            log.info("ssh %s: dropped %d bytes of output over max_output", where, dropped)
        return chan.exit_status, out, err

    # -- SFTP -------------------------------------------------------------------

    def _sftp_call(
        self,
        address: str,
        path: str,
        timeout: float,
        host_id: str | None,
        what: str,
        operation: Callable[[paramiko.SFTPClient], _T],
    ) -> _T:
        """Run ``operation`` on an SFTP session; map its errors (see the module docs)."""
        _check_address(address)
        _check_path(path)
        _check_timeout(timeout)
        host = host_id or address
        where = self._where(address)
        start = time.monotonic()
        watchdog = _Watchdog(start + timeout)
        try:
            with self._session(address, watchdog, host) as (_, chan):
                chan.settimeout(max(watchdog.remaining(), 0.001))
                chan.invoke_subsystem("sftp")
                with paramiko.SFTPClient(chan) as sftp:
                    result = operation(sftp)
        except CloudHAError:
            raise
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"no such file or directory on {where}", path
            ) from exc
        except _foreign_errors() as exc:
            raise _map_error(
                exc,
                where=where,
                host_id=host,
                what=f"{what} {path!r} on",
                timed_out=watchdog.expired(),
            ) from exc
        finally:
            watchdog.disarm()
        log.debug("sftp %s: %s %r in %.3f s", where, what, path, time.monotonic() - start)
        return result

    def _write_atomic(
        self,
        address: str,
        path: str,
        data: bytes,
        timeout: float,
        host_id: str | None,
        *,
        make_parents: bool,
    ) -> None:
        directory, name = posixpath.split(path)
        if not name:
            raise ConfigurationError(f"invalid remote file path {path!r}", key="path", value=path)
        temp = posixpath.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")

        def write(sftp: paramiko.SFTPClient) -> None:
            try:
                try:
                    f = sftp.open(temp, "wb")
                except FileNotFoundError:
                    if not (make_parents and directory):
                        raise
                    _makedirs(sftp, directory)
                    f = sftp.open(temp, "wb")
                with f:
                    f.write(data)
                sftp.posix_rename(temp, path)
            except BaseException:
                with contextlib.suppress(*_foreign_errors()):
                    sftp.remove(temp)
                raise

        self._sftp_call(address, path, timeout, host_id, "writing", write)


def _makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    """``mkdir -p`` over SFTP (tolerates a concurrent creator)."""
    missing: list[str] = []
    current = directory
    while current and current not in ("/", "."):
        try:
            sftp.stat(current)
            break
        except FileNotFoundError:
            missing.append(current)
            current = posixpath.dirname(current)
    for part in reversed(missing):
        try:
            sftp.mkdir(part)
        except OSError:
            sftp.stat(part)  # someone else made it: fine; still missing: raises


class SFTPStorage:
    """A StorageAccess over SFTP on one remote host.

    The heartbeat checker uses it to read a neighbour's view of the shared storage.

    Every method is thread-safe and bounded by ``timeout``. Errors follow
    the ``StorageAccess`` contract: a missing file raises FileNotFoundError;
    every other failure raises OSError, never another exception (ProbeTimeout
    and ProbeConnectionError already are OSErrors and are raised as they are;
    other cloudha errors, ConfigurationError for a bad path included, are
    wrapped in an OSError with their message, the original as ``__cause__``).
    """

    def __init__(
        self, transport: SSHTransport, address: str, *, timeout: float, host_id: str | None = None
    ) -> None:
        _check_address(address)
        _check_timeout(timeout)
        self._transport = transport
        self._address = address
        self._timeout = timeout
        self._host_id = host_id

    def read_bytes(self, path: str, *, max_bytes: int) -> bytes:
        """The first ``max_bytes`` bytes of ``path``."""
        with self._as_oserror():
            return self._transport.read_file(
                self._address,
                path,
                timeout=self._timeout,
                max_bytes=max_bytes,
                host_id=self._host_id,
            )

    def mtime(self, path: str) -> float:
        """The modification time of ``path``, in epoch seconds (whole seconds)."""
        with self._as_oserror():
            return self._transport.stat_mtime(
                self._address, path, timeout=self._timeout, host_id=self._host_id
            )

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` atomically, creating missing parent directories."""
        with self._as_oserror():
            self._transport._write_atomic(
                self._address, path, data, self._timeout, self._host_id, make_parents=True
            )

    def __repr__(self) -> str:
        return f"<SFTPStorage {self._address}>"

    @contextlib.contextmanager
    def _as_oserror(self) -> Iterator[None]:
        try:
            yield
        except CloudHAError as exc:
            if isinstance(exc, OSError):
                raise
            raise OSError(str(exc)) from exc
