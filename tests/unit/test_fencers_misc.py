"""The libvirt, SSH soft and Recreatable fencers, against fakes and a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytest

from cloudha.errors import (
    ConfigurationError,
    ProbeConnectionError,
    ProbeError,
    ProbeHostKeyError,
    ProbeTimeout,
)
from cloudha.fencing.base import FenceBuilder, FenceOutcome
from cloudha.fencing.libvirt import LibvirtFencer
from cloudha.fencing.recreatable import RecreatableFencer, Volume, VolumeDirectory
from cloudha.fencing.ssh import DEFAULT_RESTART_COMMAND, RemoteShell, SSHSoftFencer
from cloudha.model import Host, HostType, HypervisorType, Vm, VmType
from cloudha.ports import DomainState, HypervisorControl, HypervisorReport
from cloudha.status import Status
from cloudha.testing import FakeClock
from cloudha.testing.contract import check_fencer
from cloudha.transport.ssh import CommandResult, SSHTransport

HOST = Host(id="h1", status=Status.DOWN, cluster="c1", private_ip="192.0.2.11")
VM = Vm(id="vm1", name="i-2-7-VM", host_id="h1", ha_enabled=True)
SECRET = "hunter2-Secret"


# -- fakes ----------------------------------------------------------------------------------


class FakeControl:
    """A HypervisorControl over a dict of domain states.

    ``error`` (if set) is raised by the call named in ``fail_on``; ``stuck``
    domains survive a destroy; ``vanish`` domains are transient (MISSING
    once destroyed); each call moves the clock by ``takes`` seconds.
    """

    def __init__(
        self,
        clock: FakeClock,
        domains: dict[str, DomainState] | None = None,
        *,
        error: ProbeError | None = None,
        fail_on: str = "domain_state",
        stuck: bool = False,
        vanish: bool = False,
        takes: float = 0.0,
    ) -> None:
        self.clock = clock
        self.domains = {} if domains is None else domains
        self.error = error
        self.fail_on = fail_on
        self.stuck = stuck
        self.vanish = vanish
        self.takes = takes
        self.calls: list[tuple[str, str, str, float]] = []

    def _enter(self, call: str, host: Host, domain: str, timeout: float) -> None:
        self.calls.append((call, host.id, domain, timeout))
        self.clock.advance(self.takes)
        if self.error is not None and call == self.fail_on:
            raise self.error

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        self._enter("probe_host", host, "", timeout)
        return HypervisorReport(uri=f"fake://{host.id}")

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        self._enter("domain_state", host, domain, timeout)
        return self.domains.get(domain, DomainState.MISSING)

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        self._enter("destroy_domain", host, domain, timeout)
        state = self.domains.get(domain, DomainState.MISSING)
        if state in (DomainState.RUNNING, DomainState.OTHER) and not self.stuck:
            if self.vanish:
                del self.domains[domain]
            else:
                self.domains[domain] = DomainState.SHUTOFF
        return self.domains.get(domain, DomainState.MISSING)


class FakeShell:
    """A RemoteShell answering ``result`` (or raising it); counts ``close()``."""

    def __init__(
        self,
        clock: FakeClock,
        result: int | BaseException = 0,
        *,
        stderr: bytes = b"",
        takes: float = 0.0,
        close_error: BaseException | None = None,
    ) -> None:
        self.clock = clock
        self.result = result
        self.stderr = stderr
        self.takes = takes
        self.close_error = close_error
        self.runs: list[tuple[str, tuple[str, ...], float, str | None]] = []
        self.closed = 0

    def run(
        self,
        address: str,
        argv: Sequence[str],
        *,
        timeout: float,
        host_id: str | None = None,
    ) -> CommandResult:
        self.runs.append((address, tuple(argv), timeout, host_id))
        self.clock.advance(self.takes)
        if isinstance(self.result, BaseException):
            raise self.result
        return CommandResult(tuple(argv), self.result, b"", self.stderr, self.takes)

    def close(self) -> None:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error


class Connector:
    """``connect`` for the SSH fencer: hands out ``shell`` (or raises ``error``)."""

    def __init__(
        self,
        shell: FakeShell | None = None,
        *,
        error: BaseException | None = None,
        takes: float = 0.0,
    ) -> None:
        self.shell = shell
        self.error = error
        self.takes = takes
        self.hosts: list[str] = []

    def __call__(self, host: Host) -> RemoteShell:
        self.hosts.append(host.id)
        if self.shell is not None:
            self.shell.clock.advance(self.takes)
        if self.error is not None:
            raise self.error
        assert self.shell is not None
        return self.shell


class FakeVolumes:
    """A VolumeDirectory over a dict of VM id to volumes; may raise ``error``."""

    def __init__(
        self,
        volumes: dict[str, list[Volume]] | None = None,
        *,
        error: ProbeError | None = None,
    ) -> None:
        self.volumes = {} if volumes is None else volumes
        self.error = error
        self.asked: list[str] = []

    def volumes_of(self, vm: Vm) -> Sequence[Volume]:
        self.asked.append(vm.id)
        if self.error is not None:
            raise self.error
        return self.volumes.get(vm.id, [])


# -- LibvirtFencer ----------------------------------------------------------------------------


def libvirt_fencer(control: FakeControl, timeout: float = 10.0) -> LibvirtFencer:
    return LibvirtFencer(control.clock, control=control, timeout=timeout)


def test_the_fakes_implement_the_ports() -> None:
    clock = FakeClock()
    assert isinstance(FakeControl(clock), HypervisorControl)
    assert isinstance(FakeShell(clock), RemoteShell)
    assert isinstance(FakeVolumes(), VolumeDirectory)
    assert isinstance(SSHTransport(), RemoteShell)
    for fencer in (
        libvirt_fencer(FakeControl(clock)),
        SSHSoftFencer(clock, connect=Connector(FakeShell(clock)), timeout=5.0),
        RecreatableFencer(clock, volumes=FakeVolumes()),
    ):
        assert isinstance(fencer, FenceBuilder)


def test_libvirt_fencer_destroys_a_running_domain_and_reads_it_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cloudha.fencing.libvirt")
    clock = FakeClock(100.0)
    control = FakeControl(clock, {VM.name: DomainState.RUNNING}, takes=0.5)
    fencer = libvirt_fencer(control)
    assert fencer.name == "LibvirtFencer"
    result = fencer.fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.fencer == "LibvirtFencer"
    assert dict(result.evidence) == {
        "domain": "i-2-7-VM",
        "before": "Running",
        "after": "Shutoff",
        "action": "destroy",
        "proof": "domain read back Shutoff",
    }
    assert "destroyed" in result.reason
    assert control.domains[VM.name] is DomainState.SHUTOFF
    assert "destroyed domain i-2-7-VM on host h1" in caplog.text
    assert (result.started_at, result.finished_at) == (100.0, 101.0)
    # The destroy gets what is left of the fencer's timeout.
    assert control.calls == [
        ("domain_state", "h1", "i-2-7-VM", 10.0),
        ("destroy_domain", "h1", "i-2-7-VM", 9.5),
    ]


@pytest.mark.parametrize("before", [DomainState.SHUTOFF, DomainState.MISSING])
def test_libvirt_fencer_on_a_domain_already_stopped_is_fenced_without_action(
    before: DomainState,
) -> None:
    clock = FakeClock()
    domains: dict[str, DomainState] = {} if before is DomainState.MISSING else {VM.name: before}
    result = libvirt_fencer(FakeControl(clock, domains)).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["before"] == before.value
    assert result.evidence["after"] == before.value
    assert result.evidence["action"] == "none"


def test_libvirt_fencer_says_why_a_missing_domain_is_proof() -> None:
    result = libvirt_fencer(FakeControl(FakeClock())).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["after"] == "Missing"
    assert result.evidence["proof"] == "the hypervisor has no such domain"
    assert "cannot run there" in result.reason


def test_libvirt_fencer_a_transient_domain_gone_after_destroy_is_fenced() -> None:
    control = FakeControl(FakeClock(), {VM.name: DomainState.RUNNING}, vanish=True)
    result = libvirt_fencer(control).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert (result.evidence["before"], result.evidence["after"]) == ("Running", "Missing")
    assert result.evidence["action"] == "destroy"


@pytest.mark.parametrize("state", [DomainState.RUNNING, DomainState.OTHER])
def test_libvirt_fencer_a_domain_still_up_after_destroy_is_not_fenced(
    state: DomainState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudha.fencing.libvirt")
    control = FakeControl(FakeClock(), {VM.name: state}, stuck=True)
    result = libvirt_fencer(control).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence["after"] == state.value
    assert result.evidence["action"] == "destroy"
    assert "still" in result.reason
    assert "after destroy" in caplog.text
    assert "destroyed domain" not in caplog.text


@pytest.mark.parametrize("fail_on", ["domain_state", "destroy_domain"])
@pytest.mark.parametrize(
    "error",
    [
        ProbeTimeout("libvirt did not answer", host_id="h1"),
        ProbeConnectionError("refused", host_id="h1"),
    ],
)
def test_libvirt_fencer_a_silent_hypervisor_is_not_fenced(fail_on: str, error: ProbeError) -> None:
    control = FakeControl(
        FakeClock(), {VM.name: DomainState.RUNNING}, error=error, fail_on=fail_on, takes=1.0
    )
    result = libvirt_fencer(control).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence["error"] == type(error).__name__
    assert result.finished_at > result.started_at
    if fail_on == "domain_state":
        assert [c[0] for c in control.calls] == ["domain_state"]


def test_libvirt_fencer_out_of_time_after_the_first_read_does_not_destroy() -> None:
    control = FakeControl(FakeClock(), {VM.name: DomainState.RUNNING}, takes=10.0)
    result = libvirt_fencer(control, timeout=10.0).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence == {"domain": VM.name, "before": "Running"}
    assert [c[0] for c in control.calls] == ["domain_state"]
    assert control.domains[VM.name] is DomainState.RUNNING


@pytest.mark.parametrize("hypervisor", [HypervisorType.KVM, HypervisorType.LXC])
def test_libvirt_fencer_supports_kvm_and_lxc(hypervisor: HypervisorType) -> None:
    host = Host(id="h1", hypervisor=hypervisor, private_ip="192.0.2.11")
    fencer = libvirt_fencer(FakeControl(FakeClock()))
    assert fencer.supports(VM, host)


@pytest.mark.parametrize(
    "hypervisor",
    [h for h in HypervisorType if h not in (HypervisorType.KVM, HypervisorType.LXC)],
)
def test_libvirt_fencer_is_not_applicable_to_other_hypervisors(
    hypervisor: HypervisorType,
) -> None:
    clock = FakeClock(5.0)
    control = FakeControl(clock, {VM.name: DomainState.RUNNING})
    result = libvirt_fencer(control).fence_off(VM, Host(id="x1", hypervisor=hypervisor))
    assert result.outcome is FenceOutcome.NOT_APPLICABLE
    assert control.calls == []
    assert (result.started_at, result.finished_at) == (5.0, 5.0)


def test_libvirt_fencer_hypervisors_can_be_chosen() -> None:
    clock = FakeClock()
    fencer = LibvirtFencer(
        clock, control=FakeControl(clock), timeout=1.0, hypervisors=[HypervisorType.KVM]
    )
    assert not fencer.supports(VM, Host(id="l", hypervisor=HypervisorType.LXC))


def test_libvirt_fencer_needs_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        libvirt_fencer(FakeControl(FakeClock()), timeout=0)


def test_libvirt_fencer_keeps_the_fence_builder_contract() -> None:
    clock = FakeClock()
    check_fencer(libvirt_fencer(FakeControl(clock, {VM.name: DomainState.RUNNING})))
    check_fencer(
        libvirt_fencer(FakeControl(clock, error=ProbeTimeout("silent"), fail_on="destroy_domain"))
    )


# -- SSHSoftFencer ----------------------------------------------------------------------------


def ssh_fencer(
    connect: Callable[[Host], RemoteShell],
    clock: FakeClock,
    timeout: float = 10.0,
    restart_command: Sequence[str] = DEFAULT_RESTART_COMMAND,
) -> SSHSoftFencer:
    return SSHSoftFencer(clock, connect=connect, timeout=timeout, restart_command=restart_command)


def test_ssh_fencer_restarts_the_agent_and_still_does_not_fence() -> None:
    clock = FakeClock(50.0)
    shell = FakeShell(clock, 0, takes=2.0)
    connect = Connector(shell)
    fencer = ssh_fencer(connect, clock)
    assert fencer.name == "SSHSoftFencer"
    result = fencer.fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert not result.fenced
    assert result.evidence == {"recovery": "agent restarted", "exit_status": 0}
    assert "not proof" in result.reason
    assert connect.hosts == ["h1"]
    assert shell.runs == [("192.0.2.11", DEFAULT_RESTART_COMMAND, 10.0, "h1")]
    assert DEFAULT_RESTART_COMMAND == ("systemctl", "restart", "cloudstack-agent")
    assert shell.closed == 1
    assert (result.started_at, result.finished_at) == (50.0, 52.0)


def test_ssh_fencer_reports_a_failing_command() -> None:
    clock = FakeClock()
    stderr = b"Failed to restart cloudstack-agent.service: Unit not found.\nmore\n" + b"x" * 500
    shell = FakeShell(clock, 5, stderr=stderr)
    result = ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence == {
        "exit_status": 5,
        "error": "Failed to restart cloudstack-agent.service: Unit not found.",
    }
    assert "status 5" in result.reason
    assert shell.closed == 1


def test_ssh_fencer_keeps_only_a_short_first_line_of_stderr() -> None:
    clock = FakeClock()
    shell = FakeShell(clock, 1, stderr=b"\n  " + b"y" * 500 + b"\nsecond")
    result = ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert result.evidence["error"] == "y" * 200


def test_ssh_fencer_a_command_killed_without_output_has_no_error_line() -> None:
    clock = FakeClock()
    shell = FakeShell(clock, -1)
    result = ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence == {"exit_status": -1}


@pytest.mark.parametrize(
    "error",
    [
        ProbeTimeout("timed out", host_id="h1"),
        ProbeHostKeyError("host key mismatch", host_id="h1"),
        ProbeConnectionError("refused", host_id="h1"),
        ConfigurationError("bad address", key="address"),
    ],
)
def test_ssh_fencer_a_failed_run_is_not_fenced_and_closes_the_shell(error: Exception) -> None:
    clock = FakeClock()
    shell = FakeShell(clock, error)
    result = ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence["error"] == type(error).__name__
    assert shell.closed == 1


@pytest.mark.parametrize(
    "error",
    [ProbeConnectionError("no route", host_id="h1"), ConfigurationError("no key file")],
)
def test_ssh_fencer_a_failed_connect_is_not_fenced(error: Exception) -> None:
    clock = FakeClock()
    shell = FakeShell(clock)
    result = ssh_fencer(Connector(shell, error=error), clock).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence["error"] == type(error).__name__
    assert shell.runs == []
    assert shell.closed == 0  # no shell was handed out


def test_ssh_fencer_out_of_time_after_connecting_runs_nothing_but_closes() -> None:
    clock = FakeClock()
    shell = FakeShell(clock)
    result = ssh_fencer(Connector(shell, takes=10.0), clock, timeout=10.0).fence_off(VM, HOST)
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence == {"error": "out of time"}
    assert shell.runs == []
    assert shell.closed == 1


def test_ssh_fencer_the_command_gets_what_is_left_after_connecting() -> None:
    clock = FakeClock()
    shell = FakeShell(clock)
    ssh_fencer(Connector(shell, takes=3.0), clock, timeout=10.0).fence_off(VM, HOST)
    assert shell.runs[0][2] == 7.0


def test_ssh_fencer_a_failing_close_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    shell = FakeShell(clock, 0, close_error=OSError("socket already gone"))
    with caplog.at_level(logging.WARNING, logger="cloudha.fencing.ssh"):
        result = ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert result.evidence["recovery"] == "agent restarted"
    assert "closing the shell to host h1 failed" in caplog.text


def test_ssh_fencer_a_bug_in_the_shell_propagates_but_the_shell_is_closed() -> None:
    clock = FakeClock()
    shell = FakeShell(clock, RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        ssh_fencer(Connector(shell), clock).fence_off(VM, HOST)
    assert shell.closed == 1


@pytest.mark.parametrize(
    "host",
    [
        Host(id="no-ip", status=Status.DOWN),
        Host(id="cpvm", type=HostType.CONSOLE_PROXY, private_ip="192.0.2.12"),
        Host(id="vmw", hypervisor=HypervisorType.VMWARE, private_ip="192.0.2.13"),
        Host(id="xen", hypervisor=HypervisorType.XEN_SERVER, private_ip="192.0.2.14"),
    ],
)
def test_ssh_fencer_is_not_applicable_without_an_address_or_an_agent(host: Host) -> None:
    clock = FakeClock()
    connect = Connector(FakeShell(clock))
    result = ssh_fencer(connect, clock).fence_off(VM, host)
    assert result.outcome is FenceOutcome.NOT_APPLICABLE
    assert connect.hosts == []


def test_ssh_fencer_supports_lxc_hosts_and_chosen_hypervisors() -> None:
    clock = FakeClock()
    lxc = Host(id="lxc", hypervisor=HypervisorType.LXC, private_ip="192.0.2.15")
    assert ssh_fencer(Connector(FakeShell(clock)), clock).supports(VM, lxc)
    only_kvm = SSHSoftFencer(
        clock, connect=Connector(FakeShell(clock)), timeout=1.0, hypervisors=[HypervisorType.KVM]
    )
    assert not only_kvm.supports(VM, lxc)


def test_ssh_fencer_runs_the_configured_command() -> None:
    clock = FakeClock()
    shell = FakeShell(clock)
    command = ["service", "cloudstack-agent", "restart"]
    ssh_fencer(Connector(shell), clock, restart_command=command).fence_off(VM, HOST)
    assert shell.runs[0][1] == ("service", "cloudstack-agent", "restart")


@pytest.mark.parametrize("command", [[], "systemctl restart x", ["systemctl", ""]])
def test_ssh_fencer_refuses_a_bad_restart_command(command: Sequence[str]) -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError) as info:
        ssh_fencer(Connector(FakeShell(clock)), clock, restart_command=command)
    assert info.value.key == "restart_command"


@pytest.mark.parametrize(
    "shell_result",
    [0, 1, 255, -1, ProbeTimeout("t"), ProbeHostKeyError("k"), ConfigurationError("c")],
)
def test_ssh_fencer_never_fences(shell_result: int | Exception) -> None:
    clock = FakeClock()
    fencer = ssh_fencer(Connector(FakeShell(clock, shell_result)), clock)
    for host in (HOST, Host(id="no-ip")):
        assert fencer.fence_off(VM, host).outcome is not FenceOutcome.FENCED


def test_ssh_fencer_keeps_the_fence_builder_contract() -> None:
    clock = FakeClock()
    check_fencer(
        ssh_fencer(lambda host: FakeShell(clock, 3, stderr=b"no"), clock), secrets=[SECRET]
    )
    check_fencer(
        ssh_fencer(lambda host: FakeShell(clock, ProbeTimeout("late")), clock), secrets=[SECRET]
    )


# -- RecreatableFencer ------------------------------------------------------------------------


def system_vm(vm_type: VmType) -> Vm:
    return Vm(id="sys1", name="r-1-VM", type=vm_type, host_id="h1", ha_enabled=True)


LOCAL_ROOT = Volume("vol-root", recreatable=True, pool_id="local-1", shared=False)


@pytest.mark.parametrize(
    "vm_type", [VmType.CONSOLE_PROXY, VmType.DOMAIN_ROUTER, VmType.SECONDARY_STORAGE_VM]
)
def test_recreatable_fencer_fences_a_disposable_system_vm_without_action(
    vm_type: VmType,
) -> None:
    clock = FakeClock(7.0)
    vm = system_vm(vm_type)
    unallocated = Volume("vol-data", recreatable=True)
    volumes = FakeVolumes({vm.id: [LOCAL_ROOT, unallocated]})
    fencer = RecreatableFencer(clock, volumes=volumes)
    assert fencer.name == "RecreatableFencer"
    assert fencer.timeout == 1.0
    result = fencer.fence_off(vm, HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert "disposable" in result.reason
    assert result.evidence == {
        "vm_type": vm_type.value,
        "volumes": ["vol-root", "vol-data"],
        "action": "none",
    }
    assert (result.started_at, result.finished_at) == (7.0, 7.0)


def test_recreatable_fencer_a_system_vm_without_volumes_is_disposable() -> None:
    fencer = RecreatableFencer(FakeClock(), volumes=FakeVolumes())
    result = fencer.fence_off(system_vm(VmType.DOMAIN_ROUTER), HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.evidence["volumes"] == []


@pytest.mark.parametrize(
    "vm_type",
    [
        t
        for t in VmType
        if t not in (VmType.CONSOLE_PROXY, VmType.DOMAIN_ROUTER, VmType.SECONDARY_STORAGE_VM)
    ],
)
def test_recreatable_fencer_is_not_applicable_to_other_vm_types(vm_type: VmType) -> None:
    volumes = FakeVolumes({"sys1": [LOCAL_ROOT]})
    result = RecreatableFencer(FakeClock(), volumes=volumes).fence_off(system_vm(vm_type), HOST)
    assert result.outcome is FenceOutcome.NOT_APPLICABLE
    assert volumes.asked == []  # decided without reading the inventory


def test_recreatable_fencer_a_volume_that_cannot_be_recreated_is_not_applicable() -> None:
    vm = system_vm(VmType.DOMAIN_ROUTER)
    kept = Volume("vol-kept", recreatable=False, pool_id="local-1")
    result = RecreatableFencer(
        FakeClock(), volumes=FakeVolumes({vm.id: [LOCAL_ROOT, kept]})
    ).fence_off(vm, HOST)
    assert result.outcome is FenceOutcome.NOT_APPLICABLE
    assert result.evidence["not_recreatable"] == ["vol-kept"]


def test_recreatable_fencer_a_volume_on_a_shared_pool_is_not_applicable() -> None:
    vm = system_vm(VmType.CONSOLE_PROXY)
    on_nfs = Volume("vol-nfs", recreatable=True, pool_id="nfs-1", shared=True)
    result = RecreatableFencer(
        FakeClock(), volumes=FakeVolumes({vm.id: [LOCAL_ROOT, on_nfs]})
    ).fence_off(vm, HOST)
    assert result.outcome is FenceOutcome.NOT_APPLICABLE
    assert result.evidence["on_shared_pool"] == ["vol-nfs"]


def test_recreatable_fencer_an_unreadable_inventory_is_not_fenced() -> None:
    volumes = FakeVolumes(error=ProbeConnectionError("database gone"))
    result = RecreatableFencer(FakeClock(), volumes=volumes).fence_off(
        system_vm(VmType.DOMAIN_ROUTER), HOST
    )
    assert result.outcome is FenceOutcome.NOT_FENCED
    assert result.evidence["error"] == "ProbeConnectionError"


def test_volume_is_a_frozen_value() -> None:
    volume = Volume("v1", recreatable=True)
    assert (volume.pool_id, volume.shared) == (None, False)
    assert volume == Volume("v1", recreatable=True)
    with pytest.raises(AttributeError):
        volume.shared = True  # type: ignore[misc]


def test_recreatable_fencer_keeps_the_fence_builder_contract() -> None:
    check_fencer(RecreatableFencer(FakeClock(), volumes=FakeVolumes()))
