"""``cloudha heartbeat``: write and read the KVM storage heartbeat on this host (spec §6).

Conventions: ``check`` and ``activity`` exit 0 whenever a report was
produced, whatever its verdict, and print it as one human line (plus one
line per pool) or, with ``--json``, as the report's ``to_dict()`` JSON alone
on stdout. Bad input (an address that is not an IP, a relative mount
point, a mount point where nothing is mounted, an unreadable settings
file) is one ``cloudha heartbeat <command>: ...`` line on stderr naming the
option, and exit status 2 (:mod:`cloudha.cli.look`).

Every ``--mount`` must be a mount point (``os.path.ismount``, or listed in
``/proc/self/mountinfo`` for a bind mount) unless ``--allow-unmounted`` is
given: a heartbeat written to a directory where the pool is not mounted
lands on this host's local disk, invisible to its neighbours, which then
find this live host dead; a checker reading such a directory finds no
heartbeat of a host that is writing one on the real pool.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final, NoReturn, TypeVar

import click

from cloudha.cli.look import EXIT_FAILED, EXIT_USAGE, emit_json, fail
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

__all__ = ["heartbeat", "is_mount_point"]

log = logging.getLogger("cloudha.heartbeat")

_OPTIONS = {
    "host_ip": "--host-ip",
    "mount_point": "--mount",
    "volume": "--volume",
    "suspect_time": "--suspect-time",
}

_T = TypeVar("_T")


MOUNTINFO: Final = "/proc/self/mountinfo"
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


def _command() -> str:
    context = click.get_current_context(silent=True)
    name = context.info_name if context is not None else None
    return f"heartbeat {name}" if name else "heartbeat"


def _bad(message: str) -> NoReturn:
    """Bad input: one ``cloudha heartbeat <command>: ...`` line on stderr, exit status 2."""
    fail(_command(), message, EXIT_USAGE)


def _guard(option: str | None, call: Callable[[], _T]) -> _T:
    """Run ``call``; a ConfigurationError is bad input naming the option."""
    try:
        return call()
    except ConfigurationError as exc:
        name = option or _OPTIONS.get(exc.key or "", "")
        prefix = f"invalid value for {name!r}: " if name else ""
        _bad(f"{prefix}{exc}")


def _host_ip(value: str) -> str:
    return _guard("--host-ip", lambda: normalize_host_ip(value))


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def is_mount_point(path: str, *, mountinfo: str = MOUNTINFO) -> bool:
    """Whether something is mounted at ``path``: ``os.path.ismount`` (another device, or the
    root) or, for a bind mount of the same device, a mount point listed in ``mountinfo``."""
    if os.path.ismount(path):
        return True
    wanted = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == wanted:
                    return True
    except OSError:
        return False
    return False


def _pools(mounts: Sequence[str], *, allow_unmounted: bool) -> list[Pool]:
    pools = []
    for mount in mounts:
        if "\0" in mount or not Path(mount).is_absolute():
            _bad(f"invalid value for '--mount': not an absolute path: {mount!r}")
        if not allow_unmounted:
            if not Path(mount).is_dir():
                _bad(
                    f"invalid value for '--mount': {mount} is not a directory"
                    " (is the pool mounted? --allow-unmounted to use a plain directory)"
                )
            if not is_mount_point(mount):
                _bad(
                    f"invalid value for '--mount': nothing is mounted at {mount}: a heartbeat"
                    " there is on this host's own disk, invisible to its neighbours (mount the"
                    " pool first, or give --allow-unmounted for a plain directory)"
                )
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
        emit_json(document)
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
_allow_unmounted_option = click.option(
    "--allow-unmounted",
    is_flag=True,
    help="Accept a --mount where nothing is mounted (a plain directory: tests, demos).",
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
@_allow_unmounted_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print what was written (with --once) or why the writer stopped, as JSON on stdout.",
)
@_settings_option
def write(
    mounts: tuple[str, ...],
    host_ip: str,
    once: bool,
    watchdog_device: Path | None,
    agent_ack_file: Path | None,
    allow_unmounted: bool,
    as_json: bool,
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

    Every --mount must be a mount point unless --allow-unmounted is given.
    Exit status: 0 written (--once) or stopped by a signal; 1 a pool not
    written (--once) or a writer that stopped by itself; 2 bad input.
    """
    if once and watchdog_device is not None:
        _bad("--once and --watchdog cannot be used together")
    ip = _host_ip(host_ip)
    pools = _pools(mounts, allow_unmounted=allow_unmounted)
    settings = _settings(settings_file)
    shadow = settings.cloudha_shadow
    if shadow and watchdog_device is not None:
        _bad(
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
        if as_json:
            emit_json(
                {
                    "host_ip": ip,
                    "written": [pool.id for pool in pools if pool.id in written],
                    "failed": failed,
                }
            )
        if failed:
            fail("heartbeat write", f"not written to {', '.join(failed)}", EXIT_FAILED)
        return
    status = _run_until_signalled(writer, again=shadow)
    if as_json:
        emit_json(
            {
                "host_ip": ip,
                "pools": [pool.id for pool in pools],
                "stopped": "signal" if status == 0 else "writer",
            }
        )
    raise SystemExit(status)


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
@_allow_unmounted_option
@_json_option
@_settings_option
def check(
    mounts: tuple[str, ...],
    host_ip: str,
    fail_on_one_pool: bool,
    allow_unmounted: bool,
    as_json: bool,
    settings_file: Path | None,
) -> None:
    """Judge a host from its heartbeat files on these pools (ALIVE, DEAD or UNKNOWN).

    Every --mount must be a mount point unless --allow-unmounted is given.
    Exit status: 0 with a report, whatever its verdict; 2 bad input.
    """
    ip = _host_ip(host_ip)
    pools = _pools(mounts, allow_unmounted=allow_unmounted)
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
@_allow_unmounted_option
@_json_option
@_settings_option
def activity(
    mount: str,
    host_ip: str,
    volumes: tuple[str, ...],
    suspect_time: float,
    watchdog: bool,
    allow_unmounted: bool,
    as_json: bool,
    settings_file: Path | None,
) -> None:
    """Look for signs of life of a host on a pool: a fresh heartbeat or volume writes.

    --mount must be a mount point unless --allow-unmounted is given.
    Exit status: 0 with a report, whatever its verdict; 2 bad input.
    """
    ip = _host_ip(host_ip)
    (pool,) = _pools([mount], allow_unmounted=allow_unmounted)
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
