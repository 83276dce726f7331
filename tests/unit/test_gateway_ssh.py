"""SSHAgentGateway over a scripted transport: the neighbour ping, and heartbeat readings named
after the inventory's pools (what fence on suspicion matches them by)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cloudha.commands import answer_reached, check_on_host, ping_test
from cloudha.detection.suspicion import decide_suspicion
from cloudha.errors import ConfigurationError, ProbeTimeout
from cloudha.heartbeat import HeartbeatReport
from cloudha.model import Host, Pool
from cloudha.status import Status
from cloudha.testing import InMemoryStoragePools
from cloudha.testing.lab import ping as lab_ping
from cloudha.testing.lab.processes import ProcessId, process_id, write_kill_file
from cloudha.transport.gateway import SSHAgentGateway, ping_wait
from cloudha.transport.ssh import CommandResult

NEIGHBOUR = Host(id="kvm1", cluster="c1", private_ip="10.0.0.1", status=Status.UP)
TARGET = Host(id="kvm2", cluster="c1", private_ip="10.0.0.2", status=Status.ALERT)


class Scripted:
    """A CommandTransport answering every command with one exit status (or raising)."""

    def __init__(
        self, status: int = 0, stdout: bytes = b"", stderr: bytes = b"", raises: bool = False
    ) -> None:
        self.status, self.stdout, self.stderr, self.raises = status, stdout, stderr, raises
        self.calls: list[tuple[str, tuple[str, ...], float]] = []

    def run(
        self, address: str, argv: Sequence[str], *, timeout: float, host_id: str | None = None
    ) -> CommandResult:
        self.calls.append((address, tuple(argv), timeout))
        if self.raises:
            raise ProbeTimeout(f"{address}: timed out", host_id=host_id)
        return CommandResult(tuple(argv), self.status, self.stdout, self.stderr, 0.01)


def gateway(transport: Scripted, **options: object) -> SSHAgentGateway:
    pools = InMemoryStoragePools([Pool("nfs1", "/mnt/nfs1", cluster="c1")])
    return SSHAgentGateway(transport, pools=pools, **options)  # type: ignore[arg-type]


# -- PingTest -------------------------------------------------------------------------


def test_the_neighbour_runs_ping_once_with_a_bounded_wait() -> None:
    transport = Scripted(0)
    answer = gateway(transport).send(NEIGHBOUR, ping_test("10.0.0.2"), timeout=10)
    assert answer_reached(answer) is True
    address, argv, timeout = transport.calls[0]
    assert address == "10.0.0.1"  # run on the neighbour, never on the target
    assert argv == ("ping", "-c", "1", "-n", "-q", "-W", "5", "10.0.0.2")
    assert timeout == 10


def test_exit_status_1_is_no_reply() -> None:
    answer = gateway(Scripted(1)).send(NEIGHBOUR, ping_test("10.0.0.2"), timeout=10)
    assert answer_reached(answer) is False
    assert "does not answer" in answer.details


@pytest.mark.parametrize(
    ("status", "stderr"),
    [(2, b"ping: socket: Operation not permitted\n"), (127, b"sh: ping: not found\n"), (-1, b"")],
)
def test_any_other_exit_status_is_no_answer_never_no_reply(status: int, stderr: bytes) -> None:
    """No permission, no ping program, a killed ping: the neighbour could not be asked."""
    answer = gateway(Scripted(status, stderr=stderr)).send(
        NEIGHBOUR, ping_test("10.0.0.2"), timeout=10
    )
    assert answer_reached(answer) is None
    assert f"exited {status}" in answer.details
    if stderr:
        assert stderr.decode().strip() in answer.details


def test_a_transport_failure_raises_as_for_every_command() -> None:
    with pytest.raises(ProbeTimeout):
        gateway(Scripted(raises=True)).send(NEIGHBOUR, ping_test("10.0.0.2"), timeout=1)


def test_a_ping_through_a_router_or_of_no_address_is_not_run() -> None:
    transport = Scripted(0)
    gw = gateway(transport)
    routed = gw.send(NEIGHBOUR, ping_test("192.168.1.5", router_ip="10.1.1.1"), timeout=10)
    assert answer_reached(routed) is None
    for ip in ("", "-f"):
        assert answer_reached(gw.send(NEIGHBOUR, ping_test(ip), timeout=10)) is None
    assert transport.calls == []


def test_without_a_ping_command_every_ping_is_unsupported() -> None:
    transport = Scripted(1)
    gw = gateway(transport, ping_command=None)
    assert answer_reached(gw.send(NEIGHBOUR, ping_test("10.0.0.2"), timeout=10)) is None
    assert transport.calls == []
    with pytest.raises(ConfigurationError, match="ping_command"):
        gateway(transport, ping_command=())


def test_a_custom_ping_command() -> None:
    transport = Scripted(0)
    gateway(transport, ping_command=("/usr/bin/sudo", "ping")).send(
        NEIGHBOUR, ping_test("10.0.0.2"), timeout=4
    )
    assert transport.calls[0][1][:3] == ("/usr/bin/sudo", "ping", "-c")


@pytest.mark.parametrize(("timeout", "wait"), [(0.5, 1), (1, 1), (3, 1), (4, 2), (10, 5), (60, 5)])
def test_ping_wait(timeout: float, wait: int) -> None:
    assert ping_wait(timeout) == wait


# -- heartbeat readings named after the pools ------------------------------------------


def report(mount: str, age: float) -> bytes:
    reading = {
        "pool_id": mount,  # the remote checker knows the mount point only
        "mount_point": mount,
        "verdict": "DEAD",
        "reason": f"heartbeat on {mount} is {age} s old",
        "written_at": int(time.time() - age),
        "age": age,
    }
    document = {
        "target_ip": "10.0.0.2",
        "verdict": "DEAD",
        "reason": "stale",
        "threshold": 9.0,
        "readings": [reading],
    }
    return json.dumps(document).encode()


def test_heartbeat_readings_carry_the_inventorys_pool_ids() -> None:
    transport = Scripted(0, stdout=report("/mnt/nfs1", 30.0))
    answer = gateway(transport).send(
        NEIGHBOUR, check_on_host(TARGET, fail_on_one_pool=False), timeout=10
    )
    assert answer.result
    parsed = HeartbeatReport.from_dict(answer.data)
    assert [(r.pool_id, r.mount_point) for r in parsed.readings] == [("nfs1", "/mnt/nfs1")]
    argv = transport.calls[0][1]
    assert argv[argv.index("--mount") + 1] == "/mnt/nfs1"
    # What fence on suspicion then sees: the pool read, and late.
    decision = decide_suspicion(
        host_id="kvm2",
        status=Status.ALERT,
        agent=None,
        pings={"kvm1": False},
        heartbeat_pools=["nfs1"],
        heartbeat_ages={r.pool_id: r.age for r in parsed.readings if r.age is not None},
        late=7.0,
        fence_ready=True,
        fence_answer="BMC answered: power is On",
    )
    assert decision.qualifies, decision.reason


def test_a_reading_of_a_mount_the_gateway_did_not_ask_keeps_its_name() -> None:
    transport = Scripted(0, stdout=report("/mnt/other", 30.0))
    answer = gateway(transport).send(
        NEIGHBOUR, check_on_host(TARGET, fail_on_one_pool=False), timeout=10
    )
    parsed = HeartbeatReport.from_dict(answer.data)
    assert [r.pool_id for r in parsed.readings] == ["/mnt/other"]


# -- the lab's ping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "found"),
    [
        (["-c", "1", "-n", "-q", "-W", "1", "127.0.0.12"], "127.0.0.12"),
        (["127.0.0.12"], "127.0.0.12"),
        (["-c", "1"], None),
        (["-c", "1", "a", "b"], None),
    ],
)
def test_the_lab_ping_finds_its_destination(args: list[str], found: str | None) -> None:
    assert lab_ping.target(args) == found


def test_the_lab_ping_answers_while_a_listed_process_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    me = process_id(os.getpid())
    assert me is not None
    live, dead = tmp_path / "live.pids", tmp_path / "dead.pids"
    write_kill_file(live, [ProcessId(me.pid, me.start + 1), me])  # a reused pid, then us
    write_kill_file(dead, [ProcessId(me.pid, me.start + 1)])  # only a pid someone else has now
    hosts = tmp_path / "addresses.json"
    hosts.write_text(json.dumps({"127.0.0.11": str(live), "127.0.0.12": str(dead)}))
    ping = [str(hosts), "-c", "1", "-n", "-q", "-W", "1"]
    assert lab_ping.main([*ping, "127.0.0.11"]) == 0
    assert lab_ping.main([*ping, "127.0.0.12"]) == 1
    assert lab_ping.main([*ping, "127.0.0.13"]) == 2
    assert "Name or service not known" in capsys.readouterr().err
    assert lab_ping.main([str(tmp_path / "missing.json"), "127.0.0.11"]) == 2
    assert lab_ping.main([]) == 2
    assert lab_ping.alive(tmp_path / "no-such.pids") is False
