"""LibvirtHypervisorProbe against real libvirtd daemons hosting the test driver (loopback only)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import pytest

import tests.integration.libvirtd as libvirtd_module
from cloudha.errors import ProbeConnectionError, ProbeTimeout
from cloudha.model import Host
from cloudha.ports import DomainState, HypervisorProbe
from cloudha.transport.libvirt import LibvirtHypervisorProbe
from tests.integration.libvirtd import (
    LibvirtServer,
    established_connections,
    free_port,
    libvirtd_server,  # noqa: F401
    start_libvirtd,
    stoppable_libvirtd,  # noqa: F401
)

pytestmark = pytest.mark.integration

HOST = Host("hv-1", name="hv-1.example", private_ip="127.0.0.1")
NEW_DOMAIN = "cloudha-it-vm"
NEW_DOMAIN_XML = (
    "<domain type='test'>"
    f"<name>{NEW_DOMAIN}</name><uuid>6b3f5a55-2f1e-4c52-9a0b-0c1d2e3f4a5b</uuid>"
    "<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
    "</domain>"
)


def probe_for(server: LibvirtServer, **kwargs: Any) -> LibvirtHypervisorProbe:
    return LibvirtHypervisorProbe(f"test+tcp://{{ip}}:{server.port}/default", **kwargs)


def wait_until(predicate: Callable[[], bool], *, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def clients_settle_to(server: LibvirtServer, expected: int) -> bool:
    return wait_until(lambda: established_connections(server.port) == expected)


@pytest.fixture
def server(libvirtd_server: LibvirtServer) -> Iterator[LibvirtServer]:  # noqa: F811
    """The session daemon, with the test driver's default state restored after the test."""
    yield libvirtd_server
    holder = libvirtd_server.holder
    test = holder.lookupByName("test")
    state = test.state()[0]
    if state == libvirt.VIR_DOMAIN_PAUSED:
        test.resume()
    elif state != libvirt.VIR_DOMAIN_RUNNING:
        test.create()
    if NEW_DOMAIN in [d.name() for d in holder.listAllDomains()]:
        dom = holder.lookupByName(NEW_DOMAIN)
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_probe_implements_the_port() -> None:
    assert isinstance(LibvirtHypervisorProbe(), HypervisorProbe)


def test_probe_host_reports_the_daemon(server: LibvirtServer) -> None:
    probe = probe_for(server)
    report = probe.probe_host(HOST, timeout=5.0)
    assert report.uri == server.uri
    assert report.hostname
    assert report.version >= 9_000_000
    assert report.running_domains >= 1
    assert clients_settle_to(server, 1), "the probe left its connection open"


def test_domain_state_follows_changes_made_through_another_connection(
    server: LibvirtServer,
) -> None:
    probe = probe_for(server)
    test = server.holder.lookupByName("test")
    assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING

    test.destroy()
    assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.SHUTOFF
    assert probe.probe_host(HOST, timeout=5.0).running_domains == 0

    test.create()
    assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING

    test.suspend()
    assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING  # paused
    test.resume()
    assert clients_settle_to(server, 1)


def test_domain_defined_elsewhere_is_running_then_shutoff_then_missing(
    server: LibvirtServer,
) -> None:
    probe = probe_for(server)
    assert probe.domain_state(HOST, NEW_DOMAIN, timeout=5.0) is DomainState.MISSING

    dom = server.holder.defineXML(NEW_DOMAIN_XML)
    assert probe.domain_state(HOST, NEW_DOMAIN, timeout=5.0) is DomainState.SHUTOFF
    dom.create()
    assert probe.domain_state(HOST, NEW_DOMAIN, timeout=5.0) is DomainState.RUNNING
    assert probe.probe_host(HOST, timeout=5.0).running_domains == 2

    dom.destroy()
    dom.undefine()
    assert probe.domain_state(HOST, NEW_DOMAIN, timeout=5.0) is DomainState.MISSING
    assert probe.domain_state(HOST, "no-such-domain", timeout=5.0) is DomainState.MISSING


def test_nothing_listening_is_a_quick_connection_error() -> None:
    probe = LibvirtHypervisorProbe(f"test+tcp://{{ip}}:{free_port()}/default")
    started = time.monotonic()
    with pytest.raises(ProbeConnectionError, match=r"hv-1.*refused") as info:
        probe.probe_host(HOST, timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert info.value.host_id == "hv-1"
    with pytest.raises(ProbeConnectionError):
        probe.domain_state(HOST, "test", timeout=5.0)


def test_a_driver_error_is_a_connection_error(server: LibvirtServer) -> None:
    probe = LibvirtHypervisorProbe(f"test+tcp://{{ip}}:{server.port}/no/such/file.xml")
    with pytest.raises(ProbeConnectionError) as info:
        probe.probe_host(HOST, timeout=5.0)
    assert info.value.host_id == "hv-1"
    assert clients_settle_to(server, 1)


def test_eight_threads_probe_at_once(server: LibvirtServer) -> None:
    probe = probe_for(server)
    hosts = [Host(f"hv-{i}", private_ip="127.0.0.1") for i in range(8)]
    barrier = threading.Barrier(len(hosts))

    def one(host: Host) -> tuple[int, DomainState]:
        barrier.wait(timeout=5.0)
        report = probe.probe_host(host, timeout=5.0)
        return report.running_domains, probe.domain_state(host, "test", timeout=5.0)

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        results = list(pool.map(one, hosts))
    assert results == [(1, DomainState.RUNNING)] * len(hosts)
    assert probe.lingering == 0
    assert clients_settle_to(server, 1)


@pytest.mark.parametrize("call", ["probe_host", "domain_state"])
def test_a_stopped_daemon_times_out_on_the_deadline(
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
    call: str,
) -> None:
    server = stoppable_libvirtd
    probe = probe_for(server)
    assert probe.probe_host(HOST, timeout=5.0).running_domains == 1

    run: Callable[[], object] = (
        (lambda: probe.probe_host(HOST, timeout=2.0))
        if call == "probe_host"
        else (lambda: probe.domain_state(HOST, "test", timeout=2.0))
    )
    os.kill(server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ProbeTimeout) as info:
            run()
        elapsed = time.monotonic() - started
        assert 1.95 <= elapsed < 2.5
        assert info.value.host_id == "hv-1"
        assert "hv-1" in str(info.value)
        assert server.uri in str(info.value)
        assert probe.lingering == 1
    finally:
        os.kill(server.pid, signal.SIGCONT)

    # Resumed, the daemon answers the abandoned worker, which closes its connection.
    assert wait_until(lambda: probe.lingering == 0), "the abandoned worker never returned"
    assert clients_settle_to(server, 1), "the abandoned worker left its connection open"
    assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING


def test_keepalive_ends_a_call_to_a_daemon_that_hangs_after_connecting(
    stoppable_libvirtd: LibvirtServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = stoppable_libvirtd
    real_open = libvirt.open

    def open_then_hang(uri: str) -> Any:
        conn = real_open(uri)
        os.kill(server.pid, signal.SIGSTOP)
        return conn

    monkeypatch.setattr(libvirt, "open", open_then_hang)
    probe = probe_for(server, keepalive_interval=1, keepalive_count=1)
    started = time.monotonic()
    try:
        with pytest.raises(ProbeTimeout, match="keepalive") as info:
            probe.probe_host(HOST, timeout=10.0)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert time.monotonic() - started < 5.0  # keepalive: about 1 * (1 + 1) s
    assert info.value.host_id == "hv-1"
    assert probe.lingering == 0


def test_a_missing_libvirtd_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirtd_module, "LIBVIRTD", Path("/nonexistent/libvirtd"))
    with pytest.raises(pytest.fail.Exception, match="libvirtd not found"):
        start_libvirtd()
