"""A fake :class:`~cloudha.ports.ServerRegistry` and the registry's contract checker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import attrs

from cloudha.clock import Clock
from cloudha.ports import ServerRecord, ServerRegistry, ServerState
from cloudha.server import validate_port

__all__ = ["FakeServerRegistry", "check_server_registry"]


class FakeServerRegistry:
    """An in-memory :class:`~cloudha.ports.ServerRegistry` (thread-safe), for unit tests.

    ``unavailable``: when set, every method raises it (a database outage).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.unavailable: Exception | None = None
        self._rows: dict[str, ServerRecord] = {}
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.unavailable is not None:
            raise self.unavailable

    def register(self, server_id: str, address: str) -> int:
        if not server_id:
            raise ValueError("server_id must be a non-empty string")
        with self._lock:
            self._check()
            wall = self.clock.now().timestamp()
            old = self._rows.get(server_id)
            epoch = 1 if old is None else old.epoch + 1
            self._rows[server_id] = ServerRecord(
                id=server_id,
                address=address,
                state=ServerState.UP,
                epoch=epoch,
                beat=0 if old is None else old.beat,
                heartbeat_at=wall,
                registered_at=wall,
            )
            return epoch

    def _update(self, server_id: str, epoch: int, beat: int | None, **values: object) -> bool:
        with self._lock:
            self._check()
            row = self._rows.get(server_id)
            if (
                row is None
                or row.state is not ServerState.UP
                or row.epoch != epoch
                or (beat is not None and row.beat != beat)
            ):
                return False
            self._rows[server_id] = attrs.evolve(row, **values)  # type: ignore[arg-type]
            return True

    def heartbeat(self, server_id: str, epoch: int) -> bool:
        with self._lock:
            self._check()
            row = self._rows.get(server_id)
            if row is None or row.state is not ServerState.UP or row.epoch != epoch:
                return False
            self._rows[server_id] = attrs.evolve(
                row, beat=row.beat + 1, heartbeat_at=self.clock.now().timestamp()
            )
        return True

    def servers(self) -> Sequence[ServerRecord]:
        with self._lock:
            self._check()
            return [self._rows[k] for k in sorted(self._rows)]

    def declare_departed(self, server_id: str, epoch: int, beat: int, by: str) -> bool:
        return self._update(server_id, epoch, beat, state=ServerState.DEPARTED, departed_by=by)

    def leave(self, server_id: str, epoch: int) -> bool:
        return self._update(server_id, epoch, None, state=ServerState.DOWN)

    def __repr__(self) -> str:
        return f"FakeServerRegistry({len(self._rows)} servers)"


def check_server_registry(make: Callable[[], ServerRegistry]) -> None:
    """Check a :class:`~cloudha.ports.ServerRegistry` made empty by ``make()``.

    Rules: epochs start at 1 and grow by one per registration; a heartbeat
    counts only at the current epoch while Up; ``declare_departed`` needs the
    current epoch and beat and, raced by several threads, succeeds for exactly
    one; a departed server's heartbeat is refused until it registers again;
    ``leave`` marks it Down; ``servers`` lists every row by id.

    Raises:
        AssertionError: listing every broken rule.
    """
    registry = make()
    validate_port("registry", registry, ServerRegistry)
    problems: list[str] = []

    def row(server_id: str) -> ServerRecord | None:
        return next((r for r in registry.servers() if r.id == server_id), None)

    first = registry.register("contract-ms1", "127.0.0.1:1")
    if first != 1:
        problems.append(f"the first register() returned epoch {first}, not 1")
    again = registry.register("contract-ms1", "127.0.0.1:1")
    if again != first + 1:
        problems.append(f"a second register() returned epoch {again}, not {first + 1}")
    registry.register("contract-ms2", "127.0.0.1:2")
    if [r.id for r in registry.servers()] != ["contract-ms1", "contract-ms2"]:
        problems.append("servers() does not list every server by id")
    if registry.heartbeat("contract-ms1", first):
        problems.append("a heartbeat at an old epoch was counted")
    before = row("contract-ms1")
    if not registry.heartbeat("contract-ms1", again):
        problems.append("a heartbeat at the current epoch was refused")
    after = row("contract-ms1")
    if before is None or after is None or after.beat != before.beat + 1:
        problems.append("a heartbeat did not count one beat")
    if after is not None:
        if registry.declare_departed("contract-ms1", after.epoch, after.beat + 1, "x"):
            problems.append("declare_departed succeeded with a beat that is not the current one")
        wins: list[bool] = []
        lock = threading.Lock()

        def race(by: str) -> None:
            won = registry.declare_departed("contract-ms1", after.epoch, after.beat, by)
            with lock:
                wins.append(won)

        racers = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        if wins.count(True) != 1:
            problems.append(f"four racing declare_departed: {wins.count(True)} won, not 1")
        departed = row("contract-ms1")
        if departed is None or departed.state is not ServerState.DEPARTED:
            problems.append("the server is not Departed after declare_departed")
        elif departed.departed_by is None:
            problems.append("departed_by is not set")
        if registry.heartbeat("contract-ms1", after.epoch):
            problems.append("a departed server's heartbeat was counted")
        back = registry.register("contract-ms1", "127.0.0.1:1")
        if back != after.epoch + 1 or not registry.heartbeat("contract-ms1", back):
            problems.append("a departed server could not register again with a new epoch")
    ms2 = row("contract-ms2")
    if ms2 is not None:
        if not registry.leave("contract-ms2", ms2.epoch):
            problems.append("leave() at the current epoch returned False")
        left = row("contract-ms2")
        if left is None or left.state is not ServerState.DOWN:
            problems.append("leave() did not mark the server Down")
        if registry.heartbeat("contract-ms2", ms2.epoch):
            problems.append("a heartbeat after leave() was counted")
    if problems:
        raise AssertionError(f"server registry {registry!r}:\n- " + "\n- ".join(problems))
