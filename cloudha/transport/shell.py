"""A HostShell over SSH: the escalation ladder's way to restart a host's agent.

:class:`SSHHostShell` is the :class:`~cloudha.ports.HostShell` port over an
:class:`~cloudha.transport.ssh.SSHTransport`: the transport holds the user,
the key and the known_hosts file (host keys verified, paramiko's
RejectPolicy), this class picks each host's address. Errors are the
transport's :mod:`cloudha.errors` classes (``ProbeTimeout``,
``ProbeHostKeyError``, ``ProbeAuthError``, ``ProbeConnectionError``), which
never carry key material.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cloudha.model import Host
from cloudha.ports import ShellResult
from cloudha.transport.gateway import _private_ip
from cloudha.transport.ssh import SSHTransport

__all__ = ["SSHHostShell"]


class SSHHostShell:
    """Runs commands on hosts over SSH (a :class:`~cloudha.ports.HostShell`).

    Args:
        transport: the SSH connections (host keys verified by default).
        address: how to reach a host (default: its private address; a host
            without one raises :class:`~cloudha.errors.ProbeConnectionError`).
        max_output: bytes kept of each of stdout and stderr.
    """

    def __init__(
        self,
        transport: SSHTransport,
        *,
        address: Callable[[Host], str] = _private_ip,
        max_output: int = 64 * 1024,
    ) -> None:
        self.transport = transport
        self.address = address
        self.max_output = max_output

    def run(self, host: Host, argv: Sequence[str], *, timeout: float) -> ShellResult:
        result = self.transport.run(
            self.address(host),
            argv,
            timeout=timeout,
            max_output=self.max_output,
            host_id=host.id,
        )
        return ShellResult(
            result.exit_status,
            result.stdout.decode("utf-8", "replace"),
            result.stderr.decode("utf-8", "replace"),
        )

    def __repr__(self) -> str:
        return f"SSHHostShell({self.transport!r})"
