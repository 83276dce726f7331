"""An in-memory HA work store, and the contract every :class:`~cloudha.ports.WorkStore` passes.

:class:`InMemoryWorkStore` keeps the rows as the SQL adapter stores them
(column name -> stored value, enums as their strings) and parses them on
every read with the same :func:`~cloudha.ha.work.work_from_row`, so claims,
fencing tokens, held writes, timestamps from the injected clock and the
handling of hand-edited rows (:meth:`InMemoryWorkStore.corrupt`) behave as
on SQLite and PostgreSQL.

:func:`check_work_store` runs the contract (:data:`WORK_STORE_CHECKS`, one
function per property, and :data:`WORK_QUEUE_ADMIN_CHECKS` for the operator's
view, :class:`~cloudha.ports.WorkQueueAdmin`) against any adapter; the
project runs it on this store, SQLite and a real PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final

import attrs

from cloudha.clock import Clock
from cloudha.ha.work import (
    COLUMNS,
    TERMINAL_STEPS,
    TERMINAL_VALUES,
    QueueState,
    StaleWorkError,
    Step,
    UnknownWorkError,
    UnreadableWorkError,
    Work,
    WorkListing,
    WorkRefusedError,
    WorkTally,
    WorkType,
    cancel_refusal,
    retry_refusal,
    work_from_row,
)
from cloudha.model import ReasonType, VmState, VmType
from cloudha.ports import WorkQueueAdmin, WorkStore
from cloudha.testing.clock import FakeClock

__all__ = [
    "WORK_QUEUE_ADMIN_CHECKS",
    "WORK_STORE_CHECKS",
    "InMemoryWorkStore",
    "StoreFactory",
    "check_work_store",
]


class InMemoryWorkStore:
    """The HA work queue in a dict: the :class:`~cloudha.ports.WorkStore` contract, no database.

    Thread-safe (one lock). ``created``/``taken`` are ``clock.now()``,
    ``time_to_try`` is ``clock.now().timestamp()``. Ids start at 1 and are
    never reused.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[int, dict[str, Any]] = {}
        self._generations: dict[str, int] = {}
        self._ids = itertools.count(1)

    # -- helpers -----------------------------------------------------------------

    def _now(self) -> tuple[dt.datetime, float]:
        now = self._clock.now()
        return now, now.timestamp()

    @staticmethod
    def _terminal(row: dict[str, Any]) -> bool:
        return row["step"] in TERMINAL_VALUES

    def _list(self, keep: Callable[[dict[str, Any]], bool]) -> list[Work]:
        with self._lock:
            rows = [dict(r) for _i, r in sorted(self._rows.items()) if keep(r)]
        works = []
        for row in rows:
            try:
                works.append(work_from_row(row))
            except UnreadableWorkError:
                if row["step"] == Step.ERROR.value:
                    continue  # already taken out of the queue by mark_error
                raise
        return works

    def _claimable(self, row: dict[str, Any], now_s: float) -> bool:
        return (
            row["mgmt_server_id"] is None
            and row["taken"] is None
            and row["time_to_try"] <= now_s
            and not self._terminal(row)
        )

    def _bump(self, instance_id: str) -> int:
        generation = self._generations.get(instance_id, 0) + 1
        self._generations[instance_id] = generation
        return generation

    @staticmethod
    def _holds(row: dict[str, Any] | None, work: Work) -> bool:
        return (
            row is not None
            and row["generation"] == work.generation
            and row["mgmt_server_id"] == work.mgmt_server_id
        )

    def _update_held(self, work: Work, **values: Any) -> Work:
        with self._lock:
            row = self._rows.get(work.id)
            if row is None or not self._holds(row, work):
                raise StaleWorkError(work.id)
            if "tried" in values:
                values["tried"] = row["tried"] + 1
            row.update(values)
            snapshot = dict(row)
        return work_from_row(snapshot)

    @staticmethod
    def _snapshot(previous_state: VmState | None, updated: int | None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if previous_state is not None:
            values["state"] = previous_state.value
        if updated is not None:
            values["updated"] = int(updated)
        return values

    # -- adding and reading --------------------------------------------------------

    def add(
        self,
        instance_id: str,
        type: WorkType,
        previous_state: VmState,
        *,
        vm_type: VmType = VmType.USER,
        step: Step = Step.SCHEDULED,
        host_id: str | None = None,
        reason: ReasonType = ReasonType.UNKNOWN,
        tried: int = 0,
        updated: int = 0,
        priority: int = 0,
        time_to_try: float | None = None,
    ) -> Work:
        now, now_s = self._now()
        with self._lock:
            work_id = next(self._ids)
            row: dict[str, Any] = {
                "id": work_id,
                "instance_id": instance_id,
                "mgmt_server_id": None,
                "created": now,
                "state": previous_state.value,
                "host_id": host_id,
                "taken": None,
                "time_to_try": now_s if time_to_try is None else float(time_to_try),
                "type": type.value,
                "updated": int(updated),
                "step": step.value,
                "vm_type": vm_type.value,
                "tried": int(tried),
                "reason": reason.value,
                "generation": 0,
                "priority": int(priority),
            }
            self._rows[work_id] = row
            snapshot = dict(row)
        return work_from_row(snapshot)

    def get(self, work_id: int) -> Work | None:
        with self._lock:
            row = self._rows.get(work_id)
            snapshot = None if row is None else dict(row)
        return None if snapshot is None else work_from_row(snapshot)

    def pending_for_vm(self, instance_id: str) -> list[Work]:
        return self._list(lambda r: r["instance_id"] == instance_id and not self._terminal(r))

    def pending_ha_for_host(self, host_id: str) -> list[Work]:
        return self._list(
            lambda r: (
                r["host_id"] == host_id and r["type"] == WorkType.HA.value and not self._terminal(r)
            )
        )

    def works_for_vm(self, instance_id: str) -> list[Work]:
        return self._list(lambda r: r["instance_id"] == instance_id)

    def works_for_vms(self, instance_ids: Iterable[str]) -> list[Work]:
        ids = set(instance_ids)
        return self._list(lambda r: r["instance_id"] in ids) if ids else []

    def has_been_scheduled(self, instance_id: str, type: WorkType) -> bool:
        with self._lock:
            return any(
                r["instance_id"] == instance_id and r["type"] == type.value and r["taken"] is None
                for r in self._rows.values()
            )

    # -- claiming and fencing tokens ---------------------------------------------------

    def tally(self) -> list[WorkTally]:
        with self._lock:
            groups: dict[tuple[str, str], tuple[int, dt.datetime]] = {}
            for row in self._rows.values():
                key = (str(row["type"]), str(row["step"]))
                count, oldest = groups.get(key, (0, row["created"]))
                groups[key] = (count + 1, min(oldest, row["created"]))
        return [WorkTally(t, s, n, oldest) for (t, s), (n, oldest) in sorted(groups.items())]

    def claim(self, server_id: str) -> Work | None:
        now, now_s = self._now()
        with self._lock:
            candidates = [r for r in self._rows.values() if self._claimable(r, now_s)]
            if not candidates:
                return None
            row = min(candidates, key=lambda r: (-r["priority"], r["id"]))
            row.update(
                mgmt_server_id=server_id, taken=now, generation=self._bump(row["instance_id"])
            )
            snapshot = dict(row)
        return work_from_row(snapshot)  # the claim stands even when the row is unreadable

    def next_generation(self, instance_id: str) -> int:
        with self._lock:
            return self._bump(instance_id)

    def current_generation(self, instance_id: str) -> int:
        with self._lock:
            return self._generations.get(instance_id, 0)

    # -- changing one claimed work -----------------------------------------------------

    def confirm(self, work: Work) -> None:
        with self._lock:
            row = self._rows.get(work.id)
            if row is None or not self._holds(row, work) or self._terminal(row):
                raise StaleWorkError(work.id)

    def reschedule(
        self,
        work: Work,
        time_to_try: float,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        return self._update_held(
            work,
            tried=None,
            time_to_try=float(time_to_try),
            mgmt_server_id=None,
            taken=None,
            **self._snapshot(previous_state, updated),
        )

    def finish(
        self,
        work: Work,
        step: Step = Step.DONE,
        *,
        attempt: bool = False,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        if step not in TERMINAL_STEPS:
            raise ValueError(f"finish() needs a terminal step, not {step}")
        extra = self._snapshot(previous_state, updated)
        if attempt:
            extra["tried"] = None
        return self._update_held(work, step=step.value, **extra)

    def update_step(
        self,
        work: Work,
        step: Step,
        *,
        previous_state: VmState | None = None,
        updated: int | None = None,
    ) -> Work:
        return self._update_held(work, step=step.value, **self._snapshot(previous_state, updated))

    def mark_error(self, work_id: int) -> bool:
        with self._lock:
            row = self._rows.get(work_id)
            if row is None:
                return False
            row["step"] = Step.ERROR.value
            return True

    # -- bulk changes ----------------------------------------------------------------

    def _bulk(self, match: Callable[[dict[str, Any]], bool], **values: Any) -> int:
        with self._lock:
            rows = [r for r in self._rows.values() if match(r)]
            for row in rows:
                row.update(values)
            return len(rows)

    def release_server(self, server_id: str) -> int:
        return self._bulk(
            lambda r: r["mgmt_server_id"] == server_id and not self._terminal(r),
            mgmt_server_id=None,
            taken=None,
        )

    def cancel_untaken(self, host_id: str, types: Iterable[WorkType], server_id: str) -> int:
        now, _now_s = self._now()
        values = {t.value for t in types}
        return self._bulk(
            lambda r: (
                r["host_id"] == host_id
                and r["type"] in values
                and r["taken"] is None
                and not self._terminal(r)
            ),
            step=Step.CANCELLED.value,
            taken=now,
            mgmt_server_id=server_id,
        )

    def delete_untaken(self, instance_id: str, type: WorkType) -> int:
        with self._lock:
            doomed = [
                i
                for i, r in self._rows.items()
                if r["instance_id"] == instance_id
                and r["type"] == type.value
                and r["taken"] is None
            ]
            for work_id in doomed:
                del self._rows[work_id]
            return len(doomed)

    def mark_pending_as_investigating(self) -> int:
        _now, now_s = self._now()
        return self._bulk(
            lambda r: self._claimable(r, now_s) and r["step"] != Step.STOPPING.value,
            step=Step.INVESTIGATING.value,
        )

    def mark_server_pending_as_investigating(self, server_id: str) -> int:
        return self._bulk(
            lambda r: (
                r["mgmt_server_id"] == server_id
                and not self._terminal(r)
                and r["step"] != Step.STOPPING.value
            ),
            step=Step.INVESTIGATING.value,
        )

    def cleanup(self, older_than_seconds: float) -> int:
        now, _now_s = self._now()
        cutoff = now - dt.timedelta(seconds=older_than_seconds)
        finished = (Step.DONE.value, Step.CANCELLED.value)
        with self._lock:
            doomed = [
                i
                for i, r in self._rows.items()
                if r["step"] in finished
                and (r["taken"] if r["taken"] is not None else r["created"]) < cutoff
            ]
            for work_id in doomed:
                del self._rows[work_id]
            return len(doomed)

    def delete(self, work_ids: Iterable[int]) -> int:
        with self._lock:
            found = [i for i in set(work_ids) if i in self._rows]
            for work_id in found:
                del self._rows[work_id]
            return len(found)

    # -- the operator's view (cloudha.ports.WorkQueueAdmin) ------------------------------

    def list_works(
        self,
        *,
        states: Collection[QueueState] | None = None,
        host_id: str | None = None,
        instance_id: str | None = None,
        type: WorkType | None = None,
    ) -> WorkListing:
        chosen = None if states is None else set(states)
        terminal = {v for state in chosen or () for v in state.step_values or ()}

        def keep(r: dict[str, Any]) -> bool:
            wanted = (
                chosen is None
                or r["step"] in terminal
                or (QueueState.PENDING in chosen and not self._terminal(r))
            )
            if not wanted:
                return False
            return (
                (host_id is None or r["host_id"] == host_id)
                and (instance_id is None or r["instance_id"] == instance_id)
                and (type is None or r["type"] == type.value)
            )

        with self._lock:
            rows = [dict(r) for _i, r in sorted(self._rows.items()) if keep(r)]
        works: list[Work] = []
        unreadable: list[UnreadableWorkError] = []
        for row in rows:
            try:
                works.append(work_from_row(row))
            except UnreadableWorkError as exc:
                unreadable.append(exc)
        return WorkListing(tuple(works), tuple(unreadable))

    def _locked_row(self, work_id: int) -> tuple[dict[str, Any], Work]:
        """The row and its work, read under the lock (the caller holds it)."""
        row = self._rows.get(work_id)
        if row is None:
            raise UnknownWorkError(work_id)
        try:
            return row, work_from_row(dict(row))
        except UnreadableWorkError as exc:
            raise WorkRefusedError(
                work_id, f"the row is unreadable ({exc}); correct or delete it by hand"
            ) from exc

    def retry_work(self, work_id: int) -> Work:
        _now, now_s = self._now()
        with self._lock:
            row, work = self._locked_row(work_id)
            pending = [
                i
                for i, r in self._rows.items()
                if i != work_id
                and r["instance_id"] == work.instance_id
                and r["type"] == work.type.value
                and not self._terminal(r)
            ]
            refusal = retry_refusal(work, pending)
            if refusal is not None:
                raise WorkRefusedError(work_id, refusal)
            row.update(
                step=Step.INVESTIGATING.value,
                mgmt_server_id=None,
                taken=None,
                time_to_try=now_s,
                tried=0,
            )
            snapshot = dict(row)
        return work_from_row(snapshot)

    def cancel_work(self, work_id: int, canceller: str) -> Work:
        now, _now_s = self._now()
        with self._lock:
            row, work = self._locked_row(work_id)
            refusal = cancel_refusal(work)
            if refusal is not None:
                raise WorkRefusedError(work_id, refusal)
            row.update(step=Step.CANCELLED.value, taken=now, mgmt_server_id=canceller)
            snapshot = dict(row)
        return work_from_row(snapshot)

    # -- test support -----------------------------------------------------------------

    def corrupt(self, work_id: int, column: str, value: object) -> None:
        """Write ``value`` into a row's column as an operator's hand edit would (tests)."""
        if column not in COLUMNS:
            raise ValueError(f"op_ha_work has no column {column!r}")
        with self._lock:
            self._rows[work_id][column] = value

    def __repr__(self) -> str:
        return f"InMemoryWorkStore({len(self._rows)} works)"


# -- the contract ------------------------------------------------------------------------

StoreFactory = Callable[[FakeClock], WorkStore]
"""Makes an *empty* store on the given clock (a fresh database for SQL adapters)."""

Corrupt = Callable[[WorkStore, int, str, object], None]
"""Writes a raw value into a row's column behind the store's back (a hand edit)."""

T0: Final = 1_700_000_000.0


@attrs.frozen
class _Ctx:
    store: WorkStore
    clock: FakeClock
    corrupt: Corrupt | None


def _add(store: WorkStore, vm: str = "vm1", **kw: Any) -> Work:
    kw.setdefault("type", WorkType.HA)
    kw.setdefault("previous_state", VmState.RUNNING)
    return store.add(vm, **kw)


def _claim(store: WorkStore, server: str = "ms1") -> Work:
    work = store.claim(server)
    assert work is not None, "a claimable work was not claimed"
    return work


def _raises(exc: type[BaseException], call: Callable[[], object], what: str) -> BaseException:
    try:
        call()
    except exc as caught:
        return caught
    raise AssertionError(f"{what}: {exc.__name__} was not raised")


def check_add_and_get(c: _Ctx) -> None:
    """add() returns the stored row; created/time_to_try from the clock; get() of none is None."""
    work = c.store.add(
        "vm-7",
        WorkType.MIGRATION,
        VmState.MIGRATING,
        vm_type=VmType.DOMAIN_ROUTER,
        step=Step.INVESTIGATING,
        host_id="h1",
        reason=ReasonType.HOST_DOWN,
        tried=2,
        updated=9,
        priority=3,
    )
    assert c.store.get(work.id) == work
    assert work.created.timestamp() == T0
    assert work.created.utcoffset() == dt.timedelta(0)
    assert work.time_to_try == T0
    assert (work.mgmt_server_id, work.taken, work.generation) == (None, None, 0)
    assert (work.type, work.step, work.previous_state) == (
        WorkType.MIGRATION,
        Step.INVESTIGATING,
        VmState.MIGRATING,
    )
    assert (work.vm_type, work.host_id, work.reason) == (
        VmType.DOMAIN_ROUTER,
        "h1",
        ReasonType.HOST_DOWN,
    )
    assert (work.tried, work.updated, work.priority) == (2, 9, 3)
    later = _add(c.store, "vm-8", time_to_try=T0 + 5)
    assert later.id > work.id
    assert later.time_to_try == T0 + 5
    assert c.store.get(later.id + 1000) is None


def check_claim_order_and_owner(c: _Ctx) -> None:
    """Highest priority first, then lowest id; the claim records server and time."""
    first = _add(c.store, "a")
    second = _add(c.store, "b")
    urgent = _add(c.store, "c", priority=5)
    c.clock.advance(7)
    claimed = [_claim(c.store, "ms1"), _claim(c.store, "ms2"), _claim(c.store, "ms1")]
    assert [w.id for w in claimed] == [urgent.id, first.id, second.id]
    assert claimed[1].mgmt_server_id == "ms2"
    assert claimed[1].taken is not None
    assert claimed[1].taken.timestamp() == T0 + 7
    assert c.store.claim("ms1") is None


def check_claim_skips_unclaimable(c: _Ctx) -> None:
    """Future, terminal and claimed works are not claimable; a due one becomes so in time."""
    _add(c.store, "future", time_to_try=T0 + 60)
    for step in TERMINAL_STEPS:
        _add(c.store, f"vm-{step}", step=step)
    _add(c.store, "held")
    held = _claim(c.store, "other")
    assert held.instance_id == "held"
    assert c.store.claim("ms1") is None
    c.clock.advance(60)
    assert _claim(c.store).instance_id == "future"
    assert c.store.claim("ms1") is None


def check_claim_is_exclusive(c: _Ctx) -> None:
    """Eight threads claiming at once take every work exactly once."""
    works = {_add(c.store, f"vm-{i % 7}").id for i in range(40)}
    got: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(server: str) -> None:
        try:
            while (work := c.store.claim(server)) is not None:
                with lock:
                    got.append(work.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"ms{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(got) == sorted(works), "a work was claimed twice or not at all"


def check_held_writes(c: _Ctx) -> None:
    """update_step, reschedule and finish on the held claim; finish wants a terminal step."""
    _add(c.store)
    work = _claim(c.store)
    progressed = c.store.update_step(work, Step.FENCING, previous_state=VmState.STOPPED, updated=4)
    assert (progressed.step, progressed.previous_state, progressed.updated) == (
        Step.FENCING,
        VmState.STOPPED,
        4,
    )
    again = c.store.reschedule(progressed, T0 + 30)
    assert (again.tried, again.time_to_try, again.mgmt_server_id, again.taken) == (
        1,
        T0 + 30,
        None,
        None,
    )
    assert again.step is Step.FENCING
    assert c.store.claim("ms1") is None
    c.clock.advance(30)
    work = _claim(c.store)
    assert work.tried == 1
    _raises(ValueError, lambda: c.store.finish(work, Step.FENCING), "finish(Fencing)")
    finished = c.store.finish(work, Step.ERROR, attempt=True, updated=11)
    assert (finished.step, finished.mgmt_server_id, finished.tried, finished.updated) == (
        Step.ERROR,
        "ms1",
        2,
        11,
    )
    assert c.store.get(work.id) == finished


def check_confirm_after_a_lost_claim(c: _Ctx) -> None:
    """A released and re-claimed work is stale for its old holder: no write, no confirm."""
    _add(c.store)
    old = _claim(c.store, "ms1")
    c.store.confirm(old)
    assert c.store.release_server("ms1") == 1
    _raises(StaleWorkError, lambda: c.store.confirm(old), "confirm of a released claim")
    new = _claim(c.store, "ms2")
    assert new.generation > old.generation
    stale = _raises(StaleWorkError, lambda: c.store.finish(old), "finish of a lost claim")
    assert isinstance(stale, StaleWorkError)
    assert stale.work_id == old.id
    _raises(StaleWorkError, lambda: c.store.reschedule(old, T0), "reschedule of a lost claim")
    _raises(StaleWorkError, lambda: c.store.update_step(old, Step.FENCING), "update_step (lost)")
    assert c.store.get(new.id) == new  # the old holder changed nothing
    c.store.confirm(new)
    finished = c.store.finish(new)
    assert finished.step is Step.DONE
    _raises(StaleWorkError, lambda: c.store.confirm(finished), "confirm of a finished work")
    c.store.delete([new.id])
    _raises(StaleWorkError, lambda: c.store.confirm(new), "confirm of a deleted work")
    _raises(StaleWorkError, lambda: c.store.finish(new), "finish of a deleted work")


def check_generations_only_grow(c: _Ctx) -> None:
    """Per-VM tokens 1, 2, 3...; every claim takes the next one; other VMs count apart."""
    assert c.store.current_generation("vm1") == 0
    assert [c.store.next_generation("vm1") for _ in range(3)] == [1, 2, 3]
    assert c.store.next_generation("vm2") == 1
    _add(c.store, "vm1")
    _add(c.store, "vm1")
    first = _claim(c.store)
    second = _claim(c.store)
    assert (first.generation, second.generation) == (4, 5)
    assert c.store.current_generation("vm1") == 5
    c.store.release_server("ms1")
    again = _claim(c.store)
    assert again.generation == 6
    c.store.delete([first.id, second.id])
    assert c.store.current_generation("vm1") == 6  # deleting works never resets the token
    assert c.store.current_generation("vm2") == 1


def check_release_server(c: _Ctx) -> None:
    """Only the server's non-terminal works are released, and only the claim fields change."""
    for vm in ("a", "b", "c"):
        _add(c.store, vm)
    a = _claim(c.store, "ms1")
    b = _claim(c.store, "ms1")
    other = _claim(c.store, "ms2")
    c.store.finish(b)
    assert c.store.release_server("ms1") == 1
    assert c.store.get(a.id) == attrs.evolve(a, mgmt_server_id=None, taken=None)
    got_b = c.store.get(b.id)
    assert got_b is not None
    assert got_b.mgmt_server_id == "ms1"
    assert c.store.get(other.id) == other
    assert c.store.release_server("nobody") == 0
    assert _claim(c.store, "ms3").id == a.id  # claimable again at once


def check_reschedule_timing(c: _Ctx) -> None:
    """A rescheduled work is claimable exactly from its time_to_try, not a moment before."""
    _add(c.store)
    work = _claim(c.store)
    c.store.reschedule(work, T0 + 90.5)
    c.clock.advance(90.4)
    assert c.store.claim("ms1") is None
    assert c.store.mark_pending_as_investigating() == 0  # not yet due either
    c.clock.advance(0.1)
    again = _claim(c.store)
    assert again.id == work.id
    assert again.tried == 1


def check_mark_investigating(c: _Ctx) -> None:
    """Due unclaimed works become Investigating; a server's held works on its stop."""
    pending = _add(c.store, "a")
    future = _add(c.store, "b", time_to_try=T0 + 100)
    done = _add(c.store, "c", step=Step.DONE)
    due = _add(c.store, "d")
    assert _claim(c.store).id == pending.id
    assert c.store.mark_pending_as_investigating() == 1
    assert [w.step for w in c.store.pending_for_vm("d")] == [Step.INVESTIGATING]
    assert [w.step for w in c.store.pending_for_vm("a")] == [Step.SCHEDULED]
    assert c.store.mark_server_pending_as_investigating("ms1") == 1
    got = c.store.get(pending.id)
    assert got is not None
    assert (got.step, got.mgmt_server_id) == (Step.INVESTIGATING, "ms1")
    for work, step in ((future, Step.SCHEDULED), (done, Step.DONE), (due, Step.INVESTIGATING)):
        row = c.store.get(work.id)
        assert row is not None
        assert row.step is step


def check_stopping_kept(c: _Ctx) -> None:
    """A work in step Stopping keeps it through both marks: its stop may be unrecorded."""
    works = [_add(c.store, "a"), _add(c.store, "b")]
    for _ in works:
        c.store.update_step(_claim(c.store), Step.STOPPING)
    assert c.store.release_server("ms1") == 2
    _claim(c.store)  # one held by ms1 again, the other due and unclaimed
    assert c.store.mark_pending_as_investigating() == 0
    assert c.store.mark_server_pending_as_investigating("ms1") == 0
    for work in works:
        row = c.store.get(work.id)
        assert row is not None
        assert row.step is Step.STOPPING, (work.instance_id, row.step)


def check_queries(c: _Ctx) -> None:
    """Pending/history queries, oldest first; has_been_scheduled counts untaken works only."""
    ha = _add(c.store, "vm1", host_id="h1")
    stop = _add(c.store, "vm1", type=WorkType.FORCE_STOP, host_id="h1")
    done = _add(c.store, "vm1", step=Step.DONE, host_id="h1")
    other = _add(c.store, "vm2", host_id="h1", step=Step.INVESTIGATING)
    far = _add(c.store, "vm3", host_id="h2")
    assert [w.id for w in c.store.pending_for_vm("vm1")] == [ha.id, stop.id]
    assert [w.id for w in c.store.works_for_vm("vm1")] == [ha.id, stop.id, done.id]
    assert [w.id for w in c.store.works_for_vms(["vm3", "vm1", "vm1"])] == [
        ha.id,
        stop.id,
        done.id,
        far.id,
    ]
    assert c.store.works_for_vms([]) == []
    assert [w.id for w in c.store.pending_ha_for_host("h1")] == [ha.id, other.id]
    assert c.store.pending_ha_for_host("h9") == []
    assert c.store.has_been_scheduled("vm1", WorkType.FORCE_STOP)
    assert not c.store.has_been_scheduled("vm1", WorkType.DESTROY)
    assert not c.store.has_been_scheduled("vm2", WorkType.FORCE_STOP)
    while c.store.claim("ms1") is not None:
        pass
    assert not c.store.has_been_scheduled("vm1", WorkType.FORCE_STOP)
    assert c.store.delete([stop.id, 10_000_000]) == 1
    assert c.store.delete([]) == 0


def check_cancel_and_delete_untaken(c: _Ctx) -> None:
    """cancel_untaken and delete_untaken leave claimed and terminal works alone."""
    mig = _add(c.store, "vm1", type=WorkType.MIGRATION, host_id="h1")
    stop = _add(c.store, "vm2", type=WorkType.STOP, host_id="h1")
    _add(c.store, "vm3", type=WorkType.MIGRATION, host_id="h1")
    held = _claim(c.store)  # the first migration, now held
    elsewhere = _add(c.store, "vm4", type=WorkType.MIGRATION, host_id="h2")
    c.clock.advance(3)
    assert c.store.cancel_untaken("h1", [WorkType.MIGRATION], "ms9") == 1
    rows = {w.instance_id: w for w in c.store.works_for_vms(["vm1", "vm2", "vm3", "vm4"])}
    assert rows["vm1"] == held
    assert rows["vm2"].step is Step.SCHEDULED
    assert (rows["vm3"].step, rows["vm3"].mgmt_server_id) == (Step.CANCELLED, "ms9")
    assert rows["vm3"].taken is not None
    assert rows["vm3"].taken.timestamp() == T0 + 3
    assert rows["vm4"] == elsewhere
    destroy = _add(c.store, "vm2", type=WorkType.DESTROY)
    assert c.store.delete_untaken("vm2", WorkType.DESTROY) == 1
    assert c.store.get(destroy.id) is None
    assert c.store.delete_untaken("vm1", WorkType.MIGRATION) == 0  # held
    assert c.store.get(stop.id) is not None
    assert c.store.get(mig.id) is not None


def check_cleanup(c: _Ctx) -> None:
    """Done/Cancelled works older than the bound (by taken, else created) go; Error stays."""
    never_taken = _add(c.store, "a", step=Step.CANCELLED)
    error = _add(c.store, "e", step=Step.ERROR)
    _add(c.store, "b")
    _add(c.store, "p")
    c.clock.advance(100)
    b = _claim(c.store)
    c.store.finish(b)
    c.clock.advance(50)
    assert c.store.cleanup(120) == 1
    assert c.store.get(never_taken.id) is None
    assert c.store.get(b.id) is not None
    assert c.store.cleanup(40) == 1
    assert c.store.get(b.id) is None
    assert c.store.get(error.id) is not None
    assert len(c.store.pending_for_vm("p")) == 1


def check_tally(c: _Ctx) -> None:
    """tally() counts works per type and step, every step, with each group's oldest created."""
    assert c.store.tally() == []
    first = _add(c.store, "a")
    c.clock.advance(10)
    _add(c.store, "b")
    _add(c.store, "c", type=WorkType.MIGRATION, step=Step.INVESTIGATING)
    done = _add(c.store, "d", step=Step.DONE)
    held = _claim(c.store)
    assert held.id == first.id
    tally = c.store.tally()
    assert [(t.type, t.step, t.count) for t in tally] == [
        ("HA", "Done", 1),
        ("HA", "Scheduled", 2),
        ("Migration", "Investigating", 1),
    ], tally
    by_key = {(t.type, t.step): t for t in tally}
    assert by_key[("HA", "Scheduled")].oldest == first.created
    assert by_key[("HA", "Done")].oldest == done.created
    assert by_key[("HA", "Scheduled")].pending
    assert not by_key[("HA", "Done")].pending
    if c.corrupt is not None:
        c.corrupt(c.store, done.id, "step", "Dancing")
        assert ("HA", "Dancing", 1) in [(t.type, t.step, t.count) for t in c.store.tally()]


def _check_unreadable(c: _Ctx, corrupt: Corrupt, column: str, value: str) -> None:
    vm = f"bad-{column}"
    bad = _add(c.store, vm)
    good = _add(c.store, f"good-{column}")
    corrupt(c.store, bad.id, column, value)
    info = _raises(UnreadableWorkError, lambda: c.store.get(bad.id), "get of a bad row")
    assert isinstance(info, UnreadableWorkError)
    assert (info.work_id, info.column, info.value) == (bad.id, column, value)
    _raises(UnreadableWorkError, lambda: c.store.pending_for_vm(vm), "pending_for_vm (bad row)")
    claimed = _raises(UnreadableWorkError, lambda: c.store.claim("ms1"), "claim of a bad row")
    assert isinstance(claimed, UnreadableWorkError)
    assert claimed.work_id == bad.id
    assert c.store.mark_error(bad.id)
    assert not c.store.mark_error(bad.id + 1000)
    assert c.store.pending_for_vm(vm) == []  # skipped once in Error
    history = c.store.works_for_vm(vm)
    # A bad step is overwritten by Error; any other bad value keeps the row unreadable.
    assert [w.step for w in history] == ([Step.ERROR] if column == "step" else [])
    assert _claim(c.store).id == good.id


def check_unreadable_rows_are_quarantined(c: _Ctx) -> None:
    """A hand-edited row raises naming itself; claimed then raised; mark_error takes it out."""
    corrupt = c.corrupt
    if corrupt is None:
        return  # the adapter cannot hold a hand-edited row
    for column, value in (("type", "Teleport"), ("step", "Dancing"), ("vm_type", "Toaster")):
        _check_unreadable(c, corrupt, column, value)
    work = _add(c.store, "null-reason", reason=ReasonType.HOST_DOWN)
    corrupt(c.store, work.id, "reason", None)
    got = c.store.get(work.id)
    assert got is not None
    assert got.reason is ReasonType.UNKNOWN


WORK_STORE_CHECKS: Final[tuple[Callable[[_Ctx], None], ...]] = (
    check_add_and_get,
    check_claim_order_and_owner,
    check_claim_skips_unclaimable,
    check_claim_is_exclusive,
    check_held_writes,
    check_confirm_after_a_lost_claim,
    check_generations_only_grow,
    check_release_server,
    check_reschedule_timing,
    check_mark_investigating,
    check_stopping_kept,
    check_queries,
    check_cancel_and_delete_untaken,
    check_cleanup,
    check_tally,
    check_unreadable_rows_are_quarantined,
)
"""The contract, one property per function; :func:`check_work_store` runs them all."""


def _admin(store: WorkStore) -> WorkQueueAdmin:
    if not isinstance(store, WorkQueueAdmin):
        raise AssertionError(f"{store!r} does not have every method of the WorkQueueAdmin port")
    return store


def _refused(call: Callable[[], object], what: str, *words: str) -> WorkRefusedError:
    refused = _raises(WorkRefusedError, call, what)
    assert isinstance(refused, WorkRefusedError)
    for word in words:
        assert word in refused.reason, f"{what}: {word!r} not in {refused.reason!r}"
    return refused


def _ids(listing: WorkListing) -> list[int]:
    return [w.id for w in listing.works]


def check_list_works(c: _Ctx) -> None:
    """list_works filters by state, host, VM and type, oldest first; claimed works are pending."""
    admin = _admin(c.store)
    first = _add(c.store, "vm1", host_id="h1")
    second = _add(c.store, "vm2", host_id="h1", type=WorkType.MIGRATION)
    error = _add(c.store, "vm3", host_id="h2", step=Step.ERROR)
    done = _add(c.store, "vm4", host_id="h2", step=Step.DONE)
    cancelled = _add(c.store, "vm1", host_id="h1", step=Step.CANCELLED)
    held = _claim(c.store)
    assert held.id == first.id
    every = [first.id, second.id, error.id, done.id, cancelled.id]
    assert _ids(admin.list_works()) == every
    assert admin.list_works().unreadable == ()
    assert _ids(admin.list_works(states=[QueueState.PENDING])) == [first.id, second.id]
    assert _ids(admin.list_works(states={QueueState.ERROR})) == [error.id]
    assert _ids(admin.list_works(states=[QueueState.DONE, QueueState.CANCELLED])) == [
        done.id,
        cancelled.id,
    ]
    assert _ids(admin.list_works(states=[QueueState.PENDING, QueueState.ERROR])) == [
        first.id,
        second.id,
        error.id,
    ]
    assert _ids(admin.list_works(states=list(QueueState))) == every
    assert _ids(admin.list_works(states=[])) == []
    assert _ids(admin.list_works(host_id="h1")) == [first.id, second.id, cancelled.id]
    assert _ids(admin.list_works(instance_id="vm1")) == [first.id, cancelled.id]
    assert _ids(admin.list_works(type=WorkType.MIGRATION)) == [second.id]
    assert _ids(admin.list_works(host_id="h1", type=WorkType.HA, states=[QueueState.PENDING])) == [
        first.id
    ]
    assert _ids(admin.list_works(host_id="nowhere")) == []
    listed = admin.list_works(instance_id="vm1").works[0]
    assert listed == c.store.get(first.id)
    assert (listed.mgmt_server_id, listed.generation) == ("ms1", held.generation)


def check_retry_sends_a_work_back_to_be_investigated(c: _Ctx) -> None:
    """retry_work: Error/Cancelled -> Investigating, unclaimed, due now, tried 0; same tokens."""
    admin = _admin(c.store)
    _add(c.store, "vm1", host_id="h1", updated=3)
    work = _claim(c.store)
    gave_up = c.store.finish(work, Step.ERROR, attempt=True, previous_state=VmState.STOPPED)
    token = c.store.current_generation("vm1")
    assert token == work.generation
    c.clock.advance(40)
    retried = admin.retry_work(work.id)
    assert retried == c.store.get(work.id)
    assert (retried.step, retried.mgmt_server_id, retried.taken) == (
        Step.INVESTIGATING,
        None,
        None,
    )
    assert (retried.time_to_try, retried.tried) == (T0 + 40, 0)
    assert (retried.previous_state, retried.updated) == (VmState.STOPPED, 3)  # the snapshot stays
    assert (retried.generation, retried.created) == (gave_up.generation, gave_up.created)
    assert c.store.current_generation("vm1") == token  # no token handed out or taken back
    # The worker that gave up holds nothing any more.
    _raises(StaleWorkError, lambda: c.store.confirm(gave_up), "confirm by the old holder")
    _raises(StaleWorkError, lambda: c.store.finish(gave_up), "finish by the old holder")
    _raises(StaleWorkError, lambda: c.store.update_step(gave_up, Step.FENCING), "update_step")
    again = _claim(c.store, "ms2")
    assert again.id == work.id
    assert again.step is Step.INVESTIGATING
    assert again.generation > token
    # A cancelled work can be retried too.
    c.store.finish(again, Step.CANCELLED)
    assert admin.retry_work(work.id).step is Step.INVESTIGATING


def check_retry_refusals_change_nothing(c: _Ctx) -> None:
    """retry_work refuses unknown, pending, claimed, Done and covered works, changing nothing."""
    admin = _admin(c.store)
    _raises(UnknownWorkError, lambda: admin.retry_work(10_000_000), "retry of an unknown id")
    waiting = _add(c.store, "vm1", time_to_try=T0 + 60)
    held = _add(c.store, "vm2")
    held = _claim(c.store)
    done = _add(c.store, "vm3", step=Step.DONE)
    error = _add(c.store, "vm1", step=Step.ERROR)
    other_type = _add(c.store, "vm2", step=Step.ERROR, type=WorkType.MIGRATION)
    before = {w.id: c.store.get(w.id) for w in (waiting, held, done, error, other_type)}
    _refused(lambda: admin.retry_work(waiting.id), "retry of a pending work", "pending")
    _refused(lambda: admin.retry_work(held.id), "retry of a claimed work", "held by ms1")
    _refused(lambda: admin.retry_work(done.id), "retry of a Done work", "Done")
    refused = _refused(
        lambda: admin.retry_work(error.id), "retry with a pending work", str(waiting.id)
    )
    assert refused.work_id == error.id
    assert {w: c.store.get(w) for w in before} == before
    assert admin.retry_work(other_type.id).step is Step.INVESTIGATING  # another type: fine
    c.store.confirm(held)  # the holder still holds its claim


def check_cancel_pending_and_error_works(c: _Ctx) -> None:
    """cancel_work: an unclaimed pending or an Error work -> Cancelled (taken now, canceller)."""
    admin = _admin(c.store)
    pending = _add(c.store, "vm1", step=Step.INVESTIGATING, time_to_try=T0 + 30)
    error = _add(c.store, "vm2", step=Step.ERROR)
    c.clock.advance(5)
    cancelled = admin.cancel_work(pending.id, "alice@console")
    assert cancelled == c.store.get(pending.id)
    assert (cancelled.step, cancelled.mgmt_server_id) == (Step.CANCELLED, "alice@console")
    assert cancelled.taken is not None
    assert cancelled.taken.timestamp() == T0 + 5
    assert (cancelled.tried, cancelled.generation) == (pending.tried, pending.generation)
    dismissed = admin.cancel_work(error.id, "alice@console")
    assert dismissed.step is Step.CANCELLED
    c.clock.advance(60)
    assert c.store.claim("ms1") is None  # neither is claimable
    assert c.store.cleanup(30) == 2  # and the cleanup deletes both


def check_cancel_refusals_change_nothing(c: _Ctx) -> None:
    """cancel_work refuses unknown, claimed, Done and Cancelled works, changing nothing."""
    admin = _admin(c.store)
    _raises(UnknownWorkError, lambda: admin.cancel_work(10_000_000, "op"), "cancel of no work")
    _add(c.store, "vm1")
    held = _claim(c.store)
    done = _add(c.store, "vm2", step=Step.DONE)
    gone = _add(c.store, "vm3", step=Step.CANCELLED)
    before = {w.id: c.store.get(w.id) for w in (held, done, gone)}
    refused = _refused(lambda: admin.cancel_work(held.id, "op"), "cancel of a claim", "ms1")
    assert refused.work_id == held.id
    _refused(lambda: admin.cancel_work(done.id, "op"), "cancel of a Done work", "Done")
    _refused(lambda: admin.cancel_work(gone.id, "op"), "cancel of a Cancelled work", "Cancelled")
    assert {w: c.store.get(w) for w in before} == before
    c.store.confirm(held)  # the worker still holds it and can finish it
    assert c.store.finish(held).step is Step.DONE


def check_admin_and_unreadable_rows(c: _Ctx) -> None:
    """A hand-edited row is listed apart, and retry_work/cancel_work refuse it unchanged."""
    admin = _admin(c.store)
    corrupt = c.corrupt
    if corrupt is None:
        return  # the adapter cannot hold a hand-edited row
    good = _add(c.store, "good", host_id="h1")
    bad = _add(c.store, "bad", host_id="h1", step=Step.ERROR)
    corrupt(c.store, bad.id, "type", "Teleport")
    listing = admin.list_works(host_id="h1")
    assert _ids(listing) == [good.id]
    assert [(e.work_id, e.column, e.value) for e in listing.unreadable] == [
        (bad.id, "type", "Teleport")
    ]
    assert _ids(admin.list_works(states=[QueueState.ERROR])) == []
    assert [e.work_id for e in admin.list_works(states=[QueueState.ERROR]).unreadable] == [bad.id]
    _refused(lambda: admin.retry_work(bad.id), "retry of a bad row", "unreadable")
    _refused(lambda: admin.cancel_work(bad.id, "op"), "cancel of a bad row", "unreadable")
    assert [e.value for e in admin.list_works().unreadable] == ["Teleport"]


WORK_QUEUE_ADMIN_CHECKS: Final[tuple[Callable[[_Ctx], None], ...]] = (
    check_list_works,
    check_retry_sends_a_work_back_to_be_investigated,
    check_retry_refusals_change_nothing,
    check_cancel_pending_and_error_works,
    check_cancel_refusals_change_nothing,
    check_admin_and_unreadable_rows,
)
"""The :class:`~cloudha.ports.WorkQueueAdmin` contract, one property per function."""


def run_work_store_check(
    check: Callable[[_Ctx], None], make_store: StoreFactory, *, corrupt: Corrupt | None = None
) -> None:
    """Run one of :data:`WORK_STORE_CHECKS` or :data:`WORK_QUEUE_ADMIN_CHECKS` on a fresh store
    at ``T0`` on a fake clock."""
    clock = FakeClock(T0)
    store = make_store(clock)
    if not isinstance(store, WorkStore):
        raise AssertionError(f"{store!r} does not have every method of the WorkStore port")
    check(_Ctx(store, clock, corrupt))


def check_work_store(
    make_store: StoreFactory, *, corrupt: Corrupt | None = None, admin: bool = True
) -> None:
    """Assert that stores from ``make_store`` keep the :class:`~cloudha.ports.WorkStore` contract.

    Args:
        make_store: returns an *empty* store on the clock it is given (called
            once per check; a SQL adapter needs a fresh schema each time).
        corrupt: writes a raw value into a row's column behind the store's
            back, as an operator's hand edit; without it the unreadable-row
            checks are skipped.
        admin: also check the :class:`~cloudha.ports.WorkQueueAdmin` contract
            (:data:`WORK_QUEUE_ADMIN_CHECKS`); pass False for a store that
            does not offer the operator's view.

    Raises :class:`AssertionError` naming the property that does not hold.
    """
    checks = WORK_STORE_CHECKS + (WORK_QUEUE_ADMIN_CHECKS if admin else ())
    for check in checks:
        try:
            run_work_store_check(check, make_store, corrupt=corrupt)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {check.__doc__}: {exc}") from exc


def corrupt_in_memory(store: WorkStore, work_id: int, column: str, value: object) -> None:
    """The ``corrupt`` of :func:`check_work_store` for :class:`InMemoryWorkStore`."""
    assert isinstance(store, InMemoryWorkStore)
    store.corrupt(work_id, column, value)
