"""The HA manager end to end on real components.

PostgreSQL (migrated with the shipped Alembic scripts) holds the queue; two
real libvirtd daemons (test driver, loopback) are hosts "a" and "b"; the
manager runs its own worker threads on the system clock; the investigator
and the fencer are the real libvirt ones. Host "a" is declared Down.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator

import attrs
import libvirt
import pytest
import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.fencing.chain import FenceChain
from cloudha.fencing.libvirt import LibvirtFencer
from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator
from cloudha.ha.manager import HighAvailabilityManager
from cloudha.ha.store import Step, WorkStore, upgrade
from cloudha.investigators import InvestigatorChain
from cloudha.investigators.hypervisor import HypervisorInvestigator
from cloudha.model import Host, ReasonType, VmState
from cloudha.ports import DomainState, HypervisorReport
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import InMemoryHostDirectory, RecordingAlertSink
from cloudha.transport.libvirt import LibvirtHypervisorProbe
from tests.integration.libvirtd import (
    LibvirtServer,
    libvirtd_server,  # noqa: F401
    start_libvirtd,
    stop_libvirtd,
)
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

_names = itertools.count(1)


class PerHostProbe:
    """The real libvirt probe, one URI per host id (both daemons listen on 127.0.0.1)."""

    def __init__(self, uris: dict[str, str]) -> None:
        self.probes = {h: LibvirtHypervisorProbe(uri) for h, uri in uris.items()}

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        return self.probes[host.id].probe_host(host, timeout=timeout)

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        return self.probes[host.id].domain_state(host, domain, timeout=timeout)

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        return self.probes[host.id].destroy_domain(host, domain, timeout=timeout)


@pytest.fixture(scope="module")
def host_b() -> Iterator[LibvirtServer]:
    daemon = start_libvirtd("libvirtd-e2e-b")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)


def active_on(server: LibvirtServer, name: str) -> bool:
    try:
        return bool(server.holder.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met within the time limit", pytrace=False)
        time.sleep(0.05)


@attrs.frozen
class World:
    a: LibvirtServer
    b: LibvirtServer
    names: list[str]
    orchestrator: LibvirtOrchestrator
    manager: HighAvailabilityManager
    directory: InMemoryHostDirectory
    evidence: EvidenceLog
    alerts: RecordingAlertSink
    engine: sa.Engine

    def host_a_goes_down(self) -> None:
        host_a = self.directory.find_host("a")
        assert host_a is not None
        self.manager.schedule_restart_for_vms_on_host(
            host_a, investigate=True, reason=ReasonType.HOST_DOWN
        )

    def steps(self, vm: str) -> list[str]:
        return [str(r.details["step"]) for r in self.evidence.records(kind="ha_work") if r.vm == vm]


@pytest.fixture
def world(
    postgres_db: str,  # noqa: F811
    libvirtd_server: LibvirtServer,  # noqa: F811
    host_b: LibvirtServer,
) -> Iterator[World]:
    a, b = libvirtd_server, host_b
    names = [f"cloudha-e2e-{os.getpid()}-{next(_names)}" for _ in range(2)]
    orchestrator = LibvirtOrchestrator({"a": a.uri, "b": b.uri}, capacity=4, timeout=5.0)
    for index, name in enumerate(names):
        xml = (
            f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        )
        a.holder.defineXML(xml).create()
        orchestrator.register_vm(f"vm{index}", xml, host_id="a")
    engine = sa.create_engine(postgres_db)
    upgrade(engine)
    clock = SystemClock()
    probe = PerHostProbe({"a": a.uri, "b": b.uri})
    directory = InMemoryHostDirectory(
        [
            Host("a", status=Status.DOWN, private_ip="127.0.0.1"),
            Host("b", status=Status.UP, private_ip="127.0.0.1"),
        ]
    )
    evidence = EvidenceLog()
    alerts = RecordingAlertSink()
    manager = HighAvailabilityManager(
        server_id="ms-e2e",
        store=WorkStore(engine, clock),
        orchestrator=orchestrator,
        directory=directory,
        investigators=InvestigatorChain([HypervisorInvestigator(clock, probe=probe, timeout=5.0)]),
        fence_chain=FenceChain(
            [LibvirtFencer(clock, control=probe, timeout=10.0)],
            clock=clock,
            recorder=Recorder(evidence, clock, "ms-e2e"),
        ),
        settings=Settings.from_mapping({"ha.workers": 2, "investigate.retry.interval": 3600}),
        clock=clock,
        alerts=alerts,
        evidence=evidence,
    )
    manager.start()
    try:
        yield World(a, b, names, orchestrator, manager, directory, evidence, alerts, engine)
    finally:
        with contextlib.suppress(Exception):
            manager.stop()
        engine.dispose()
        for server in (a, b):
            for name in names:
                with contextlib.suppress(libvirt.libvirtError):
                    dom = server.holder.lookupByName(name)
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()


def test_a_vm_whose_domain_still_runs_on_the_down_host_is_not_started_twice(
    world: World,
) -> None:
    # The agent of host a is gone (Down) but its hypervisor answers and the
    # domains run: the investigator says ALIVE, and nothing is started on b.
    world.host_a_goes_down()
    wait_for(lambda: all("Rescheduled" in world.steps(f"vm{i}") for i in range(2)))
    for name in world.names:
        assert active_on(world.a, name)
        assert not active_on(world.b, name)
    reasons = [r.reason for r in world.evidence.records(kind="ha_work") if r.vm == "vm0"]
    assert reasons[-1] == "the VM is alive (LibvirtInvestigator) but host a is Down"


def test_a_vm_on_a_down_host_is_fenced_by_libvirt_and_restarted_on_the_other_host(
    world: World,
) -> None:
    # No investigator can tell here, so the real libvirt fencer must destroy
    # the domains on a before they start on b.
    world.manager.investigators = InvestigatorChain([])
    world.host_a_goes_down()
    wait_for(lambda: all(world.steps(f"vm{i}")[-1:] == ["Done"] for i in range(2)))
    for index, name in enumerate(world.names):
        assert not active_on(world.a, name)
        assert active_on(world.b, name)
        vm = world.orchestrator.find_vm(f"vm{index}")
        assert vm is not None
        assert (vm.state, vm.host_id) == (VmState.RUNNING, "b")
        assert world.steps(f"vm{index}") == ["Investigating", "Fencing", "Scheduled", "Done"]
        # The start carried the claim's fencing token.
        assert world.orchestrator.highest_generation(f"vm{index}") == 1
    fences = world.evidence.records(kind="fence")
    assert {(r.vm, r.details["fencer"], r.details["outcome"]) for r in fences} == {
        ("vm0", "LibvirtFencer", "FENCED"),
        ("vm1", "LibvirtFencer", "FENCED"),
    }
    assert sum(s.startswith("HA starting VM") for s in world.alerts.subjects()) == 2
    with world.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT step, mgmt_server_id FROM op_ha_work")).all()
    assert sorted(rows) == [(Step.DONE.value, "ms-e2e")] * 2
