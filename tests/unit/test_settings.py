"""Tests of :mod:`cloudha.settings`."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest

from cloudha.errors import ConfigurationError
from cloudha.settings import KEYS, RESERVED_ENVIRONMENT, KeySpec, Settings, _self_check

# CloudStack's defaults as written in spec §2.1, §3.8, §4, §5, §6.1, §7.5 and §8:
# key -> (value in the key's own unit, expected attribute value).
_INVESTIGATORS = (
    "SimpleInvestigator",
    "XenServerInvestigator",
    "KVMInvestigator",
    "HypervInvestigator",
    "VMwareInvestigator",
    "PingInvestigator",
    "ManagementIPSysVMInvestigator",
    "Ovm3Investigator",
)

EXPECTED: dict[str, tuple[object, object]] = {
    # §2.1
    "ping.interval": (60, 60.0),
    "ping.timeout": (2.5, 2.5),
    "alert.wait": (1800, 1800.0),
    "wait": (1800, 1800.0),
    "ready.command.wait": (60, 60.0),
    "commands.timeout": ("", ""),
    "enable.kvm.host.auto.enable.disable": (False, False),
    "direct.agent.load.size": (16, 16),
    "direct.agent.pool.size": (500, 500),
    "direct.agent.thread.cap": (1, 1.0),
    "direct.agent.scan.interval": (90, 90.0),
    "agent.lb.enabled": (False, False),
    "agent.load.threshold": (0.7, 0.7),
    "host.ping.retry.count": (0, 0),
    "host.ping.retry.timer": (5, 5.0),
    "workers": (5, 5),
    "port": (8250, 8250),
    "agent.ssl.handshake.timeout": (30, 30.0),
    "agent.max.concurrent.new.connections": (0, 0),
    "agent.connections.monitor.interval": (1800, 1800.0),
    "check.txn.before.sending.agent.commands": (False, False),
    # §3.8
    "ha.workers": (5, 5),
    "time.to.sleep": (60, 60.0),
    "investigate.retry.interval": (60, 60.0),
    "migrate.retry.interval": (120, 120.0),
    "restart.retry.interval": (600, 600.0),
    "stop.retry.interval": (600, 600.0),
    "time.between.cleanup": (86400, 86400.0),
    "time.between.failures": (3600, 3600.0),
    "max.retries": (5, 5),
    "vm.ha.migration.max.retries": (5, 5),
    "force.ha": (False, False),
    "vm.ha.enabled": (True, True),
    "vm.ha.alerts.enabled": (True, True),
    "kvm.ha.fence.on.storage.heartbeat.failure": (False, False),
    "ha.tag": (None, None),
    "ha.vm.restart.hostup": (True, True),
    # §4, §5
    "ha.investigators.order": (_INVESTIGATORS, _INVESTIGATORS),
    "ha.investigators.exclude": ((), ()),
    "ha.fence.builders.exclude": (("RecreatableFencer",), ("RecreatableFencer",)),
    # §6.1 (milliseconds in, seconds out)
    "kvm.heartbeat.update.frequency": (60000, 60.0),
    "kvm.heartbeat.update.max.tries": (5, 5),
    "kvm.heartbeat.update.retry.sleep": (10000, 10.0),
    "heartbeat.update.timeout": (60000, 60.0),
    "kvm.heartbeat.checker.timeout": (360000, 360.0),
    "reboot.host.and.alert.management.on.heartbeat.timeout": (True, True),
    # §7.5 executors
    "ha.max.concurrent.health.check.operations": (50, 50),
    "ha.max.pending.health.check.operations": (5000, 5000),
    "ha.max.concurrent.activity.check.operations": (25, 25),
    "ha.max.pending.activity.check.operations": (2500, 2500),
    "ha.max.concurrent.recovery.operations": (25, 25),
    "ha.max.pending.recovery.operations": (2500, 2500),
    "ha.max.concurrent.fence.operations": (25, 25),
    "ha.max.pending.fence.operations": (2500, 2500),
    # §7.5 KVM provider
    "kvm.ha.health.check.timeout": (10, 10.0),
    "kvm.ha.activity.check.timeout": (60, 60.0),
    "kvm.ha.activity.check.interval": (60, 60.0),
    "kvm.ha.activity.check.max.attempts": (10, 10),
    "kvm.ha.activity.check.failure.ratio": (0.7, 0.7),
    "kvm.ha.degraded.max.period": (300, 300.0),
    "kvm.ha.recover.timeout": (60, 60.0),
    "kvm.ha.recover.wait.period": (600, 600.0),
    "kvm.ha.recover.failure.threshold": (1, 1),
    "kvm.ha.fence.timeout": (60, 60.0),
    # §8
    "outofbandmanagement.action.timeout": (60, 60.0),
    "outofbandmanagement.sync.poolsize": (50, 50),
    "outofbandmanagement.background.task.execution.interval": (4, 4.0),
    "outofbandmanagement.ipmitool.path": ("/usr/bin/ipmitool", "/usr/bin/ipmitool"),
    "outofbandmanagement.ipmitool.interface": ("lanplus", "lanplus"),
    "outofbandmanagement.ipmitool.retries": (1, 1),
    "redfish.ignore.ssl": (False, False),
    "redfish.use.https": (True, True),
    "redfish.retries": (2, 2),
    # cloudha's own keys
    "cloudha.watchdog.timeout": (300, 300.0),
    "cloudha.watchdog.reset.margin": (30, 30.0),
    "cloudha.fence.on.suspicion": (True, True),
    "cloudha.isolation.aware": (True, True),
    "cloudha.isolation.address": ("gateway", "gateway"),
    "cloudha.isolation.agent.window": (120, 120.0),
    "cloudha.freshness.enabled": (True, True),
    "cloudha.freshness.min.ping.share": (0.3, 0.3),
    "cloudha.freshness.window": (2, 2),
    "cloudha.freshness.resume.intervals": (2, 2),
    "cloudha.storm.domains": (("cluster", "pod", "zone"), ("cluster", "pod", "zone")),
    "cloudha.storm.fence.budget": (0.1, 0.1),
    "cloudha.storm.fence.window": (300, 300.0),
    "cloudha.storm.disruption.threshold": (0.5, 0.5),
    "cloudha.shadow": (False, False),
    "cloudha.ms.takeover.timeout": (150, 150.0),
    "cloudha.ms.heartbeat.interval": (5, 5.0),
    "cloudha.evidence.retention": (2_592_000, 2_592_000.0),
    "cloudha.evidence.max.records": (1_000_000, 1_000_000),
    "cloudha.ping.grace.multiplier": (1.0, 1.0),
    "cloudha.ping.jitter": (0.0, 0.0),
    "cloudha.phi.enabled": (False, False),
    "cloudha.phi.threshold": (8.0, 8.0),
    "cloudha.phi.min.std.deviation": (6, 6.0),
    "cloudha.phi.acceptable.pause": (30, 30.0),
    "cloudha.phi.window": (100, 100),
    "cloudha.escalation.enabled": (True, True),
    "cloudha.escalation.levels": (("agent.restart", "fence"), ("agent.restart", "fence")),
    "cloudha.escalation.agent.service": ("cloudstack-agent", "cloudstack-agent"),
    "cloudha.escalation.agent.restart.timeout": (180, 180.0),
    "cloudha.escalation.power.cycle.timeout": (60, 60.0),
    "cloudha.escalation.repeat.after": (600, 600.0),
    "cloudha.vm.restart.in.place": (True, True),
    "cloudha.poll.timeout": (5, 5.0),
    "cloudha.poll.workers": (16, 16),
}

MS_KEYS = {
    "kvm.heartbeat.update.frequency",
    "kvm.heartbeat.update.retry.sleep",
    "heartbeat.update.timeout",
    "kvm.heartbeat.checker.timeout",
}


def _message(excinfo: pytest.ExceptionInfo[ConfigurationError]) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------
# Catalogue and defaults


def test_catalogue_lists_exactly_the_expected_keys_in_spec_order() -> None:
    assert list(KEYS) == list(EXPECTED)
    assert len(KEYS) == 108


@pytest.mark.parametrize(("key", "expected"), list(EXPECTED.items()))
def test_default(key: str, expected: tuple[object, object]) -> None:
    own_unit, attribute_value = expected
    spec = KEYS[key]
    settings = Settings()
    assert spec.default == own_unit
    value = getattr(settings, spec.attribute)
    assert value == attribute_value
    assert type(value) is type(attribute_value)
    assert settings.get(key) == attribute_value


def test_key_spec_fields() -> None:
    spec = KEYS["kvm.heartbeat.update.frequency"]
    assert isinstance(spec, KeySpec)
    assert spec.name == "kvm.heartbeat.update.frequency"
    assert spec.attribute == "kvm_heartbeat_update_frequency"
    assert spec.kind == "duration"
    assert spec.unit == "ms"
    assert spec.default == 60000
    assert spec.section == "§6.1"
    assert spec.environment_variable == "CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY"
    assert KEYS["ping.interval"].unit == "s"
    assert KEYS["ping.timeout"].unit is None
    assert KEYS["ping.timeout"].kind == "multiplier"
    assert KEYS["ha.investigators.order"].kind == "names"
    assert KEYS["port"].kind == "port"
    assert KEYS["ha.tag"].kind == "string"


@pytest.mark.parametrize("spec", list(KEYS.values()), ids=list(KEYS))
def test_every_spec_is_well_formed(spec: KeySpec) -> None:
    assert spec.attribute == spec.name.replace(".", "_")
    assert spec.section in {"§2.1", "§3.8", "§4", "§5", "§6.1", "§7.5", "§8", "cloudha"}
    assert (spec.section == "cloudha") == spec.name.startswith("cloudha.")
    assert spec.description
    assert "\n" not in spec.description
    if spec.kind == "duration":
        assert spec.unit == ("ms" if spec.name in MS_KEYS else "s")
    else:
        assert spec.unit is None
    if spec.kind in ("count", "port", "multiplier"):
        assert spec.minimum is not None


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        KEYS["x"] = KEYS["port"]  # type: ignore[index]


def test_attributes_match_catalogue() -> None:
    assert list(attrs.fields_dict(Settings)) == [spec.attribute for spec in KEYS.values()]


def test_environment_names_are_unique_and_not_reserved() -> None:
    names = [spec.environment_variable for spec in KEYS.values()]
    assert len(set(names)) == len(names)
    assert RESERVED_ENVIRONMENT.isdisjoint(names)
    assert frozenset({"CLOUDHA_TEST_DB_URL", "CLOUDHA_LOG_LEVEL"}) == RESERVED_ENVIRONMENT
    _self_check()


def test_minimums() -> None:
    at_least_one = [
        "ha.workers",
        "workers",
        "kvm.heartbeat.update.max.tries",
        "kvm.ha.activity.check.max.attempts",
        "kvm.ha.recover.failure.threshold",
        "vm.ha.migration.max.retries",
        "outofbandmanagement.sync.poolsize",
        "direct.agent.pool.size",
        "ha.max.concurrent.fence.operations",
        "ha.max.pending.fence.operations",
    ]
    for key in at_least_one:
        assert KEYS[key].minimum == 1, key
    for key in (
        "host.ping.retry.count",
        "agent.max.concurrent.new.connections",
        "redfish.retries",
        "outofbandmanagement.ipmitool.retries",
    ):
        assert KEYS[key].minimum == 0, key


# ---------------------------------------------------------------------------
# Immutability, derived values


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.ping_interval = 5.0  # type: ignore[misc]


def test_settings_are_equal_and_hashable() -> None:
    assert Settings() == Settings()
    assert hash(Settings()) == hash(Settings())
    assert Settings.from_mapping({"ping.interval": 60}) == Settings()


def test_behind_on_ping_timeout() -> None:
    assert Settings().behind_on_ping_timeout == 150.0
    tuned = Settings.from_mapping({"ping.interval": 30, "ping.timeout": 3})
    assert tuned.behind_on_ping_timeout == 90.0
    assert isinstance(tuned.behind_on_ping_timeout, float)


def test_command_timeouts() -> None:
    assert dict(Settings().command_timeouts) == {}
    settings = Settings.from_mapping(
        {"commands.timeout": "CheckOnHostCommand=20, FenceCommand=45.5,"}
    )
    assert dict(settings.command_timeouts) == {"CheckOnHostCommand": 20.0, "FenceCommand": 45.5}


def test_constructor_normalises_attribute_values() -> None:
    settings = Settings(
        ping_interval=30,
        ha_investigators_exclude=["PingInvestigator"],  # type: ignore[arg-type]
        ha_tag="",
    )
    assert settings.ping_interval == 30.0
    assert type(settings.ping_interval) is float
    assert settings.ha_investigators_exclude == ("PingInvestigator",)
    assert settings.ha_tag is None
    assert settings == Settings.from_mapping(
        {"ping.interval": 30.0, "ha.investigators.exclude": "PingInvestigator"}
    )


def test_constructor_validates_in_seconds() -> None:
    assert Settings(kvm_heartbeat_update_frequency=1.5).kvm_heartbeat_update_frequency == 1.5
    with pytest.raises(ConfigurationError) as excinfo:
        Settings(kvm_heartbeat_update_frequency=0.5)
    assert "must be >= 1 seconds (allowed range 1 to 3600 seconds: " in _message(excinfo)
    with pytest.raises(ConfigurationError) as excinfo:
        Settings(kvm_heartbeat_update_frequency=-1.0)
    assert "kvm.heartbeat.update.frequency" in _message(excinfo)
    assert "seconds" in _message(excinfo)
    assert excinfo.value.key == "kvm.heartbeat.update.frequency"


# ---------------------------------------------------------------------------
# from_mapping, with_overrides, to_mapping, get


def test_from_mapping_converts_milliseconds() -> None:
    settings = Settings.from_mapping(
        {
            "kvm.heartbeat.update.frequency": 30000,
            "kvm.heartbeat.update.retry.sleep": 2500,
            "heartbeat.update.timeout": 100,
            "kvm.heartbeat.checker.timeout": 90000.0,
        }
    )
    assert settings.kvm_heartbeat_update_frequency == 30.0
    assert settings.kvm_heartbeat_update_retry_sleep == 2.5
    assert settings.heartbeat_update_timeout == 0.1
    assert settings.kvm_heartbeat_checker_timeout == 90.0


def test_from_mapping_accepts_every_kind() -> None:
    settings = Settings.from_mapping(
        {
            "ping.interval": 30,
            "ping.timeout": 1,
            "ha.workers": 8.0,
            "agent.load.threshold": 0,
            "direct.agent.thread.cap": 1,
            "force.ha": True,
            "ha.tag": "ha-only",
            "port": 65535,
            "commands.timeout": "CheckOnHostCommand=20",
            "ha.investigators.exclude": ["PingInvestigator", " KVMInvestigator "],
        },
        source="unit",
    )
    assert settings.ping_interval == 30.0
    assert settings.ping_timeout == 1.0
    assert settings.ha_workers == 8
    assert type(settings.ha_workers) is int
    assert settings.agent_load_threshold == 0.0
    assert settings.direct_agent_thread_cap == 1.0
    assert settings.force_ha is True
    assert settings.ha_tag == "ha-only"
    assert settings.port == 65535
    assert settings.commands_timeout == "CheckOnHostCommand=20"
    assert settings.ha_investigators_exclude == ("PingInvestigator", "KVMInvestigator")
    # Untouched keys keep their default.
    assert settings.alert_wait == 1800.0


def test_with_overrides_returns_a_new_value() -> None:
    base = Settings()
    changed = base.with_overrides({"alert.wait": 60, "ha.tag": "x"})
    assert changed.alert_wait == 60.0
    assert changed.ha_tag == "x"
    assert base == Settings()
    assert changed.with_overrides({"ha.tag": None}).ha_tag is None
    with pytest.raises(ConfigurationError) as excinfo:
        base.with_overrides({"alert.wait": -1})
    assert excinfo.value.key == "alert.wait"


def test_with_overrides_empty_mapping() -> None:
    assert Settings().with_overrides({}) == Settings()


def test_to_mapping_defaults_are_the_catalogue_defaults() -> None:
    mapping = Settings().to_mapping()
    assert list(mapping) == list(KEYS)
    assert mapping == {key: own for key, (own, _) in EXPECTED.items()}
    assert mapping["kvm.heartbeat.update.frequency"] == 60000
    assert isinstance(mapping["kvm.heartbeat.update.frequency"], int)
    assert mapping["ping.interval"] == 60


def test_to_mapping_round_trips() -> None:
    settings = Settings.from_mapping(
        {
            "ping.interval": 0.1,
            "ping.timeout": 3.25,
            "kvm.heartbeat.update.frequency": 12345.678,
            "kvm.heartbeat.update.retry.sleep": 1.3,
            "heartbeat.update.timeout": 1234567,
            "ha.tag": "t",
            "ha.investigators.order": "KVMInvestigator,PingInvestigator",
            "ha.fence.builders.exclude": [],
            "redfish.ignore.ssl": True,
            "port": 1,
        }
    )
    mapping = settings.to_mapping()
    assert mapping["kvm.heartbeat.update.frequency"] == pytest.approx(12345.678)
    assert mapping["ha.fence.builders.exclude"] == ()
    assert Settings.from_mapping(mapping) == settings


@pytest.mark.parametrize("milliseconds", [1, 3, 7, 10, 999, 1001, 1234567, 1.5, 1.1, 7.7, 33.3])
def test_millisecond_round_trip(milliseconds: float) -> None:
    # retry.sleep is the §6.1 key with the lowest floor (1 ms).
    key = "kvm.heartbeat.update.retry.sleep"
    settings = Settings.from_mapping({key: milliseconds})
    back = settings.to_mapping()[key]
    assert Settings.from_mapping({key: back}) == settings
    assert back == pytest.approx(milliseconds)


def test_get_unknown_key() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings().get("ping.intervall")
    assert "ping.intervall" in _message(excinfo)
    assert "ping.interval'" in _message(excinfo)


# ---------------------------------------------------------------------------
# Validation errors


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({"ping.intervall": 60}, source="here")
    message = _message(excinfo)
    assert "ping.intervall" in message
    assert "did you mean 'ping.interval'" in message
    assert message.startswith("here: ")
    assert excinfo.value.key == "ping.intervall"
    assert excinfo.value.source == "here"


def test_unknown_key_with_attribute_spelling_suggests_the_key() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({"kvm_ha_fence_timeout": 60})
    assert "did you mean 'kvm.ha.fence.timeout'" in _message(excinfo)


def test_unknown_key_without_a_close_match() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({"zzzzzz": 1})
    assert "zzzzzz" in _message(excinfo)
    assert "did you mean" not in _message(excinfo)


BAD_VALUES: list[tuple[str, object, str]] = [
    # wrong types
    ("ping.interval", True, "number of seconds"),
    ("ping.interval", "60", "number of seconds"),
    ("ping.interval", None, "number of seconds"),
    ("kvm.heartbeat.update.frequency", "60000", "milliseconds"),
    ("ha.workers", 2.5, "whole number"),
    ("ha.workers", "5", "whole number"),
    ("ha.workers", False, "whole number"),
    ("port", 8250.5, "whole number"),
    ("ping.timeout", "2.5", "number"),
    ("agent.load.threshold", True, "ratio"),
    ("force.ha", 1, "true or false"),
    ("force.ha", "true", "true or false"),
    ("ha.tag", 5, "string"),
    ("commands.timeout", None, "string"),
    ("outofbandmanagement.ipmitool.path", None, "string"),
    ("ha.investigators.order", 5, "comma-separated"),
    ("ha.investigators.order", [1, 2], "strings"),
    # non-finite numbers
    ("ping.interval", math.nan, "finite"),
    ("ping.interval", math.inf, "finite"),
    ("ping.timeout", math.inf, "finite"),
    ("agent.load.threshold", math.nan, "finite"),
    ("ha.workers", math.inf, "finite"),
    # durations must be > 0
    ("ping.interval", 0, "> 0"),
    ("alert.wait", -1, "> 0"),
    ("host.ping.retry.timer", 0.0, "> 0"),
    ("kvm.heartbeat.update.frequency", 0, "> 0 milliseconds"),
    ("kvm.ha.fence.timeout", -0.5, "> 0"),
    # counts
    ("ha.workers", 0, ">= 1"),
    ("workers", 0, ">= 1"),
    ("kvm.heartbeat.update.max.tries", 0, ">= 1"),
    ("kvm.ha.activity.check.max.attempts", 0, ">= 1"),
    ("kvm.ha.recover.failure.threshold", 0, ">= 1"),
    ("vm.ha.migration.max.retries", 0, ">= 1"),
    ("outofbandmanagement.sync.poolsize", 0, ">= 1"),
    ("ha.max.pending.recovery.operations", 0, ">= 1"),
    ("host.ping.retry.count", -1, ">= 0"),
    ("redfish.retries", -1, ">= 0"),
    # ports
    ("port", 0, ">= 1"),
    ("port", 65536, "<= 65535"),
    # ratios
    ("agent.load.threshold", 1.5, "between 0 and 1"),
    ("kvm.ha.activity.check.failure.ratio", -0.1, "between 0 and 1"),
    ("direct.agent.thread.cap", 2, "between 0 and 1"),
    # multiplier
    ("ping.timeout", 0.5, "behind on ping"),
    ("ping.timeout", 0, ">= 1"),
    # strings
    ("outofbandmanagement.ipmitool.path", "", "empty"),
    ("outofbandmanagement.ipmitool.interface", "  ", "empty"),
    ("commands.timeout", "CheckOnHostCommand", "CommandName=seconds"),
    ("commands.timeout", "CheckOnHostCommand=soon", "seconds"),
    ("commands.timeout", "CheckOnHostCommand=0", "> 0"),
    ("commands.timeout", "A=1,A=2", "twice"),
    # name lists
    ("ha.investigators.order", "PingInvestigator,PingInvestigator", "twice"),
    ("ha.investigators.exclude", ["PingInvestigator", ""], "non-empty"),
    ("ha.fence.builders.exclude", ["A,B"], "without commas"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), BAD_VALUES)
def test_invalid_value(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({key: value}, source="src")
    message = _message(excinfo)
    assert key in message
    assert repr(value) in message
    assert fragment in message
    assert excinfo.value.key == key
    assert excinfo.value.value is value or excinfo.value.value == value
    assert excinfo.value.source == "src"
    assert isinstance(excinfo.value, ValueError)


def test_integer_too_large_for_a_float() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({"ping.interval": 10**400})
    assert "ping.interval" in _message(excinfo)
    assert "too large" in _message(excinfo)


def test_integral_float_is_accepted_for_a_count() -> None:
    assert Settings.from_mapping({"ha.workers": 3.0}).ha_workers == 3


def test_smallest_accepted_values() -> None:
    settings = Settings.from_mapping(
        {
            "ping.timeout": 1.0,
            "host.ping.retry.count": 0,
            "redfish.retries": 0,
            "agent.max.concurrent.new.connections": 0,
            "kvm.ha.activity.check.failure.ratio": 0.0,
            "ha.workers": 1,
            "port": 1,
            "ping.interval": 0.1,
        }
    )
    assert settings.ping_timeout == 1.0
    assert settings.ping_interval == 0.1


# ---------------------------------------------------------------------------
# Name lists


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("A", ("A",)),
        ("A,B", ("A", "B")),
        (" A , B ,", ("A", "B")),
        ("A,,B", ("A", "B")),
        ("Simulator Investigator,A", ("Simulator Investigator", "A")),
        ([], ()),
        (["A", "B"], ("A", "B")),
        ((" A ",), ("A",)),
    ],
)
def test_name_list_parsing(given: object, expected: tuple[str, ...]) -> None:
    settings = Settings.from_mapping({"ha.investigators.exclude": given})
    assert settings.ha_investigators_exclude == expected


def test_default_investigator_order_parses_from_the_cloudstack_string() -> None:
    text = (
        "SimpleInvestigator,XenServerInvestigator,KVMInvestigator,HypervInvestigator,"
        "VMwareInvestigator,PingInvestigator,ManagementIPSysVMInvestigator,Ovm3Investigator"
    )
    assert Settings.from_mapping({"ha.investigators.order": text}) == Settings()


# ---------------------------------------------------------------------------
# from_toml


def _write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_from_toml_quoted_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '"ping.interval" = 30\n'
        '"kvm.heartbeat.update.frequency" = 30000\n'
        '"ha.investigators.exclude" = ["PingInvestigator"]\n'
        '"redfish.use.https" = false\n'
        "wait = 900\n",
    )
    settings = Settings.from_toml(path)
    assert settings.ping_interval == 30.0
    assert settings.kvm_heartbeat_update_frequency == 30.0
    assert settings.ha_investigators_exclude == ("PingInvestigator",)
    assert settings.redfish_use_https is False
    assert settings.wait == 900.0


def test_from_toml_nested_tables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[ping]\ninterval = 45\ntimeout = 2\n\n"
        '[kvm.ha]\n"activity.check.max.attempts" = 3\nfence.timeout = 30\n\n'
        '[outofbandmanagement.ipmitool]\npath = "/opt/ipmitool"\n',
    )
    settings = Settings.from_toml(str(path))
    assert settings.ping_interval == 45.0
    assert settings.ping_timeout == 2.0
    assert settings.kvm_ha_activity_check_max_attempts == 3
    assert settings.kvm_ha_fence_timeout == 30.0
    assert settings.outofbandmanagement_ipmitool_path == "/opt/ipmitool"


def test_from_toml_settings_table_of_a_scenario(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[settings]\n"ping.interval" = 20\n\n'
        "[settings.kvm.ha]\nrecover.timeout = 15\n\n"
        '[[hosts]]\nid = "h1"\ncluster = "c1"\n\n'
        "[run]\nuntil = 3600\n",
        name="scenario.toml",
    )
    settings = Settings.from_toml(path)
    assert settings.ping_interval == 20.0
    assert settings.kvm_ha_recover_timeout == 15.0


def test_from_toml_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert Settings.from_toml(_write(tmp_path, "")) == Settings()


def test_from_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, '"ping.interval" = = 3\n')
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert str(path) in _message(excinfo)
    assert excinfo.value.source == str(path)
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_from_toml_bad_value_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "[ping]\ninterval = -5\n")
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    message = _message(excinfo)
    assert str(path) in message
    assert "ping.interval" in message
    assert "-5" in message
    assert excinfo.value.key == "ping.interval"
    assert excinfo.value.source == str(path)


def test_from_toml_string_where_number_wanted(tmp_path: Path) -> None:
    path = _write(tmp_path, '"ha.workers" = "5"\n')
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert "ha.workers" in _message(excinfo)
    assert "'5'" in _message(excinfo)


def test_from_toml_unknown_key_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[ping]\nintervall = 5\n")
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    message = _message(excinfo)
    assert str(path) in message
    assert "ping.intervall" in message
    assert "did you mean 'ping.interval'" in message


def test_from_toml_key_given_twice(tmp_path: Path) -> None:
    path = _write(tmp_path, '"ping.interval" = 5\n[ping]\ninterval = 6\n')
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert "ping.interval" in _message(excinfo)
    assert "more than once" in _message(excinfo)


def test_from_toml_settings_must_be_a_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "settings = 5\n")
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert str(path) in _message(excinfo)
    assert excinfo.value.key == "settings"


def test_from_toml_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert str(path) in _message(excinfo)


def test_from_toml_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'"ha.tag" = "\xe9"\n')
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_toml(path)
    assert str(path) in _message(excinfo)


# ---------------------------------------------------------------------------
# from_env


def test_from_env_overrides_defaults() -> None:
    settings = Settings.from_env(
        {
            "CLOUDHA_PING_INTERVAL": "30",
            "CLOUDHA_PING_TIMEOUT": "3",
            "CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY": "30000",
            "CLOUDHA_HA_WORKERS": "8",
            "CLOUDHA_PORT": "9000",
            "CLOUDHA_KVM_HA_ACTIVITY_CHECK_FAILURE_RATIO": "0.5",
            "CLOUDHA_FORCE_HA": "Yes",
            "CLOUDHA_REDFISH_USE_HTTPS": "0",
            "CLOUDHA_HA_TAG": "ha",
            "CLOUDHA_HA_INVESTIGATORS_EXCLUDE": "PingInvestigator, KVMInvestigator",
            "CLOUDHA_OUTOFBANDMANAGEMENT_IPMITOOL_PATH": "/opt/ipmitool",
            "PATH": "/usr/bin",
            "HOME": "/root",
        }
    )
    assert settings.ping_interval == 30.0
    assert settings.ping_timeout == 3.0
    assert settings.kvm_heartbeat_update_frequency == 30.0
    assert settings.ha_workers == 8
    assert settings.port == 9000
    assert settings.kvm_ha_activity_check_failure_ratio == 0.5
    assert settings.force_ha is True
    assert settings.redfish_use_https is False
    assert settings.ha_tag == "ha"
    assert settings.ha_investigators_exclude == ("PingInvestigator", "KVMInvestigator")
    assert settings.outofbandmanagement_ipmitool_path == "/opt/ipmitool"
    assert settings.behind_on_ping_timeout == 90.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        (" Yes ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
    ],
)
def test_from_env_booleans(text: str, expected: bool) -> None:
    assert Settings.from_env({"CLOUDHA_AGENT_LB_ENABLED": text}).agent_lb_enabled is expected


def test_from_env_overrides_base() -> None:
    base = Settings.from_mapping({"alert.wait": 100, "ping.interval": 10})
    settings = Settings.from_env({"CLOUDHA_PING_INTERVAL": "20"}, base=base)
    assert settings.ping_interval == 20.0
    assert settings.alert_wait == 100.0


def test_from_env_nothing_set_returns_base() -> None:
    base = Settings.from_mapping({"alert.wait": 100})
    assert Settings.from_env({}, base=base) == base
    assert Settings.from_env({}) == Settings()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDHA_ALERT_WAIT", "77")
    assert Settings.from_env().alert_wait == 77.0


def test_from_env_count_written_as_float() -> None:
    assert Settings.from_env({"CLOUDHA_HA_WORKERS": "4.0"}).ha_workers == 4
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_env({"CLOUDHA_HA_WORKERS": "4.5"})
    assert "whole number" in _message(excinfo)


def test_from_env_empty_tag_clears_it() -> None:
    base = Settings.from_mapping({"ha.tag": "x"})
    assert Settings.from_env({"CLOUDHA_HA_TAG": ""}, base=base).ha_tag is None


def test_from_env_reserved_variables_are_ignored() -> None:
    settings = Settings.from_env(
        {"CLOUDHA_TEST_DB_URL": "postgresql://x", "CLOUDHA_LOG_LEVEL": "debug"}
    )
    assert settings == Settings()


def test_from_env_unknown_variable() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_env({"CLOUDHA_PING_INTERVALL": "30"})
    message = _message(excinfo)
    assert "CLOUDHA_PING_INTERVALL" in message
    assert "CLOUDHA_PING_INTERVAL'" in message
    assert excinfo.value.key == "CLOUDHA_PING_INTERVALL"
    assert excinfo.value.source == "environment"


@pytest.mark.parametrize(
    ("variable", "text", "key", "fragment"),
    [
        ("CLOUDHA_PING_INTERVAL", "-5", "ping.interval", "> 0"),
        ("CLOUDHA_PING_INTERVAL", "soon", "ping.interval", "number"),
        ("CLOUDHA_PING_INTERVAL", "", "ping.interval", "number"),
        ("CLOUDHA_PING_INTERVAL", "nan", "ping.interval", "finite"),
        ("CLOUDHA_PING_TIMEOUT", "0.5", "ping.timeout", "behind on ping"),
        ("CLOUDHA_HA_WORKERS", "0", "ha.workers", ">= 1"),
        ("CLOUDHA_HA_WORKERS", "many", "ha.workers", "number"),
        ("CLOUDHA_PORT", "99999", "port", "65535"),
        ("CLOUDHA_AGENT_LOAD_THRESHOLD", "2", "agent.load.threshold", "between 0 and 1"),
        ("CLOUDHA_FORCE_HA", "maybe", "force.ha", "true/false"),
        (
            "CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY",
            "0",
            "kvm.heartbeat.update.frequency",
            "milliseconds",
        ),
        ("CLOUDHA_OUTOFBANDMANAGEMENT_IPMITOOL_INTERFACE", "", "outofband", "empty"),
    ],
)
def test_from_env_bad_value(variable: str, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_env({variable: text})
    message = _message(excinfo)
    assert variable in message
    assert key in message
    assert repr(text) in message
    assert fragment in message
    assert excinfo.value.key is not None
    assert excinfo.value.key.startswith(key)
    assert excinfo.value.value == text
    assert excinfo.value.source == "environment"


# ---------------------------------------------------------------------------
# Allowed ranges (issue 12, bad input: a tiny period or a huge count never ends)

RANGED = [spec for spec in KEYS.values() if spec.minimum is not None]


def test_every_duration_and_count_has_a_range_with_a_reason() -> None:
    for spec in KEYS.values():
        ranged = spec.kind in ("duration", "count", "multiplier", "port")
        assert (spec.minimum is not None) is ranged, spec.name
        assert (spec.maximum is not None) is ranged, spec.name
        assert bool(spec.why) is ranged, spec.name
        if ranged:
            assert spec.minimum is not None
            assert spec.maximum is not None
            assert isinstance(spec.default, int | float)
            assert spec.minimum <= spec.default <= spec.maximum, spec.name


@pytest.mark.parametrize("spec", RANGED, ids=[spec.name for spec in RANGED])
def test_range_ends_are_accepted_and_beyond_them_rejected(spec: KeySpec) -> None:
    assert spec.minimum is not None
    assert spec.maximum is not None
    for inside in (spec.minimum, spec.maximum):
        value = getattr(Settings.from_mapping({spec.name: inside}), spec.attribute)
        expected = inside / 1000 if spec.unit == "ms" else inside
        assert value == expected
    whole = spec.kind in ("count", "port")
    below = spec.minimum - 1 if whole else spec.minimum * 0.999
    above = spec.maximum + 1 if whole else spec.maximum * 1.001
    for outside in (below, above):
        with pytest.raises(ConfigurationError) as excinfo:
            Settings.from_mapping({spec.name: outside}, source="bad.toml")
        message = _message(excinfo)
        assert message.startswith(f"bad.toml: {spec.name}: ")
        assert message.endswith(f", got {outside!r}")
        low, high = (
            f"{b:g}" if not float(b).is_integer() else str(int(b))
            for b in (spec.minimum, spec.maximum)
        )
        assert f"allowed range {low} to {high}" in message
        assert spec.why in message
        assert excinfo.value.key == spec.name


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ping.interval", 1e-9),
        ("time.to.sleep", 1e-9),
        ("kvm.heartbeat.update.frequency", 1e-9),
        ("outofbandmanagement.background.task.execution.interval", 1e-9),
        ("investigate.retry.interval", 1e-9),
        ("ha.workers", 10**9),
        ("ha.workers", 1001),
        ("outofbandmanagement.sync.poolsize", 10**6),
        ("ping.interval", 1e12),
        ("time.between.cleanup", 1e300),
        ("vm.ha.migration.max.retries", 10**12),
    ],
)
def test_values_that_would_never_end_are_rejected(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_mapping({key: value})
    assert excinfo.value.key == key
    assert "allowed range" in _message(excinfo)


def test_the_environment_checks_ranges_too() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Settings.from_env({"CLOUDHA_HA_WORKERS": "100000"})
    message = _message(excinfo)
    assert "CLOUDHA_HA_WORKERS" in message
    assert "allowed range 1 to 1000" in message


def test_attribute_values_are_checked_against_the_range_in_seconds() -> None:
    # kvm.heartbeat.update.frequency is declared 1000..3600000 ms: 1..3600 s as an attribute.
    assert Settings(kvm_heartbeat_update_frequency=3600.0).kvm_heartbeat_update_frequency == 3600
    with pytest.raises(ConfigurationError) as excinfo:
        Settings(kvm_heartbeat_update_frequency=3601.0)
    assert "must be <= 3600 seconds" in _message(excinfo)
    with pytest.raises(ConfigurationError) as excinfo:
        Settings(ha_workers=5000)
    assert "must be <= 1000" in _message(excinfo)


def test_values_fast_test_profiles_use_are_accepted() -> None:
    # What the real-thread integration tests, the heartbeat CLI tests and the benches set.
    settings = Settings.from_mapping(
        {
            "ping.interval": 0.2,
            "time.to.sleep": 0.1,
            "investigate.retry.interval": 0.2,
            "restart.retry.interval": 0.2,
            "kvm.heartbeat.update.frequency": 1000,
            "kvm.heartbeat.update.retry.sleep": 1,
            "heartbeat.update.timeout": 5000,
        }
    )
    assert settings.time_to_sleep == 0.1
    assert settings.kvm_heartbeat_update_retry_sleep == 0.001


def test_a_scenario_with_a_runaway_setting_is_a_scenario_error(tmp_path: Path) -> None:
    from cloudha.errors import ScenarioError
    from cloudha.testing.scenario import load_scenario

    path = tmp_path / "tiny.toml"
    path.write_text(
        '[settings]\n"ping.interval" = 1e-9\n\n[[hosts]]\nid = "h1"\ncluster = "c1"\n',
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as excinfo:
        load_scenario(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "line 2" in message
    assert "ping.interval" in message
    assert "allowed range 0.1 to 3600 seconds" in message


# ---------------------------------------------------------------------------
# cloudha's own keys are named cloudha.*


def _spec(name: str, section: str, **kw: object) -> KeySpec:
    fields: dict[str, object] = {
        "name": name,
        "attribute": name.replace(".", "_"),
        "kind": "bool",
        "unit": None,
        "default": False,
        "description": "d",
        "section": section,
    }
    fields.update(kw)
    return KeySpec(**fields)  # type: ignore[arg-type]


def test_cloudhas_own_keys_are_exactly_the_cloudha_section() -> None:
    # Every other key of the catalogue is CloudStack's (spec §2.1 ... §8).
    own = {s.name for s in KEYS.values() if s.section == "cloudha"}
    assert own == {n for n in KEYS if n.startswith("cloudha.")}
    assert own == {
        "cloudha.watchdog.timeout",
        "cloudha.watchdog.reset.margin",
        "cloudha.fence.on.suspicion",
        "cloudha.isolation.aware",
        "cloudha.isolation.address",
        "cloudha.isolation.agent.window",
        "cloudha.freshness.enabled",
        "cloudha.freshness.min.ping.share",
        "cloudha.freshness.window",
        "cloudha.freshness.resume.intervals",
        "cloudha.storm.domains",
        "cloudha.storm.fence.budget",
        "cloudha.storm.fence.window",
        "cloudha.storm.disruption.threshold",
        "cloudha.shadow",
        "cloudha.ms.takeover.timeout",
        "cloudha.ms.heartbeat.interval",
        "cloudha.evidence.retention",
        "cloudha.evidence.max.records",
        "cloudha.ping.grace.multiplier",
        "cloudha.ping.jitter",
        "cloudha.phi.enabled",
        "cloudha.phi.threshold",
        "cloudha.phi.min.std.deviation",
        "cloudha.phi.acceptable.pause",
        "cloudha.phi.window",
        "cloudha.escalation.enabled",
        "cloudha.escalation.levels",
        "cloudha.escalation.agent.service",
        "cloudha.escalation.agent.restart.timeout",
        "cloudha.escalation.power.cycle.timeout",
        "cloudha.escalation.repeat.after",
        "cloudha.vm.restart.in.place",
        "cloudha.poll.timeout",
        "cloudha.poll.workers",
    }


def test_own_keys_must_be_named_cloudha_and_only_they() -> None:
    from cloudha.settings import _check_declaration

    own = _spec("cloudha.ms.takeover.timeout", "cloudha")
    _check_declaration(own)
    assert own.attribute == "cloudha_ms_takeover_timeout"
    assert own.environment_variable == "CLOUDHA_MS_TAKEOVER_TIMEOUT"
    with pytest.raises(RuntimeError, match="cloudha's own keys"):
        _check_declaration(_spec("ms.takeover.timeout", "cloudha"))
    with pytest.raises(RuntimeError, match="cloudha's own keys"):
        _check_declaration(_spec("cloudha.shadow", "§2.1"))
    with pytest.raises(RuntimeError, match="unknown section"):
        _check_declaration(_spec("x.y", "§99"))


def test_declarations_are_checked() -> None:
    from cloudha.settings import _check_declaration

    with pytest.raises(RuntimeError, match="needs a range"):
        _check_declaration(_spec("a.b", "§2.1", kind="count", default=1))
    with pytest.raises(RuntimeError, match="outside the allowed range"):
        _check_declaration(
            _spec("a.b", "§2.1", kind="count", default=0, minimum=1, maximum=2, why="w")
        )
    with pytest.raises(RuntimeError, match="not a cloudha module"):
        _check_declaration(_spec("a.b", "§2.1", consumers=("os.path",)))
    with pytest.raises(RuntimeError, match="listed twice"):
        _check_declaration(_spec("a.b", "§2.1", consumers=("cloudha.x", "cloudha.x")))
