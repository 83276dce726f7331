"""One management server of a group on a shared database, for the multi-server tests and bench.

Usage (``PYTHONPATH`` must hold the repository root)::

    python ms_group_worker.py URL SERVER_ID MARKERS [--start-delay S] [--workers N]
                              [--takeover S] [--load-size N]

A real :class:`~cloudha.ManagementServer` on ``SystemClock`` and its own
threads, a member of the group (:class:`~cloudha.cluster.SqlServerRegistry`)
on the database at URL, whose host table (:class:`~cloudha.hoststore.SqlHostDirectory`)
the caller filled. Its parts:

* the agents: the agent poller over a :class:`HostPoller` that answers for
  every host unless the file ``MARKERS/<host id>`` exists (the host is
  dead: the probe fails);
* the investigators: one that finds a marked host (and every VM whose id
  starts with ``<host id>-``) DEAD and every other one ALIVE; the fencer
  fences at once;
* the VMs: :class:`~tests.integration.sql_orchestrator.SqlOrchestrator` on
  the same database (the tables of ``record_metadata``, the caller creates
  and seeds them); each start sleeps ``--start-delay`` seconds before its
  transaction (an HA work is held that long);
* the evidence: :class:`~cloudha.evidence_store.SqlEvidenceStore` on the
  same database (the caller reads ``cloudha_evidence``).

Settings: ``ping.interval`` 1 s, ``ping.timeout`` 2.5, ``cloudha.ms.heartbeat.interval``
1 s, ``cloudha.ms.takeover.timeout`` ``--takeover`` (4 s), ``direct.agent.scan.interval``
1 s, ``direct.agent.load.size`` ``--load-size`` (50), ``ha.workers`` ``--workers``.

It prints ``ready SERVER_ID`` once started and runs until SIGTERM or SIGINT
(a graceful stop: exit 0; 1 when the stop fails).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.cluster import SqlServerRegistry
from cloudha.errors import ProbeConnectionError
from cloudha.evidence import EvidenceLog, TeeSink
from cloudha.evidence_store import SqlEvidenceStore
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.chain import FenceChain, InlineRunner
from cloudha.hoststore import SqlHostDirectory
from cloudha.investigators.base import Verdict
from cloudha.investigators.chain import InvestigatorChain
from cloudha.model import Host
from cloudha.ports import PingReport
from cloudha.server import ManagementServer
from cloudha.settings import Settings
from cloudha.testing import (
    FakeAgentGateway,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedInvestigator,
)
from tests.integration.sql_orchestrator import SqlOrchestrator

__all__ = ["MarkerPoller", "Markers", "main", "settings"]


class Markers(dict[str, Verdict]):
    """A host (or a VM ``<host>-...``) is DEAD while ``root/<host>`` exists, else ALIVE."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def dead(self, host_id: str) -> bool:
        return (self.root / host_id).exists()

    def get(self, key: str, default: Verdict | None = None) -> Verdict:  # type: ignore[override]
        host = key.split("-vm", 1)[0]
        return Verdict.DEAD if self.dead(host) else Verdict.ALIVE


class MarkerPoller:
    """A :class:`~cloudha.ports.HostPoller`: every host answers unless it is marked dead."""

    def __init__(self, markers: Markers) -> None:
        self.markers = markers

    def poll(self, host: Host, *, timeout: float) -> PingReport | None:
        if self.markers.dead(host.id):
            raise ProbeConnectionError(f"{host.id} is marked dead", host_id=host.id)
        return PingReport(host.id)


def settings(*, workers: int = 2, takeover: float = 4.0, load_size: int = 50) -> Settings:
    """The fast settings every server of the group runs with."""
    return Settings.from_mapping(
        {
            "ping.interval": 1,
            "ping.timeout": 2.5,
            "cloudha.ms.heartbeat.interval": 1,
            "cloudha.ms.takeover.timeout": takeover,
            "direct.agent.scan.interval": 1,
            "direct.agent.load.size": load_size,
            "ha.workers": workers,
            "time.to.sleep": 0.2,
            "investigate.retry.interval": 1,
            "restart.retry.interval": 1,
            "stop.retry.interval": 1,
        }
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ms_group_worker.py")
    parser.add_argument("url")
    parser.add_argument("server_id")
    parser.add_argument("markers", type=Path)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--takeover", type=float, default=4.0)
    parser.add_argument("--load-size", type=int, default=50)
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"{options.server_id} %(asctime)s %(name)s %(levelname)s %(message)s",
    )
    clock = SystemClock()
    engine = sa.create_engine(
        options.url,
        pool_size=options.workers + 10,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 2},
    )
    markers = Markers(options.markers)
    delay = options.start_delay

    def slow_start(point: str, vm_id: str) -> None:
        if point == "start" and delay > 0:
            time.sleep(delay)

    config = settings(
        workers=options.workers, takeover=options.takeover, load_size=options.load_size
    )
    store = SqlEvidenceStore.from_settings(engine, clock, config)
    server = ManagementServer(
        settings=config,
        clock=clock,
        directory=SqlHostDirectory(engine, clock),
        gateway=FakeAgentGateway(),
        orchestrator=SqlOrchestrator(engine, options.server_id, hook=slow_start),
        alerts=RecordingAlertSink(),
        engine=engine,
        evidence=TeeSink(EvidenceLog(capacity=1000), store),
        server_id=options.server_id,
        discover_plugins=False,
        investigators=InvestigatorChain([ScriptedInvestigator(clock, script=markers)]),
        fence_chain=FenceChain(
            [ScriptedFencer(clock, default=FenceOutcome.FENCED)],
            clock=clock,
            runner=InlineRunner(clock),
        ),
        poller=MarkerPoller(markers),
        registry=SqlServerRegistry(engine, clock),
        address=f"127.0.0.1 pid {os.getpid()}",
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store.start()
    server.start()
    print(f"ready {options.server_id}", flush=True)
    while not stop.wait(0.2):
        pass
    status = 0
    try:
        server.stop(15.0)
    except Exception as exc:
        print(f"{options.server_id}: stop failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    store.close()
    engine.dispose()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
