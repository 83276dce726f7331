"""The escalation ladder's agent restart over real SSH (the loopback sshd of the suite).

The "host" is the loopback sshd; ``systemctl`` is a fake script first on the
PATH of the restart command (``env PATH=… systemctl restart <service>``), which
records its arguments, so nothing on the test machine is restarted.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudha import Host, Status
from cloudha.detection.escalation import AgentRestartLevel, EscalationLadder, FenceLevel
from cloudha.errors import ProbeConnectionError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.ports import RecoveryOutcome
from cloudha.testing import FakeClock, check_host_shell
from cloudha.transport.shell import SSHHostShell
from tests.integration.sshd import SshServer, sshd_server  # noqa: F401
from tests.integration.test_ssh import keygen, make_transport

pytestmark = pytest.mark.integration

HOST = Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="127.0.0.1")
DEAD = Host(id="h9", status=Status.ALERT, cluster="c1", private_ip="10.255.255.1")


def loopback(server: SshServer) -> Callable[[Host], str]:
    def address(host: Host) -> str:
        if host.id == DEAD.id:
            raise ProbeConnectionError(f"{host.id} is down", host_id=host.id)
        return server.address

    return address


@pytest.fixture
def shell(sshd_server: SshServer) -> Iterator[SSHHostShell]:  # noqa: F811
    with make_transport(sshd_server) as transport:
        yield SSHHostShell(transport, address=loopback(sshd_server))


def fake_systemctl(tmp_path: Path, *, exit_status: int = 0, stderr: str = "") -> Path:
    """A ``systemctl`` in ``tmp_path/bin`` appending its argv to ``tmp_path/calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {tmp_path / "calls"}\n'
        + (f"echo '{stderr}' >&2\n" if stderr else "")
        + f"exit {exit_status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def restart_level(shell: SSHHostShell, bin_dir: Path, service: str) -> AgentRestartLevel:
    path = f"{bin_dir}:{os.defpath}"
    return AgentRestartLevel(
        shell,
        service=service,
        timeout=180.0,
        command_timeout=15.0,
        command=("env", f"PATH={path}", "systemctl", "restart", "{service}"),
    )


def test_the_ssh_shell_keeps_the_host_shell_contract(shell: SSHHostShell) -> None:
    check_host_shell(shell, HOST, DEAD, timeout=15.0)


def test_the_ladder_restarts_the_agent_over_ssh_and_a_reconnect_confirms_it(
    shell: SSHHostShell, tmp_path: Path
) -> None:
    bin_dir = fake_systemctl(tmp_path)
    clock = FakeClock(100.0)
    log = EvidenceLog()
    ladder = EscalationLadder(
        [restart_level(shell, bin_dir, "cloudstack-agent"), FenceLevel()],
        clock=clock,
        recorder=Recorder(log, clock, "ms1"),
    )
    assert ladder.offer(HOST, proven_alive=True) is True
    assert (tmp_path / "calls").read_text() == "restart cloudstack-agent\n"
    clock.advance(20.0)
    ladder.reset("h1", "h1 is Up again")  # the agent reconnected
    outcomes = [(r.details["level"], r.details["outcome"]) for r in log.records()]
    assert outcomes == [("agent.restart", "started"), ("agent.restart", "succeeded")]
    assert log.records()[1].reason == "h1 is Up again 20s after agent.restart"


def test_a_failing_systemctl_is_a_failed_level_with_its_message(
    shell: SSHHostShell, tmp_path: Path
) -> None:
    bin_dir = fake_systemctl(
        tmp_path,
        exit_status=5,
        stderr="Failed to restart nope.service: Unit nope.service not found.",
    )
    result = restart_level(shell, bin_dir, "nope").attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert "exited with status 5: Failed to restart nope.service" in result.reason
    assert (tmp_path / "calls").read_text() == "restart nope\n"


def test_a_host_whose_key_changed_is_not_logged_in_to(
    sshd_server: SshServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    other = keygen(tmp_path / "other_host")
    key_type, key = Path(f"{other}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {key_type} {key}\n")
    bin_dir = fake_systemctl(tmp_path)
    with make_transport(sshd_server, known_hosts=known_hosts) as transport:
        shell = SSHHostShell(transport, address=loopback(sshd_server))
        result = restart_level(shell, bin_dir, "cloudstack-agent").attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert "does not match" in result.reason
    assert key not in result.reason
    assert not (tmp_path / "calls").exists()  # nothing ran on a host we could not verify


def test_an_unreachable_host_fails_the_level(sshd_server: SshServer) -> None:  # noqa: F811
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with make_transport(sshd_server, port=port) as transport:
        shell = SSHHostShell(transport, address=loopback(sshd_server))
        level = AgentRestartLevel(
            shell, service="cloudstack-agent", timeout=180.0, command_timeout=5.0
        )
        result = level.attempt(HOST)
    assert result.outcome is RecoveryOutcome.FAILED
    assert "over SSH failed" in result.reason
