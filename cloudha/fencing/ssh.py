"""A soft "fencer" over SSH: restart the host's agent, a recovery step that never fences.

A host whose agent hung (but whose operating system still accepts SSH) often
comes back when the agent service is restarted. :class:`SSHSoftFencer` does
that. It proves nothing about the VM: a restarted agent does not stop a
running VM, and a restart that worked says only that the host is alive. So
it never answers FENCED.

Where it belongs in fence levels: a first level of its own, before the
fencers that prove death (power, storage heartbeat, libvirt). It tries the
cheap recovery; since its answer is always NOT_FENCED (or NOT_APPLICABLE),
the chain always moves on to the next level, and the agent, if it came back,
reconnects and the host leaves the Down path on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.model import Host, HostType, HypervisorType, Vm

if TYPE_CHECKING:
    from cloudha.transport.ssh import CommandResult

__all__ = ["DEFAULT_RESTART_COMMAND", "RemoteShell", "SSHSoftFencer"]

log = logging.getLogger(__name__)

DEFAULT_RESTART_COMMAND: tuple[str, ...] = ("systemctl", "restart", "cloudstack-agent")
"""The argv that restarts CloudStack's KVM agent."""

_MAX_ERROR = 200
"""Characters of the command's first stderr line kept in the evidence."""


@runtime_checkable
class RemoteShell(Protocol):
    """Runs commands on hosts: the part of :class:`cloudha.transport.ssh.SSHTransport` used here.

    ``run`` has the transport's own signature: it returns the command's exit
    status and output (a non-zero status is returned, not raised) and raises
    :class:`~cloudha.errors.ProbeError` subclasses (ProbeTimeout,
    ProbeHostKeyError, ProbeAuthError, ProbeConnectionError) when the host
    cannot be reached or the ``timeout`` passes. ``close`` releases its
    connections.
    """

    def run(
        self,
        address: str,
        argv: Sequence[str],
        *,
        timeout: float,
        host_id: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on ``address`` within ``timeout`` seconds."""

    def close(self) -> None:
        """Close the connections this shell holds."""


class SSHSoftFencer(BaseFenceBuilder):
    """Restart the agent service over SSH; a recovery step that NEVER returns FENCED.

    For each attempt it gets a shell from ``connect(host)``, runs
    ``restart_command`` on ``host.private_ip`` and closes the shell (always,
    whatever happened).

    Outcomes:

    * NOT_FENCED with evidence ``{"recovery": "agent restarted",
      "exit_status": 0}`` when the command exited 0;
    * NOT_FENCED with ``exit_status`` (and the first line of stderr as
      ``error``) when it exited non-zero;
    * NOT_FENCED with ``error`` (the error class) when the host could not be
      reached, the host key or login was refused, or the time ran out
      (a :class:`~cloudha.errors.ProbeError`), or a
      :class:`~cloudha.errors.ConfigurationError` came from ``connect`` or
      the shell;
    * NOT_APPLICABLE for hosts that are not routing hosts of ``hypervisors``
      or have no private address to connect to.

    Args:
        clock: the time source.
        connect: gives the shell to use for a host, e.g.
            ``lambda host: SSHTransport(username="root", key_filename=...)``;
            it may return a shared transport, which is closed (and stays
            usable) after each attempt. It may raise ProbeError.
        timeout: limit on the whole attempt (connect and command), in seconds.
        restart_command: the argv that restarts the agent (no shell syntax:
            each item reaches the program literally).
        hypervisors: the hypervisors whose hosts run the agent (default KVM
            and LXC, whose agent is ``cloudstack-agent``).
    """

    name = "SSHSoftFencer"

    def __init__(
        self,
        clock: Clock,
        *,
        connect: Callable[[Host], RemoteShell],
        timeout: float,
        restart_command: Sequence[str] = DEFAULT_RESTART_COMMAND,
        hypervisors: Collection[HypervisorType] = (HypervisorType.KVM, HypervisorType.LXC),
    ) -> None:
        super().__init__(clock, timeout=timeout)
        command = tuple(restart_command) if not isinstance(restart_command, str) else ()
        if not command or not all(isinstance(arg, str) and arg for arg in command):
            raise ConfigurationError(
                f"{self.name}: restart_command must be a non-empty list of non-empty strings",
                key="restart_command",
            )
        self.connect = connect
        self.restart_command = command
        self.hypervisors = frozenset(hypervisors)

    def supports(self, vm: Vm, host: Host) -> bool:
        return (
            host.type is HostType.ROUTING
            and host.hypervisor in self.hypervisors
            and bool(host.private_ip)
        )

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        deadline = self.clock.monotonic() + self.timeout
        program = self.restart_command[0]
        try:
            shell = self.connect(host)
        except ConfigurationError as exc:
            return self.not_fenced(
                f"cannot open a shell on {host.id}: {exc}", error=type(exc).__name__
            )
        try:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return self.not_fenced(
                    f"no time left to restart the agent on {host.id}", error="out of time"
                )
            address = host.private_ip or ""  # supports() checked it is set
            try:
                result = shell.run(address, self.restart_command, timeout=left, host_id=host.id)
            except ConfigurationError as exc:
                return self.not_fenced(
                    f"cannot run {program!r} on {host.id}: {exc}", error=type(exc).__name__
                )
        finally:
            self._close(shell, host)
        if result.exit_status == 0:
            log.info("%s: restarted the agent on host %s (%r)", self.name, host.id, program)
            return self.not_fenced(
                f"restarted the agent on {host.id}: a recovery step, not proof that "
                f"{vm.name} stopped",
                recovery="agent restarted",
                exit_status=0,
            )
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        first = lines[0][:_MAX_ERROR] if lines else ""
        evidence: dict[str, object] = {"exit_status": result.exit_status}
        if first:
            evidence["error"] = first
        log.warning(
            "%s: %r on host %s exited with status %d",
            self.name,
            program,
            host.id,
            result.exit_status,
        )
        return self.not_fenced(
            f"restarting the agent on {host.id} failed: {program!r} exited with status "
            f"{result.exit_status}",
            **evidence,
        )

    def _close(self, shell: RemoteShell, host: Host) -> None:
        try:
            shell.close()
        except Exception:
            log.warning(
                "%s: closing the shell to host %s failed", self.name, host.id, exc_info=True
            )
