"""The durable libvirt orchestrator against two real libvirtd daemons (test driver, loopback).

The daemon's restart is a new :class:`LibvirtOrchestrator` on the same SQLite
file: it must know every VM, where it runs and its fencing token, and
discovery must bring in what the hosts run without it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa

from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator
from cloudha.ha.orchestrator import Planner, StaleGenerationError, StartParams
from cloudha.ha.vm_registry import SqlVmRegistry
from cloudha.model import VmState
from tests.integration.libvirtd import (
    LibvirtServer,
    libvirtd_server,  # noqa: F401
    start_libvirtd,
    stop_libvirtd,
)

pytestmark = pytest.mark.integration


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def host_b() -> Iterator[LibvirtServer]:
    daemon = start_libvirtd("libvirtd-registry-b")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)


@pytest.fixture
def names(libvirtd_server: LibvirtServer) -> Iterator[list[str]]:  # noqa: F811
    """Domain names made by the test; removed from the shared daemon afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        with contextlib.suppress(libvirt.libvirtError):
            dom = libvirtd_server.holder.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def active(server: LibvirtServer, name: str) -> bool:
    try:
        return bool(server.holder.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def test_a_restarted_daemon_knows_its_vms_and_their_fencing_tokens(
    libvirtd_server: LibvirtServer,  # noqa: F811
    host_b: LibvirtServer,
    names: list[str],
    tmp_path: Path,
) -> None:
    a, b = libvirtd_server, host_b
    web = f"web-{os.getpid()}"
    batch = f"batch-{os.getpid()}"
    names.extend([web, batch])
    a.holder.defineXML(domain_xml(web)).create()
    a.holder.defineXML(domain_xml(batch)).create()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cloudha.db'}")
    hosts = {"a": a.uri, "b": b.uri}

    def daemon() -> LibvirtOrchestrator:
        return LibvirtOrchestrator(hosts, capacity=10, timeout=5.0, registry=SqlVmRegistry(engine))

    first = daemon()
    found = first.discover(ha=lambda name: name.startswith("web-"))
    assert {web, batch} <= set(found.added)
    assert found.unreachable == {}
    assert [line for line in found.conflicts if "VM test " in line]
    vm = first.find_vm(web)
    assert vm is not None
    assert (vm.state, vm.host_id, vm.ha_enabled) == (VmState.RUNNING, "a", True)
    batch_vm = first.find_vm(batch)
    assert batch_vm is not None
    assert not batch_vm.ha_enabled
    # HA moves web to b (a "died"): stop it on a, start it on b with generation 5.
    first.advance_stop(vm, force=True)
    stopped = first.find_vm(web)
    assert stopped is not None
    params = StartParams(generation=5, avoid_hosts={"a"})
    assert first.advance_start(stopped, params, Planner.DEFAULT) == "b"
    assert active(b, web)
    assert not active(a, web)
    del first  # the daemon stops; nothing of its memory is kept

    second = daemon()
    moved = second.find_vm(web)
    assert moved is not None
    assert (moved.state, moved.host_id) == (VmState.RUNNING, "b")
    assert second.highest_generation(web) == 5
    again = second.discover(ha=lambda name: name.startswith("web-"))
    assert web not in again.added
    assert web not in again.moved  # it is where the registry says
    # (libvirt's test driver runs a domain "test" on every daemon: that one is a conflict.)
    assert not [line for line in again.conflicts if web in line]
    # The fencing token outlived the restart: a stale start is refused before libvirt is asked.
    second.advance_stop(moved, force=True)
    after = second.find_vm(web)
    assert after is not None
    with pytest.raises(StaleGenerationError):
        second.advance_start(after, StartParams(generation=5), Planner.DEFAULT)
    assert not active(a, web)
    assert not active(b, web)
    # b's definition is cleaned up by the test: undefine it there.
    with contextlib.suppress(libvirt.libvirtError):
        b.holder.lookupByName(web).undefine()


def test_a_host_down_during_the_restart_keeps_its_vms_recorded_there(
    libvirtd_server: LibvirtServer,  # noqa: F811
    names: list[str],
    tmp_path: Path,
) -> None:
    """A host that died while the daemon was down: its VMs stay Running there in the registry,
    so the HA path restarts them once the host is found Down."""
    a = libvirtd_server
    victim = start_libvirtd("libvirtd-registry-victim")
    name = f"db-{os.getpid()}"
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cloudha.db'}")
    hosts = {"a": a.uri, "v": victim.server.uri}
    try:
        victim.server.holder.defineXML(domain_xml(name)).create()
        first = LibvirtOrchestrator(hosts, capacity=10, timeout=3.0, registry=SqlVmRegistry(engine))
        first.discover(ha=lambda _name: True)
        del first
    finally:
        stop_libvirtd(victim)  # the host dies while the daemon is down
    second = LibvirtOrchestrator(hosts, capacity=10, timeout=3.0, registry=SqlVmRegistry(engine))
    found = second.discover(ha=lambda _name: True)
    assert set(found.unreachable) == {"v"}
    vm = second.find_vm(name)
    assert vm is not None
    assert (vm.state, vm.host_id, vm.ha_enabled) == (VmState.RUNNING, "v", True)
    assert [v.id for v in second.list_vms_on_host("v")] == [name]
