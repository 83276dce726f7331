"""The libvirt orchestrator's registry on SQL: nothing is lost across a restart.

libvirt's in-process test driver (``test:///default``) plays the hosts; a
holder connection keeps its state for the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import sqlalchemy as sa

from cloudha.errors import ConfigurationError, StoreError, StoreUnavailableError
from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator
from cloudha.ha.orchestrator import Planner, StaleGenerationError, StartParams
from cloudha.ha.vm_registry import MemoryVmRegistry, SqlVmRegistry, VmRecord, cloudha_vm
from cloudha.model import VmState, VmType

URI = "test:///default"


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def holder() -> Iterator[Any]:
    """A connection keeping the in-process test driver's state for the test."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    try:
        yield conn
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name() != "test":
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        conn.close()


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'cloudha.db'}")


def record(vm_id: str = "web-1", **changes: Any) -> VmRecord:
    values: dict[str, Any] = {
        "vm_id": vm_id,
        "domain": vm_id,
        "uuid": str(uuid.uuid4()),
        "xml": domain_xml(vm_id),
    }
    values.update(changes)
    return VmRecord(**values)


# -- the SQL registry --------------------------------------------------------------------


def test_records_round_trip_through_sql(engine: sa.Engine) -> None:
    registry = SqlVmRegistry(engine)
    first = record(
        "a",
        state=VmState.RUNNING,
        host_id="h1",
        last_host_id="h1",
        generation=3,
        defined_on=frozenset({"h1", "h2"}),
        vm_type=VmType.DOMAIN_ROUTER,
        ha_enabled=False,
    )
    registry.save(first)
    registry.save(record("b"))
    assert [r.vm_id for r in registry.load()] == ["a", "b"]
    assert SqlVmRegistry(engine).load()[0] == first  # a new process reads the same
    registry.save(record("a", uuid=first.uuid, xml=first.xml, generation=4))
    assert registry.load()[0].generation == 4
    registry.delete("a")
    registry.delete("nobody")
    assert [r.vm_id for r in registry.load()] == ["b"]


def test_an_unreadable_row_names_the_vm(engine: sa.Engine) -> None:
    registry = SqlVmRegistry(engine)
    registry.save(record("a"))
    with engine.begin() as conn:
        conn.execute(sa.update(cloudha_vm).values(state="Exploded"))
    with pytest.raises(StoreError, match="cloudha_vm row 'a' is unreadable"):
        registry.load()


def test_an_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(StoreError, match="VM registry on sqlite"):
        SqlVmRegistry(engine)


def test_only_sqlite_and_postgresql() -> None:
    class Dialect:
        name = "mysql"

    class Engine:
        dialect = Dialect()

    with pytest.raises(ConfigurationError, match="mysql"):
        SqlVmRegistry(Engine())  # type: ignore[arg-type]


# -- the orchestrator writes through --------------------------------------------------------


def test_a_restarted_orchestrator_has_every_vm_with_its_generation(
    holder: Any, engine: sa.Engine
) -> None:
    first = LibvirtOrchestrator({"h1": URI}, capacity=5, registry=SqlVmRegistry(engine))
    vm = first.register_vm("web-1", domain_xml("web-1"))
    assert first.advance_start(vm, StartParams(generation=7), Planner.DEFAULT) == "h1"
    assert holder.lookupByName("web-1").isActive()
    again = LibvirtOrchestrator({"h1": URI}, capacity=5, registry=SqlVmRegistry(engine))
    found = again.find_vm("web-1")
    assert found is not None
    assert (found.state, found.host_id, found.ha_enabled) == (VmState.RUNNING, "h1", True)
    assert again.highest_generation("web-1") == 7
    again.advance_stop(found, force=True)
    stopped = again.find_vm("web-1")
    assert stopped is not None
    # The fencing token holds across the restart: generation 7 is used.
    with pytest.raises(StaleGenerationError):
        again.advance_start(stopped, StartParams(generation=7), Planner.DEFAULT)
    assert again.advance_start(stopped, StartParams(generation=8), Planner.DEFAULT) == "h1"
    third = LibvirtOrchestrator({"h1": URI}, capacity=5, registry=SqlVmRegistry(engine))
    assert third.highest_generation("web-1") == 8


def test_an_expunged_vm_is_gone_after_a_restart(holder: Any, engine: sa.Engine) -> None:
    first = LibvirtOrchestrator({"h1": URI}, registry=SqlVmRegistry(engine))
    vm = first.register_vm("gone-1", domain_xml("gone-1"))
    first.destroy(vm, expunge=True)
    assert (
        LibvirtOrchestrator({"h1": URI}, registry=SqlVmRegistry(engine)).find_vm("gone-1") is None
    )


@pytest.mark.parametrize(
    ("stored", "loaded", "host"),
    [
        (VmState.STARTING, VmState.UNKNOWN, "h1"),
        (VmState.STOPPING, VmState.UNKNOWN, "h1"),
        (VmState.MIGRATING, VmState.UNKNOWN, "h1"),
        (VmState.EXPUNGING, VmState.DESTROYED, None),
        (VmState.RUNNING, VmState.RUNNING, "h1"),
    ],
)
def test_a_vm_caught_in_an_operation_by_a_restart_is_loaded_unknown(
    stored: VmState, loaded: VmState, host: str | None
) -> None:
    registry = MemoryVmRegistry(
        [record("a", state=stored, host_id="h1", migrating_to="h2", generation=2)]
    )
    orchestrator = LibvirtOrchestrator({"h1": URI, "h2": URI}, registry=registry)
    vm = orchestrator.find_vm("a")
    assert vm is not None
    assert (vm.state, vm.host_id) == (loaded, host)
    assert orchestrator.highest_generation("a") == 2


class FailingRegistry(MemoryVmRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def save(self, record: VmRecord) -> None:
        if self.failing:
            raise StoreUnavailableError("database is locked")
        super().save(record)


def test_a_start_is_refused_unless_its_generation_is_stored_first(holder: Any) -> None:
    registry = FailingRegistry()
    orchestrator = LibvirtOrchestrator({"h1": URI}, registry=registry)
    vm = orchestrator.register_vm("db-1", domain_xml("db-1"))
    registry.failing = True
    with pytest.raises(StoreUnavailableError):
        orchestrator.advance_start(vm, StartParams(generation=1), Planner.DEFAULT)
    after = orchestrator.find_vm("db-1")
    assert after is not None
    assert after.state is VmState.STOPPED
    assert orchestrator.highest_generation("db-1") == 0
    assert "db-1" not in [d.name() for d in holder.listAllDomains(0)]
    registry.failing = False
    assert orchestrator.advance_start(vm, StartParams(generation=1), Planner.DEFAULT) == "h1"
    assert registry.load()[0].generation == 1


def test_another_failed_write_is_retried_with_the_next_one(
    holder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FailingRegistry()
    orchestrator = LibvirtOrchestrator({"h1": URI}, registry=registry)
    registry.failing = True
    orchestrator.register_vm("app-1", domain_xml("app-1"))
    assert "writing app-1 failed" in caplog.text
    assert registry.load() == []
    assert not orchestrator.flush()
    registry.failing = False
    orchestrator.register_vm("app-2", domain_xml("app-2"))
    assert [r.vm_id for r in registry.load()] == ["app-1", "app-2"]
    assert orchestrator.flush()


# -- discovery ------------------------------------------------------------------------


def test_discovery_registers_the_domains_found_with_their_ha_flag(
    holder: Any, engine: sa.Engine
) -> None:
    holder.defineXML(domain_xml("web-1")).create()
    holder.defineXML(domain_xml("batch-1"))  # defined, not running
    orchestrator = LibvirtOrchestrator({"h1": URI}, registry=SqlVmRegistry(engine))
    found = orchestrator.discover(ha=lambda name: name.startswith("web-"))
    assert sorted(found.added) == ["batch-1", "test", "web-1"]
    web = orchestrator.find_vm("web-1")
    batch = orchestrator.find_vm("batch-1")
    assert web is not None
    assert batch is not None
    assert (web.state, web.host_id, web.ha_enabled) == (VmState.RUNNING, "h1", True)
    assert (batch.state, batch.host_id, batch.ha_enabled) == (VmState.STOPPED, None, False)
    assert batch.last_host_id == "h1"
    # Again, with other patterns (a reloaded inventory): nothing added, flags follow.
    again = LibvirtOrchestrator({"h1": URI}, registry=SqlVmRegistry(engine))
    second = again.discover(ha=lambda name: name == "batch-1")
    assert second.added == ()
    assert sorted(second.ha_changed) == ["batch-1", "web-1"]
    batch_again = again.find_vm("batch-1")
    assert batch_again is not None
    assert batch_again.ha_enabled


def test_discovery_corrects_a_vm_found_running_and_skips_an_unreachable_host(
    holder: Any,
) -> None:
    registry = MemoryVmRegistry()
    orchestrator = LibvirtOrchestrator(
        {"h1": URI, "h9": "test+tcp://127.0.0.1:1/default"}, registry=registry, timeout=2.0
    )
    vm = orchestrator.register_vm("db-1", domain_xml("db-1"))  # Stopped in the registry
    holder.defineXML(orchestrator._vms["db-1"].xml).create()  # started by hand on h1
    found = orchestrator.discover()
    assert found.moved == {"db-1": "Running on h1"}
    assert set(found.unreachable) == {"h9"}
    now = orchestrator.find_vm(vm.id)
    assert now is not None
    assert (now.state, now.host_id) == (VmState.RUNNING, "h1")


def test_a_known_name_under_another_uuid_is_left_alone(holder: Any) -> None:
    orchestrator = LibvirtOrchestrator({"h1": URI}, registry=MemoryVmRegistry())
    orchestrator.register_vm("twin", domain_xml("twin"))
    holder.defineXML(domain_xml("twin"))  # another UUID
    found = orchestrator.discover()
    assert any("twin" in line and "left alone" in line for line in found.conflicts)


def test_hosts_can_be_replaced_on_reload(holder: Any) -> None:
    orchestrator = LibvirtOrchestrator({"h1": URI})
    orchestrator.set_hosts({"h1": URI, "h2": URI}, capacity=3)
    assert orchestrator.host_ids == ["h1", "h2"]
    with pytest.raises(ConfigurationError):
        orchestrator.set_hosts({})
    assert orchestrator.host_ids == ["h1", "h2"]
