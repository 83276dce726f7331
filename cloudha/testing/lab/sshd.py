"""A real OpenSSH server on loopback: a lab host's agent side, and the SSH tests' server.

:func:`start_sshd` starts ``/usr/sbin/sshd`` on 127.0.0.1 (or another loopback
address) and a free port,
with its own host key, client key, authorized_keys and known_hosts in a
work directory. It never touches port 22 or ``/etc/ssh``. A missing sshd or
ssh-keygen raises :class:`~cloudha.testing.lab.processes.LabError`.

sshd gives every session the environment variable ``SSHD_FIXTURE_OF_CLOUDHA_TESTS``
(set to the work directory), plus any ``session_env`` given (e.g. a
``PYTHONPATH`` so that ``python -m cloudha`` runs on the "host");
:meth:`SshDaemon.stop` kills every process carrying the marker (commands
left running, e.g. after a timeout), then the per-connection sshd
processes, then sshd itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from cloudha.testing.lab.processes import LabError, dies_with_parent

__all__ = ["SSHD", "SshDaemon", "SshServer", "start_sshd"]

SSHD = "/usr/sbin/sshd"
_MARKER = "SSHD_FIXTURE_OF_CLOUDHA_TESTS"
_START_TIMEOUT = 10.0


@attrs.frozen
class SshServer:
    """A running loopback sshd.

    Attributes:
        address: the loopback address it listens on ("127.0.0.1" by default).
        port: the port it listens on (never 22).
        username: the user to log in as (the user running the tests).
        client_key: an unencrypted ed25519 private key that sshd accepts.
        host_key_pub: the server's public host key file (``ssh-ed25519 AAAA...``).
        known_hosts: a known_hosts file holding exactly the server's host key
            (``[ADDRESS]:PORT ssh-ed25519 AAAA...``).
        workdir: the server's temporary directory (keys, config, log, pid file).
    """

    address: str
    port: int
    username: str
    client_key: Path
    host_key_pub: Path
    known_hosts: Path
    workdir: Path


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _config(workdir: Path, address: str, port: int, session_env: Mapping[str, str]) -> str:
    variables = " ".join([f"{_MARKER}={workdir}", *(f"{k}={v}" for k, v in session_env.items())])
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {address}",
            f"HostKey {workdir / 'host_ed25519'}",
            f"PidFile {workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            f"SetEnv {variables}",
            "MaxStartups 50:30:100",
            "LogLevel VERBOSE",
            "",
        ]
    )


def _processes() -> list[tuple[int, int, bool]]:
    """(pid, ppid, is_zombie) of every process."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(entry.path, "stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    found.append((int(entry.name), int(fields[1]), fields[0] == "Z"))
    return found


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in _processes():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _tagged(workdir: Path) -> list[int]:
    """Processes started by this sshd's sessions (they carry the marker variable)."""
    tag = f"{_MARKER}={workdir}".encode()
    found = []
    for pid, _, zombie in _processes():
        if zombie or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], proc: subprocess.Popen[bytes], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; return those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        # Waiting on sshd's exit doubles as a short pause between checks.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.02)
        left = [p for p in left if _alive(p)]
    return left


def _stop(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    """Kill session commands, connection processes, then sshd; reap what we can."""
    # Children first, while their parents live to reap them (PID 1 here may not).
    tagged = _tagged(workdir)
    _kill(tagged, signal.SIGKILL)
    _wait_gone(tagged, proc, 5)
    children = _descendants(proc.pid) if proc.poll() is None else []
    _kill(children, signal.SIGTERM)
    if _wait_gone(children, proc, 5):
        _kill(children, signal.SIGKILL)
        _wait_gone(children, proc, 5)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _kill(_tagged(workdir), signal.SIGKILL)


def _wait_listening(proc: subprocess.Popen[bytes], address: str, port: int) -> bool:
    """True once sshd answers on ``port``; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + _START_TIMEOUT
    while proc.poll() is None:
        try:
            with socket.create_connection((address, port), timeout=1.0) as s:
                banner = s.recv(64)
        except OSError:
            banner = b""
        if banner.startswith(b"SSH-2.0-OpenSSH"):
            return True
        if time.monotonic() > deadline:
            raise LabError(f"sshd did not answer on {address}:{port} within {_START_TIMEOUT} s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.01)
    return False


@attrs.define(eq=False)
class SshDaemon:
    """A started sshd: :attr:`server` describes it, :meth:`stop` ends it (idempotent)."""

    server: SshServer
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The listening sshd's process id."""
        return self.process.pid

    def stop(self) -> None:
        """Kill session commands, connection processes, then sshd; reap what we can."""
        _stop(self.process, self.server.workdir)


def start_sshd(
    workdir: Path, *, session_env: Mapping[str, str] | None = None, address: str = "127.0.0.1"
) -> SshDaemon:
    """Start a loopback sshd keeping its keys, config and log in ``workdir`` (see module doc).

    ``address``: the loopback address it listens on (a lab host's own
    127.0.0.x, so that SSH to the host's address reaches its sshd). The
    caller must :meth:`SshDaemon.stop` it.
    """
    if not address.startswith("127."):
        raise LabError(f"sshd listens on loopback only, not on {address}")
    if not os.access(SSHD, os.X_OK):
        raise LabError(
            f"{SSHD} is missing: install openssh-server (apt-get install openssh-server)"
        )
    if shutil.which("ssh-keygen") is None:
        raise LabError("ssh-keygen is missing: install openssh-client")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    _keygen(workdir / "host_ed25519")
    _keygen(workdir / "client_ed25519")
    authorized = workdir / "authorized_keys"
    authorized.write_text((workdir / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation
    config = workdir / "sshd_config"
    log = workdir / "sshd.log"
    env = dict(session_env or {})
    for attempt in range(1, 4):
        port = _free_port(address)  # another process may take it before sshd binds: then retry
        config.write_text(_config(workdir, address, port, env))
        if attempt == 1:
            check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, timeout=30)
            if check.returncode != 0:
                raise LabError(f"sshd rejects its config: {check.stderr.decode(errors='replace')}")
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                dies_with_parent([SSHD, "-D", "-e", "-f", str(config)]),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            if _wait_listening(proc, address, port):
                break
        except BaseException:
            _stop(proc, workdir)
            raise
        if attempt == 3:
            raise LabError(
                f"sshd exited with status {proc.returncode} at start; its log:\n"
                + log.read_text(errors="replace")
            )
    host_key = (workdir / "host_ed25519.pub").read_text().split()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[{address}]:{port} {host_key[0]} {host_key[1]}\n")
    server = SshServer(
        address=address,
        port=port,
        username=pwd.getpwuid(os.geteuid()).pw_name,
        client_key=workdir / "client_ed25519",
        host_key_pub=workdir / "host_ed25519.pub",
        known_hosts=known_hosts,
        workdir=workdir,
    )
    return SshDaemon(server=server, process=proc)
