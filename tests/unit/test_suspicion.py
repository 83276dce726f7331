"""Fence on suspicion: the pure decision, the witnesses gathered, and the AgentManager hook."""

from __future__ import annotations

from typing import Any

import pytest

from cloudha import (
    Answer,
    BaseInvestigator,
    Command,
    ConfigurationError,
    DomainState,
    Event,
    Finding,
    Host,
    HypervisorInvestigator,
    Pool,
    ReasonType,
    Settings,
    Status,
    Verdict,
)
from cloudha.commands import CHECK_ON_HOST, PING_TEST, UNSUPPORTED, answer_reached
from cloudha.detection.suspicion import SuspicionFencer, decide_suspicion, late_after
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.oobm.manager import OutOfBandManager, StaticOobmConfigs
from cloudha.oobm.power import OobmConfig, PowerOperation
from cloudha.testing import (
    FakeAgentGateway,
    FakeBmc,
    FakeClock,
    FakeHypervisorProbe,
    FakePowerDriver,
    InMemoryHostDirectory,
    InMemoryStoragePools,
    ScheduledRestart,
    ScriptedSuspicion,
    check_suspicion_check,
)

from .conftest import World

TIMING = HeartbeatTiming()  # 60 s period, 60 s write timeout, 5 s skew
LATE = late_after(TIMING)


def test_late_is_one_period_one_write_timeout_and_the_skew() -> None:
    assert LATE == 125.0
    assert late_after(HeartbeatTiming(frequency=1, write_timeout=2, clock_skew=0.5)) == 3.5


def decide(**overrides: Any) -> Any:
    """The decision for a host that qualifies, with ``overrides`` applied."""
    kwargs: dict[str, Any] = {
        "host_id": "h1",
        "status": Status.ALERT,
        "agent": None,
        "pings": {"h2": False, "h3": False},
        "heartbeat_pools": ["nfs1", "nfs2"],
        "heartbeat_ages": {"nfs1": 200.0, "nfs2": 130.0},
        "late": LATE,
        "fence_ready": True,
        "fence_answer": "BMC answered: power is On",
    }
    kwargs.update(overrides)
    return decide_suspicion(**kwargs)


def test_a_host_every_witness_lost_qualifies_with_each_answer_listed() -> None:
    decision = decide()
    assert decision.qualifies
    assert decision.reason == (
        "h1 is lost to every witness: agent silent, 2 neighbour(s) cannot reach it,"
        " heartbeat late on 2 pool(s); its BMC is ready"
    )
    assert [w.to_dict() for w in decision.witnesses] == [
        {"witness": "agent", "answer": "no answer", "for_fence": True},
        {"witness": "ping h2", "answer": "does not reach it", "for_fence": True},
        {"witness": "ping h3", "answer": "does not reach it", "for_fence": True},
        {"witness": "heartbeat nfs1", "answer": "200 s old, late after 125 s", "for_fence": True},
        {"witness": "heartbeat nfs2", "answer": "130 s old, late after 125 s", "for_fence": True},
        {"witness": "fence path", "answer": "BMC answered: power is On", "for_fence": True},
    ]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"status": Status.UP}, "h1 is Up, not Alert"),
        ({"status": Status.DISCONNECTED}, "h1 is Disconnected, not Alert"),
        ({"agent": "healthy"}, "the agent of h1 answers"),
        ({"pings": {"h2": False, "h3": True}}, "h3 reach h1"),
        ({"pings": {"h2": None, "h3": None}}, "no neighbour of h1 could be asked to ping it"),
        ({"heartbeat_ages": {"nfs1": 200.0, "nfs2": 125.0}}, "not late on nfs2"),
        ({"heartbeat_ages": {}}, "no checker could read the heartbeat of h1"),
        ({"heartbeat_ages": None}, "no checker could read the heartbeat of h1"),
        (
            {"pings": {}, "heartbeat_pools": [], "heartbeat_ages": {}},
            "only the management server lost h1: no neighbour, no heartbeat",
        ),
        (
            {"fence_ready": False, "fence_answer": "BMC check failed: silent"},
            "the fence path of h1 is not ready (BMC check failed: silent)",
        ),
    ],
)
def test_any_witness_that_still_sees_the_host_rules_the_fast_path_out(
    overrides: dict[str, Any], reason: str
) -> None:
    decision = decide(**overrides)
    assert not decision.qualifies
    assert decision.reason.startswith("no fence on suspicion: ")
    assert reason in decision.reason


def test_one_neighbour_that_cannot_be_asked_does_not_stop_one_that_answers() -> None:
    assert decide(pings={"h2": None, "h3": False}).qualifies


def test_a_late_heartbeat_alone_or_a_failed_ping_alone_is_a_positive_sign() -> None:
    # No neighbour Up to ping it, but neighbours... of another cluster read its pool.
    assert decide(pings={}).qualifies
    # No heartbeat pools (not KVM), but its neighbours cannot reach it.
    assert decide(heartbeat_pools=[], heartbeat_ages={}).qualifies


def test_an_unread_pool_is_ignored_when_another_is_read_late() -> None:
    decision = decide(heartbeat_ages={"nfs1": 300.0})
    assert decision.qualifies
    answers = {w.witness: w.answer for w in decision.witnesses}
    assert answers["heartbeat nfs2"] == "no checker could read it"


# -- SuspicionFencer: the witnesses, asked for real ----------------------------------


class Cluster:
    """h1 (the suspect, with a BMC) and its neighbours h2, h3, all KVM on nfs1."""

    def __init__(self, bmc: FakeBmc | None = None) -> None:
        self.clock = FakeClock(10_000.0)
        self.hosts = {
            "h1": Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1"),
            "h2": Host(id="h2", status=Status.UP, cluster="c1", private_ip="10.0.0.2"),
            "h3": Host(id="h3", status=Status.UP, cluster="c1", private_ip="10.0.0.3"),
        }
        self.directory = InMemoryHostDirectory(self.hosts.values())
        self.agent_up: set[str] = {"h2", "h3"}
        self.reaches: dict[str, bool] = {"h2": False, "h3": False}
        self.age: dict[str, float | None] = {"h2": 200.0, "h3": 190.0}
        self.sent: list[tuple[str, str]] = []
        self.gateway = FakeAgentGateway(handler=self._handle)
        self.gateway.healthy.update({"h2": True, "h3": True})
        driver = FakePowerDriver(advance=self.clock.advance)
        self.bmc = driver.add("10.9.0.1", bmc if bmc is not None else FakeBmc("pw"))
        self.oobm = OutOfBandManager(
            clock=self.clock,
            configs=StaticOobmConfigs(
                {"h1": OobmConfig("fake", "10.9.0.1", "admin", "pw", host_id="h1")}
            ),
            drivers=[driver],
        )
        self.evidence = EvidenceLog()
        self.fencer = SuspicionFencer(
            clock=self.clock,
            directory=self.directory,
            gateway=self.gateway,
            oobm=self.oobm,
            pools=InMemoryStoragePools([Pool("nfs1", "/mnt/nfs1", cluster="c1")]),
            timing=TIMING,
            recorder=Recorder(self.evidence, self.clock, "ms1"),
            timeout=5.0,
            fence_timeout=30.0,
        )

    def _handle(self, host: Host, command: Command) -> Answer:
        self.sent.append((host.id, command.name))
        if host.id not in self.agent_up:
            raise ProbeTimeout(f"{host.id} silent", host_id=host.id)
        if command.name == PING_TEST:
            return Answer(self.reaches[host.id])
        if command.name == CHECK_ON_HOST:
            age = self.age[host.id]
            reading: dict[str, Any] = {
                "pool_id": "nfs1",
                "mount_point": "/mnt/nfs1",
                "verdict": "UNKNOWN" if age is None else "ALIVE",
                "reason": "read",
                "written_at": None if age is None else int(10_000 - age),
                "age": age,
            }
            report = {
                "target_ip": "10.0.0.1",
                "verdict": reading["verdict"],
                "reason": "read",
                "threshold": 465.0,
                "readings": [reading],
            }
            return Answer(True, "read", report)
        raise ProbeConnectionError(f"{command.name} not scripted", host_id=host.id)

    def records(self) -> list[dict[str, Any]]:
        return [{**r.details, "reason": r.reason} for r in self.evidence.records(kind="suspicion")]


def test_a_host_lost_to_every_witness_is_powered_off_and_read_back() -> None:
    c = Cluster()
    assert c.fencer.consider(c.hosts["h1"])
    assert c.bmc.power == "off"
    # readiness STATUS, then the fencer's STATUS, OFF and the read-back
    assert c.bmc.calls == [
        PowerOperation.STATUS,
        PowerOperation.STATUS,
        PowerOperation.OFF,
        PowerOperation.STATUS,
    ]
    (record,) = c.records()
    assert record["qualifies"] is True
    assert record["outcome"] == "FENCED"
    assert record["fencer"] == "PowerFencer"
    assert record["fence"] == "h1 powered off and read back Off"
    witnesses = {w["witness"]: (w["answer"], w["for_fence"]) for w in record["witnesses"]}
    assert witnesses == {
        "agent": ("no answer", True),
        "ping h2": ("does not reach it", True),
        "ping h3": ("does not reach it", True),
        "heartbeat nfs1": ("190 s old, late after 125 s", True),
        "fence path": ("BMC answered: power is On", True),
    }
    assert "pw" not in repr(record)


def test_a_neighbour_that_reaches_the_host_stops_it_before_storage_or_bmc_are_asked() -> None:
    c = Cluster()
    c.reaches["h3"] = True
    assert not c.fencer.consider(c.hosts["h1"])
    assert c.bmc.calls == []
    assert (CHECK_ON_HOST in {name for _, name in c.sent}) is False
    (record,) = c.records()
    assert record["qualifies"] is False
    assert record["reason"] == "no fence on suspicion: h3 reach h1"
    assert "outcome" not in record
    answers = {w["witness"]: w["answer"] for w in record["witnesses"]}
    assert answers["heartbeat nfs1"] == "not asked"


def test_a_heartbeat_written_recently_stops_the_fast_path() -> None:
    c = Cluster()
    c.age["h3"] = 61.0
    assert not c.fencer.consider(c.hosts["h1"])
    assert c.bmc.power == "on"
    assert "not late on nfs1" in c.records()[0]["reason"]


def test_an_agent_that_answers_stops_the_fast_path_at_once() -> None:
    c = Cluster()
    c.agent_up.add("h1")
    c.gateway.healthy["h1"] = True
    assert not c.fencer.consider(c.hosts["h1"])
    assert c.sent == []  # nobody else was asked
    assert c.records()[0]["reason"] == "no fence on suspicion: the agent of h1 answers"


def test_a_fence_not_read_back_off_does_not_count() -> None:
    c = Cluster(FakeBmc("pw", ignore_off=True))
    assert not c.fencer.consider(c.hosts["h1"])
    (record,) = c.records()
    assert record["qualifies"] is True
    assert record["outcome"] == "NOT_FENCED"
    assert "the fence was not confirmed: h1 was not read back Off within 30s" in record["reason"]


def test_a_silent_bmc_is_no_fence_path() -> None:
    c = Cluster(FakeBmc("pw", silent=True))
    assert not c.fencer.consider(c.hosts["h1"])
    assert "the fence path of h1 is not ready (BMC check failed" in c.records()[0]["reason"]
    assert c.bmc.calls == [PowerOperation.STATUS]


def test_a_host_without_out_of_band_management_is_not_considered() -> None:
    c = Cluster()
    h2 = c.hosts["h2"]
    assert not c.fencer.applies(h2)
    assert not c.fencer.consider(h2)
    assert c.records() == []
    assert c.sent == []


def test_from_settings_takes_the_timeouts_and_timing_of_the_settings() -> None:
    c = Cluster()
    settings = Settings.from_mapping(
        {
            "ping.interval": 20,
            "outofbandmanagement.action.timeout": 45,
            "kvm.heartbeat.update.frequency": 10_000,
            "heartbeat.update.timeout": 5_000,
            "kvm.ha.fence.on.storage.heartbeat.failure": True,
        }
    )
    fencer = SuspicionFencer.from_settings(
        settings,
        clock=c.clock,
        directory=c.directory,
        gateway=c.gateway,
        oobm=c.oobm,
        pools=None,
        recorder=Recorder(c.evidence, c.clock, "ms1"),
    )
    assert (fencer.timeout, fencer.fencer.timeout, fencer.fail_on_one_pool) == (20, 45, True)
    assert late_after(fencer.timing) == 10 + 5 + 5
    with pytest.raises(ConfigurationError, match="fence_timeout must be positive"):
        SuspicionFencer(
            clock=c.clock,
            directory=c.directory,
            gateway=c.gateway,
            oobm=c.oobm,
            pools=None,
            timing=TIMING,
            recorder=Recorder(c.evidence, c.clock, "ms1"),
            timeout=1.0,
            fence_timeout=0.0,
        )


# -- the AgentManager hook ------------------------------------------------------------


def test_a_host_entering_alert_that_the_fast_path_fenced_is_down_at_once(world: World) -> None:
    suspicion = ScriptedSuspicion({"h1": True})
    world.agents.suspicion = suspicion
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert suspicion.considered == ["h1"]
    assert world.status("h1") is Status.DOWN
    assert [c.event for c in world.directory.changes] == [
        Event.AGENT_DISCONNECTED,
        Event.HOST_DOWN,
    ]
    # The fence read the power back Off: nothing runs there, so the VMs are
    # handed over as proven stopped (investigate=False: no second fence).
    assert world.scheduler.scheduled == [ScheduledRestart("h1", False, ReasonType.HOST_DOWN)]
    assert "Host down, h1" in world.alerts.subjects()
    assert world.agents.alert_watch == frozenset()


def test_the_fast_path_is_offered_at_every_recheck_and_a_failure_keeps_the_host_watched(
    world: World,
) -> None:
    suspicion = ScriptedSuspicion()
    suspicion.raises.add("h1")
    world.agents.suspicion = suspicion
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.ALIVE
    world.investigator.unreachable.add("h1")
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.ALERT  # a raising fast path changes nothing
    suspicion.raises.clear()
    world.run_monitor(world.clock.monotonic() + 2 * world.settings.ping_interval)
    assert world.status("h1") is Status.ALERT
    assert suspicion.considered == ["h1", "h1", "h1"]
    assert world.agents.alert_watch == frozenset({"h1"})
    suspicion.fence["h1"] = True
    world.run_monitor(world.clock.monotonic() + world.settings.ping_interval + 1)
    assert world.status("h1") is Status.DOWN
    assert len(world.scheduler.scheduled) == 1
    assert world.agents.alert_watch == frozenset()


def test_the_fast_path_is_not_offered_a_host_that_is_not_in_alert(world: World) -> None:
    suspicion = ScriptedSuspicion({"h1": True})
    world.agents.suspicion = suspicion
    world.add_host("h1")
    world.investigator.script["h1"] = Verdict.DEAD
    assert world.agents.disconnect_with_investigation("h1", Event.PING_TIMEOUT)
    assert world.status("h1") is Status.DOWN
    assert suspicion.considered == []


# -- the contract checker -------------------------------------------------------------


def test_the_suspicion_fencer_and_the_fake_keep_the_contract() -> None:
    c = Cluster()
    # Ports that know none of the sample hosts: a gateway that fails everything.
    c.gateway.healthy.clear()
    check_suspicion_check(c.fencer)
    check_suspicion_check(ScriptedSuspicion())


def test_the_contract_checker_lists_every_broken_rule() -> None:
    class Reckless:
        def consider(self, host: Host) -> bool:
            if host.id == "contract-kvm":
                raise ProbeTimeout("BMC silent", host_id=host.id)
            return host.id == "contract-no-ip"  # fences an Up host

    class Vague:
        def consider(self, host: Host) -> object:
            return None

    with pytest.raises(AssertionError) as caught:
        check_suspicion_check(Reckless())
    text = str(caught.value)
    assert "consider(contract-kvm, Alert) raised ProbeTimeout" in text
    assert "consider(contract-no-ip) fenced a host that is Up, not Alert" in text
    with pytest.raises(AssertionError, match="returned None, not a bool"):
        check_suspicion_check(Vague())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="has no method consider"):
        check_suspicion_check(object())  # type: ignore[arg-type]


def test_a_directory_that_does_not_answer_is_no_judgement_and_no_fence() -> None:
    c = Cluster()

    def outage(**_: object) -> list[Host]:
        raise ProbeConnectionError("the host directory does not answer")

    c.directory.list_hosts = outage  # type: ignore[method-assign]
    assert not c.fencer.consider(c.hosts["h1"])
    assert c.records() == []
    assert c.bmc.calls == []


def test_a_gateway_that_cannot_run_a_ping_is_no_neighbour_answer() -> None:
    c = Cluster()
    real = c._handle

    def no_ping(host: Host, command: Command) -> Answer:
        if command.name == PING_TEST:
            return Answer(False, "PingTestCommand is not supported over SSH", UNSUPPORTED)
        return real(host, command)

    c.gateway.handler = no_ping
    assert answer_reached(Answer(False, "no reply")) is False
    assert answer_reached(Answer(False, "x", UNSUPPORTED)) is None
    assert answer_reached(Answer(True)) is True
    assert not c.fencer.consider(c.hosts["h1"])
    (record,) = c.records()
    assert record["reason"] == "no fence on suspicion: no neighbour of h1 could be asked to ping it"
    answers = {w["witness"]: w["answer"] for w in record["witnesses"]}
    assert answers["ping h2"] == "could not be asked"
    assert PowerOperation.OFF not in c.bmc.calls
    assert c.bmc.power == "on"


def test_vms_seen_running_rule_the_fence_out() -> None:
    decision = decide(vms_seen={"LibvirtInvestigator": "2 domains running"})
    assert not decision.qualifies
    assert decision.reason.endswith("LibvirtInvestigator sees the VMs of h1 running")
    assert [w.witness for w in decision.witnesses][-1] == "LibvirtInvestigator"
    assert "fence path" not in [w.witness for w in decision.witnesses]


def test_a_vm_witness_that_sees_domains_stops_the_fence_and_a_broken_one_is_ignored() -> None:
    c = Cluster()
    probe = FakeHypervisorProbe(
        answering={"h1": True}, domains={("h1", "i-1"): DomainState.RUNNING}
    )
    seeing = HypervisorInvestigator(c.clock, probe=probe, timeout=5.0)

    class Broken(BaseInvestigator):
        name = "Broken"
        vm_witness = True

        def _agent_alive(self, host: Host) -> Finding:
            raise RuntimeError("plugin bug")

    c.fencer.vm_witnesses = (Broken(c.clock), seeing)
    assert not c.fencer.consider(c.hosts["h1"])
    (record,) = c.records()
    assert (
        record["reason"] == "no fence on suspicion: LibvirtInvestigator sees the VMs of h1 running"
    )
    assert c.bmc.calls == []  # the BMC is not even asked
    # Without domains the libvirt witness says nothing of VMs, and the fence goes on.
    probe.domains.clear()
    assert c.fencer.consider(c.hosts["h1"])
