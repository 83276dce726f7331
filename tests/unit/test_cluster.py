"""Several management servers: the registry, departures, claims, fenced writes, rebalancing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import attrs
import pytest
import sqlalchemy as sa

from cloudha import (
    ConfigurationError,
    EvidenceLog,
    FenceChain,
    FenceOutcome,
    Host,
    InvestigatorChain,
    ManagementServer,
    Settings,
    Status,
    Vm,
)
from cloudha.cluster import SqlServerRegistry
from cloudha.ha.store import create_schema
from cloudha.hostha import HAExecutors, HAState
from cloudha.ports import ServerState
from cloudha.status import Event
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeOrchestratorHost,
    FakeServerRegistry,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    RecordingAlertSink,
    ScriptedFencer,
    ScriptedHAProvider,
    ScriptedInvestigator,
    check_server_registry,
)

HOSTS = tuple(f"h{i:02d}" for i in range(30))
TIMEOUT = 20.0
BEAT = 2.0


def test_the_fake_registry_keeps_the_contract() -> None:
    check_server_registry(lambda: FakeServerRegistry(FakeClock(1000.0)))


def test_the_sql_registry_keeps_the_contract(tmp_path: object) -> None:
    def make() -> SqlServerRegistry:
        engine = sa.create_engine(f"sqlite:///{tmp_path}/r{len(engines)}.db")
        engines.append(engine)
        create_schema(engine)
        return SqlServerRegistry(engine, FakeClock(1000.0))

    engines: list[sa.Engine] = []
    check_server_registry(make)
    for engine in engines:
        engine.dispose()


def test_a_broken_registry_is_caught_by_the_contract() -> None:
    class NoRace(FakeServerRegistry):
        def declare_departed(self, server_id: str, epoch: int, beat: int, by: str) -> bool:
            super().declare_departed(server_id, epoch, beat, by)
            return True  # everybody thinks they won

    with pytest.raises(AssertionError, match="4 won, not 1"):
        check_server_registry(lambda: NoRace(FakeClock(0.0)))


class Group:
    """Management servers over one cloud: shared directory, work queue and registry."""

    def __init__(
        self, hosts: Iterable[str] = HOSTS, settings: dict[str, object] | None = None
    ) -> None:
        self.clock = FakeClock(1000.0)
        self.settings = Settings.from_mapping(
            {
                "ping.interval": 10,
                "cloudha.ms.takeover.timeout": TIMEOUT,
                "cloudha.ms.heartbeat.interval": BEAT,
                "direct.agent.scan.interval": 30,
                "direct.agent.load.size": 4,
                **(settings or {}),
            }
        )
        self.hosts = tuple(hosts)
        self.directory = InMemoryHostDirectory(Host(h) for h in self.hosts)
        self.gateway = FakeAgentGateway(dict.fromkeys(self.hosts, True))
        self.orchestrator = InMemoryOrchestrator(
            [FakeOrchestratorHost(h) for h in self.hosts],
            [Vm("vm1", host_id=self.hosts[0], last_host_id=self.hosts[0], ha_enabled=True)],
        )
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        self.registry = FakeServerRegistry(self.clock)
        self.engine = sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
        self.servers: dict[str, ManagementServer] = {}
        self.stalled: set[str] = set()

    def start(
        self, server_id: str, *, connected: Iterable[str] = (), **extra: object
    ) -> ManagementServer:
        server = ManagementServer(
            settings=self.settings,
            clock=self.clock,
            directory=self.directory,
            gateway=self.gateway,
            orchestrator=self.orchestrator,
            alerts=self.alerts,
            engine=self.engine,
            evidence=self.evidence,
            server_id=server_id,
            investigators=InvestigatorChain([ScriptedInvestigator(self.clock)]),
            fence_chain=FenceChain(
                [ScriptedFencer(self.clock, default=FenceOutcome.FENCED)], clock=self.clock
            ),
            discover_plugins=False,
            registry=self.registry,
            address=f"{server_id}.example:8250",
            **extra,  # type: ignore[arg-type]
        )
        assert server.recover(connected=tuple(connected))
        self.servers[server_id] = server
        return server

    def tick(self, rounds: int = 1) -> None:
        """``rounds`` heartbeat intervals: every running server's Cluster loop, then agents."""
        for _ in range(rounds):
            self.clock.advance(BEAT)
            for server_id, server in sorted(self.servers.items()):
                if server_id not in self.stalled:
                    server.cluster_tick()
            self.connect_agents()

    def connect_agents(self) -> None:
        """Each host's agent connects to the server that owns it (when it does not yet)."""
        for host in self.directory.list_hosts():
            owner = self.servers.get(host.management_server_id or "")
            if owner is None or host.management_server_id in self.stalled:
                continue
            if host.status is not Status.UP and self.gateway.healthy.get(host.id) is not None:
                owner.agents.agent_connected(host.id)

    def owners(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for host in self.directory.list_hosts():
            counts[host.management_server_id] = counts.get(host.management_server_id, 0) + 1
        return counts

    def kinds(self, kind: str, actor: str | None = None) -> list[dict[str, object]]:
        return [
            r.to_event()
            for r in self.evidence.records(kind=kind)
            if actor is None or r.actor == actor
        ]


def test_three_servers_share_new_hosts_evenly_in_batches() -> None:
    group = Group()
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick()
    # One batch (direct.agent.load.size = 4) a round per server while orphans are left.
    assert group.owners() == {None: 18, "ms1": 4, "ms2": 4, "ms3": 4}
    group.tick(5)
    assert group.owners() == {"ms1": 10, "ms2": 10, "ms3": 10}
    assert all(h.status is Status.UP for h in group.directory.list_hosts())
    epochs = {r.id: r.epoch for r in group.registry.servers()}
    assert all(
        h.owner_epoch == epochs[h.management_server_id or ""] for h in group.directory.list_hosts()
    )
    assert [r["kind"] for r in group.kinds("ms_registered")] == ["ms_registered"] * 3


def test_a_crashed_server_is_declared_departed_once_and_its_hosts_and_works_taken_over() -> None:
    group = Group()
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick(6)
    assert group.owners() == {"ms1": 10, "ms2": 10, "ms3": 10}
    ms2 = group.servers["ms2"]
    ms2.ha.schedule_restart(group.orchestrator.find_vm("vm1"), investigate=True)  # type: ignore[arg-type]
    claimed = ms2.store.claim("ms2")
    assert claimed is not None
    group.stalled.add("ms2")  # crashed: it never ticks again
    crashed_at = group.clock.monotonic()
    while "ms2" in group.owners():
        group.tick()
        assert group.clock.monotonic() - crashed_at <= TIMEOUT + 2 * BEAT, "takeover too slow"
    departures = group.kinds("ms_departed")
    assert len(departures) == 1
    assert departures[0]["server"] == "ms2"
    assert departures[0]["works"] == 1
    assert group.owners() == {"ms1": 15, "ms3": 15}
    states = {r.id: r.state for r in group.registry.servers()}
    assert states == {"ms1": ServerState.UP, "ms2": ServerState.DEPARTED, "ms3": ServerState.UP}
    released = ms2.store.get(claimed.id)
    assert released is not None
    assert released.mgmt_server_id is None
    taken = {
        host
        for record in group.kinds("takeover")
        for host, previous in record["previous"].items()  # type: ignore[attr-defined]
        if previous == "ms2"
    }
    assert len(taken) == 10  # each of its hosts claimed once, by one survivor


def test_taken_over_hosts_get_the_start_grace_before_any_verdict() -> None:
    group = Group()
    for server_id in ("ms1", "ms2"):
        group.start(server_id)
    group.tick(6)
    mine = [h.id for h in group.directory.list_hosts() if h.management_server_id == "ms2"]
    group.stalled.add("ms2")
    for host_id in mine:
        group.gateway.healthy[host_id] = None  # these agents are gone too
    taken = False
    for _ in range(30):
        group.tick()
        group.servers["ms1"].monitor_tick()
        if all(group.directory.find_host(h).management_server_id == "ms1" for h in mine):  # type: ignore[union-attr]
            taken = True
            break
    assert taken
    statuses = {group.directory.find_host(h).status for h in mine}  # type: ignore[union-attr]
    assert statuses == {Status.DISCONNECTED}  # UNKNOWN, waiting for the agent: no verdict yet
    assert not [r for r in group.kinds("investigation") if r.get("host") in mine]


def test_a_server_paused_past_the_timeout_has_its_writes_refused_then_claims_anew() -> None:
    group = Group(hosts=HOSTS[:12])
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick(6)
    ms1 = group.servers["ms1"]
    mine = sorted(h.id for h in group.directory.list_hosts() if h.management_server_id == "ms1")
    assert len(mine) == 4
    group.stalled.add("ms1")  # SIGSTOP
    while "ms1" in group.owners():
        group.tick()
    group.stalled.discard("ms1")  # SIGCONT: its memory still says it owns `mine`
    before = {h.id: h for h in group.directory.list_hosts()}
    assert ms1.agents.declare_down(mine[0], "a stale verdict", no_vm_runs=False) is False
    after = group.directory.find_host(mine[0])
    assert after == before[mine[0]]  # nothing written with the stale ownership
    lost = group.kinds("ownership_lost", actor="ms1")
    assert lost
    assert lost[0]["host"] == mine[0]
    group.tick()  # its heartbeat is refused: it registers again and claims anew
    assert any(r.get("by") for r in group.kinds("ownership_lost", actor="ms1"))
    epochs = [r["epoch"] for r in group.kinds("ms_registered", actor="ms1")]
    assert epochs == [1, 2]
    group.tick(4)
    counts = group.owners()
    assert set(counts) <= {"ms1", "ms2", "ms3"}
    assert sum(counts.values()) == 12


def test_a_graceful_stop_releases_hosts_for_the_group_at_once() -> None:
    group = Group(hosts=HOSTS[:8])
    for server_id in ("ms1", "ms2"):
        group.start(server_id)
    group.tick(4)
    assert group.owners() == {"ms1": 4, "ms2": 4}
    ms2 = group.servers.pop("ms2")
    assert ms2.cluster is not None
    ms2.cluster.leave()  # what ManagementServer.stop() does once its loops stopped
    assert {r.id: r.state for r in group.registry.servers()}["ms2"] is ServerState.DOWN
    assert group.owners() == {"ms1": 4, None: 4}
    group.tick()  # the group changed: ms1 claims up to its fair share at once
    assert group.owners() == {"ms1": 8}
    assert not group.kinds("ms_departed")


def test_rebalancing_moves_surplus_hosts_to_a_new_server() -> None:
    group = Group(hosts=HOSTS[:12], settings={"agent.lb.enabled": True})
    group.start("ms1")
    group.tick(4)
    assert group.owners() == {"ms1": 12}
    group.start("ms2")
    group.tick(4)
    assert group.owners() == {"ms1": 6, "ms2": 6}
    assert group.kinds("rebalance", actor="ms1")


def test_without_rebalancing_a_late_server_takes_only_orphans() -> None:
    group = Group(hosts=HOSTS[:12])
    group.start("ms1")
    group.tick(4)
    group.start("ms2")
    group.tick(4)
    assert group.owners() == {"ms1": 12}


def test_a_database_outage_does_not_make_peers_look_departed() -> None:
    group = Group(hosts=HOSTS[:6])
    for server_id in ("ms1", "ms2"):
        group.start(server_id)
    group.tick(3)
    group.registry.unavailable = ConnectionError("database restarting")
    for _ in range(int(2 * TIMEOUT / BEAT)):
        group.clock.advance(BEAT)
        for server in group.servers.values():
            with pytest.raises(ConnectionError):
                server.cluster_tick()
    group.registry.unavailable = None
    group.tick(3)
    assert not group.kinds("ms_departed")
    assert group.owners() == {"ms1": 3, "ms2": 3}


def test_the_takeover_timeout_must_be_twice_the_heartbeat() -> None:
    group = Group(settings={"cloudha.ms.takeover.timeout": 3})
    with pytest.raises(ConfigurationError, match=r"cloudha\.ms\.takeover\.timeout"):
        group.start("ms1")


def test_host_ha_of_a_host_runs_on_the_host_owner_whoever_wrote_its_config() -> None:
    group = Group(hosts=HOSTS[:4])
    provider = ScriptedHAProvider()
    servers = {
        server_id: group.start(
            server_id, ha_providers=[provider], host_ha_executors=HAExecutors.inline(group.clock)
        )
        for server_id in ("ms1", "ms2")
    }
    group.tick(3)
    assert group.owners() == {"ms1": 2, "ms2": 2}
    ms1_host = next(h.id for h in group.directory.list_hosts() if h.management_server_id == "ms1")
    ms2_ha = servers["ms2"].host_ha
    assert ms2_ha is not None
    ms2_ha.configure(ms1_host, provider.name)
    ms2_ha.enable(ms1_host)  # ms2 wrote the row last: CloudStack would let ms2 run it
    provider.healthy[ms1_host] = True
    written = ms2_ha.store.find(ms1_host)
    assert written is not None
    assert written.mgmt_server_id == "ms2"
    ms2_ha.tick()
    assert ms2_ha.store.find(ms1_host) == written  # ms2 does not follow a host it does not own
    ms1_ha = servers["ms1"].host_ha
    assert ms1_ha is not None
    ms1_ha.tick()
    config = ms1_ha.store.find(ms1_host)
    assert config is not None
    assert config.state is HAState.AVAILABLE
    assert config.mgmt_server_id == "ms1"


def test_a_server_whose_lease_ran_out_judges_nothing_until_a_heartbeat_goes_through() -> None:
    group = Group(hosts=HOSTS[:9])
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick(6)
    ms1 = group.servers["ms1"]
    mine = sorted(h.id for h in group.directory.list_hosts() if h.management_server_id == "ms1")
    assert mine
    for server in group.servers.values():
        server.monitor_tick()
    assert ms1.freshness.lapsed() is None
    # The whole group stalls past the lease (the takeover timeout less one heartbeat): no
    # peer declared ms1 departed yet, so its rows still name it at its epoch.
    group.clock.advance(TIMEOUT - BEAT)
    before = group.directory.find_host(mine[0])
    lapsed = ms1.freshness.lapsed()
    assert lapsed is not None
    assert "heartbeat" in lapsed
    assert not ms1.freshness.judging()
    investigations = len(group.kinds("investigation"))
    assert ms1.agents.disconnect_with_investigation(mine[0], Event.PING_TIMEOUT) is False
    assert group.directory.find_host(mine[0]) == before  # nothing judged, nothing written
    assert len(group.kinds("investigation")) == investigations
    # Nor a host row write that judges nothing: the row may not be its own any more.
    other = group.directory.find_host(mine[1])
    assert ms1.agents.disconnect_without_investigation(mine[1], Event.SHUTDOWN_REQUESTED) is False
    assert group.directory.find_host(mine[1]) == other
    held = [r for r in group.kinds("freshness", actor="ms1") if r.get("held")]
    assert held
    assert "heartbeat" in str(held[-1]["reason"])
    ms1.monitor_tick()
    view = ms1.freshness.view
    assert view is not None
    assert "membership" in view.causes
    ms1.cluster_tick()  # accepted: nobody declared it departed, the lease is back
    assert ms1.freshness.lapsed() is None
    assert not group.kinds("ownership_lost", actor="ms1")


def test_a_lapsed_lease_holds_even_with_the_freshness_gate_disabled() -> None:
    group = Group(hosts=HOSTS[:4], settings={"cloudha.freshness.enabled": False})
    ms1 = group.start("ms1")
    group.tick(2)
    assert ms1.freshness.judging()
    group.clock.advance(TIMEOUT)
    assert not ms1.freshness.judging()
    assert ms1.freshness.hold("investigation", host=HOSTS[0])
    group.tick()
    assert ms1.freshness.judging()


def test_works_the_departure_winner_failed_to_release_are_released_by_a_later_round() -> None:
    group = Group(hosts=HOSTS[:9])
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick(6)
    ms2 = group.servers["ms2"]
    ms2.ha.schedule_restart(group.orchestrator.find_vm("vm1"), investigate=True)  # type: ignore[arg-type]
    claimed = ms2.store.claim("ms2")
    assert claimed is not None
    group.stalled.add("ms2")
    failures: list[str] = []
    for server in group.servers.values():
        release = server.ha.on_server_left

        def failing(server_id: str, release: Callable[[str], int] = release) -> int:
            if not failures:
                failures.append(server_id)
                raise ConnectionError("the database went away after the departure committed")
            return release(server_id)

        server.ha.on_server_left = failing  # type: ignore[method-assign]
    for _ in range(int(2 * TIMEOUT / BEAT)):
        group.clock.advance(BEAT)
        for server_id, server in sorted(group.servers.items()):
            if server_id in group.stalled:
                continue
            with contextlib.suppress(ConnectionError):
                server.cluster_tick()
        group.connect_agents()
    assert failures == ["ms2"]
    assert {r.id: r.state for r in group.registry.servers()}["ms2"] is ServerState.DEPARTED
    assert not group.kinds("ms_departed")  # the winner failed half-way
    swept = group.kinds("ms_released")
    assert len(swept) == 1
    assert swept[0]["server"] == "ms2"
    assert swept[0]["works"] == 1
    released = ms2.store.get(claimed.id)
    assert released is not None
    assert released.mgmt_server_id is None
    assert group.owners() == {"ms1": 5, "ms3": 4} or group.owners() == {"ms1": 4, "ms3": 5}


def test_in_a_group_a_connected_host_is_monitored_only_by_its_owner() -> None:
    group = Group(hosts=HOSTS[:6])
    for host_id in group.hosts:
        host = group.directory.find_host(host_id)
        assert host is not None
        group.directory.replace(attrs.evolve(host, status=Status.UP))
    ms1 = group.start("ms1", connected=group.hosts)
    assert len(ms1.agents.ping_map) == 0  # nobody's yet: the claims decide
    group.tick(3)
    assert group.owners() == {"ms1": 6}
    assert sorted(ms1.agents.ping_map.hosts()) == sorted(group.hosts)


def test_a_departure_is_declared_when_due_and_every_survivor_claims_at_once() -> None:
    timeout = TIMEOUT + BEAT / 2  # not a whole number of heartbeats
    group = Group(hosts=HOSTS[:12], settings={"cloudha.ms.takeover.timeout": timeout})
    for server_id in ("ms1", "ms2", "ms3"):
        group.start(server_id)
    group.tick(6)
    assert group.owners() == {"ms1": 4, "ms2": 4, "ms3": 4}
    # From here each server runs on the delays its Cluster loop asks for; ms2 dies
    # right after a heartbeat the others have both seen.
    group.stalled.add("ms2")
    start = group.clock.monotonic()
    due = {"ms1": start + 0.3, "ms3": start + 0.7}  # their own phases
    while "ms2" in group.owners():
        server_id = min(due, key=lambda s: due[s])
        group.clock.set(due[server_id])
        due[server_id] += group.servers[server_id].cluster_tick()
        group.connect_agents()
        assert group.clock.monotonic() - start <= timeout + BEAT, "takeover too slow"
    took = group.clock.monotonic() - start
    (departed,) = group.kinds("ms_departed")
    # Silence is counted from each survivor's first round after ms2's last beat (up
    # to one heartbeat later), then the departure is declared when due, not up to a
    # heartbeat after that; the survivor that lost the declaration claims at once too.
    assert timeout <= took <= timeout + BEAT
    assert float(departed["silent"]) == pytest.approx(timeout, abs=0.01)  # type: ignore[arg-type]
    assert group.owners() == {"ms1": 6, "ms3": 6}
