"""Out-of-band management: the power-state machine, configs, the manager and readiness."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from cloudha import ConfigurationError, Host, NoTransitionError
from cloudha.errors import ProbeAuthError, ProbeConnectionError, ProbeTimeout
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.model import AlertType
from cloudha.oobm.manager import (
    AUTH_ALERT_INTERVAL,
    OobmNotConfigured,
    OobmSyncTask,
    OutOfBandManager,
    StaticOobmConfigs,
)
from cloudha.oobm.power import (
    BasePowerDriver,
    OobmConfig,
    PowerCommandError,
    PowerEvent,
    PowerOperation,
    PowerResult,
    PowerState,
    next_power_state,
    power_event,
)
from cloudha.settings import Settings
from cloudha.testing import FakeClock, RecordingAlertSink
from cloudha.testing.oobm import FakeBmc, FakePowerDriver

ON, OFF, UNKNOWN, DISABLED = PowerState.ON, PowerState.OFF, PowerState.UNKNOWN, PowerState.DISABLED
PASSWORD = "n0t-in-logs"

# Spec §8, written out as a table: (state, event) -> next state; missing = no transition.
SPEC_FSM: dict[tuple[PowerState | None, PowerEvent], PowerState] = {
    (None, PowerEvent.ON): ON,
    (None, PowerEvent.OFF): OFF,
    (None, PowerEvent.UNKNOWN): UNKNOWN,
    (None, PowerEvent.AUTH_ERROR): UNKNOWN,
    (None, PowerEvent.DISABLED): DISABLED,
}
for _s in (ON, OFF, UNKNOWN, DISABLED):
    SPEC_FSM[(_s, PowerEvent.ON)] = ON
    SPEC_FSM[(_s, PowerEvent.OFF)] = OFF
    SPEC_FSM[(_s, PowerEvent.UNKNOWN)] = UNKNOWN
for _s in (ON, OFF, DISABLED):
    SPEC_FSM[(_s, PowerEvent.AUTH_ERROR)] = UNKNOWN
for _s in (ON, OFF, UNKNOWN):
    SPEC_FSM[(_s, PowerEvent.DISABLED)] = DISABLED


@pytest.mark.parametrize("state", [None, ON, OFF, UNKNOWN, DISABLED])
@pytest.mark.parametrize("event", list(PowerEvent))
def test_power_state_machine_matches_the_spec(state: PowerState | None, event: PowerEvent) -> None:
    expected = SPEC_FSM.get((state, event))
    if expected is None:
        with pytest.raises(NoTransitionError):
            next_power_state(state, event)
    else:
        assert next_power_state(state, event) is expected


def test_power_events_from_driver_outcomes() -> None:
    status = PowerOperation.STATUS
    assert power_event(PowerResult(status, True, ON)) is PowerEvent.ON
    assert power_event(PowerResult(status, True, OFF)) is PowerEvent.OFF
    assert power_event(PowerResult(status, True, None)) is PowerEvent.UNKNOWN
    assert power_event(PowerResult(status, False, ON)) is PowerEvent.UNKNOWN
    assert power_event(ProbeAuthError("no")) is PowerEvent.AUTH_ERROR
    assert power_event(ProbeTimeout("slow")) is PowerEvent.UNKNOWN


def test_config_never_shows_its_password() -> None:
    config = OobmConfig("ipmitool", "10.1.1.1", "admin", PASSWORD, port=623, host_id="h1")
    shown = repr(config) + str(config) + json.dumps(config.describe())
    assert PASSWORD not in shown
    assert str(config) == "ipmitool://admin@10.1.1.1:623"
    with pytest.raises(ValueError, match=r"host 'h9'.*'address'"):
        OobmConfig("ipmitool", "", "admin", "x", host_id="h9")
    with pytest.raises(ValueError, match=r"'port' must be 1\.\.65535"):
        OobmConfig("ipmitool", "a", "admin", "x", port=70000)


class Raw(BasePowerDriver):
    name = "raw"

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    def _execute(
        self, config: OobmConfig, operation: PowerOperation, timeout: float
    ) -> PowerResult:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome  # type: ignore[return-value]


def test_base_driver_maps_os_errors_and_checks_results() -> None:
    config = OobmConfig("raw", "10.1.1.1", "admin", PASSWORD, host_id="h1")
    with pytest.raises(ProbeConnectionError, match="ConnectionRefusedError") as info:
        Raw(ConnectionRefusedError("refused")).execute(config, PowerOperation.STATUS, timeout=1)
    assert info.value.host_id == "h1"
    with pytest.raises(ProbeTimeout) as timeout_info:
        Raw(ProbeTimeout("slow")).execute(config, PowerOperation.OFF, timeout=1)
    assert timeout_info.value.host_id == "h1"
    with pytest.raises(TypeError, match="not a PowerResult of that operation"):
        Raw(PowerResult(PowerOperation.ON, True)).execute(config, PowerOperation.OFF, timeout=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        Raw(None).execute(config, PowerOperation.OFF, timeout=0)
    with pytest.raises(TypeError, match="must be a PowerOperation"):
        Raw(None).execute(config, "OFF", timeout=1)  # type: ignore[arg-type]


class Fleet:
    def __init__(self, clock: FakeClock, hosts: int = 3) -> None:
        self.clock = clock
        self.driver = FakePowerDriver()
        self.configs = StaticOobmConfigs()
        self.hosts = [Host(id=f"h{i}") for i in range(1, hosts + 1)]
        self.bmcs: dict[str, FakeBmc] = {}
        for host in self.hosts:
            address = f"10.0.0.{host.id[1:]}"
            self.bmcs[host.id] = self.driver.add(address, FakeBmc(password=PASSWORD))
            self.configs.set(
                host.id, OobmConfig("fake", address, "admin", PASSWORD, host_id=host.id)
            )
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        self.manager = OutOfBandManager(
            clock=clock,
            configs=self.configs,
            drivers=[self.driver],
            settings=Settings.from_mapping({"outofbandmanagement.sync.poolsize": 2}),
            alerts=self.alerts,
            recorder=Recorder(self.evidence, clock, "ms1"),
        )


def test_status_drives_the_power_state() -> None:
    fleet = Fleet(FakeClock())
    h1 = fleet.hosts[0]
    assert fleet.manager.power_state("h1") is None
    fleet.manager.execute(h1, PowerOperation.STATUS)
    assert fleet.manager.power_state("h1") is ON
    fleet.manager.execute(h1, PowerOperation.OFF)
    assert fleet.manager.power_state("h1") is ON  # only a read says what the power is
    fleet.manager.execute(h1, PowerOperation.STATUS)
    assert fleet.manager.power_state("h1") is OFF
    fleet.bmcs["h1"].silent = True
    with pytest.raises(ProbeTimeout) as info:
        fleet.manager.execute(h1, PowerOperation.STATUS)
    assert info.value.host_id == "h1"
    assert fleet.manager.power_state("h1") is UNKNOWN


def test_unconfigured_hosts_and_unknown_drivers_are_clear_errors() -> None:
    fleet = Fleet(FakeClock())
    with pytest.raises(OobmNotConfigured, match="host h9 has no out-of-band management"):
        fleet.manager.execute(Host(id="h9"), PowerOperation.STATUS)
    fleet.configs.set("h1", OobmConfig("redfish", "10.0.0.1", "admin", PASSWORD, host_id="h1"))
    with pytest.raises(ConfigurationError, match="host h1: out-of-band driver 'redfish'") as info:
        fleet.manager.execute(fleet.hosts[0], PowerOperation.STATUS)
    assert "have: fake" in str(info.value)
    readiness = fleet.manager.check_readiness(fleet.hosts[0])
    assert not readiness.ready
    assert readiness.error == "ConfigurationError"


def test_driver_registration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="two power drivers are named 'fake'"):
        OutOfBandManager(
            clock=FakeClock(),
            configs=StaticOobmConfigs(),
            drivers=[FakePowerDriver(), FakePowerDriver("FAKE")],
        )
    with pytest.raises(ConfigurationError, match="is not a power driver"):
        OutOfBandManager(clock=FakeClock(), configs=StaticOobmConfigs(), drivers=[object()])  # type: ignore[list-item]


def test_auth_errors_alert_once_a_day_per_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    fleet = Fleet(clock)
    h1 = fleet.hosts[0]
    fleet.bmcs["h1"].password = "changed"
    for _ in range(3):
        with pytest.raises(ProbeAuthError):
            fleet.manager.execute(h1, PowerOperation.STATUS)
    assert [a.type for a in fleet.alerts.alerts] == [AlertType.OOBM_AUTH_ERROR]
    assert fleet.manager.power_state("h1") is UNKNOWN
    clock.advance(AUTH_ALERT_INTERVAL)
    with pytest.raises(ProbeAuthError):
        fleet.manager.execute(h1, PowerOperation.STATUS)
    assert len(fleet.alerts.alerts) == 2
    assert PASSWORD not in caplog.text + repr(fleet.alerts.alerts)


def test_readiness_is_recorded_and_changes_are_evidence() -> None:
    clock = FakeClock()
    fleet = Fleet(clock)
    fleet.bmcs["h2"].silent = True
    fleet.bmcs["h3"].password = "wrong"
    found = {r.host_id: r for r in fleet.manager.sync(fleet.hosts)}
    assert found["h1"].ready
    assert found["h1"].power_state is ON
    assert not found["h2"].ready
    assert found["h2"].error == "ProbeTimeout"
    assert not found["h3"].ready
    assert found["h3"].error == "ProbeAuthError"
    assert [r.host for r in fleet.evidence.records(kind="fence_readiness")] == ["h1", "h2", "h3"]
    # no change, no new evidence
    fleet.manager.sync(fleet.hosts, parallel=False)
    assert len(fleet.evidence.records(kind="fence_readiness")) == 3
    fleet.bmcs["h2"].silent = False
    clock.advance(4)
    fleet.manager.sync(fleet.hosts)
    changes = fleet.evidence.records(kind="fence_readiness", host="h2")
    assert [c.details["ready"] for c in changes] == [False, True]
    assert set(fleet.manager.readiness_report()) == {"h1", "h2", "h3"}
    explained = fleet.manager.explain(fleet.hosts[1])
    assert explained["readiness"]["ready"] is True
    assert explained["bmc"] == {"driver": "fake", "address": "10.0.0.2", "username": "admin"}
    assert PASSWORD not in json.dumps(explained)
    assert fleet.manager.explain(Host(id="h9"))["configured"] is False


def test_a_status_without_a_power_state_is_not_ready() -> None:
    class Vague(BasePowerDriver):
        name = "fake"

        def _execute(
            self, config: OobmConfig, operation: PowerOperation, timeout: float
        ) -> PowerResult:
            return PowerResult(operation, False, UNKNOWN, "Chassis Power is dazed")

    fleet = Fleet(FakeClock(), hosts=1)
    manager = OutOfBandManager(clock=fleet.clock, configs=fleet.configs, drivers=[Vague()])
    readiness = manager.check_readiness(fleet.hosts[0])
    assert not readiness.ready
    assert "dazed" in readiness.reason


def test_sync_skips_hosts_without_oobm_and_the_task_reschedules() -> None:
    clock = FakeClock()
    fleet = Fleet(clock, hosts=2)
    hosts = [*fleet.hosts, Host(id="bare")]
    task = OobmSyncTask(fleet.manager, lambda: hosts)
    assert task.tick() == 4.0
    assert set(fleet.manager.readiness_report()) == {"h1", "h2"}

    def explode() -> list[Host]:
        raise RuntimeError("db down")

    assert OobmSyncTask(fleet.manager, explode).tick() == 4.0
    stop = threading.Event()
    calls = []

    def hosts_then_stop() -> list[Host]:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        return hosts

    OobmSyncTask(fleet.manager, hosts_then_stop).run(stop)
    assert len(calls) == 3
    assert clock.monotonic() == 8.0


def test_power_command_errors_are_unknown_events() -> None:
    fleet = Fleet(FakeClock(), hosts=1)
    fleet.bmcs["h1"].power = "off"
    fleet.bmcs["h1"].conflict_when_off = True
    fleet.manager.execute(fleet.hosts[0], PowerOperation.STATUS)
    with pytest.raises(PowerCommandError, match="409"):
        fleet.manager.execute(fleet.hosts[0], PowerOperation.OFF)
    assert fleet.manager.power_state("h1") is UNKNOWN


def test_readiness_and_power_state_are_prometheus_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from cloudha.oobm.metrics import register_oobm_metrics

    clock = FakeClock(100.0)
    fleet = Fleet(clock, hosts=2)
    fleet.bmcs["h2"].silent = True
    fleet.manager.sync(fleet.hosts)
    clock.advance(7)
    registry = CollectorRegistry()
    register_oobm_metrics(fleet.manager, registry)
    text = generate_latest(registry).decode()
    assert 'cloudha_fence_path_ready{driver="fake",host="h1"} 1.0' in text
    assert 'cloudha_fence_path_ready{driver="fake",host="h2"} 0.0' in text
    assert 'cloudha_fence_path_checked_age_seconds{host="h1"} 7.0' in text
    assert 'cloudha_oobm_power_state{host="h1",state="On"} 1.0' in text
    assert 'cloudha_oobm_power_state{host="h2",state="Unknown"} 1.0' in text
    assert PASSWORD not in text


def test_default_drivers_are_built_from_settings() -> None:
    from cloudha.oobm.drivers import default_power_drivers

    settings = Settings.from_mapping(
        {
            "outofbandmanagement.ipmitool.path": "/opt/ipmitool",
            "redfish.ignore.ssl": True,
        }
    )
    drivers = {d.name: d for d in default_power_drivers(settings)}
    assert sorted(drivers) == ["ipmi", "ipmitool", "redfish"]
    assert drivers["ipmitool"].path == "/opt/ipmitool"  # type: ignore[attr-defined]
    assert drivers["redfish"].verify is False  # type: ignore[attr-defined]
    assert default_power_drivers()[0].name == "ipmitool"


def test_a_missing_optional_driver_is_left_out_and_named_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from cloudha.oobm.drivers import default_power_drivers

    monkeypatch.setitem(sys.modules, "sushy", None)  # the redfish extra is not installed
    drivers = default_power_drivers()
    assert [d.name for d in drivers] == ["ipmitool", "ipmi"]
    configs = StaticOobmConfigs(
        {"h1": OobmConfig("redfish", "10.0.0.1", "admin", PASSWORD, host_id="h1")}
    )
    manager = OutOfBandManager(clock=FakeClock(), configs=configs, drivers=drivers)
    with pytest.raises(
        ConfigurationError, match=r"driver 'redfish' is not available \(have: ipmi, ipmitool\)"
    ):
        manager.execute(Host(id="h1"), PowerOperation.STATUS)
