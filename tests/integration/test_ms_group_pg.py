"""Three management-server processes on one real PostgreSQL: ownership, takeover, fenced writes.

Each server is a process of :mod:`tests.integration.ms_group_worker` (a real
:class:`~cloudha.ManagementServer` in a group through
:class:`~cloudha.cluster.SqlServerRegistry`, on the PostgreSQL host table,
with fast settings: 1 s pings, 1 s heartbeats, a 4 s takeover timeout). The
300 hosts are simulated: every agent answers the poller unless a marker file
says the host is dead. Thirty hosts carry two HA VMs each, in the shared SQL
orchestrator of :mod:`tests.integration.sql_orchestrator`.

* SIGKILL one server once its dead hosts are Down, while it holds HA works:
  its hosts are owned by the others within the takeover timeout (+ 3 s), no
  host is investigated twice (the SQL evidence), every work is finished and
  every VM started once.
* SIGSTOP one past the timeout, then SIGCONT: its hosts moved meanwhile; it
  learns it lost its ownership (``ownership_lost`` in the evidence, from
  it), harms no host, registers again and the group converges.
* PostgreSQL restarted while the servers claim their hosts, and again while
  HA works are held: the servers reconnect, every host ends owned by exactly
  one live server, every work finishes, none runs twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.cluster import SqlServerRegistry
from cloudha.evidence_store import cloudha_evidence, evidence_metadata
from cloudha.ha.store import TERMINAL_STEPS, Step, cloudha_host, create_schema, op_ha_work
from cloudha.hoststore import SqlHostDirectory
from cloudha.model import Host, Vm, VmState
from cloudha.ports import ServerState
from cloudha.status import Status
from tests.integration.postgres import (  # noqa: F401
    PostgresServer,
    find_pg_bin,
    postgres_db,
    postgres_server,
)
from tests.integration.sql_orchestrator import hosts as orchestrator_hosts
from tests.integration.sql_orchestrator import (
    record_metadata,
    seed,
    start_attempts,
    starts,
    vms,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ms_group_worker.py")
HOSTS = [f"kvm-{i:03d}" for i in range(300)]
WITH_VMS = HOSTS[:30]
SERVERS = ("ms1", "ms2", "ms3")
TAKEOVER = 4.0
MARGIN = 3.0
_TERMINAL = [s.value for s in TERMINAL_STEPS]


def durable(url: str) -> str:
    """``url`` with ``synchronous_commit=on`` for every session it opens."""
    with_options = sa.engine.make_url(url).update_query_dict(
        {"options": "-c synchronous_commit=on"}
    )
    return with_options.render_as_string(hide_password=False)


class Group:
    """The server processes of one test, and what the test reads of the shared database."""

    def __init__(self, url: str, markers: Path, logs: Path) -> None:
        # The session server runs with synchronous_commit off (speed); a restart with
        # -m immediate then loses the last commits it acknowledged, which no production
        # PostgreSQL does. Every connection of the group asks for it on.
        self.url = durable(url)
        self.markers = markers
        self.logs = logs
        self.engine = sa.create_engine(self.url, pool_pre_ping=True, poolclass=sa.pool.NullPool)
        self.registry = SqlServerRegistry(self.engine, SystemClock())
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._logs: list[IO[str]] = []

    # -- processes ---------------------------------------------------------------

    def spawn(self, server_id: str, *, start_delay: float = 2.0) -> None:
        log = (self.logs / f"{server_id}.log").open("a")
        self._logs.append(log)
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                self.url,
                server_id,
                str(self.markers),
                "--start-delay",
                str(start_delay),
                "--takeover",
                str(TAKEOVER),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        self.procs[server_id] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"ready {server_id}", (line, self.log_tail(server_id))

    def signal(self, server_id: str, signum: int) -> None:
        self.procs[server_id].send_signal(signum)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()
        self.engine.dispose()

    def log_tail(self, server_id: str) -> str:
        path = self.logs / f"{server_id}.log"
        return "\n".join(path.read_text().splitlines()[-20:]) if path.exists() else ""

    # -- the database ----------------------------------------------------------------

    def summary(self) -> str:
        """Hosts by (status, owner, whether the owner is Up at the host's epoch), and servers."""
        try:
            up = self.up_epochs()
            rows = self.hosts().values()
            servers = self.registry.servers()
        except sa.exc.OperationalError as exc:
            return f"database unavailable: {exc}"
        counts = Counter(
            (
                row.status,
                row.management_server_id,
                up.get(str(row.management_server_id)) == row.owner_epoch,
            )
            for row in rows
        )
        shown = [(r.id, r.state.value, r.epoch, r.beat) for r in servers]
        odd = sorted(str(row.id) for row in rows if row.status != Status.UP.value)[:3]
        with self.engine.connect() as conn:
            trail = [
                (r.actor, r.kind, r.reason[:120])
                for r in conn.execute(
                    sa.select(cloudha_evidence)
                    .where(cloudha_evidence.c.host.in_(odd))
                    .order_by(cloudha_evidence.c.id)
                )
            ]
        return f"evidence of {odd}: {trail}\nhosts {dict(counts)}; servers {shown}"

    def kill_host(self, host_id: str) -> None:
        """The host dies: its agent stops answering, and the orchestrator places nothing on it."""
        with self.engine.begin() as conn:
            conn.execute(
                orchestrator_hosts.update()
                .where(orchestrator_hosts.c.host_id == host_id)
                .values(up=False)
            )
        (self.markers / host_id).touch()

    def hosts(self) -> dict[str, sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cloudha_host)).all()
        return {str(row.id): row for row in rows}

    def up_epochs(self) -> dict[str, int]:
        return {r.id: r.epoch for r in self.registry.servers() if r.state is ServerState.UP}

    def owned_by_live(self) -> dict[str, str] | None:
        """host -> owner when every host is owned by an Up server at its epoch, else None."""
        up = self.up_epochs()
        owners = {}
        for host_id, row in self.hosts().items():
            owner = row.management_server_id
            if owner is None or up.get(owner) != row.owner_epoch:
                return None
            owners[host_id] = str(owner)
        return owners

    def converged(self, dead: frozenset[str] = frozenset()) -> dict[str, str] | None:
        """Owners when every host is owned by a live server and the live ones are Up."""
        owners = self.owned_by_live()
        if owners is None:
            return None
        rows = self.hosts()
        if any(rows[h].status != Status.UP.value for h in HOSTS if h not in dead):
            return None
        return owners

    def open_works(self, server_id: str | None = None) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(op_ha_work)
            .where(op_ha_work.c.step.not_in(_TERMINAL))
        )
        if server_id is not None:
            stmt = stmt.where(op_ha_work.c.mgmt_server_id == server_id)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def works(self) -> list[sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(op_ha_work)).all())

    def evidence(self, kind: str) -> list[sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(cloudha_evidence)
                    .where(cloudha_evidence.c.kind == kind)
                    .order_by(cloudha_evidence.c.id)
                ).all()
            )

    def started(self) -> Counter[str]:
        with self.engine.connect() as conn:
            return Counter(str(v) for v in conn.execute(sa.select(starts.c.instance_id)).scalars())

    def trail(self, vm_ids: Iterable[str]) -> str:
        """The works, start attempts, starts and evidence of ``vm_ids``: a failure's story."""
        wanted = sorted(vm_ids)
        with self.engine.connect() as conn:
            tables = {
                "works": sa.select(op_ha_work).where(op_ha_work.c.instance_id.in_(wanted)),
                "attempts": sa.select(start_attempts).where(
                    start_attempts.c.instance_id.in_(wanted)
                ),
                "starts": sa.select(starts).where(starts.c.instance_id.in_(wanted)),
                "vms": sa.select(vms).where(vms.c.instance_id.in_(wanted)),
                "evidence": sa.select(cloudha_evidence)
                .where(cloudha_evidence.c.vm.in_(wanted))
                .order_by(cloudha_evidence.c.id),
            }
            lines = [
                f"{name}: {tuple(row)}"
                for name, stmt in tables.items()
                for row in conn.execute(stmt)
            ]
        return "\n".join(lines)

    def vm_states(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {
                str(row.instance_id): str(row.state)
                for row in conn.execute(sa.select(vms.c.instance_id, vms.c.state))
            }


def wait_for(what: str, check: Callable[[], object], timeout: float, group: Group) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except sa.exc.OperationalError:
            found = None  # the database restarting
        if found:
            return found
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s} ---\n{group.log_tail(s)}" for s in group.procs)
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {what}\n{group.summary()}\n{tails}"
            )
        time.sleep(0.1)


@pytest.fixture
def group(postgres_db: str, tmp_path: Path) -> Iterator[Group]:  # noqa: F811
    engine = sa.create_engine(postgres_db)
    try:
        create_schema(engine)
        record_metadata.create_all(engine)
        evidence_metadata.create_all(engine)
        SqlHostDirectory(engine, SystemClock()).sync(
            Host(h, cluster=f"c{i // 50}") for i, h in enumerate(HOSTS)
        )
        seed(
            engine,
            [(h, 20) for h in HOSTS],
            [
                Vm(f"{h}-vm{j}", host_id=h, last_host_id=h, ha_enabled=True, state=VmState.RUNNING)
                for h in WITH_VMS
                for j in range(2)
            ],
        )
    finally:
        engine.dispose()
    markers = tmp_path / "dead"
    markers.mkdir()
    found = Group(postgres_db, markers, tmp_path)
    try:
        yield found
    finally:
        found.close()


def _start_all(group: Group) -> dict[str, str]:
    for server_id in SERVERS:
        group.spawn(server_id)
    owners = wait_for("every host Up and owned", group.converged, 40.0, group)
    assert isinstance(owners, dict)
    counts = Counter(owners.values())
    assert set(counts) == set(SERVERS), counts  # every server took a share
    return owners


def _check_works_done(group: Group, dead: list[str]) -> None:
    """Every VM of the dead hosts got an HA work, each work is Done, each VM started once."""
    expected = {f"{h}-vm{j}" for h in dead for j in range(2)}

    def finished() -> bool:
        scheduled = {str(w.instance_id) for w in group.works()}
        return scheduled >= expected and group.open_works() == 0

    wait_for("every HA work of the dead hosts finished", finished, 40.0, group)
    works = group.works()
    undone = [w for w in works if w.instance_id in expected and w.step != Step.DONE.value]
    assert not undone, [(w.instance_id, w.type, w.step, w.reason) for w in undone]
    started = group.started()
    odd = [vm for vm in expected if started[vm] != 1]
    assert not odd, f"not started exactly once: {odd}\n{group.trail(odd)}"
    states = group.vm_states()
    assert all(states[vm] == VmState.RUNNING.value for vm in expected), states


def test_sigkill_one_server_its_hosts_and_works_move_to_the_others(group: Group) -> None:
    owners = _start_all(group)
    victim = "ms2"
    dead = sorted(h for h in WITH_VMS if owners[h] == victim)[:5]
    assert dead, owners
    for host in dead:
        group.kill_host(host)

    def decided_and_working() -> bool:
        # The kill comes once the victim's verdicts are in the database (each dead host
        # Down, its investigation recorded) and it holds HA works. Killed in the middle
        # of a verdict instead, a survivor rightly investigates that host again.
        rows = group.hosts()
        recorded = {str(r.host) for r in group.evidence("investigation")}
        return (
            all(rows[h].status == Status.DOWN.value for h in dead)
            and set(dead) <= recorded
            and group.open_works(victim) > 0
        )

    wait_for(f"{victim} done investigating, holding HA works", decided_and_working, 30.0, group)
    group.signal(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    group.procs[victim].wait(5)
    mine = [h for h, owner in owners.items() if owner == victim]

    def moved() -> bool:
        up = group.up_epochs()
        rows = group.hosts()
        return victim not in up and all(
            rows[h].management_server_id in up
            and up[str(rows[h].management_server_id)] == rows[h].owner_epoch
            for h in mine
        )

    wait_for(f"{victim}'s hosts owned by survivors", moved, TAKEOVER + MARGIN + 5, group)
    took = time.monotonic() - killed_at
    assert took <= TAKEOVER + MARGIN, f"takeover took {took:.1f}s"
    departed = group.evidence("ms_departed")
    assert [(r.details["server"], r.actor) for r in departed if r.details["server"] == victim]
    assert len([r for r in departed if r.details["server"] == victim]) == 1  # one survivor acted
    _check_works_done(group, dead)
    wait_for("the live hosts Up", lambda: group.converged(frozenset(dead)), 20.0, group)
    records = group.evidence("investigation")
    story = [
        (r.actor, r.host, round(r._mapping["t"] - killed_at, 3), r.details.get("result"))
        for r in records
    ]
    # No host investigated twice: each dead host once, by the victim, and nobody
    # investigated the hosts it left (Down, or Up and answering on their new owners).
    assert sorted((str(r.actor), str(r.host)) for r in records) == [(victim, h) for h in dead], (
        story
    )
    rows = group.hosts()
    assert all(rows[h].status == Status.DOWN.value for h in dead)


def test_sigstop_past_the_timeout_then_sigcont_acts_on_nothing_stale(group: Group) -> None:
    owners = _start_all(group)
    victim = "ms3"
    mine = [h for h, owner in owners.items() if owner == victim]
    group.signal(victim, signal.SIGSTOP)

    def moved() -> bool:
        rows = group.hosts()
        up = group.up_epochs()
        return victim not in up and all(rows[h].management_server_id != victim for h in mine)

    wait_for(f"{victim}'s hosts taken while it is stopped", moved, TAKEOVER + MARGIN + 5, group)
    record = next(r for r in group.registry.servers() if r.id == victim)
    assert record.state is ServerState.DEPARTED
    old_epoch = record.epoch
    time.sleep(1.0)
    group.signal(victim, signal.SIGCONT)

    def lost() -> list[sa.Row[tuple[object, ...]]]:
        return [r for r in group.evidence("ownership_lost") if r.actor == victim]

    found = wait_for(f"{victim}'s ownership_lost", lost, 15.0, group)
    assert isinstance(found, list)
    assert found
    # It registered again at a new epoch, and the group converges with every host Up.
    wait_for("every host Up and owned again", group.converged, 30.0, group)
    assert group.up_epochs()[victim] > old_epoch
    # Nothing it did with its stale ownership stuck: no host was investigated or
    # declared anything, no work was scheduled, and every row it owns names its new epoch.
    assert group.evidence("investigation") == []
    assert group.works() == []
    rows = group.hosts()
    assert all(row.status == Status.UP.value for row in rows.values())
    assert all(
        row.owner_epoch == group.up_epochs()[victim]
        for row in rows.values()
        if row.management_server_id == victim
    )


def _restart_postgres(server: PostgresServer) -> None:
    """``pg_ctl restart -m immediate`` on the same data directory, port and options."""
    argv = [str(find_pg_bin() / "pg_ctl"), "-D", str(server.root / "data"), "-m", "immediate"]
    argv += ["-w", "-t", "20", "-l", str(server.root / "postgres.log"), "restart"]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        assert runuser is not None
        argv = [runuser, "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd="/")
    assert done.returncode == 0, (done.stdout, done.stderr)


def test_postgres_restart_mid_claim_nothing_lost_or_duplicated(
    group: Group,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    with group.engine.connect() as conn:  # the commits survive the immediate restarts
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
    for server_id in SERVERS:
        group.spawn(server_id)

    def claiming() -> bool:
        owned = sum(1 for row in group.hosts().values() if row.management_server_id is not None)
        return 0 < owned < len(HOSTS)

    wait_for("the first claims", claiming, 20.0, group)
    _restart_postgres(postgres_server)
    owners = wait_for("every host Up and owned after the restart", group.converged, 40.0, group)
    assert isinstance(owners, dict)
    assert all(proc.poll() is None for proc in group.procs.values())
    dead = sorted(WITH_VMS)[:4]
    for host in dead:
        group.kill_host(host)
    wait_for("HA works held", lambda: group.open_works() > 0, 30.0, group)
    _restart_postgres(postgres_server)
    _check_works_done(group, dead)
    wait_for("the live hosts Up", lambda: group.converged(frozenset(dead)), 30.0, group)
    assert all(proc.poll() is None for proc in group.procs.values())
    assert set(group.up_epochs()) == set(SERVERS)
