"""Simulator scenarios: the TOML format of docs/simulator.md, validated.

Every mistake is a :class:`~cloudha.errors.ScenarioError` naming the key,
the value and (when it can be found) the line of the file.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cloudha.errors import ConfigurationError, ScenarioError
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.model import HA_PRIORITY_LIMIT, HostType, HypervisorType, ResourceState, VmType
from cloudha.settings import Settings
from cloudha.testing.faults import FAULT_KINDS, FAULTS, Target
from cloudha.tomllines import TomlLines

__all__ = [
    "DEFAULT_SERVERS",
    "EVENT_BUDGET",
    "EVENT_HARD_CAP",
    "FAULT_KINDS",
    "MAX_SCENARIO_BYTES",
    "MAX_SERVERS",
    "MAX_UNTIL",
    "EventEstimate",
    "FaultSpec",
    "HostSpec",
    "Scenario",
    "VmSpec",
    "estimate_events",
    "load_scenario",
    "parse_scenario",
    "parse_scenario_text",
]

_HOST_TARGET = frozenset(f.name for f in FAULTS if f.target is Target.HOST)
_POOL_TARGET = frozenset(f.name for f in FAULTS if f.target is Target.POOL)
_VM_TARGET = frozenset(f.name for f in FAULTS if f.target is Target.VM)
_SERVER_TARGET = frozenset(f.name for f in FAULTS if f.target is Target.MANAGEMENT_SERVER)
_NO_TARGET = frozenset(f.name for f in FAULTS if f.target is Target.NONE)

_TOP_KEYS = frozenset({"settings", "hosts", "vms", "faults", "run"})
_HOST_KEYS = frozenset(
    {
        "id",
        "cluster",
        "pod",
        "zone",
        "hypervisor",
        "type",
        "resource_state",
        "pools",
        "oobm",
        "capacity",
        "ha_provider",
        "watchdog",
        "rack",
    }
)
_VM_KEYS = frozenset({"id", "host", "ha", "type", "priority"})
_FAULT_KEYS = frozenset({"at", "kind", "target"})
_RUN_KEYS = frozenset({"until", "seed", "management_servers"})
DEFAULT_SERVERS = ("ms1",)
"""``[run] management_servers`` when a scenario leaves it out: one server, ``ms1``."""
MAX_SERVERS = 16
"""The most management servers a scenario may run (``[run] management_servers``)."""
_OOBM = frozenset({"ipmi", "redfish", "none"})

MAX_UNTIL = 30 * 86400.0
"""The longest run a scenario may ask for (``run.until``, virtual seconds)."""
EVENT_BUDGET = 500_000
"""A scenario whose estimated event count (:func:`estimate_events`) exceeds this is refused.

The simulator also stops a run that processes more than twice as many
events (:data:`EVENT_HARD_CAP`), in case the estimate was low.
"""
EVENT_HARD_CAP = 2 * EVENT_BUDGET
"""Events one run may process before the simulator stops it with a ScenarioError."""
MAX_SCENARIO_BYTES = 4 * 1024 * 1024
"""A scenario file larger than this is refused unread."""


@attrs.frozen
class HostSpec:
    id: str
    cluster: str
    pod: str = "p1"
    zone: str = "z1"
    hypervisor: HypervisorType = HypervisorType.KVM
    type: HostType = HostType.ROUTING
    resource_state: ResourceState = ResourceState.ENABLED
    pools: tuple[str, ...] = ()
    oobm: str = "none"
    capacity: int | None = None
    ha_provider: bool = False
    watchdog: bool = False
    """The heartbeat writer arms a watchdog (``Host.watchdog``); see :func:`parse_scenario`."""
    rack: str | None = None
    """The host's rack label (``Host.rack``; a storm-protection domain)."""


@attrs.frozen
class VmSpec:
    id: str
    host: str
    ha: bool = False
    type: VmType = VmType.USER
    priority: int = 0


@attrs.frozen
class FaultSpec:
    at: float
    kind: str
    target: str | None
    line: int | None = None


@attrs.frozen
class Scenario:
    settings: Settings
    hosts: tuple[HostSpec, ...]
    vms: tuple[VmSpec, ...]
    faults: tuple[FaultSpec, ...]
    until: float
    seed: int
    source: str = "<scenario>"
    management_servers: tuple[str, ...] = DEFAULT_SERVERS
    """The management server processes sharing the host table and the SQL database
    (``[run] management_servers``); with several they form a group (docs/cluster.md)."""


class _Parser:
    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.lines = TomlLines(text)

    def fail(
        self,
        message: str,
        *,
        table: str = "",
        index: int = 0,
        key: str | None = None,
        value: Any = None,
    ) -> ScenarioError:
        line = self.lines.find(table, index, key)
        where = self.source + (f", line {line}" if line is not None else "")
        return ScenarioError(
            f"{where}: {message}", key=key, value=value, source=self.source, line=line
        )

    def table_list(self, doc: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
        raw = doc.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise self.fail(f"'{name}' must be an array of tables ([[{name}]])", key=name)
        return raw

    def check_keys(
        self, entry: Mapping[str, Any], allowed: frozenset[str], table: str, index: int
    ) -> None:
        for key in entry:
            if key not in allowed:
                raise self.fail(
                    f"unknown key '{key}' in [[{table}]] #{index + 1}"
                    f" (known: {', '.join(sorted(allowed))})",
                    table=table,
                    index=index,
                    key=key,
                    value=entry[key],
                )

    def string(
        self, entry: Mapping[str, Any], key: str, table: str, index: int, default: str | None = None
    ) -> str:
        value = entry.get(key, default)
        if value is None:
            raise self.fail(
                f"[[{table}]] #{index + 1} needs '{key}'", table=table, index=index, key=key
            )
        if not isinstance(value, str) or not value:
            raise self.fail(
                f"'{key}' in [[{table}]] #{index + 1} must be a non-empty string, got {value!r}",
                table=table,
                index=index,
                key=key,
                value=value,
            )
        return value

    def boolean(
        self, entry: Mapping[str, Any], key: str, table: str, index: int, default: bool
    ) -> bool:
        value = entry.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(
                f"'{key}' in [[{table}]] #{index + 1} must be true or false, got {value!r}",
                table=table,
                index=index,
                key=key,
                value=value,
            )
        return value

    def enum(
        self,
        enum_type: Any,
        entry: Mapping[str, Any],
        key: str,
        table: str,
        index: int,
        default: Any,
    ) -> Any:
        if key not in entry:
            return default
        value = entry[key]
        try:
            return enum_type(value)
        except ValueError:
            choices = ", ".join(m.value for m in enum_type)
            raise self.fail(
                f"'{key}' in [[{table}]] #{index + 1} is {value!r}; expected one of {choices}",
                table=table,
                index=index,
                key=key,
                value=value,
            ) from None

    def number(self, value: Any, key: str, table: str, index: int) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(
                f"'{key}' must be a number, got {value!r}",
                table=table,
                index=index,
                key=key,
                value=value,
            )
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(
                f"'{key}' must be a finite number, got {value!r}",
                table=table,
                index=index,
                key=key,
                value=value,
            )
        return number


def _unsourced(exc: ConfigurationError, source: str) -> str:
    """The error's message without its own ``source:`` prefix (the caller adds file and line)."""
    text = str(exc)
    prefix = f"{source}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def parse_scenario(
    doc: Mapping[str, Any], *, source: str = "<scenario>", text: str | None = None
) -> Scenario:
    """Validate a parsed scenario document; ``text`` (the TOML) lets errors name lines.

    A host's ``watchdog`` defaults to true for KVM/LXC hosts with pools
    (cloudha's own writer arms one) and false otherwise; ``watchdog = false``
    models CloudStack's script writer. ``watchdog = true`` on a host that
    writes no heartbeat is an error, and so are ``cloudha.watchdog.*``
    settings that cannot guarantee the reset (``HeartbeatTiming.check_watchdog``).
    """
    p = _Parser(source, text)
    for key in doc:
        if key not in _TOP_KEYS:
            raise p.fail(
                f"unknown top-level key '{key}' (known: {', '.join(sorted(_TOP_KEYS))})", key=key
            )
    raw_settings = doc.get("settings", {})
    if not isinstance(raw_settings, dict):
        raise p.fail("[settings] must be a table", key="settings")
    try:
        settings = Settings.from_mapping(raw_settings, source=source)
    except ConfigurationError as exc:
        line = p.lines.find("settings", 0, exc.key)
        where = source + (f", line {line}" if line is not None else "")
        raise ScenarioError(
            f"{where}: {_unsourced(exc, source)}",
            key=exc.key,
            value=exc.value,
            source=source,
            line=line,
        ) from None

    run = doc.get("run", {})
    if not isinstance(run, dict):
        raise p.fail("[run] must be a table", key="run")
    for key in run:
        if key not in _RUN_KEYS:
            raise p.fail(
                f"unknown key '{key}' in [run] (known: {', '.join(sorted(_RUN_KEYS))})",
                table="run",
                key=key,
            )
    until = p.number(run.get("until", 3600), "until", "run", 0)
    if not 0 < until <= MAX_UNTIL:
        raise p.fail(
            f"'until' must be > 0 and at most {MAX_UNTIL:g} seconds (30 days), got {until!r}",
            table="run",
            key="until",
            value=until,
        )
    seed = run.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise p.fail(
            f"'seed' must be an integer, got {seed!r}", table="run", key="seed", value=seed
        )

    servers = _management_servers(p, run)

    hosts: list[HostSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(p.table_list(doc, "hosts")):
        p.check_keys(entry, _HOST_KEYS, "hosts", i)
        host_id = p.string(entry, "id", "hosts", i)
        if host_id in seen:
            raise p.fail(
                f"host id '{host_id}' is used twice",
                table="hosts",
                index=i,
                key="id",
                value=host_id,
            )
        seen[host_id] = i
        pools = entry.get("pools", [])
        if not isinstance(pools, list) or not all(isinstance(x, str) and x for x in pools):
            raise p.fail(
                "'pools' must be a list of pool ids",
                table="hosts",
                index=i,
                key="pools",
                value=pools,
            )
        oobm = p.string(entry, "oobm", "hosts", i, "none")
        if oobm not in _OOBM:
            raise p.fail(
                f"'oobm' is {oobm!r}; expected one of ipmi, redfish, none",
                table="hosts",
                index=i,
                key="oobm",
                value=oobm,
            )
        capacity = entry.get("capacity")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0
        ):
            raise p.fail(
                f"'capacity' must be a whole number >= 0, got {capacity!r}",
                table="hosts",
                index=i,
                key="capacity",
                value=capacity,
            )
        hosts.append(
            HostSpec(
                id=host_id,
                cluster=p.string(entry, "cluster", "hosts", i, "c1"),
                pod=p.string(entry, "pod", "hosts", i, "p1"),
                zone=p.string(entry, "zone", "hosts", i, "z1"),
                hypervisor=p.enum(
                    HypervisorType, entry, "hypervisor", "hosts", i, HypervisorType.KVM
                ),
                type=p.enum(HostType, entry, "type", "hosts", i, HostType.ROUTING),
                resource_state=p.enum(
                    ResourceState, entry, "resource_state", "hosts", i, ResourceState.ENABLED
                ),
                pools=tuple(pools),
                oobm=oobm,
                capacity=capacity,
                ha_provider=p.boolean(entry, "ha_provider", "hosts", i, False),
                watchdog=_watchdog(p, entry, i, pools),
                rack=p.string(entry, "rack", "hosts", i, None) if "rack" in entry else None,
            )
        )
    if not hosts:
        raise p.fail("a scenario needs at least one [[hosts]] entry", key="hosts")
    if any(h.watchdog for h in hosts):
        try:
            HeartbeatTiming.from_settings(settings).check_watchdog(
                settings.cloudha_watchdog_timeout, settings.cloudha_watchdog_reset_margin
            )
        except ConfigurationError as exc:
            line = p.lines.find("settings", 0, exc.key)
            where = source + (f", line {line}" if line is not None else "")
            raise ScenarioError(
                f"{where}: {_unsourced(exc, source)} (a host has a watchdog)",
                key=exc.key,
                value=exc.value,
                source=source,
                line=line,
            ) from None
    pools_known = {pool for h in hosts for pool in h.pools}

    vms: list[VmSpec] = []
    vm_ids: set[str] = set()
    for i, entry in enumerate(p.table_list(doc, "vms")):
        p.check_keys(entry, _VM_KEYS, "vms", i)
        vm_id = p.string(entry, "id", "vms", i)
        if vm_id in vm_ids:
            raise p.fail(
                f"vm id '{vm_id}' is used twice", table="vms", index=i, key="id", value=vm_id
            )
        vm_ids.add(vm_id)
        host = p.string(entry, "host", "vms", i)
        if host not in seen:
            raise p.fail(
                f"vm '{vm_id}' names unknown host '{host}'",
                table="vms",
                index=i,
                key="host",
                value=host,
            )
        priority = entry.get("priority", 0)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or abs(priority) > HA_PRIORITY_LIMIT
        ):
            raise p.fail(
                f"'priority' must be a whole number between -{HA_PRIORITY_LIMIT} and "
                f"{HA_PRIORITY_LIMIT}, got {priority!r}",
                table="vms",
                index=i,
                key="priority",
                value=priority,
            )
        vms.append(
            VmSpec(
                id=vm_id,
                host=host,
                ha=p.boolean(entry, "ha", "vms", i, False),
                type=p.enum(VmType, entry, "type", "vms", i, VmType.USER),
                priority=priority,
            )
        )

    faults: list[FaultSpec] = []
    for i, entry in enumerate(p.table_list(doc, "faults")):
        p.check_keys(entry, _FAULT_KEYS, "faults", i)
        if "at" not in entry:
            raise p.fail(f"[[faults]] #{i + 1} needs 'at'", table="faults", index=i, key="at")
        at = p.number(entry["at"], "at", "faults", i)
        if not 0 <= at <= until:
            raise p.fail(
                f"fault time {entry['at']!r} is out of range:"
                f" it must be within 0..{until:g} (run.until)",
                table="faults",
                index=i,
                key="at",
                value=entry["at"],
            )
        kind = p.string(entry, "kind", "faults", i)
        if kind not in FAULT_KINDS:
            raise p.fail(
                f"unknown fault kind {kind!r} (known: {', '.join(sorted(FAULT_KINDS))})",
                table="faults",
                index=i,
                key="kind",
                value=kind,
            )
        target = entry.get("target")
        if target is not None and not isinstance(target, str):
            raise p.fail(
                "'target' must be a string", table="faults", index=i, key="target", value=target
            )
        if kind in _HOST_TARGET and target not in seen:
            raise p.fail(
                f"fault {kind} needs 'target' naming a host; {target!r} is not one",
                table="faults",
                index=i,
                key="target",
                value=target,
            )
        if kind in _POOL_TARGET and target not in pools_known:
            raise p.fail(
                f"fault {kind} needs 'target' naming a pool; {target!r} is not one",
                table="faults",
                index=i,
                key="target",
                value=target,
            )
        if kind in _VM_TARGET and target not in vm_ids:
            raise p.fail(
                f"fault {kind} needs 'target' naming a VM; {target!r} is not one",
                table="faults",
                index=i,
                key="target",
                value=target,
            )
        if kind in _SERVER_TARGET and target is not None and target not in servers:
            raise p.fail(
                f"fault {kind}: 'target' {target!r} is not one of [run] management_servers"
                f" ({', '.join(servers)}); leave it out for the first",
                table="faults",
                index=i,
                key="target",
                value=target,
            )
        if kind in _NO_TARGET and target is not None:
            raise p.fail(
                f"fault {kind} takes no 'target'; leave it out",
                table="faults",
                index=i,
                key="target",
                value=target,
            )
        faults.append(FaultSpec(at, kind, target, p.lines.find("faults", i, None)))

    scenario = Scenario(
        settings=settings,
        hosts=tuple(hosts),
        vms=tuple(vms),
        faults=tuple(sorted(faults, key=lambda f: f.at)),
        until=until,
        seed=seed,
        source=source,
        management_servers=servers,
    )
    estimate = estimate_events(scenario)
    if estimate.total > EVENT_BUDGET:
        in_file = estimate.key in raw_settings or estimate.key == "until"
        table = "settings" if estimate.key in raw_settings else "run"
        raise p.fail(
            f"this run would take about {estimate.total:.3g} simulator events, over the budget"
            f" of {EVENT_BUDGET:,}: mostly {estimate.what}; {estimate.advice}",
            table=table,
            key=estimate.key if in_file else "until",
            value=estimate.value,
        )
    return scenario


@attrs.frozen
class EventEstimate:
    """About how many events a run takes, and the term that weighs most."""

    total: float
    key: str
    value: Any
    what: str

    @property
    def advice(self) -> str:
        if self.key == "until":
            return "shorten run.until or use fewer hosts"
        verb = "lower" if self.key == "ha.workers" else "raise"
        return f"{verb} '{self.key}' or shorten run.until"


def estimate_events(scenario: Scenario) -> EventEstimate:
    """An upper-bound estimate of the events :class:`~cloudha.testing.simulator.Simulation` runs.

    Each periodic loop contributes ``run.until / its interval`` events per
    instance: agent pings and PingTask rounds (``ping.interval``, per host),
    the monitor (twice per ``ping.interval``, per management server), heartbeat
    writer rounds (``kvm.heartbeat.update.frequency``, twice per writing host),
    the OOBM sync (per host with a BMC, every
    ``outofbandmanagement.background.task.execution.interval``), idle HA
    workers (``ha.workers`` every ``time.to.sleep``, per server), with several
    servers their group heartbeats (``cloudha.ms.heartbeat.interval``, per
    server), and the faults.
    """
    s = scenario.settings
    until = scenario.until
    hosts = len(scenario.hosts)
    writers = sum(
        1
        for h in scenario.hosts
        if h.hypervisor in (HypervisorType.KVM, HypervisorType.LXC) and h.pools
    )
    bmcs = sum(1 for h in scenario.hosts if h.oobm != "none")
    servers = len(scenario.management_servers)

    def rate(count: float, interval: float) -> float:
        return count * until / max(interval, 1e-300) if count else 0.0

    terms = [
        (
            rate(hosts + 2 * servers, s.ping_interval),
            "ping.interval",
            s.ping_interval,
            "agent pings",
        ),
        (
            rate(2 * writers, s.kvm_heartbeat_update_frequency),
            "kvm.heartbeat.update.frequency",
            s.kvm_heartbeat_update_frequency,
            "heartbeat writer rounds",
        ),
        (
            rate(bmcs, s.outofbandmanagement_background_task_execution_interval),
            "outofbandmanagement.background.task.execution.interval",
            s.outofbandmanagement_background_task_execution_interval,
            "BMC power-state syncs",
        ),
        (
            rate(s.ha_workers * servers, s.time_to_sleep),
            "ha.workers",
            s.ha_workers,
            "idle HA workers",
        ),
        (
            rate(servers if servers > 1 else 0, s.cloudha_ms_heartbeat_interval),
            "cloudha.ms.heartbeat.interval",
            s.cloudha_ms_heartbeat_interval,
            "management server heartbeats",
        ),
    ]
    total = sum(t[0] for t in terms) + len(scenario.faults)
    rate_value, key, value, what = max(terms, key=lambda t: t[0])
    if key == "ha.workers" and s.ha_workers * servers <= 1000:
        key, value = "time.to.sleep", s.time_to_sleep
    if rate_value <= EVENT_BUDGET / 4:
        key, value, what = "until", until, "a long run"
    return EventEstimate(total, key, value, f"{what} ({rate_value:.3g} events)")


def _management_servers(p: _Parser, run: Mapping[str, Any]) -> tuple[str, ...]:
    """``[run] management_servers``: a non-empty list of distinct non-empty server ids."""
    if "management_servers" not in run:
        return DEFAULT_SERVERS
    value = run["management_servers"]
    key = "management_servers"
    if not isinstance(value, list) or not value:
        raise p.fail(
            f"'{key}' must be a non-empty list of server ids, got {value!r}",
            table="run",
            key=key,
            value=value,
        )
    if len(value) > MAX_SERVERS:
        raise p.fail(
            f"'{key}' lists {len(value)} servers; at most {MAX_SERVERS}",
            table="run",
            key=key,
            value=len(value),
        )
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise p.fail(
                f"'{key}' must list server ids (non-empty strings), got {item!r}",
                table="run",
                key=key,
                value=item,
            )
        if item in seen:
            raise p.fail(f"'{key}' names server {item!r} twice", table="run", key=key, value=item)
        seen.add(item)
    return tuple(value)


def _watchdog(p: _Parser, entry: Mapping[str, Any], index: int, pools: list[str]) -> bool:
    """A host's ``watchdog``: true by default where a heartbeat writer runs (KVM/LXC with pools)."""
    hypervisor = entry.get("hypervisor", HypervisorType.KVM.value)
    writes = hypervisor in (HypervisorType.KVM.value, HypervisorType.LXC.value) and bool(pools)
    watchdog = p.boolean(entry, "watchdog", "hosts", index, writes)
    if watchdog and not writes:
        raise p.fail(
            f"'watchdog' is true in [[hosts]] #{index + 1} but the host writes no storage"
            " heartbeat (only a KVM or LXC host with pools does)",
            table="hosts",
            index=index,
            key="watchdog",
            value=watchdog,
        )
    return watchdog


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    source = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(
            f"{source}: cannot read scenario: {exc.strerror or exc}", source=source
        ) from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            f"{source}: scenario is larger than {MAX_SCENARIO_BYTES:,} bytes", source=source
        )
    return parse_scenario_text(data, source=source)


def parse_scenario_text(data: bytes | str, *, source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as TOML text (bytes must be UTF-8)."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise ScenarioError(
                f"{source}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}"
                f" at column {column}); a scenario is a TOML text file",
                source=source,
                line=line,
            ) from None
    else:
        text = data
    if "\x00" in text:
        nul_line = text.count("\n", 0, text.index("\x00")) + 1
        raise ScenarioError(
            f"{source}, line {nul_line}: a NUL byte; a scenario is a TOML text file, not binary",
            source=source,
            line=nul_line,
        )
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "syntax error"
        found = _AT_LINE.search(message)
        toml_line = int(found.group(1)) if found else None
        where = source + (f", line {toml_line}" if toml_line is not None else "")
        raise ScenarioError(
            f"{where}: not valid TOML: {message}", source=source, line=toml_line
        ) from None
    except RecursionError:
        raise ScenarioError(f"{source}: not valid TOML: nested too deeply", source=source) from None
    return parse_scenario(doc, source=source, text=text)


_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")
