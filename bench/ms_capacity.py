"""P12: hosts one management-server process monitors at 1 s pings, and its CPU share.

One real :class:`~cloudha.ManagementServer` (``SystemClock``, its own
threads) on a real host table (:class:`~cloudha.hoststore.SqlHostDirectory`)
on SQLite or on a throwaway PostgreSQL, with N hosts at ``ping.interval``
1 s (``ping.timeout`` 2.5). Two ways the pings come in, as in production:

* ``agents``: the hosts' agents ping by themselves (CloudStack's agents):
  one feeder thread in the process calls ``server.agents.ping_received``
  for every host once a second, spread evenly over the second (its own
  cost is counted; a real connection layer's sockets are not);
* ``poller``: ``cloudha run``'s agent poller probes every owned host once
  a second through a :class:`~cloudha.ports.HostPoller` that answers at
  once (:class:`~cloudha.testing.FakeHostPoller`), on its
  ``cloudha.poll.workers`` threads, re-reading the owned hosts from the
  table every round.

Every host is connected first, in bulk (not timed): one UPDATE makes every
row Up and owned by the server, and each host enters the ping map as its
agent's ``AgentConnected`` + ``Ready`` would leave it (the real path costs
five transactions per host, a minute of commits at 10,000 hosts). Then the
process's CPU time (``time.process_time``: every thread) is read over a
window of wall time: the figure is CPU seconds per wall second (1.0 = one
core busy). The run also checks that every host stayed Up: no
``behind_on_ping`` record in the window, and every row of the table Up at
the end. The database server's own CPU (PostgreSQL runs in other processes)
is not counted.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from ha_queue import on_postgres

from cloudha.clock import SystemClock
from cloudha.evidence import Evidence, EvidenceLog
from cloudha.ha.store import cloudha_host, create_schema
from cloudha.hoststore import SqlHostDirectory
from cloudha.model import Host
from cloudha.ports import PingReport
from cloudha.server import ManagementServer
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    FakeAgentGateway,
    FakeHostPoller,
    InMemoryOrchestrator,
    RecordingAlertSink,
)

__all__ = ["CapacityLine", "CapacityResult", "Mode", "measure", "p12_lines"]

Mode = Literal["agents", "poller"]

SERVER_ID = "ms-bench"
PING_INTERVAL = 1.0
PING_TIMEOUT = 2.5
_SLICES = 100
"""The feeder pings 1/_SLICES of the hosts every ping.interval/_SLICES seconds."""


@dataclass(frozen=True)
class CapacityResult:
    hosts: int
    mode: Mode
    cpu_per_wall: float
    window: float
    connect_seconds: float
    behind: int
    up_at_end: int
    feeder_late: float

    @property
    def all_up(self) -> bool:
        return self.behind == 0 and self.up_at_end == self.hosts


class _Feeder:
    """One thread standing in for every agent: 1/_SLICES of the hosts per 1/_SLICES second."""

    def __init__(self, server: ManagementServer, hosts: Sequence[str]) -> None:
        self.ping = server.agents.ping_received
        self.slices = [list(hosts[i::_SLICES]) for i in range(_SLICES)]
        self.stop = threading.Event()
        self.late = 0.0
        self.thread = threading.Thread(target=self._run, name="bench-feeder", daemon=True)

    def _run(self) -> None:
        step = PING_INTERVAL / _SLICES
        due = time.monotonic()
        index = 0
        ping = self.ping
        while not self.stop.is_set():
            pause = due - time.monotonic()
            if pause > 0 and self.stop.wait(pause):
                return
            self.late = max(self.late, time.monotonic() - due)
            for host in self.slices[index]:
                ping(PingReport(host))
            index = (index + 1) % _SLICES
            due += step


def _connect_all(server: ManagementServer, engine: sa.Engine, ids: Sequence[str]) -> None:
    """Every host connected in bulk: what ``agent_connected`` leaves behind, without its
    five transactions per host (a minute of commits at 10,000 hosts): one UPDATE makes every
    row Up, owned by the server, pinged now; each host enters the ping map as if it pinged."""
    with engine.begin() as conn:
        conn.execute(
            cloudha_host.update().values(
                status=Status.UP.value,
                management_server_id=server.server_id,
                last_ping=server.clock.now().timestamp(),
                update_count=cloudha_host.c.update_count + 1,
            )
        )
    for host in ids:
        server.ping_map.connect(host)


def _up_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(cloudha_host)
                .where(cloudha_host.c.status == Status.UP.value)
            ).scalar_one()
        )


def measure(url: str, hosts: int, mode: Mode, *, window: float) -> CapacityResult:
    """One server with ``hosts`` hosts on ``url``; CPU per wall second over ``window`` seconds."""
    clock = SystemClock()
    engine = sa.create_engine(url, pool_size=20, max_overflow=10)
    try:
        create_schema(engine)
        directory = SqlHostDirectory(engine, clock)
        ids = [f"kvm-{i:05d}" for i in range(hosts)]
        directory.sync(Host(h, cluster=f"c{i // 100}") for i, h in enumerate(ids))
        settings = Settings.from_mapping(
            {"ping.interval": PING_INTERVAL, "ping.timeout": PING_TIMEOUT}
        )
        evidence = EvidenceLog(capacity=10_000)
        poller = FakeHostPoller(dict.fromkeys(ids, True)) if mode == "poller" else None
        server = ManagementServer(
            settings=settings,
            clock=clock,
            directory=directory,
            gateway=FakeAgentGateway(healthy=dict.fromkeys(ids, True)),
            orchestrator=InMemoryOrchestrator(),
            alerts=RecordingAlertSink(),
            engine=engine,
            evidence=evidence,
            server_id=SERVER_ID,
            discover_plugins=False,
            poller=poller,
        )
        behind: list[str] = []
        counting = threading.Event()

        def on_record(record: Evidence) -> None:
            if record.kind == "behind_on_ping" and counting.is_set():
                behind.append(record.host or "")

        unsubscribe = evidence.subscribe(on_record)
        feeder = _Feeder(server, ids) if mode == "agents" else None
        began = time.perf_counter()
        server.start()  # no host has connected yet: nothing to recover
        try:
            _connect_all(server, engine, ids)
            if feeder is not None:
                feeder.thread.start()
            connect_seconds = time.perf_counter() - began
            time.sleep(2 * PING_INTERVAL)  # settle: the first rounds after connecting
            if feeder is not None:
                feeder.late = 0.0
            counting.set()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            time.sleep(window)
            wall1, cpu1 = time.perf_counter(), time.process_time()
            counting.clear()
        finally:
            if feeder is not None:
                feeder.stop.set()
                feeder.thread.join(5.0)
            server.stop(10.0)
            unsubscribe()
        return CapacityResult(
            hosts=hosts,
            mode=mode,
            cpu_per_wall=(cpu1 - cpu0) / (wall1 - wall0),
            window=wall1 - wall0,
            connect_seconds=connect_seconds,
            behind=len(behind),
            up_at_end=_up_rows(engine),
            feeder_late=0.0 if feeder is None else feeder.late,
        )
    finally:
        engine.dispose()


_SHM = Path("/dev/shm")


@contextlib.contextmanager
def _sqlite_url() -> Iterator[str]:
    """A SQLite file on tmpfs when there is one: connecting costs five commits per host, each
    a sync on a disk (a minute at 10,000 hosts); the measured window writes nothing."""
    where = str(_SHM) if _SHM.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="cloudha-capacity-", dir=where) as tmp:
        yield f"sqlite:///{Path(tmp) / 'cloudha.db'}"


@dataclass(frozen=True)
class CapacityLine:
    backend: str
    mode: Mode
    hosts: int
    cpu_per_wall: float
    """NaN when not every host stayed Up (or nothing was measured)."""
    detail: str


def _line(backend: str, result: CapacityResult) -> CapacityLine:
    up = (
        "every host stayed Up"
        if result.all_up
        else f"NOT ALL UP: {result.behind} behind_on_ping, {result.up_at_end} Up at the end"
    )
    late = f", feeder late ≤ {result.feeder_late * 1000:.0f} ms" if result.mode == "agents" else ""
    return CapacityLine(
        backend,
        result.mode,
        result.hosts,
        result.cpu_per_wall if result.all_up else math.nan,
        f"{result.cpu_per_wall:.3f} CPU s/s over {result.window:.1f} s; {up}{late};"
        f" start + bulk connect {result.connect_seconds:.1f} s",
    )


def p12_lines(
    sizes: Sequence[int], *, window: float, modes: Sequence[Mode] = ("agents", "poller")
) -> list[CapacityLine]:
    """Every size and mode on PostgreSQL, the largest also on SQLite (a PostgreSQL that cannot
    start gives NaN lines with why)."""
    lines: list[CapacityLine] = []
    for hosts in sizes[-1:]:
        for mode in modes:
            with _sqlite_url() as url:
                lines.append(_line("SQLite", measure(url, hosts, mode, window=window)))

    def on_pg(url: str) -> list[CapacityLine]:
        found = []
        for hosts in sizes:
            for mode in modes:
                # One database for every run: the host table is synced to each size.
                with sa.create_engine(url).begin() as conn:
                    conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
                found.append(_line("PostgreSQL", measure(url, hosts, mode, window=window)))
        return found

    measured = on_postgres(["bench_capacity"], on_pg)
    if isinstance(measured, str):
        for hosts in sizes:
            for mode in modes:
                lines.append(
                    CapacityLine("PostgreSQL", mode, hosts, math.nan, f"NOT MEASURED: {measured}")
                )
    else:
        lines.extend(measured)
    return lines


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 5000, 10_000])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--mode", choices=["agents", "poller"], nargs="+")
    args = parser.parse_args()
    modes: tuple[Mode, ...] = tuple(args.mode) if args.mode else ("agents", "poller")
    for line in p12_lines(args.hosts, window=args.window, modes=modes):
        print(
            f"{line.backend:10} {line.mode:6} {line.hosts:6} {line.cpu_per_wall:.3f}  {line.detail}"
        )
