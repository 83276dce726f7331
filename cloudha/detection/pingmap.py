"""The in-memory ping map: host id -> time of its last ping.

CloudStack keeps ``_pingMap`` in a hash map and finds the hosts behind on
ping by scanning all of it. Here the map is kept in ping order (an
``OrderedDict`` whose entry moves to the end on every ping), so the hosts
behind are always at the front: :meth:`PingMap.behind` reads only them and
stops at the first host that is not behind. Its cost grows with the number
of hosts behind, not the number monitored.

Thread-safety: ``connect``, ``disconnect`` and ``behind`` take a lock.
``ping_by`` is the hot path (one call per agent per ``ping.interval``) and
takes none: it is built from single ``OrderedDict`` operations that are
atomic, and each entry is a one-slot cell that a ping updates in place, so a
ping racing a ``disconnect`` updates a cell that is already detached and can
never put the host back ("replace" semantics, as CloudStack's
``ConcurrentHashMap.replace``). ``behind`` copies the front of the map in one
operation (doubling the copy while every copied host is behind), so it never
iterates while a ping reorders the map.

The order is exact for pings that do not overlap. A ping stamps its cell and
then moves it to the end; two pings racing each other, or a ping racing
``behind``, can leave a host a few microseconds out of place, and ``behind``
(which stops at the first host not behind) then reports a host behind it at
the monitor's next tick instead of this one. A ping that races ``connect`` of
the same host lands in the replaced cell and is lost, which is harmless since
``connect`` has just stamped the host.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable

from cloudha.clock import Clock
from cloudha.model import HostType

__all__ = ["UNMONITORED_HOST_TYPES", "PingMap"]

UNMONITORED_HOST_TYPES = frozenset({HostType.TRAFFIC_MONITOR, HostType.SECONDARY_STORAGE})
"""Host types that never enter the ping map (spec §2.2 ``processConnect``)."""

_FIRST_COPY = 64


class _Cell:
    """One host's last ping, updated in place (so a detached cell absorbs a late ping)."""

    __slots__ = ("last",)

    def __init__(self, last: float) -> None:
        self.last = last


class PingMap:
    """Last ping per connected host, ordered by ping time.

    Args:
        clock: the time source; only ``clock.monotonic()`` is used.
    """

    __slots__ = ("_cells", "_clock", "_get", "_lock", "_monotonic", "_move_to_end")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._monotonic: Callable[[], float] = clock.monotonic
        self._cells: OrderedDict[str, _Cell] = OrderedDict()
        self._get = self._cells.get
        self._move_to_end = self._cells.move_to_end
        self._lock = threading.Lock()

    def connect(self, host_id: str, host_type: HostType = HostType.ROUTING) -> bool:
        """Start monitoring ``host_id`` as if it had just pinged.

        Traffic monitors and secondary storage are not monitored (spec §2.2);
        for them nothing is inserted and False is returned. Connecting a host
        that is already monitored refreshes it.
        """
        if host_type in UNMONITORED_HOST_TYPES:
            return False
        with self._lock:
            self._cells.pop(host_id, None)
            self._cells[host_id] = _Cell(self._monotonic())
        return True

    def ping_by(self, host_id: str) -> bool:
        """Record a ping from ``host_id``; False (nothing inserted) if it is not monitored."""
        cell = self._get(host_id)
        if cell is None:
            return False
        cell.last = self._monotonic()
        try:
            self._move_to_end(host_id)
        except KeyError:  # disconnected meanwhile: the detached cell took the ping
            return False
        return True

    def disconnect(self, host_id: str) -> bool:
        """Stop monitoring ``host_id``; False if it was not monitored."""
        with self._lock:
            return self._cells.pop(host_id, None) is not None

    def last_ping(self, host_id: str) -> float | None:
        """``clock.monotonic()`` of the host's last ping, or None if not monitored."""
        cell = self._get(host_id)
        return None if cell is None else cell.last

    def behind(self, timeout: float) -> list[str]:
        """Hosts whose last ping is older than ``clock.monotonic() - timeout``, oldest first."""
        cutoff = self._monotonic() - timeout
        return [host for host, _ in self._front(lambda last: last < cutoff)]

    def next_deadline(self, timeout: float) -> float | None:
        """When the next host not yet behind will be (``last + timeout``); None if none.

        Hosts already behind are skipped, so the cost is that of :meth:`behind`.
        """
        cutoff = self._monotonic() - timeout
        with self._lock:
            size = _FIRST_COPY
            while True:
                front = self._copy_front(size)
                for _, cell in front:
                    if cell.last >= cutoff:
                        return cell.last + timeout
                if len(front) < size:
                    return None
                size *= 2

    def hosts(self) -> list[str]:
        """Every monitored host id, oldest ping first (a copy; O(hosts))."""
        with self._lock:
            return list(self._cells)

    def __len__(self) -> int:
        return len(self._cells)

    def __contains__(self, host_id: object) -> bool:
        return host_id in self._cells

    def __repr__(self) -> str:
        return f"PingMap(hosts={len(self._cells)})"

    def _front(self, selected: Callable[[float], bool]) -> list[tuple[str, _Cell]]:
        with self._lock:
            size = _FIRST_COPY
            while True:
                front = self._copy_front(size)
                taken = list(itertools.takewhile(lambda item: selected(item[1].last), front))
                if len(taken) < len(front) or len(front) < size:
                    return taken
                size *= 2

    def _copy_front(self, size: int) -> list[tuple[str, _Cell]]:
        # One C-level copy: a concurrent ping_by cannot interleave with it under
        # the GIL. On a free-threaded build the copy can see the map change and
        # raise; then it is simply taken again.
        while True:
            try:
                return list(itertools.islice(self._cells.items(), size))
            except RuntimeError:  # pragma: no cover - free-threaded builds only
                continue
