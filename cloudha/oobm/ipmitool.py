"""The ``ipmitool`` power driver: IPMI over LAN through the ``ipmitool`` program (spec §8).

Each operation runs one ``ipmitool`` process, without a shell::

    ipmitool -I lanplus -R <retries> -N <seconds per try> -v \\
        -H <address> -p <port> -U <username> -E chassis power <on|off|cycle|reset|soft|status>

The password is never on the command line (``/proc/<pid>/cmdline`` is
readable by every user of the machine): ``-E`` makes ipmitool read it from
the environment variable ``IPMI_PASSWORD``, which is set only in the
environment handed to that one process (``/proc/<pid>/environ`` is readable
by its owner and root only). The process gets a minimal environment
(``PATH``, ``LC_ALL=C`` so its messages are the English ones parsed here,
and ``IPMI_PASSWORD``); :data:`os.environ` is never modified.

``-v`` is there for the error messages: without it ipmitool 1.8.19 says only
``Error: Unable to establish IPMI v2 / RMCP+ session`` for a wrong password, a
wrong user and a silent BMC alike; with it, it adds ``> RAKP 2 HMAC is
invalid`` (wrong password) or ``RAKP 2 message indicates an error :
unauthorized name`` (unknown user), which :func:`classify_failure` reads.

Time: ``-N`` is chosen so that ipmitool gives up on a silent BMC by itself
within ``timeout`` where it can (on lanplus, measured with 1.8.19, a silent
BMC costs it ``N * R * (R + 1)`` seconds, ``-R 0`` meaning its default of 4),
and the process is killed once ``timeout`` has passed in any case.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from typing import Any, Final

from cloudha.errors import ProbeAuthError, ProbeConnectionError, ProbeError, ProbeTimeout
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerCommandError,
    PowerOperation,
    PowerResult,
    PowerState,
)
from cloudha.redact import redact
from cloudha.settings import Settings

__all__ = [
    "DEFAULT_IPMI_PORT",
    "PASSWORD_VARIABLE",
    "IpmitoolDriver",
    "classify_failure",
    "parse_power_status",
]

log = logging.getLogger(__name__)

DEFAULT_IPMI_PORT: Final = 623
"""The IPMI-over-LAN (RMCP) UDP port used when a config has none."""

PASSWORD_VARIABLE: Final = "IPMI_PASSWORD"
"""The environment variable ``ipmitool -E`` reads the password from."""

_SUBCOMMANDS: Final = {
    PowerOperation.ON: "on",
    PowerOperation.OFF: "off",
    PowerOperation.CYCLE: "cycle",
    PowerOperation.RESET: "reset",
    PowerOperation.SOFT: "soft",
    PowerOperation.STATUS: "status",
}

_STATUS_LINES: Final = {
    "Chassis Power is on": PowerState.ON,
    "Chassis Power is off": PowerState.OFF,
}

_DEFAULT_RETRIES: Final = 4
"""What ``ipmitool -R 0`` falls back to."""

_MAX_MESSAGE = 500
"""Characters of ipmitool's output kept in messages."""


_CHATTER: Final = ("Loading IANA PEN Registry", "Using best available cipher suite")
"""Lines ``-v`` adds to every run, left out of messages."""

# Lower-case fragments of ipmitool 1.8.19's messages, most specific class first.
_AUTH_MARKERS: Final = (
    "rakp 2 hmac is invalid",  # wrong password (lanplus)
    "unauthorized name",  # unknown user (RAKP 2 status 0x0d)
    "invalid name length",  # RAKP 2 status 0x0c
    "unauthorized role",  # the user may not have the requested privilege
    "invalid integrity check value",  # RAKP 4: wrong password or Kg key
    "insufficient privilege",  # completion code 0xd4
    "invalid user name",  # IPMI 1.5 (-I lan) session challenge
    "null user name",
    "incorrect password",
    "invalid password",
    "authentication type",  # "Authentication type NONE not supported"
    "activate session command failed",  # IPMI 1.5: wrong password
)
_CONNECTION_MARKERS: Final = (
    "address lookup for",  # the name does not resolve
    "could not open socket",
    "insufficient resources for session",  # the BMC has no free session slot
    "no route to host",
    "network is unreachable",
    "connection refused",
)
_TIMEOUT_MARKERS: Final = (
    "no response",
    "get auth capabilities error",
    "error issuing get channel authentication capabilities",
    "unable to establish",  # a session could not be set up, with no auth hint
    "timeout",
    "timed out",
)

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]
"""What runs ipmitool: :func:`subprocess.run` or a stand-in with its signature."""


def _trim(text: str) -> str:
    lines = (line.strip() for line in text.splitlines())
    text = " | ".join(line for line in lines if line and not line.startswith(_CHATTER))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def parse_power_status(stdout: str) -> PowerState:
    """The power state in the output of ``ipmitool chassis power status``.

    A line reading exactly ``Chassis Power is on`` or ``Chassis Power is off``
    (surrounding blanks aside; case-sensitive) gives On or Off; anything
    else, including both or neither, is Unknown.
    """
    found = {
        _STATUS_LINES[line.strip()] for line in stdout.splitlines() if line.strip() in _STATUS_LINES
    }
    return found.pop() if len(found) == 1 else PowerState.UNKNOWN


def classify_failure(output: str) -> type[ProbeError]:
    """The error class for a failed ipmitool run, from its output (stderr and stdout).

    * :class:`~cloudha.errors.ProbeAuthError` when the BMC refused the
      credentials: ``RAKP 2 HMAC is invalid`` (wrong password),
      ``unauthorized name`` (unknown user), a refused role or privilege, a bad
      RAKP 4 integrity value (wrong password or Kg), IPMI 1.5's ``Invalid user
      name`` and similar. Checked first, because these failures also end with
      ``Unable to establish ... session``.
    * :class:`~cloudha.errors.ProbeConnectionError` when the BMC could not be
      reached: the address does not resolve, no socket, no route, or the BMC
      has no free session.
    * :class:`~cloudha.errors.ProbeTimeout` when the BMC did not answer: ``no
      response``, ``Get Auth Capabilities error``, ``Unable to establish ...
      session`` without an authentication hint, ``timeout``.
    * :class:`~cloudha.oobm.power.PowerCommandError` otherwise: the BMC
      answered and refused or failed the command.
    """
    text = output.lower()
    if any(marker in text for marker in _AUTH_MARKERS):
        return ProbeAuthError
    if any(marker in text for marker in _CONNECTION_MARKERS):
        return ProbeConnectionError
    if any(marker in text for marker in _TIMEOUT_MARKERS):
        return ProbeTimeout
    return PowerCommandError


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


class IpmitoolDriver(BasePowerDriver):
    """Power operations through the ``ipmitool`` program (driver name ``ipmitool``).

    Thread-safe (each call is its own process) and stateless: nothing is kept
    between calls, so a restarted BMC or a changed password is seen at once.

    Results: STATUS succeeds with On or Off when ipmitool prints ``Chassis
    Power is on|off``; any other output of a successful run is a result with
    ``success=False`` and state Unknown. Other operations succeed when
    ipmitool exits with 0 and carry no state (``state=None``): the caller reads
    the state back with STATUS. Messages are ipmitool's output, trimmed, with
    the password replaced by ``***``.

    Errors (after a non-zero exit, see :func:`classify_failure`):
    :class:`~cloudha.errors.ProbeAuthError`,
    :class:`~cloudha.errors.ProbeConnectionError` (also when the program
    cannot be run), :class:`~cloudha.errors.ProbeTimeout` (also when the
    process was killed at ``timeout``) or
    :class:`~cloudha.oobm.power.PowerCommandError`.

    Args:
        path: the ipmitool program (``outofbandmanagement.ipmitool.path``).
        interface: its ``-I`` interface (``outofbandmanagement.ipmitool.interface``),
            normally ``lanplus`` (IPMI 2.0) or ``lan`` (IPMI 1.5).
        retries: its ``-R`` retries (``outofbandmanagement.ipmitool.retries``);
            0 lets ipmitool use its default (4).
        run: runs the program; :func:`subprocess.run` unless a test injects a
            stand-in. It is called as ``run(argv, capture_output=True,
            timeout=..., env=..., stdin=subprocess.DEVNULL, check=False)``.

    Raises:
        ValueError: ``path`` or ``interface`` is empty, or ``retries`` is not
            a whole number >= 0.
    """

    name = "ipmitool"

    def __init__(
        self,
        *,
        path: str = "/usr/bin/ipmitool",
        interface: str = "lanplus",
        retries: int = 1,
        run: Runner = subprocess.run,
    ) -> None:
        if not path:
            raise ValueError("ipmitool: 'path' must not be empty")
        if not interface:
            raise ValueError("ipmitool: 'interface' must not be empty")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"ipmitool: 'retries' must be a whole number >= 0, got {retries!r}")
        self.path = path
        self.interface = interface
        self.retries = retries
        self._run = run

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> IpmitoolDriver:
        """A driver configured by ``outofbandmanagement.ipmitool.{path,interface,retries}``.

        ``kwargs`` (e.g. ``run=``) are passed on to the constructor.
        """
        return cls(
            path=settings.outofbandmanagement_ipmitool_path,
            interface=settings.outofbandmanagement_ipmitool_interface,
            retries=settings.outofbandmanagement_ipmitool_retries,
            **kwargs,
        )

    def per_try_timeout(self, timeout: float) -> int:
        """The ``-N`` seconds (at least 1) that let ipmitool give up within ``timeout``."""
        tries = self.retries or _DEFAULT_RETRIES
        return max(1, int(timeout // (tries * (tries + 1))))

    def argv(self, config: OobmConfig, operation: PowerOperation, timeout: float) -> list[str]:
        """The command line for ``operation``; it never holds the password."""
        port = config.port if config.port is not None else DEFAULT_IPMI_PORT
        return [
            self.path,
            "-I",
            self.interface,
            "-R",
            str(self.retries),
            "-N",
            str(self.per_try_timeout(timeout)),
            "-v",
            "-H",
            config.address,
            "-p",
            str(port),
            "-U",
            config.username,
            "-E",
            "chassis",
            "power",
            _SUBCOMMANDS[operation],
        ]

    @staticmethod
    def environment(config: OobmConfig) -> dict[str, str]:
        """The environment of the ipmitool process: ``PATH``, ``LC_ALL=C`` and the password."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "LC_ALL": "C",
            PASSWORD_VARIABLE: config.password,
        }

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        argv = self.argv(config, operation, timeout)
        where = f"ipmitool {operation} of BMC {config.address}"
        log.debug("running %s (timeout %.3g s)", argv, timeout)
        try:
            done = self._run(
                argv,
                capture_output=True,
                timeout=timeout,
                env=self.environment(config),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            # subprocess.run killed and reaped the process before raising.
            said = _trim(redact(_decode(exc.stderr) + "\n" + _decode(exc.output), config.password))
            raise ProbeTimeout(
                f"{where}: no result within {timeout:.3g} s, process killed"
                + (f" ({said})" if said else ""),
                host_id=config.host_id,
            ) from None
        except FileNotFoundError:
            raise ProbeConnectionError(
                f"{where}: the ipmitool program {self.path!r} was not found "
                "(install ipmitool or set outofbandmanagement.ipmitool.path)",
                host_id=config.host_id,
            ) from None
        except OSError as exc:
            raise ProbeConnectionError(
                f"{where}: cannot run {self.path!r}: {exc.strerror or exc}",
                host_id=config.host_id,
            ) from None
        stdout = redact(_decode(done.stdout), config.password)
        stderr = redact(_decode(done.stderr), config.password)
        log.debug("%s exited with %s", where, done.returncode)
        if done.returncode != 0:
            said = _trim(stderr + "\n" + stdout)
            error = classify_failure(stderr + "\n" + stdout)
            raise error(
                f"{where} failed (exit status {done.returncode}): {said or 'no output'}",
                host_id=config.host_id,
            )
        message = _trim(stdout)
        if operation is PowerOperation.STATUS:
            state = parse_power_status(stdout)
            return PowerResult(
                operation, state is not PowerState.UNKNOWN, state, message or "no output"
            )
        return PowerResult(operation, True, None, message)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, interface={self.interface!r}, "
            f"retries={self.retries!r})"
        )
