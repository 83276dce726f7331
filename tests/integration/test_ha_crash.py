"""A management server SIGKILLed mid-work: after a restart every work completes, none twice.

Process A (server ``ms1``, the real :class:`~cloudha.ha.manager.HighAvailabilityManager`
with worker threads) restarts the VMs of a Down host through a VM orchestrator
kept in the shared database (:mod:`tests.integration.sql_orchestrator`). After
a few restarts every worker thread of A hangs at one point of its next
restart (before the forced stop; after the stop, before the work records it;
between the stop and the start; after the start, before the work is finished)
and A is SIGKILLed there. Then process B
takes over: either ``ms1`` again (a restarted server: its ``start()`` /
``recover()`` releases its own old claims) or a second server ``ms2`` told
that ``ms1`` left (``on_server_left``). Both on a SQLite file and on a real
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import attrs
import pytest
import sqlalchemy as sa

from cloudha.ha.orchestrator import Planner, StaleGenerationError, StartParams
from cloudha.ha.store import TERMINAL_STEPS, Step, create_schema, op_ha_work
from cloudha.model import ReasonType, Vm, VmState
from tests.integration.ha_store_worker import record_metadata
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401
from tests.integration.sql_orchestrator import (
    DOWN_HOST,
    UP_HOSTS,
    SqlOrchestrator,
    make_manager,
    seed,
    start_attempts,
    starts,
    vms,
)
from tests.unit.orchestrator_contract import check_orchestrator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ha_store_worker.py")
VMS = 60
THREADS = 3
NORMAL = 9
"""Restarts process A completes before each of its threads hangs in its next one."""
TIMEOUT = 60.0
_TERMINAL = [s.value for s in TERMINAL_STEPS]


def _url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ha.db'}"
    url: str = request.getfixturevalue("postgres_db")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (a SQLite file, or a fresh PostgreSQL database)."""
    return _url(request, str(request.param), tmp_path)


@contextlib.contextmanager
def _engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


# -- the orchestrator itself -----------------------------------------------------


def test_the_sql_orchestrator_keeps_the_orchestrator_contract(url: str) -> None:
    with _engine(url) as engine:
        record_metadata.create_all(engine)
        seed(engine, [("c1", 5), ("c2", 5)], [])
        numbers = iter(range(1, 100))

        def make() -> tuple[SqlOrchestrator, str, list[str]]:
            vm_id = f"contract-{next(numbers)}"
            seed(engine, [], [Vm(vm_id, host_id="c1", ha_enabled=True)])
            return SqlOrchestrator(engine, "ms-contract"), vm_id, ["c1", "c2"]

        check_orchestrator(make)


def test_the_sql_orchestrator_refuses_a_stale_token_from_another_process_view(
    url: str,
) -> None:
    # Two orchestrators (two servers) on one database: the token one of them
    # used is stale for the other, even after the VM was stopped again.
    with _engine(url) as engine:
        record_metadata.create_all(engine)
        seed(engine, [("c1", 5), ("c2", 5)], [Vm("vm", host_id="c1", ha_enabled=True)])
        one, two = SqlOrchestrator(engine, "ms1"), SqlOrchestrator(engine, "ms2")
        vm = one.find_vm("vm")
        assert vm is not None
        one.advance_stop(vm, force=True)
        assert one.advance_start(vm, StartParams(generation=3), Planner.DEFAULT) == "c1"
        two.advance_stop(vm, force=True)
        with pytest.raises(StaleGenerationError) as stale:
            two.advance_start(vm, StartParams(generation=3), Planner.DEFAULT)
        assert (stale.value.generation, stale.value.highest) == (3, 3)
        stopped = two.find_vm("vm")
        assert stopped is not None
        assert (stopped.state, stopped.host_id) == (VmState.STOPPED, None)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(starts.c.server_id, starts.c.generation)).all()
        assert [tuple(r) for r in rows] == [("ms1", 3)]


# -- the crash ---------------------------------------------------------------------


class _Lines:
    """The stdout lines of a process, read by a thread, waited for with a deadline.

    ``why`` says what went wrong in the process (its stderr) when a wait fails.
    """

    def __init__(self, stream: IO[str], why: Callable[[], str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stream = stream
        self._why = why
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, prefix: str, count: int, timeout: float) -> list[str]:
        """The first ``count`` lines starting with ``prefix``; fail at EOF or after ``timeout``."""
        deadline = time.monotonic() + timeout
        found = [line for line in self.seen if line.startswith(prefix)]
        while len(found) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"no {count} lines {prefix!r} in {timeout} s: {self.seen}\n{self._why()}"
                )
            if line is None:
                pytest.fail(f"EOF before {count} lines {prefix!r}: {self.seen}\n{self._why()}")
            self.seen.append(line)
            if line.startswith(prefix):
                found.append(line)
        return found[:count]

    def close(self) -> None:
        """Once the process is gone: wait for the reader to see EOF, then close the pipe."""
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the pipe stayed open after the process ended"
        self._stream.close()


@attrs.frozen
class _Work:
    id: int
    vm: str
    server: str | None
    step: str
    generation: int
    tried: int


@attrs.frozen
class _VmRow:
    state: str
    host: str | None
    generation: int


def _works(engine: sa.Engine) -> dict[str, _Work]:
    t = op_ha_work.c
    stmt = sa.select(t.id, t.instance_id, t.mgmt_server_id, t.step, t.generation, t.tried)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    works = {
        str(vm): _Work(int(i), str(vm), server, str(step), int(generation), int(tried))
        for i, vm, server, step, generation, tried in rows
    }
    assert len(works) == len(rows), "one HA work per VM"
    return works


def _vms(engine: sa.Engine) -> dict[str, _VmRow]:
    t = vms.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.instance_id, t.state, t.host_id, t.generation)).all()
    return {str(r[0]): _VmRow(str(r[1]), r[2], int(r[3])) for r in rows}


def _starts(engine: sa.Engine) -> list[tuple[str, int, str, str, int]]:
    t = starts.c
    stmt = sa.select(t.instance_id, t.generation, t.host_id, t.server_id, t.pid).order_by(t.seq)
    with engine.connect() as conn:
        return [(str(a), int(b), str(c), str(d), int(e)) for a, b, c, d, e in conn.execute(stmt)]


def _attempts(engine: sa.Engine) -> dict[str, list[tuple[int, str, int]]]:
    t = start_attempts.c
    stmt = sa.select(t.instance_id, t.generation, t.server_id, t.pid).order_by(t.seq)
    by_vm: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    with engine.connect() as conn:
        for vm, generation, server, pid in conn.execute(stmt):
            by_vm[str(vm)].append((int(generation), str(server), int(pid)))
    return by_vm


def _spawn(
    stack: contextlib.ExitStack,
    url: str,
    server_id: str,
    *options: str,
    stdout: int | IO[str],
    stderr: IO[str],
) -> subprocess.Popen[str]:
    """Start a ``manager`` worker; the stack SIGKILLs it (if still running) on exit."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), "manager", url, server_id, str(THREADS), *options],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )
    stack.callback(_kill, process)
    return process


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(TIMEOUT)


def _reap(process: subprocess.Popen[str], lines: _Lines) -> None:
    _kill(process)
    lines.close()


def _read(file: IO[str]) -> str:
    file.flush()
    file.seek(0)
    return file.read()


def _set_up(engine: sa.Engine) -> list[str]:
    """Schema, hosts, VMS VMs Running on the Down host, one investigated HA work each."""
    create_schema(engine)
    record_metadata.create_all(engine)
    vm_ids = [f"vm-{i:02d}" for i in range(VMS)]
    seed(
        engine,
        [(DOWN_HOST, VMS)] + [(h, VMS) for h in UP_HOSTS],
        [Vm(vm_id, host_id=DOWN_HOST, ha_enabled=True) for vm_id in vm_ids],
    )
    scheduler = make_manager(engine, "ms-scheduler")  # never started: it only writes works
    host = scheduler.directory.find_host(DOWN_HOST)
    assert host is not None
    scheduler.schedule_restart_for_vms_on_host(host, investigate=True, reason=ReasonType.HOST_DOWN)
    works = _works(engine)
    assert sorted(works) == vm_ids
    assert {w.step for w in works.values()} == {Step.INVESTIGATING.value}
    return vm_ids


def _check_the_killed_state(
    engine: sa.Engine, point: str, mid: set[str], a_pid: int
) -> dict[str, int]:
    """What A left behind; returns the generations of the works it held."""
    works = _works(engine)
    held = {w.vm for w in works.values() if w.server == "ms1" and w.step not in _TERMINAL}
    assert held == mid
    done = [w for w in works.values() if w.step == Step.DONE.value]
    assert len(done) == NORMAL
    assert {w.server for w in done} == {"ms1"}
    untouched = [w for w in works.values() if w.server is None]
    assert len(untouched) == VMS - NORMAL - THREADS
    assert {w.step for w in untouched} == {Step.INVESTIGATING.value}
    vm_rows = _vms(engine)
    started_by_a = {s[0] for s in _starts(engine)}
    assert started_by_a == {w.vm for w in done} | (mid if point == "started" else set())
    for vm in mid:
        row = vm_rows[vm]
        if point == "stop":  # hung before its forced stop, the work marked Stopping
            assert (row.state, row.host, works[vm].step) == ("Running", DOWN_HOST, "Stopping")
        elif point == "stopped":  # stopped, the work's snapshot not retaken yet
            assert (row.state, row.host, works[vm].step) == ("Stopped", None, "Stopping")
        elif point == "start":  # stopped, not started yet
            assert (row.state, row.host, works[vm].step) == ("Stopped", None, "Scheduled")
        else:  # started, the work not finished
            assert (row.state, works[vm].step) == ("Running", "Scheduled")
            assert row.host in UP_HOSTS
    assert all(pid == a_pid for *_rest, pid in _starts(engine))
    return {vm: works[vm].generation for vm in mid}


@pytest.mark.parametrize("successor", ["ms1", "ms2"], ids=["ms1-restarted", "ms2-takes-over"])
@pytest.mark.parametrize("point", ["stop", "stopped", "start", "started"])
def test_a_sigkilled_manager_leaves_no_vm_down_and_none_started_twice(
    url: str, tmp_path: Path, point: str, successor: str
) -> None:
    with _engine(url) as engine, contextlib.ExitStack() as stack:
        vm_ids = _set_up(engine)
        a_err, b_out, b_err = (
            stack.enter_context((tmp_path / name).open("w+"))
            for name in ("a.err", "b.out", "b.err")
        )
        hang = ("--hang", point, "--after", str(NORMAL))
        a = _spawn(stack, url, "ms1", *hang, stdout=subprocess.PIPE, stderr=a_err)
        assert a.stdout is not None
        lines = _Lines(a.stdout, lambda: _read(a_err))
        stack.callback(_reap, a, lines)
        mid_lines = lines.expect("mid-work ", THREADS, TIMEOUT)
        mid = {line.split()[1] for line in mid_lines}
        assert len(mid) == THREADS
        assert {line.split()[2] for line in mid_lines} == {point}
        a.send_signal(signal.SIGKILL)
        assert a.wait(TIMEOUT) == -signal.SIGKILL
        held_generation = _check_the_killed_state(engine, point, mid, a.pid)

        left = ("--left", "ms1") if successor == "ms2" else ()
        b = _spawn(stack, url, successor, *left, stdout=b_out, stderr=b_err)
        try:
            code = b.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{successor} did not finish within {TIMEOUT} s:\n{_read(b_err)}")
        output, errors = _read(b_out), _read(b_err)
        assert code == 0, f"{successor} failed ({code}):\n{output}\n{errors}"
        assert "Traceback" not in errors, errors
        if successor == "ms2":
            assert f"left ms1 released {THREADS}" in output.splitlines()

        # Every work is Done, at its first attempt; the works A held were claimed
        # again (a newer token).
        works = _works(engine)
        assert {(w.step, w.tried) for w in works.values()} == {(Step.DONE.value, 0)}
        for vm in mid:
            assert works[vm].server == successor
            assert works[vm].generation > held_generation[vm]
        # Every VM runs, once, on an Up host: never on the Down host, never twice.
        vm_rows = _vms(engine)
        assert sorted(vm_rows) == vm_ids
        assert {row.state for row in vm_rows.values()} == {VmState.RUNNING.value}
        assert {row.host for row in vm_rows.values()} <= set(UP_HOSTS)
        rows = _starts(engine)
        assert Counter(vm for vm, *_ in rows) == Counter(vm_ids)
        for vm, generation, host, _server, _pid in rows:
            assert (vm_rows[vm].host, vm_rows[vm].generation) == (host, generation)
        by_a = {vm for vm, _g, _h, server, pid in rows if (server, pid) == ("ms1", a.pid)}
        by_b = {vm for vm, _g, _h, server, pid in rows if (server, pid) == (successor, b.pid)}
        assert by_a | by_b == set(vm_ids)
        # The VMs A was killed in the middle of were restarted, by B unless A had started them.
        assert mid <= (by_a if point == "started" else by_b)
        # Fencing tokens only grow, per VM, across both processes' attempts.
        for vm, attempts in _attempts(engine).items():
            generations = [g for g, _s, _p in attempts]
            assert generations == sorted(set(generations)), (vm, attempts)
        if point == "start":
            for vm in mid:
                assert [(s, p) for _g, s, p in _attempts(engine)[vm]] == [
                    ("ms1", a.pid),
                    (successor, b.pid),
                ]
