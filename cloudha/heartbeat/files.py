"""Where the KVM storage heartbeat lives on a pool, and what its files hold.

Layout (spec §6.2, as CloudStack's ``kvmheartbeat.sh``)::

    <mount_point>/KVMHA/hb-<host ip>    one line: the Unix epoch seconds of the write
    <mount_point>/KVMHA/ac-<host ip>    the VM-activity check's memory (spec §6.4)

Parsing is strict: a heartbeat file that is empty, garbage, several lines,
negative or absurdly long is a :class:`HeartbeatFormatError`, which readers
turn into an UNKNOWN verdict, never a DEAD one.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
import os
import re

from cloudha.errors import ConfigurationError

__all__ = [
    "HEARTBEAT_DIR",
    "HeartbeatFormatError",
    "activity_state_path",
    "format_heartbeat",
    "heartbeat_path",
    "normalize_host_ip",
    "parse_heartbeat",
]

HEARTBEAT_DIR = "KVMHA"
"""The directory, under a pool's mount point, holding every host's heartbeat files."""

_MAX_DIGITS = 15
"""Longest accepted heartbeat (epoch seconds have 10 digits until the year 2286)."""

_SHOWN_BYTES = 32
"""How much of a bad heartbeat file an error message quotes."""

_DIGITS = re.compile(rb"[0-9]+")


_CACHED = 4096
"""Distinct (mount point, IP) spellings whose names are remembered: a writer names
the same files every few seconds, and parsing an address is most of the cost."""


def normalize_host_ip(host_ip: str) -> str:
    """``host_ip`` as :mod:`ipaddress` writes it (``"10.0.0.1"``, ``"fd00::1"``).

    Raises:
        ConfigurationError: (``key="host_ip"``) when ``host_ip`` is not an IPv4
            or IPv6 address.
    """
    if not isinstance(host_ip, str):
        raise ConfigurationError(
            f"host IP must be a string, got {host_ip!r}", key="host_ip", value=host_ip
        )
    return _normalized(host_ip)


@functools.lru_cache(maxsize=_CACHED)
def _normalized(host_ip: str) -> str:
    """:func:`normalize_host_ip` of a string (an error is raised again at each call)."""
    try:
        address = ipaddress.ip_address(host_ip)
    except ValueError:
        raise ConfigurationError(
            f"not an IP address: {host_ip!r}", key="host_ip", value=host_ip
        ) from None
    text = str(address)
    if "/" in text or "\0" in text:  # a scoped IPv6 address with a path in its scope
        raise ConfigurationError(f"not an IP address: {host_ip!r}", key="host_ip", value=host_ip)
    return text


def _check_mount_point(mount_point: str) -> str:
    if not isinstance(mount_point, str) or "\0" in mount_point or not os.path.isabs(mount_point):
        raise ConfigurationError(
            f"mount point must be an absolute path, got {mount_point!r}",
            key="mount_point",
            value=mount_point,
        )
    return mount_point


def heartbeat_path(mount_point: str, host_ip: str) -> str:
    """``<mount_point>/KVMHA/hb-<host_ip>``: the heartbeat file of ``host_ip`` on a pool.

    ``host_ip`` is normalised (:func:`normalize_host_ip`), so every host
    names the same file whatever spelling it was given.

    Raises:
        ConfigurationError: ``key="host_ip"`` for a value that is not an IP
            address, ``key="mount_point"`` for a mount point that is not absolute.
    """
    if isinstance(mount_point, str) and isinstance(host_ip, str):
        return _file_path(mount_point, host_ip, "hb-")
    return _uncached_path(mount_point, host_ip, "hb-")


def activity_state_path(mount_point: str, host_ip: str) -> str:
    """``<mount_point>/KVMHA/ac-<host_ip>``: the VM-activity check's state file.

    Raises:
        ConfigurationError: as :func:`heartbeat_path`.
    """
    if isinstance(mount_point, str) and isinstance(host_ip, str):
        return _file_path(mount_point, host_ip, "ac-")
    return _uncached_path(mount_point, host_ip, "ac-")


def _uncached_path(mount_point: str, host_ip: str, prefix: str) -> str:
    return os.path.join(
        _check_mount_point(mount_point), HEARTBEAT_DIR, f"{prefix}{normalize_host_ip(host_ip)}"
    )


_file_path = functools.lru_cache(maxsize=_CACHED)(_uncached_path)
"""``_uncached_path`` of two strings, remembered (an error is raised again at each call)."""


def format_heartbeat(epoch: float | dt.datetime) -> bytes:
    """The content of a heartbeat written at ``epoch``: ``b"<whole seconds>\\n"``.

    Args:
        epoch: Unix epoch seconds, or a timezone-aware datetime (what
            :meth:`cloudha.clock.Clock.now` returns). Fractions are dropped.

    Raises:
        ValueError: for a negative or non-finite time, or a naive datetime.
    """
    if isinstance(epoch, dt.datetime):
        if epoch.tzinfo is None:
            raise ValueError(f"heartbeat time must be timezone-aware, got {epoch!r}")
        seconds = epoch.timestamp()
    else:
        seconds = float(epoch)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"heartbeat time must be finite and >= 0, got {epoch!r}")
    return b"%d\n" % math.floor(seconds)


class HeartbeatFormatError(ValueError):
    """A heartbeat file does not hold one line of epoch seconds.

    Attributes:
        reason: what is wrong (``"empty"``, ``"not a number: b'...'"`` ...).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _shown(data: bytes) -> str:
    if len(data) <= _SHOWN_BYTES:
        return repr(data)
    return f"{data[:_SHOWN_BYTES]!r}..."


def parse_heartbeat(data: bytes) -> int:
    """The epoch seconds a heartbeat file holds.

    Accepted: one line of ASCII digits, with optional ASCII whitespace around
    it (``b"1700000000\\n"``, ``b" 1700000000 "``).

    Raises:
        HeartbeatFormatError: for empty content, several lines, a negative
            number, more than 15 digits or anything else that is not digits.
    """
    text = data.strip()
    if not text:
        raise HeartbeatFormatError("empty")
    if b"\n" in text or b"\r" in text:
        raise HeartbeatFormatError(f"several lines: {_shown(data)}")
    if text.startswith(b"-") and _DIGITS.fullmatch(text[1:]):
        raise HeartbeatFormatError(f"negative: {_shown(text)}")
    if not _DIGITS.fullmatch(text):
        raise HeartbeatFormatError(f"not a number: {_shown(text)}")
    if len(text) > _MAX_DIGITS:
        raise HeartbeatFormatError(f"too long: {len(text)} digits")
    return int(text)
