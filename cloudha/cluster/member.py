"""One management server's membership of a group sharing one database.

:class:`ClusterMember` is the ``Cluster`` loop of a
:class:`~cloudha.ManagementServer` given a :class:`~cloudha.ports.ServerRegistry`.
Every ``cloudha.ms.heartbeat.interval`` it:

1. **heartbeats**: a refused heartbeat means a peer declared this server
   departed (it was paused or cut off past the takeover timeout): it records
   ``ownership_lost``, forgets every host it followed, registers again with a
   new epoch and recovers from durable state like a fresh start (the hosts
   others took are theirs now: its writes about them are refused);
2. **watches its peers**: a peer whose ``(epoch, beat)`` did not move for
   ``cloudha.ms.takeover.timeout`` on this server's own monotonic clock is
   declared departed with one atomic conditional update, so exactly one
   survivor wins; the winner runs CloudStack's ``onManagementNodeLeft``
   (the departed server's HA works and Host-HA ownership are released;
   ``ms_departed``). Silence is only counted while this server's own
   heartbeats get through: after its own outage (the database restarted, the
   process stalled) every peer starts a fresh count;
3. **claims orphans**: a host with no owner, or whose owner is not an Up
   server at the host's ``owner_epoch``, is claimed with
   :meth:`~cloudha.detection.AgentManager.take_over` (optimistic: one
   claimer wins) in batches of ``direct.agent.load.size``, up to this
   server's fair share (``ceil(hosts / Up servers)``). One batch per round
   while orphans are left, and every ``direct.agent.scan.interval`` when
   none were; batches until the fair share at once when the group changed
   (a departure, a server joining or leaving; a declaration lost to
   another survivor counts), and a round is run early when a peer's silence
   reaches the timeout before the next one, so a takeover completes within
   one heartbeat interval past the takeover timeout. Each server tries the
   orphans in its own order (a hash of its id and the host's), so
   claimers seldom collide;
4. **rebalances** (``agent.lb.enabled``): once ``agent.load.threshold`` of
   the hosts are owned, a server above its fair share releases up to one
   batch of its Up hosts a round (``rebalance``) for the others to claim.

The decisions use the injected clock only; the loop is driven by the
server's pumps (or the simulator).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cloudha.errors import ConfigurationError, ProbeError
from cloudha.model import Host
from cloudha.ports import ServerRecord, ServerRegistry, ServerState
from cloudha.status import Status

if TYPE_CHECKING:
    from cloudha.server import ManagementServer

__all__ = ["ClusterMember"]

_DUE_SLACK = 1e-3
"""Seconds past a peer's due time the round is scheduled at (float rounding aside)."""

log = logging.getLogger(__name__)


class ClusterMember:
    """The ``Cluster`` loop of one management server (see the module docstring).

    Args:
        server: the management server (its directory, agent manager, HA
            queue, Host-HA and recorder are used).
        registry: the group's :class:`~cloudha.ports.ServerRegistry`.
        address: where operators reach this server (stored in the registry).

    Raises:
        ConfigurationError: ``cloudha.ms.takeover.timeout`` is under twice
            ``cloudha.ms.heartbeat.interval`` (one late heartbeat would be a
            departure).
    """

    def __init__(self, server: ManagementServer, registry: ServerRegistry, address: str) -> None:
        settings = server.settings
        if settings.cloudha_ms_takeover_timeout < 2 * settings.cloudha_ms_heartbeat_interval:
            raise ConfigurationError(
                "cloudha.ms.takeover.timeout must be at least twice cloudha.ms.heartbeat.interval"
                f" ({settings.cloudha_ms_takeover_timeout:g}s <"
                f" 2 x {settings.cloudha_ms_heartbeat_interval:g}s)",
                key="cloudha.ms.takeover.timeout",
                value=settings.cloudha_ms_takeover_timeout,
            )
        self.server = server
        self.registry = registry
        self.address = address
        self.server_id = server.server_id
        self.epoch: int | None = None
        """This server's registration epoch; None until :meth:`join` (and after a loss)."""
        self._peers: dict[str, tuple[tuple[int, int], float]] = {}  # id -> ((epoch, beat), since)
        self._group: frozenset[tuple[str, int]] | None = None
        self._last_ok: float | None = None
        self._next_scan = 0.0

    # -- membership -----------------------------------------------------------

    def _lease(self, sent: float) -> None:
        """The registry accepted a registration or heartbeat sent at ``sent`` (monotonic)."""
        settings = self.server.settings
        until = sent + settings.cloudha_ms_takeover_timeout - settings.cloudha_ms_heartbeat_interval
        self.server.freshness.note_lease(sent, until)

    def join(self) -> int:
        """Register (a new epoch) and give it to the agent manager; the epoch."""
        sent = self.server.clock.monotonic()
        epoch = self.registry.register(self.server_id, self.address)
        self._lease(sent)
        self.epoch = epoch
        self.server.agents.owner_epoch = epoch
        self._peers.clear()
        self._group = None  # the first round's group is the baseline, not a change
        self._last_ok = None
        self._next_scan = 0.0
        self.server.recorder.emit(
            "ms_registered",
            reason=f"registered at epoch {epoch}",
            epoch=epoch,
            address=self.address,
        )
        return epoch

    def leave(self) -> None:
        """Graceful stop: release this server's hosts and leave the registry (state Down)."""
        if self.epoch is None:
            return
        epoch = self.epoch
        mine = self._mine(self.server.watched_directory.list_hosts())
        released = self.server.agents.release(mine)
        self.epoch = None
        self.server.freshness.note_lease(None, self.server.clock.monotonic())
        self.registry.leave(self.server_id, epoch)
        self.server.recorder.emit(
            "ms_left",
            reason=f"stopped: {len(released)} hosts released for the group to claim",
            epoch=epoch,
            hosts=released,
        )

    def _lost(self, epoch: int) -> None:
        """The registry refused this server's heartbeat: a peer declared it departed."""
        self.server.freshness.note_lease(None, self.server.clock.monotonic())  # no lease left
        by = next((r.departed_by for r in self.registry.servers() if r.id == self.server_id), None)
        dropped = self.server.agents.forget_all()
        self.epoch = None
        self.server.recorder.emit(
            "ownership_lost",
            reason=(
                f"the registry no longer has this server Up at epoch {epoch}"
                + (f" (declared departed by {by})" if by else "")
                + f": {len(dropped)} hosts forgotten, registering again to claim anew"
            ),
            epoch=epoch,
            by=by,
            hosts=dropped,
        )
        log.warning("management server %s lost its ownership (epoch %d)", self.server_id, epoch)
        self.server.rejoin()

    # -- the loop ---------------------------------------------------------------

    def tick(self) -> float:
        """One round (module docstring); seconds until the next."""
        settings = self.server.settings
        interval = settings.cloudha_ms_heartbeat_interval
        epoch = self.epoch
        if epoch is None:
            return interval  # not joined yet: the server's recovery joins
        clock = self.server.clock
        sent = clock.monotonic()
        if not self.registry.heartbeat(self.server_id, epoch):
            self._lost(epoch)
            return interval
        self._lease(sent)
        servers = self.registry.servers()
        now = clock.monotonic()
        if self._last_ok is None or now - self._last_ok > 2 * interval:
            self._peers.clear()  # our own outage: nobody's silence counts from before it
        self._last_ok = now
        decided = self._watch(servers, now)
        if decided:
            servers = self.registry.servers()  # won or lost, the group changed
        group = frozenset((r.id, r.epoch) for r in servers if r.state is ServerState.UP)
        changed = self._group is not None and group != self._group
        try:
            if changed or now >= self._next_scan:
                self._sweep(servers)
                full = self._claim(servers, until_fair=changed)
                self._next_scan = now if full else now + settings.direct_agent_scan_interval
            if settings.agent_lb_enabled:
                self._rebalance(servers)
        except ProbeError as exc:
            # The host directory does not answer (the orchestrator's database is out):
            # the heartbeat went through, the claims wait for the next round, which
            # still sees the group change if there was one.
            log.warning("management server %s: claims postponed: %s", self.server_id, exc)
            return self._next_round(now, interval)
        self._group = group
        return self._next_round(now, interval)

    def _next_round(self, now: float, interval: float) -> float:
        """Seconds to the next round: one interval, or less while a peer is suspect.

        A peer silent for more than the takeover timeout less two intervals
        (one when the timeout is under three) is suspect: the rounds come
        every quarter interval, and one exactly when its silence reaches the
        timeout. So this server declares the departure
        when due, not up to one interval later, and when another survivor
        declared it first (its count began earlier) this server sees it
        within a quarter interval and claims its share.
        """
        timeout = self.server.settings.cloudha_ms_takeover_timeout
        due = min((since + timeout for _key, since in self._peers.values()), default=None)
        # Two intervals ahead: another survivor's count may have begun up to one interval
        # before this server's, and its declaration is then seen within a quarter.
        ahead = max(interval, min(2 * interval, timeout - interval))
        if due is None or due - now >= ahead:
            return interval
        return min(interval / 4, max(0.0, due - now) + _DUE_SLACK)

    def _watch(self, servers: Sequence[ServerRecord], now: float) -> list[str]:
        """Declare the peers silent for the takeover timeout departed; those decided.

        A declaration this server lost (a peer won it) counts too: the group
        changed either way, and this server claims its share at once.
        """
        timeout = self.server.settings.cloudha_ms_takeover_timeout
        departed: list[str] = []
        up = {r.id for r in servers if r.state is ServerState.UP}
        for peer in list(self._peers):
            if peer not in up:
                del self._peers[peer]
        for record in servers:
            if record.id == self.server_id or record.state is not ServerState.UP:
                continue
            key = (record.epoch, record.beat)
            seen = self._peers.get(record.id)
            if seen is None or seen[0] != key:
                self._peers[record.id] = (key, now)
                continue
            silent = now - seen[1]
            if silent < timeout:
                continue
            del self._peers[record.id]
            if self.registry.declare_departed(record.id, record.epoch, record.beat, self.server_id):
                self._node_left(record, silent)
            departed.append(record.id)
        return departed

    def _release(self, server_id: str) -> tuple[int, int]:
        """Release what ``server_id`` (not Up) still holds: its HA works and Host-HA configs."""
        server = self.server
        works = server.ha.on_server_left(server_id)
        host_ha = 0
        if server.host_ha is not None:
            host_ha = server.host_ha.store.expire_ownership(server_id)
        return works, host_ha

    def _sweep(self, servers: Sequence[ServerRecord]) -> None:
        """Finish ``onManagementNodeLeft`` for every server that is not Up.

        The winner of a departure releases the works at once (:meth:`_node_left`),
        but it may fail or die between the conditional update and the release;
        every claim round each survivor releases whatever a departed or stopped
        server still holds (one update per server, nothing when it holds
        nothing), so no work waits on a server that will never run it.
        """
        for record in servers:
            if record.id == self.server_id or record.state is ServerState.UP:
                continue
            works, host_ha = self._release(record.id)
            if works or host_ha:
                self.server.recorder.emit(
                    "ms_released",
                    reason=(
                        f"management server {record.id} is {record.state.value} and still held"
                        f" {works} HA works and {host_ha} Host-HA configs: released"
                    ),
                    server=record.id,
                    epoch=record.epoch,
                    works=works,
                    host_ha=host_ha,
                )

    def _node_left(self, record: ServerRecord, silent: float) -> None:
        """CloudStack ``onManagementNodeLeft``: release the departed server's works and Host-HA."""
        server = self.server
        works, host_ha = self._release(record.id)
        server.recorder.emit(
            "ms_departed",
            reason=(
                f"management server {record.id} (epoch {record.epoch}) silent for"
                f" {silent:.1f}s: declared departed; {works} HA works and {host_ha}"
                " Host-HA configs released, its hosts are claimed by the group"
            ),
            server=record.id,
            epoch=record.epoch,
            by=self.server_id,
            silent=round(silent, 3),
            works=works,
            host_ha=host_ha,
        )

    # -- hosts --------------------------------------------------------------------

    def _mine(self, hosts: Sequence[Host]) -> list[Host]:
        return [
            h
            for h in hosts
            if h.management_server_id == self.server_id and h.owner_epoch == self.epoch
        ]

    def owns(self, host: Host) -> bool:
        """Whether ``host``'s row names this server at its current epoch."""
        return (
            self.epoch is not None
            and host.management_server_id == self.server_id
            and host.owner_epoch == self.epoch
        )

    @staticmethod
    def _orphan(host: Host, up: Mapping[str, int]) -> bool:
        owner = host.management_server_id
        return owner is None or up.get(owner) != host.owner_epoch

    def _fair(self, total: int, up: Mapping[str, int]) -> int:
        return math.ceil(total / max(1, len(up)))

    def _up(self, servers: Sequence[ServerRecord]) -> dict[str, int]:
        up = {r.id: r.epoch for r in servers if r.state is ServerState.UP}
        if self.epoch is not None:
            up[self.server_id] = self.epoch
        return up

    def _claim(self, servers: Sequence[ServerRecord], *, until_fair: bool) -> bool:
        """Claim orphans (one batch, or batches up to the fair share); True if a full batch went."""
        server = self.server
        batch = server.settings.direct_agent_load_size
        up = self._up(servers)
        hosts = list(server.watched_directory.list_hosts())
        room = self._fair(len(hosts), up) - len(self._mine(hosts))
        orphans = sorted(
            (h for h in hosts if self._orphan(h, up)),
            key=lambda h: (zlib.crc32(f"{self.server_id}/{h.id}".encode()), h.id),
        )
        full = False
        while room > 0 and orphans:
            chunk, orphans = orphans[: min(batch, room)], orphans[min(batch, room) :]
            claimed = server.agents.take_over(chunk, needs_hand_over=server._needs_hand_over)
            room -= len(claimed)
            full = len(chunk) == batch
            if not until_fair:
                break
        return full

    def _rebalance(self, servers: Sequence[ServerRecord]) -> None:
        server = self.server
        up = self._up(servers)
        hosts = list(server.watched_directory.list_hosts())
        if not hosts:
            return
        owned = sum(1 for h in hosts if not self._orphan(h, up))
        if owned / len(hosts) < server.settings.agent_load_threshold:
            return
        mine = self._mine(hosts)
        surplus = len(mine) - self._fair(len(hosts), up)
        if surplus <= 0:
            return
        movable = [h for h in sorted(mine, key=lambda h: h.id) if h.status is Status.UP]
        chunk = movable[: min(surplus, server.settings.direct_agent_load_size)]
        released = server.agents.release(chunk)
        if released:
            server.recorder.emit(
                "rebalance",
                reason=(
                    f"{len(mine)} hosts owned, fair share {len(mine) - surplus}:"
                    f" {len(released)} released for the group to claim"
                ),
                hosts=released,
            )

    def __repr__(self) -> str:
        return f"ClusterMember({self.server_id!r}, epoch={self.epoch})"
