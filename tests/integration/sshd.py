"""A real OpenSSH server on loopback for integration tests.

Import the fixture into a test module (``from tests.integration.sshd import
sshd_server  # noqa: F401``). It is the lab's sshd
(:func:`cloudha.testing.lab.sshd.start_sshd`: 127.0.0.1, a free port, its
own host key, client key, authorized_keys and known_hosts), started once per
session in a temporary directory; it never touches port 22 or ``/etc/ssh``.
A missing sshd or ssh-keygen fails the tests: it is never a skip. The
finalizer kills the commands its sessions left running, the per-connection
sshd processes, then sshd itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudha.testing.lab.processes import LabError
from cloudha.testing.lab.sshd import SshServer, start_sshd

__all__ = ["SshServer", "sshd_server"]


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A loopback sshd for the whole session (see :class:`SshServer`); fails if sshd is missing."""
    try:
        daemon = start_sshd(tmp_path_factory.mktemp("sshd"))
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield daemon.server
    finally:
        daemon.stop()
