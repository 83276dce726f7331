"""Real libvirtd daemons hosting libvirt's *test* driver, for integration tests.

Fixtures (import them into the test module explicitly)::

    from tests.integration.libvirtd import libvirtd_server, stoppable_libvirtd  # noqa: F401

* ``libvirtd_server`` (session): one daemon shared by the whole session.
* ``stoppable_libvirtd`` (function): a daemon of its own, for a test that
  SIGSTOPs or kills it; it is SIGCONTed and stopped after the test.

Both yield a :class:`LibvirtServer`. The daemons are the lab's
(:mod:`cloudha.testing.lab.libvirtd`: loopback TCP, run as ``nobody`` when
root, a holder connection that keeps the test driver's state); this module
turns a daemon that cannot start into a failed test, never a skip. Tests
sharing the session daemon must restore what they change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudha.testing.lab import libvirtd as _lab
from cloudha.testing.lab.libvirtd import (
    LibvirtDaemon,
    LibvirtServer,
    established_connections,
    free_port,
    stop_libvirtd,
)
from cloudha.testing.lab.processes import LabError

__all__ = [
    "LIBVIRTD",
    "LibvirtServer",
    "established_connections",
    "free_port",
    "libvirtd_server",
    "start_libvirtd",
    "stop_libvirtd",
    "stoppable_libvirtd",
]

LIBVIRTD: Path = _lab.LIBVIRTD
"""The daemon started (a test may point it elsewhere)."""


def start_libvirtd(label: str = "libvirtd") -> LibvirtDaemon:
    """Start a libvirtd (test driver, TCP on 127.0.0.1) with its holder connection.

    Fails the test (never skips) when libvirtd cannot be started.
    """
    try:
        return _lab.start_libvirtd(label, libvirtd=LIBVIRTD)
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def libvirtd_server() -> Iterator[LibvirtServer]:
    """A libvirtd shared by the session; restore any test-driver state you change."""
    daemon = start_libvirtd("libvirtd")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)


@pytest.fixture
def stoppable_libvirtd() -> Iterator[LibvirtServer]:
    """A libvirtd of the test's own, free to SIGSTOP or kill; resumed and stopped afterwards."""
    daemon = start_libvirtd("libvirtd-stoppable")
    try:
        yield daemon.server
    finally:
        stop_libvirtd(daemon)
