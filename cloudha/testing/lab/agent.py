"""The agent side of a lab's ``agent = "local"`` hosts, which dies with the host.

The daemon runs an ``agent = "local"`` host's agent-side commands
(``cloudha --version``, ``cloudha heartbeat check``) as processes on this
machine. On a lab every host is this machine, so those commands would still
answer after the host was powered off at its BMC: the server's CheckHealth
would find a dead host healthy and never declare it Down. A real host's
agent side dies with it; :class:`LabTransport` does the same: it runs the
command here while the lab host still runs, and fails to connect (a
:class:`~cloudha.errors.ProbeConnectionError`, as SSH to a dead host does)
once its processes are gone.

:func:`lab_gateways` builds, for :func:`cloudha.daemon.assemble`'s
``gateway=``, each host's :class:`~cloudha.transport.gateway.SSHAgentGateway`
over it, running the lab hosts' cloudha (:attr:`Lab.cloudha_program
<cloudha.testing.lab.cluster.Lab.cloudha_program>`: this very cloudha, taking
the lab's plain heartbeat directory for a mounted pool) with the lab's
settings (so the checker's staleness limit is the writers').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cloudha.errors import ProbeConnectionError
from cloudha.model import Host
from cloudha.ports import AgentGateway
from cloudha.testing.lab.cluster import Lab, LabHost
from cloudha.transport.local import LocalTransport
from cloudha.transport.ssh import CommandResult

__all__ = ["LabTransport", "lab_gateways"]


class LabTransport:
    """:class:`~cloudha.transport.local.LocalTransport` for a lab's hosts.

    A command for a host (by ``host_id``, else by its heartbeat address) runs
    here while that host's libvirtd still runs; for a powered-off host it
    raises :class:`~cloudha.errors.ProbeConnectionError`. A command for no lab
    host runs here.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.local = LocalTransport()

    def _host(self, address: str, host_id: str | None) -> LabHost | None:
        for host in self.lab.hosts:
            if host.id == host_id or (host_id is None and host.address == address):
                return host
        return None

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
        """Run ``argv`` here, unless the lab host it is meant for is powered off."""
        host = self._host(address, host_id)
        if host is not None and not host.alive():
            raise ProbeConnectionError(
                f"{host.id} ({address}) is powered off: nothing answers", host_id=host.id
            )
        return self.local.run(
            address, argv, timeout=timeout, stdin=stdin, max_output=max_output, host_id=host_id
        )

    def close(self) -> None:
        """Nothing to close."""


def lab_gateways(lab: Lab) -> Callable[[Any], tuple[AgentGateway, None]]:
    """A ``gateway=`` for :func:`cloudha.daemon.assemble` on ``lab``'s ``agent = "local"`` hosts.

    Every host gets an :class:`~cloudha.transport.gateway.SSHAgentGateway`
    over one :class:`LabTransport`; the asked host checks the lab's heartbeat
    directory (every lab host mounts it, as pool ``pool`` of
    :func:`~cloudha.testing.lab.inventory.write_inventory`) with the lab's
    settings file.
    """
    from cloudha.model import Pool
    from cloudha.transport.gateway import SSHAgentGateway

    shared = (Pool("pool", str(lab.heartbeat_dir), cluster="lab"),)

    class _Pools:
        def pools_for_host(self, host: Host) -> Sequence[Pool]:
            return shared

    transport = LabTransport(lab)
    pools = _Pools()

    def build(entry: Any) -> tuple[AgentGateway, None]:
        gateway = SSHAgentGateway(
            transport,
            pools=pools,
            remote_command=(str(lab.cloudha_program),),
            remote_settings=str(lab.settings_file),
            ping_command=None,  # every local host is this machine: no witness of another
        )
        return gateway, None

    return build
