"""``cloudha heartbeat``: write and read the KVM storage heartbeat on this host (spec §6).

Conventions: ``check`` and ``activity`` exit 0 whenever a report was
produced, whatever its verdict, and print it as one human line (plus one
line per pool) or, with ``--json``, as the report's ``to_dict()`` JSON alone
on stdout. Bad input (an address that is not an IP, a relative mount
point, an unreadable settings file) is one ``Error:`` line on stderr naming
the option, and exit status 2.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from cloudha.clock import SystemClock
from cloudha.errors import ConfigurationError
from cloudha.heartbeat import (
    FileIsolationProbe,
    HeartbeatChecker,
    HeartbeatTiming,
    HeartbeatWriter,
    LinuxWatchdog,
    LocalStorage,
    Sleep,
    Write,
    check_vm_activity,
    normalize_host_ip,
    writer_plan,
)
from cloudha.model import Pool
from cloudha.settings import Settings

__all__ = ["heartbeat"]

log = logging.getLogger("cloudha.heartbeat")

_OPTIONS = {
    "host_ip": "--host-ip",
    "mount_point": "--mount",
    "volume": "--volume",
    "suspect_time": "--suspect-time",
}

_T = TypeVar("_T")


class BadInput(click.ClickException):
    """One ``Error: ...`` line on stderr, exit status 2 (like click's usage errors)."""

    exit_code = 2


def _guard(option: str | None, call: Callable[[], _T]) -> _T:
    """Run ``call``; turn a ConfigurationError into :class:`BadInput` naming the option."""
    try:
        return call()
    except ConfigurationError as exc:
        name = option or _OPTIONS.get(exc.key or "", "")
        prefix = f"Invalid value for {name!r}: " if name else ""
        raise BadInput(f"{prefix}{exc}") from None


def _host_ip(value: str) -> str:
    return _guard("--host-ip", lambda: normalize_host_ip(value))


def _pools(mounts: Sequence[str]) -> list[Pool]:
    pools = []
    for mount in mounts:
        if "\0" in mount or not Path(mount).is_absolute():
            raise BadInput(f"Invalid value for '--mount': not an absolute path: {mount!r}")
        pools.append(Pool(id=mount, mount_point=mount))
    return pools


def _settings(path: Path | None) -> Settings:
    if path is not None:
        return _guard("--settings", lambda: Settings.from_toml(path))
    return _guard(None, Settings.from_env)


def _timing(settings: Settings) -> HeartbeatTiming:
    return _guard("--settings", lambda: HeartbeatTiming.from_settings(settings))


def _print(document: dict[str, Any], line: str, details: Sequence[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document, sort_keys=True))
        return
    click.echo(line)
    for detail in details:
        click.echo(f"  {detail}")


_settings_option = click.option(
    "--settings",
    "settings_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A TOML settings file (default: CLOUDHA_* environment variables).",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the report's JSON alone on stdout."
)


@click.group()
def heartbeat() -> None:
    """Write or read the KVM storage heartbeat (<mount>/KVMHA/hb-<ip>)."""


@heartbeat.command()
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    required=True,
    help="Mount point of an HA pool (repeatable).",
)
@click.option("--host-ip", required=True, help="This host's private IP address.")
@click.option("--once", is_flag=True, help="Write one round and exit: 0 if every pool was written.")
@click.option(
    "--watchdog",
    "watchdog_device",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Arm this watchdog device (/dev/watchdog) and pet it after each full round.",
)
@click.option(
    "--agent-ack-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file the host's agent touches after every ping the management server"
    " acknowledged: makes the writer isolation-aware (cloudha.isolation.*).",
)
@_settings_option
def write(
    mounts: tuple[str, ...],
    host_ip: str,
    once: bool,
    watchdog_device: Path | None,
    agent_ack_file: Path | None,
    settings_file: Path | None,
) -> None:
    """Write this host's heartbeat to every pool, forever (until SIGTERM/SIGINT).

    When every try on a pool fails and
    reboot.host.and.alert.management.on.heartbeat.timeout is true, the host
    resets itself (sysrq b). --once never does. With --watchdog the device
    is armed with cloudha.watchdog.timeout and petted after every round that
    wrote every pool; SIGTERM/SIGINT disarms it.

    With --agent-ack-file (and cloudha.isolation.aware, the default), a pool
    that cannot be written resets the host only when it is isolated: the
    agent's last acknowledged ping is older than cloudha.isolation.agent.window
    and cloudha.isolation.address does not answer. While the agent is
    connected the watchdog is petted on its link (docs/heartbeat.md).
    """
    if once and watchdog_device is not None:
        raise BadInput("--once and --watchdog cannot be used together")
    ip = _host_ip(host_ip)
    pools = _pools(mounts)
    settings = _settings(settings_file)
    shadow = settings.cloudha_shadow
    if shadow and watchdog_device is not None:
        raise BadInput(
            "cloudha.shadow is true: shadow mode resets nothing, so it arms no watchdog"
            " (drop --watchdog, or turn shadow mode off)"
        )
    timing = _timing(settings)
    clock = SystemClock()
    isolation = None
    if agent_ack_file is not None and settings.cloudha_isolation_aware:
        address = settings.cloudha_isolation_address
        isolation = _guard(
            "cloudha.isolation.address", lambda: FileIsolationProbe(str(agent_ack_file), address)
        )
    writer = _guard(
        "--settings",
        lambda: HeartbeatWriter(
            storage=LocalStorage(),
            clock=clock,
            timing=timing,
            host_ip=ip,
            pools=pools,
            reboot_on_failure=(
                False if once else settings.reboot_host_and_alert_management_on_heartbeat_timeout
            ),
            self_fencer=ShadowSelfFencer() if shadow else None,
            watchdog=None if watchdog_device is None else LinuxWatchdog(str(watchdog_device)),
            watchdog_timeout=settings.cloudha_watchdog_timeout,
            reset_margin=settings.cloudha_watchdog_reset_margin,
            isolation=isolation,
            agent_window=settings.cloudha_isolation_agent_window,
        ),
    )
    if once:
        written = _write_round(writer, pools)
        failed = [pool.id for pool in pools if pool.id not in written]
        if failed:
            click.echo(f"cloudha heartbeat write: not written to {', '.join(failed)}", err=True)
            raise SystemExit(1)
        return
    raise SystemExit(_run_until_signalled(writer, again=shadow))


def _write_round(writer: HeartbeatWriter, pools: Sequence[Pool]) -> set[str]:
    """One round of the writer plan (every pool's tries, no self-fencing); the written pool ids."""
    stop = threading.Event()
    plan = writer_plan(lambda: pools, writer.timing, reboot_on_failure=False)
    written: set[str] = set()
    answer: bool | None = None
    try:
        while True:
            action = plan.send(answer)
            answer = None
            if isinstance(action, Write):
                answer = writer.write_once(action.pool)
                if answer:
                    written.add(action.pool.id)
            elif isinstance(action, Sleep):
                if action.reason == "round":
                    return written
                writer.clock.wait(stop, action.seconds)
    finally:
        plan.close()


class ShadowSelfFencer:
    """Shadow mode's self-fencer (``cloudha.shadow``): logs that it would reset, resets nothing."""

    def self_fence(self, reason: str) -> None:
        log.critical("shadow mode: would reset this host now (%s); did nothing", reason)


def _run_until_signalled(writer: HeartbeatWriter, *, again: bool = False) -> int:
    """Run the writer in a thread until SIGTERM/SIGINT; 0 when stopped, 1 if it ended by itself.

    ``again`` (shadow mode): a writer that ended after a self-fence that did nothing starts over.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            writer.run(stop)
            while again and not stop.is_set():
                writer.run(stop)
        except BaseException as exc:
            failure.append(exc)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        thread = threading.Thread(target=work, name="cloudha-heartbeat-writer", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        return 0
    reason = f": {failure[0]}" if failure else " (self-fenced, but this host is still running)"
    click.echo(f"cloudha heartbeat write: the writer stopped{reason}", err=True)
    return 1


@heartbeat.command()
@click.option(
    "--mount", "mounts", multiple=True, help="Mount point of an HA pool (repeatable; none is fine)."
)
@click.option("--host-ip", required=True, help="The address of the host to judge.")
@click.option("--fail-on-one-pool", is_flag=True, help="DEAD as soon as one pool is stale.")
@_json_option
@_settings_option
def check(
    mounts: tuple[str, ...],
    host_ip: str,
    fail_on_one_pool: bool,
    as_json: bool,
    settings_file: Path | None,
) -> None:
    """Judge a host from its heartbeat files on these pools (ALIVE, DEAD or UNKNOWN)."""
    ip = _host_ip(host_ip)
    pools = _pools(mounts)
    timing = _timing(_settings(settings_file))
    checker = HeartbeatChecker(LocalStorage(), SystemClock(), timing)
    report = checker.check(pools, ip, fail_on_one_pool=fail_on_one_pool)
    _print(
        report.to_dict(),
        f"{report.target_ip}: {report.verdict}: {report.reason}",
        [f"{r.pool_id}: {r.verdict}: {r.reason}" for r in report.readings],
        as_json,
    )


@heartbeat.command()
@click.option("--mount", required=True, help="Mount point of the pool.")
@click.option("--host-ip", required=True, help="The address of the suspect host.")
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    help="A volume file of the host, relative to the mount point (repeatable).",
)
@click.option(
    "--suspect-time",
    required=True,
    type=float,
    help="When the host became suspect, in Unix epoch seconds.",
)
@click.option(
    "--watchdog",
    is_flag=True,
    help="The host's writer arms a watchdog: a stale heartbeat then proves it dead.",
)
@_json_option
@_settings_option
def activity(
    mount: str,
    host_ip: str,
    volumes: tuple[str, ...],
    suspect_time: float,
    watchdog: bool,
    as_json: bool,
    settings_file: Path | None,
) -> None:
    """Look for signs of life of a host on a pool: a fresh heartbeat or volume writes."""
    ip = _host_ip(host_ip)
    (pool,) = _pools([mount])
    timing = _timing(_settings(settings_file))
    report = _guard(
        None,
        lambda: check_vm_activity(
            LocalStorage(),
            SystemClock(),
            timing,
            mount_point=pool.mount_point,
            host_ip=ip,
            volumes=volumes,
            suspect_time=suspect_time,
            watchdog=watchdog,
        ),
    )
    _print(report.to_dict(), f"{report.host_ip}: {report.verdict}: {report.reason}", [], as_json)
