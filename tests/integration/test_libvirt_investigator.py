"""The libvirt witness in an investigator chain, against a real libvirtd (test driver)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cloudha import (
    Host,
    HypervisorInvestigator,
    InvestigatorChain,
    Status,
    SystemClock,
    Verdict,
    Vm,
)
from cloudha.transport.libvirt import LibvirtHypervisorProbe
from tests.integration.libvirtd import (
    LibvirtServer,
    libvirtd_server,  # noqa: F401
    stoppable_libvirtd,  # noqa: F401
)

pytestmark = pytest.mark.integration

HOST = Host("hv-1", status=Status.ALERT, private_ip="127.0.0.1")


def witness(server: LibvirtServer, timeout: float = 5.0) -> HypervisorInvestigator:
    probe = LibvirtHypervisorProbe(f"test+tcp://{{ip}}:{server.port}/default")
    return HypervisorInvestigator(SystemClock(), probe=probe, timeout=timeout)


def test_a_host_whose_hypervisor_answers_is_disconnected_not_down(
    libvirtd_server: LibvirtServer,  # noqa: F811
) -> None:
    result = InvestigatorChain([witness(libvirtd_server)]).investigate_host(HOST)
    assert result.status is Status.DISCONNECTED
    assert result.findings[0].evidence["running_domains"] >= 1


def test_vm_verdict_follows_the_domain_changed_from_another_connection(
    libvirtd_server: LibvirtServer,  # noqa: F811
) -> None:
    inv = witness(libvirtd_server)
    vm = Vm("vm-test", name="test", host_id=HOST.id)
    domain = libvirtd_server.holder.lookupByName("test")
    assert inv.is_vm_alive(vm, HOST).verdict is Verdict.ALIVE
    domain.destroy()
    try:
        dead = inv.is_vm_alive(vm, HOST)
        assert dead.verdict is Verdict.DEAD
        assert dead.evidence["domain_state"] == "Shutoff"
    finally:
        domain.create()
    assert inv.is_vm_alive(vm, HOST).verdict is Verdict.ALIVE
    assert inv.is_vm_alive(Vm("gone", name="no-such-domain"), HOST).verdict is Verdict.DEAD


def test_a_stopped_libvirtd_is_unknown_within_the_timeout(
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
) -> None:
    inv = witness(stoppable_libvirtd, timeout=2.0)
    os.kill(stoppable_libvirtd.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        finding = inv.is_agent_alive(HOST)
        elapsed = time.monotonic() - start
        vm_finding = inv.is_vm_alive(Vm("vm-test", name="test"), HOST)
    finally:
        os.kill(stoppable_libvirtd.pid, signal.SIGCONT)
    assert finding.verdict is Verdict.UNKNOWN
    assert finding.evidence["error"] == "ProbeTimeout"
    assert elapsed < 2.5
    assert vm_finding.verdict is Verdict.UNKNOWN
