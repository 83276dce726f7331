"""The host-key policies of :mod:`cloudha.transport.ssh`: the part that subclasses paramiko.

Imported (with paramiko) only when an :class:`~cloudha.transport.ssh.SSHTransport`
is built, so that :mod:`cloudha.transport.ssh` imports without the ``ssh`` extra.
"""

from __future__ import annotations

import logging
import threading
from typing import Never

import paramiko

__all__ = ["AcceptPolicy", "RejectPolicy", "UnknownHostKeyError"]

log = logging.getLogger("cloudha.transport.ssh")


class UnknownHostKeyError(paramiko.SSHException):
    """The server's host key is not in known_hosts (raised by :class:`RejectPolicy`)."""


class RejectPolicy(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a class of its own so the mapping needs no message match."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> Never:
        try:
            super().missing_host_key(client, hostname, key)
        except paramiko.SSHException as exc:
            raise UnknownHostKeyError(str(exc)) from None


class AcceptPolicy(paramiko.AutoAddPolicy):
    """AutoAddPolicy that remembers keys in memory only (never writes known_hosts).

    A key accepted once for a host name is then pinned for the life of the
    transport: a later connection presenting another key is refused.
    """

    def __init__(self) -> None:
        self._pinned: dict[str, paramiko.PKey] = {}
        self._lock = threading.Lock()

    def pinned(self) -> list[tuple[str, paramiko.PKey]]:
        """The (host name, key) pairs accepted so far."""
        with self._lock:
            return list(self._pinned.items())

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        with self._lock:
            first = hostname not in self._pinned
            self._pinned.setdefault(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        if first:
            log.warning(
                "accepting unverified %s host key %s for %s",
                key.get_name(),
                key.fingerprint,
                hostname,
            )
