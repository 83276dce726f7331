"""The lab (cloudha.testing.lab) on real processes: its hosts run, die at their BMC, and leave
nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import paramiko
import pytest

from cloudha.commands import answer_reached, ping_test
from cloudha.heartbeat import parse_heartbeat
from cloudha.model import Host
from cloudha.oobm.power import PowerOperation, PowerState
from cloudha.testing import InMemoryStoragePools
from cloudha.testing.lab.cluster import DOMAIN_ROLES, Lab
from cloudha.testing.lab.processes import alive, python_env, wait_gone
from cloudha.transport.gateway import SSHAgentGateway
from cloudha.transport.ssh import SSHTransport

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), hosts=2, sshd=True) as started:
        yield started


def _stamp(lab: Lab, host_id: str) -> int:
    return parse_heartbeat(lab.heartbeat_file(lab.host(host_id)).read_bytes())


def test_each_host_runs_its_own_domains_on_its_own_libvirtd(lab: Lab) -> None:
    kvm1, kvm2 = lab.hosts
    assert kvm1.uri != kvm2.uri
    assert kvm1.uri.startswith("test+tcp://127.0.0.1:")
    assert kvm1.running() == {f"kvm1-{role}" for role, _ in DOMAIN_ROLES}
    assert kvm2.running() == {f"kvm2-{role}" for role, _ in DOMAIN_ROLES}
    assert lab.where("kvm1-web") == ["kvm1"]
    assert lab.ha_domains("kvm1") == ["kvm1-web", "kvm1-db"]
    # Another client sees what the lab defined (the holder keeps the state), with the UUIDs.
    conn = libvirt.open(kvm1.uri)
    try:
        names = {d.name(): d.UUIDString() for d in conn.listAllDomains()}
    finally:
        conn.close()
    assert names == {d.name: d.uuid for d in kvm1.domains}
    assert "test" not in names  # the driver's default domain is gone from every host


def test_every_host_writes_its_heartbeat_to_the_shared_directory(lab: Lab) -> None:
    files = sorted(p.name for p in (lab.heartbeat_dir / "KVMHA").iterdir())
    assert files == ["hb-127.0.0.11", "hb-127.0.0.12"]
    first = _stamp(lab, "kvm1")
    deadline = time.monotonic() + 5
    while _stamp(lab, "kvm1") == first:
        assert time.monotonic() < deadline, "the heartbeat is not renewed"
        time.sleep(0.1)
    settings = lab.settings_file.read_text()
    assert '"reboot.host.and.alert.management.on.heartbeat.timeout" = false' in settings


def test_the_sshd_runs_this_cloudha_with_its_host_key_verified(lab: Lab) -> None:
    server = lab.host("kvm1").sshd
    assert server is not None
    client = paramiko.SSHClient()
    client.load_host_keys(str(server.server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.server.address,
        port=server.server.port,
        username=server.server.username,
        key_filename=str(server.server.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    try:
        code = "import cloudha, json; print(json.dumps(cloudha.__file__))"
        _, out, _ = client.exec_command(f"{sys.executable} -c '{code}'")
        where = json.loads(out.read())
        # As if installed on the host: `cloudha` on the PATH, the lab's settings in the env.
        _, out, _ = client.exec_command("cloudha --version; printenv CLOUDHA_PING_INTERVAL")
        answer = out.read().decode().split()
    finally:
        client.close()
    assert where == python_env()["PYTHONPATH"].split(os.pathsep)[0] + "/cloudha/__init__.py"
    assert answer[-1] == str(lab.settings["ping.interval"])
    assert "cloudha" in answer[0]
    # Each host's sshd listens on the host's own loopback address.
    assert server.server.address == lab.host("kvm1").address
    assert server.server.known_hosts.read_text().startswith(f"[{server.server.address}]:")


def ping_from(lab: Lab, host_id: str, address: str) -> bool | None:
    """What ``host_id``'s ``ping`` (run over SSH, as the daemon runs it) says of ``address``."""
    sshd = lab.host(host_id).sshd
    assert sshd is not None
    server = sshd.server
    transport = SSHTransport(
        username=server.username,
        port=server.port,
        key_filename=str(server.client_key),
        known_hosts=str(server.known_hosts),
    )
    gateway = SSHAgentGateway(transport, pools=InMemoryStoragePools([]))
    try:
        via = Host(id=host_id, private_ip=lab.host(host_id).address)
        return answer_reached(gateway.send(via, ping_test(address), timeout=10))
    finally:
        transport.close()


def test_a_lab_hosts_ping_reaches_a_lab_host_that_runs_and_nothing_else(lab: Lab) -> None:
    assert (lab.root / "bin" / "ping") == lab.ping_program
    assert ping_from(lab, "kvm1", lab.host("kvm2").address) is True
    assert ping_from(lab, "kvm1", "127.0.0.99") is None  # no lab host's: no answer at all


def test_power_off_at_the_bmc_kills_the_host_and_only_that_host(lab: Lab) -> None:
    # Module-scoped lab: this test runs last in the module and leaves kvm2 dead.
    kvm1, kvm2 = lab.hosts
    pids = [p.pid for p in kvm2.processes()]
    assert len(pids) == 3  # libvirtd, heartbeat writer, sshd
    lab.power_off("kvm2")
    assert not any(alive(pid) for pid in pids)
    assert kvm2.processes() == []
    assert not kvm2.alive()
    assert kvm2.running() == set()
    assert kvm2.bmc.power_state() == "off"
    assert kvm2.bmc.history() == ["off"]
    assert ping_from(lab, "kvm1", kvm2.address) is False  # no reply from a dead host
    stale = _stamp(lab, "kvm2")
    time.sleep(2.1)  # two writer rounds: a live writer would have stamped a later second
    assert _stamp(lab, "kvm2") == stale
    assert kvm1.alive()
    assert kvm1.running() == {d.name for d in kvm1.domains}
    assert len(kvm1.processes()) == 3
    # The BMC still answers: a fencer reads the power back Off.
    from cloudha.oobm.ipmitool import IpmitoolDriver

    result = IpmitoolDriver().execute(kvm2.power_config(), PowerOperation.STATUS, timeout=10)
    assert result.state is PowerState.OFF


LAB_IN_A_CHILD = """
import json, sys
from pathlib import Path
from cloudha.testing.lab.cluster import Lab
lab = Lab(Path(sys.argv[1]), hosts=1, sshd=True).start()
host = lab.hosts[0]
pids = [p.pid for p in host.processes()] + [host.bmc.pid]
print(json.dumps(pids), flush=True)
sys.stdin.read()
"""


def test_a_killed_lab_leaves_no_process_behind(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", LAB_IN_A_CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=python_env(),
    ) as child:
        try:
            assert child.stdout is not None
            pids = json.loads(child.stdout.readline())
            assert len(pids) == 4
            assert all(alive(pid) for pid in pids)
            os.kill(child.pid, signal.SIGKILL)  # no atexit, no finally: only the death signal
            child.wait(10)
            assert wait_gone(pids, 10) == []
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def test_closing_the_lab_stops_everything_and_removes_its_files() -> None:
    lab = Lab(hosts=1).start()
    root = lab.root
    host = lab.hosts[0]
    pids = [p.pid for p in host.processes()] + [host.bmc.pid]
    libvirtd_dir = host.libvirtd.root
    lab.close()
    lab.close()  # idempotent
    assert wait_gone(pids, 5) == []
    assert not root.exists()
    assert not libvirtd_dir.exists()
