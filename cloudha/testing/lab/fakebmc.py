"""A fake IPMI BMC in a subprocess: a lab host's BMC, and the power drivers' test server.

:func:`start_fake_bmc` runs the program :mod:`cloudha.testing.lab.fakebmc_server`
(pyghmi's BMC server with the fixes described there) on UDP 127.0.0.1 and a
free port, never another address. It runs in a subprocess because pyghmi's
client and server share one global session loop and are very slow in one
process. Given a ``kill_file``, powering the BMC off kills the processes the
file lists (the lab's "host").

The BMC publishes its power state and the chassis control requests it got
to a JSON state file on every change; :meth:`FakeBmcServer.power_state` and
:meth:`FakeBmcServer.history` read it, so a test checks what the BMC did
without going through the driver under test. The state file appears once the
BMC's socket is bound, which is how the fixture knows it is ready.

The password reaches the BMC through its environment, never its command line.
:meth:`FakeBmcServer.stop` resumes a paused BMC and kills it. Failures raise
:class:`~cloudha.testing.lab.processes.LabError` with the BMC's log tail.
Needs the ``ipmi`` extra (pyghmi) in the Python that runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from cloudha.oobm.power import OobmConfig
from cloudha.testing.lab.processes import LabError, dies_with_parent, python_env

__all__ = ["ADDRESS", "FakeBmcServer", "free_udp_port", "start_fake_bmc"]

ADDRESS = "127.0.0.1"
"""The only address a fake BMC listens on."""

SERVER_MODULE = "cloudha.testing.lab.fakebmc_server"
PASSWORD_VARIABLE = "FAKEBMC_PASSWORD"
"""As in :mod:`cloudha.testing.lab.fakebmc_server`; not imported from there, because
importing it patches pyghmi's server classes in this process."""
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ADDRESS, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


@attrs.define(eq=False)
class FakeBmcServer:
    """A running fake BMC.

    Attributes:
        address: always ``127.0.0.1``.
        port: its UDP port.
        username: the one user it knows.
        password: that user's password.
        state_file: where it publishes its state (JSON).
        log_path: its stdout and stderr.
        process: the BMC process.
    """

    address: str
    port: int
    username: str
    password: str = attrs.field(repr=False)
    state_file: Path
    log_path: Path
    kill_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def pid(self) -> int:
        """The BMC's process id."""
        assert self.process is not None, "the fake BMC is not running"
        return self.process.pid

    def config(self, **overrides: Any) -> OobmConfig:
        """An :class:`OobmConfig` for this BMC (driver ``ipmitool`` unless overridden)."""
        fields: dict[str, Any] = {
            "driver": "ipmitool",
            "address": self.address,
            "username": self.username,
            "password": self.password,
            "port": self.port,
            "host_id": "bmc-host",
        }
        fields.update(overrides)
        return OobmConfig(**fields)

    def state(self) -> dict[str, Any]:
        """The BMC's published state: ``pid``, ``port``, ``power`` and ``history``."""
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state

    def power_state(self) -> str:
        """The chassis power, ``"on"`` or ``"off"``, as the BMC holds it."""
        power: str = self.state()["power"]
        return power

    def history(self) -> list[str]:
        """The chassis control requests the BMC got, in order (on, off, cycle, reset, soft)."""
        history: list[str] = self.state()["history"]
        return history

    def wait_for(self, power: str, timeout: float = 5.0) -> bool:
        """Wait until the BMC's power is ``power``; False if it is not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.power_state() != power:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def set_power_state(self, power: str) -> None:
        """Set the power out of band (SIGUSR1: on, SIGUSR2: off) and wait until it shows."""
        if power not in ("on", "off"):
            raise ValueError(f"power must be 'on' or 'off', got {power!r}")
        os.kill(self.pid, signal.SIGUSR1 if power == "on" else signal.SIGUSR2)
        if not self.wait_for(power):
            raise LabError(
                f"the fake BMC did not switch its power {power}:\n{_tail(self.log_path)}"
            )

    def pause(self) -> None:
        """Make the BMC silent (SIGSTOP); packets queue up unanswered."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self.paused and self.process is not None:
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def start(self, power: str = "on") -> None:
        """Start the BMC process on :attr:`port` and wait until it is ready.

        Raises :class:`LabError` (with the BMC's log) if it is not ready in time.
        """
        assert self.process is None, "the fake BMC is already running"
        self.state_file.unlink(missing_ok=True)
        env = python_env()
        env[PASSWORD_VARIABLE] = self.password
        argv = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--port",
            str(self.port),
            "--user",
            self.username,
            "--state-file",
            str(self.state_file),
            "--power",
            power,
        ]
        if self.kill_file is not None:
            argv += ["--kill-file", str(self.kill_file)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                dies_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.state_file.exists():
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise _Exited(code, _tail(self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise LabError(
                    f"the fake BMC on {self.address}:{self.port} was not ready within "
                    f"{_START_TIMEOUT} s; its log:\n{_tail(self.log_path)}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.02)

    def stop(self) -> None:
        """Resume (if paused) and end the BMC process; reap it. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            self.paused = False
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)

    def restart(self, power: str = "on") -> None:
        """Kill the BMC and start a new one on the same port (sessions are lost)."""
        self.stop()
        self.start(power)


class _Exited(Exception):
    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"exit status {code}")
        self.code = code
        self.log = log


def start_fake_bmc(
    workdir: Path,
    *,
    username: str = "admin",
    password: str,
    power: str = "on",
    kill_file: Path | None = None,
) -> FakeBmcServer:
    """Start a fake BMC on a free port (retrying if another process takes the port first).

    Its state file and log go to ``workdir``. The caller must :meth:`~FakeBmcServer.stop` it.
    """
    last: _Exited | None = None
    for _attempt in range(3):
        server = FakeBmcServer(
            address=ADDRESS,
            port=free_udp_port(),
            username=username,
            password=password,
            state_file=workdir / "bmc-state.json",
            log_path=workdir / "bmc.log",
            kill_file=kill_file,
        )
        try:
            server.start(power)
        except _Exited as exc:
            last = exc
            continue
        return server
    assert last is not None
    raise LabError(f"the fake BMC exited at start ({last}); its log:\n{last.log}")
