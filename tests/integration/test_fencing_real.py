"""The libvirt and SSH soft fencers against real servers: libvirtd (test driver) and sshd."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from cloudha.clock import SystemClock
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.libvirt import LibvirtFencer
from cloudha.fencing.ssh import SSHSoftFencer
from cloudha.model import Host, Vm
from cloudha.status import Status
from cloudha.transport.libvirt import LibvirtHypervisorProbe
from cloudha.transport.ssh import SSHTransport
from tests.integration.libvirtd import (
    LibvirtServer,
    libvirtd_server,  # noqa: F401
    stoppable_libvirtd,  # noqa: F401
)
from tests.integration.sshd import SshServer, sshd_server  # noqa: F401

pytestmark = pytest.mark.integration

HOST = Host("hv-1", status=Status.DOWN, private_ip="127.0.0.1")
VM_TEST = Vm("vm-test", name="test", host_id=HOST.id, ha_enabled=True)


def wait_until(predicate: Callable[[], bool], *, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# -- LibvirtFencer ----------------------------------------------------------------------------


def libvirt_fencer(
    server: LibvirtServer, timeout: float = 5.0
) -> tuple[LibvirtFencer, LibvirtHypervisorProbe]:
    probe = LibvirtHypervisorProbe(f"test+tcp://{{ip}}:{server.port}/default")
    return LibvirtFencer(SystemClock(), control=probe, timeout=timeout), probe


def test_libvirt_fencer_destroys_a_running_domain_then_finds_it_already_off(
    libvirtd_server: LibvirtServer,  # noqa: F811
) -> None:
    fencer, _probe = libvirt_fencer(libvirtd_server)
    holder = libvirtd_server.holder
    assert holder.lookupByName("test").isActive()
    try:
        first = fencer.fence_off(VM_TEST, HOST)
        assert first.outcome is FenceOutcome.FENCED, first
        assert first.evidence["domain"] == "test"
        assert (first.evidence["before"], first.evidence["after"]) == ("Running", "Shutoff")
        assert first.evidence["action"] == "destroy"
        assert not holder.lookupByName("test").isActive()  # seen from another connection
        assert first.finished_at >= first.started_at

        again = fencer.fence_off(VM_TEST, HOST)
        assert again.outcome is FenceOutcome.FENCED, again
        assert (again.evidence["before"], again.evidence["after"]) == ("Shutoff", "Shutoff")
        assert again.evidence["action"] == "none"
        assert "already" in again.reason
    finally:
        domain = holder.lookupByName("test")
        if not domain.isActive():
            domain.create()
        del domain
    assert holder.lookupByName("test").isActive()


def test_libvirt_fencer_an_unknown_domain_cannot_run_there(
    libvirtd_server: LibvirtServer,  # noqa: F811
) -> None:
    fencer, _probe = libvirt_fencer(libvirtd_server)
    result = fencer.fence_off(Vm("gone", name="no-such-domain"), HOST)
    assert result.outcome is FenceOutcome.FENCED, result
    assert (result.evidence["before"], result.evidence["after"]) == ("Missing", "Missing")
    assert result.evidence["proof"] == "the hypervisor has no such domain"
    assert "cannot run there" in result.reason
    assert libvirtd_server.holder.lookupByName("test").isActive()  # nothing else touched


def test_libvirt_fencer_a_destroyed_transient_domain_is_gone(
    libvirtd_server: LibvirtServer,  # noqa: F811
) -> None:
    holder = libvirtd_server.holder
    xml = holder.lookupByName("test").XMLDesc()
    xml = xml.replace("<name>test</name>", "<name>fence-transient</name>")
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    holder.createXML(xml).isActive()
    fencer, _probe = libvirt_fencer(libvirtd_server)
    try:
        result = fencer.fence_off(Vm("t1", name="fence-transient"), HOST)
    finally:
        if "fence-transient" in (d.name() for d in holder.listAllDomains()):
            holder.lookupByName("fence-transient").destroy()
    assert result.outcome is FenceOutcome.FENCED, result
    assert (result.evidence["before"], result.evidence["after"]) == ("Running", "Missing")
    assert result.evidence["action"] == "destroy"


def test_libvirt_fencer_a_stopped_libvirtd_is_not_fenced_within_the_timeout(
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
) -> None:
    timeout = 2.0
    fencer, probe = libvirt_fencer(stoppable_libvirtd, timeout=timeout)
    os.kill(stoppable_libvirtd.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = fencer.fence_off(VM_TEST, HOST)
        elapsed = time.monotonic() - started
    finally:
        os.kill(stoppable_libvirtd.pid, signal.SIGCONT)
    assert result.outcome is FenceOutcome.NOT_FENCED, result
    assert result.evidence["error"] == "ProbeTimeout"
    assert elapsed < timeout + 2.0
    # Resumed, the abandoned worker finishes; the domain was never destroyed.
    assert wait_until(lambda: probe.lingering == 0)
    assert stoppable_libvirtd.holder.lookupByName("test").isActive()


# -- SSHSoftFencer ----------------------------------------------------------------------------


class CountingTransport(SSHTransport):
    """An SSHTransport that counts ``close()`` calls."""

    closed = 0

    def close(self) -> None:
        self.closed += 1
        super().close()


class Transports:
    """``connect`` for the SSH fencer: a fresh SSHTransport per host, all kept for checks."""

    def __init__(self, server: SshServer, known_hosts: Path | None = None) -> None:
        self.server = server
        self.known_hosts = known_hosts or server.known_hosts
        self.made: list[CountingTransport] = []

    def __call__(self, host: Host) -> SSHTransport:
        transport = CountingTransport(
            username=self.server.username,
            port=self.server.port,
            key_filename=self.server.client_key,
            known_hosts=self.known_hosts,
            connect_timeout=5.0,
        )
        self.made.append(transport)
        return transport

    def close(self) -> None:
        for transport in self.made:
            transport.close()


@pytest.fixture
def transports(sshd_server: SshServer) -> Iterator[Transports]:  # noqa: F811
    made = Transports(sshd_server)
    yield made
    made.close()


SSH_HOST = Host("kvm-1", status=Status.DOWN, private_ip="127.0.0.1")


def ssh_fencer(connect: Transports, command: Sequence[str]) -> SSHSoftFencer:
    return SSHSoftFencer(SystemClock(), connect=connect, timeout=15.0, restart_command=command)


def test_ssh_fencer_runs_the_restart_command_and_does_not_fence(
    transports: Transports, tmp_path: Path
) -> None:
    marker = tmp_path / "restarted"
    fencer = ssh_fencer(transports, ("touch", str(marker)))
    result = fencer.fence_off(VM_TEST, SSH_HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED, result
    assert result.evidence == {"recovery": "agent restarted", "exit_status": 0}
    assert marker.exists()
    assert [t.closed for t in transports.made] == [1]


def test_ssh_fencer_reports_a_failing_restart(transports: Transports) -> None:
    result = ssh_fencer(transports, ("false",)).fence_off(VM_TEST, SSH_HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED, result
    assert result.evidence["exit_status"] == 1
    assert "status 1" in result.reason
    assert [t.closed for t in transports.made] == [1]


def test_ssh_fencer_keeps_the_first_stderr_line(transports: Transports, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "file"
    result = ssh_fencer(transports, ("touch", str(missing))).fence_off(VM_TEST, SSH_HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED, result
    assert result.evidence["exit_status"] == 1
    assert "No such file or directory" in str(result.evidence["error"])


def test_ssh_fencer_a_wrong_host_key_is_not_fenced(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The client's own public key stands in for a host key that changed.
    key_type, key = (sshd_server.workdir / "client_ed25519.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {key_type} {key}\n")
    marker = tmp_path / "restarted"
    connect = Transports(sshd_server, known_hosts=known_hosts)
    try:
        result = ssh_fencer(connect, ("touch", str(marker))).fence_off(VM_TEST, SSH_HOST)
    finally:
        connect.close()
    assert result.outcome is FenceOutcome.NOT_FENCED, result
    assert result.evidence["error"] == "ProbeHostKeyError"
    assert key not in result.reason
    assert not marker.exists()
    assert [t.closed for t in connect.made] == [2]  # by the fencer, then by the test
