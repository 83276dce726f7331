"""P14: takeover time after a management server dies ÷ ``cloudha.ms.takeover.timeout``.

Three real server processes of ``tests/integration/ms_group_worker.py`` (a
:class:`~cloudha.ManagementServer` in a group through
:class:`~cloudha.cluster.SqlServerRegistry`, the agent poller over simulated
hosts that all answer) share one throwaway PostgreSQL and its host table of N
hosts, with 1 s pings, 1 s heartbeats (``cloudha.ms.heartbeat.interval``), a
1 s scan interval, ``direct.agent.load.size`` 50 and a takeover timeout of
``timeout`` seconds. The hosts enter the table once the three servers are
up (so that none starts alone and claims them all). Once every host is
owned by an Up server at its epoch, one server is killed with SIGKILL; the
bench then polls ``cloudha_host`` every 20 ms until every host the victim
owned is owned by a live survivor at that survivor's current epoch (and the
victim's registry row is no longer Up). Measured: seconds from just after
the kill to that moment, divided by the timeout.

What the measured time holds: the survivors count the victim's silence from
the last heartbeat they saw change, which came up to one heartbeat interval
(and one of their own rounds) before the kill, so the declaration follows the
kill by a little less or a little more than the timeout (it is made when
due: survivors run quarter-interval rounds while a peer is suspect); then
the winner claims its fair share at once, and the other survivor, which sees
the departure within a quarter interval, claims the rest. Each kill runs
on a fresh database with fresh processes; the figure is the median of
``rounds`` kills, the victim taking turns.

Also checked each round: the victim was declared departed exactly once (one
``ms_departed`` record in the SQL evidence), by a survivor.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from ha_queue import on_postgres

from cloudha.clock import SystemClock
from cloudha.cluster import SqlServerRegistry
from cloudha.evidence_store import cloudha_evidence, evidence_metadata
from cloudha.ha.store import cloudha_host, create_schema
from cloudha.hoststore import SqlHostDirectory
from cloudha.model import Host
from cloudha.ports import ServerState
from tests.integration.sql_orchestrator import record_metadata

__all__ = ["TakeoverLine", "TakeoverRound", "measure_takeover", "p14_lines"]

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "integration" / "ms_group_worker.py"
SERVERS = ("ms1", "ms2", "ms3")


@dataclass(frozen=True)
class TakeoverRound:
    victim: str
    hosts_moved: int
    seconds: float
    """From just after the SIGKILL until every host of the victim is owned by a live survivor."""
    declared: float
    """From the SIGKILL until the ``ms_departed`` record (its monotonic time stamp ``t``)."""
    silent: float
    """The silence the winner counted when it declared the victim departed (its evidence)."""
    by: str


class _Group:
    """Three worker processes on one database, and what the bench reads of it."""

    def __init__(self, url: str, markers: Path, *, timeout: float) -> None:
        self.engine = sa.create_engine(url, pool_size=2, pool_pre_ping=True)
        self.registry = SqlServerRegistry(self.engine, SystemClock())
        self.procs: dict[str, subprocess.Popen[str]] = {}
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for server_id in SERVERS:
            argv = [sys.executable, str(WORKER), url, server_id, str(markers)]
            argv += ["--takeover", str(timeout), "--workers", "1", "--load-size", "50"]
            self.procs[server_id] = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=REPO,
            )
        for server_id, proc in self.procs.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != f"ready {server_id}":
                raise RuntimeError(f"bench: server {server_id} did not start")

    def owners(self) -> dict[str, str] | None:
        """host -> owner when every host is owned by an Up server at its epoch, else None."""
        up = {r.id: r.epoch for r in self.registry.servers() if r.state is ServerState.UP}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    cloudha_host.c.id,
                    cloudha_host.c.management_server_id,
                    cloudha_host.c.owner_epoch,
                )
            ).all()
        owners = {}
        for row in rows:
            owner = row.management_server_id
            if owner is None or up.get(str(owner)) != row.owner_epoch:
                return None
            owners[str(row.id)] = str(owner)
        return owners

    def wait_owned(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (owners := self.owners()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench: the hosts were not all owned within {timeout:g} s")
            time.sleep(0.02)
        return owners

    def departed(self, victim: str) -> list[sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(cloudha_evidence).where(cloudha_evidence.c.kind == "ms_departed")
            ).all()
        return [r for r in rows if r.details.get("server") == victim]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.engine.dispose()


def _prepare(url: str) -> None:
    """The schema and the tables the workers use (no host yet)."""
    engine = sa.create_engine(url)
    try:
        create_schema(engine)
        evidence_metadata.create_all(engine)
        record_metadata.create_all(engine)  # the workers' orchestrator tables (no VMs here)
    finally:
        engine.dispose()


def _add_hosts(engine: sa.Engine, hosts: int) -> None:
    """The host table, filled once every server is up (so none starts alone and takes all)."""
    SqlHostDirectory(engine, SystemClock()).sync(
        Host(f"kvm-{i:05d}", cluster=f"c{i // 50}") for i in range(hosts)
    )


@contextlib.contextmanager
def _group(url: str, *, timeout: float) -> Iterator[_Group]:
    with tempfile.TemporaryDirectory(prefix="cloudha-takeover-") as markers:
        group = _Group(url, Path(markers), timeout=timeout)
        try:
            yield group
        finally:
            group.close()


def measure_takeover(url: str, *, hosts: int, timeout: float, victim: str) -> TakeoverRound:
    """One round on a fresh database at ``url``: start three servers, kill ``victim``, time."""
    _prepare(url)
    with _group(url, timeout=timeout) as group:
        _add_hosts(group.engine, hosts)
        owners = group.wait_owned(30.0 + hosts / 50)
        time.sleep(1.5)  # a few heartbeats of the settled group before the kill
        owners = group.wait_owned(10.0)
        counts = Counter(owners.values())
        if not counts[victim]:
            # Rare: a server claimed every host before its peers' first round.
            victim = counts.most_common(1)[0][0]
        mine = sorted(h for h, owner in owners.items() if owner == victim)
        group.procs[victim].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        killed_clock = time.monotonic()  # the evidence's t: CLOCK_MONOTONIC, system-wide
        limit = killed + 3 * timeout + 10
        while True:
            current = group.owners()
            if current is not None and all(current[h] != victim for h in mine):
                seconds = time.perf_counter() - killed
                break
            if time.perf_counter() > limit:
                raise RuntimeError(f"bench: {victim}'s hosts not taken over in {limit - killed} s")
            time.sleep(0.02)
        group.procs[victim].wait(5)
        records = group.departed(victim)
        if len(records) != 1 or records[0].actor == victim:
            raise RuntimeError(f"bench: {victim} declared departed {len(records)} times")
        record = records[0]
        return TakeoverRound(
            victim,
            len(mine),
            seconds,
            float(record._mapping["t"]) - killed_clock,
            float(record.details["silent"]),
            str(record.actor),
        )


@dataclass(frozen=True)
class TakeoverLine:
    """P14: the median takeover time ÷ the timeout (NaN when not measured)."""

    hosts: int
    rounds: int
    ratio: float
    detail: str


def p14_lines(*, hosts: int, timeout: float, rounds: int) -> list[TakeoverLine]:
    """``rounds`` kills, each on a fresh database of one throwaway PostgreSQL."""

    def run(*urls: str) -> list[TakeoverRound]:
        return [
            measure_takeover(url, hosts=hosts, timeout=timeout, victim=SERVERS[i % len(SERVERS)])
            for i, url in enumerate(urls)
        ]

    measured = on_postgres(["bench_takeover"] * rounds, run)
    if isinstance(measured, str):
        return [TakeoverLine(hosts, rounds, math.nan, f"NOT MEASURED: {measured}")]
    median = statistics.median(r.seconds for r in measured)
    each = ", ".join(
        f"{r.victim} {r.hosts_moved} hosts {r.seconds:.2f} s (declared departed after"
        f" {r.declared:.2f} s, silent {r.silent:.2f} s)"
        for r in measured
    )
    return [
        TakeoverLine(
            hosts,
            rounds,
            median / timeout,
            (
                f"3 servers, {hosts} hosts, 1 s pings and heartbeats, timeout {timeout:g} s;"
                f" median {median:.2f} s of {rounds} SIGKILLs: {each}"
            ),
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for line in p14_lines(hosts=args.hosts, timeout=args.timeout, rounds=args.rounds):
        print(f"{line.ratio:.3f}  {line.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
