"""When this management server last heard from each host's agent.

:class:`Sightings` is the server's :class:`~cloudha.ports.AgentSightings`:
the agent manager notes every connect and ping; the storage-heartbeat
investigator and fence builder read it (a host heard from within the
heartbeat's stale bound is not proved dead by its heartbeat:
:func:`~cloudha.investigators.support.sighting_proof`). Memory only: a
server that (re)starts knows no sighting older than its start, so every
host counts as seen at the start (a previous process may have heard from
it until then).
"""

from __future__ import annotations

import threading

from cloudha.clock import Clock

__all__ = ["Sightings"]


class Sightings:
    """Wall-clock epoch seconds of the last message from each agent (at least the start)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started = clock.now().timestamp()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, host_id: str) -> None:
        """``host_id``'s agent connected or pinged now."""
        now = self.clock.now().timestamp()
        with self._lock:
            self._seen[host_id] = now

    def last_seen(self, host_id: str) -> float:
        with self._lock:
            return self._seen.get(host_id, self.started)

    def __repr__(self) -> str:
        return f"Sightings({len(self._seen)} hosts, started={self.started:.3f})"
