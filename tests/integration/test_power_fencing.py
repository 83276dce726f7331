"""Power fencing end to end over real protocols: the fence chain, the out-of-band
manager and each built-in driver against a real IPMI BMC and a real Redfish service
on loopback, with the storage-heartbeat proof as the next level."""

from __future__ import annotations

import json
import logging

import pytest

from cloudha import Answer, Command, Host, Pool, Settings, Vm
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.fencing import (
    FenceChain,
    FenceOutcome,
    KVMFenceBuilder,
    PowerFencer,
    ThreadRunner,
)
from cloudha.hostha import HAProviderConfig, KVMHAProvider
from cloudha.investigators import BMCInvestigator, Verdict
from cloudha.oobm import OutOfBandManager, StaticOobmConfigs
from cloudha.oobm.drivers import default_power_drivers
from cloudha.oobm.power import OobmConfig
from cloudha.status import Status
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    InMemoryHostDirectory,
    InMemoryStoragePools,
    InMemoryVolumeDirectory,
    RecordingAlertSink,
)
from tests.integration import fakebmc, redfish
from tests.integration.fakebmc import FakeBmcServer
from tests.integration.redfish import RedfishBmc

pytestmark = pytest.mark.integration

fake_bmc = fakebmc.fake_bmc
redfish_bmc = redfish.redfish_bmc

# Its heartbeat writer arms a watchdog, so a stale heartbeat proves it dead (the storage proof).
HOST = Host(id="bmc-host", status=Status.DOWN, cluster="c1", private_ip="127.0.0.9", watchdog=True)
VM = Vm(id="vm1", host_id="bmc-host", ha_enabled=True)


class Rig:
    """One host with a BMC, the real clock, and a neighbour that proves the heartbeat stale."""

    def __init__(self, config: OobmConfig, *, redfish_ca: str | None = None) -> None:
        from cloudha.clock import SystemClock

        self.clock = SystemClock()
        self.alerts = RecordingAlertSink()
        self.evidence = EvidenceLog()
        recorder = Recorder(self.evidence, self.clock, "ms1")
        self.oobm = OutOfBandManager(
            clock=self.clock,
            configs=StaticOobmConfigs({HOST.id: config}),
            drivers=default_power_drivers(redfish_ca_bundle=redfish_ca),
            alerts=self.alerts,
            recorder=recorder,
        )
        self.power = PowerFencer(self.clock, oobm=self.oobm, timeout=15.0, poll_interval=0.2)
        directory = InMemoryHostDirectory(
            [HOST, Host(id="n1", status=Status.UP, cluster="c1", private_ip="127.0.0.8")]
        )

        def neighbour(host: Host, command: Command) -> Answer:
            return Answer(True, data={"verdict": "DEAD", "reason": "heartbeat 900 s old"})

        self.storage = KVMFenceBuilder(
            FakeClock(),
            directory=directory,
            gateway=FakeAgentGateway(handler=neighbour),
            pools=InMemoryStoragePools([Pool("nfs", "/mnt/nfs", cluster="c1")]),
            command_timeout=5,
            timeout=10,
        )
        self.chain = FenceChain(
            [self.power, self.storage],
            clock=self.clock,
            runner=ThreadRunner(),
            alerts=self.alerts,
            recorder=recorder,
        )

    def everything_said(self) -> str:
        return (
            json.dumps([e.to_event() for e in self.evidence], default=str)
            + repr(self.alerts.alerts)
            + repr(self.oobm.explain(HOST))
        )


@pytest.mark.parametrize("driver", ["ipmitool", "ipmi"])
def test_ipmi_power_fence_switches_off_and_confirms(
    fake_bmc: FakeBmcServer, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig(fake_bmc.config(driver=driver))
    assert rig.oobm.check_readiness(HOST).ready
    decision = rig.chain.fence_off(VM, HOST)
    assert decision.fenced_by == ("PowerFencer",)
    assert "read back Off" in decision.attempts[0].reason
    assert fake_bmc.power_state() == "off"
    # Fencing it again finds it off: one STATUS, no second OFF.
    again = rig.chain.fence_off(VM, HOST)
    assert again.attempts[0].reason == "bmc-host is already powered off"
    assert fake_bmc.history().count("off") == 1
    assert fake_bmc.password not in caplog.text + rig.everything_said()


@pytest.mark.parametrize("driver", ["ipmitool", "ipmi"])
def test_ipmi_silent_bmc_falls_back_to_the_storage_proof_in_bounded_time(
    fake_bmc: FakeBmcServer, driver: str
) -> None:
    rig = Rig(fake_bmc.config(driver=driver))
    rig.power.timeout = 3.0
    fake_bmc.pause()
    decision = rig.chain.fence_off(VM, HOST)
    first, second = decision.attempts
    assert first.outcome is FenceOutcome.NOT_FENCED
    assert first.finished_at - first.started_at < 3.0 + 2.0
    assert second.fencer == "KVMFenceBuilder"
    assert decision.fenced
    assert not rig.oobm.check_readiness(HOST, timeout=1.0).ready


def test_ipmi_wrong_password_is_not_fenced_and_alerts_once(
    fake_bmc: FakeBmcServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-123"
    rig = Rig(fake_bmc.config(password=wrong))
    chain = FenceChain([rig.power], clock=rig.clock, alerts=rig.alerts)
    decision = chain.fence_off(VM, HOST)
    assert decision.escalated
    assert decision.attempts[0].evidence["error"] == "ProbeAuthError"
    assert [a.subject for a in rig.alerts.alerts] == [
        "Out-of-band management authentication failed for host bmc-host",
        "Unable to fence off host: bmc-host",
    ]
    assert fake_bmc.power_state() == "on"
    assert wrong not in caplog.text + rig.everything_said()


def test_redfish_power_fence_forces_off_and_an_off_host_is_fenced_at_once(
    redfish_bmc: RedfishBmc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig(redfish_bmc.config(), redfish_ca=str(redfish_bmc.ca_path))
    decision = rig.chain.fence_off(VM, HOST)
    assert decision.fenced_by == ("PowerFencer",)
    assert redfish_bmc.domain.isActive() == 0
    steps = [s["operation"] for s in decision.attempts[0].evidence["steps"]]
    assert steps[:2] == ["STATUS", "OFF"]
    again = rig.chain.fence_off(VM, HOST)
    assert again.attempts[0].reason == "bmc-host is already powered off"
    assert redfish_bmc.password not in caplog.text + rig.everything_said()


def test_redfish_bad_credentials_are_an_auth_error_not_a_fence(redfish_bmc: RedfishBmc) -> None:
    rig = Rig(redfish_bmc.config(password="nope-nope"), redfish_ca=str(redfish_bmc.ca_path))
    readiness = rig.oobm.check_readiness(HOST)
    assert not readiness.ready
    assert readiness.error == "ProbeAuthError"
    decision = rig.chain.fence_off(VM, HOST)
    assert decision.attempts[0].outcome is FenceOutcome.NOT_FENCED
    assert decision.fenced_by == ("KVMFenceBuilder",)
    assert redfish_bmc.domain.isActive() == 1


# -- the BMC as a witness, and the fast path's power-off, over the real protocols ----------


@pytest.mark.parametrize("driver", ["ipmitool", "ipmi"])
def test_ipmi_bmc_witness_reads_on_as_unknown_and_off_as_dead(
    fake_bmc: FakeBmcServer, driver: str
) -> None:
    rig = Rig(fake_bmc.config(driver=driver))
    witness = BMCInvestigator(rig.clock, oobm=rig.oobm, timeout=10.0)
    on = witness.is_agent_alive(HOST)
    assert (on.verdict, on.evidence["power"]) == (Verdict.UNKNOWN, "On")
    # The whole-host power-off of fence on suspicion, confirmed by read-back.
    result = rig.power.power_off(HOST)
    assert result.outcome is FenceOutcome.FENCED
    assert result.reason == "bmc-host powered off and read back Off"
    assert fake_bmc.power_state() == "off"
    off = witness.is_agent_alive(HOST)
    assert (off.verdict, off.reason) == (Verdict.DEAD, "BMC reads the power Off")
    fake_bmc.pause()
    silent = BMCInvestigator(rig.clock, oobm=rig.oobm, timeout=1.0).is_agent_alive(HOST)
    assert silent.verdict is Verdict.UNKNOWN
    assert silent.reason.startswith("BMC did not answer")


def test_redfish_bmc_witness_reads_a_forced_off_system_as_dead(redfish_bmc: RedfishBmc) -> None:
    rig = Rig(redfish_bmc.config(), redfish_ca=str(redfish_bmc.ca_path))
    witness = BMCInvestigator(rig.clock, oobm=rig.oobm, timeout=10.0)
    assert witness.is_agent_alive(HOST).verdict is Verdict.UNKNOWN
    assert rig.power.power_off(HOST).outcome is FenceOutcome.FENCED
    assert redfish_bmc.domain.isActive() == 0
    assert witness.is_agent_alive(HOST).verdict is Verdict.DEAD
    assert redfish_bmc.password not in rig.everything_said()


# -- Host-HA's KVM provider over the real protocols -----------------------------------------


def kvm_provider(rig: Rig) -> KVMHAProvider:
    directory = InMemoryHostDirectory(
        [HOST, Host(id="n1", status=Status.UP, cluster="c1", private_ip="127.0.0.8")]
    )
    return KVMHAProvider(
        rig.clock,
        directory=directory,
        gateway=FakeAgentGateway(),
        pools=InMemoryStoragePools([Pool("nfs", "/mnt/nfs", cluster="c1")]),
        volumes=InMemoryVolumeDirectory(),
        oobm=rig.oobm,
        settings=Settings(),
        config=HAProviderConfig(recover_timeout=10.0, fence_timeout=15.0),
    )


@pytest.mark.parametrize("driver", ["ipmitool", "ipmi"])
def test_ipmi_host_ha_resets_reads_back_on_then_fences_reads_back_off(
    fake_bmc: FakeBmcServer, driver: str
) -> None:
    provider = kvm_provider(Rig(fake_bmc.config(driver=driver)))
    assert provider.is_eligible(HOST)
    assert provider.recover(HOST)
    assert fake_bmc.history() == ["reset"]
    assert fake_bmc.power_state() == "on"
    assert provider.fence(HOST)
    assert fake_bmc.power_state() == "off"
    assert provider.has_activity(HOST, 0.0) is False  # the power reads Off: no activity
    # Dead hardware: a reset is accepted, but the power stays Off. Not recovered.
    assert not provider.recover(HOST)
    fake_bmc.pause()
    assert not provider.fence(HOST)  # a silent BMC confirms nothing


def test_redfish_host_ha_resets_and_fences_with_read_back(redfish_bmc: RedfishBmc) -> None:
    provider = kvm_provider(Rig(redfish_bmc.config(), redfish_ca=str(redfish_bmc.ca_path)))
    assert provider.recover(HOST)
    assert redfish_bmc.domain.isActive() == 1  # destroyed and started again
    assert provider.fence(HOST)
    assert redfish_bmc.domain.isActive() == 0
