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
* ``PingTestCommand`` (a host's address, no router): the asked host runs
  ``ping -c 1 -n -q -W SECONDS ADDRESS`` (``ping_command``). Exit status 0
  is "it answers", 1 is "no reply"; anything else (no ``ping`` program, no
  permission, a bad address) is no answer at all, ``data["supported"] =
  False``, which fence on suspicion reads as a neighbour that could not be
  asked. A ping through a router (a VM's address) is not supported.

The readings of a heartbeat check carry the inventory's pool ids (the
remote checker only knows mount points; the gateway names each reading
after the asked host's pool mounted there), so fence on suspicion can
match them to the target's pools.

Other commands are answered ``result=False`` with ``data["supported"] =
False`` ("not supported over SSH"), which investigators read as UNKNOWN.
cloudha must be installed on the hosts; ``remote_command`` says how to
start it there.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from cloudha.commands import CHECK_ON_HOST, CHECK_VM_ACTIVITY, PING_TEST, UNSUPPORTED
from cloudha.errors import ConfigurationError, ProbeConnectionError, ProbeError
from cloudha.heartbeat import ActivityReport, HeartbeatReport
from cloudha.model import Host
from cloudha.ports import Answer, Command, StoragePoolDirectory
from cloudha.transport.ssh import CommandResult

__all__ = ["DEFAULT_PING", "CommandTransport", "SSHAgentGateway", "ping_wait"]

log = logging.getLogger(__name__)

DEFAULT_PING: tuple[str, ...] = ("ping",)
"""The program a neighbour runs for a PingTest (iputils or busybox ``ping``)."""

_PING_REACHED = 0
_PING_NO_REPLY = 1  # iputils and busybox: packets sent, none answered


def ping_wait(timeout: float) -> int:
    """The ``-W`` seconds of a PingTest bounded by ``timeout``: half of it (the rest is
    for SSH), at least 1 (``ping`` takes whole seconds), at most 5."""
    return max(1, min(5, math.floor(timeout / 2)))


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
        ping_command: argv that starts ``ping`` on a host (default
            :data:`DEFAULT_PING`); None answers every PingTest "not supported"
            (a host that is this machine is no witness of another's network).
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
        ping_command: Sequence[str] | None = DEFAULT_PING,
    ) -> None:
        if not remote_command:
            raise ConfigurationError("remote_command must not be empty", key="remote_command")
        if ping_command is not None and not ping_command:
            raise ConfigurationError("ping_command must not be empty", key="ping_command")
        self.transport = transport
        self.pools = pools
        self.remote_command = tuple(remote_command)
        self.remote_settings = remote_settings
        self.address = address
        self.allow_unmounted = allow_unmounted
        self.ping_command = None if ping_command is None else tuple(ping_command)

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
        if command.name == PING_TEST and self.ping_command is not None:
            return self._ping(host, command, timeout)
        return Answer(False, f"{command.name} is not supported over SSH", UNSUPPORTED)

    def _ping(self, host: Host, command: Command, timeout: float) -> Answer:
        """``ping`` on ``host``: 0 answers, 1 no reply, anything else is no answer."""
        ip = command.params.get("ip")
        if command.params.get("router_ip") is not None:
            return Answer(False, "a ping through a router is not supported over SSH", UNSUPPORTED)
        if not isinstance(ip, str) or not ip or ip.startswith("-"):
            return Answer(False, f"no address to ping: {ip!r}", UNSUPPORTED)
        assert self.ping_command is not None
        argv = [*self.ping_command, "-c", "1", "-n", "-q", "-W", str(ping_wait(timeout)), ip]
        result = self.transport.run(self.address(host), argv, timeout=timeout, host_id=host.id)
        if result.exit_status == _PING_REACHED:
            return Answer(True, f"{ip} answers a ping from {host.id}", {"reached": True})
        if result.exit_status == _PING_NO_REPLY:
            return Answer(False, f"{ip} does not answer a ping from {host.id}", {"reached": False})
        said = result.stderr.decode(errors="replace").strip().splitlines()[:1]
        why = f"ping on {host.id} exited {result.exit_status}"
        return Answer(False, f"{why}: {said[0]}" if said else why, UNSUPPORTED)

    def _check_on_host(self, host: Host, command: Command, timeout: float) -> Answer:
        target_ip = command.params.get("host_ip")
        if not isinstance(target_ip, str) or not target_ip:
            return Answer(False, "the target host has no private address")
        argv = [*self.remote_command, "heartbeat", "check", "--json", "--host-ip", target_ip]
        pool_ids: dict[str, str] = {}
        for pool in self.pools.pools_for_host(host):
            if pool.supports_ha:
                argv += ["--mount", pool.mount_point]
                pool_ids.setdefault(pool.mount_point, pool.id)
        if command.params.get("fail_on_one_pool"):
            argv.append("--fail-on-one-pool")

        def parse(document: Any) -> HeartbeatReport:
            return _named(HeartbeatReport.from_dict(document), pool_ids)

        return self._run_checker(host, argv, timeout, parse)

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


def _named(report: HeartbeatReport, pool_ids: Mapping[str, str]) -> HeartbeatReport:
    """``report`` with each reading named after the pool mounted at its mount point
    (the remote checker names them by mount point)."""
    readings = tuple(
        attrs.evolve(r, pool_id=pool_ids.get(r.mount_point, r.pool_id)) for r in report.readings
    )
    return attrs.evolve(report, readings=readings)
