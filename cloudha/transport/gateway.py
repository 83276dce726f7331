"""An AgentGateway over SSH: run cloudha's own agent-side commands on hosts.

For orchestrators without an agent of their own (or to add an independent
path next to it), :class:`SSHAgentGateway` answers the investigators'
commands by running ``cloudha`` on the host over SSH:

* ``CheckHealth``: ``cloudha --version`` answers.
* ``CheckOnHostCommand``: ``cloudha heartbeat check --json`` on the asked
  host reads the target's heartbeat on the asked host's own HA pools.
* ``CheckVMActivityOnStoragePoolCommand``: ``cloudha heartbeat activity
  --json`` on the asked host looks for the target's heartbeat and volume
  writes on the pool (Host-HA's activity check).

Other commands (PingTest among them) are answered ``result=False`` with
``data["supported"] = False`` ("not supported over SSH"), which investigators
read as UNKNOWN and fence on suspicion as a neighbour that could not be
asked. cloudha must be installed on the hosts; ``remote_command`` says how
to start it there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cloudha.commands import CHECK_ON_HOST, CHECK_VM_ACTIVITY, UNSUPPORTED
from cloudha.errors import ConfigurationError, ProbeConnectionError, ProbeError
from cloudha.heartbeat import ActivityReport, HeartbeatReport
from cloudha.model import Host
from cloudha.ports import Answer, Command, StoragePoolDirectory
from cloudha.transport.ssh import CommandResult

__all__ = ["CommandTransport", "SSHAgentGateway"]

log = logging.getLogger(__name__)


def _private_ip(host: Host) -> str:
    if not host.private_ip:
        raise ProbeConnectionError(f"host {host.id} has no private address", host_id=host.id)
    return host.private_ip


class CommandTransport(Protocol):
    """Runs a command on a host: :class:`~cloudha.transport.ssh.SSHTransport`, or
    :class:`~cloudha.transport.local.LocalTransport` for hosts that are this machine."""

    def run(
        self, address: str, argv: Sequence[str], *, timeout: float, host_id: str | None = None
    ) -> CommandResult:
        """Run ``argv`` on ``address``; a non-zero exit status is returned, not raised."""
        ...


class SSHAgentGateway:
    """The :class:`~cloudha.ports.AgentGateway` port over an :class:`SSHTransport`.

    Args:
        transport: the SSH connections (host keys verified by default), or
            any :class:`CommandTransport` (a local one for a lab on one machine).
        pools: which pools each host mounts; the asked host checks its own.
        remote_command: argv that starts cloudha on a host
            (default ``("cloudha",)``; e.g. ``("/opt/cloudha/bin/python", "-m", "cloudha")``).
        remote_settings: a settings TOML path on the hosts, passed to the
            remote checker so its staleness limit matches the writers'.
        address: how to reach a host (default: its private address).
        allow_unmounted: pass ``--allow-unmounted`` to the remote checker, so
            it reads pools that are plain directories (tests and demos only: by
            default a checker refuses a pool where nothing is mounted, and
            the command fails instead of judging from the local disk).
    """

    def __init__(
        self,
        transport: CommandTransport,
        *,
        pools: StoragePoolDirectory,
        remote_command: Sequence[str] = ("cloudha",),
        remote_settings: str | None = None,
        address: Callable[[Host], str] = _private_ip,
        allow_unmounted: bool = False,
    ) -> None:
        if not remote_command:
            raise ConfigurationError("remote_command must not be empty", key="remote_command")
        self.transport = transport
        self.pools = pools
        self.remote_command = tuple(remote_command)
        self.remote_settings = remote_settings
        self.address = address
        self.allow_unmounted = allow_unmounted

    def check_health(self, host: Host, *, timeout: float) -> bool:
        result = self.transport.run(
            self.address(host),
            [*self.remote_command, "--version"],
            timeout=timeout,
            host_id=host.id,
        )
        return result.exit_status == 0

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        if command.name == CHECK_ON_HOST:
            return self._check_on_host(host, command, timeout)
        if command.name == CHECK_VM_ACTIVITY:
            return self._check_activity(host, command, timeout)
        return Answer(False, f"{command.name} is not supported over SSH", UNSUPPORTED)

    def _check_on_host(self, host: Host, command: Command, timeout: float) -> Answer:
        target_ip = command.params.get("host_ip")
        if not isinstance(target_ip, str) or not target_ip:
            return Answer(False, "the target host has no private address")
        argv = [*self.remote_command, "heartbeat", "check", "--json", "--host-ip", target_ip]
        for pool in self.pools.pools_for_host(host):
            if pool.supports_ha:
                argv += ["--mount", pool.mount_point]
        if command.params.get("fail_on_one_pool"):
            argv.append("--fail-on-one-pool")
        return self._run_checker(host, argv, timeout, HeartbeatReport.from_dict)

    def _check_activity(self, host: Host, command: Command, timeout: float) -> Answer:
        params = command.params
        target_ip = params.get("host_ip")
        mount = params.get("mount_point")
        volumes = params.get("volumes", [])
        suspect = params.get("suspect_time")
        if not isinstance(target_ip, str) or not target_ip:
            return Answer(False, "the target host has no private address")
        if not isinstance(mount, str) or not any(
            p.mount_point == mount for p in self.pools.pools_for_host(host)
        ):
            return Answer(False, f"{host.id} does not mount {mount!r}")
        if not isinstance(suspect, int | float) or not isinstance(volumes, list):
            return Answer(False, "the activity check needs suspect_time and a list of volumes")
        argv = [*self.remote_command, "heartbeat", "activity", "--json", "--host-ip", target_ip]
        argv += ["--mount", mount, "--suspect-time", repr(float(suspect))]
        for volume in volumes:
            argv += ["--volume", str(volume)]
        if params.get("watchdog"):
            argv.append("--watchdog")
        return self._run_checker(host, argv, timeout, ActivityReport.from_dict)

    def _run_checker(
        self,
        host: Host,
        argv: list[str],
        timeout: float,
        parse: Callable[[Any], HeartbeatReport | ActivityReport],
    ) -> Answer:
        if self.remote_settings is not None:
            argv = [*argv, "--settings", self.remote_settings]
        if self.allow_unmounted:
            argv = [*argv, "--allow-unmounted"]
        result = self.transport.run(self.address(host), argv, timeout=timeout, host_id=host.id)
        if result.exit_status != 0:
            first = result.stderr.decode(errors="replace").strip().splitlines()[:1]
            return Answer(False, f"checker exited {result.exit_status}: {' '.join(first)}")
        try:
            report = parse(json.loads(result.stdout))
        except (ValueError, ProbeError) as exc:
            log.warning("heartbeat checker on %s answered garbage: %s", host.id, exc)
            return Answer(False, f"checker answered garbage: {exc}")
        return Answer(True, report.reason, report.to_dict())
