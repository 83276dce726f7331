"""A fake IPMI BMC in a subprocess, for integration tests of the power drivers.

Import the fixture into a test module (``from tests.integration.fakebmc import
fake_bmc  # noqa: F401``). Each test gets its own BMC: the lab's
(:mod:`cloudha.testing.lab.fakebmc`, pyghmi's BMC server with the fixes of
:mod:`cloudha.testing.lab.fakebmc_server`) on UDP 127.0.0.1 and a free port.
A BMC that cannot start fails the test. The finalizer resumes a paused BMC
and kills it, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudha.testing.lab import fakebmc as _lab
from cloudha.testing.lab.fakebmc import ADDRESS, FakeBmcServer, free_udp_port
from cloudha.testing.lab.processes import LabError

__all__ = ["ADDRESS", "FakeBmcServer", "fake_bmc", "free_udp_port", "start_fake_bmc"]


def start_fake_bmc(
    workdir: Path, *, username: str = "admin", password: str, power: str = "on"
) -> FakeBmcServer:
    """Start a fake BMC on a free port; fails the test when it cannot. The caller stops it."""
    try:
        return _lab.start_fake_bmc(workdir, username=username, password=password, power=power)
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def fake_bmc(tmp_path: Path) -> Iterator[FakeBmcServer]:
    """A fake BMC of this test's own (user ``admin``, power on); see :class:`FakeBmcServer`."""
    server = start_fake_bmc(tmp_path, password="Fake-BMC-pw-7q2x")
    try:
        yield server
    finally:
        server.stop()
