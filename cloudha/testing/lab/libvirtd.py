"""A real libvirtd hosting libvirt's *test* driver on loopback: one lab host's hypervisor.

:func:`start_libvirtd` runs ``/usr/sbin/libvirtd --listen`` with its own
configuration, sockets, HOME, XDG dirs and log in a fresh directory under the
system temp dir, listening on 127.0.0.1 and a free TCP port with
``auth_tcp = "none"``. As root it runs as ``nobody`` (a root libvirtd loads
the QEMU driver, which fails without the ``libvirt-qemu`` user). The daemon
leads its own session, so killing its process group kills the "host".

The test driver's ``test:///default`` state (one domain ``test``, running)
lives only while some client holds a connection: :attr:`LibvirtServer.holder`
is that connection, open for the daemon's lifetime, so changes made by one
connection are seen by every other one.

Needs the ``libvirt`` extra (libvirt-python) and Debian's ``libvirt-daemon``.
Failures raise :class:`~cloudha.testing.lab.processes.LabError` with the
daemon's log tail.
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
from pathlib import Path
from typing import Any

import attrs

from cloudha._extras import require
from cloudha.testing.lab.processes import LabError, dies_with_parent

__all__ = [
    "LIBVIRTD",
    "LibvirtDaemon",
    "LibvirtServer",
    "domain_xml",
    "established_connections",
    "free_port",
    "start_libvirtd",
    "stop_libvirtd",
]

LIBVIRTD = Path("/usr/sbin/libvirtd")
INSTALL_HINT = (
    "`apt-get install -y --no-install-recommends libvirt-daemon libvirt-clients` "
    "(not libvirt-daemon-system, which pulls systemd), or `bash scripts/setup.sh test`"
)
_USER = "nobody"
_GROUP = "nogroup"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
IDLE_EXIT = 300
"""``libvirtd --timeout``: a daemon orphaned by a killed parent exits once idle this long."""


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
class LibvirtDaemon:
    """A started daemon: what :func:`stop_libvirtd` needs to end it."""

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


def domain_xml(name: str, uuid: str, *, memory_kib: int = 131072, vcpus: int = 1) -> str:
    """A minimal test-driver domain definition (an explicit UUID, as libvirt advises)."""
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
        f"<memory>{memory_kib}</memory><vcpu>{vcpus}</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of ``path`` (or why it cannot be read)."""
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


def _argv(libvirtd: Path, conf: Path, as_nobody: bool) -> list[str]:
    daemon = [str(libvirtd), "--listen", "--timeout", str(IDLE_EXIT), "-f", str(conf)]
    user = [f"--reuid={_USER}", f"--regid={_GROUP}", "--clear-groups"] if as_nobody else []
    return dies_with_parent(daemon, setpriv=user)


def check_prerequisites(libvirtd: Path = LIBVIRTD) -> bool:
    """Raise :class:`LabError` when libvirtd cannot run here; True when it must run as nobody."""
    if not (libvirtd.is_file() and os.access(libvirtd, os.X_OK)):
        raise LabError(f"{libvirtd} not found: install it with {INSTALL_HINT}")
    as_nobody = os.geteuid() == 0
    if as_nobody:
        try:
            pwd.getpwnam(_USER)
            grp.getgrnam(_GROUP)
        except KeyError as exc:
            raise LabError(f"user {_USER} / group {_GROUP} missing: {exc}") from None
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


def start_libvirtd(
    label: str = "libvirtd", *, libvirtd: Path = LIBVIRTD, parent: Path | None = None
) -> LibvirtDaemon:
    """Start a libvirtd (test driver, TCP on 127.0.0.1) and open its holder connection.

    ``parent``: where its directory goes (a fresh one under the system temp dir by
    default; it must be enterable by ``nobody`` when run as root). Raises
    :class:`LabError` when libvirtd cannot be started (after three tries on fresh ports).
    """
    libvirt = require("libvirt", "libvirt", "the lab's libvirtd")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr chatter
    as_nobody = check_prerequisites(libvirtd)
    last_error = ""
    for _attempt in range(3):  # the free port may be taken between probing and binding
        root = Path(tempfile.mkdtemp(prefix=f"cloudha-{label}-", dir=parent))
        port = free_port()
        conf, log_path, env = _prepare(root, port, as_nobody)
        output = open(root / "libvirtd.out", "wb")  # noqa: SIM115 - the child keeps its copy
        process = subprocess.Popen(
            _argv(libvirtd, conf, as_nobody),
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output.close()
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
                return LibvirtDaemon(server=server, process=process, root=root)
        elif process.poll() is None:
            last_error = f"libvirtd did not accept on port {port} within {_START_TIMEOUT} s"
        else:
            last_error = f"libvirtd exited with status {process.returncode}"
        last_error += (
            f"\n--- {log_path} ---\n{tail(log_path)}\n--- output ---\n{tail(root / 'libvirtd.out')}"
        )
        _kill(process)
        shutil.rmtree(root, ignore_errors=True)
    raise LabError(f"could not start libvirtd: {last_error}")


def stop_libvirtd(daemon: LibvirtDaemon, *, remove: bool = True) -> None:
    """SIGCONT (in case it was stopped), close the holder, SIGTERM, then SIGKILL if needed.

    Idempotent; ``remove`` deletes its directory (log included).
    """
    process = daemon.process
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)
    libvirt = require("libvirt", "libvirt", "the lab's libvirtd")

    def close_holder() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            daemon.server.holder.close()

    if process.poll() is None:
        # Closing talks to the daemon; never let a wedged one hang the teardown.
        closer = threading.Thread(target=close_holder, name="libvirtd-holder-close", daemon=True)
        closer.start()
        closer.join(_STOP_TIMEOUT)
    _kill(process)
    if remove:
        shutil.rmtree(daemon.root, ignore_errors=True)
