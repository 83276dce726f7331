"""The in-memory ping map: host id -> time of its last ping.

CloudStack keeps ``_pingMap`` in a hash map and finds the hosts behind on
ping by scanning all of it. Here the map is kept in ping order (an
``OrderedDict`` whose entry moves to the end on every ping), so the hosts
behind are always at the front: :meth:`PingMap.behind` reads only them and
stops at the first host that is not behind. Its cost grows with the number
of hosts behind, not the number monitored.

Thread-safety: ``connect``, ``disconnect``, ``behind``, ``overdue`` and
``next_due`` take a lock (and ``ping_by`` with phi accrual on).
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
``connect`` has just stamped the host. Two pings of the same host racing
each other (one agent pings once per interval) may leave its phi window one
sample short.

Per-host deadlines (:class:`~cloudha.detection.deadlines.HostDeadlines`):
each cell also holds the host's own deadline, set when it connects and at
each ping (its fixed timeout with jitter and grace multiplier, the start
grace, or the earlier time at which its phi crosses the threshold).
:meth:`PingMap.overdue` and :meth:`PingMap.next_due` use them. Every
deadline is at least ``deadlines.floor`` after the host's last ping, so the
hosts overdue are still at the front of the ping order: ``overdue`` reads
the hosts whose last ping is older than the floor and keeps those whose own
deadline passed, and ``next_due`` stops as soon as no later host can be due
earlier. With a fixed timeout and no jitter this costs what ``behind`` costs.
With phi accrual the deadlines no longer follow the ping order (each host's
phi crosses at its own time), so the map also files each host by its
deadline in buckets of ``floor / 64`` seconds, and ``next_due`` reads the
first bucket ahead that holds a host; a ping of such a map takes the lock to
move its host between buckets.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable

from cloudha.clock import Clock
from cloudha.detection.deadlines import HostDeadlines
from cloudha.detection.phi import ArrivalWindow
from cloudha.model import HostType

__all__ = ["UNMONITORED_HOST_TYPES", "PingMap"]

UNMONITORED_HOST_TYPES = frozenset({HostType.TRAFFIC_MONITOR, HostType.SECONDARY_STORAGE})
"""Host types that never enter the ping map (spec §2.2 ``processConnect``)."""

_FIRST_COPY = 64
_NEVER = float("inf")


class _Cell:
    """One host's last ping and deadline, updated in place (a detached cell absorbs a late ping).

    ``timeout`` is the host's fixed timeout, ``window`` its phi arrival
    window (None without phi), ``held`` whether it is still in its start
    grace (no ping since it entered the map UNKNOWN).
    """

    __slots__ = ("due", "held", "last", "timeout", "window")

    def __init__(self, last: float) -> None:
        self.last = last
        self.due = _NEVER
        self.timeout = _NEVER
        self.window: ArrivalWindow | None = None
        self.held = False


class _DueIndex:
    """Host ids filed by deadline, in buckets of ``width`` seconds (callers hold the map's lock)."""

    __slots__ = ("_buckets", "_top", "_width")

    def __init__(self, width: float) -> None:
        self._buckets: dict[int, set[str]] = {}
        self._width = width
        self._top: int | None = None

    def _key(self, due: float) -> int:
        return math.floor(due / self._width)

    def add(self, host_id: str, due: float) -> None:
        key = self._key(due)
        self._buckets.setdefault(key, set()).add(host_id)
        if self._top is None or key > self._top:
            self._top = key

    def remove(self, host_id: str, due: float) -> None:
        key = self._key(due)
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(host_id)
            if not bucket:
                del self._buckets[key]
                if not self._buckets:
                    self._top = None

    def earliest(self, now: float, cells: OrderedDict[str, _Cell]) -> float | None:
        """The earliest deadline ``>= now`` of a filed host; None if there is none."""
        key, top = self._key(now), self._top
        buckets = self._buckets
        while top is not None and key <= top:
            bucket = buckets.get(key)
            if bucket:
                ahead = [due for host in bucket if (due := cells[host].due) >= now]
                if ahead:
                    return min(ahead)
            key += 1
        return None


_BUCKETS_PER_FLOOR = 64


class PingMap:
    """Last ping per connected host, ordered by ping time.

    Args:
        clock: the time source; only ``clock.monotonic()`` is used.
        deadlines: each host's deadline policy, for :meth:`overdue` and
            :meth:`next_due`; None until :meth:`use_deadlines` (the agent
            manager installs its own). Without one no host is ever overdue.
    """

    __slots__ = (
        "_cells",
        "_clock",
        "_deadlines",
        "_get",
        "_index",
        "_lock",
        "_monotonic",
        "_move_to_end",
    )

    def __init__(self, clock: Clock, *, deadlines: HostDeadlines | None = None) -> None:
        self._clock = clock
        self._monotonic: Callable[[], float] = clock.monotonic
        self._cells: OrderedDict[str, _Cell] = OrderedDict()
        self._get = self._cells.get
        self._move_to_end = self._cells.move_to_end
        self._lock = threading.Lock()
        self._deadlines = deadlines
        self._index = self._new_index(deadlines)

    @staticmethod
    def _new_index(deadlines: HostDeadlines | None) -> _DueIndex | None:
        if deadlines is None or deadlines.phi is None:
            return None
        return _DueIndex(deadlines.floor / _BUCKETS_PER_FLOOR)

    @property
    def deadlines(self) -> HostDeadlines | None:
        """The deadline policy (None: none installed yet)."""
        return self._deadlines

    def use_deadlines(self, deadlines: HostDeadlines) -> None:
        """Install ``deadlines``; hosts already monitored get theirs from their last ping."""
        with self._lock:
            self._deadlines = deadlines
            self._index = index = self._new_index(deadlines)
            for host_id, cell in self._cells.items():
                self._start(host_id, cell, 1.0)
                if index is not None:
                    index.add(host_id, cell.due)

    def _start(self, host_id: str, cell: _Cell, grace: float) -> None:
        deadlines = self._deadlines
        if deadlines is None:
            return
        cell.timeout = deadlines.timeout_for(host_id)
        cell.window = None if deadlines.phi is None else deadlines.phi.new_window()
        cell.held = grace != 1.0
        cell.due = cell.last + grace * cell.timeout

    def connect(
        self, host_id: str, host_type: HostType = HostType.ROUTING, *, grace: float = 1.0
    ) -> bool:
        """Start monitoring ``host_id`` as if it had just pinged.

        Traffic monitors and secondary storage are not monitored (spec §2.2);
        for them nothing is inserted and False is returned. Connecting a host
        that is already monitored refreshes it (a fresh phi window too).
        ``grace``: the host's first deadline is ``grace`` x its timeout away
        (:data:`~cloudha.detection.deadlines.START_GRACE_FACTOR` for a host
        UNKNOWN at a start); its first ping ends the grace.
        """
        if not grace >= 1.0:
            raise ValueError(f"a grace is at least 1 timeout, not {grace!r}")
        if host_type in UNMONITORED_HOST_TYPES:
            return False
        with self._lock:
            old = self._cells.pop(host_id, None)
            cell = _Cell(self._monotonic())
            self._start(host_id, cell, grace)
            self._cells[host_id] = cell
            index = self._index
            if index is not None:
                if old is not None:
                    index.remove(host_id, old.due)
                index.add(host_id, cell.due)
        return True

    def ping_by(self, host_id: str) -> bool:
        """Record a ping from ``host_id``; False (nothing inserted) if it is not monitored."""
        cell = self._get(host_id)
        if cell is None:
            return False
        now = self._monotonic()
        window = cell.window
        if window is None:
            cell.due = now + cell.timeout
        else:
            deadlines = self._deadlines
            assert deadlines is not None
            assert deadlines.phi is not None
            with self._lock:
                window.add(now - cell.last)
                early = max(deadlines.floor, deadlines.phi.crossing(window))
                old, cell.due = cell.due, now + min(cell.timeout, early)
                index = self._index
                if index is not None and self._get(host_id) is cell:
                    index.remove(host_id, old)
                    index.add(host_id, cell.due)
        cell.held = False
        cell.last = now
        try:
            self._move_to_end(host_id)
        except KeyError:  # disconnected meanwhile: the detached cell took the ping
            return False
        return True

    def disconnect(self, host_id: str) -> bool:
        """Stop monitoring ``host_id``; False if it was not monitored."""
        with self._lock:
            cell = self._cells.pop(host_id, None)
            if cell is not None and self._index is not None:
                self._index.remove(host_id, cell.due)
            return cell is not None

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

    def overdue(self) -> list[str]:
        """Hosts whose own deadline (see :class:`HostDeadlines`) has passed, oldest ping first."""
        deadlines = self._deadlines
        if deadlines is None:
            return []
        now = self._monotonic()
        cutoff = now - deadlines.floor
        return [host for host, cell in self._front(lambda last: last < cutoff) if cell.due < now]

    def next_due(self) -> float | None:
        """The earliest deadline of a host not yet overdue; None if there is none.

        Exact: every host's deadline is at least ``deadlines.floor`` after its
        last ping, so the scan stops at the first host pinged too late to be
        due earlier than the best deadline found so far.
        """
        deadlines = self._deadlines
        if deadlines is None:
            return None
        now = self._monotonic()
        floor = deadlines.floor
        with self._lock:
            if self._index is not None:
                return self._index.earliest(now, self._cells)
            size = _FIRST_COPY
            while True:
                front = self._copy_front(size)
                best = _NEVER
                for _, cell in front:
                    if cell.last + floor >= best:
                        return best
                    if now <= cell.due < best:
                        best = cell.due
                if len(front) < size:
                    return None if best == _NEVER else best
                size *= 2

    def deadline(self, host_id: str) -> float | None:
        """``clock.monotonic()`` when the host is overdue; None if not monitored (or no policy)."""
        cell = self._get(host_id)
        if cell is None or cell.due == _NEVER:
            return None
        return cell.due

    def timeout(self, host_id: str) -> float | None:
        """The host's fixed timeout (jitter and multiplier included); None if unknown."""
        cell = self._get(host_id)
        if cell is None or cell.timeout == _NEVER:
            return None
        return cell.timeout

    def held(self, host_id: str) -> bool:
        """Whether the host is still in its start grace (it has not pinged since)."""
        cell = self._get(host_id)
        return cell is not None and cell.held

    def phi(self, host_id: str) -> float | None:
        """The host's phi now; None without the phi detector or for a host not monitored."""
        cell = self._get(host_id)
        deadlines = self._deadlines
        if cell is None or cell.window is None or deadlines is None or deadlines.phi is None:
            return None
        return deadlines.phi.phi(cell.window, self._monotonic() - cell.last)

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
