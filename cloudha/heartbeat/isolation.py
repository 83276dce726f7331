"""Isolation-aware self-fencing: is this host cut off, or is only its storage failing?

vSphere's rule, ported to the storage heartbeat. A host whose heartbeat
writes fail resets itself only when it is also cut off from the management
network: its agent lost its connection to the management server, and an
isolation address does not answer. While the agent stays connected, the
writer reports the storage fault and does not reset; the management server,
which sees the agent, never calls the host Down on its heartbeat alone
(:func:`cloudha.investigators.support.sighting_proof`).

:func:`link_state` is the whole rule, pure: what the host's own agent
last heard from the management server (:attr:`IsolationProbe.acknowledged_at`)
and whether the isolation address answers give one :class:`LinkState`.
:class:`FileIsolationProbe` is the probe of a real host: the agent touches a
file after every ping the management server acknowledged, and the isolation
address is pinged with the system's ``ping``.

The lease. A watchdog host renews its lease (pets the watchdog) after a
round that wrote every pool, as before, or, while its heartbeat cannot be
written, on the agent's connection alone: the pet is then bounded by the
age of the last acknowledged ping exactly as a heartbeat pet is by the age
of the round's first write (:meth:`~cloudha.heartbeat.HeartbeatTiming.may_pet`).
The management server received that ping no earlier than it was sent, so a
host that renews on its agent is reset within the heartbeat's stale bound of
the last ping the server saw; and the server calls a stale heartbeat proof
of death only once that ping, too, is older than the stale bound. A host
that cannot prove itself (the agent disconnected, the heartbeat failing)
renews nothing, so the watchdog resets it in time whatever the isolation
address says: that address only decides whether the writer resets the host
at once (isolated) or leaves it to the lease (a partition between the host
and the management server, or the server down, with the host's network up).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from cloudha.errors import ConfigurationError

__all__ = [
    "GATEWAY",
    "FileIsolationProbe",
    "LinkState",
    "default_gateway",
    "link_state",
]

log = logging.getLogger("cloudha.heartbeat")

GATEWAY = "gateway"
"""The ``cloudha.isolation.address`` meaning the host's default gateway (vSphere's default)."""


class LinkState(enum.Enum):
    """What a host knows of its own connection, when its heartbeat cannot be written."""

    CONNECTED = "connected"
    """The agent's last ping was acknowledged within the window: the server sees this host."""
    PARTITIONED = "partitioned"
    """The agent lost the server, but the isolation address answers: the host's network is up."""
    ISOLATED = "isolated"
    """The agent lost the server and no isolation address answers (or none is configured)."""


def link_state(
    acknowledged_age: float | None, window: float, isolation_answers: bool | None
) -> LinkState:
    """The one rule: the agent's connection first, then the isolation address.

    Args:
        acknowledged_age: seconds since the agent sent the last ping the
            management server acknowledged (None: none since it started).
        window: the longest such age that still counts as connected
            (``cloudha.isolation.agent.window``).
        isolation_answers: whether the isolation address answered; None when
            no address is configured (then the agent's connection alone decides).
    """
    if acknowledged_age is not None and 0.0 <= acknowledged_age <= window:
        return LinkState.CONNECTED
    if isolation_answers:
        return LinkState.PARTITIONED
    return LinkState.ISOLATED


def default_gateway(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway from the kernel's routing table, or None."""
    try:
        with open(route_table, encoding="ascii") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[1] != "00000000":
            continue
        try:
            raw = int(fields[2], 16)
        except ValueError:
            continue
        if raw == 0:
            continue
        return ".".join(str((raw >> shift) & 0xFF) for shift in (0, 8, 16, 24))
    return None


class FileIsolationProbe:
    """The isolation probe of a real host (an :class:`~cloudha.ports.IsolationProbe`).

    Args:
        ack_file: the file the host's agent touches after every ping the
            management server acknowledged; its modification time is
            :meth:`acknowledged_at`. A missing file means no acknowledged ping.
        address: the isolation address: an IP or host name, ``"gateway"``
            (:data:`GATEWAY`, the default gateway read from the kernel at each
            check) or ``""`` (none: :meth:`isolation_answers` gives None).
        timeout: seconds one ping of the address may take (whole seconds, >= 1).
        run: runs the ping command (``subprocess.run``; tests replace it).
        ping: the ``ping`` binary (found on the PATH by default).

    Raises:
        ConfigurationError: an address is configured and no ``ping`` binary exists.
    """

    def __init__(
        self,
        ack_file: str,
        address: str = GATEWAY,
        *,
        timeout: float = 1.0,
        run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
        ping: str | None = None,
    ) -> None:
        self.ack_file = ack_file
        self.address = address
        self.timeout = max(1, round(timeout))
        self._run = run
        found = ping if ping is not None else shutil.which("ping")
        if address and found is None:
            raise ConfigurationError(
                f"cloudha.isolation.address is {address!r} but no 'ping' command is installed"
                " (install iputils-ping, or set the address to '' to use the agent link alone)",
                key="cloudha.isolation.address",
                value=address,
            )
        self._ping = found or "ping"

    def acknowledged_at(self) -> float | None:
        try:
            return os.stat(self.ack_file).st_mtime
        except OSError:
            return None

    def isolation_answers(self) -> bool | None:
        if not self.address:
            return None
        target = default_gateway() if self.address == GATEWAY else self.address
        if target is None:
            log.warning("isolation address: no default gateway in the routing table")
            return False
        argv: Sequence[str] = [self._ping, "-c", "1", "-W", str(self.timeout), target]
        try:
            done = self._run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=self.timeout + 1
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("isolation address %s: ping failed: %s", target, exc)
            return False
        return done.returncode == 0

    def __repr__(self) -> str:
        return f"FileIsolationProbe(ack_file={self.ack_file!r}, address={self.address!r})"
