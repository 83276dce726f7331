"""The heartbeat writer's watchdog: Linux ``/dev/watchdog``, as SBD and sanlock use it.

A stale heartbeat proves its host dead only if the host cannot outlive it
(docs/heartbeat.md, "The watchdog"). The writer arms a watchdog and pets it
after each round in which it wrote every pool; a hung kernel, an isolated
host or a dead writer stops the petting, and the watchdog resets the host
before any neighbour can call its heartbeat stale.

:class:`LinuxWatchdog` drives the kernel's watchdog API
(``Documentation/watchdog/watchdog-api.rst``): opening the device starts
the countdown; ``WDIOC_SETTIMEOUT`` sets it where the driver supports it
and ``WDIOC_GETTIMEOUT`` reads back what the driver really uses (it may
round); any write pets it; writing the magic character ``V`` just before
closing stops it (unless the driver was built or loaded with ``nowayout``).
Closing without it leaves the countdown running: the host is reset unless
someone opens the device again in time.
"""

from __future__ import annotations

import abc
import errno
import logging
import math
import os
import struct
from collections.abc import Callable
from typing import final

from cloudha.errors import ConfigurationError

__all__ = [
    "WDIOC_GETTIMEOUT",
    "WDIOC_KEEPALIVE",
    "WDIOC_SETTIMEOUT",
    "BaseWatchdog",
    "LinuxWatchdog",
]

log = logging.getLogger("cloudha.heartbeat")


def _ioc(direction: int, number: int, size: int) -> int:
    """Linux ``_IOC(dir, 'W', nr, size)`` (asm-generic layout: x86, arm, arm64, riscv)."""
    return (direction << 30) | (size << 16) | (ord("W") << 8) | number


_READ, _WRITE = 2, 1
_INT = struct.calcsize("i")
WDIOC_KEEPALIVE = _ioc(_READ, 5, _INT)
"""``_IOR('W', 5, int)``: pet the watchdog."""
WDIOC_SETTIMEOUT = _ioc(_READ | _WRITE, 6, _INT)
"""``_IOWR('W', 6, int)``: set the timeout in seconds; the driver writes back what it set."""
WDIOC_GETTIMEOUT = _ioc(_READ, 7, _INT)
"""``_IOR('W', 7, int)``: the timeout in seconds."""

_UNSUPPORTED = frozenset({errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP})


class BaseWatchdog(abc.ABC):
    """Template for :class:`~cloudha.ports.Watchdog` implementations: the state checks.

    Subclasses implement :meth:`_arm`, :meth:`_keepalive` and :meth:`_close`;
    this class enforces the contract's order (arm once, pet only while armed,
    close at most once) and remembers :attr:`timeout`, the effective timeout.

    Raises:
        ConfigurationError: (from :meth:`arm`) a timeout that is not a whole
            number of seconds >= 1 (the kernel API counts whole seconds).
        RuntimeError: :meth:`arm` twice, :meth:`keepalive` before arming or
            after closing.
    """

    def __init__(self) -> None:
        self.timeout: float | None = None
        self.closed = False

    @property
    def armed(self) -> bool:
        """Armed and not closed."""
        return self.timeout is not None and not self.closed

    def arm(self, timeout: float) -> float:
        if self.timeout is not None or self.closed:
            raise RuntimeError(f"{self!r} is already armed")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 1
            or float(timeout) != int(timeout)
        ):
            raise ConfigurationError(
                f"watchdog timeout must be a whole number of seconds >= 1, got {timeout!r}",
                key="cloudha.watchdog.timeout",
                value=timeout,
            )
        effective = float(self._arm(int(timeout)))
        self.timeout = effective
        return effective

    def keepalive(self) -> None:
        if not self.armed:
            raise RuntimeError(f"{self!r}: keepalive while not armed")
        self._keepalive()

    def close(self, *, disarm: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timeout is not None:
            self._close(disarm=disarm)

    @abc.abstractmethod
    def _arm(self, timeout: int) -> float:
        """Start the countdown with ``timeout`` whole seconds; return the effective timeout."""

    @abc.abstractmethod
    def _keepalive(self) -> None:
        """Restart the countdown."""

    @abc.abstractmethod
    def _close(self, *, disarm: bool) -> None:
        """Release the device; stop the countdown only when ``disarm``."""


@final
class LinuxWatchdog(BaseWatchdog):
    """``/dev/watchdog`` (or ``/dev/watchdogN``) through the kernel's watchdog API.

    :meth:`arm` opens the device write-only (the countdown starts), asks for
    the timeout with ``WDIOC_SETTIMEOUT`` and reads back the one in force
    with ``WDIOC_GETTIMEOUT``. A driver without ``SETTIMEOUT`` keeps its own
    timeout, which is read; a driver that can say neither is refused (the
    guarantee could not be checked). An effective timeout longer than asked
    is refused too: it would let the host outlive its heartbeat. On a
    refusal the device is closed with the magic ``V`` and
    :class:`~cloudha.errors.ConfigurationError` raised (a driver loaded
    with ``nowayout`` cannot be stopped: it then resets the host).

    :meth:`keepalive` writes one byte (``"\\0"``, never ``V``); a failed
    write raises :class:`OSError`. :meth:`close` writes ``V`` first when
    ``disarm``.

    Args:
        path: the device.
        opener, ioctl, write, closer: the system calls (``os.open`` with
            ``O_WRONLY | O_CLOEXEC``, :func:`fcntl.ioctl`, :func:`os.write`,
            :func:`os.close`); tests inject fakes.

    Raises:
        OSError: (from :meth:`arm`) the device cannot be opened (missing
            module, permissions, already open: the kernel lets one process
            hold it).
    """

    def __init__(
        self,
        path: str = "/dev/watchdog",
        *,
        opener: Callable[[str], int] | None = None,
        ioctl: Callable[[int, int, bytearray], object] | None = None,
        write: Callable[[int, bytes], int] = os.write,
        closer: Callable[[int], None] = os.close,
    ) -> None:
        super().__init__()
        self.path = path
        self._open = opener if opener is not None else _open_write_only
        if ioctl is None:
            import fcntl

            def ioctl(fd: int, request: int, buffer: bytearray) -> object:
                return fcntl.ioctl(fd, request, buffer, True)

        self._ioctl = ioctl
        self._write = write
        self._closer = closer
        self._fd: int | None = None

    def _int_ioctl(self, request: int, value: int) -> int:
        assert self._fd is not None
        buffer = bytearray(struct.pack("i", value))
        self._ioctl(self._fd, request, buffer)
        result: int = struct.unpack("i", bytes(buffer))[0]
        return result

    def _arm(self, timeout: int) -> float:
        self._fd = self._open(self.path)
        try:
            effective = self._negotiate(timeout)
        except BaseException:
            self._release(disarm=True)
            raise
        log.info("watchdog %s armed: %d s", self.path, effective)
        return float(effective)

    def _negotiate(self, timeout: int) -> int:
        set_to: int | None = None
        try:
            set_to = self._int_ioctl(WDIOC_SETTIMEOUT, timeout)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            log.warning(
                "watchdog %s cannot set its timeout (%s); reading the driver's own",
                self.path,
                exc.strerror or exc,
            )
        try:
            effective = self._int_ioctl(WDIOC_GETTIMEOUT, 0)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED or set_to is None:
                raise ConfigurationError(
                    f"watchdog {self.path}: cannot read its timeout"
                    f" ({exc.strerror or exc}): the guarantee cannot be checked",
                    key="cloudha.watchdog.timeout",
                    value=timeout,
                ) from None
            effective = set_to
        if effective <= 0 or effective > timeout:
            raise ConfigurationError(
                f"watchdog {self.path} uses a {effective} s timeout where {timeout} s was"
                " asked: a longer countdown would let the host outlive its heartbeat",
                key="cloudha.watchdog.timeout",
                value=timeout,
            )
        return effective

    def _keepalive(self) -> None:
        assert self._fd is not None
        self._write(self._fd, b"\0")

    def _close(self, *, disarm: bool) -> None:
        self._release(disarm=disarm)

    def _release(self, *, disarm: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if disarm:
                self._write(fd, b"V")
            else:
                log.warning(
                    "watchdog %s closed without disarming: it resets this host unless"
                    " it is armed again in time",
                    self.path,
                )
        finally:
            self._closer(fd)

    def __repr__(self) -> str:
        return f"LinuxWatchdog(path={self.path!r}, timeout={self.timeout!r})"


def _open_write_only(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
