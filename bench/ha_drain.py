"""P9: draining the HA work queue after a rack failure, through the real manager.

A rack of hosts loses power: every VM on them gets an HA work
(``schedule_restart_for_vms_on_host`` per host, as the agent manager does),
and ``ha.workers`` real threads of the real :class:`HighAvailabilityManager`
drain the queue on the system clock: claim, investigate (no verdict), fence
(an instant scripted fencer), force-stop, start elsewhere, finish. The
orchestrator is a minimal in-process one (dict look-ups, per-host counters),
so the figure is the cost of the queue and the manager, not of a fake.

Reported (informational, on a SQLite file and on a throwaway PostgreSQL):
seconds from the first schedule call until every work is Done, and works
per second. Compare with P8's bare claim+finish rate on the same backend
for the manager's own cost per work.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import sqlalchemy as sa
from ha_queue import on_postgres

from cloudha.clock import SystemClock
from cloudha.evidence import EvidenceLog
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.chain import FenceChain, InlineRunner
from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.orchestrator import InsufficientCapacityError, Planner, StartParams
from cloudha.ha.store import Step, WorkStore, create_schema, op_ha_work
from cloudha.investigators import InvestigatorChain
from cloudha.model import Host, ReasonType, Vm, VmState
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    InMemoryHostDirectory,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedInvestigator,
)

__all__ = ["DrainLine", "DrainResult", "drain", "p9_lines"]


class _QuickOrchestrator:
    """A VmOrchestrator with O(1) operations, for measuring the queue and not a fake."""

    def __init__(self, vms: Sequence[Vm], up_hosts: Sequence[str], capacity: int) -> None:
        self._lock = threading.Lock()
        self._vms = {vm.id: vm for vm in vms}
        self._by_host: dict[str | None, set[str]] = {}
        for vm in vms:
            self._by_host.setdefault(vm.host_id, set()).add(vm.id)
        self._free = dict.fromkeys(up_hosts, capacity)
        self._generations: dict[str, int] = {}

    def find_vm(self, vm_id: str) -> Vm | None:
        return self._vms.get(vm_id)

    def list_vms_on_host(self, host_id: str) -> list[Vm]:
        with self._lock:
            return [self._vms[i] for i in sorted(self._by_host.get(host_id, ()))]

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        return True

    def _move(self, vm: Vm, **changes: Any) -> None:
        current = self._vms[vm.id]
        self._by_host.get(current.host_id, set()).discard(vm.id)
        new = attrs.evolve(current, updated=current.updated + 1, **changes)
        self._vms[vm.id] = new
        self._by_host.setdefault(new.host_id, set()).add(vm.id)

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        with self._lock:
            current = self._vms[vm.id]
            if current.state is VmState.STOPPED:
                return
            self._move(vm, state=VmState.STOPPED, host_id=None, last_host_id=current.host_id)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        with self._lock:
            if params.generation <= self._generations.get(vm.id, 0):
                raise RuntimeError(f"stale generation for {vm.id}")
            target = next((h for h, free in self._free.items() if free > 0), None)
            if target is None:
                raise InsufficientCapacityError(vm.id)
            self._free[target] -= 1
            self._generations[vm.id] = params.generation
            self._move(vm, state=VmState.RUNNING, host_id=target, last_host_id=target)
            return target

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        raise NotImplementedError

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        raise NotImplementedError

    def running(self) -> int:
        with self._lock:
            return sum(1 for vm in self._vms.values() if vm.state is VmState.RUNNING)


@dataclass(frozen=True)
class DrainResult:
    works: int
    seconds: float
    restarted: int

    @property
    def per_second(self) -> float:
        return self.works / self.seconds if self.seconds > 0 else float("nan")


def drain(url: str, *, dead_hosts: int, vms_per_host: int, workers: int = 5) -> DrainResult:
    """Fail ``dead_hosts`` hosts of ``vms_per_host`` HA VMs each and time the drain."""
    clock = SystemClock()
    engine = sa.create_engine(url, pool_size=workers + 5, max_overflow=10)
    try:
        create_schema(engine)
        store = WorkStore(engine, clock)
        dead = [f"dead{i:03d}" for i in range(dead_hosts)]
        alive = [f"up{i:03d}" for i in range(dead_hosts)]
        directory = InMemoryHostDirectory(
            [Host(h, status=Status.DOWN) for h in dead] + [Host(h, status=Status.UP) for h in alive]
        )
        vms = [
            Vm(f"{h}-vm{j:03d}", host_id=h, last_host_id=h, ha_enabled=True)
            for h in dead
            for j in range(vms_per_host)
        ]
        orchestrator = _QuickOrchestrator(vms, alive, capacity=vms_per_host + 1)
        manager = HighAvailabilityManager(
            server_id="ms-bench",
            store=store,
            orchestrator=orchestrator,
            directory=directory,
            investigators=InvestigatorChain([ScriptedInvestigator(clock)]),
            fence_chain=FenceChain(
                [ScriptedFencer(clock, default=FenceOutcome.FENCED)],
                clock=clock,
                runner=InlineRunner(clock),
            ),
            settings=Settings.from_mapping({"ha.workers": workers, "time.to.sleep": 1}),
            clock=clock,
            alerts=RecordingAlertSink(),
            evidence=EvidenceLog(capacity=1000),
        )
        begin = time.perf_counter()
        manager.start()
        for host_id in dead:
            host = directory.find_host(host_id)
            assert host is not None
            manager.schedule_restart_for_vms_on_host(
                host, investigate=True, reason=ReasonType.HOST_DOWN
            )
        pending = sa.select(sa.func.count()).where(
            op_ha_work.c.step.not_in([Step.DONE.value, Step.CANCELLED.value, Step.ERROR.value])
        )
        with engine.connect() as conn:
            while conn.execute(pending).scalar_one():
                conn.rollback()
                time.sleep(0.01)
        seconds = time.perf_counter() - begin
        manager.stop()
        with engine.connect() as conn:
            done = conn.execute(
                sa.select(sa.func.count()).where(op_ha_work.c.step == Step.DONE.value)
            ).scalar_one()
        assert done == len(vms), (done, len(vms))
        return DrainResult(len(vms), seconds, orchestrator.running())
    finally:
        engine.dispose()


@contextlib.contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cloudha-drain-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'ha.db'}"


@dataclass(frozen=True)
class DrainLine:
    backend: str
    seconds: float
    detail: str


def _line(backend: str, result: DrainResult, where: str) -> DrainLine:
    return DrainLine(
        backend,
        result.seconds,
        f"{result.works:,} works in {result.seconds:.1f} s = {result.per_second:,.0f} works/s, "
        f"{result.restarted:,} VMs running after; {where}",
    )


def p9_lines(works: int, workers: int = 5) -> list[DrainLine]:
    """P9 on SQLite, then on PostgreSQL (NaN with the reason when no server can be started)."""
    vms_per_host = 50
    dead_hosts = max(1, works // vms_per_host)
    lines = []
    with sqlite_url() as url:
        result = drain(url, dead_hosts=dead_hosts, vms_per_host=vms_per_host, workers=workers)
    lines.append(_line("SQLite", result, "file in a temp dir"))
    measured = on_postgres(
        ["bench_drain"],
        lambda url: drain(url, dead_hosts=dead_hosts, vms_per_host=vms_per_host, workers=workers),
    )
    if isinstance(measured, str):
        return [*lines, DrainLine("PostgreSQL", math.nan, f"NOT MEASURED: {measured}")]
    result = measured
    lines.append(_line("PostgreSQL", result, "throwaway server on 127.0.0.1 (fsync off)"))
    return lines
