"""The fault campaign: many random scenarios, their invariants, shrunk reproducers.

:func:`run_campaign` generates ``n`` random scenarios from one seed (each
run's seed derived from it, so a run can be replayed alone), runs them in
parallel processes, and shrinks each scenario that violates an invariant to
a small reproducer (fewer faults, then hosts, then VMs, while the same
invariant still fails), written as TOML. The result does not depend on the
number of processes.

:func:`run_fuzz` feeds malformed scenario files to ``cloudha simulate`` and
checks that each ends within a time limit, either normally or with exit
status 2 and one line on stderr.

docs/reliability.md describes both; the fault kinds come from
:mod:`cloudha.testing.faults`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cloudha.testing.faults import FAULTS, Target, by_name

__all__ = [
    "PROFILES",
    "Case",
    "Incident",
    "case_seed",
    "dump_toml",
    "fuzz_input",
    "generate",
    "run_campaign",
    "run_fuzz",
    "shrink",
]

Runner = Callable[[Mapping[str, Any]], Mapping[str, int]]
"""Runs one scenario mapping and returns its ``invariants``."""

SIMULATOR_ERROR = "simulator_error"
"""The pseudo-invariant of a run that raised instead of finishing."""

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {
        "ping.interval": 10,
        "alert.wait": 300,
        "kvm.heartbeat.update.frequency": 10000,
        "kvm.heartbeat.update.retry.sleep": 2000,
        "heartbeat.update.timeout": 10000,
        # timeout + margin (50 s) below the heartbeat's stale bound (78 s) in this profile
        "cloudha.watchdog.timeout": 40,
        "cloudha.watchdog.reset.margin": 10,
        "time.to.sleep": 10,
        "investigate.retry.interval": 10,
        "restart.retry.interval": 60,
        "migrate.retry.interval": 30,
        "stop.retry.interval": 60,
    },
}
"""Settings profiles a generated scenario uses (in their keys' own units)."""

_FAULT_WINDOW = {"default": 1500.0, "fast": 400.0}
"""Faults start and heal within this many seconds of the start, per profile."""


_SYSTEM_VMS = ("DomainRouter", "ConsoleProxy", "SecondaryStorageVm")


@attrs.frozen
class Incident:
    """A fault and the heal that undoes it."""

    kind: str
    target: str | None
    at: float
    heal_at: float


@attrs.frozen
class Case:
    """A generated scenario in a form the shrinker can cut (see :meth:`to_doc`)."""

    seed: int
    settings: Mapping[str, Any]
    hosts: tuple[Mapping[str, Any], ...]
    vms: tuple[Mapping[str, Any], ...]
    incidents: tuple[Incident, ...]
    until: float
    servers: tuple[str, ...] = ()
    """``[run] management_servers`` of a group scenario (empty: one server, the default)."""

    def to_doc(self) -> dict[str, Any]:
        """The scenario mapping (what a TOML file parses to)."""
        faults: list[dict[str, Any]] = []
        for incident in self.incidents:
            fault = by_name(incident.kind)
            assert fault.heal is not None
            for at, kind in ((incident.at, incident.kind), (incident.heal_at, fault.heal)):
                entry: dict[str, Any] = {"at": at, "kind": kind}
                if incident.target is not None:
                    entry["target"] = incident.target
                faults.append(entry)
        faults.sort(key=lambda f: f["at"])
        run: dict[str, Any] = {"until": self.until, "seed": self.seed}
        if self.servers:
            run["management_servers"] = list(self.servers)
        return {
            "settings": dict(self.settings),
            "hosts": [dict(h) for h in self.hosts],
            "vms": [dict(v) for v in self.vms],
            "faults": faults,
            "run": run,
        }

    def without_incident(self, index: int) -> Case:
        return attrs.evolve(self, incidents=self.incidents[:index] + self.incidents[index + 1 :])

    def without_vm(self, index: int) -> Case:
        return attrs.evolve(self, vms=self.vms[:index] + self.vms[index + 1 :])

    def without_host(self, host_id: str) -> Case | None:
        """This case without ``host_id``, its VMs and the faults that target it or its pools."""
        hosts = tuple(h for h in self.hosts if h["id"] != host_id)
        if not hosts:
            return None
        pools = {p for h in hosts for p in h.get("pools", ())}
        kept = {h["id"] for h in hosts}
        incidents = tuple(
            i
            for i in self.incidents
            if (by_name(i.kind).target is Target.HOST and i.target in kept)
            or (by_name(i.kind).target is Target.POOL and i.target in pools)
            or by_name(i.kind).target in (Target.MANAGEMENT_SERVER, Target.NONE)
        )
        vms = tuple(v for v in self.vms if v["host"] in kept)
        return attrs.evolve(self, hosts=hosts, vms=vms, incidents=incidents)


def case_seed(campaign_seed: int, index: int) -> int:
    """The seed of run ``index`` of the campaign ``campaign_seed`` (stable across processes)."""
    digest = hashlib.sha256(f"cloudha-campaign:{campaign_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _settle(settings: Mapping[str, Any]) -> float:
    """Seconds after the last heal that recovery needs, for these settings (generous)."""
    from cloudha.settings import Settings

    s = Settings.from_mapping(settings)
    return (
        60.0  # boot
        + s.ping_interval * s.ping_timeout  # behind on ping
        + s.alert_wait  # a host in Alert is given up on after alert.wait
        + s.kvm_heartbeat_update_frequency * 2  # a stale heartbeat
        + s.investigate_retry_interval
        + s.restart_retry_interval * 2  # a restart that failed during the faults, retried
        + s.time_to_sleep
        + 120.0
    )


GROUP_SHARE = 0.3
"""About this share of generated scenarios run a group of 2-3 management servers."""


def generate(seed: int) -> Case:
    """A random scenario: 3-30 hosts in 1-3 clusters, VMs, every simulated fault kind healed.

    About :data:`GROUP_SHARE` of them run 2-3 management servers (a stream of
    their own: the other scenarios stay what they were before groups were
    simulated), their management server faults aimed at random servers, with
    one to three more of those, a pause past the takeover timeout among them.
    """
    rng = random.Random(seed)
    host_ha = random.Random(f"host-ha-{seed}")
    with_host_ha = host_ha.random() < 0.3
    profile = rng.choice(sorted(PROFILES))
    settings: dict[str, Any] = dict(PROFILES[profile])
    if rng.random() < 0.25:
        settings["reboot.host.and.alert.management.on.heartbeat.timeout"] = False
    n_hosts = rng.randint(3, 30)
    n_clusters = rng.randint(1, min(3, n_hosts))
    clusters = []
    for c in range(n_clusters):
        hypervisor = "KVM" if rng.random() < 0.85 else "XenServer"
        pools = [f"c{c + 1}p{p + 1}" for p in range(rng.randint(1, 2))]
        clusters.append((f"c{c + 1}", hypervisor, pools))
    hosts: list[dict[str, Any]] = []
    for i in range(n_hosts):
        cluster, hypervisor, pools = clusters[i % n_clusters]
        host: dict[str, Any] = {"id": f"h{i + 1}", "cluster": cluster, "hypervisor": hypervisor}
        host["pools"] = list(pools) if rng.random() < 0.95 else []
        host["oobm"] = rng.choice(("ipmi", "redfish", "none"))
        if rng.random() < 0.6:
            host["capacity"] = rng.randint(2, 10)
        if rng.random() < 0.08:
            host["resource_state"] = rng.choice(("Disabled", "Maintenance"))
        if hypervisor == "KVM" and host["pools"]:
            host["watchdog"] = rng.random() < 0.7
            # Host-HA on half the hosts of about a third of the scenarios (its poll is
            # the simulator's busiest loop), from a stream of its own: the rest of a
            # seed's scenario stays what it was before Host-HA was simulated.
            if with_host_ha and host_ha.random() < 0.5:
                host["ha_provider"] = True
        hosts.append(host)
    vms: list[dict[str, Any]] = []
    for host in hosts:
        if host.get("resource_state", "Enabled") != "Enabled":
            continue
        room = host.get("capacity", 6)
        for _ in range(rng.randint(0, min(room, 4))):
            vm: dict[str, Any] = {"id": f"vm{len(vms) + 1}", "host": host["id"]}
            vm["ha"] = rng.random() < 0.6
            if rng.random() < 0.1:
                vm["type"] = rng.choice(_SYSTEM_VMS)
            if rng.random() < 0.2:
                vm["priority"] = rng.randint(-5, 5)
            vms.append(vm)
    window = _FAULT_WINDOW[profile]
    kinds = [
        f for f in FAULTS if not f.is_heal and f.simulated and not f.own_stream and not f.one_shot
    ]
    pool_ids = sorted({p for h in hosts for p in h["pools"]})
    incidents: list[Incident] = []
    for _ in range(rng.randint(1, 8)):
        fault = rng.choice(kinds)
        target: str | None
        if fault.target is Target.HOST:
            target = rng.choice(hosts)["id"]
        elif fault.target is Target.POOL:
            if not pool_ids:
                continue
            target = rng.choice(pool_ids)
        else:
            target = None
        at = round(rng.uniform(30.0, window * 0.8), 1)
        heal_at = round(rng.uniform(at + 5.0, window), 1)
        incidents.append(Incident(fault.name, target, at, heal_at))
    for kind in FAULTS:
        # Kinds added later come from streams of their own: older seeds keep their faults.
        if kind.is_heal or not kind.simulated or not kind.own_stream:
            continue
        extra = random.Random(f"{kind.name}-{seed}")
        if extra.random() < 0.15:
            at = round(extra.uniform(30.0, window * 0.8), 1)
            heal_at = round(extra.uniform(at + 5.0, window), 1)
            target = extra.choice(hosts)["id"] if kind.target is Target.HOST else None
            incidents.append(Incident(kind.name, target, at, heal_at))
    servers: tuple[str, ...] = ()
    group = random.Random(f"ms-group-{seed}")
    if group.random() < GROUP_SHARE:
        servers, incidents = _group(group, settings, incidents, window)
    last = max((i.heal_at for i in incidents), default=0.0)
    settle = _settle(settings)
    if servers:
        settle += _group_settle(settings)
    until = float(math.ceil(last + settle))
    return Case(seed, settings, tuple(hosts), tuple(vms), tuple(incidents), until, servers)


_SERVER_FAULTS = tuple(
    f.name for f in FAULTS if f.target is Target.MANAGEMENT_SERVER and not f.is_heal and f.simulated
)


def _group(
    rng: random.Random, settings: Mapping[str, Any], incidents: list[Incident], window: float
) -> tuple[tuple[str, ...], list[Incident]]:
    """A group's servers, and ``incidents`` with its management server faults aimed at them."""
    from cloudha.settings import Settings

    servers = tuple(f"ms{i + 1}" for i in range(rng.randint(2, 3)))
    aimed = [
        attrs.evolve(i, target=rng.choice(servers))
        if by_name(i.kind).target is Target.MANAGEMENT_SERVER
        else i
        for i in incidents
    ]
    timeout = Settings.from_mapping(settings).cloudha_ms_takeover_timeout
    for n in range(rng.randint(1, 3)):
        kind = "ms_pause" if n == 0 else rng.choice(_SERVER_FAULTS)
        at = round(rng.uniform(30.0, window * 0.8), 1)
        if kind == "ms_pause" and (n == 0 or rng.random() < 0.5):
            length = timeout + rng.uniform(10.0, 200.0)  # past the takeover timeout
        else:
            length = rng.uniform(5.0, timeout * 1.5)
        aimed.append(Incident(kind, rng.choice(servers), at, round(at + length, 1)))
    return servers, aimed


def _group_settle(settings: Mapping[str, Any]) -> float:
    """What a group needs on top of :func:`_settle`: a takeover and the claims after it."""
    from cloudha.settings import Settings

    s = Settings.from_mapping(settings)
    return (
        s.cloudha_ms_takeover_timeout
        + 2 * s.cloudha_ms_heartbeat_interval
        + s.direct_agent_scan_interval
    )


# -- running ----------------------------------------------------------------------


def simulate_invariants(doc: Mapping[str, Any]) -> dict[str, int]:
    """Run a scenario mapping; its invariants, or ``simulator_error`` if it raised."""
    from cloudha.testing.scenario import parse_scenario
    from cloudha.testing.simulator import simulate

    try:
        document = simulate(parse_scenario(doc, source="<campaign>"))
    except Exception:
        return {SIMULATOR_ERROR: 1}
    return dict(document["invariants"])


def _violated(invariants: Mapping[str, int]) -> list[str]:
    return sorted(k for k, v in invariants.items() if v)


SHRINK_RUNS = 400
"""At most this many simulations are spent shrinking one violation."""


def shrink(
    case: Case, invariant: str, runner: Runner = simulate_invariants, *, budget: int = SHRINK_RUNS
) -> Case:
    """A smaller case that still violates ``invariant``: faults, then hosts, then VMs dropped.

    Greedy: each element is tried once per pass, and a removal is kept when
    the invariant still fails; passes repeat until nothing more goes, or
    ``budget`` candidate runs have been spent (then the smallest so far).
    """
    spent = 0

    def fails(candidate: Case) -> bool:
        nonlocal spent
        if spent >= budget:
            return False
        spent += 1
        return runner(candidate.to_doc()).get(invariant, 0) > 0

    changed = True
    while changed:
        changed = False
        i = len(case.incidents) - 1
        while i >= 0:
            candidate = case.without_incident(i)
            if fails(candidate):
                case, changed = candidate, True
            i -= 1
        for host in [h["id"] for h in reversed(case.hosts)]:
            smaller = case.without_host(host)
            if smaller is not None and fails(smaller):
                case, changed = smaller, True
        i = len(case.vms) - 1
        while i >= 0:
            candidate = case.without_vm(i)
            if fails(candidate):
                case, changed = candidate, True
            i -= 1
    return case


@attrs.frozen
class _Outcome:
    index: int
    seed: int
    violations: tuple[tuple[str, str], ...]  # (invariant, shrunk TOML)


def _run_case(index: int, campaign_seed: int, runner: Runner | None, shrinking: bool) -> _Outcome:
    seed = case_seed(campaign_seed, index)
    case = generate(seed)
    run = runner or simulate_invariants
    found = _violated(run(case.to_doc()))
    shrunk = []
    for invariant in found:
        small = case
        if shrinking and invariant != SIMULATOR_ERROR:
            small = shrink(case, invariant, run)
        shrunk.append((invariant, dump_toml(small.to_doc(), comment=_comment(seed, invariant))))
    return _Outcome(index, seed, tuple(shrunk))


def _comment(seed: int, invariant: str) -> str:
    return (
        f"Reproducer of a fault-campaign run (case seed {seed}): {invariant}.\n"
        f"Replay: cloudha simulate THIS.toml --check"
    )


def _quiet() -> None:
    logging.disable(logging.CRITICAL)


def _map(
    function: Callable[..., Any], items: Sequence[Any], jobs: int | None, *args: Any
) -> Iterator[Any]:
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(items) <= 1:
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # thousands of runs: their logs are noise
        try:
            for item in items:
                yield function(item, *args)
        finally:
            logging.disable(previous)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=_quiet) as pool:
        futures = [pool.submit(function, item, *args) for item in items]
        for future in futures:
            yield future.result()


def run_campaign(
    n: int,
    seed: int,
    *,
    jobs: int | None = None,
    out: str | Path | None = None,
    runner: Runner | None = None,
    shrinking: bool = True,
) -> dict[str, Any]:
    """Run ``n`` generated scenarios from ``seed`` on ``jobs`` processes (default: every CPU).

    Returns ``{"runs", "seed", "violations": [{"seed", "invariant", "scenario"}],
    "by_invariant"}``: one violation per run and invariant, in run order, its
    ``scenario`` the shrunk reproducer's TOML text, or its file path when
    ``out`` names a directory to write them to (``<seed>-<invariant>.toml``).
    ``runner`` replaces the simulator (it must be picklable when ``jobs`` > 1);
    ``shrinking=False`` keeps each violating scenario whole (faster).
    """
    if n < 0:
        raise ValueError("the number of runs must be >= 0")
    directory = Path(out) if out is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    violations: list[dict[str, Any]] = []
    by_invariant: dict[str, int] = {}
    for outcome in _map(_run_case, list(range(n)), jobs, seed, runner, shrinking):
        for invariant, text in outcome.violations:
            scenario: str = text
            if directory is not None:
                path = directory / f"{outcome.seed}-{invariant}.toml"
                path.write_text(text, encoding="utf-8")
                scenario = str(path)
            violations.append({"seed": outcome.seed, "invariant": invariant, "scenario": scenario})
            by_invariant[invariant] = by_invariant.get(invariant, 0) + 1
    return {
        "runs": n,
        "seed": seed,
        "violations": violations,
        "by_invariant": dict(sorted(by_invariant.items())),
    }


# -- TOML ---------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r} here")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(doc: Mapping[str, Any], *, comment: str | None = None) -> str:
    """A scenario mapping as TOML: scalar and list values, tables and arrays of tables.

    This is the subset scenarios use (no nested tables inside tables);
    ``tomllib.loads(dump_toml(doc)) == doc`` for every such mapping.
    """
    lines: list[str] = [f"# {line}" if line else "#" for line in (comment or "").splitlines()]
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict | list) or _is_plain(v)}
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in doc.items():
        if key in scalars:
            continue
        if isinstance(value, dict):
            lines += ["", f"[{_toml_key(key)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            for entry in value:
                lines += ["", f"[[{_toml_key(key)}]]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_plain(value: Any) -> bool:
    return isinstance(value, list) and not any(isinstance(v, dict) for v in value)


# -- fuzzing ---------------------------------------------------------------------------

_EXTREMES = (
    "1e-9",
    "0",
    "-1",
    "1e12",
    "1e308",
    "-1e308",
    "inf",
    "-inf",
    "nan",
    "99999999999999999999",
    "-0.0",
    '"60"',
    "true",
    "[]",
    "{}",
    '"\\u0000"',
)
_UNKNOWN_NAMES = ("Nope", "h404", "pool9", "meteor_strike", "KVMInvestigatorX", "", "💥")
_NUMERIC_SETTINGS = (
    "ping.interval",
    "ping.timeout",
    "alert.wait",
    "time.to.sleep",
    "ha.workers",
    "kvm.heartbeat.update.frequency",
    "outofbandmanagement.background.task.execution.interval",
    "restart.retry.interval",
    "vm.ha.migration.max.retries",
)
_NAME_SETTINGS = ("ha.investigators.order", "ha.investigators.exclude", "ha.fence.builders.exclude")


def fuzz_input(seed: int) -> bytes:
    """One malformed (or merely odd) scenario file, from ``seed``."""
    return _fuzz_input(seed)[0]


def _fuzz_input(seed: int) -> tuple[bytes, bool]:
    """A fuzz input and whether it must be refused (it names something unknown)."""
    rng = random.Random(seed)
    small = generate(seed)
    for host in [h["id"] for h in small.hosts[3:]]:
        small = small.without_host(host) or small
    text = dump_toml(small.to_doc())
    how = rng.randrange(7)
    if how == 0:  # binary junk
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))), False
    if how == 1:  # bytes of a good file flipped, cut or duplicated
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = data[rng.randrange(len(data)) :][: rng.randint(1, 40)]
        return bytes(data), False
    if how == 2:  # an extreme number for a setting
        key = rng.choice(_NUMERIC_SETTINGS)
        return _with_setting(text, key, rng.choice(_EXTREMES)).encode(), False
    if how == 3:  # an extreme number in the run or a fault
        value = rng.choice(_EXTREMES)
        if rng.random() < 0.5:
            return re.sub(r"until = [^\n]+", lambda _: f"until = {value}", text).encode(), False
        return re.sub(r"at = [^\n]+", lambda _: f"at = {value}", text, count=1).encode(), False
    if how == 4:  # unknown names: these must be refused
        name = json.dumps(rng.choice(_UNKNOWN_NAMES))
        choice = rng.randrange(4)
        changed = text
        if choice == 0:
            changed = re.sub(r'kind = "[^"]+"', lambda _: f"kind = {name}", text, count=1)
        elif choice == 1:
            changed = re.sub(r'host = "[^"]+"', lambda _: f"host = {name}", text, count=1)
        elif choice == 3:
            changed = _with_setting(text, rng.choice(_NAME_SETTINGS), f"[{name}]")
        if changed == text:
            changed = _with_setting(text, f"no.such.{rng.randrange(99)}", "1")
        return changed.encode(), True
    if how == 5:  # a wrong type somewhere
        lines = text.splitlines()
        spots = [i for i, line in enumerate(lines) if " = " in line and not line.startswith("#")]
        i = rng.choice(spots)
        key = lines[i].split(" = ", 1)[0]
        lines[i] = f"{key} = {rng.choice(_EXTREMES)}"
        return ("\n".join(lines) + "\n").encode(), False
    # invalid UTF-8 inside a good file
    data = bytearray(text.encode())
    data[rng.randrange(len(data)) : 0] = rng.choice((b"\xff", b"\xc3(", b"\xed\xa0\x80"))
    return bytes(data), False


def _with_setting(text: str, key: str, value: str) -> str:
    line = f"{json.dumps(key)} = {value}"
    if "[settings]\n" in text:
        return text.replace("[settings]\n", f"[settings]\n{line}\n", 1)
    return f"[settings]\n{line}\n\n" + text


class _Timeout(BaseException):
    """A fuzz case ran out of time (a BaseException: library code must not swallow it)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _fuzz_case(index: int, campaign_seed: int, timeout: float) -> tuple[int, str | None, bytes]:
    from click.testing import CliRunner

    from cloudha.cli import main

    seed = case_seed(campaign_seed, index)
    data, must_fail = _fuzz_input(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz-{seed}.toml"
        path.write_bytes(data)
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = CliRunner().invoke(main, ["simulate", str(path), "--json"])
        except _Timeout:
            return seed, "fuzz_hang", data
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, _Timeout):
        return seed, "fuzz_hang", data
    verdict = _fuzz_verdict(result.exit_code, result.stdout, result.stderr)
    if verdict is None and must_fail and result.exit_code != 2:
        verdict = "fuzz_unknown_name_accepted"
    return seed, verdict, data


def _fuzz_verdict(exit_code: int, stdout: str, stderr: str) -> str | None:
    """None when the command behaved: a normal run, or exit 2 with one line on stderr."""
    if "Traceback" in stdout + stderr:
        return "fuzz_traceback"
    if exit_code == 2:
        lines = stderr.strip("\n").splitlines()
        return (
            None if len(lines) == 1 and lines[0].strip() and stdout == "" else "fuzz_not_one_line"
        )
    if exit_code in (0, 1):
        try:
            json.loads(stdout)
        except ValueError:
            return "fuzz_bad_output"
        return None
    return "fuzz_traceback"


def run_fuzz(
    n: int,
    seed: int,
    *,
    jobs: int | None = None,
    out: str | Path | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Feed ``n`` malformed scenario files to ``cloudha simulate --json``, in-process.

    Each case must end within ``timeout`` seconds, either normally (exit 0
    or 1 with a JSON document) or with exit status 2 and one line on stderr.
    Returns the shape of :func:`run_campaign`; a failing input's
    ``scenario`` is its text (undecodable bytes escaped) or its path in ``out``.
    """
    directory = Path(out) if out is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    violations: list[dict[str, Any]] = []
    by_invariant: dict[str, int] = {}
    for case_seed_, verdict, data in _map(_fuzz_case, list(range(n)), jobs, seed, timeout):
        if verdict is None:
            continue
        scenario = data.decode("utf-8", "backslashreplace")
        if directory is not None:
            path = directory / f"{case_seed_}-{verdict}.toml"
            path.write_bytes(data)
            scenario = str(path)
        violations.append({"seed": case_seed_, "invariant": verdict, "scenario": scenario})
        by_invariant[verdict] = by_invariant.get(verdict, 0) + 1
    return {
        "runs": n,
        "seed": seed,
        "violations": violations,
        "by_invariant": dict(sorted(by_invariant.items())),
    }
