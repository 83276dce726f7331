"""The escalation ladder: order, timeouts on the fake clock, evidence, reset, safety, wiring."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from cloudha import ConfigurationError, Host, Settings, Status, Verdict
from cloudha.detection.escalation import (
    AgentRestartLevel,
    BaseRecoveryLevel,
    EscalationLadder,
    FenceLevel,
    PowerCycleLevel,
)
from cloudha.errors import ProbeAuthError, ProbeHostKeyError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.model import HypervisorType, VmState
from cloudha.oobm.manager import OutOfBandManager, StaticOobmConfigs
from cloudha.oobm.power import OobmConfig, PowerOperation
from cloudha.ports import RecoveryLevel, RecoveryOutcome, RecoveryResult, ShellResult
from cloudha.testing import (
    FakeBmc,
    FakeClock,
    FakeHostShell,
    FakePowerDriver,
    ScriptedSuspicion,
    check_host_shell,
)

from .conftest import World, make_world

HOST = Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1")


class Scripted(BaseRecoveryLevel):
    """A level whose attempts answer from a list; records every call."""

    def __init__(
        self,
        name: str,
        outcomes: list[RecoveryOutcome],
        *,
        timeout: float | None = 100.0,
        disruptive: bool = False,
        why_not: str | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.disruptive = disruptive
        self.outcomes = outcomes
        self.why_not = why_not
        self.attempts: list[str] = []

    def applies(self, host: Host) -> str | None:
        return self.why_not

    def attempt(self, host: Host) -> RecoveryResult:
        self.attempts.append(host.id)
        return RecoveryResult(self.outcomes.pop(0), f"{self.name} scripted")


def ladder(
    *levels: RecoveryLevel, repeat_after: float | None = None
) -> tuple[EscalationLadder, FakeClock, EvidenceLog]:
    clock = FakeClock(1000.0)
    log = EvidenceLog()
    recorder = Recorder(log, clock, "ms1")
    lad = EscalationLadder(levels, clock=clock, recorder=recorder, repeat_after=repeat_after)
    return lad, clock, log


def steps(log: EvidenceLog) -> list[tuple[str | None, str]]:
    return [(r.details["level"], r.details["outcome"]) for r in log.records(kind="escalation")]


# -- the ladder alone ---------------------------------------------------------------------


def test_levels_run_in_order_one_at_a_time_each_abandoned_after_its_timeout() -> None:
    first = Scripted("one", [RecoveryOutcome.STARTED], timeout=120.0)
    second = Scripted("two", [RecoveryOutcome.STARTED], timeout=60.0)
    lad, clock, log = ladder(first, second, FenceLevel())
    assert lad.offer(HOST, proven_alive=False) is True
    assert (first.attempts, second.attempts) == (["h1"], [])
    clock.advance(119.0)
    assert lad.offer(HOST, proven_alive=False) is True  # within its timeout: held, nothing new
    assert second.attempts == []
    clock.advance(1.0)
    assert lad.offer(HOST, proven_alive=False) is True  # timed out: the next one next time
    assert second.attempts == []
    assert lad.position("h1") == "two"
    clock.advance(60.0)
    assert lad.offer(HOST, proven_alive=False) is True
    assert second.attempts == ["h1"]
    clock.advance(60.0)
    assert lad.offer(HOST, proven_alive=False) is True
    clock.advance(60.0)
    assert lad.offer(HOST, proven_alive=False) is False  # the fence level: the existing path
    assert lad.offer(HOST, proven_alive=False) is False
    assert steps(log) == [
        ("one", "started"),
        ("one", "timed_out"),
        ("two", "started"),
        ("two", "timed_out"),
        ("fence", "started"),
    ]
    timed_out = log.records(kind="escalation")[1]
    assert timed_out.host == "h1"
    assert timed_out.details["timeout"] == 120.0
    assert timed_out.details["step"] == 1
    assert "did not come back within 120s of one" in timed_out.reason


def test_a_failed_level_lets_the_next_act_at_once() -> None:
    first = Scripted("one", [RecoveryOutcome.FAILED])
    second = Scripted("two", [RecoveryOutcome.STARTED])
    lad, _, log = ladder(first, second)
    assert lad.offer(HOST, proven_alive=False) is True
    assert (first.attempts, second.attempts) == (["h1"], ["h1"])
    assert steps(log) == [("one", "failed"), ("two", "started")]


def test_a_level_that_does_not_apply_is_skipped_with_its_reason() -> None:
    first = Scripted("one", [], why_not="no SSH shell")
    second = Scripted("two", [RecoveryOutcome.STARTED])
    lad, _, log = ladder(first, second)
    lad.offer(HOST, proven_alive=False)
    assert first.attempts == []
    skipped = log.records(kind="escalation")[0]
    assert (skipped.details["outcome"], skipped.reason) == ("skipped", "no SSH shell")


def test_back_up_confirms_the_level_in_progress_and_starts_the_ladder_over() -> None:
    first = Scripted("one", [RecoveryOutcome.STARTED, RecoveryOutcome.STARTED])
    lad, clock, log = ladder(first, FenceLevel())
    lad.offer(HOST, proven_alive=False)
    clock.advance(30.0)
    lad.reset("h1", "h1 is Up again")
    assert lad.position("h1") is None
    succeeded = log.records(kind="escalation")[-1]
    assert succeeded.details["outcome"] == "succeeded"
    assert succeeded.reason == "h1 is Up again 30s after one"
    lad.offer(HOST, proven_alive=False)  # a new episode: from the first level again
    assert first.attempts == ["h1", "h1"]


def test_back_up_after_the_ladder_ended_is_a_reset_and_an_unknown_host_nothing() -> None:
    lad, _, log = ladder(Scripted("one", [RecoveryOutcome.FAILED]), FenceLevel())
    lad.reset("h1", "h1 is Up again")
    assert log.records() == []
    assert lad.offer(HOST, proven_alive=False) is False
    lad.reset("h1", "h1 is Up again")
    assert steps(log) == [("one", "failed"), ("fence", "started"), (None, "reset")]


def test_an_ended_ladder_starts_over_after_repeat_after_for_a_host_still_in_alert() -> None:
    first = Scripted("one", [RecoveryOutcome.FAILED, RecoveryOutcome.STARTED])
    lad, clock, log = ladder(first, FenceLevel(), repeat_after=600.0)
    assert lad.offer(HOST, proven_alive=False) is False
    clock.advance(599.0)
    assert lad.offer(HOST, proven_alive=False) is False
    assert first.attempts == ["h1"]
    clock.advance(1.0)
    assert lad.offer(HOST, proven_alive=False) is True
    assert first.attempts == ["h1", "h1"]
    assert steps(log) == [
        ("one", "failed"),
        ("fence", "started"),
        (None, "reset"),
        ("one", "started"),
    ]
    assert "600s after its ladder ended" in log.records(kind="escalation")[2].reason


def test_without_repeat_an_ended_ladder_stays_ended() -> None:
    first = Scripted("one", [RecoveryOutcome.FAILED])
    lad, clock, _ = ladder(first, FenceLevel())
    lad.offer(HOST, proven_alive=False)
    clock.advance(86400.0)
    assert lad.offer(HOST, proven_alive=False) is False
    assert first.attempts == ["h1"]


def test_a_disruptive_level_never_acts_on_a_host_found_alive() -> None:
    cycle = Scripted("power.cycle", [RecoveryOutcome.SUCCEEDED], disruptive=True)
    lad, _, log = ladder(cycle, FenceLevel())
    assert lad.offer(HOST, proven_alive=True) is False
    assert cycle.attempts == []
    skipped = log.records(kind="escalation")[0]
    assert skipped.details["outcome"] == "skipped"
    assert "found alive by its last investigation" in skipped.reason
    assert "a fence of a live host" in skipped.reason


def test_a_disruptive_level_stands_aside_for_host_ha_but_the_agent_restart_does_not() -> None:
    restart = Scripted("agent.restart", [RecoveryOutcome.FAILED])
    cycle = Scripted("power.cycle", [RecoveryOutcome.SUCCEEDED], disruptive=True)
    lad, _, log = ladder(restart, cycle)
    lad.stands_aside = lambda host: host.id == "h1"
    lad.offer(HOST, proven_alive=False)
    assert (restart.attempts, cycle.attempts) == (["h1"], [])
    assert log.records(kind="escalation")[1].reason == (
        "Host-HA owns h1: it alone resets and fences it"
    )


def test_a_level_that_settles_the_host_holds_it_and_the_ladder_moves_on() -> None:
    cycle = Scripted("power.cycle", [RecoveryOutcome.SUCCEEDED])
    lad, _, log = ladder(cycle, FenceLevel())
    assert lad.offer(HOST, proven_alive=False) is True
    assert lad.position("h1") == "fence"
    assert steps(log) == [("power.cycle", "succeeded")]


def test_a_host_back_up_during_a_failed_attempt_takes_no_further_level() -> None:
    cycle = Scripted("power.cycle", [RecoveryOutcome.SUCCEEDED], disruptive=True)
    lad, _, log = ladder(Scripted("one", []), cycle, FenceLevel())

    class BackDuringAttempt(Scripted):
        def attempt(self, host: Host) -> RecoveryResult:
            lad.reset(host.id, f"{host.id} is Up again")
            return super().attempt(host)

    first = BackDuringAttempt("one", [RecoveryOutcome.FAILED])
    lad.levels = (first, cycle, FenceLevel())
    assert lad.offer(HOST, proven_alive=False) is True
    assert cycle.attempts == []
    assert steps(log) == [("one", "failed")]
    assert lad.position("h1") is None


def test_a_level_that_raises_is_a_failed_step() -> None:
    class Broken(BaseRecoveryLevel):
        name = "broken"
        timeout: float | None = 10.0

        def attempt(self, host: Host) -> RecoveryResult:
            raise RuntimeError("bug")

    lad, _, log = ladder(Broken(), FenceLevel())
    assert lad.offer(HOST, proven_alive=False) is False
    failed = log.records(kind="escalation")[0]
    assert (failed.details["outcome"], failed.reason) == (
        "failed",
        "broken raised RuntimeError: bug",
    )


def test_bad_ladders_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="listed twice") as twice:
        ladder(Scripted("one", []), Scripted("one", []))
    assert twice.value.key == "cloudha.escalation.levels"
    with pytest.raises(ConfigurationError, match="must be the last"):
        ladder(FenceLevel(), Scripted("one", []))
    with pytest.raises(ConfigurationError, match="positive"):
        ladder(Scripted("one", [], timeout=0.0))
    clock = FakeClock()
    settings = Settings.from_mapping({"cloudha.escalation.levels": "agent.restart,reboot"})
    with pytest.raises(ConfigurationError, match="unknown level 'reboot'") as unknown:
        EscalationLadder.from_settings(
            settings,
            clock=clock,
            recorder=Recorder(EvidenceLog(), clock, "ms1"),
            shell=None,
            oobm=OutOfBandManager(clock=clock, configs=StaticOobmConfigs(), drivers=[]),
        )
    assert (unknown.value.key, unknown.value.value) == ("cloudha.escalation.levels", "reboot")


def test_the_levels_setting_is_checked_and_the_defaults_are_restart_then_fence() -> None:
    assert Settings().cloudha_escalation_levels == ("agent.restart", "fence")
    assert Settings().cloudha_escalation_enabled is True
    with pytest.raises(ConfigurationError, match=r"cloudha\.escalation\.agent\.restart\.timeout"):
        Settings.from_mapping({"cloudha.escalation.agent.restart.timeout": 1})


# -- the agent restart -------------------------------------------------------------------


def restart_level(shell: FakeHostShell | None, **kw: Any) -> AgentRestartLevel:
    return AgentRestartLevel(
        shell,
        service=kw.pop("service", "cloudstack-agent"),
        timeout=180.0,
        command_timeout=60.0,
        **kw,
    )


def test_agent_restart_runs_systemctl_restart_of_the_service_over_ssh() -> None:
    shell = FakeHostShell(["h1"])
    level = restart_level(shell, service="my-agent")
    result = level.attempt(HOST)
    assert shell.runs == [("h1", ("systemctl", "restart", "my-agent"))]
    assert result.outcome is RecoveryOutcome.STARTED
    assert "waiting up to 180s for the agent to reconnect" in result.reason


def test_agent_restart_with_its_own_command() -> None:
    shell = FakeHostShell(["h1"])
    level = restart_level(shell, command=("sudo", "/bin/systemctl", "restart", "{service}.service"))
    level.attempt(HOST)
    assert shell.runs == [("h1", ("sudo", "/bin/systemctl", "restart", "cloudstack-agent.service"))]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda s: s.reachable.clear(), "over SSH failed: ssh to h1 timed out after 60 s"),
        (
            lambda s: s.results.update({"h1": ShellResult(5, "", "Unit x.service not found.\n")}),
            "exited with status 5: Unit x.service not found.",
        ),
    ],
)
def test_agent_restart_fails_when_ssh_or_the_command_fails(setup: Any, reason: str) -> None:
    shell = FakeHostShell(["h1"])
    setup(shell)
    result = restart_level(shell).attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert reason in result.reason


@pytest.mark.parametrize("error", [ProbeHostKeyError, ProbeAuthError])
def test_a_refused_host_key_or_login_is_a_failed_restart(error: type[Exception]) -> None:
    class Refusing(FakeHostShell):
        def run(self, host: Host, argv: Any, *, timeout: float) -> ShellResult:
            raise error(f"{error.__name__} for 10.0.0.1:22", host_id=host.id)  # type: ignore[call-arg]

    result = restart_level(Refusing(["h1"])).attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert error.__name__ in result.reason


def test_agent_restart_needs_a_shell_and_an_agent() -> None:
    assert restart_level(None).applies(HOST) == (
        "no SSH shell to the hosts was given (the HostShell port)"
    )
    vmware = attrs.evolve(HOST, hypervisor=HypervisorType.VMWARE)
    assert "is managed directly" in (restart_level(FakeHostShell()).applies(vmware) or "")
    assert restart_level(FakeHostShell()).applies(HOST) is None
    with pytest.raises(ConfigurationError, match="service") as bad:
        restart_level(FakeHostShell(), service=" ")
    assert bad.value.key == "cloudha.escalation.agent.service"


class Lenient(FakeHostShell):
    """A shell that answers for every host: an unreachable one too."""

    def run(self, host: Host, argv: Any, *, timeout: float) -> ShellResult:
        if argv[0] == "echo":
            return ShellResult(0, "a;b $HOME\n")
        return ShellResult(1 if list(argv) == ["false"] else 0)


def test_the_fake_shell_keeps_the_host_shell_contract() -> None:
    check_host_shell(FakeHostShell(["h1"]), HOST, attrs.evolve(HOST, id="h9"))
    lenient = Lenient()
    with pytest.raises(AssertionError, match="an unreachable host raises"):
        check_host_shell(lenient, HOST, attrs.evolve(HOST, id="h9"))


# -- the power cycle -------------------------------------------------------------------


def power(bmc: FakeBmc | None = None) -> tuple[OutOfBandManager, FakeBmc, FakeClock]:
    clock = FakeClock()
    driver = FakePowerDriver(advance=clock.advance)
    bmc = driver.add("10.9.0.1", bmc if bmc is not None else FakeBmc("pw"))
    oobm = OutOfBandManager(
        clock=clock,
        configs=StaticOobmConfigs(
            {"h1": OobmConfig("fake", "10.9.0.1", "admin", "pw", host_id="h1")}
        ),
        drivers=[driver],
    )
    return oobm, bmc, clock


def recording(downs: list[tuple[str, str]]) -> Any:
    def declare_down(host_id: str, reason: str) -> bool:
        downs.append((host_id, reason))
        return True

    return declare_down


def test_power_cycle_resets_reads_back_on_and_declares_the_host_down() -> None:
    oobm, bmc, clock = power()
    downs: list[tuple[str, str]] = []
    level = PowerCycleLevel(oobm, timeout=60.0, clock=clock, declare_down=recording(downs))
    assert level.applies(HOST) is None
    result = level.attempt(HOST)
    assert bmc.calls == [PowerOperation.RESET, PowerOperation.STATUS]
    assert result.outcome is RecoveryOutcome.SUCCEEDED
    assert downs == [("h1", "power-cycled by the escalation ladder: its VMs died with the reset")]
    assert level.disruptive


def test_power_cycle_fails_on_a_silent_bmc_and_never_declares_down() -> None:
    oobm, _, clock = power(FakeBmc("pw", silent=True))
    downs: list[tuple[str, str]] = []
    level = PowerCycleLevel(oobm, timeout=30.0, clock=clock, declare_down=recording(downs))
    result = level.attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert "the power cycle failed" in result.reason
    assert downs == []


def test_power_cycle_needs_a_bmc_and_someone_to_declare_down() -> None:
    oobm, _, clock = power()
    assert PowerCycleLevel(oobm, timeout=60.0, clock=clock).applies(HOST) == (
        "nothing can declare the host Down after the reset"
    )
    other = attrs.evolve(HOST, id="h2")
    level = PowerCycleLevel(oobm, timeout=60.0, clock=clock, declare_down=lambda h, r: True)
    assert level.applies(other) == "h2 has no out-of-band management"


# -- wired into the AgentManager ----------------------------------------------------------


def alert_world(
    shell: FakeHostShell,
    *,
    verdict: Verdict = Verdict.UNKNOWN,
    settings: dict[str, Any] | None = None,
) -> tuple[World, EscalationLadder]:
    world = make_world(settings)
    world.add_host("h1", status=Status.ALERT, connect=False)
    world.investigator.script["h1"] = verdict
    oobm = OutOfBandManager(clock=world.clock, configs=StaticOobmConfigs(), drivers=[])
    lad = EscalationLadder.from_settings(
        world.settings,
        clock=world.clock,
        recorder=world.agents.recorder,
        shell=shell,
        oobm=oobm,
        declare_down=lambda h, r: world.agents.declare_down(h, r, no_vm_runs=True),
    )
    world.agents.escalation = lad
    world.agents.recover()  # the host in Alert is rechecked once its start grace is over
    world.clock.advance(world.agents.deadlines.start_grace("h1"))
    return world, lad


def test_a_dead_agent_is_restarted_at_the_recheck_and_the_host_is_up_again() -> None:
    world: World
    shell = FakeHostShell(["h1"], on_restart=lambda h, unit: world.agents.agent_connected(h))
    world, _ = alert_world(shell, verdict=Verdict.ALIVE)
    world.agents.recheck_alerted()
    assert shell.runs == [("h1", ("systemctl", "restart", "cloudstack-agent"))]
    assert world.status("h1") is Status.UP
    assert steps(world.evidence) == [("agent.restart", "started"), ("agent.restart", "succeeded")]
    assert world.evidence.records(kind="escalation")[1].reason == "h1 is Up again at once"
    assert world.scheduler.scheduled == []


def test_the_fast_path_waits_while_the_agent_restart_is_in_progress() -> None:
    shell = FakeHostShell(["h1"])  # the restart is accepted, the agent never reconnects
    world, _ = alert_world(shell)
    suspicion = ScriptedSuspicion()
    world.agents.suspicion = suspicion
    world.agents.recheck_alerted()
    assert suspicion.considered == []
    for _ in range(2):  # 60 s, 120 s: still within the 180 s
        world.clock.advance(60.0)
        world.agents.recheck_alerted()
    assert suspicion.considered == []
    world.clock.advance(60.0)  # 180 s: timed out; the fence level at the next recheck
    world.agents.recheck_alerted()
    assert suspicion.considered == []
    world.clock.advance(60.0)
    world.agents.recheck_alerted()
    assert suspicion.considered == ["h1"]
    assert steps(world.evidence) == [
        ("agent.restart", "started"),
        ("agent.restart", "timed_out"),
        ("fence", "started"),
    ]
    assert world.status("h1") is Status.ALERT


def test_an_unreachable_host_goes_to_the_fast_path_in_the_same_recheck() -> None:
    world, _ = alert_world(FakeHostShell())  # SSH times out: the same network as the agent
    suspicion = ScriptedSuspicion({"h1": True})
    world.agents.suspicion = suspicion
    assert world.agents.recheck_alerted() == ["h1"]
    assert suspicion.considered == ["h1"]
    assert world.status("h1") is Status.DOWN
    assert steps(world.evidence) == [("agent.restart", "failed"), ("fence", "started")]


def test_a_host_proven_down_at_the_recheck_is_not_offered_to_the_ladder() -> None:
    shell = FakeHostShell(["h1"])
    world, _ = alert_world(shell, verdict=Verdict.DEAD)
    assert world.agents.recheck_alerted() == ["h1"]
    assert shell.runs == []
    assert world.status("h1") is Status.DOWN


def test_power_cycle_through_the_agent_manager_hands_the_vms_over_as_killed() -> None:
    world = make_world({"cloudha.escalation.levels": "power.cycle,fence"})
    world.add_host("h1", status=Status.ALERT, connect=False)
    oobm, bmc, _ = power()
    oobm.clock = world.clock
    lad = EscalationLadder.from_settings(
        world.settings,
        clock=world.clock,
        recorder=world.agents.recorder,
        shell=None,
        oobm=oobm,
        declare_down=lambda h, r: world.agents.declare_down(h, r, no_vm_runs=True),
    )
    world.agents.escalation = lad
    world.agents.recover()
    world.clock.advance(world.agents.deadlines.start_grace("h1"))
    assert world.agents.recheck_alerted() == ["h1"]
    assert bmc.calls == [PowerOperation.RESET, PowerOperation.STATUS]
    assert world.status("h1") is Status.DOWN
    (scheduled,) = world.scheduler.scheduled
    assert (scheduled.host_id, scheduled.investigate) == ("h1", False)


def test_power_cycle_is_skipped_for_a_host_its_neighbours_see_alive() -> None:
    world = make_world({"cloudha.escalation.levels": "power.cycle,fence"})
    world.add_host("h1", status=Status.ALERT, connect=False)
    world.investigator.script["h1"] = Verdict.ALIVE
    oobm, bmc, _ = power()
    world.agents.escalation = EscalationLadder.from_settings(
        world.settings,
        clock=world.clock,
        recorder=world.agents.recorder,
        shell=None,
        oobm=oobm,
        declare_down=lambda h, r: world.agents.declare_down(h, r, no_vm_runs=True),
    )
    world.agents.recover()
    world.clock.advance(world.agents.deadlines.start_grace("h1"))
    world.agents.recheck_alerted()
    assert bmc.calls == []
    assert world.status("h1") is Status.ALERT
    assert steps(world.evidence) == [("power.cycle", "skipped"), ("fence", "started")]


def test_a_broken_ladder_leaves_the_host_to_the_existing_path() -> None:
    class Broken:
        def offer(self, host: Host, *, proven_alive: bool) -> bool:
            raise RuntimeError("bug")

        def reset(self, host_id: str, reason: str) -> None:
            raise RuntimeError("bug")

    world = make_world()
    world.add_host("h1", status=Status.ALERT, connect=False)
    world.agents.escalation = Broken()
    suspicion = ScriptedSuspicion()
    world.agents.suspicion = suspicion
    world.agents.recover()
    world.clock.advance(world.agents.deadlines.start_grace("h1"))
    world.agents.recheck_alerted()
    assert suspicion.considered == ["h1"]
    assert world.agents.agent_connected("h1") is True  # a failing reset does not stop it


# -- the in-place restart of a VM that crashed alone --------------------------------------


def crashed_alone(settings: dict[str, Any], *, reconnect: bool = False) -> tuple[Any, Any]:
    """vm1 dies alone on h2 (first-fit would pick h1); its restart is run to the end."""
    from cloudha import PingReport, Vm

    from .test_server import HOSTS, Cloud, run

    cloud = Cloud([Vm("vm1", host_id="h2", last_host_id="h2", ha_enabled=True)])
    cloud.settings = Settings.from_mapping({"ping.interval": 10, **settings})
    server = cloud.server()
    server.recover()
    for host_id in HOSTS:  # the agents connect; h2 reports vm1
        assert server.agents.agent_connected(host_id, vms=["vm1"] if host_id == "h2" else [])
    cloud.investigator.script["vm1"] = Verdict.DEAD  # h2 no longer runs it
    if reconnect:
        server.ping_map.disconnect("h2")  # h2 went away and came back without vm1
        assert server.agents.agent_connected("h2", vms=[])
    else:
        report = PingReport("h2", vms=frozenset())
        for _ in range(3):  # missing from every report for more than the grace (20 s)
            assert server.agents.ping_received(report)
            cloud.clock.advance(10.5)
    run(server, cloud.clock, 30, alive=HOSTS)
    return cloud, cloud.orchestrator.find_vm("vm1")


def test_a_vm_that_crashed_alone_on_an_up_host_restarts_there_first() -> None:
    cloud, vm1 = crashed_alone({})
    assert (vm1.state, vm1.host_id) == (VmState.RUNNING, "h2")
    (start,) = cloud.orchestrator.starts
    assert start.host_id == "h2"
    (in_place,) = [r for r in cloud.evidence.records(kind="ha_work") if "in_place" in r.details]
    assert in_place.details["in_place"] == "h2"
    assert in_place.reason == "the VM crashed alone on Up host h2: restarting it there first"


def test_without_in_place_the_planner_alone_picks_the_host() -> None:
    cloud, vm1 = crashed_alone({"cloudha.vm.restart.in.place": False})
    assert (vm1.state, vm1.host_id) == (VmState.RUNNING, "h1")
    assert [r for r in cloud.evidence.records(kind="ha_work") if "in_place" in r.details] == []


def test_a_vm_lost_with_a_host_that_came_back_is_not_restarted_in_place() -> None:
    _, vm1 = crashed_alone({}, reconnect=True)
    assert (vm1.state, vm1.host_id) == (VmState.RUNNING, "h1")


def test_the_fake_orchestrator_honours_prefer_host_unless_it_is_avoided_or_full() -> None:
    from cloudha import Vm
    from cloudha.ha.orchestrator import Planner, StartParams
    from cloudha.testing import FakeOrchestratorHost, InMemoryOrchestrator

    def start(params: StartParams, *, full: bool = False) -> str:
        orch = InMemoryOrchestrator(
            [FakeOrchestratorHost("h1"), FakeOrchestratorHost("h2", capacity=0 if full else 1)],
            [Vm("vm1", state=VmState.STOPPED, ha_enabled=True)],
        )
        vm = orch.find_vm("vm1")
        assert vm is not None
        return orch.advance_start(vm, params, Planner.DEFAULT)

    assert start(StartParams(generation=1)) == "h1"
    assert start(StartParams(generation=1, prefer_host="h2")) == "h2"
    assert start(StartParams(generation=1, prefer_host="h2"), full=True) == "h1"
    only = StartParams(generation=1, prefer_host="h2", avoid_hosts={"h2"})
    assert start(only) == "h1"
