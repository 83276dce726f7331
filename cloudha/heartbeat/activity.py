"""The VM activity check on a pool (CloudStack's ``kvmvmactivity.sh``, spec §6.4).

Host-HA asks a neighbour whether a suspect host still shows signs of life on
a pool: a fresh heartbeat, or VM volumes modified since the host became
suspect. ALIVE means activity was detected, DEAD means none was, UNKNOWN
means the check could not tell (never read as "no activity").

Deliberate differences from the script: the heartbeat freshness limit is
:meth:`HeartbeatTiming.stale_after` (one pool), not a hard-coded 61 s; an
unreadable or garbage heartbeat is not "stale" (with no volumes to look at
the answer is UNKNOWN, not DEAD); a volume that cannot be examined, an
unreadable state file or a state file that cannot be written is UNKNOWN;
volume paths must stay inside the mount point.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, final

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.heartbeat.checker import _mapping, _number, _seconds_text, _str, _verdict
from cloudha.heartbeat.files import (
    HeartbeatFormatError,
    activity_state_path,
    heartbeat_path,
    normalize_host_ip,
    parse_heartbeat,
)
from cloudha.heartbeat.storage import StorageAccess
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators.base import Verdict
from cloudha.investigators.support import judge_stale, stale_proof
from cloudha.model import Host

__all__ = ["ActivityReport", "check_vm_activity"]

log = logging.getLogger("cloudha.heartbeat")

_HEARTBEAT_BYTES = 64
_STATE_BYTES = 256


@final
@attrs.frozen
class ActivityReport:
    """The answer of one VM activity check.

    Attributes:
        host_ip: the suspect host's (normalised) address.
        verdict: ALIVE (activity detected), DEAD (no activity) or UNKNOWN.
        reason: why, in one sentence.
        latest_mtime: the newest modification time among the volumes, when examined.
        heartbeat_age: the age of the host's heartbeat, when it could be read.
    """

    host_ip: str
    verdict: Verdict
    reason: str
    latest_mtime: float | None = None
    heartbeat_age: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; what ``cloudha heartbeat activity --json`` prints."""
        return {
            "host_ip": self.host_ip,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "latest_mtime": self.latest_mtime,
            "heartbeat_age": self.heartbeat_age,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActivityReport:
        """Read back :meth:`to_dict`'s output (the two numbers may be absent).

        Raises:
            ConfigurationError: naming the missing or bad key.
        """
        where = "activity report"
        d = _mapping(d, where)
        return cls(
            host_ip=_str(d, "host_ip", where),
            verdict=_verdict(d, where),
            reason=_str(d, "reason", where),
            latest_mtime=_number(d, "latest_mtime", where, optional=True),
            heartbeat_age=_number(d, "heartbeat_age", where, optional=True),
        )


def _check_volume(volume: object) -> str:
    if (
        not isinstance(volume, str)
        or not volume
        or "\0" in volume
        or os.path.isabs(volume)
        or ".." in volume.replace("\\", "/").split("/")
    ):
        raise ConfigurationError(
            f"volume must be a path relative to the mount point, without '..', got {volume!r}",
            key="volume",
            value=volume,
        )
    return volume


def _parse_state(data: bytes) -> tuple[float, float, float]:
    """``suspect:latest:now`` → three finite numbers; ValueError otherwise."""
    parts = data.decode("ascii").strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"expected three numbers separated by ':', got {data[:64]!r}")
    numbers = tuple(float(part) for part in parts)
    if not all(math.isfinite(n) for n in numbers):
        raise ValueError(f"not finite numbers: {data[:64]!r}")
    return numbers[0], numbers[1], numbers[2]


def check_vm_activity(
    storage: StorageAccess,
    clock: Clock,
    timing: HeartbeatTiming,
    *,
    mount_point: str,
    host_ip: str,
    volumes: Sequence[str],
    suspect_time: float,
    watchdog: bool = False,
    self_fence: bool = True,
) -> ActivityReport:
    """Is there activity of ``host_ip`` on the pool mounted at ``mount_point``?

    1. The host's heartbeat file is read; no older than
       ``timing.stale_after(1)`` → ALIVE ("heartbeat fresh").
    2. No volumes: a heartbeat positively stale → DEAD, but only when the
       host's writer arms a watchdog (``watchdog``; the rule is
       :func:`~cloudha.investigators.support.stale_proof`), UNKNOWN
       otherwise; missing, unreadable, garbage or written in the future
       (beyond the clock skew) → UNKNOWN.
    3. ``latest`` = the newest modification time of the volumes (paths
       relative to ``mount_point``); any :class:`OSError` → UNKNOWN.
    4. The state file (``ac-<ip>``, ``suspect:latest:now``) remembers the
       previous check. Without one (or with garbage in it, logged as a
       warning): ALIVE iff ``latest > suspect_time``. With one
       ``(prev_suspect, prev_latest, _)``: if ``suspect_time < prev_suspect``
       ALIVE iff ``latest > suspect_time``, else ALIVE iff ``latest > prev_latest``.
       Either way the state file is rewritten with ``suspect_time:latest:now``;
       a state file that cannot be read or written → UNKNOWN (the next check
       would lack its memory).

    Args:
        storage: access to this host's mount points.
        clock: this host's wall clock.
        timing: the writer's timing (the heartbeat freshness limit).
        mount_point: the pool's mount point (absolute).
        host_ip: the suspect host's address.
        volumes: the suspect host's volume files on the pool, relative to
            ``mount_point``.
        suspect_time: when the host became suspect, in epoch seconds.
        watchdog: the suspect host's writer arms a watchdog (``Host.watchdog``).
        self_fence: ``reboot.host.and.alert.management.on.heartbeat.timeout``
            (only the reason of a stale heartbeat that proves nothing depends on it).

    Raises:
        ConfigurationError: ``host_ip`` is not an IP address, ``mount_point``
            is not absolute, a volume is absolute, contains ``..`` or NUL
            (``key="volume"``), or ``suspect_time`` is not a finite number.
    """
    hb_path = heartbeat_path(mount_point, host_ip)
    state_path = activity_state_path(mount_point, host_ip)
    ip = normalize_host_ip(host_ip)
    checked = [_check_volume(volume) for volume in volumes]
    if (
        not isinstance(suspect_time, int | float)
        or isinstance(suspect_time, bool)
        or not math.isfinite(suspect_time)
    ):
        raise ConfigurationError(
            f"suspect time must be finite epoch seconds, got {suspect_time!r}",
            key="suspect_time",
            value=suspect_time,
        )
    limit = timing.stale_after(1)

    def report(
        verdict: Verdict, reason: str, *, latest: float | None = None, age: float | None = None
    ) -> ActivityReport:
        return ActivityReport(ip, verdict, reason, latest_mtime=latest, heartbeat_age=age)

    # 1. the heartbeat
    now = clock.now().timestamp()
    age: float | None = None
    heartbeat: str
    stale = False
    try:
        written_at = parse_heartbeat(storage.read_bytes(hb_path, max_bytes=_HEARTBEAT_BYTES))
    except FileNotFoundError:
        heartbeat = "no heartbeat file"
    except (OSError, ProbeError) as exc:
        heartbeat = f"heartbeat unreadable: {getattr(exc, 'strerror', None) or exc}"
    except HeartbeatFormatError as exc:
        heartbeat = f"bad heartbeat file: {exc.reason}"
    else:
        age = now - written_at
        if written_at > now + timing.clock_skew:
            heartbeat = f"heartbeat written in the future ({_seconds_text(-age)} s ahead)"
        elif age <= limit:
            return report(
                Verdict.ALIVE,
                f"heartbeat fresh: {_seconds_text(age)} s old, limit {_seconds_text(limit)} s",
                age=age,
            )
        else:
            stale = True
            heartbeat = f"heartbeat {_seconds_text(age)} s old, limit {_seconds_text(limit)} s"

    # 2. nothing else to look at
    if not checked:
        if stale:
            verdict, reason = judge_stale(
                Verdict.DEAD,
                f"{heartbeat} and no volumes to check",
                stale_proof(Host(id=ip, watchdog=watchdog), self_fence=self_fence),
            )
            return report(verdict, reason, age=age)
        return report(Verdict.UNKNOWN, f"{heartbeat} and no volumes to check", age=age)

    # 3. the volumes
    try:
        latest = max(storage.mtime(os.path.join(mount_point, volume)) for volume in checked)
    except (OSError, ProbeError) as exc:
        return report(
            Verdict.UNKNOWN,
            f"{heartbeat}; cannot examine the volumes: {getattr(exc, 'strerror', None) or exc}",
            age=age,
        )

    # 4. the memory of the previous check
    previous: tuple[float, float, float] | None = None
    try:
        raw = storage.read_bytes(state_path, max_bytes=_STATE_BYTES)
    except FileNotFoundError:
        pass
    except (OSError, ProbeError) as exc:
        return report(
            Verdict.UNKNOWN,
            f"{heartbeat}; cannot read the activity state file:"
            f" {getattr(exc, 'strerror', None) or exc}",
            latest=latest,
            age=age,
        )
    else:
        try:
            previous = _parse_state(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("ignoring garbage activity state file %s: %s", state_path, exc)

    if previous is None or suspect_time < previous[0]:
        active = latest > suspect_time
        compared = f"suspect time {_seconds_text(suspect_time)}"
    else:
        active = latest > previous[1]
        compared = f"the latest change seen by the previous check, {_seconds_text(previous[1])}"
    try:
        storage.write_atomic(
            state_path, f"{float(suspect_time)!r}:{float(latest)!r}:{float(now)!r}\n".encode()
        )
    except (OSError, ProbeError) as exc:
        return report(
            Verdict.UNKNOWN,
            f"{heartbeat}; cannot write the activity state file:"
            f" {getattr(exc, 'strerror', None) or exc}",
            latest=latest,
            age=age,
        )
    if active:
        return report(
            Verdict.ALIVE,
            f"{heartbeat}; volumes changed at {_seconds_text(latest)}, after {compared}",
            latest=latest,
            age=age,
        )
    return report(
        Verdict.DEAD,
        f"{heartbeat}; no volume changed after {compared} (latest {_seconds_text(latest)})",
        latest=latest,
        age=age,
    )
