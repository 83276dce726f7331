"""Reading another host's storage heartbeat (CloudStack's ``KVMHAChecker``, spec §6.3).

Deliberate differences from CloudStack (docs/design/differences.md): a missing,
unreadable, empty or garbage heartbeat is UNKNOWN, never DEAD (nor ALIVE);
ages are real ages (no modulo 256); the staleness limit is
:meth:`HeartbeatTiming.stale_after`, which a live writer never exceeds; and
across several pools the host is DEAD only when every pool that could be
read says so (or any pool, with ``fail_on_one_pool``), ALIVE as soon as one
pool shows a fresh heartbeat.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, final

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.heartbeat.files import (
    HeartbeatFormatError,
    heartbeat_path,
    normalize_host_ip,
    parse_heartbeat,
)
from cloudha.heartbeat.storage import StorageAccess
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.investigators.base import Verdict
from cloudha.model import Pool

__all__ = ["HeartbeatChecker", "HeartbeatReport", "PoolReading"]

log = logging.getLogger("cloudha.heartbeat")

_READ_BYTES = 64
"""A heartbeat is one short line; more than this is garbage anyway."""


def _seconds_text(value: float) -> str:
    """``412`` for 412.0, ``405.3`` for 405.25: seconds as shown in reasons."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


# -- reading JSON-able documents back -------------------------------------


def _mapping(document: object, where: str) -> Mapping[str, Any]:
    if not isinstance(document, Mapping):
        raise ConfigurationError(
            f"{where}: expected a mapping, got {type(document).__name__}",
            key=where,
            value=document,
        )
    return document


def _get(document: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
    if key not in document:
        if optional:
            return None
        raise ConfigurationError(f"{where}: missing key {key!r}", key=key)
    return document[key]


def _str(document: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(document, key, where)
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{where}: {key} must be a string, got {value!r}", key=key, value=value
        )
    return value


def _verdict(document: Mapping[str, Any], where: str) -> Verdict:
    value = _get(document, "verdict", where)
    try:
        return Verdict(value)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{where}: verdict must be ALIVE, DEAD or UNKNOWN, got {value!r}",
            key="verdict",
            value=value,
        ) from None


def _number(
    document: Mapping[str, Any], key: str, where: str, *, optional: bool = False
) -> float | None:
    value = _get(document, key, where, optional=optional)
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(
            f"{where}: {key} must be a finite number, got {value!r}", key=key, value=value
        )
    return float(value)


def _integer(document: Mapping[str, Any], key: str, where: str) -> int | None:
    value = _get(document, key, where, optional=True)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(
            f"{where}: {key} must be an integer, got {value!r}", key=key, value=value
        )
    return value


# -- results -----------------------------------------------------------------


@final
@attrs.frozen
class PoolReading:
    """What one pool's heartbeat file says about the target.

    Attributes:
        pool_id: the pool.
        mount_point: where it is mounted on the checking host.
        verdict: ALIVE (fresh), DEAD (stale) or UNKNOWN (missing, unreadable,
            garbage, written in the future).
        reason: why, in one sentence.
        written_at: the epoch seconds in the file, when it could be parsed.
        age: checker's ``now`` minus ``written_at``, when parsed.
    """

    pool_id: str
    mount_point: str
    verdict: Verdict
    reason: str
    written_at: int | None = None
    age: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (every key present; ``written_at``/``age`` may be None)."""
        return {
            "pool_id": self.pool_id,
            "mount_point": self.mount_point,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "written_at": self.written_at,
            "age": self.age,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PoolReading:
        """Read back :meth:`to_dict`'s output (``written_at`` and ``age`` may be absent).

        Raises:
            ConfigurationError: naming the missing or bad key.
        """
        where = "heartbeat reading"
        d = _mapping(d, where)
        return cls(
            pool_id=_str(d, "pool_id", where),
            mount_point=_str(d, "mount_point", where),
            verdict=_verdict(d, where),
            reason=_str(d, "reason", where),
            written_at=_integer(d, "written_at", where),
            age=_number(d, "age", where, optional=True),
        )


@final
@attrs.frozen
class HeartbeatReport:
    """A checker's answer about one target host.

    Attributes:
        target_ip: the target's (normalised) address.
        verdict: the aggregate verdict (see :meth:`HeartbeatChecker.check`).
        reason: a one-line summary.
        threshold: the staleness limit used, in seconds.
        readings: one reading per pool, in the order given.
    """

    target_ip: str
    verdict: Verdict
    reason: str
    threshold: float
    readings: tuple[PoolReading, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; what ``cloudha heartbeat check --json`` prints."""
        return {
            "target_ip": self.target_ip,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "threshold": self.threshold,
            "readings": [reading.to_dict() for reading in self.readings],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeartbeatReport:
        """Read back :meth:`to_dict`'s output (``readings`` may be absent).

        Raises:
            ConfigurationError: naming the missing or bad key
                (``readings[1]: missing key 'verdict'``).
        """
        where = "heartbeat report"
        d = _mapping(d, where)
        raw = _get(d, "readings", where, optional=True)
        if raw is None:
            raw = []
        if not isinstance(raw, list | tuple):
            raise ConfigurationError(
                f"{where}: readings must be a list, got {raw!r}", key="readings", value=raw
            )
        readings = []
        for index, item in enumerate(raw):
            try:
                readings.append(PoolReading.from_dict(item))
            except ConfigurationError as exc:
                message = str(exc).replace("heartbeat reading", f"{where}: readings[{index}]", 1)
                raise ConfigurationError(message, key=exc.key, value=exc.value) from None
        threshold = _number(d, "threshold", where)
        assert threshold is not None
        return cls(
            target_ip=_str(d, "target_ip", where),
            verdict=_verdict(d, where),
            reason=_str(d, "reason", where),
            threshold=threshold,
            readings=tuple(readings),
        )


# -- the checker -------------------------------------------------------------


class HeartbeatChecker:
    """Reads a target host's heartbeat on the pools this host mounts.

    Args:
        storage: access to this host's mount points.
        clock: this host's wall clock (``now()``).
        timing: the writer's timing, which gives the staleness limit.
    """

    def __init__(self, storage: StorageAccess, clock: Clock, timing: HeartbeatTiming) -> None:
        self.storage = storage
        self.clock = clock
        self.timing = timing

    def check(
        self, pools: Sequence[Pool], target_ip: str, *, fail_on_one_pool: bool = False
    ) -> HeartbeatReport:
        """Judge ``target_ip`` from its heartbeat files on ``pools``.

        Each pool's file is read (64 bytes at most) and judged against
        ``threshold = timing.stale_after(len(pools))``, with ``now`` read
        from the clock just before that pool's read (so a slow read makes a
        heartbeat look younger, never older):

        * missing file, :class:`OSError`, :class:`~cloudha.errors.ProbeError`,
          empty or garbage content → UNKNOWN;
        * written more than ``clock_skew`` after ``now`` → UNKNOWN;
        * ``now - written_at > threshold`` → DEAD (exactly the threshold is ALIVE);
        * otherwise ALIVE.

        Aggregation: no pools → UNKNOWN; ``fail_on_one_pool`` and a DEAD
        pool → DEAD; any ALIVE pool → ALIVE; at least one readable pool and
        every readable pool DEAD → DEAD; otherwise UNKNOWN.

        Raises:
            ConfigurationError: ``target_ip`` is not an IP address, or a
                pool's mount point is not absolute.
        """
        target = normalize_host_ip(target_ip)
        threshold = self.timing.stale_after(len(pools))
        if not pools:
            return HeartbeatReport(target, Verdict.UNKNOWN, "no HA storage pools", threshold)
        readings = tuple(self._read(pool, target, threshold) for pool in pools)
        verdict, reason = _aggregate(readings, fail_on_one_pool=fail_on_one_pool)
        return HeartbeatReport(target, verdict, reason, threshold, readings)

    def _read(self, pool: Pool, target: str, threshold: float) -> PoolReading:
        path = heartbeat_path(pool.mount_point, target)

        def reading(
            verdict: Verdict, reason: str, written_at: int | None = None, age: float | None = None
        ) -> PoolReading:
            return PoolReading(pool.id, pool.mount_point, verdict, reason, written_at, age)

        now = self.clock.now().timestamp()
        try:
            data = self.storage.read_bytes(path, max_bytes=_READ_BYTES)
        except FileNotFoundError:
            return reading(Verdict.UNKNOWN, f"no heartbeat file on {pool.id} ({path})")
        except OSError as exc:
            return reading(Verdict.UNKNOWN, f"unreadable on {pool.id}: {exc.strerror or exc}")
        except ProbeError as exc:
            return reading(Verdict.UNKNOWN, f"unreadable on {pool.id}: {exc}")
        try:
            written_at = parse_heartbeat(data)
        except HeartbeatFormatError as exc:
            return reading(Verdict.UNKNOWN, f"bad heartbeat file on {pool.id}: {exc.reason}")
        age = now - written_at
        if written_at > now + self.timing.clock_skew:
            return reading(
                Verdict.UNKNOWN,
                f"heartbeat on {pool.id} written in the future ({_seconds_text(-age)} s ahead,"
                f" skew limit {_seconds_text(self.timing.clock_skew)} s)",
                written_at,
                age,
            )
        shown = f"{_seconds_text(age)} s old, limit {_seconds_text(threshold)} s"
        if age > threshold:
            return reading(Verdict.DEAD, f"heartbeat on {pool.id} is {shown}", written_at, age)
        return reading(Verdict.ALIVE, f"heartbeat on {pool.id} is {shown}", written_at, age)


def _aggregate(readings: Sequence[PoolReading], *, fail_on_one_pool: bool) -> tuple[Verdict, str]:
    dead = [r for r in readings if r.verdict is Verdict.DEAD]
    alive = [r for r in readings if r.verdict is Verdict.ALIVE]
    unknown = [r for r in readings if r.verdict is Verdict.UNKNOWN]
    if fail_on_one_pool and dead:
        return Verdict.DEAD, f"{dead[0].reason} (one stale pool is enough)"
    if alive:
        return Verdict.ALIVE, alive[0].reason
    if dead:
        reason = "; ".join(r.reason for r in dead)
        if unknown:
            reason += (
                f" ({len(unknown)} pool(s) unreadable: "
                + "; ".join(r.reason for r in unknown)
                + ")"
            )
        return Verdict.DEAD, reason
    return Verdict.UNKNOWN, "no readable heartbeat: " + "; ".join(r.reason for r in unknown)
