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

P13: the same drain by several management-server processes on one
PostgreSQL work store. Each server is a process of this module
(``python bench/ha_drain.py worker ...``) with its own
``HighAvailabilityManager`` and ``ha.workers`` threads, on the same
``op_ha_work`` table; the VMs live in the same database
(:class:`SqlDrainOrchestrator`: ``bench_vms``, ``bench_hosts`` and
``bench_starts``, whose primary key on the VM id makes a second start of a
VM fail: the no-double-run invariant, checked after the drain). A start
sleeps ``latency`` seconds before its transaction (a hypervisor booting a
guest), so servers working in parallel matter. The dead hosts are shared
out among the servers, each scheduling its own hosts' VMs (as their owner
would) once every process is ready; the clock runs from that ``go`` until
every work is Done. The figure is works/s of three servers ÷ works/s of one,
each on a fresh database of the same server, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
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

from cloudha.clock import Clock, SystemClock
from cloudha.evidence import EvidenceLog
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.chain import FenceChain, InlineRunner
from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.ha.store import Step, WorkStore, create_schema, op_ha_work
from cloudha.investigators import InvestigatorChain
from cloudha.model import Host, ReasonType, Vm, VmState
from cloudha.ports import HostDirectory, VmOrchestrator
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    InMemoryHostDirectory,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedInvestigator,
)

__all__ = [
    "DrainLine",
    "DrainResult",
    "GroupDrainLine",
    "GroupDrainResult",
    "SqlDrainOrchestrator",
    "drain",
    "drain_processes",
    "p9_lines",
    "p13_lines",
]

REPO = Path(__file__).resolve().parent.parent


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


def _manager(
    server_id: str,
    store: WorkStore,
    orchestrator: VmOrchestrator,
    directory: HostDirectory,
    *,
    clock: Clock,
    workers: int,
    time_to_sleep: float,
) -> HighAvailabilityManager:
    """The HA manager of P9 and P13: no investigator verdict, a fencer that fences at once."""
    return HighAvailabilityManager(
        server_id=server_id,
        store=store,
        orchestrator=orchestrator,
        directory=directory,
        investigators=InvestigatorChain([ScriptedInvestigator(clock)]),
        fence_chain=FenceChain(
            [ScriptedFencer(clock, default=FenceOutcome.FENCED)],
            clock=clock,
            runner=InlineRunner(clock),
        ),
        settings=Settings.from_mapping(
            {
                "ha.workers": workers,
                "time.to.sleep": time_to_sleep,
                "restart.retry.interval": 1,
                "stop.retry.interval": 1,
                "investigate.retry.interval": 1,
            }
        ),
        clock=clock,
        alerts=RecordingAlertSink(),
        evidence=EvidenceLog(capacity=1000),
    )


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
        manager = _manager(
            "ms-bench",
            store,
            orchestrator,
            directory,
            clock=clock,
            workers=workers,
            time_to_sleep=1.0,
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


# -- P13: the same drain by several server processes on one PostgreSQL -----------------------

_drain_metadata = sa.MetaData()
bench_vms = sa.Table(
    "bench_vms",
    _drain_metadata,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("host_id", sa.String(64), nullable=True),
    sa.Column("last_host_id", sa.String(64), nullable=True),
    sa.Column("updated", sa.Integer, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
)
bench_hosts = sa.Table(
    "bench_hosts",
    _drain_metadata,
    sa.Column("host_id", sa.String(64), primary_key=True),
    sa.Column("free", sa.Integer, nullable=False),
)
bench_starts = sa.Table(
    "bench_starts",
    _drain_metadata,
    # The primary key is the no-double-run invariant: a second start of a VM cannot commit.
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("host_id", sa.String(64), nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
)
bench_double_starts = sa.Table(
    "bench_double_starts",
    _drain_metadata,
    sa.Column("seq", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("server_id", sa.String(64), nullable=False),
)
_BV = bench_vms.c
_PLACE = (
    "UPDATE bench_hosts SET free = free - 1 WHERE host_id = ("
    " SELECT host_id FROM bench_hosts WHERE free > 0 AND NOT (host_id = ANY(:avoid))"
    " ORDER BY host_id LIMIT 1 FOR UPDATE{skip}) RETURNING host_id"
)
_PLACE_FREE = sa.text(_PLACE.format(skip=" SKIP LOCKED"))
"""A host with room that no concurrent start holds: starts do not queue on one row."""
_PLACE_ANY = sa.text(_PLACE.format(skip=""))
"""When every host with room is held: wait for one (else a full lock set would read as full)."""


def _to_vm(row: sa.Row[Any]) -> Vm:
    return Vm(
        str(row.instance_id),
        state=VmState(row.state),
        host_id=row.host_id,
        last_host_id=row.last_host_id,
        ha_enabled=True,
        updated=int(row.updated),
    )


class SqlDrainOrchestrator:
    """The VMs of P13 in the shared PostgreSQL, as small as the in-process one allows.

    Every call is one transaction. A stop is one guarded ``UPDATE``. A start
    sleeps ``latency`` seconds first (outside any transaction: the guest
    booting), then, in one transaction, takes a host with room (``SKIP
    LOCKED``, so concurrent starts do not queue on one host row), moves the VM
    from Stopped to Running if its fencing token (``generation``) is newer
    than any used for it, and records the start in ``bench_starts``, whose
    primary key refuses a second start of the same VM (counted in
    ``bench_double_starts`` before the error is raised).
    """

    def __init__(self, engine: sa.Engine, server_id: str, *, latency: float) -> None:
        self.engine = engine
        self.server_id = server_id
        self.latency = latency

    def find_vm(self, vm_id: str) -> Vm | None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(bench_vms).where(_BV.instance_id == vm_id)).one_or_none()
        return None if row is None else _to_vm(row)

    def list_vms_on_host(self, host_id: str) -> list[Vm]:
        stmt = sa.select(bench_vms).where(_BV.host_id == host_id).order_by(_BV.instance_id)
        with self.engine.begin() as conn:
            return [_to_vm(row) for row in conn.execute(stmt)]

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        return True

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        stmt = (
            bench_vms.update()
            .where(_BV.instance_id == vm.id, _BV.state != VmState.STOPPED.value)
            .values(
                state=VmState.STOPPED.value,
                host_id=None,
                last_host_id=sa.func.coalesce(_BV.host_id, _BV.last_host_id),
                updated=_BV.updated + 1,
            )
        )
        with self.engine.begin() as conn:
            if conn.execute(stmt).rowcount == 0 and self._row(conn, vm.id) is None:
                raise UnknownVmError(vm.id)

    @staticmethod
    def _row(conn: sa.Connection, vm_id: str) -> sa.Row[Any] | None:
        return conn.execute(sa.select(bench_vms).where(_BV.instance_id == vm_id)).one_or_none()

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        if self.latency > 0:
            time.sleep(self.latency)  # the runtime edge: a guest takes this long to boot
        generation = params.generation
        try:
            with self.engine.begin() as conn:
                avoid = {"avoid": sorted(params.avoid_hosts)}
                target = conn.execute(_PLACE_FREE, avoid).scalar()
                if target is None:
                    target = conn.execute(_PLACE_ANY, avoid).scalar()
                if target is None:
                    raise InsufficientCapacityError(vm.id, reason="no host has room")
                moved = conn.execute(
                    bench_vms.update()
                    .where(
                        _BV.instance_id == vm.id,
                        _BV.generation < generation,
                        _BV.state == VmState.STOPPED.value,
                    )
                    .values(
                        state=VmState.RUNNING.value,
                        host_id=target,
                        last_host_id=target,
                        generation=generation,
                        updated=_BV.updated + 1,
                    )
                ).rowcount
                if moved != 1:
                    row = self._row(conn, vm.id)
                    if row is None:
                        raise UnknownVmError(vm.id)
                    if generation <= int(row.generation):
                        raise StaleGenerationError(
                            vm.id, generation=generation, highest=int(row.generation)
                        )
                    raise ConcurrentOperationError(vm.id, f"VM is {row.state}")
                conn.execute(
                    bench_starts.insert().values(
                        instance_id=vm.id,
                        generation=generation,
                        host_id=str(target),
                        server_id=self.server_id,
                    )
                )
        except sa.exc.IntegrityError:
            with self.engine.begin() as conn:
                conn.execute(
                    bench_double_starts.insert().values(instance_id=vm.id, server_id=self.server_id)
                )
            raise
        return str(target)

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        raise NotImplementedError

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        raise NotImplementedError


def _rack(dead_hosts: int, vms_per_host: int) -> tuple[list[str], list[str], list[str]]:
    """(dead host ids, Up host ids, VM ids) of a rack failure of this size."""
    dead = [f"dead{i:03d}" for i in range(dead_hosts)]
    alive = [f"up{i:03d}" for i in range(dead_hosts)]
    vm_ids = [f"{h}-vm{j:03d}" for h in dead for j in range(vms_per_host)]
    return dead, alive, vm_ids


def seed_rack(engine: sa.Engine, dead_hosts: int, vms_per_host: int) -> None:
    """The work store's schema and the tables of :class:`SqlDrainOrchestrator`, filled."""
    create_schema(engine)
    _drain_metadata.create_all(engine)
    _, alive, vm_ids = _rack(dead_hosts, vms_per_host)
    with engine.begin() as conn:
        conn.execute(
            bench_hosts.insert(), [{"host_id": h, "free": vms_per_host + 1} for h in alive]
        )
        conn.execute(
            bench_vms.insert(),
            [
                {
                    "instance_id": vm_id,
                    "state": VmState.RUNNING.value,
                    "host_id": vm_id.split("-vm", 1)[0],
                    "last_host_id": vm_id.split("-vm", 1)[0],
                    "updated": 0,
                    "generation": 0,
                }
                for vm_id in vm_ids
            ],
        )


def worker_main(argv: Sequence[str]) -> int:
    """One server process of P13: ``worker URL SERVER_ID INDEX SERVERS [options]``.

    Prints ``ready``, waits for ``go`` on stdin, starts its HA manager and
    schedules the VMs of the dead hosts ``INDEX::SERVERS``; on ``stop`` (or
    the end of stdin) it stops the manager and prints ``stopped``.
    """
    parser = argparse.ArgumentParser(prog="ha_drain.py worker")
    parser.add_argument("url")
    parser.add_argument("server_id")
    parser.add_argument("index", type=int)
    parser.add_argument("servers", type=int)
    parser.add_argument("--dead-hosts", type=int, required=True)
    parser.add_argument("--vms-per-host", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--latency", type=float, required=True)
    options = parser.parse_args(argv)
    clock = SystemClock()
    engine = sa.create_engine(options.url, pool_size=options.workers + 5, max_overflow=10)
    try:
        dead, alive, _ = _rack(options.dead_hosts, options.vms_per_host)
        directory = InMemoryHostDirectory(
            [Host(h, status=Status.DOWN) for h in dead] + [Host(h, status=Status.UP) for h in alive]
        )
        orchestrator = SqlDrainOrchestrator(engine, options.server_id, latency=options.latency)
        manager = _manager(
            options.server_id,
            WorkStore(engine, clock),
            orchestrator,
            directory,
            clock=clock,
            workers=options.workers,
            time_to_sleep=0.1,
        )
        with contextlib.ExitStack() as stack:  # one pooled connection per worker, before go
            for _ in range(options.workers):
                stack.enter_context(engine.connect())
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        manager.start()
        for host_id in dead[options.index :: options.servers]:
            host = directory.find_host(host_id)
            assert host is not None
            manager.schedule_restart_for_vms_on_host(
                host, investigate=True, reason=ReasonType.HOST_DOWN
            )
        sys.stdin.readline()  # "stop", or the end of stdin
        manager.stop()
        print("stopped", flush=True)
        return 0
    finally:
        engine.dispose()


@dataclass(frozen=True)
class GroupDrainResult:
    servers: int
    works: int
    seconds: float
    started: int
    double_starts: int
    cpu_seconds: float
    """User + system CPU of the server processes during the drain (not PostgreSQL's)."""

    @property
    def per_second(self) -> float:
        return self.works / self.seconds if self.seconds > 0 else math.nan


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc``), NaN where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_processes(
    url: str,
    *,
    servers: int,
    dead_hosts: int,
    vms_per_host: int,
    workers: int,
    latency: float,
    timeout: float = 300.0,
) -> GroupDrainResult:
    """Drain a rack failure with ``servers`` server processes on the database at ``url``."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    procs: list[subprocess.Popen[str]] = []
    try:
        seed_rack(engine, dead_hosts, vms_per_host)
        works = dead_hosts * vms_per_host
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for index in range(servers):
            argv = [sys.executable, str(Path(__file__).resolve()), "worker", url]
            argv += [f"ms{index + 1}", str(index), str(servers)]
            argv += ["--dead-hosts", str(dead_hosts), "--vms-per-host", str(vms_per_host)]
            argv += ["--workers", str(workers), "--latency", str(latency)]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"bench: drain server {proc.args!r} did not start")
        done = sa.select(sa.func.count()).where(op_ha_work.c.step == Step.DONE.value)
        failed = sa.select(sa.func.count()).where(
            op_ha_work.c.step.in_([Step.CANCELLED.value, Step.ERROR.value])
        )
        cpu_before = sum(_cpu_seconds(proc.pid) for proc in procs)
        begin = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with engine.connect() as conn:
            while conn.execute(done).scalar_one() < works:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench: {servers} servers did not drain in {timeout:g} s")
                if conn.execute(failed).scalar_one():
                    raise RuntimeError("bench: an HA work was cancelled or failed")
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError("bench: a drain server exited")
                conn.rollback()
                time.sleep(0.01)
        seconds = time.perf_counter() - begin
        cpu = sum(_cpu_seconds(proc.pid) for proc in procs) - cpu_before
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
            if proc.wait(30) != 0:
                raise RuntimeError(f"bench: drain server {proc.args!r} failed")
        with engine.connect() as conn:
            started = conn.execute(
                sa.select(sa.func.count()).select_from(bench_starts)
            ).scalar_one()
            doubles = conn.execute(
                sa.select(sa.func.count()).select_from(bench_double_starts)
            ).scalar_one()
            running = conn.execute(
                sa.select(sa.func.count()).where(_BV.state == VmState.RUNNING.value)
            ).scalar_one()
        # The no-double-run invariant, and no work lost: every VM started exactly once.
        if doubles or started != works or running != works:
            raise RuntimeError(
                f"bench: {started} starts, {doubles} refused second starts, {running} running,"
                f" of {works} VMs"
            )
        return GroupDrainResult(servers, works, seconds, started, doubles, cpu)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        engine.dispose()


@dataclass(frozen=True)
class GroupDrainLine:
    """P13: works/s of ``servers`` processes ÷ works/s of one (NaN when not measured)."""

    servers: int
    ratio: float
    detail: str


def p13_lines(
    *, dead_hosts: int, vms_per_host: int, workers: int = 5, latency: float = 0.03
) -> list[GroupDrainLine]:
    """One server, then three, each on a fresh database of one throwaway PostgreSQL."""

    def both(one_url: str, three_url: str) -> tuple[GroupDrainResult, GroupDrainResult]:
        kwargs: dict[str, Any] = {
            "dead_hosts": dead_hosts,
            "vms_per_host": vms_per_host,
            "workers": workers,
            "latency": latency,
        }
        return (
            drain_processes(one_url, servers=1, **kwargs),
            drain_processes(three_url, servers=3, **kwargs),
        )

    measured = on_postgres(["bench_drain1", "bench_drain3"], both)
    if isinstance(measured, str):
        return [GroupDrainLine(3, math.nan, f"NOT MEASURED: {measured}")]
    one, three = measured
    return [
        GroupDrainLine(
            3,
            three.per_second / one.per_second,
            (
                f"{one.works:,} works ({dead_hosts} hosts x {vms_per_host} VMs), {workers} HA"
                f" workers per server, {latency * 1000:.0f} ms per start: 1 server"
                f" {one.per_second:,.1f} works/s ({one.seconds:.1f} s, {one.cpu_seconds:.1f} s"
                f" CPU), 3 servers {three.per_second:,.1f} works/s ({three.seconds:.1f} s,"
                f" {three.cpu_seconds:.1f} s CPU); every VM started once (unique start rows)"
            ),
        )
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: ha_drain.py worker URL SERVER_ID INDEX SERVERS [options]")
