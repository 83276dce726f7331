"""A command transport that runs commands on this machine: the ``agent = "local"`` hosts.

In a lab where every "host" is this machine (``cloudha demo --real``, the
daemon's own tests), cloudha's agent-side commands need no SSH:
:class:`LocalTransport` has the :meth:`~cloudha.transport.ssh.SSHTransport.run`
signature of the SSH transport and runs the command as a local subprocess,
so :class:`~cloudha.transport.gateway.SSHAgentGateway` works over it
unchanged (``remote_command=(sys.executable, "-m", "cloudha")``). The
address is ignored.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Sequence

from cloudha.errors import ConfigurationError, ProbeConnectionError, ProbeTimeout
from cloudha.transport.ssh import CommandResult

__all__ = ["LocalTransport"]


class LocalTransport:
    """Runs commands as local subprocesses, with the SSH transport's ``run`` signature.

    Thread-safe (each call is its own process). Standard output and error
    are kept up to ``max_output`` bytes each.
    """

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
        """Run ``argv`` here (``address`` is ignored) and return its status and output.

        Raises:
            ConfigurationError: an empty ``argv`` or a bad ``timeout``.
            ProbeTimeout: it did not finish within ``timeout`` (it is killed).
            ProbeConnectionError: the program cannot be started.
        """
        if not argv:
            raise ConfigurationError("argv must not be empty", key="argv")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"bad timeout {timeout!r}", key="timeout", value=timeout)
        started = time.monotonic()
        try:
            done = subprocess.run(
                list(argv),
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ProbeTimeout(
                f"{argv[0]} did not finish within {timeout:g}s", host_id=host_id
            ) from None
        except OSError as exc:
            raise ProbeConnectionError(
                f"cannot run {argv[0]}: {exc.strerror or exc}", host_id=host_id
            ) from None
        return CommandResult(
            argv=tuple(argv),
            exit_status=done.returncode if done.returncode >= 0 else -1,
            stdout=done.stdout[:max_output],
            stderr=done.stderr[:max_output],
            duration=time.monotonic() - started,
        )

    def close(self) -> None:
        """Nothing to close."""

    def __repr__(self) -> str:
        return "LocalTransport()"
