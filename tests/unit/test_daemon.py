"""cloudha.daemon: assemble() over fakes, reload, fence readiness, and its small ports.

The inventory here is a plain object shaped like cloudha.inventory's (the
daemon reads only what :class:`cloudha.daemon.InventoryView` names); the
host table is an in-memory directory with the SQL one's ``sync`` and
``note_fence_readiness``; hosts, BMCs and agents are the cloudha.testing fakes,
driven on virtual time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import attrs
import pytest

from cloudha import (
    Alert,
    AlertType,
    Host,
    Pool,
    Settings,
    Status,
    Vm,
    VmState,
)
from cloudha.daemon import (
    Assembly,
    HostRoutes,
    InventoryPools,
    LoggingAlertSink,
    assemble,
    shown_url,
)
from cloudha.errors import ConfigurationError, ProbeConnectionError, ProbeTimeout, StoreError
from cloudha.hostha.executor import InlineExecutor
from cloudha.oobm.manager import OobmNotConfigured
from cloudha.oobm.power import PowerOperation, PowerResult, PowerState
from cloudha.ports import Command, DomainState
from cloudha.server import ManagementServer
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeHostShell,
    FakeHypervisorProbe,
    FakeOrchestratorHost,
    FakePowerDriver,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    LoopRunner,
)
from cloudha.transport.local import LocalTransport

# -- an inventory, as the daemon reads one -----------------------------------------------------


@attrs.frozen
class Secret:
    value: str = attrs.field(repr=False)

    def reveal(self) -> str:
        return self.value


@attrs.frozen
class Ssh:
    user: str = "root"
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None


@attrs.frozen
class Oobm:
    driver: str
    address: str
    username: str
    password: Secret
    port: int | None = None


@attrs.frozen
class Entry:
    id: str
    address: str
    pools: tuple[str, ...] = ("nfs1",)
    agent: str = "ssh"
    ssh: Ssh = Ssh()
    oobm: Oobm | None = None
    cluster: str = "c1"
    allow_unmounted: bool = False

    @property
    def libvirt_uri(self) -> str:
        return f"test+tcp://{self.address}/default"

    def to_host(self) -> Host:
        return Host(self.id, private_ip=self.address, cluster=self.cluster, watchdog=True)


SETTINGS = Settings.from_mapping({"ping.interval": 10, "cloudha.freshness.enabled": False})


@attrs.frozen
class Inventory:
    hosts: tuple[Entry, ...]
    settings: Settings = SETTINGS
    server_id: str = "ms1"
    db_url: str = "sqlite://"
    pools: tuple[Pool, ...] = (Pool("nfs1", "/mnt/nfs1", cluster="c1"),)
    vm_ha: tuple[str, ...] = ("web-*",)
    path: str = "cluster.toml"


def entry(host_id: str, n: int, **changes: Any) -> Entry:
    return Entry(
        host_id,
        f"10.0.0.{n}",
        oobm=Oobm("fake", f"10.0.1.{n}", "admin", Secret("s3cret-bmc")),
        **changes,
    )


INVENTORY = Inventory(hosts=(entry("h1", 1), entry("h2", 2), entry("h3", 3)))


@attrs.define
class SyncResult:
    added: list[str]
    updated: list[str]
    removed: list[str]


class Directory(InMemoryHostDirectory):
    """The host table's sync and readiness writes, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: set[str] = set()
        self.readiness: dict[str, tuple[bool | None, str]] = {}

    def sync(self, hosts: Iterable[Host]) -> SyncResult:
        wanted = {h.id: h for h in hosts}
        known = {h.id for h in self.list_hosts()}
        added = sorted(set(wanted) - known)
        for host_id in added:
            self.add(wanted[host_id])
        removed = sorted(known - set(wanted))
        for host_id in removed:
            self.remove(host_id)
        return SyncResult(added, sorted(known & set(wanted)), removed)

    def note_fence_readiness(self, readiness: dict[str, tuple[bool | None, str]]) -> None:
        self.readiness.update(readiness)


class Fleet:
    """Fakes for every host-facing part, and an assembly over them."""

    def __init__(self, tmp_path: Path, inventory: Inventory = INVENTORY, **options: Any) -> None:
        self.clock = FakeClock(1000.0)
        self.probe = FakeHypervisorProbe(
            {"h1": True, "h2": True, "h3": True, "h4": True},
            domains={("h1", "web-1"): DomainState.RUNNING},
        )
        self.gateway = FakeAgentGateway(dict.fromkeys(("h1", "h2", "h3", "h4"), True))
        self.shell = FakeHostShell()
        self.built: list[str] = []
        self.orchestrator = InMemoryOrchestrator(
            [FakeOrchestratorHost(h) for h in ("h1", "h2", "h3", "h4")],
            [Vm("web-1", host_id="h1", last_host_id="h1", ha_enabled=True)],
        )
        self.driver = FakePowerDriver("fake", advance=self.clock.advance)
        self.bmcs = {n: self.driver.add(f"10.0.1.{n}") for n in (1, 2, 3, 4)}
        for bmc in self.bmcs.values():
            bmc.password = "s3cret-bmc"
        self.directory = Directory()
        self.url = f"sqlite:///{tmp_path / 'cloudha.db'}"
        self.assembly: Assembly = assemble(
            inventory,
            db_url=self.url,
            clock=self.clock,
            probe=self.probe,
            orchestrator=self.orchestrator,
            gateway=self.build,
            power_drivers=[self.driver],
            directory=self.directory,
            discover_plugins=False,
            poll_executor=InlineExecutor(self.clock),
            **options,
        )

    def build(self, host: Any) -> tuple[FakeAgentGateway, FakeHostShell | None]:
        self.built.append(host.id)
        return self.gateway, (None if host.agent == "local" else self.shell)

    def status(self, host_id: str) -> Status | None:
        host = self.directory.find_host(host_id)
        assert host is not None
        return host.status


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


# -- assemble ---------------------------------------------------------------------------------


def test_assemble_wires_every_part_from_the_inventory(fleet: Fleet) -> None:
    a = fleet.assembly
    server = a.server
    assert server.server_id == "ms1"
    assert server.agent_poller is not None
    assert "AgentPoller" in [loop.name for loop in server.loops()]
    assert a.routes.routed() == ["h1", "h2", "h3"]
    assert sorted(fleet.built) == ["h1", "h2", "h3"]
    assert [h.id for h in fleet.directory.list_hosts()] == ["h1", "h2", "h3"]
    config = a.oobm_configs.oobm_config(Host("h2"))
    assert config is not None
    assert (config.address, config.password) == ("10.0.1.2", "s3cret-bmc")
    assert [p.id for p in a.pools.pools_for_host(Host("h1"))] == ["nfs1"]
    assert server.oobm.driver_names == ["fake"]
    assert a.evidence_store is not None
    assert not server.settings.cloudha_shadow
    line = a.describe()
    assert "inventory cluster.toml" in line
    assert "3 hosts (h1, h2, h3)" in line
    assert "shadow mode off" in line


def test_shadow_turns_on_shadow_mode(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, shadow=True)
    assert fleet.assembly.server.settings.cloudha_shadow
    assert "shadow mode on" in fleet.assembly.describe()


def test_a_killed_host_is_found_down_fenced_and_its_ha_vm_restarted(fleet: Fleet) -> None:
    server = fleet.assembly.server
    assert server.recover()
    runner = LoopRunner(server, fleet.clock)
    runner.run_for(15)
    assert [fleet.status(h) for h in ("h1", "h2", "h3")] == [Status.UP] * 3
    # h1 loses power: its libvirtd and agent are silent, its BMC reads Off.
    fleet.probe.answering["h1"] = False
    fleet.gateway.healthy["h1"] = None
    fleet.orchestrator.set_host_up("h1", False)
    fleet.bmcs[1].power = "off"
    assert runner.run_until(lambda: fleet.status("h1") is Status.DOWN, within=600)
    vm = fleet.orchestrator.find_vm("web-1")
    assert vm is not None
    assert runner.run_until(
        lambda: (
            (v := fleet.orchestrator.find_vm("web-1")) is not None
            and v.state is VmState.RUNNING
            and v.host_id in ("h2", "h3")
        ),
        within=600,
    )
    kinds = {e.kind for e in fleet.assembly.evidence_log.records()}
    assert {"host_status", "ha_work"} <= kinds


def _with_bmcs(inventory: Inventory, driver: FakePowerDriver, tmp_path: Path) -> Assembly:
    """``inventory`` assembled over fakes, its BMCs those of ``driver`` (h1-h3 alive)."""
    return assemble(
        inventory,
        db_url=f"sqlite:///{tmp_path / 'cloudha.db'}",
        clock=FakeClock(1000.0),
        probe=FakeHypervisorProbe({"h1": True, "h2": True, "h3": True}),
        gateway=lambda host: (FakeAgentGateway({host.id: True}), None),
        power_drivers=[driver],
        directory=Directory(),
        discover_plugins=False,
    )


def test_the_libvirt_orchestrator_asks_the_bmc_whether_a_gone_host_is_powered_off(
    tmp_path: Path,
) -> None:
    # Built by assemble, the libvirt orchestrator counts a forced stop on a host whose
    # libvirtd is gone as done only when that host's BMC reads power Off now.
    driver = FakePowerDriver("fake")
    bmcs = {n: driver.add(f"10.0.1.{n}") for n in (1, 2, 3)}
    for bmc in bmcs.values():
        bmc.password = "s3cret-bmc"
    bmcs[2].power = "off"
    assembly = _with_bmcs(INVENTORY, driver, tmp_path)
    try:
        powered_off = assembly.orchestrator.powered_off  # type: ignore[attr-defined]
        assert [powered_off(h) for h in ("h1", "h2", "h3", "nowhere")] == [
            False,
            True,
            False,
            False,
        ]
    finally:
        assembly.close()


def test_a_bmc_that_cannot_say_off_never_counts_a_stop_as_done(tmp_path: Path) -> None:
    """The powered_off hook, the unsafe way round: a silent BMC, a refused login, a host
    without a BMC, a dropped host all answer False, never raise."""
    driver = FakePowerDriver("fake")
    bmcs = {n: driver.add(f"10.0.1.{n}") for n in (1, 2)}
    bmcs[1].password = bmcs[2].password = "s3cret-bmc"
    bmcs[1].power = bmcs[2].power = "off"  # off, but it cannot be told
    bmcs[1].silent = True
    bmcs[2].password = "another"
    inventory = Inventory(hosts=(entry("h1", 1), entry("h2", 2), Entry("h3", "10.0.0.3")))
    assembly = _with_bmcs(inventory, driver, tmp_path)
    try:
        powered_off = assembly.orchestrator.powered_off  # type: ignore[attr-defined]
        assert [powered_off(h) for h in ("h1", "h2", "h3")] == [False, False, False]
        bmcs[1].silent = False
        assert powered_off("h1") is True  # the same BMC, answering now
    finally:
        assembly.close()


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (PowerResult(PowerOperation.STATUS, True, PowerState.OFF), True),
        (PowerResult(PowerOperation.STATUS, True, PowerState.ON), False),
        (PowerResult(PowerOperation.STATUS, True, PowerState.UNKNOWN), False),
        (PowerResult(PowerOperation.STATUS, True, None), False),
        (PowerResult(PowerOperation.STATUS, False, PowerState.OFF), False),  # a failed STATUS
        (ProbeTimeout("silent"), False),
        (ProbeConnectionError("unreachable"), False),
        (OobmNotConfigured("dropped by a reload"), False),
    ],
)
def test_only_a_successful_status_reading_off_is_powered_off(
    result: PowerResult | Exception, expected: bool
) -> None:
    from cloudha.daemon import _bmc_reads_off

    asked: list[PowerOperation] = []

    class Oobm:
        def config(self, host: Host) -> object:
            return object()

        def execute(self, host: Host, operation: PowerOperation) -> PowerResult:
            asked.append(operation)
            if isinstance(result, Exception):
                raise result
            return result

    class Directory:
        def find_host(self, host_id: str) -> Host | None:
            if host_id == "broken":
                raise StoreError("the host table cannot be read")
            return Host(host_id) if host_id == "h1" else None

    server = cast(ManagementServer, SimpleNamespace(directory=Directory(), oobm=Oobm()))
    powered_off = _bmc_reads_off(server)
    assert powered_off("h1") is expected
    assert asked == [PowerOperation.STATUS]  # asked now, a status only
    assert powered_off("nowhere") is False
    assert powered_off("broken") is False
    assert asked == [PowerOperation.STATUS]


def test_evidence_is_stored_in_sql_for_explain(fleet: Fleet) -> None:
    server = fleet.assembly.server
    server.recover()
    LoopRunner(server, fleet.clock).run_for(15)
    store = fleet.assembly.evidence_store
    assert store is not None
    store.flush()
    assert len(store) > 0
    assert len(store) == len(fleet.assembly.evidence_log)


def test_fence_readiness_is_written_to_the_host_table(tmp_path: Path) -> None:
    inventory = Inventory(hosts=(entry("h1", 1), Entry("h2", "10.0.0.2")))
    fleet = Fleet(tmp_path, inventory)
    assert fleet.assembly.write_readiness() == 2
    assert fleet.directory.readiness["h1"] == (None, "not checked yet")
    assert fleet.directory.readiness["h2"] == (
        None,
        "no out-of-band management in the inventory",
    )
    fleet.assembly.server.oobm.sync([Host("h1")], parallel=False)
    fleet.assembly.write_readiness()
    ready, reason = fleet.directory.readiness["h1"]
    assert ready is True
    assert "power is" in reason
    fleet.bmcs[1].password = "changed"
    fleet.assembly.server.oobm.sync([Host("h1")], parallel=False)
    fleet.assembly.write_readiness()
    assert fleet.directory.readiness["h1"][0] is False
    assert "s3cret" not in fleet.directory.readiness["h1"][1]


# -- reload -------------------------------------------------------------------------------


def test_reload_adds_and_removes_hosts_and_replaces_credentials(fleet: Fleet) -> None:
    a = fleet.assembly
    new_bmc = Oobm("fake", "10.0.1.9", "admin", Secret("rotated"))
    changed = Inventory(
        hosts=(entry("h1", 1), attrs.evolve(entry("h2", 2), oobm=new_bmc), entry("h4", 4))
    )
    result = a.reload(changed)
    assert result.added == ("h4",)
    assert result.removed == ("h3",)
    assert result.needs_restart == ()
    assert a.routes.routed() == ["h1", "h2", "h4"]
    assert fleet.directory.find_host("h3") is None
    h2 = a.oobm_configs.oobm_config(Host("h2"))
    assert h2 is not None
    assert (h2.address, h2.password) == ("10.0.1.9", "rotated")
    assert a.oobm_configs.oobm_config(Host("h3")) is None
    assert a.inventory is changed
    assert "rotated" not in " ".join(result.lines)
    with pytest.raises(ProbeConnectionError, match="not in the inventory"):
        a.routes.check_health(Host("h3"), timeout=1.0)


def test_a_new_host_is_polled_and_connected_without_a_restart(fleet: Fleet) -> None:
    server = fleet.assembly.server
    server.recover()
    runner = LoopRunner(server, fleet.clock)
    runner.run_for(15)
    fleet.assembly.reload(Inventory(hosts=(*INVENTORY.hosts, entry("h4", 4))))
    runner.run_for(15)
    assert fleet.status("h4") is Status.UP


def test_settings_server_id_and_database_changes_need_a_restart(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudha.daemon")
    before = fleet.assembly.server.settings
    changed = attrs.evolve(
        INVENTORY,
        settings=before.with_overrides({"ping.interval": 30}),
        server_id="ms2",
        db_url="postgresql+psycopg://cloudha:pw@db/cloudha",
    )
    result = fleet.assembly.reload(changed)
    assert len(result.needs_restart) == 3
    assert "settings changed (ping.interval)" in result.needs_restart[0]
    assert fleet.assembly.server.settings is before  # not applied
    assert fleet.assembly.server.server_id == "ms1"
    assert "pw" not in caplog.text.replace("ping", "")
    assert "not applied (the server is not restarted)" in caplog.text


def test_a_reload_whose_gateways_cannot_be_built_changes_nothing(fleet: Fleet) -> None:
    def broken(host: Any) -> tuple[FakeAgentGateway, None]:
        raise ConfigurationError(f"key of {host.id} cannot be read", key="ssh.key")

    fleet.assembly._build_gateway = broken
    with pytest.raises(ConfigurationError):
        fleet.assembly.reload(Inventory(hosts=(entry("h4", 4),)))
    assert [h.id for h in fleet.directory.list_hosts()] == ["h1", "h2", "h3"]
    assert fleet.assembly.routes.routed() == ["h1", "h2", "h3"]
    assert fleet.assembly.inventory is INVENTORY


def test_close_releases_everything_once(fleet: Fleet) -> None:
    fleet.assembly.close()
    fleet.assembly.close()
    store = fleet.assembly.evidence_store
    assert store is not None


# -- bad input --------------------------------------------------------------------------------


def test_an_unreachable_database_is_one_store_error_without_its_password() -> None:
    with pytest.raises(StoreError) as err:
        assemble(
            INVENTORY,
            db_url="postgresql+psycopg://cloudha:hunter2@127.0.0.1:1/cloudha",
            directory=Directory(),
            probe=FakeHypervisorProbe(),
            orchestrator=InMemoryOrchestrator([], []),
        )
    text = str(err.value)
    assert "hunter2" not in text
    assert "127.0.0.1:1" in text
    assert "\n" not in text


def test_a_bad_database_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        assemble(INVENTORY, db_url="nonsense", directory=Directory())


def test_shown_url_hides_the_password() -> None:
    assert shown_url("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    assert shown_url("::") == "<not a database URL>"


# -- the small ports ---------------------------------------------------------------------------


def test_alerts_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingAlertSink()
    with caplog.at_level(logging.WARNING, logger="cloudha.alerts"):
        sink.send(Alert(AlertType.HOST, "host h1 is down", "fenced\nby BMC", host_id="h1"))
    assert "alert ALERT.HOST host h1: host h1 is down: fenced by BMC" in caplog.text
    assert sink.sent == 1


def test_pools_of_a_host_come_cluster_first() -> None:
    pools = InventoryPools(
        [Pool("zone1", "/mnt/z", cluster=None), Pool("c1p", "/mnt/c", cluster="c1")],
        {"h1": ["zone1", "c1p", "unknown"]},
    )
    assert [p.id for p in pools.pools_for_host(Host("h1"))] == ["c1p", "zone1"]
    assert pools.pools_for_host(Host("h2")) == []


def test_routes_send_each_host_to_its_gateway_and_shell() -> None:
    routes = HostRoutes()
    gateway = FakeAgentGateway({"h1": True})
    shell = FakeHostShell(["h1"])
    routes.set({"h1": gateway, "h2": gateway}, {"h1": shell})
    assert routes.check_health(Host("h1"), timeout=1.0) is True
    assert routes.run(Host("h1"), ["true"], timeout=1.0).exit_status == 0
    with pytest.raises(ProbeConnectionError, match="no SSH shell"):
        routes.run(Host("h2"), ["true"], timeout=1.0)
    with pytest.raises(ProbeConnectionError, match="not in the inventory"):
        routes.send(Host("h9"), Command("PingTest"), timeout=1.0)


def test_a_local_host_runs_cloudha_here(tmp_path: Path) -> None:
    from cloudha.daemon import _Gateways

    build = _Gateways(InventoryPools())
    gateway, shell = build(Entry("h1", "127.0.0.1", agent="local"))
    assert shell is None
    assert gateway.check_health(Host("h1", private_ip="127.0.0.1"), timeout=30.0) is True
    again, _ = build(Entry("h2", "127.0.0.1", agent="local"))
    assert len(build.transports) == 1  # one local transport for every local host
    build.prune(set())
    assert build.transports == {}
    del again


def test_a_local_hosts_checker_reads_the_inventorys_settings(tmp_path: Path) -> None:
    from cloudha.daemon import _Gateways, local_settings_file
    from cloudha.transport.gateway import SSHAgentGateway

    with_settings = tmp_path / "cluster.toml"
    with_settings.write_text('[server]\nid = "ms1"\n[settings]\n"ping.interval" = 5\n')
    without = tmp_path / "bare.toml"
    without.write_text('[server]\nid = "ms1"\n')
    assert local_settings_file(Inventory(hosts=(), path=str(with_settings))) == str(with_settings)
    assert local_settings_file(Inventory(hosts=(), path=str(without))) is None
    assert local_settings_file(Inventory(hosts=(), path=str(tmp_path / "gone.toml"))) is None
    assert Settings.from_toml(with_settings).ping_interval == 5.0  # the checker's reading
    gateway, _ = _Gateways(InventoryPools(), str(with_settings))(Entry("h1", "x", agent="local"))
    assert isinstance(gateway, SSHAgentGateway)
    assert gateway.remote_settings == str(with_settings)


def test_gateways_tell_the_checkers_of_plain_directory_pools_and_ping_over_ssh_only(
    tmp_path: Path,
) -> None:
    """allow_unmounted comes from the inventory's host entry (its pools), never by default;
    a neighbour's ping runs over SSH, never on this machine for a local host."""
    from cloudha.daemon import _Gateways
    from cloudha.transport.gateway import DEFAULT_PING, SSHAgentGateway

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    build = _Gateways(InventoryPools())

    found = {}
    for name, entry in {
        "local": Entry("h1", "127.0.0.1", agent="local"),
        "local plain": Entry("h2", "127.0.0.2", agent="local", allow_unmounted=True),
        "ssh": Entry("h3", "127.0.0.3", ssh=Ssh(known_hosts=str(known_hosts))),
        "ssh plain": Entry(
            "h4", "127.0.0.4", ssh=Ssh(known_hosts=str(known_hosts)), allow_unmounted=True
        ),
    }.items():
        gateway, _ = build(entry)
        assert isinstance(gateway, SSHAgentGateway)
        found[name] = (gateway.allow_unmounted, gateway.ping_command)
    assert found == {
        "local": (False, None),
        "local plain": (True, None),
        "ssh": (False, DEFAULT_PING),
        "ssh plain": (True, DEFAULT_PING),
    }
    build.prune(set())


def test_an_ssh_host_needs_a_known_hosts_that_exists(tmp_path: Path) -> None:
    from cloudha.daemon import _Gateways

    build = _Gateways(InventoryPools())
    with pytest.raises(ConfigurationError, match="known_hosts"):
        build(Entry("h1", "127.0.0.1", ssh=Ssh(known_hosts=str(tmp_path / "missing"))))


def test_the_local_transport_runs_returns_and_times_out() -> None:
    local = LocalTransport()
    done = local.run(
        "ignored", [sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], timeout=30.0
    )
    assert (done.exit_status, done.stdout.strip()) == (3, b"hi")
    with pytest.raises(ProbeTimeout):
        local.run("x", [sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)
    with pytest.raises(ProbeConnectionError, match="cannot run"):
        local.run("x", ["/nonexistent/program"], timeout=1.0)
    with pytest.raises(ConfigurationError):
        local.run("x", [], timeout=1.0)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_count_the_assembled_server(tmp_path: Path) -> None:
    from cloudha.metrics import Metrics

    metrics = Metrics()
    fleet = Fleet(tmp_path, metrics=metrics)
    server = fleet.assembly.server
    assert server.metrics is metrics
    assert fleet.assembly.metrics is metrics
    server.recover()
    LoopRunner(server, fleet.clock).run_for(15)
    text = metrics.render().decode()
    assert 'status="Up"' in text
