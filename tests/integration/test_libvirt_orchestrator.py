"""The libvirt reference orchestrator against real libvirtd daemons (test driver, loopback)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import libvirt
import pytest

from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    Planner,
    StaleGenerationError,
    StartParams,
    VmOrchestrator,
)
from cloudha.model import Vm, VmState
from tests.integration.libvirtd import (
    LibvirtServer,
    free_port,
    libvirtd_server,  # noqa: F401
    start_libvirtd,
    stop_libvirtd,
    stoppable_libvirtd,  # noqa: F401
)
from tests.unit.orchestrator_contract import check_orchestrator

pytestmark = pytest.mark.integration

_names = itertools.count(1)


def domain_xml(name: str, domain_uuid: str | None = None) -> str:
    return (
        f"<domain type='test'><name>{name}</name><uuid>{domain_uuid or uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


@pytest.fixture(scope="module")
def second_libvirtd() -> Iterator[LibvirtServer]:
    """A second daemon, so that "host b" really is another libvirtd."""
    daemon = start_libvirtd("libvirtd-b")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)


@pytest.fixture
def pair(
    libvirtd_server: LibvirtServer,  # noqa: F811
    second_libvirtd: LibvirtServer,
) -> Iterator[tuple[LibvirtServer, LibvirtServer, list[str]]]:
    """Hosts a and b; domains named in the list are destroyed and undefined afterwards."""
    created: list[str] = []
    yield libvirtd_server, second_libvirtd, created
    for server in (libvirtd_server, second_libvirtd):
        for name in created:
            with contextlib.suppress(libvirt.libvirtError):
                dom = server.holder.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()


def running_on(server: LibvirtServer, name: str) -> bool:
    try:
        return bool(server.holder.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def domains(server: LibvirtServer, *, active: bool) -> set[str]:
    """Names of the domains libvirt itself lists on ``server`` (active ones, or all defined)."""
    flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active else 0
    return {dom.name() for dom in server.holder.listAllDomains(flags)}


def orchestrator(a: LibvirtServer, b: LibvirtServer) -> LibvirtOrchestrator:
    return LibvirtOrchestrator({"a": a.uri, "b": b.uri}, capacity=2, timeout=5.0)


def deploy(orch: LibvirtOrchestrator, server: LibvirtServer, created: list[str]) -> str:
    """Define and start a fresh domain on host a (through the holder) and register it."""
    n = next(_names)
    name = f"cloudha-orch-{os.getpid()}-{n}"
    created.append(name)
    xml = domain_xml(name)
    server.holder.defineXML(xml).create()
    orch.register_vm(f"vm-{n}", xml, host_id="a")
    return f"vm-{n}"


def deployed(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> tuple[LibvirtServer, LibvirtServer, LibvirtOrchestrator, Vm]:
    """A fresh orchestrator over the pair and a VM running on host a."""
    a, b, created = pair
    orch = orchestrator(a, b)
    vm = orch.find_vm(deploy(orch, a, created))
    assert vm is not None
    return a, b, orch, vm


def test_the_libvirt_orchestrator_meets_the_contract(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, b, created = pair

    def make() -> tuple[VmOrchestrator, str, Sequence[str]]:
        orch = orchestrator(a, b)
        return orch, deploy(orch, a, created), ["a", "b"]

    check_orchestrator(make)


def test_stop_then_restart_elsewhere_is_seen_by_libvirt_and_fenced_by_generation(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, b, orch, vm = deployed(pair)
    vm_id = vm.id
    name = vm.name
    assert running_on(a, name)

    orch.advance_stop(vm, force=True)
    assert not running_on(a, name)  # inactive, still defined on a
    assert a.holder.lookupByName(name).isActive() == 0

    host = orch.advance_start(
        vm, StartParams(generation=1, avoid_hosts=frozenset({"a"})), Planner.DEFAULT
    )
    assert host == "b"
    assert running_on(b, name)
    assert not running_on(a, name)
    assert [v.id for v in orch.list_vms_on_host("b")] == [vm_id]

    # A late duplicate of generation 1: refused, and nothing new runs anywhere.
    active_a, active_b = a.holder.numOfDomains(), b.holder.numOfDomains()
    orch.advance_stop(vm, force=True)  # even with the VM stopped again
    assert not running_on(b, name)
    with pytest.raises(StaleGenerationError):
        orch.advance_start(vm, StartParams(generation=1), Planner.HA)
    assert not running_on(a, name)
    assert not running_on(b, name)
    assert (a.holder.numOfDomains(), b.holder.numOfDomains()) == (active_a, active_b - 1)
    assert orch.highest_generation(vm_id) == 1

    # Generation 2 starts it on the first host with room.
    assert orch.advance_start(vm, StartParams(generation=2), Planner.HA) == "a"
    assert running_on(a, name)
    after = orch.find_vm(vm_id)
    assert after is not None
    assert (after.state, after.host_id) == (VmState.RUNNING, "a")
    orch.advance_stop(after, force=False)  # graceful: the test driver powers off at once
    assert not running_on(a, name)


def test_a_domain_already_running_on_the_chosen_host_is_not_started_twice(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, _b, orch, vm = deployed(pair)
    vm_id = vm.id
    # The registry is told it stopped, but the domain still runs on a.
    orch.advance_stop(vm, force=True)
    a.holder.lookupByName(vm.name).create()
    with pytest.raises(ConcurrentOperationError, match="already running on host a"):
        orch.advance_start(vm, StartParams(generation=1), Planner.DEFAULT)
    # The registry now says where it runs, so no later start puts it elsewhere.
    seen = orch.find_vm(vm_id)
    assert seen is not None
    assert (seen.state, seen.host_id) == (VmState.RUNNING, "a")
    assert orch.highest_generation(vm_id) == 1
    with pytest.raises(ConcurrentOperationError):
        orch.advance_start(seen, StartParams(generation=2, avoid_hosts={"a"}), Planner.HA)
    assert running_on(a, vm.name)
    assert not running_on(_b, vm.name)


def test_a_domain_still_running_on_another_host_it_was_defined_on_is_not_started_twice(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, b, created = pair
    orch = LibvirtOrchestrator(
        {"a": a.uri, "b": b.uri}, capacity=2, host_tags={"b": {"ha"}}, timeout=5.0
    )
    vm = orch.find_vm(deploy(orch, a, created))
    assert vm is not None
    orch.advance_stop(vm, force=True)
    a.holder.lookupByName(vm.name).create()  # it runs on a again, behind the registry's back
    # The tag picks b, but a is not among the hosts the caller proved dead.
    with pytest.raises(ConcurrentOperationError, match="already running on host a"):
        orch.advance_start(vm, StartParams(generation=1, ha_tag="ha"), Planner.HA)
    assert not running_on(b, vm.name)
    seen = orch.find_vm(vm.id)
    assert seen is not None
    assert (seen.state, seen.host_id) == (VmState.RUNNING, "a")
    # Once a is proved dead (avoided), the same start goes ahead on b.
    a.holder.lookupByName(vm.name).destroy()
    orch.advance_stop(seen, force=True)
    stopped = orch.find_vm(vm.id)
    assert stopped is not None
    host = orch.advance_start(stopped, StartParams(generation=2, avoid_hosts={"a"}), Planner.HA)
    assert host == "b"
    assert running_on(b, vm.name)
    assert not running_on(a, vm.name)
    orch.advance_stop(orch.find_vm(vm.id) or stopped, force=True)


def test_an_unreachable_host_is_a_connection_error_and_the_vm_stays_stopped(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, _b, created = pair
    dead = f"test+tcp://127.0.0.1:{free_port()}/default"
    orch = LibvirtOrchestrator({"a": a.uri, "z": dead}, capacity=2, timeout=5.0)
    vm_id = deploy(orch, a, created)
    vm = orch.find_vm(vm_id)
    assert vm is not None
    orch.advance_stop(vm, force=True)
    with pytest.raises(ProbeConnectionError) as exc:
        orch.advance_start(vm, StartParams(generation=1, avoid_hosts={"a"}), Planner.HA)
    assert exc.value.host_id == "z"
    after = orch.find_vm(vm_id)
    assert after is not None
    assert (after.state, after.host_id) == (VmState.STOPPED, None)
    assert orch.highest_generation(vm_id) == 0  # nothing was sent: generation unused


def test_a_forced_stop_on_a_gone_libvirtd_counts_only_when_the_bmc_reads_power_off(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    # Host z's libvirtd is gone (nothing listens): its host lost power, or only its libvirtd died.
    a, _b, _created = pair
    dead = f"test+tcp://127.0.0.1:{free_port()}/default"
    asked: list[str] = []
    answer = {"z": False}

    def powered_off(host_id: str) -> bool:
        asked.append(host_id)
        if host_id == "boom":
            raise RuntimeError("BMC unreachable")
        return answer.get(host_id, False)

    orch = LibvirtOrchestrator(
        {"a": a.uri, "z": dead, "boom": dead}, capacity=2, timeout=5.0, powered_off=powered_off
    )
    orch.register_vm("vm-z", domain_xml("cloudha-gone-z"), host_id="z")
    orch.register_vm("vm-boom", domain_xml("cloudha-gone-boom"), host_id="boom")

    def state(vm_id: str) -> tuple[VmState, str | None]:
        vm = orch.find_vm(vm_id)
        assert vm is not None
        return vm.state, vm.host_id

    def stop(vm_id: str, *, force: bool) -> None:
        vm = orch.find_vm(vm_id)
        assert vm is not None
        orch.advance_stop(vm, force=force)

    # Power still on (or not known Off): the stop fails and nothing changes.
    with pytest.raises(ProbeConnectionError):
        stop("vm-z", force=True)
    assert state("vm-z") == (VmState.RUNNING, "z")
    # A graceful stop never counts without reaching the host, and does not even ask.
    answer["z"] = True
    asked.clear()
    with pytest.raises(ProbeConnectionError):
        stop("vm-z", force=False)
    assert asked == []
    assert state("vm-z") == (VmState.RUNNING, "z")
    # A BMC that cannot be asked proves nothing.
    with pytest.raises(ProbeConnectionError):
        stop("vm-boom", force=True)
    assert state("vm-boom") == (VmState.RUNNING, "boom")
    # The BMC reads power Off: the forced stop is done, the VM Stopped, its last host kept.
    stop("vm-z", force=True)
    assert asked == ["boom", "z"]
    assert state("vm-z") == (VmState.STOPPED, None)
    vm = orch.find_vm("vm-z")
    assert vm is not None
    assert vm.last_host_id == "z"


def test_a_stopped_libvirtd_times_out_in_bounded_time(
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
) -> None:
    server = stoppable_libvirtd
    orch = LibvirtOrchestrator({"s": server.uri}, capacity=2, timeout=1.0)
    orch.register_vm("vm-test", domain_xml("test"), host_id="s")  # the driver's running domain
    orch.register_vm("vm-new", domain_xml("cloudha-orch-new"))
    os.kill(server.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(ProbeTimeout) as stop_exc:
            orch.advance_stop(orch.find_vm("vm-test"), force=True)  # type: ignore[arg-type]
        stop_elapsed = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(ProbeTimeout):
            orch.advance_start(
                orch.find_vm("vm-new"),  # type: ignore[arg-type]
                StartParams(generation=1),
                Planner.HA,
            )
        start_elapsed = time.monotonic() - start
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert stop_exc.value.host_id == "s"
    assert stop_elapsed < 1.5
    assert start_elapsed < 1.5
    # Both outcomes are uncertain: Unknown on the host, and the generation is spent.
    for vm_id in ("vm-test", "vm-new"):
        vm = orch.find_vm(vm_id)
        assert vm is not None
        assert (vm.state, vm.host_id) == (VmState.UNKNOWN, "s")
    assert orch.highest_generation("vm-new") == 1
    with pytest.raises(ConcurrentOperationError):
        orch.advance_start(orch.find_vm("vm-new"), StartParams(generation=2), Planner.HA)  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while orch.lingering and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orch.lingering == 0


def test_configuration_is_checked_and_a_uuid_is_added_when_missing() -> None:
    from cloudha.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        LibvirtOrchestrator({})
    with pytest.raises(ConfigurationError):
        LibvirtOrchestrator({"a": ""})
    with pytest.raises(ConfigurationError):
        LibvirtOrchestrator({"a": "test:///default"}, capacity=-1)
    with pytest.raises(ConfigurationError):
        LibvirtOrchestrator({"a": "test:///default"}, timeout=0)
    orch = LibvirtOrchestrator({"a": "test:///default"})
    with pytest.raises(ConfigurationError):
        orch.register_vm("x", "<domain><name>x</name>")
    with pytest.raises(ConfigurationError):
        orch.register_vm("x", "<domain/>")
    with pytest.raises(ConfigurationError):
        orch.register_vm("x", "<domain><name>x</name></domain>", host_id="nope")
    vm = orch.register_vm("x", "<domain type='test'><name>dom-x</name></domain>")
    assert (vm.name, vm.state, vm.host_id) == ("dom-x", VmState.STOPPED, None)
    with pytest.raises(ConfigurationError):
        orch.register_vm("x", "<domain><name>again</name></domain>")
    assert orch.can_restart_on_another_server(vm)
    orch.register_vm("y", domain_xml("dom-y"), host_id="a", local_storage=True)
    assert not orch.can_restart_on_another_server(orch.find_vm("y"))  # type: ignore[arg-type]


def test_migrate_away_moves_the_domain_and_expunge_undefines_it_everywhere(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, b, orch, vm = deployed(pair)
    vm_id = vm.id
    name = vm.name
    assert name in domains(a, active=True)
    assert name not in domains(b, active=False)

    assert orch.migrate_away(vm, "a") == "b"
    assert name in domains(b, active=True)
    assert name not in domains(a, active=True)
    assert name in domains(a, active=False)  # cold move: still defined, inactive, on a
    moved = orch.find_vm(vm_id)
    assert moved is not None
    assert (moved.state, moved.host_id, moved.last_host_id) == (VmState.RUNNING, "b", "b")
    assert orch.highest_generation(vm_id) == 0  # a migration is not an HA restart

    orch.destroy(moved, expunge=False)
    assert name not in domains(b, active=True)
    assert name in domains(b, active=False)  # Destroyed keeps the definition
    destroyed = orch.find_vm(vm_id)
    assert destroyed is not None
    assert (destroyed.state, destroyed.host_id) == (VmState.DESTROYED, None)

    orch.destroy(destroyed, expunge=True)
    assert orch.find_vm(vm_id) is None
    assert name not in domains(a, active=False)
    assert name not in domains(b, active=False)


def test_expunge_of_a_running_domain_stops_and_undefines_it(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, _b, orch, vm = deployed(pair)
    vm_id = vm.id
    orch.destroy(vm, expunge=True)
    assert orch.find_vm(vm_id) is None
    assert vm.name not in domains(a, active=False)
    assert orch.list_vms_on_host("a") == []


def test_a_migration_to_an_unreachable_host_starts_the_domain_again_on_the_source(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
) -> None:
    a, _b, created = pair
    dead = f"test+tcp://127.0.0.1:{free_port()}/default"
    orch = LibvirtOrchestrator({"a": a.uri, "z": dead}, capacity=2, timeout=5.0)
    vm_id = deploy(orch, a, created)
    vm = orch.find_vm(vm_id)
    assert vm is not None
    with pytest.raises(ProbeConnectionError) as exc:
        orch.migrate_away(vm, "a")
    assert exc.value.host_id == "z"
    assert vm.name in domains(a, active=True)
    after = orch.find_vm(vm_id)
    assert after is not None
    assert (after.state, after.host_id) == (VmState.RUNNING, "a")
    # Nothing was left half-way: it can be stopped and started as usual.
    orch.advance_stop(after, force=True)
    assert orch.advance_start(after, StartParams(generation=1), Planner.HA) == "a"


def test_a_migration_to_a_hung_host_is_bounded_and_refuses_concurrent_operations(
    pair: tuple[LibvirtServer, LibvirtServer, list[str]],
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
) -> None:
    a, _b, created = pair
    hung = stoppable_libvirtd
    orch = LibvirtOrchestrator({"a": a.uri, "s": hung.uri}, capacity=2, timeout=1.0)
    vm_id = deploy(orch, a, created)
    vm = orch.find_vm(vm_id)
    assert vm is not None
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            orch.migrate_away(vm, "a")
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    os.kill(hung.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        worker = threading.Thread(target=migrate)
        worker.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            current = orch.find_vm(vm_id)
            if current is not None and current.state is VmState.MIGRATING:
                break
            time.sleep(0.01)
        # Meanwhile every other operation on the VM is refused.
        with pytest.raises(ConcurrentOperationError):
            orch.advance_stop(vm, force=True)
        with pytest.raises(ConcurrentOperationError):
            orch.destroy(vm, expunge=True)
        with pytest.raises(ConcurrentOperationError):
            orch.migrate_away(vm, "a")
        worker.join(10)
        elapsed = time.monotonic() - start
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    assert not worker.is_alive()
    assert len(errors) == 1, errors
    error = errors[0]
    assert isinstance(error, ProbeTimeout)
    assert error.host_id == "s"
    assert elapsed < 2.5
    # The start on s may still happen: Unknown there, and not restarted on a.
    after = orch.find_vm(vm_id)
    assert after is not None
    assert (after.state, after.host_id) == (VmState.UNKNOWN, "s")
    assert vm.name not in domains(a, active=True)
    deadline = time.monotonic() + 10
    while orch.lingering and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orch.lingering == 0
    # Once s answers again, expunging stops the domain there and undefines it on both hosts.
    orch.destroy(after, expunge=True)
    assert orch.find_vm(vm_id) is None
    assert vm.name not in domains(hung, active=False)
    assert vm.name not in domains(a, active=False)
