"""The Host-HA manager's poll loop, its executors and its bridge to VM-HA (spec §7.5)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cloudha.errors import ConfigurationError, HACheckError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.ha.store import create_schema
from cloudha.hostha import (
    CLUSTER,
    POLL_INTERVAL,
    ZONE,
    BoundedExecutor,
    HAConfig,
    HAEvent,
    HAExecutors,
    HAManager,
    HAProviderConfig,
    HAState,
    HostHAInvestigator,
    InlineExecutor,
    SqlHAConfigStore,
)
from cloudha.investigators import Verdict
from cloudha.model import AlertType, Host, Vm
from cloudha.status import Status
from cloudha.testing import (
    FakeClock,
    InMemoryHostDirectory,
    RecordingAlertSink,
    ScriptedHAProvider,
    check_ha_provider,
)

T0 = 1_800_000_000.0

# Small numbers so a test walks the whole machine in a few polls.
CONFIG = HAProviderConfig(
    health_check_timeout=5.0,
    activity_check_timeout=5.0,
    activity_check_interval=10.0,
    activity_check_max_attempts=3,
    activity_check_failure_ratio=0.5,
    degraded_max_period=30.0,
    recover_timeout=5.0,
    recover_wait_period=20.0,
    recover_failure_threshold=1,
    fence_timeout=5.0,
)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class Rig:
    def __init__(self, engine: sa.Engine, *, server_id: str = "ms1") -> None:
        self.clock = FakeClock(T0)
        self.directory = InMemoryHostDirectory(
            [
                Host(id=h, cluster="c1", status=Status.UP, private_ip=f"10.0.0.{i}")
                for i, h in enumerate(["h1", "h2", "h3"], 1)
            ]
        )
        self.store = SqlHAConfigStore(engine, self.clock)
        self.provider = ScriptedHAProvider(CONFIG)
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        self.downs: list[tuple[str, str, bool]] = []
        self.manager = HAManager(
            server_id=server_id,
            store=self.store,
            directory=self.directory,
            providers=[self.provider],
            clock=self.clock,
            alerts=self.alerts,
            recorder=Recorder(self.evidence, self.clock, server_id),
            executors=HAExecutors.inline(self.clock),
            on_down=lambda host_id, reason, proven: self.downs.append((host_id, reason, proven)),
        )

    def enable(self, host_id: str = "h1") -> HAConfig:
        self.manager.configure(host_id, self.provider.name)
        return self.manager.enable(host_id)

    def dies(self, *, recovers: bool = False, fences: bool = False, proven: bool = False) -> None:
        """h1 fails its health checks and shows no activity; how a reset and a fence end."""
        script = self.provider
        script.healthy["h1"] = False
        script.activity["h1"] = [False]
        script.recovers["h1"] = recovers
        script.fences["h1"] = fences
        script.proven["h1"] = proven

    def state(self, host_id: str = "h1") -> HAState | None:
        config = self.store.find(host_id)
        assert config is not None
        return config.state

    def poll(self, times: int = 1) -> None:
        for _ in range(times):
            assert self.manager.tick() == POLL_INTERVAL
            self.clock.advance(POLL_INTERVAL)

    def poll_until(self, state: HAState, host_id: str = "h1", limit: int = 200) -> None:
        for _ in range(limit):
            if self.state(host_id) is state:
                return
            self.poll()
        raise AssertionError(f"{host_id} never reached {state}; it is {self.state(host_id)}")

    def transitions(self, host_id: str = "h1") -> list[tuple[str | None, str, str]]:
        return [
            (_str_or_none(e.details["from"]), str(e.details["event"]), str(e.details["to"]))
            for e in self.evidence
            if e.kind == "ha_state" and e.host == host_id
        ]


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def rig(engine: sa.Engine) -> Rig:
    return Rig(engine)


# -- enabling --------------------------------------------------------------------------


def test_enable_makes_a_configured_host_available(rig: Rig) -> None:
    config = rig.manager.configure("h1", rig.provider.name)
    assert (config.state, config.enabled) == (HAState.DISABLED, False)
    assert not rig.manager.owns(rig.directory.find_host("h1"))  # type: ignore[arg-type]
    enabled = rig.manager.enable("h1")
    assert (enabled.state, enabled.enabled, enabled.mgmt_server_id) == (
        HAState.AVAILABLE,
        True,
        "ms1",
    )
    assert rig.manager.owns(rig.directory.find_host("h1"))  # type: ignore[arg-type]
    assert rig.transitions() == [
        (None, "Disabled", "Disabled"),
        ("Disabled", "Enabled", "Available"),
    ]
    rig.poll(3)
    assert rig.state() is HAState.AVAILABLE
    assert rig.provider.count("is_healthy", "h1") == 3


def test_configure_names_what_is_wrong(rig: Rig) -> None:
    with pytest.raises(ConfigurationError, match="no host 'h9'"):
        rig.manager.configure("h9", rig.provider.name)
    with pytest.raises(ConfigurationError, match="no Host-HA provider 'nope'") as caught:
        rig.manager.configure("h1", "nope")
    assert caught.value.key == "provider"
    with pytest.raises(ConfigurationError, match="configure it first"):
        rig.manager.enable("h2")


def test_disable_leaves_the_host_to_the_regular_path(rig: Rig) -> None:
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.poll()
    assert rig.state() is HAState.SUSPECT
    config = rig.manager.disable("h1")
    assert config is not None
    assert config.state is HAState.DISABLED
    assert config.mgmt_server_id is None
    assert not rig.manager.owns(rig.directory.find_host("h1"))  # type: ignore[arg-type]
    calls = len(rig.provider.calls)
    rig.poll(3)
    assert len(rig.provider.calls) == calls  # a disabled host is not checked
    rig.manager.enable("h1")
    assert rig.state() is HAState.AVAILABLE


def test_a_host_gone_from_the_directory_is_disabled(rig: Rig) -> None:
    rig.enable()
    rig.directory.remove("h1")
    rig.poll()
    config = rig.store.find("h1")
    assert config is not None
    assert (config.state, config.enabled) == (HAState.DISABLED, False)


def test_a_row_owned_by_another_server_is_left_alone(engine: sa.Engine) -> None:
    other = Rig(engine, server_id="ms2")
    other.enable()
    mine = Rig(engine)
    mine.poll(3)
    assert mine.provider.calls == []
    assert other.store.find("h1").mgmt_server_id == "ms2"  # type: ignore[union-attr]
    other.manager.stop(1.0)  # frees its rows: the first writer wins them
    mine.poll()
    assert mine.provider.count("is_healthy", "h1") == 1
    assert mine.store.find("h1").mgmt_server_id == "ms1"  # type: ignore[union-attr]


# -- the acceptance paths of CloudStack's Host-HA ----------------------------------------


def test_health_fails_then_degraded_while_activity_continues(rig: Rig) -> None:
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.provider.activity["h1"] = [True]
    rig.poll()
    assert rig.state() is HAState.SUSPECT
    rig.poll_until(HAState.DEGRADED)
    assert rig.provider.count("has_activity", "h1") == CONFIG.activity_check_max_attempts
    assert rig.transitions()[2:6] == [
        ("Available", "HealthCheckFailed", "Suspect"),
        ("Suspect", "PerformActivityCheck", "Checking"),
        ("Checking", "TooFewActivityCheckSamples", "Suspect"),
        ("Suspect", "PerformActivityCheck", "Checking"),
    ]
    assert rig.transitions()[-1] == (
        "Checking",
        "ActivityCheckFailureUnderThresholdRatio",
        "Degraded",
    )
    # No reset, no fence, nothing handed over: a host that writes is left alone.
    assert rig.provider.count("recover") == rig.provider.count("fence") == 0
    assert rig.downs == []
    # Degraded long enough: its activity is checked again (a new series).
    rig.poll_until(HAState.SUSPECT)
    assert ("Degraded", "PeriodicRecheckResourceActivity", "Suspect") in rig.transitions()
    # Healthy again: Available, counters reset.
    rig.provider.healthy["h1"] = True
    rig.poll_until(HAState.AVAILABLE)


def test_samples_are_taken_no_more_often_than_the_interval(rig: Rig) -> None:
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.poll(12)  # 48 s: a sample at most every 10 s, so 5 at most
    assert 1 <= rig.provider.count("has_activity", "h1") <= 5


def test_no_activity_reset_fails_fence_fenced_vms_handed_over(rig: Rig) -> None:
    rig.enable()
    rig.dies(fences=True)
    rig.poll_until(HAState.FENCED)
    assert [t[1] for t in rig.transitions()][-3:] == [
        "ActivityCheckFailureOverThresholdRatio",
        "RecoveryOperationThresholdExceeded",
        "Fenced",
    ]
    assert rig.provider.count("recover", "h1") == 1
    assert rig.provider.count("fence", "h1") == 1
    assert rig.provider.count("proves_dead", "h1") == 0
    (down,) = rig.downs
    assert down[0] == "h1"
    assert down[2] is True  # the power read back Off: nothing runs there
    assert "the power was read back Off" in down[1]
    subjects = [a.subject for a in rig.alerts.alerts]
    assert "HA Recovery of host h1 failed" in subjects
    assert "HA Fencing of host h1 performed" in subjects
    assert all(a.type is AlertType.HA_ACTION for a in rig.alerts.alerts)
    fence = [e for e in rig.evidence if e.kind == "host_ha_fence"]
    assert [e.details["fenced"] for e in fence] == [True]
    # Fenced and still unhealthy: it stays Fenced, nothing more is done.
    rig.poll(5)
    assert rig.state() is HAState.FENCED
    assert rig.provider.count("fence", "h1") == 1


def test_a_successful_reset_is_recovered_then_available(rig: Rig) -> None:
    rig.enable()
    rig.dies(recovers=True)
    rig.poll_until(HAState.RECOVERED)
    assert rig.downs == [("h1", "Host-HA reset the host: its VMs died with the reset", True)]
    rig.provider.healthy["h1"] = True
    recovered_at = rig.clock.monotonic()
    rig.poll_until(HAState.AVAILABLE)
    # It waits kvm.ha.recover.wait.period before it is Available again.
    assert rig.clock.monotonic() - recovered_at > CONFIG.recover_wait_period
    assert rig.transitions()[-1] == ("Recovered", "RecoveryWaitPeriodTimeout", "Available")
    assert rig.provider.count("fence") == 0


def test_a_fenced_host_healthy_again_becomes_available(rig: Rig) -> None:
    rig.enable()
    rig.dies(fences=True)
    rig.poll_until(HAState.FENCED)
    rig.provider.healthy["h1"] = True
    rig.poll_until(HAState.AVAILABLE)
    assert rig.transitions()[-2:] == [
        ("Fenced", "HealthCheckPassed", "Ineligible"),
        ("Ineligible", "Eligible", "Available"),
    ]


# -- the fixes ---------------------------------------------------------------------------


def test_no_second_recovery_while_one_is_in_flight(engine: sa.Engine) -> None:
    rig = Rig(engine)
    started = threading.Event()
    release = threading.Event()

    def slow(method: str, host: Host) -> None:
        if method == "recover":
            started.set()
            assert release.wait(10)

    pool = BoundedExecutor("test-recovery", workers=4, pending=10)
    inline = InlineExecutor(rig.clock)
    rig.manager.executors = HAExecutors(inline, inline, pool, inline)
    rig.provider.on_call = slow
    rig.enable()
    rig.dies()
    rig.poll_until(HAState.RECOVERING)
    assert started.wait(10)
    rig.poll(10)  # every poll retries the recovery; none may start another reset
    release.set()
    pool.shutdown(10)
    assert rig.provider.count("recover", "h1") == 1


def test_a_late_health_check_after_the_state_moved_is_dropped(rig: Rig) -> None:
    """CloudStack #8326: ``NoTransitionException Checking via HealthCheckFailed``."""
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.provider.activity["h1"] = [True]

    def move_on(method: str, host: Host) -> None:
        if method == "is_healthy" and rig.state() is HAState.SUSPECT:
            config = rig.store.find("h1")
            assert config is not None
            rig.store.transition(config, HAEvent.PERFORM_ACTIVITY_CHECK, "ms1")

    rig.poll()
    assert rig.state() is HAState.SUSPECT
    rig.provider.on_call = move_on
    before = rig.provider.count("has_activity")
    rig.poll()  # the health check fails while the host is already Checking: dropped
    # ... and the poll goes on with the state as it is now: Checking gets its activity check.
    assert rig.provider.count("has_activity") == before + 1
    assert rig.state() is HAState.SUSPECT
    assert ("Checking", "HealthCheckFailed", "Suspect") not in rig.transitions()
    rig.provider.on_call = None
    rig.poll(3)  # and the machine goes on as usual


def test_a_fenced_host_that_turns_ineligible_stays_fenced(rig: Rig) -> None:
    """CloudStack #11627: there is no ``Fenced + Ineligible``; the host is not driven into it."""
    rig.enable()
    rig.dies(fences=True)
    rig.poll_until(HAState.FENCED)
    rig.provider.eligible["h1"] = False  # the operator put it in maintenance, say
    rig.poll(5)
    assert rig.state() is HAState.FENCED
    assert len(rig.downs) == 1
    rig.provider.eligible["h1"] = True
    rig.provider.healthy["h1"] = True
    rig.poll_until(HAState.AVAILABLE)


def test_a_failed_fence_falls_back_to_the_storage_proof(rig: Rig) -> None:
    """CloudStack #13589: the BMC died with the host; Fencing must not last for ever."""
    rig.enable()
    rig.dies(proven=True)
    rig.poll_until(HAState.FENCED)
    (down,) = rig.downs
    assert down[2] is False  # proven dead by storage, not read back Off: VM-HA investigates
    assert "storage heartbeat proves the host dead" in down[1]


def test_a_fence_nothing_confirms_alerts_once_and_keeps_trying(rig: Rig) -> None:
    rig.enable()
    rig.dies()
    rig.poll_until(HAState.FENCING)
    rig.poll(10)
    assert rig.state() is HAState.FENCING
    assert rig.provider.count("fence", "h1") >= 10
    failed = [a for a in rig.alerts.alerts if a.subject == "HA Fencing of host h1 failed"]
    assert len(failed) == 1
    assert rig.downs == []
    rig.provider.fences["h1"] = True  # the BMC answers again
    rig.poll_until(HAState.FENCED)
    assert len(rig.downs) == 1


def test_an_activity_check_that_cannot_apply_makes_the_host_ineligible(rig: Rig) -> None:
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.provider.raises[("has_activity", "h1")] = HACheckError("no pool", host_id="h1")
    rig.poll_until(HAState.INELIGIBLE)
    assert not rig.manager.owns(rig.directory.find_host("h1"))  # type: ignore[arg-type]


def test_an_activity_check_that_raises_or_cannot_tell_is_no_failed_sample(rig: Rig) -> None:
    rig.enable()
    rig.provider.healthy["h1"] = False
    rig.provider.activity["h1"] = [None]
    rig.poll_until(HAState.DEGRADED)
    assert rig.provider.count("recover") == 0
    rig.provider.raises[("has_activity", "h1")] = None
    rig.poll_until(HAState.SUSPECT)
    rig.poll_until(HAState.DEGRADED)
    assert rig.provider.count("recover") == 0


def test_a_host_left_in_checking_is_checked_again(rig: Rig) -> None:
    """A restart while an activity check ran leaves the row in Checking; CloudStack waits for
    ever."""
    rig.enable()
    config = rig.store.find("h1")
    assert config is not None
    config = rig.store.transition(config, HAEvent.HEALTH_CHECK_FAILED, "ms1")
    assert config is not None
    config = rig.store.transition(config, HAEvent.PERFORM_ACTIVITY_CHECK, "ms1")
    assert config is not None
    assert config.state is HAState.CHECKING
    rig.provider.healthy["h1"] = False
    rig.poll()
    assert rig.provider.count("has_activity", "h1") == 1
    assert rig.state() is HAState.SUSPECT


def test_an_ineligible_host_is_not_checked_and_comes_back_when_eligible(rig: Rig) -> None:
    rig.enable()
    rig.provider.eligible["h1"] = False
    rig.poll()
    assert rig.state() is HAState.INELIGIBLE
    rig.poll(2)
    assert rig.provider.count("is_healthy", "h1") == 0
    rig.provider.eligible["h1"] = True
    rig.poll()
    assert rig.state() is HAState.AVAILABLE


def test_a_provider_that_raises_fails_the_check_but_not_the_poll(rig: Rig) -> None:
    rig.enable("h1")
    rig.enable("h2")
    rig.provider.raises[("is_healthy", "h1")] = None
    rig.poll()
    assert rig.state("h1") is HAState.SUSPECT
    assert rig.state("h2") is HAState.AVAILABLE


def test_a_slow_health_check_counts_as_failed(rig: Rig) -> None:
    rig.enable()
    rig.provider.on_call = lambda method, host: rig.clock.advance(
        CONFIG.health_check_timeout + 1 if method == "is_healthy" else 0
    )
    rig.poll()
    assert rig.state() is HAState.SUSPECT


# -- the bridge to VM-HA ---------------------------------------------------------------


def test_the_bridge_speaks_only_for_owned_hosts(rig: Rig) -> None:
    bridge = HostHAInvestigator(rig.manager)
    h1 = rig.directory.find_host("h1")
    assert h1 is not None
    assert not bridge.supports(h1)
    rig.enable()
    assert bridge.supports(h1)
    finding = bridge.is_agent_alive(h1)
    assert (finding.verdict, finding.reachable) == (Verdict.UNKNOWN, False)
    assert "Host-HA owns h1 (Available)" in finding.reason
    vm = Vm("vm1", host_id="h1")
    assert bridge.is_vm_alive(vm, h1).verdict is Verdict.ALIVE


def test_the_bridge_says_dead_for_a_fenced_host_until_it_connects_again(rig: Rig) -> None:
    bridge = HostHAInvestigator(rig.manager)
    rig.enable()
    rig.dies(fences=True)
    rig.poll_until(HAState.FENCED)
    h1 = rig.directory.find_host("h1")
    assert h1 is not None
    finding = bridge.is_agent_alive(h1)
    assert (finding.verdict, finding.no_vm_runs) == (Verdict.DEAD, True)
    assert bridge.is_vm_alive(Vm("vm1", host_id="h1"), h1).verdict is Verdict.DEAD
    # The host was powered on and its agent connected after the fence: the Fenced state is stale.
    rig.clock.advance(1)
    back = Host(id="h1", cluster="c1", status=Status.UP, last_ping=rig.clock.now().timestamp())
    assert bridge.is_agent_alive(back).verdict is Verdict.UNKNOWN
    assert bridge.is_vm_alive(Vm("vm1", host_id="h1"), back).verdict is Verdict.ALIVE


def test_a_store_that_does_not_answer_owns_nothing(rig: Rig) -> None:
    rig.enable()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database gone")

    rig.store.find = broken  # type: ignore[method-assign]
    assert not rig.manager.owns(rig.directory.find_host("h1"))  # type: ignore[arg-type]


# -- executors and the provider contract ----------------------------------------------------


def test_a_bounded_executor_refuses_tasks_past_its_queue() -> None:
    release = threading.Event()
    ran: list[int] = []
    pool = BoundedExecutor("test", workers=1, pending=1)

    def task(n: int) -> None:
        assert release.wait(10)
        ran.append(n)

    accepted = [pool.submit(lambda n=n: task(n)) for n in range(4)]  # type: ignore[misc]
    # One runs, one waits, the rest are refused (the worker may not have taken the first yet).
    assert accepted[:2] == [True, True]
    assert accepted.count(True) in (2, 3)
    release.set()
    pool.shutdown(10)
    assert sorted(ran) == [i for i, ok in enumerate(accepted) if ok]
    assert not pool.submit(lambda: None)  # stopped


def test_a_bounded_executor_call_gives_up_after_its_timeout() -> None:
    pool = BoundedExecutor("test", workers=1, pending=1)
    never = threading.Event()
    with pytest.raises(TimeoutError):
        pool.call(lambda: never.wait(5), 0.05)
    never.set()
    assert pool.call(lambda: 42, 5) == 42


def test_bounded_executor_sizes_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="workers"):
        BoundedExecutor("test", workers=0, pending=1)
    with pytest.raises(ConfigurationError, match="pending"):
        BoundedExecutor("test", workers=1, pending=True)


def test_the_scripted_provider_keeps_the_contract() -> None:
    check_ha_provider(ScriptedHAProvider())


@pytest.mark.parametrize(("scope", "scope_id"), [(CLUSTER, "c1"), (ZONE, "z1")])
def test_a_cluster_or_zone_switched_off_disables_its_hosts_until_switched_on(
    rig: Rig, scope: str, scope_id: str
) -> None:
    rig.enable("h1")
    rig.enable("h2")
    h1 = rig.directory.find_host("h1")
    assert h1 is not None
    assert rig.manager.set_scope_enabled(scope, scope_id, False) == 2
    assert rig.state("h1") is rig.state("h2") is HAState.DISABLED
    assert not rig.manager.owns(h1)
    calls = len(rig.provider.calls)
    rig.poll(3)
    assert rig.state("h1") is HAState.DISABLED  # the poll keeps it so
    assert len(rig.provider.calls) == calls
    assert rig.manager.set_scope_enabled(scope, scope_id, True) == 0
    rig.poll()
    assert rig.state("h1") is rig.state("h2") is HAState.AVAILABLE
    assert rig.manager.owns(h1)
    with pytest.raises(ConfigurationError, match="not 'Pod'"):
        rig.manager.set_scope_enabled("Pod", "p1", False)
