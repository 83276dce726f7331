"""Real libvirtd daemons hosting libvirt's *test* driver, for integration tests.

Fixtures (import them into the test module explicitly)::

    from tests.integration.libvirtd import libvirtd_server, stoppable_libvirtd  # noqa: F401

* ``libvirtd_server`` (session): one daemon shared by the whole session.
* ``stoppable_libvirtd`` (function): a daemon of its own, for a test that
  SIGSTOPs or kills it; it is SIGCONTed and stopped after the test.

Both yield a :class:`LibvirtServer`. Each daemon runs ``/usr/sbin/libvirtd
--listen`` as ``nobody`` (a root libvirtd loads the QEMU driver, which fails
here without the ``libvirt-qemu`` user), listens on 127.0.0.1 on a free TCP
port with ``auth_tcp = "none"``, and keeps its sockets, HOME, XDG dirs and
log in a fresh directory under the system temp dir (pytest's own tmp dirs
are root-only, which ``nobody`` cannot enter).

The test driver's ``test:///default`` state (one domain ``test``, running)
lives only while some client holds a connection: ``LibvirtServer.holder``
is that connection, open for the daemon's lifetime, so changes made by one
connection (``holder.lookupByName("test").destroy()``) are seen by every
other one. Tests sharing the session daemon must restore what they change.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import libvirt
import pytest

__all__ = [
    "LIBVIRTD",
    "LibvirtServer",
    "established_connections",
    "free_port",
    "libvirtd_server",
    "start_libvirtd",
    "stop_libvirtd",
    "stoppable_libvirtd",
]

LIBVIRTD = Path("/usr/sbin/libvirtd")
_USER = "nobody"
_GROUP = "nogroup"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_IDLE_EXIT = 300
"""``libvirtd --timeout``: a daemon orphaned by a killed pytest exits once idle this long."""


@attrs.frozen
class LibvirtServer:
    """A running libvirtd hosting the test driver.

    Attributes:
        uri: ``test+tcp://127.0.0.1:PORT/default``.
        port: its TCP port on 127.0.0.1.
        pid: the libvirtd process (signal it to simulate hangs and crashes).
        holder: a connection kept open for the daemon's lifetime, so the
            test driver's default state persists between other connections.
        log_path: libvirtd's log file (warnings and errors).
    """

    uri: str
    port: int
    pid: int
    holder: Any  # libvirt.virConnect
    log_path: Path


@attrs.define
class _Daemon:
    server: LibvirtServer
    process: subprocess.Popen[bytes]
    root: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def established_connections(port: int) -> int:
    """How many TCP connections to 127.0.0.1:``port`` the server side holds ESTABLISHED.

    Read from ``/proc/net/tcp``; a libvirtd's clients (the holder included).
    """
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        address, _, local_port = local.partition(":")
        if int(local_port, 16) == port and address == "0100007F" and state == "01":
            count += 1
    return count


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _prepare(root: Path, port: int, as_nobody: bool) -> tuple[Path, Path, dict[str, str]]:
    home = root / "home"
    for sub in ("run", "config", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (root / "sock").mkdir(exist_ok=True)
    log_path = root / "libvirtd.log"
    conf = root / "libvirtd.conf"
    conf.write_text(
        "\n".join(
            [
                "listen_tls = 0",
                "listen_tcp = 1",
                'listen_addr = "127.0.0.1"',
                f'tcp_port = "{port}"',
                'auth_tcp = "none"',
                f'unix_sock_dir = "{root / "sock"}"',
                'unix_sock_rw_perms = "0770"',
                'unix_sock_ro_perms = "0777"',
                'unix_sock_admin_perms = "0700"',
                'auth_unix_rw = "none"',
                'auth_unix_ro = "none"',
                f'log_outputs = "3:file:{log_path}"',
                "",
            ]
        )
    )
    os.chmod(root, 0o755)
    if as_nobody:
        uid = pwd.getpwnam(_USER).pw_uid
        gid = grp.getgrnam(_GROUP).gr_gid
        for dirpath, dirnames, filenames in os.walk(root):
            os.chown(dirpath, uid, gid)
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    return conf, log_path, env


def _argv(conf: Path, as_nobody: bool) -> list[str]:
    daemon = [str(LIBVIRTD), "--listen", "--timeout", str(_IDLE_EXIT), "-f", str(conf)]
    if not as_nobody:
        return daemon
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run libvirtd as nobody", pytrace=False)
    return [setpriv, f"--reuid={_USER}", f"--regid={_GROUP}", "--clear-groups", *daemon]


def _check_prerequisites() -> bool:
    """True when libvirtd must be started as nobody (we are root)."""
    if not (LIBVIRTD.is_file() and os.access(LIBVIRTD, os.X_OK)):
        pytest.fail(
            f"{LIBVIRTD} not found: install it with "
            "`apt-get install -y --no-install-recommends libvirt-daemon libvirt-clients` "
            "(not libvirt-daemon-system, which pulls systemd)",
            pytrace=False,
        )
    as_nobody = os.geteuid() == 0
    if as_nobody:
        try:
            pwd.getpwnam(_USER)
            grp.getgrnam(_GROUP)
        except KeyError as exc:
            pytest.fail(f"user {_USER} / group {_GROUP} missing: {exc}", pytrace=False)
    return as_nobody


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_STOP_TIMEOUT)


def start_libvirtd(label: str = "libvirtd") -> _Daemon:
    """Start a libvirtd (test driver, TCP on 127.0.0.1) and open its holder connection.

    Fails the test (never skips) when libvirtd cannot be started.
    """
    as_nobody = _check_prerequisites()
    last_error = ""
    for _attempt in range(3):  # the free port may be taken between probing and binding
        root = Path(tempfile.mkdtemp(prefix=f"cloudha-{label}-"))
        port = free_port()
        conf, log_path, env = _prepare(root, port, as_nobody)
        output = open(root / "libvirtd.out", "wb")  # noqa: SIM115 - closed in stop_libvirtd
        process = subprocess.Popen(
            _argv(conf, as_nobody),
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()  # the child has its own copy
        deadline = time.monotonic() + _START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline and not _accepts(port):
            time.sleep(0.02)
        if process.poll() is None and _accepts(port):
            uri = f"test+tcp://127.0.0.1:{port}/default"
            try:
                holder = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                last_error = f"libvirt.open({uri!r}) failed: {exc}"
            else:
                server = LibvirtServer(
                    uri=uri, port=port, pid=process.pid, holder=holder, log_path=log_path
                )
                return _Daemon(server=server, process=process, root=root)
        elif process.poll() is None:
            last_error = f"libvirtd did not accept on port {port} within {_START_TIMEOUT} s"
        else:
            last_error = f"libvirtd exited with status {process.returncode}"
        last_error += (
            f"\n--- {log_path} ---\n{_tail(log_path)}"
            f"\n--- output ---\n{_tail(root / 'libvirtd.out')}"
        )
        _kill(process)
        shutil.rmtree(root, ignore_errors=True)
    pytest.fail(f"could not start libvirtd: {last_error}", pytrace=False)


def stop_libvirtd(daemon: _Daemon) -> None:
    """SIGCONT (in case a test stopped it), close the holder, SIGTERM, then SIGKILL if needed."""
    process = daemon.process
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)

    def close_holder() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            daemon.server.holder.close()

    # Closing talks to the daemon; never let a wedged one hang the teardown.
    closer = threading.Thread(target=close_holder, name="libvirtd-holder-close", daemon=True)
    closer.start()
    closer.join(_STOP_TIMEOUT)
    _kill(process)
    shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirtd_server() -> Iterator[LibvirtServer]:
    """A libvirtd shared by the session; restore any test-driver state you change."""
    daemon = start_libvirtd("libvirtd")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)


@pytest.fixture
def stoppable_libvirtd() -> Iterator[LibvirtServer]:
    """A libvirtd of the test's own, free to SIGSTOP or kill; resumed and stopped afterwards."""
    daemon = start_libvirtd("libvirtd-stoppable")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)
