"""The KVM investigator asking a "neighbour" over real SSH, which runs cloudha's heartbeat checker.

Every "host" is the loopback sshd; the target host's address is never
contacted (its gateway address raises, as for a host that is down).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudha import (
    Host,
    KVMInvestigator,
    Pool,
    ProbeConnectionError,
    Status,
    SystemClock,
    Verdict,
    host_outcome,
)
from cloudha.commands import answer_verdict, check_on_host, check_vm_activity
from cloudha.heartbeat import HeartbeatChecker, HeartbeatTiming, format_heartbeat, heartbeat_path
from cloudha.testing import InMemoryHostDirectory, InMemoryStoragePools
from cloudha.transport.gateway import SSHAgentGateway
from cloudha.transport.ssh import SFTPStorage, SSHTransport
from tests.integration.sshd import SshServer, sshd_server  # noqa: F401

pytestmark = pytest.mark.integration

TARGET_IP = "10.251.7.1"  # only a name in the heartbeat file; never contacted
# The "neighbour" runs this checkout's cloudha (not whichever one is installed).
REMOTE_CLOUDHA = (
    "env",
    f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
    sys.executable,
    "-m",
    "cloudha",
)


def loopback_only(server: SshServer) -> Callable[[Host], str]:
    def address(host: Host) -> str:
        if host.id == "target":
            raise ProbeConnectionError("target is down", host_id=host.id)
        return server.address

    return address


@pytest.fixture
def world(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[KVMInvestigator, Host, Path, SSHTransport]]:
    mount = tmp_path / "nfs1"
    mount.mkdir()
    transport = SSHTransport(
        username=sshd_server.username,
        port=sshd_server.port,
        key_filename=sshd_server.client_key,
        known_hosts=sshd_server.known_hosts,
        connect_timeout=5.0,
    )
    pools = InMemoryStoragePools([Pool("nfs1", str(mount), cluster="c1")])
    gateway = SSHAgentGateway(
        transport,
        pools=pools,
        remote_command=REMOTE_CLOUDHA,
        address=loopback_only(sshd_server),
        allow_unmounted=True,  # the pool is a directory of tmp_path
    )
    # The target's writer arms a watchdog: its stale heartbeat proves it dead.
    target = Host(
        id="target", status=Status.ALERT, cluster="c1", private_ip=TARGET_IP, watchdog=True
    )
    neighbour = Host(id="neighbour", status=Status.UP, cluster="c1", private_ip="127.0.0.1")
    directory = InMemoryHostDirectory([target, neighbour])
    inv = KVMInvestigator(
        SystemClock(), directory=directory, gateway=gateway, pools=pools, timeout=30.0
    )
    yield inv, target, mount, transport
    transport.close()


def write_heartbeat(mount: Path, epoch: float) -> Path:
    path = Path(heartbeat_path(str(mount), TARGET_IP))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(format_heartbeat(epoch))
    return path


def test_neighbour_over_ssh_sees_a_fresh_heartbeat(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    inv, target, mount, _ = world
    write_heartbeat(mount, time.time())
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.ALIVE
    assert host_outcome(finding) is Status.DISCONNECTED
    assert finding.evidence["neighbours"]["neighbour"].startswith("ALIVE")
    assert finding.evidence["host"].startswith("no answer")


def test_neighbour_over_ssh_sees_a_stale_heartbeat(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    inv, target, mount, _ = world
    write_heartbeat(mount, time.time() - 3600)
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.DEAD
    assert host_outcome(finding) is Status.DOWN


def test_garbage_or_missing_heartbeat_over_ssh_is_never_dead(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    inv, target, mount, _ = world
    assert inv.is_agent_alive(target).verdict is Verdict.UNKNOWN  # no file at all
    write_heartbeat(mount, 0).write_bytes(b"not a number\n")
    finding = inv.is_agent_alive(target)
    assert finding.verdict is Verdict.UNKNOWN
    assert host_outcome(finding) is Status.DISCONNECTED  # nobody could judge: Alert, no HA


def test_gateway_health_check_runs_cloudha_remotely(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    inv, _, _, _ = world
    neighbour = inv.directory.find_host("neighbour")
    assert neighbour is not None
    assert inv.gateway.check_health(neighbour, timeout=30.0) is True


def test_checker_reads_the_heartbeat_over_sftp(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
    sshd_server: SshServer,  # noqa: F811
) -> None:
    _, _, mount, transport = world
    storage = SFTPStorage(transport, sshd_server.address, timeout=10.0)
    checker = HeartbeatChecker(storage, SystemClock(), HeartbeatTiming())
    pools = [Pool("nfs1", str(mount))]
    write_heartbeat(mount, time.time() - 5)
    assert checker.check(pools, TARGET_IP).verdict is Verdict.ALIVE
    write_heartbeat(mount, time.time() - 3600)
    report = checker.check(pools, TARGET_IP)
    assert report.verdict is Verdict.DEAD
    assert report.readings[0].age is not None
    assert report.readings[0].age > 3000


def test_the_vm_activity_check_runs_on_the_neighbour_over_ssh(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    """Host-HA's CheckVMActivityOnStoragePoolCommand, answered by ``cloudha heartbeat activity``."""
    inv, target, mount, _ = world
    neighbour = inv.directory.find_host("neighbour")
    assert neighbour is not None
    volume = mount / "volumes" / "vm1.qcow2"
    volume.parent.mkdir()
    volume.write_bytes(b"disk")
    old = time.time() - 600
    os.utime(volume, (old, old))
    write_heartbeat(mount, time.time() - 3600)  # stale; no watchdog on this target
    unwatched = Host(id="target", cluster="c1", private_ip=TARGET_IP, watchdog=False)
    pool = Pool("nfs1", str(mount), cluster="c1")
    suspect = time.time() - 60
    command = check_vm_activity(unwatched, pool, ["volumes/vm1.qcow2"], suspect_time=suspect)
    verdict, reason = answer_verdict(inv.gateway.send(neighbour, command, timeout=30.0))
    assert verdict is Verdict.DEAD, reason
    assert "no volume changed" in reason
    volume.write_bytes(b"disk, written again")  # the VM still writes: activity
    verdict, reason = answer_verdict(inv.gateway.send(neighbour, command, timeout=30.0))
    assert verdict is Verdict.ALIVE, reason
    # A pool the asked host does not mount is refused, not judged.
    elsewhere = check_vm_activity(target, Pool("p9", "/mnt/p9"), [], suspect_time=suspect)
    answer = inv.gateway.send(neighbour, elsewhere, timeout=30.0)
    assert not answer.result
    assert "does not mount" in answer.details


def test_a_neighbour_whose_pool_is_not_mounted_refuses_to_judge(
    world: tuple[KVMInvestigator, Host, Path, SSHTransport],
) -> None:
    """Without allow_unmounted the remote checker refuses a plain directory: no verdict."""
    inv, target, mount, transport = world
    write_heartbeat(mount, time.time() - 3600)  # stale: read from the local disk it would be DEAD
    assert isinstance(inv.gateway, SSHAgentGateway)
    strict = SSHAgentGateway(
        transport,
        pools=inv.pools,
        remote_command=REMOTE_CLOUDHA,
        address=inv.gateway.address,
    )
    neighbour = inv.directory.find_host("neighbour")
    assert neighbour is not None
    answer = strict.send(neighbour, check_on_host(target, fail_on_one_pool=False), timeout=30.0)
    assert not answer.result
    assert "checker exited 2" in answer.details
    assert f"nothing is mounted at {mount}" in answer.details
    verdict, _reason = answer_verdict(answer)
    assert verdict is not Verdict.DEAD
