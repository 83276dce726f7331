"""The KVM Host-HA provider on a simulated world, the activity command and the volume port."""

from __future__ import annotations

import attrs
import pytest

from cloudha.commands import CHECK_VM_ACTIVITY, answer_verdict, check_vm_activity
from cloudha.errors import HACheckError
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.heartbeat import HeartbeatTiming
from cloudha.heartbeat.files import format_heartbeat, heartbeat_path
from cloudha.hostha import HAProviderConfig, KVMHAProvider
from cloudha.investigators import Verdict
from cloudha.model import Host, Pool, ResourceState
from cloudha.oobm.manager import OutOfBandManager
from cloudha.ports import VolumeDirectory
from cloudha.settings import Settings
from cloudha.status import Status
from cloudha.testing import (
    FakeClock,
    InMemoryVolumeDirectory,
    RecordingAlertSink,
    World,
    check_ha_provider,
    check_volume_directory,
)
from cloudha.testing.scenario import HostSpec, VmSpec

T0 = 1_800_000_000.0
SETTINGS = Settings()
TIMING = HeartbeatTiming.from_settings(SETTINGS)


def make_world(*, pools: tuple[str, ...] = ("p1",), watchdog: bool = False) -> World:
    return World(
        [HostSpec(f"h{i}", "c1", pools=pools, oobm="ipmi", watchdog=watchdog) for i in (1, 2, 3)],
        [VmSpec("vm1", "h2", ha=True), VmSpec("vm2", "h2", ha=True)],
        clock=FakeClock(T0),
        timing=TIMING,
    )


def provider_of(world: World, volumes: VolumeDirectory | None = None) -> KVMHAProvider:
    ports = world.ports()
    oobm = OutOfBandManager(
        clock=world.clock,
        configs=ports["oobm_configs"],
        drivers=ports["oobm_drivers"],
        settings=SETTINGS,
        alerts=RecordingAlertSink(),
        recorder=Recorder(EvidenceLog(), world.clock, "ms1"),
    )
    return KVMHAProvider(
        world.clock,
        directory=ports["directory"],
        gateway=ports["gateway"],
        pools=ports["pools"],
        volumes=volumes if volumes is not None else ports["volumes"],
        oobm=oobm,
        settings=SETTINGS,
    )


def beat(world: World, host_id: str, pool: str = "p1", *, age: float = 0.0) -> None:
    """``host_id``'s heartbeat on ``pool``, written ``age`` seconds ago."""
    ip = world.hosts[host_id].ip
    at = world.clock.now().timestamp() - age
    world.files[heartbeat_path(f"/mnt/{pool}", ip)] = (format_heartbeat(at), at)


def advance(world: World, seconds: float) -> None:
    clock = world.clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds)


def host(world: World, host_id: str) -> Host:
    found = world.directory.find_host(host_id)
    assert found is not None
    return found


def test_the_config_comes_from_the_kvm_ha_settings() -> None:
    settings = Settings(kvm_ha_activity_check_max_attempts=4, kvm_ha_recover_wait_period=30.0)
    config = HAProviderConfig.from_settings(settings)
    assert config.activity_check_max_attempts == 4
    assert config.recover_wait_period == 30.0
    assert HAProviderConfig.from_settings(Settings()) == HAProviderConfig()


def test_eligible_needs_kvm_oobm_an_up_neighbour_and_no_maintenance() -> None:
    world = make_world()
    provider = provider_of(world)
    assert provider.is_eligible(host(world, "h2"))
    world.directory.replace(
        attrs.evolve(host(world, "h2"), resource_state=ResourceState.MAINTENANCE)
    )
    assert not provider.is_eligible(host(world, "h2"))
    world.oobm_configs.set("h1", None)
    assert not provider.is_eligible(host(world, "h1"))
    for neighbour in ("h1", "h2"):
        world.directory.replace(attrs.evolve(host(world, neighbour), status=Status.DOWN))
    assert not provider.is_eligible(host(world, "h3"))  # no Up neighbour left


def test_healthy_while_the_host_answers_unhealthy_when_cut_off() -> None:
    world = make_world()
    provider = provider_of(world)
    for h in ("h1", "h2", "h3"):
        beat(world, h)
    assert provider.is_healthy(host(world, "h2"))
    world.hosts["h2"].mgmt_link = False  # a neighbour still sees its heartbeat
    assert not provider.is_healthy(host(world, "h2"))


def test_activity_from_a_fresh_heartbeat_then_from_volume_writes_none_when_off() -> None:
    world = make_world()
    provider = provider_of(world)
    for h in ("h1", "h2", "h3"):
        beat(world, h)
    h2 = host(world, "h2")
    suspect = world.clock.now().timestamp()
    assert provider.has_activity(h2, suspect) is True  # the heartbeat is fresh
    beat(world, "h2", age=TIMING.stale_after(1) + 1)  # stale now; its VMs still write
    advance(world, 1)
    assert provider.has_activity(h2, suspect) is True
    world.power_off(world.hosts["h2"])  # its VMs stop writing
    advance(world, 5)
    assert provider.has_activity(h2, world.clock.now().timestamp()) is False


def test_activity_on_any_pool_is_activity() -> None:
    world = make_world(pools=("p1", "p2"))
    for h in ("h1", "h2", "h3"):
        for p in ("p1", "p2"):
            beat(world, h, p, age=TIMING.stale_after(1) + 1 if h == "h2" else 0.0)
    world.vms["vm2"].volume_pool = "p2"
    world.vm_leaves(world.vms["vm1"], "h2")  # vm1 (on p1) stopped; vm2 (on p2) still writes
    advance(world, 5)
    suspect = world.clock.now().timestamp()
    advance(world, 5)
    provider = provider_of(world)
    assert provider.has_activity(host(world, "h2"), suspect) is True


def test_no_neighbour_can_tell_is_none_not_no_activity() -> None:
    world = make_world()
    provider = provider_of(world)
    for h in ("h1", "h3"):
        world.hosts[h].agent_running = False
    assert provider.has_activity(host(world, "h2"), world.clock.now().timestamp()) is None


def test_a_host_with_no_disk_and_no_pool_cannot_be_checked() -> None:
    world = make_world(pools=())
    provider = provider_of(world, InMemoryVolumeDirectory())
    with pytest.raises(HACheckError, match="no VM disk and no HA pool"):
        provider.has_activity(host(world, "h2"), world.clock.now().timestamp())


def test_recover_resets_and_fence_powers_off_confirmed() -> None:
    world = make_world()
    provider = provider_of(world)
    world.hosts["h2"].hung = True
    assert provider.recover(host(world, "h2"))
    assert world.hosts["h2"].powered  # reset: on again, and the hang is gone
    assert not world.hosts["h2"].hung
    assert world.vms["vm1"].running_on == set()  # its VMs died with the reset
    assert provider.fence(host(world, "h2"))
    assert not world.hosts["h2"].powered
    world.hosts["h3"].bmc_up = False
    assert not provider.fence(host(world, "h3"))  # a silent BMC confirms nothing


def test_proof_without_the_bmc_needs_a_watchdog_host_s_stale_heartbeat() -> None:
    for watchdog in (False, True):
        world = make_world(watchdog=watchdog)
        for h in ("h1", "h3"):
            beat(world, h)
        beat(world, "h2", age=TIMING.stale_after(1) + 5)
        world.power_off(world.hosts["h2"])
        assert provider_of(world).proves_dead(host(world, "h2")) is watchdog


def test_the_kvm_provider_keeps_the_contract() -> None:
    check_ha_provider(provider_of(make_world()))


def test_world_volumes_keep_the_contract() -> None:
    world = make_world()
    volumes = world.ports()["volumes"]
    assert volumes.volumes_on_host(host(world, "h2")) == {"p1": ["volumes/vm1", "volumes/vm2"]}
    check_volume_directory(volumes, host(world, "h2"))
    check_volume_directory(
        InMemoryVolumeDirectory({"h1": {"p1": ["a/b.qcow2"]}}), host(world, "h1")
    )


def test_the_volume_contract_rejects_paths_outside_the_pool() -> None:
    world = make_world()
    bad = InMemoryVolumeDirectory({"h1": {"p1": ["/etc/passwd", "../x"]}})
    with pytest.raises(AssertionError, match="not relative"):
        check_volume_directory(bad, host(world, "h1"))


def test_the_activity_command_goes_to_a_neighbour_mounting_the_pool() -> None:
    world = make_world()
    gateway = world.ports()["gateway"]
    for h in ("h1", "h2", "h3"):
        beat(world, h)
    command = check_vm_activity(
        host(world, "h2"), Pool("p1", "/mnt/p1"), ["volumes/vm1"], suspect_time=T0
    )
    assert command.name == CHECK_VM_ACTIVITY
    assert command.params["mount_point"] == "/mnt/p1"
    verdict, reason = answer_verdict(gateway.send(host(world, "h1"), command, timeout=5))
    assert verdict is Verdict.ALIVE
    assert "heartbeat fresh" in reason
    elsewhere = check_vm_activity(host(world, "h2"), Pool("p9", "/mnt/p9"), [], suspect_time=T0)
    answer = gateway.send(host(world, "h1"), elsewhere, timeout=5)
    assert not answer.result
    assert "does not mount" in answer.details


def test_dead_hardware_is_not_recovered_by_a_reset() -> None:
    world = make_world()
    world.hosts["h2"].broken = True
    world.power_off(world.hosts["h2"])
    provider = provider_of(world)
    assert not provider.recover(host(world, "h2"))  # the reset was accepted; the power reads Off
    assert provider.fence(host(world, "h2"))  # already off: fenced
