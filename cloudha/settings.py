"""Every CloudStack setting cloudha knows, by its CloudStack name, declared once.

:class:`Settings` is one immutable value holding each setting of spec §2.1
(agent monitoring), §3.8 (VM HA work queue), §4/§5 (investigator and fence
builder registries), §6.1 (KVM storage heartbeat agent properties), §7.5
(Host-HA executors and the KVM provider) and §8 (out-of-band management),
with CloudStack's default, plus cloudha's own settings, which are named
``cloudha.*`` (section ``"cloudha"``). :data:`KEYS` is the catalogue: one
:class:`KeySpec` per key with its kind, unit, default, allowed range (and why),
meaning, spec section and the modules that read it.

Units:

* On input, every value is given in the unit CloudStack documents for that
  key: **seconds** for the management-server (global / cluster / zone)
  settings, **milliseconds** for the KVM agent properties of spec §6.1
  (``kvm.heartbeat.update.frequency``, ``kvm.heartbeat.update.retry.sleep``,
  ``heartbeat.update.timeout``, ``kvm.heartbeat.checker.timeout``).
  :attr:`KeySpec.unit` says which (``"s"``, ``"ms"`` or ``None`` for values
  that are not durations).
* As attributes, every duration is a ``float`` number of **seconds**, whatever
  its input unit: ``Settings().kvm_heartbeat_update_frequency == 60.0``.
* :meth:`Settings.to_mapping` gives values back in each key's own unit, so it
  round-trips through :meth:`Settings.from_mapping`.

Attribute names are the key names with dots replaced by underscores
(``ping.interval`` → ``settings.ping_interval``, ``cloudha.x.y`` →
``settings.cloudha_x_y``). Environment variables are the key names
upper-cased with dots replaced by underscores and prefixed with ``CLOUDHA_``
(``CLOUDHA_PING_INTERVAL``); a ``cloudha.*`` key drops its own prefix
(``cloudha.x.y`` → ``CLOUDHA_X_Y``).

Every duration and count has a declared range (:attr:`KeySpec.minimum`,
:attr:`KeySpec.maximum`) that a real deployment never needs to leave: a
1e-9 s ``ping.interval`` or a million ``ha.workers`` is a mistake, and would
make loops (and the simulator) spin forever.

A key that nothing in cloudha reads yet (:attr:`KeySpec.consumers` empty,
:data:`NOT_USED_YET`) is still accepted, since CloudStack configurations are
copied whole, but each time one is given a warning naming it is logged on
the ``cloudha.settings`` logger: an operator who sets it must not believe it
acts.

Every invalid value raises :class:`~cloudha.errors.ConfigurationError` whose
message names the key and the value (and the allowed range when the value
is outside it), with ``key``, ``value`` and ``source`` set. Nothing here
reads the environment, a file or the clock at import.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import tomllib
import types
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias, final

import attrs

from cloudha.errors import ConfigurationError

__all__ = ["KEYS", "NOT_USED_YET", "RESERVED_ENVIRONMENT", "KeySpec", "Settings"]

log = logging.getLogger(__name__)

_Kind: TypeAlias = Literal[
    "duration", "count", "ratio", "multiplier", "bool", "string", "names", "port"
]
"""What a setting holds.

* ``duration``: a time span; input in :attr:`KeySpec.unit`, attribute in float seconds;
  must be finite and within [:attr:`KeySpec.minimum`, :attr:`KeySpec.maximum`].
* ``count``: an ``int`` within [minimum, maximum].
* ``ratio``: a ``float`` in [0, 1].
* ``multiplier``: a ``float`` within [minimum, maximum].
* ``bool``: ``True`` or ``False``.
* ``string``: a ``str`` (``None`` allowed where the default is ``None``).
* ``names``: a ``tuple[str, ...]`` of plugin names, given as a comma-separated
  string or a list of strings.
* ``port``: a TCP port number, 1..65535.
"""

_Unit: TypeAlias = Literal["s", "ms"]

_Value: TypeAlias = int | float | bool | str | tuple[str, ...] | None
"""A setting's value (in a key's own unit, or as an attribute)."""

_ENVIRONMENT_PREFIX = "CLOUDHA_"
_OWN_PREFIX = "cloudha."
_OWN_SECTION = "cloudha"

RESERVED_ENVIRONMENT: frozenset[str] = frozenset({"CLOUDHA_TEST_DB_URL", "CLOUDHA_LOG_LEVEL"})
"""``CLOUDHA_*`` variables that are not settings; :meth:`Settings.from_env` ignores them."""

NOT_USED_YET: tuple[str, ...] = ()
"""The :attr:`KeySpec.consumers` of a key that nothing in cloudha reads yet."""

_ENVIRONMENT_SOURCE = "environment"
_MS_PER_S = 1000.0
_MAX_PORT = 65535


@final
@attrs.frozen
class KeySpec:
    """The catalogue entry of one setting.

    Attributes:
        name: the CloudStack key, e.g. ``"ping.interval"``, or cloudha's own
            ``"cloudha.<...>"``.
        attribute: the :class:`Settings` attribute, e.g. ``"ping_interval"``.
        kind: what the setting holds: ``duration``, ``count``, ``ratio``,
            ``multiplier``, ``bool``, ``string``, ``names`` or ``port``.
        unit: ``"s"`` or ``"ms"`` for durations (the unit values are given
            in), ``None`` for every other kind.
        default: CloudStack's default, in the key's own unit.
        description: one line saying what the setting does.
        section: the spec section the key comes from, e.g. ``"§2.1"``;
            ``"cloudha"`` for cloudha's own ``cloudha.*`` keys.
        minimum: the smallest accepted value of a ``duration``, ``count``,
            ``multiplier`` or ``port`` key, in the key's own unit; ``None``
            for the other kinds (ratios lie in [0, 1]).
        maximum: the largest accepted value of those kinds, likewise.
        why: why the range is what it is (shown in docs/settings.md).
        consumers: the modules that read the setting, e.g.
            ``("cloudha.detection.agents",)``; :data:`NOT_USED_YET` (empty)
            for a key nothing reads yet. A test checks this against the code.
    """

    name: str
    attribute: str
    kind: _Kind
    unit: _Unit | None
    default: _Value
    description: str
    section: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    why: str = ""
    consumers: tuple[str, ...] = NOT_USED_YET

    @property
    def environment_variable(self) -> str:
        """The variable :meth:`Settings.from_env` reads, e.g. ``CLOUDHA_PING_INTERVAL``."""
        own = self.name.removeprefix(_OWN_PREFIX)
        return _ENVIRONMENT_PREFIX + own.replace(".", "_").upper()

    @property
    def used(self) -> bool:
        """Whether anything in cloudha reads the setting (``consumers`` is not empty)."""
        return bool(self.consumers)


_Consumers: TypeAlias = tuple[str, ...]
_Bounds: TypeAlias = tuple[int | float, int | float, str]
"""(minimum, maximum, why) in the key's own unit."""


def _key(
    name: str,
    kind: _Kind,
    default: _Value,
    description: str,
    section: str,
    *,
    read_by: _Consumers,
    bounds: _Bounds | None = None,
    unit: _Unit | None = None,
) -> KeySpec:
    if kind == "duration" and unit is None:
        unit = "s"
    if kind == "port":
        bounds = (1, _MAX_PORT, "a TCP port number")
    minimum, maximum, why = bounds if bounds is not None else (None, None, "")
    return KeySpec(
        name=name,
        attribute=name.replace(".", "_"),
        kind=kind,
        unit=unit,
        default=default,
        description=description,
        section=section,
        minimum=minimum,
        maximum=maximum,
        why=why,
        consumers=read_by,
    )


_INVESTIGATORS_ORDER = (
    "SimpleInvestigator",
    "XenServerInvestigator",
    "KVMInvestigator",
    "HypervInvestigator",
    "VMwareInvestigator",
    "PingInvestigator",
    "ManagementIPSysVMInvestigator",
    "Ovm3Investigator",
)

_S21, _S38, _S4, _S5, _S61, _S75, _S8 = "§2.1", "§3.8", "§4", "§5", "§6.1", "§7.5", "§8"

# The modules that read settings (KeySpec.consumers); tests/unit/test_settings_consumers.py
# scans each one's source and fails when a declaration and the code disagree.
_AGENTS = "cloudha.detection.agents"
_MONITOR = "cloudha.detection.monitor"
_PING_TASK = "cloudha.detection.ping_task"
_MANAGER = "cloudha.ha.manager"
_DECISIONS = "cloudha.ha.decisions"
_INVESTIGATORS = "cloudha.investigators.registry"
_FENCERS = "cloudha.fencing.registry"
_TIMING = "cloudha.heartbeat.timing"
_HEARTBEAT_CLI = "cloudha.cli.heartbeat"
_OOBM = "cloudha.oobm.manager"
_IPMITOOL = "cloudha.oobm.ipmitool"
_REDFISH = "cloudha.oobm.redfish"
_SIMULATOR = "cloudha.testing.simulator"
_SERVER = "cloudha.server"
_SCENARIO = "cloudha.testing.scenario"
_CAMPAIGN = "cloudha.testing.campaign"
_SUSPICION = "cloudha.detection.suspicion"
_HOST_HA = "cloudha.hostha.manager"
_HOST_HA_KVM = "cloudha.hostha.provider"
_FRESHNESS = "cloudha.detection.freshness"
_STORM = "cloudha.detection.storm"
_DEADLINES = "cloudha.detection.deadlines"
_PHI = "cloudha.detection.phi"
_EVIDENCE_STORE = "cloudha.evidence_store"
_ESCALATION = "cloudha.detection.escalation"
_AGENT_POLLER = "cloudha.detection.poller"
_DAEMON = "cloudha.daemon"
_CLUSTER = "cloudha.cluster.member"
_RUN_CLI = "cloudha.cli.run"

# Allowed ranges, in each key's own unit, with the reason (error messages and
# docs/settings.md show it): "below: why not less; above: why not more".
_SPIN = "less only spins its loop, and tests on real threads need no less than 0.1 s"
_DAY = 86400
_PERIOD: _Bounds = (0.1, _DAY, f"{_SPIN}; more than a day is no HA")
_WAIT: _Bounds = (0.1, _DAY, "nothing is decided faster; more than a day is no HA")
_TIMEOUT: _Bounds = (
    0.1,
    3600,
    "no remote call answers reliably faster; a longer limit stalls HA for hours",
)
_RETENTION: _Bounds = (
    0.1,
    30 * _DAY,
    f"{_SPIN}; finished work kept over 30 days only fills op_ha_work",
)
_PING: _Bounds = (0.1, 3600, f"{_SPIN}; more would leave a dead host unnoticed for hours")
_MS_TIMEOUT: _Bounds = (
    100,
    3_600_000,
    "no storage write or read answers reliably faster; more stalls HA for hours",
)
_THREADS: _Bounds = (1, 1000, "more threads on one server only contend")
_POOL: _Bounds = (1, 10_000, "more than any deployment's hosts per server")
_QUEUE: _Bounds = (1, 1_000_000, "a longer queue is a backlog, not a buffer")
_ATTEMPTS: _Bounds = (1, 100, "more attempts only delay the decision")
_RETRIES: _Bounds = (0, 100, "more retries only delay the decision")
_CONNECTIONS: _Bounds = (0, 100_000, "0 means unlimited")

_SPECS: tuple[KeySpec, ...] = (
    # §2.1 agent monitoring and disconnect handling.
    _key(
        "ping.interval",
        "duration",
        60,
        "How often agents ping; also the MonitorTask period.",
        _S21,
        bounds=_PING,
        read_by=(
            _AGENTS,
            _MONITOR,
            _PING_TASK,
            _INVESTIGATORS,
            _SIMULATOR,
            _SERVER,
            _SCENARIO,
            _CAMPAIGN,
            _SUSPICION,
            _FRESHNESS,
            _STORM,
            _DEADLINES,
            _PHI,
            _ESCALATION,
            _AGENT_POLLER,
        ),
    ),
    _key(
        "ping.timeout",
        "multiplier",
        2.5,
        "Pings a host may miss, as a multiple of ping.interval, before it is behind on ping.",
        _S21,
        bounds=(1.0, 100.0, "a host 100 pings behind is long dead"),
        read_by=(_AGENTS, _MONITOR, _CAMPAIGN, _STORM, _DEADLINES),
    ),
    _key(
        "alert.wait",
        "duration",
        1800,
        "How long an undecided host waits before Alert.",
        _S21,
        bounds=_WAIT,
        read_by=(_AGENTS, _CAMPAIGN),
    ),
    _key(
        "wait",
        "duration",
        1800,
        "Default agent command timeout; new-connection check.",
        _S21,
        bounds=_WAIT,
        read_by=NOT_USED_YET,
    ),
    _key(
        "ready.command.wait",
        "duration",
        60,
        "Timeout of the ReadyCommand after connect.",
        _S21,
        bounds=_TIMEOUT,
        read_by=NOT_USED_YET,
    ),
    _key(
        "commands.timeout",
        "string",
        "",
        "Per-command timeouts as 'CommandName=seconds,...'; empty means none.",
        _S21,
        read_by=NOT_USED_YET,
    ),
    _key(
        "enable.kvm.host.auto.enable.disable",
        "bool",
        False,
        "Let the agent health-check script enable or disable KVM hosts.",
        _S21,
        read_by=NOT_USED_YET,
    ),
    _key(
        "direct.agent.load.size",
        "count",
        16,
        "Direct agents loaded per scan round; size of the agent task pool.",
        _S21,
        bounds=_POOL,
        read_by=(_CLUSTER,),
    ),
    _key(
        "direct.agent.pool.size",
        "count",
        500,
        "Threads serving direct agents and their ping cron jobs.",
        _S21,
        bounds=_POOL,
        read_by=NOT_USED_YET,
    ),
    _key(
        "direct.agent.thread.cap",
        "ratio",
        1.0,
        "Share of the direct-agent pool one attache may hold busy.",
        _S21,
        read_by=NOT_USED_YET,
    ),
    _key(
        "direct.agent.scan.interval",
        "duration",
        90,
        "How often to look for direct agents no server owns.",
        _S21,
        bounds=_PERIOD,
        read_by=(_CLUSTER, _CAMPAIGN),
    ),
    _key(
        "agent.lb.enabled",
        "bool",
        False,
        "Rebalance direct agents across servers.",
        _S21,
        read_by=(_CLUSTER,),
    ),
    _key(
        "agent.load.threshold",
        "ratio",
        0.7,
        "Load share above which a server hands direct agents to others.",
        _S21,
        read_by=(_CLUSTER,),
    ),
    _key(
        "host.ping.retry.count",
        "count",
        0,
        "Extra status queries when a direct agent's resource gives no answer.",
        _S21,
        bounds=_RETRIES,
        read_by=(_PING_TASK,),
    ),
    _key(
        "host.ping.retry.timer",
        "duration",
        5,
        "Pause between those extra queries.",
        _S21,
        bounds=_TIMEOUT,
        read_by=(_PING_TASK,),
    ),
    _key(
        "workers",
        "count",
        5,
        "Threads handling agent requests.",
        _S21,
        bounds=_THREADS,
        read_by=NOT_USED_YET,
    ),
    _key("port", "port", 8250, "TCP port agents connect to.", _S21, read_by=NOT_USED_YET),
    _key(
        "agent.ssl.handshake.timeout",
        "duration",
        30,
        "Limit on an agent's TLS handshake.",
        _S21,
        bounds=_TIMEOUT,
        read_by=NOT_USED_YET,
    ),
    _key(
        "agent.max.concurrent.new.connections",
        "count",
        0,
        "Agent connections accepted at once; 0 means unlimited.",
        _S21,
        bounds=_CONNECTIONS,
        read_by=NOT_USED_YET,
    ),
    _key(
        "agent.connections.monitor.interval",
        "duration",
        1800,
        "How often stale new-connection records are cleaned up.",
        _S21,
        bounds=_PERIOD,
        read_by=NOT_USED_YET,
    ),
    _key(
        "check.txn.before.sending.agent.commands",
        "bool",
        False,
        "Refuse to send agent commands from inside a database transaction.",
        _S21,
        read_by=NOT_USED_YET,
    ),
    # §3.8 VM HA work queue.
    _key(
        "ha.workers",
        "count",
        5,
        "HA worker threads (and cleanup pool size).",
        _S38,
        bounds=_THREADS,
        read_by=(_MANAGER, _SERVER, _SCENARIO),
    ),
    _key(
        "time.to.sleep",
        "duration",
        60,
        "Idle pause of an HA worker with nothing to do.",
        _S38,
        bounds=(0.1, 3600, f"{_SPIN}; more would leave new HA work waiting for hours"),
        read_by=(_MANAGER, _SIMULATOR, _SERVER, _SCENARIO, _CAMPAIGN),
    ),
    _key(
        "investigate.retry.interval",
        "duration",
        60,
        "Recheck delay while a VM looks alive but its host is not Up.",
        _S38,
        bounds=_PERIOD,
        read_by=(_DECISIONS, _CAMPAIGN),
    ),
    _key(
        "migrate.retry.interval",
        "duration",
        120,
        "Delay before retrying a migration.",
        _S38,
        bounds=_PERIOD,
        read_by=(_DECISIONS,),
    ),
    _key(
        "restart.retry.interval",
        "duration",
        600,
        "Delay before retrying an HA restart.",
        _S38,
        bounds=_PERIOD,
        read_by=(_DECISIONS, _CAMPAIGN),
    ),
    _key(
        "stop.retry.interval",
        "duration",
        600,
        "Delay before retrying a stop or destroy.",
        _S38,
        bounds=_PERIOD,
        read_by=(_DECISIONS,),
    ),
    _key(
        "time.between.cleanup",
        "duration",
        86400,
        "Period of the HA work cleanup task.",
        _S38,
        bounds=_RETENTION,
        read_by=(_MANAGER, _SERVER),
    ),
    _key(
        "time.between.failures",
        "duration",
        3600,
        "Age after which finished HA work is purged; window for recent failures.",
        _S38,
        bounds=_RETENTION,
        read_by=(_MANAGER,),
    ),
    _key(
        "max.retries",
        "count",
        5,
        "Declared attempt limit for migrations (unused by CloudStack).",
        _S38,
        bounds=_ATTEMPTS,
        read_by=NOT_USED_YET,
    ),
    _key(
        "vm.ha.migration.max.retries",
        "count",
        5,
        "Attempts any HA work item gets before it is given up.",
        _S38,
        bounds=_ATTEMPTS,
        read_by=(_DECISIONS, _MANAGER),
    ),
    _key(
        "force.ha",
        "bool",
        False,
        "Treat every VM as HA-enabled.",
        _S38,
        read_by=(_DECISIONS, _MANAGER, _SERVER),
    ),
    _key(
        "vm.ha.enabled",
        "bool",
        True,
        "Master switch for scheduling VM HA work.",
        _S38,
        read_by=(_AGENTS, _MANAGER, _SIMULATOR),
    ),
    _key(
        "vm.ha.alerts.enabled",
        "bool",
        True,
        "Raise alerts when VM HA is switched off.",
        _S38,
        read_by=(_AGENTS, _MANAGER),
    ),
    _key(
        "kvm.ha.fence.on.storage.heartbeat.failure",
        "bool",
        False,
        "Judge a KVM host dead as soon as one storage pool's heartbeat is stale.",
        _S38,
        read_by=(_INVESTIGATORS, _FENCERS, _HOST_HA_KVM, _SUSPICION),
    ),
    _key(
        "ha.tag",
        "string",
        None,
        "Host tag reserving hosts for HA restarts; unset = none.",
        _S38,
        read_by=(_MANAGER,),
    ),
    _key(
        "ha.vm.restart.hostup",
        "bool",
        True,
        "Restart HA VMs found powered off behind CloudStack's back on an Up host.",
        _S38,
        read_by=(_MANAGER,),
    ),
    # §4 and §5: investigator and fence builder registries.
    _key(
        "ha.investigators.order",
        "names",
        _INVESTIGATORS_ORDER,
        "Order in which investigators are asked; unlisted ones come after.",
        _S4,
        read_by=(_INVESTIGATORS,),
    ),
    _key(
        "ha.investigators.exclude",
        "names",
        (),
        "Investigators left out of the chain.",
        _S4,
        read_by=(_INVESTIGATORS, _SERVER),
    ),
    _key(
        "ha.fence.builders.exclude",
        "names",
        ("RecreatableFencer",),
        "Fence builders left out of the chain.",
        _S5,
        read_by=(_FENCERS,),
    ),
    # §6.1 KVM agent properties (milliseconds).
    _key(
        "kvm.heartbeat.update.frequency",
        "duration",
        60000,
        "Pause between heartbeat write rounds; also the staleness limit for checkers.",
        _S61,
        unit="ms",
        bounds=(
            1000,
            3_600_000,
            "the heartbeat holds whole seconds; more would take hours to call a host stale",
        ),
        read_by=(_TIMING, _SCENARIO, _CAMPAIGN),
    ),
    _key(
        "kvm.heartbeat.update.max.tries",
        "count",
        5,
        "Heartbeat write attempts per pool per round.",
        _S61,
        bounds=_ATTEMPTS,
        read_by=(_TIMING,),
    ),
    _key(
        "kvm.heartbeat.update.retry.sleep",
        "duration",
        10000,
        "Pause between failed heartbeat write attempts.",
        _S61,
        unit="ms",
        bounds=(1, 3_600_000, "max.tries bounds the attempts of a round; more stalls the writer"),
        read_by=(_TIMING,),
    ),
    _key(
        "heartbeat.update.timeout",
        "duration",
        60000,
        "Limit on one heartbeat write.",
        _S61,
        unit="ms",
        bounds=_MS_TIMEOUT,
        read_by=(_TIMING,),
    ),
    _key(
        "kvm.heartbeat.checker.timeout",
        "duration",
        360000,
        "Limit on one heartbeat check of a neighbour.",
        _S61,
        unit="ms",
        bounds=_MS_TIMEOUT,
        read_by=NOT_USED_YET,
    ),
    _key(
        "reboot.host.and.alert.management.on.heartbeat.timeout",
        "bool",
        True,
        "Reboot the host when every heartbeat write of a round fails.",
        _S61,
        read_by=(_HEARTBEAT_CLI, _FENCERS, _HOST_HA_KVM, _INVESTIGATORS, _SIMULATOR),
    ),
    # §7.5 Host-HA executors.
    _key(
        "ha.max.concurrent.health.check.operations",
        "count",
        50,
        "Threads running Host-HA health checks.",
        _S75,
        bounds=_THREADS,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.pending.health.check.operations",
        "count",
        5000,
        "Queued health checks; more are refused until the next poll.",
        _S75,
        bounds=_QUEUE,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.concurrent.activity.check.operations",
        "count",
        25,
        "Threads running Host-HA activity checks.",
        _S75,
        bounds=_THREADS,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.pending.activity.check.operations",
        "count",
        2500,
        "Queued activity checks; more are refused until the next poll.",
        _S75,
        bounds=_QUEUE,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.concurrent.recovery.operations",
        "count",
        25,
        "Threads running Host-HA recoveries.",
        _S75,
        bounds=_THREADS,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.pending.recovery.operations",
        "count",
        2500,
        "Queued recoveries; more are refused until the next poll.",
        _S75,
        bounds=_QUEUE,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.concurrent.fence.operations",
        "count",
        25,
        "Threads running Host-HA fence operations.",
        _S75,
        bounds=_THREADS,
        read_by=(_HOST_HA,),
    ),
    _key(
        "ha.max.pending.fence.operations",
        "count",
        2500,
        "Queued fence operations; more are refused until the next poll.",
        _S75,
        bounds=_QUEUE,
        read_by=(_HOST_HA,),
    ),
    # §7.5 KVM Host-HA provider.
    _key(
        "kvm.ha.health.check.timeout",
        "duration",
        10,
        "Limit on one health check.",
        _S75,
        bounds=_TIMEOUT,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.activity.check.timeout",
        "duration",
        60,
        "Limit on one activity check.",
        _S75,
        bounds=_TIMEOUT,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.activity.check.interval",
        "duration",
        60,
        "Least time between two activity checks of a suspect host.",
        _S75,
        bounds=_PERIOD,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.activity.check.max.attempts",
        "count",
        10,
        "Activity check samples taken before deciding.",
        _S75,
        bounds=(1, 1000, "more samples only delay the decision"),
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.activity.check.failure.ratio",
        "ratio",
        0.7,
        "Share of samples without activity above which recovery starts.",
        _S75,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.degraded.max.period",
        "duration",
        300,
        "How long a Degraded host waits before its activity is checked again.",
        _S75,
        bounds=_PERIOD,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.recover.timeout",
        "duration",
        60,
        "Limit on one recovery (power reset).",
        _S75,
        bounds=_TIMEOUT,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.recover.wait.period",
        "duration",
        600,
        "How long a Recovered host waits before it is Available again.",
        _S75,
        bounds=_PERIOD,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.recover.failure.threshold",
        "count",
        1,
        "Recovery attempts before the host is fenced.",
        _S75,
        bounds=_ATTEMPTS,
        read_by=(_HOST_HA_KVM,),
    ),
    _key(
        "kvm.ha.fence.timeout",
        "duration",
        60,
        "Limit on one fence (power off).",
        _S75,
        bounds=_TIMEOUT,
        read_by=(_FENCERS, _HOST_HA_KVM),
    ),
    # §8 out-of-band management.
    _key(
        "outofbandmanagement.action.timeout",
        "duration",
        60,
        "Default limit on one power operation.",
        _S8,
        bounds=_TIMEOUT,
        read_by=(_FENCERS, _OOBM, _SUSPICION),
    ),
    _key(
        "outofbandmanagement.sync.poolsize",
        "count",
        50,
        "Threads querying power state in the background.",
        _S8,
        bounds=_THREADS,
        read_by=(_OOBM,),
    ),
    _key(
        "outofbandmanagement.background.task.execution.interval",
        "duration",
        4,
        "Period of the background power-state sync.",
        _S8,
        bounds=_PERIOD,
        read_by=(_OOBM, _SCENARIO),
    ),
    _key(
        "outofbandmanagement.ipmitool.path",
        "string",
        "/usr/bin/ipmitool",
        "Path of the ipmitool program.",
        _S8,
        read_by=(_IPMITOOL,),
    ),
    _key(
        "outofbandmanagement.ipmitool.interface",
        "string",
        "lanplus",
        "ipmitool interface (its -I option).",
        _S8,
        read_by=(_IPMITOOL,),
    ),
    _key(
        "outofbandmanagement.ipmitool.retries",
        "count",
        1,
        "ipmitool retries (its -R option).",
        _S8,
        bounds=_RETRIES,
        read_by=(_IPMITOOL,),
    ),
    _key(
        "redfish.ignore.ssl",
        "bool",
        False,
        "Skip TLS certificate checks of Redfish BMCs.",
        _S8,
        read_by=(_REDFISH,),
    ),
    _key(
        "redfish.use.https",
        "bool",
        True,
        "Talk to Redfish BMCs over HTTPS.",
        _S8,
        read_by=(_REDFISH,),
    ),
    _key(
        "redfish.retries",
        "count",
        2,
        "Retries of a Redfish request after a connection failure.",
        _S8,
        bounds=_RETRIES,
        read_by=(_REDFISH,),
    ),
    # cloudha's own: the heartbeat writer's watchdog (docs/heartbeat.md).
    _key(
        "cloudha.watchdog.timeout",
        "duration",
        300,
        "Countdown of the heartbeat writer's watchdog; + reset margin < the stale bound.",
        "cloudha",
        bounds=(1, 3600, "petting faster than once a second only spins; over an hour is no HA"),
        read_by=(_HEARTBEAT_CLI, _SCENARIO, _SIMULATOR),
    ),
    _key(
        "cloudha.watchdog.reset.margin",
        "duration",
        30,
        "Longest time from a watchdog's expiry until its host is reset.",
        "cloudha",
        bounds=(0.1, 600, "no reset is instantaneous; a reset slower than 10 minutes is a hang"),
        read_by=(_HEARTBEAT_CLI, _SCENARIO, _SIMULATOR),
    ),
    # cloudha's own: the fast path of docs/suspicion.md.
    _key(
        "cloudha.fence.on.suspicion",
        "bool",
        True,
        "Power-fence a host in Alert that every witness has lost (agent, neighbours' pings,"
        " heartbeat late on every readable pool) when its BMC is ready; its VMs restart at once.",
        "cloudha",
        read_by=(_SERVER,),
    ),
    # cloudha's own: isolation-aware self-fencing (docs/heartbeat.md, "Isolation").
    _key(
        "cloudha.isolation.aware",
        "bool",
        True,
        "A host whose heartbeat writes fail resets itself only when it is isolated (its"
        " agent lost the management server and the isolation address is silent); while"
        " its agent is connected its watchdog lease is renewed on the agent's link.",
        "cloudha",
        read_by=(_HEARTBEAT_CLI, _SIMULATOR),
    ),
    _key(
        "cloudha.isolation.address",
        "string",
        "gateway",
        "Address the heartbeat writer pings to tell isolation from a partition: an IP or"
        " name, 'gateway' (the host's default gateway, vSphere's default) or '' (the"
        " agent's link alone decides).",
        "cloudha",
        read_by=(_HEARTBEAT_CLI, _SIMULATOR),
    ),
    _key(
        "cloudha.isolation.agent.window",
        "duration",
        120,
        "How recent the agent's last acknowledged ping must be for its host to count as"
        " connected (two ping intervals: one late ping is no isolation).",
        "cloudha",
        bounds=(1, 3600, "under a second is no ping interval; over an hour is no link"),
        read_by=(_HEARTBEAT_CLI, _SIMULATOR),
    ),
    # cloudha's own: freshness of the monitor's own view (docs/safety.md, "Freshness").
    _key(
        "cloudha.freshness.enabled",
        "bool",
        True,
        "Judge other hosts only while this server's own view is fresh (pings arriving,"
        " directory answering, store writable).",
        "cloudha",
        read_by=(_FRESHNESS,),
    ),
    _key(
        "cloudha.freshness.min.ping.share",
        "ratio",
        0.3,
        "Share of the monitored hosts that must have pinged within the freshness window"
        " for the actual state to be fresh.",
        "cloudha",
        read_by=(_FRESHNESS,),
    ),
    _key(
        "cloudha.freshness.window",
        "count",
        2,
        "Ping intervals a ping, a directory answer or a store write stays fresh.",
        "cloudha",
        bounds=(1, 100, "under one interval every late ping looks stale; 100 is no window"),
        read_by=(_FRESHNESS,),
    ),
    _key(
        "cloudha.freshness.resume.intervals",
        "count",
        2,
        "Consecutive fresh ping intervals before judging resumes (also after a start).",
        "cloudha",
        bounds=(1, 100, "at least the interval that found it fresh; 100 is never"),
        read_by=(_FRESHNESS,),
    ),
    # cloudha's own: storm protection per failure domain (docs/safety.md, "Storms").
    _key(
        "cloudha.storm.domains",
        "names",
        ("cluster", "pod", "zone"),
        "Failure domains storm protection counts (any of cluster, pod, zone, rack).",
        "cloudha",
        read_by=(_STORM,),
    ),
    _key(
        "cloudha.storm.fence.budget",
        "ratio",
        0.1,
        "Share of a domain's hosts that may be fenced on suspicion per window (at least"
        " one); 0 stops suspicion fences.",
        "cloudha",
        read_by=(_STORM,),
    ),
    _key(
        "cloudha.storm.fence.window",
        "duration",
        300,
        "The window of the fence budget.",
        "cloudha",
        bounds=(1, 86400, "under a second is no window; over a day is no pace"),
        read_by=(_STORM,),
    ),
    _key(
        "cloudha.storm.disruption.threshold",
        "ratio",
        0.5,
        "Above this share of a domain silent, its silence is taken for a network or"
        " observer fault: no suspicion fence there, and an alert (1 turns it off).",
        "cloudha",
        read_by=(_STORM,),
    ),
    # cloudha's own: shadow mode (docs/safety.md, "Shadow mode").
    _key(
        "cloudha.shadow",
        "bool",
        False,
        "Run every check and decision but execute nothing (no fence, stop, start or"
        " self-fence): record what would be done, with shadow: true.",
        "cloudha",
        read_by=(_SERVER, _SIMULATOR, _HEARTBEAT_CLI, _DAEMON),
    ),
    # cloudha's own: several management servers (docs/cluster.md).
    _key(
        "cloudha.ms.takeover.timeout",
        "duration",
        150,
        "How long a management server's heartbeat may stay still before a peer declares it"
        " departed and the group takes over its hosts and HA works (CloudStack's"
        " cluster.heartbeat.threshold). At least twice cloudha.ms.heartbeat.interval.",
        "cloudha",
        bounds=(1, 86_400, "under a second is no heartbeat; over a day strands hosts"),
        read_by=(_CLUSTER, _CAMPAIGN),
    ),
    _key(
        "cloudha.ms.heartbeat.interval",
        "duration",
        5,
        "How often each management server of a group heartbeats in the registry and looks"
        " at its peers (a peer's silence is timed on the observer's own clock).",
        "cloudha",
        bounds=(0.05, 3600, "under 50 ms floods the database; over an hour is no heartbeat"),
        read_by=(_CLUSTER, _SCENARIO, _CAMPAIGN, _RUN_CLI),
    ),
    # cloudha's own: lasting evidence (docs/evidence.md).
    _key(
        "cloudha.evidence.retention",
        "duration",
        30 * 86_400,
        "How long the SQL evidence store keeps a record (by its wall time); older ones are pruned.",
        "cloudha",
        bounds=(
            60,
            3650 * 86_400,
            "under a minute nothing is left to explain; over ten years is an archive, not evidence",
        ),
        read_by=(_EVIDENCE_STORE,),
    ),
    _key(
        "cloudha.evidence.max.records",
        "count",
        1_000_000,
        "Most records the SQL evidence store keeps (the newest); each is under 1 KB.",
        "cloudha",
        bounds=(
            100,
            1_000_000_000,
            "fewer than 100 records do not hold one incident's chain; over 10^9 rows"
            " (about a terabyte) is an archive",
        ),
        read_by=(_EVIDENCE_STORE,),
    ),
    # cloudha's own: adaptive detection (phi accrual) and grace with jitter (docs/detection.md).
    _key(
        "cloudha.ping.grace.multiplier",
        "multiplier",
        1.0,
        "Stretches every host's ping timeout: (ping.interval + jitter) x ping.timeout x this;"
        " 1.0 is CloudStack's timeout.",
        "cloudha",
        bounds=(1.0, 10.0, "below 1 is a smaller ping.timeout; 10 timeouts late is no HA"),
        read_by=(_DEADLINES,),
    ),
    _key(
        "cloudha.ping.jitter",
        "ratio",
        0.0,
        "Largest random epsilon added to ping.interval in each host's timeout, as a fraction of"
        " ping.interval (swarmkit: 0.1); seeded per server and host; 0: one timeout for all.",
        "cloudha",
        read_by=(_DEADLINES,),
    ),
    _key(
        "cloudha.phi.enabled",
        "bool",
        False,
        "Phi accrual detection beside the fixed timeout: a host whose phi reaches"
        " cloudha.phi.threshold is examined before its timeout (never after).",
        "cloudha",
        read_by=(_PHI,),
    ),
    _key(
        "cloudha.phi.threshold",
        "multiplier",
        8.0,
        "Phi at which a host is behind on ping (Akka's and Cassandra's 8: about 1e-8 odds of"
        " a mistake under the model).",
        "cloudha",
        bounds=(1.0, 16.0, "below 1 is a 10 % false-alarm rate; Cassandra allows up to 16"),
        read_by=(_PHI,),
    ),
    _key(
        "cloudha.phi.min.std.deviation",
        "duration",
        6,
        "Floor of the standard deviation of a host's ping intervals (Akka's 100 ms at 1 s"
        " heartbeats, scaled to 60 s pings).",
        "cloudha",
        bounds=(0.1, 3600, "a tighter floor turns milliseconds of delay into alarms"),
        read_by=(_PHI,),
    ),
    _key(
        "cloudha.phi.acceptable.pause",
        "duration",
        30,
        "A pause of a host's pings this long, beyond its mean interval, costs no suspicion.",
        "cloudha",
        bounds=(0.1, 3600, "pings are never exactly on time; an hour of silence is no HA"),
        read_by=(_PHI,),
    ),
    _key(
        "cloudha.phi.window",
        "count",
        100,
        "Ping intervals kept per host for its mean and deviation (100 minutes at 60 s pings).",
        "cloudha",
        bounds=(2, 10_000, "a mean and a deviation need 2; more only costs memory per host"),
        read_by=(_PHI,),
    ),
    # cloudha's own: the escalation ladder and the in-place VM restart (docs/escalation.md).
    _key(
        "cloudha.escalation.enabled",
        "bool",
        True,
        "Take a host in Alert through the escalation levels (restart its agent over SSH first)"
        " at its rechecks, before the fast path; needs an SSH shell to the hosts.",
        "cloudha",
        read_by=(_SERVER,),
    ),
    _key(
        "cloudha.escalation.levels",
        "names",
        ("agent.restart", "fence"),
        "The escalation levels in order: agent.restart, power.cycle (opt-in: it kills the"
        " host's VMs), fence (the existing path; always last).",
        "cloudha",
        read_by=(_ESCALATION,),
    ),
    _key(
        "cloudha.escalation.agent.service",
        "string",
        "cloudstack-agent",
        "The agent's systemd service that agent.restart restarts (systemctl restart <service>).",
        "cloudha",
        read_by=(_ESCALATION, _SIMULATOR),
    ),
    _key(
        "cloudha.escalation.agent.restart.timeout",
        "duration",
        180,
        "Seconds the agent has to reconnect after agent.restart before the next level is taken.",
        "cloudha",
        bounds=(
            10,
            3600,
            "an agent cannot restart and connect in under 10 s; over an hour"
            " in Alert is no recovery",
        ),
        read_by=(_ESCALATION,),
    ),
    _key(
        "cloudha.escalation.power.cycle.timeout",
        "duration",
        60,
        "Limit on power.cycle's BMC RESET and its read-back On together.",
        "cloudha",
        bounds=(1, 600, "a BMC answers within seconds; one slower than 10 minutes is broken"),
        read_by=(_ESCALATION,),
    ),
    _key(
        "cloudha.escalation.repeat.after",
        "duration",
        600,
        "Seconds after a host's ladder ended (still in Alert) until it starts over from the"
        " first level (an agent behind a cut link is restarted once the link is back).",
        "cloudha",
        bounds=(60, 86400, "faster than a minute only hammers SSH; less than daily is no retry"),
        read_by=(_ESCALATION,),
    ),
    _key(
        "cloudha.vm.restart.in.place",
        "bool",
        True,
        "A VM that crashed alone on an Up host is restarted on that host first (its disks,"
        " caches and placement stay), elsewhere only when it has no room.",
        "cloudha",
        read_by=(_MANAGER,),
    ),
    # cloudha's own: polling hosts whose agents do not ping (docs/run.md).
    _key(
        "cloudha.poll.timeout",
        "duration",
        5,
        "Limit on one status probe of a host whose agent does not ping (the agent poller):"
        " a later answer counts as none. Keep it under ping.interval.",
        "cloudha",
        bounds=(0.1, 600, "less fails every probe of a busy host; a slower answer is a hung host"),
        read_by=(_AGENT_POLLER,),
    ),
    _key(
        "cloudha.poll.workers",
        "count",
        16,
        "Status probes of polled hosts run at once; a dead host's probe waits out its"
        " timeout without delaying the others' as long as this many are free.",
        "cloudha",
        bounds=(1, 1024, "one is the least; more threads than this only cost memory"),
        read_by=(_AGENT_POLLER,),
    ),
)

KEYS: Mapping[str, KeySpec] = types.MappingProxyType({spec.name: spec for spec in _SPECS})
"""Every setting by key, in spec order (§2.1, §3.8, §4, §5, §6.1, §7.5, §8), then ``cloudha.*``."""

_BY_ENVIRONMENT: Mapping[str, KeySpec] = types.MappingProxyType(
    {spec.environment_variable: spec for spec in _SPECS}
)

# Extra sentence for a value below a key's minimum, where the reason is not obvious.
_MINIMUM_REASONS: Mapping[str, str] = types.MappingProxyType(
    {
        "ping.timeout": (
            "a host cannot be behind on ping before its next ping is due,"
            " so the timeout must be at least one ping.interval"
        ),
    }
)

# String keys that must not be empty.
_NONEMPTY_STRINGS = frozenset(
    {"outofbandmanagement.ipmitool.path", "outofbandmanagement.ipmitool.interface"}
)

_ENV_TRUE = frozenset({"true", "1", "yes"})
_ENV_FALSE = frozenset({"false", "0", "no"})


# ---------------------------------------------------------------------------
# Validation


def _error(
    key: str,
    value: object,
    problem: str,
    source: str | None,
    *,
    where: str | None = None,
) -> ConfigurationError:
    """Build the error for ``key``: ``"<where>: <key>: <problem>, got <value>"``."""
    shown = where if where is not None else source
    prefix = f"{shown}: " if shown else ""
    return ConfigurationError(
        f"{prefix}{key}: {problem}, got {value!r}", key=key, value=value, source=source
    )


def _suggestion(name: str, candidates: Iterable[str], *, transform: str = "") -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    pool = list(candidates)
    if transform == "dots":
        dotted = name.replace("_", ".")
        if dotted in pool:
            return f" (did you mean {dotted!r}?)"
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(key: object, source: str | None) -> KeySpec:
    if not isinstance(key, str):
        raise _error(str(key), key, "setting names must be strings", source)
    spec = KEYS.get(key)
    if spec is None:
        hint = _suggestion(key, KEYS, transform="dots")
        prefix = f"{source}: " if source else ""
        raise ConfigurationError(
            f"{prefix}unknown setting {key!r}{hint}", key=key, value=None, source=source
        )
    return spec


def _number(spec: KeySpec, raw: object, what: str, source: str | None, where: str | None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _error(spec.name, raw, f"expected {what}", source, where=where)
    if isinstance(raw, float) and not math.isfinite(raw):
        raise _error(spec.name, raw, f"expected {what} (finite)", source, where=where)
    if isinstance(raw, int) and spec.kind not in ("count", "port"):
        try:
            float(raw)
        except OverflowError:
            raise _error(
                spec.name, raw, f"expected {what} (too large)", source, where=where
            ) from None
    return raw


def _whole(spec: KeySpec, raw: object, what: str, source: str | None, where: str | None) -> int:
    number = _number(spec, raw, what, source, where)
    if isinstance(number, float):
        if not number.is_integer():
            raise _error(spec.name, raw, "must be a whole number", source, where=where)
        return int(number)
    return number


def _shown(number: float) -> str:
    """A bound as written: ``3600``, ``0.1``, ``3600000`` (never ``3.6e+06``)."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _out_of_range(
    spec: KeySpec,
    raw: object,
    value: float,
    source: str | None,
    where: str | None,
    *,
    in_key_unit: bool = True,
) -> None:
    """Raise unless ``value`` lies in the key's declared range.

    ``value`` is in the key's own unit, or in seconds for a duration when
    ``in_key_unit`` is false (an attribute value).

    Raises:
        ConfigurationError: naming the key, the value and the allowed range.
    """
    low, high = spec.minimum, spec.maximum
    if low is None or high is None:
        return
    unit = spec.unit if in_key_unit else ("s" if spec.unit else None)
    if spec.unit == "ms" and unit == "s":
        low, high = low / _MS_PER_S, high / _MS_PER_S
    if low <= value <= high:
        return
    words = {"s": " seconds", "ms": " milliseconds", None: ""}[unit]
    if spec.kind == "duration" and value <= 0:
        problem = f"must be a duration > 0{words}"
    elif value < low:
        problem = f"must be >= {_shown(low)}{words}"
    else:
        problem = f"must be <= {_shown(high)}{words}"
    reason = _MINIMUM_REASONS.get(spec.name) if value < low else None
    if reason:
        problem += f" ({reason})"
    problem += f" (allowed range {_shown(low)} to {_shown(high)}{words}: {spec.why})"
    raise _error(spec.name, raw, problem, source, where=where)


def _names(spec: KeySpec, raw: object, source: str | None, where: str | None) -> tuple[str, ...]:
    items: list[str] = []
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list | tuple):
        for item in raw:
            if not isinstance(item, str):
                raise _error(
                    spec.name, raw, f"expected names as strings, not {item!r}", source, where=where
                )
            name = item.strip()
            if not name or "," in name:
                raise _error(
                    spec.name,
                    raw,
                    f"each name must be non-empty and without commas, not {item!r}",
                    source,
                    where=where,
                )
            items.append(name)
    else:
        raise _error(
            spec.name,
            raw,
            "expected a comma-separated string or a list of names",
            source,
            where=where,
        )
    seen: set[str] = set()
    for name in items:
        if name in seen:
            raise _error(spec.name, raw, f"lists {name!r} twice", source, where=where)
        seen.add(name)
    return tuple(items)


def _parse_command_timeouts(text: str) -> dict[str, float]:
    """Parse ``commands.timeout`` (``"Name=seconds,..."``); raise ``ValueError`` if malformed."""
    timeouts: dict[str, float] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, sep, seconds = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"entry {entry.strip()!r} is not 'CommandName=seconds'")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"entry {entry.strip()!r} has no number of seconds") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"entry {entry.strip()!r} needs a timeout > 0 seconds")
        if name in timeouts:
            raise ValueError(f"command {name!r} is given twice")
        timeouts[name] = value
    return timeouts


def _string(spec: KeySpec, raw: object, source: str | None, where: str | None) -> str | None:
    if raw is None and spec.default is None:
        return None
    if not isinstance(raw, str):
        expected = "a string or nothing" if spec.default is None else "a string"
        raise _error(spec.name, raw, f"expected {expected}", source, where=where)
    if spec.default is None and not raw.strip():
        return None
    if spec.name in _NONEMPTY_STRINGS and not raw.strip():
        raise _error(spec.name, raw, "must not be empty", source, where=where)
    if spec.name == "commands.timeout":
        try:
            _parse_command_timeouts(raw)
        except ValueError as exc:
            raise _error(spec.name, raw, str(exc), source, where=where) from None
    return raw


def _check(
    spec: KeySpec,
    raw: object,
    *,
    source: str | None = None,
    where: str | None = None,
    in_key_unit: bool = True,
) -> _Value:
    """Validate ``raw`` for ``spec`` and return the attribute value.

    Args:
        spec: the key.
        raw: the value given.
        source: where it came from, for the error.
        where: how to name the origin in the message, when not ``source``.
        in_key_unit: ``raw`` is in the key's own unit (milliseconds for §6.1
            durations); ``False`` when it is already an attribute value.

    Raises:
        ConfigurationError: naming the key and the value.
    """
    kind = spec.kind
    if kind == "duration":
        unit = spec.unit if in_key_unit else "s"
        unit_word = "milliseconds" if unit == "ms" else "seconds"
        number = _number(spec, raw, f"a number of {unit_word}", source, where)
        _out_of_range(spec, raw, number, source, where, in_key_unit=in_key_unit)
        seconds = float(number)
        return seconds / _MS_PER_S if unit == "ms" else seconds
    if kind in ("count", "port"):
        what = "a port number" if kind == "port" else "a whole number"
        count = _whole(spec, raw, what, source, where)
        _out_of_range(spec, raw, count, source, where)
        return count
    if kind == "ratio":
        ratio = _number(spec, raw, "a ratio between 0 and 1", source, where)
        if not 0.0 <= ratio <= 1.0:
            raise _error(spec.name, raw, "must be a ratio between 0 and 1", source, where=where)
        return float(ratio)
    if kind == "multiplier":
        factor = _number(spec, raw, "a number", source, where)
        _out_of_range(spec, raw, factor, source, where)
        return float(factor)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise _error(spec.name, raw, "expected true or false", source, where=where)
        return raw
    if kind == "string":
        return _string(spec, raw, source, where)
    return _names(spec, raw, source, where)


def _warn_if_unused(spec: KeySpec, source: str | None) -> None:
    """Log a warning naming ``spec``'s key when nothing in cloudha reads it yet."""
    if spec.used:
        return
    prefix = f"{source}: " if source else ""
    log.warning(
        "%ssetting %r is accepted but not used yet: nothing in cloudha reads it, so it has"
        " no effect (docs/settings.md lists the keys that act)",
        prefix,
        spec.name,
    )


def _from_environment_text(spec: KeySpec, text: str, variable: str) -> _Value:
    """Turn an environment variable's text into a value in the key's own unit."""
    where = f"{_ENVIRONMENT_SOURCE} variable {variable}"
    stripped = text.strip()
    kind = spec.kind
    if kind == "bool":
        lowered = stripped.lower()
        if lowered in _ENV_TRUE:
            return True
        if lowered in _ENV_FALSE:
            return False
        raise _error(
            spec.name,
            text,
            "expected true/false, yes/no or 1/0",
            _ENVIRONMENT_SOURCE,
            where=where,
        )
    if kind in ("count", "port"):
        try:
            return int(stripped)
        except ValueError:
            pass
    if kind in ("duration", "ratio", "multiplier", "count", "port"):
        try:
            return float(stripped)
        except ValueError:
            raise _error(
                spec.name, text, "expected a number", _ENVIRONMENT_SOURCE, where=where
            ) from None
    return text


def _seconds_to_ms(seconds: float) -> int | float:
    """Milliseconds that read back (÷ 1000) as exactly ``seconds``; whole when possible."""
    ms = seconds * _MS_PER_S
    if not math.isfinite(ms):
        return ms
    whole = round(ms)
    if whole / _MS_PER_S == seconds:
        return whole
    for candidate in (ms, math.nextafter(ms, math.inf), math.nextafter(ms, -math.inf)):
        if candidate / _MS_PER_S == seconds:
            return candidate
    return ms


def _to_key_unit(spec: KeySpec, value: _Value) -> _Value:
    """An attribute value in the key's own unit (durations whole when they are)."""
    if spec.kind != "duration" or not isinstance(value, float):
        return value
    if spec.unit == "ms":
        return _seconds_to_ms(value)
    return int(value) if value.is_integer() else value


def _flatten(
    table: Mapping[str, object], prefix: str, into: dict[str, object], source: str
) -> None:
    """Flatten nested TOML tables into dotted key names."""
    for name, value in table.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            _flatten(value, dotted, into, source)
            continue
        if dotted in into:
            raise ConfigurationError(
                f"{source}: {dotted}: given more than once", key=dotted, value=value, source=source
            )
        into[dotted] = value


# ---------------------------------------------------------------------------
# Settings


@final
@attrs.frozen
class Settings:
    """Every setting of spec §2.1, §3.8, §4, §5, §6.1, §7.5 and §8, with its value.

    An immutable value: derive changed copies with :meth:`with_overrides`.
    Each attribute is the key with dots as underscores; its kind, input unit,
    default, allowed range, meaning and readers are in :data:`KEYS`.
    Durations are float seconds, whatever unit the key is documented in.

    ``Settings()`` holds CloudStack's defaults. Keyword arguments to the
    constructor are attribute values (durations in seconds) and are validated
    like every other source.
    """

    # §2.1 agent monitoring and disconnect handling.
    ping_interval: float = 60.0
    ping_timeout: float = 2.5
    alert_wait: float = 1800.0
    wait: float = 1800.0
    ready_command_wait: float = 60.0
    commands_timeout: str = ""
    enable_kvm_host_auto_enable_disable: bool = False
    direct_agent_load_size: int = 16
    direct_agent_pool_size: int = 500
    direct_agent_thread_cap: float = 1.0
    direct_agent_scan_interval: float = 90.0
    agent_lb_enabled: bool = False
    agent_load_threshold: float = 0.7
    host_ping_retry_count: int = 0
    host_ping_retry_timer: float = 5.0
    workers: int = 5
    port: int = 8250
    agent_ssl_handshake_timeout: float = 30.0
    agent_max_concurrent_new_connections: int = 0
    agent_connections_monitor_interval: float = 1800.0
    check_txn_before_sending_agent_commands: bool = False
    # §3.8 VM HA work queue.
    ha_workers: int = 5
    time_to_sleep: float = 60.0
    investigate_retry_interval: float = 60.0
    migrate_retry_interval: float = 120.0
    restart_retry_interval: float = 600.0
    stop_retry_interval: float = 600.0
    time_between_cleanup: float = 86400.0
    time_between_failures: float = 3600.0
    max_retries: int = 5
    vm_ha_migration_max_retries: int = 5
    force_ha: bool = False
    vm_ha_enabled: bool = True
    vm_ha_alerts_enabled: bool = True
    kvm_ha_fence_on_storage_heartbeat_failure: bool = False
    ha_tag: str | None = None
    ha_vm_restart_hostup: bool = True
    # §4 and §5 investigator and fence builder registries.
    ha_investigators_order: tuple[str, ...] = _INVESTIGATORS_ORDER
    ha_investigators_exclude: tuple[str, ...] = ()
    ha_fence_builders_exclude: tuple[str, ...] = ("RecreatableFencer",)
    # §6.1 KVM agent properties (given in milliseconds, held in seconds).
    kvm_heartbeat_update_frequency: float = 60.0
    kvm_heartbeat_update_max_tries: int = 5
    kvm_heartbeat_update_retry_sleep: float = 10.0
    heartbeat_update_timeout: float = 60.0
    kvm_heartbeat_checker_timeout: float = 360.0
    reboot_host_and_alert_management_on_heartbeat_timeout: bool = True
    # §7.5 Host-HA executors.
    ha_max_concurrent_health_check_operations: int = 50
    ha_max_pending_health_check_operations: int = 5000
    ha_max_concurrent_activity_check_operations: int = 25
    ha_max_pending_activity_check_operations: int = 2500
    ha_max_concurrent_recovery_operations: int = 25
    ha_max_pending_recovery_operations: int = 2500
    ha_max_concurrent_fence_operations: int = 25
    ha_max_pending_fence_operations: int = 2500
    # §7.5 KVM Host-HA provider.
    kvm_ha_health_check_timeout: float = 10.0
    kvm_ha_activity_check_timeout: float = 60.0
    kvm_ha_activity_check_interval: float = 60.0
    kvm_ha_activity_check_max_attempts: int = 10
    kvm_ha_activity_check_failure_ratio: float = 0.7
    kvm_ha_degraded_max_period: float = 300.0
    kvm_ha_recover_timeout: float = 60.0
    kvm_ha_recover_wait_period: float = 600.0
    kvm_ha_recover_failure_threshold: int = 1
    kvm_ha_fence_timeout: float = 60.0
    # §8 out-of-band management.
    outofbandmanagement_action_timeout: float = 60.0
    outofbandmanagement_sync_poolsize: int = 50
    outofbandmanagement_background_task_execution_interval: float = 4.0
    outofbandmanagement_ipmitool_path: str = "/usr/bin/ipmitool"
    outofbandmanagement_ipmitool_interface: str = "lanplus"
    outofbandmanagement_ipmitool_retries: int = 1
    redfish_ignore_ssl: bool = False
    redfish_use_https: bool = True
    redfish_retries: int = 2
    # cloudha's own: the heartbeat writer's watchdog.
    cloudha_watchdog_timeout: float = 300.0
    cloudha_watchdog_reset_margin: float = 30.0
    # cloudha's own: fence on suspicion.
    cloudha_fence_on_suspicion: bool = True
    # cloudha's own: isolation-aware self-fencing.
    cloudha_isolation_aware: bool = True
    cloudha_isolation_address: str = "gateway"
    cloudha_isolation_agent_window: float = 120.0
    # cloudha's own: freshness.
    cloudha_freshness_enabled: bool = True
    cloudha_freshness_min_ping_share: float = 0.3
    cloudha_freshness_window: int = 2
    cloudha_freshness_resume_intervals: int = 2
    # cloudha's own: storm protection.
    cloudha_storm_domains: tuple[str, ...] = ("cluster", "pod", "zone")
    cloudha_storm_fence_budget: float = 0.1
    cloudha_storm_fence_window: float = 300.0
    cloudha_storm_disruption_threshold: float = 0.5
    # cloudha's own: shadow mode.
    cloudha_shadow: bool = False
    # cloudha's own: several management servers.
    cloudha_ms_takeover_timeout: float = 150.0
    cloudha_ms_heartbeat_interval: float = 5.0
    # cloudha's own: lasting evidence.
    cloudha_evidence_retention: float = 30 * 86_400.0
    cloudha_evidence_max_records: int = 1_000_000
    # cloudha's own: adaptive detection (phi accrual) and grace with jitter.
    cloudha_ping_grace_multiplier: float = 1.0
    cloudha_ping_jitter: float = 0.0
    cloudha_phi_enabled: bool = False
    cloudha_phi_threshold: float = 8.0
    cloudha_phi_min_std_deviation: float = 6.0
    cloudha_phi_acceptable_pause: float = 30.0
    cloudha_phi_window: int = 100
    # cloudha's own: the escalation ladder and the in-place VM restart.
    cloudha_escalation_enabled: bool = True
    cloudha_escalation_levels: tuple[str, ...] = ("agent.restart", "fence")
    cloudha_escalation_agent_service: str = "cloudstack-agent"
    cloudha_escalation_agent_restart_timeout: float = 180.0
    cloudha_escalation_power_cycle_timeout: float = 60.0
    cloudha_escalation_repeat_after: float = 600.0
    cloudha_vm_restart_in_place: bool = True
    # cloudha's own: the agent poller.
    cloudha_poll_timeout: float = 5.0
    cloudha_poll_workers: int = 16

    def __attrs_post_init__(self) -> None:
        for spec in _SPECS:
            current = getattr(self, spec.attribute)
            checked = _check(spec, current, in_key_unit=False)
            if type(checked) is not type(current) or checked != current:
                # NOTE: normalise (int → float seconds, list → tuple, "" → None)
                # so equal settings compare and hash equal.
                object.__setattr__(self, spec.attribute, checked)

    # -- constructors -------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object], *, source: str | None = None) -> Settings:
        """Build settings from CloudStack key names; keys not given keep their default.

        Args:
            mapping: CloudStack key → value in the key's documented unit
                (seconds, or milliseconds for §6.1 KVM agent properties).
                Booleans must be ``bool``, numbers ``int`` or ``float``, name
                lists a comma-separated string or a list of strings.
            source: where the mapping came from, shown in errors.

        Returns:
            The validated settings.

        Raises:
            ConfigurationError: for an unknown key (with the closest known key
                when there is one) or an invalid value (for a value outside
                the key's range, the message gives the range and its reason).

        A key nothing in cloudha reads yet is accepted; a warning naming it is
        logged on the ``cloudha.settings`` logger.
        """
        return cls().with_overrides(mapping, source=source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Settings:
        """Read settings from a TOML file.

        Keys may be quoted dotted names at top level (``"ping.interval" = 60``)
        or nested tables (``[ping]`` / ``interval = 60``), which are flattened
        into dotted names. If the document has a top-level ``settings`` table
        (a simulator scenario), only that table is read.

        Args:
            path: the file.

        Returns:
            The validated settings.

        Raises:
            ConfigurationError: naming the file when it cannot be read or is
                not valid TOML, and naming the file and the key for an unknown
                key or a bad value.
        """
        source = os.fspath(path)
        try:
            with open(source, "rb") as handle:
                document = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: not valid TOML: {exc}", source=source) from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"{source}: not valid UTF-8 text: {exc}", source=source
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"{source}: cannot read settings file: {exc.strerror or exc}", source=source
            ) from None
        table: object = document.get("settings", document)
        if not isinstance(table, dict):
            raise ConfigurationError(
                f"{source}: settings: expected a table, got {table!r}",
                key="settings",
                value=table,
                source=source,
            )
        flat: dict[str, object] = {}
        _flatten(table, "", flat, source)
        return cls.from_mapping(flat, source=source)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        base: Settings | None = None,
    ) -> Settings:
        """Override ``base`` with ``CLOUDHA_*`` environment variables.

        ``CLOUDHA_PING_INTERVAL=30`` sets ``ping.interval`` (seconds);
        ``CLOUDHA_KVM_HEARTBEAT_UPDATE_FREQUENCY=30000`` sets
        ``kvm.heartbeat.update.frequency`` (milliseconds). Booleans read
        true/false, yes/no or 1/0 (any case); name lists are comma-separated;
        an empty value clears ``ha.tag``. Variables in
        :data:`RESERVED_ENVIRONMENT` are not settings and are ignored.

        Args:
            environ: the variables; ``os.environ`` when omitted.
            base: the settings to override; the defaults when omitted.

        Returns:
            The validated settings.

        Raises:
            ConfigurationError: for a ``CLOUDHA_*`` variable that names no
                setting, or a value that does not parse or validate (the
                message names the variable, the key and the value).
        """
        variables = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for variable in sorted(variables):
            if not variable.startswith(_ENVIRONMENT_PREFIX) or variable in RESERVED_ENVIRONMENT:
                continue
            spec = _BY_ENVIRONMENT.get(variable)
            if spec is None:
                hint = _suggestion(variable, _BY_ENVIRONMENT)
                raise ConfigurationError(
                    f"{_ENVIRONMENT_SOURCE}: unknown variable {variable}:"
                    f" it names no setting{hint}",
                    key=variable,
                    value=variables[variable],
                    source=_ENVIRONMENT_SOURCE,
                )
            text = variables[variable]
            raw = _from_environment_text(spec, text, variable)
            where = f"{_ENVIRONMENT_SOURCE} variable {variable}"
            try:
                changes[spec.attribute] = _check(spec, raw, source=_ENVIRONMENT_SOURCE, where=where)
            except ConfigurationError as exc:
                message = str(exc)
                if raw is not text:
                    # Show the variable's text, not the number parsed from it.
                    message = f"{message.rpartition(', got ')[0]}, got {text!r}"
                raise ConfigurationError(
                    message, key=spec.name, value=text, source=_ENVIRONMENT_SOURCE
                ) from None
            _warn_if_unused(spec, f"{_ENVIRONMENT_SOURCE} variable {variable}")
        return attrs.evolve(base if base is not None else cls(), **changes)

    # -- derived copies and views ------------------------------------------

    def with_overrides(
        self, mapping: Mapping[str, object], *, source: str | None = None
    ) -> Settings:
        """Return a copy with the given keys changed.

        Args:
            mapping: CloudStack key → value, as for :meth:`from_mapping`.
            source: where the mapping came from, shown in errors.

        Returns:
            New settings; ``self`` is unchanged.

        Raises:
            ConfigurationError: for an unknown key or an invalid value.
        """
        changes: dict[str, Any] = {}
        for key, raw in mapping.items():
            spec = _lookup(key, source)
            changes[spec.attribute] = _check(spec, raw, source=source)
            _warn_if_unused(spec, source)
        return attrs.evolve(self, **changes)

    def to_mapping(self) -> dict[str, _Value]:
        """Every key → its value in the key's own unit, in :data:`KEYS` order.

        Durations are milliseconds for §6.1 keys and seconds otherwise (an
        ``int`` when whole); name lists are tuples. The result round-trips:
        ``Settings.from_mapping(s.to_mapping()) == s``.
        """
        return {spec.name: _to_key_unit(spec, getattr(self, spec.attribute)) for spec in _SPECS}

    def get(self, key: str) -> _Value:
        """The attribute value of CloudStack key ``key`` (durations in seconds).

        Raises:
            ConfigurationError: if ``key`` is not a known setting.
        """
        value: _Value = getattr(self, _lookup(key, None).attribute)
        return value

    @property
    def behind_on_ping_timeout(self) -> float:
        """Seconds without a ping after which a host is behind on ping.

        ``ping.timeout * ping.interval`` (150.0 by default): CloudStack's
        ``getTimeout()``, without its truncation to whole seconds.
        """
        return self.ping_timeout * self.ping_interval

    @property
    def command_timeouts(self) -> Mapping[str, float]:
        """``commands.timeout`` parsed: command class name → timeout in seconds."""
        return types.MappingProxyType(_parse_command_timeouts(self.commands_timeout))


_SECTIONS = frozenset({_S21, _S38, _S4, _S5, _S61, _S75, _S8, _OWN_SECTION})
_RANGED_KINDS = frozenset({"duration", "count", "multiplier", "port"})


def _check_declaration(spec: KeySpec) -> None:
    """Check one catalogue entry on its own (name, section, range, consumers).

    Raises:
        RuntimeError: naming the key and what is wrong with its declaration.
    """
    own = spec.name.startswith(_OWN_PREFIX)
    if spec.section not in _SECTIONS:
        raise RuntimeError(f"{spec.name}: unknown section {spec.section!r}")
    if own != (spec.section == _OWN_SECTION):
        raise RuntimeError(
            f"{spec.name}: cloudha's own keys, and only they, are named 'cloudha.*'"
            f" and have section {_OWN_SECTION!r}"
        )
    if spec.attribute != spec.name.replace(".", "_"):
        raise RuntimeError(f"{spec.name}: attribute must be {spec.name.replace('.', '_')!r}")
    ranged = spec.kind in _RANGED_KINDS
    if ranged != (spec.minimum is not None and spec.maximum is not None and bool(spec.why)):
        raise RuntimeError(f"{spec.name}: a {spec.kind} key needs a range and its reason")
    low, high = spec.minimum, spec.maximum
    if low is not None and high is not None:
        if not isinstance(spec.default, int | float) or not low <= spec.default <= high:
            raise RuntimeError(f"{spec.name}: the default lies outside the allowed range")
        if spec.kind == "duration" and low <= 0:
            raise RuntimeError(f"{spec.name}: a duration's minimum must be > 0")
    for module in spec.consumers:
        if not module.startswith("cloudha.") or module == __name__:
            raise RuntimeError(f"{spec.name}: consumer {module!r} is not a cloudha module")
    if len(set(spec.consumers)) != len(spec.consumers):
        raise RuntimeError(f"{spec.name}: a consumer is listed twice")


def _self_check() -> None:
    """Check that the catalogue and the class agree (run at import; cheap, no I/O).

    Raises:
        RuntimeError: when an attribute, a default or an environment name is inconsistent.
    """
    fields = attrs.fields_dict(Settings)
    if list(fields) != [spec.attribute for spec in _SPECS]:
        raise RuntimeError("Settings attributes and KEYS disagree")
    for spec in _SPECS:
        if _check(spec, spec.default) != fields[spec.attribute].default:
            raise RuntimeError(f"default of {spec.name} disagrees with Settings.{spec.attribute}")
    for spec in _SPECS:
        _check_declaration(spec)
    if len(_BY_ENVIRONMENT) != len(_SPECS):
        raise RuntimeError("two settings share an environment variable name")
    if not RESERVED_ENVIRONMENT.isdisjoint(_BY_ENVIRONMENT):
        raise RuntimeError("a reserved environment variable names a setting")


_self_check()
