"""Host-HA providers: how one kind of host is judged, recovered and fenced (spec §7.5).

A provider answers the Host-HA manager's five questions about a host: is it
eligible, is it healthy, does it show activity since it became suspect, can
it be recovered (a power reset), can it be fenced (power off, confirmed).
:class:`BaseHAProvider` holds the contract; :class:`KVMHAProvider` is
CloudStack's KVM provider on cloudha's ports:

* eligible: the host is KVM or LXC, Enabled (not Disabled, not in or
  entering maintenance), has out-of-band management, and at least one Up
  KVM/LXC neighbour in its cluster;
* healthy: the KVM storage-heartbeat investigator
  (:class:`~cloudha.investigators.kvm.KVMInvestigator`) says Up;
* activity: none when the BMC reads the power Off; otherwise, for every pool
  holding disks of the host's VMs (or, with none, every HA pool of the
  host), a neighbour mounting the pool runs the VM activity check
  (``CheckVMActivityOnStoragePoolCommand``, spec §6.4);
* recover: an out-of-band RESET, then the power read back On (dead hardware
  that stays Off is not recovered: Host-HA fences it);
* fence: an out-of-band power-off confirmed by read-back
  (:class:`~cloudha.fencing.power.PowerFencer`);
* proof without the BMC (the fallback of a fence that fails, CloudStack PR
  #13589): the storage heartbeat proves the host dead (a stale heartbeat of a
  watchdog host, :func:`~cloudha.investigators.support.stale_proof`).

Deliberate differences from CloudStack's ``KVMHAProvider``:

* the power read Off is no activity: without it, a dead host whose VMs were
  already restarted elsewhere (their disks written again) and whose stale
  heartbeat proves nothing (no watchdog) would stay Degraded for ever;
* a reset is confirmed by reading the power back On;
* activity on *any* pool is activity. CloudStack stops at the first pool
  without activity and calls that "no activity", so a VM writing to its
  second disk does not keep its host from a reset;
* a pool no neighbour could check tells nothing (None), and an activity
  check that raised is no sample of "no activity": CloudStack counts both
  as a failed sample, a step towards resetting a host that is fine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs

from cloudha.clock import Clock
from cloudha.commands import answer_verdict, check_vm_activity
from cloudha.errors import ConfigurationError, HACheckError, ProbeError
from cloudha.evidence import Recorder
from cloudha.fencing.base import FenceOutcome
from cloudha.fencing.power import PowerFencer
from cloudha.investigators.base import Verdict, host_outcome
from cloudha.investigators.kvm import KVMInvestigator
from cloudha.investigators.support import list_neighbours
from cloudha.model import Host, HypervisorType, Pool, ResourceState
from cloudha.oobm.manager import OutOfBandManager
from cloudha.oobm.power import PowerOperation, PowerState
from cloudha.ports import (
    AgentGateway,
    HAProvider,
    HostDirectory,
    StoragePoolDirectory,
    VolumeDirectory,
)
from cloudha.settings import Settings
from cloudha.status import Status

__all__ = [
    "BaseHAProvider",
    "ForwardingHAProvider",
    "HAProviderConfig",
    "KVMHAProvider",
    "ShadowHAProvider",
]

log = logging.getLogger(__name__)

_KVM = (HypervisorType.KVM, HypervisorType.LXC)


@attrs.frozen
class HAProviderConfig:
    """The limits and thresholds of one provider (CloudStack ``HAProviderConfig``).

    Attributes:
        health_check_timeout: seconds a health check may take.
        activity_check_timeout: seconds an activity check may take.
        activity_check_interval: at least this many seconds between two
            activity samples of one host.
        activity_check_max_attempts: samples needed before a decision.
        activity_check_failure_ratio: more failed samples than this share of
            the samples taken means no activity (CloudStack's strict >).
        degraded_max_period: seconds a Degraded host waits before its
            activity is checked again.
        recover_timeout: seconds a recovery may take.
        recover_wait_period: seconds a Recovered host waits before Available.
        recover_failure_threshold: recoveries tried before fencing.
        fence_timeout: seconds a fence may take.
    """

    health_check_timeout: float = 10.0
    activity_check_timeout: float = 60.0
    activity_check_interval: float = 60.0
    activity_check_max_attempts: int = 10
    activity_check_failure_ratio: float = 0.7
    degraded_max_period: float = 300.0
    recover_timeout: float = 60.0
    recover_wait_period: float = 600.0
    recover_failure_threshold: int = 1
    fence_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HAProviderConfig:
        """The ``kvm.ha.*`` settings (spec §7.5)."""
        return cls(
            health_check_timeout=settings.kvm_ha_health_check_timeout,
            activity_check_timeout=settings.kvm_ha_activity_check_timeout,
            activity_check_interval=settings.kvm_ha_activity_check_interval,
            activity_check_max_attempts=settings.kvm_ha_activity_check_max_attempts,
            activity_check_failure_ratio=settings.kvm_ha_activity_check_failure_ratio,
            degraded_max_period=settings.kvm_ha_degraded_max_period,
            recover_timeout=settings.kvm_ha_recover_timeout,
            recover_wait_period=settings.kvm_ha_recover_wait_period,
            recover_failure_threshold=settings.kvm_ha_recover_failure_threshold,
            fence_timeout=settings.kvm_ha_fence_timeout,
        )


class BaseHAProvider:
    """The base of Host-HA providers (a :class:`~cloudha.ports.HAProvider`).

    Contract, for every method (the manager relies on it):

    * ``host`` is a fresh snapshot from the host directory.
    * The manager calls each method on one of its bounded executors and
      gives up on it after the matching limit of :attr:`config`; a method
      may block up to that limit, and must be thread-safe.
    * An exception means "could not": a failed health check, no activity
      sample (an activity check), no recovery, no fence. It is logged with
      its traceback and never read as a proof. Only :meth:`has_activity`
      may raise :class:`~cloudha.errors.HACheckError` to say the check can
      never apply to the host (the host then becomes Ineligible).
    * :meth:`recover` returns True only when the host was reset (its VMs
      died with the reset), :meth:`fence` only when its power was read
      back Off, :meth:`proves_dead` only with proof that nothing runs
      there. These three Trues hand the host's VMs to VM-HA.

    Subclasses set :attr:`name` and override what they support; the
    defaults are "not eligible", "unhealthy", "cannot tell", "could not".
    """

    name = "basehaprovider"

    def __init__(self, config: HAProviderConfig | None = None) -> None:
        self._config = config if config is not None else HAProviderConfig()

    @property
    def config(self) -> HAProviderConfig:
        return self._config

    def supports(self, host: Host) -> bool:
        """Whether ``host`` is of this provider's kind. Default: no host."""
        return False

    def is_eligible(self, host: Host) -> bool:
        """Whether Host-HA can act on ``host`` now. Default: no."""
        return False

    def is_healthy(self, host: Host) -> bool:
        """True when ``host`` is known to be up. Default: False."""
        return False

    def has_activity(self, host: Host, suspect_since: float) -> bool | None:
        """True (activity), False (none), None (cannot tell). Default: None."""
        return None

    def recover(self, host: Host) -> bool:
        """Reset ``host``; True once done. Default: False."""
        return False

    def fence(self, host: Host) -> bool:
        """Power ``host`` off, confirmed; True once read back Off. Default: False."""
        return False

    def proves_dead(self, host: Host) -> bool:
        """Proof without the BMC that ``host`` is dead. Default: False."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class KVMHAProvider(BaseHAProvider):
    """CloudStack's ``KVMHAProvider`` (see the module docstring).

    Args:
        clock: the time source.
        directory: the host inventory (neighbours).
        gateway: sends the heartbeat and activity checks to agents.
        pools: which pools each host mounts.
        volumes: where the disks of each host's VMs live.
        oobm: out-of-band management (eligibility, RESET, power-off).
        settings: the ``kvm.ha.*`` limits and the heartbeat settings of the
            KVM investigator.
        config: the limits, instead of the ``kvm.ha.*`` settings.
    """

    name = "kvmhaprovider"

    def __init__(
        self,
        clock: Clock,
        *,
        directory: HostDirectory,
        gateway: AgentGateway,
        pools: StoragePoolDirectory,
        volumes: VolumeDirectory,
        oobm: OutOfBandManager,
        settings: Settings,
        config: HAProviderConfig | None = None,
    ) -> None:
        super().__init__(config if config is not None else HAProviderConfig.from_settings(settings))
        self.clock = clock
        self.directory = directory
        self.gateway = gateway
        self.pools = pools
        self.volumes = volumes
        self.oobm = oobm
        self.checker = KVMInvestigator(
            clock,
            directory=directory,
            gateway=gateway,
            pools=pools,
            timeout=self.config.health_check_timeout,
            fail_on_one_pool=settings.kvm_ha_fence_on_storage_heartbeat_failure,
            zone_witnesses=0,
            self_fence=settings.reboot_host_and_alert_management_on_heartbeat_timeout,
        )
        self.fencer = PowerFencer(clock, oobm=oobm, timeout=self.config.fence_timeout)

    def supports(self, host: Host) -> bool:
        return host.hypervisor in _KVM

    def is_eligible(self, host: Host) -> bool:
        if host.hypervisor not in _KVM or host.resource_state is not ResourceState.ENABLED:
            return False
        if not self.oobm.configured(host):
            return False
        return bool(list_neighbours(self.directory, host, hypervisors=_KVM))

    def is_healthy(self, host: Host) -> bool:
        return host_outcome(self.checker.is_agent_alive(host)) is Status.UP

    def has_activity(self, host: Host, suspect_since: float) -> bool | None:
        if self._power_off(host):
            return False
        mounted = {p.id: p for p in self.pools.pools_for_host(host)}
        by_pool: Mapping[str, Sequence[str]] = self.volumes.volumes_on_host(host)
        if not by_pool:
            by_pool = {pool_id: () for pool_id, p in mounted.items() if p.supports_ha}
        if not by_pool:
            raise HACheckError(
                f"{host.id} has no VM disk and no HA pool to look for activity on",
                host_id=host.id,
            )
        neighbours = list_neighbours(self.directory, host, hypervisors=_KVM)
        seen_dead = False
        for pool_id in sorted(by_pool):
            pool = mounted.get(pool_id) or self._pool(pool_id, neighbours)
            if pool is None:
                log.info("%s: no neighbour mounts pool %s; it tells nothing", host.id, pool_id)
                continue
            verdict = self._ask_pool(host, pool, by_pool[pool_id], suspect_since, neighbours)
            if verdict is Verdict.ALIVE:
                return True
            seen_dead = seen_dead or verdict is Verdict.DEAD
        return False if seen_dead else None

    def _power_off(self, host: Host) -> bool:
        """The BMC reads the power Off: nothing can be active there."""
        if not self.oobm.configured(host):
            return False
        try:
            status = self.oobm.execute(
                host, PowerOperation.STATUS, timeout=self.config.activity_check_timeout
            )
        except (ProbeError, ConfigurationError) as exc:
            log.info("%s: power state unknown for the activity check: %s", host.id, exc)
            return False
        return status.state is PowerState.OFF

    def _pool(self, pool_id: str, neighbours: Sequence[Host]) -> Pool | None:
        for neighbour in neighbours:
            for pool in self.pools.pools_for_host(neighbour):
                if pool.id == pool_id:
                    return pool
        return None

    def _ask_pool(
        self,
        host: Host,
        pool: Pool,
        volumes: Sequence[str],
        suspect_since: float,
        neighbours: Sequence[Host],
    ) -> Verdict:
        """The first decisive answer of a neighbour mounting ``pool`` (CloudStack's sendToPool)."""
        command = check_vm_activity(host, pool, volumes, suspect_time=suspect_since)
        for neighbour in neighbours:
            if not any(p.id == pool.id for p in self.pools.pools_for_host(neighbour)):
                continue
            try:
                answer = self.gateway.send(
                    neighbour, command, timeout=self.config.activity_check_timeout
                )
            except ProbeError as exc:
                log.info("%s: activity check by %s failed: %s", host.id, neighbour.id, exc)
                continue
            verdict, reason = answer_verdict(answer)
            log.info("%s: %s on pool %s: %s (%s)", host.id, neighbour.id, pool.id, verdict, reason)
            if verdict is not Verdict.UNKNOWN:
                return verdict
        return Verdict.UNKNOWN

    def recover(self, host: Host) -> bool:
        """RESET, then the power read back On: a host that stays Off (dead hardware) was
        not recovered, and Host-HA goes on to fence it."""
        deadline = self.clock.monotonic() + self.config.recover_timeout
        result = self.oobm.execute(host, PowerOperation.RESET, timeout=self.config.recover_timeout)
        if not result.success:
            log.warning("%s: Host-HA reset refused: %s", host.id, result.message)
            return False
        left = max(0.001, deadline - self.clock.monotonic())
        status = self.oobm.execute(host, PowerOperation.STATUS, timeout=left)
        if status.state is not PowerState.ON:
            log.warning("%s: reset accepted, but the power reads %s", host.id, status.state)
            return False
        return True

    def fence(self, host: Host) -> bool:
        result = self.fencer.power_off(host)
        if result.outcome is not FenceOutcome.FENCED:
            log.warning("%s: Host-HA fence not confirmed: %s", host.id, result.reason)
        return result.outcome is FenceOutcome.FENCED

    def proves_dead(self, host: Host) -> bool:
        finding = self.checker.is_agent_alive(host)
        return finding.verdict is Verdict.DEAD


class ForwardingHAProvider:
    """A provider around another one that forwards every call to it (an :class:`HAProvider`).

    Subclasses override what they change (shadow mode, the simulator's checker).
    """

    def __init__(self, provider: HAProvider) -> None:
        self.provider = provider
        self.name = provider.name

    @property
    def config(self) -> HAProviderConfig:
        return self.provider.config

    def supports(self, host: Host) -> bool:
        return self.provider.supports(host)

    def is_eligible(self, host: Host) -> bool:
        return self.provider.is_eligible(host)

    def is_healthy(self, host: Host) -> bool:
        return self.provider.is_healthy(host)

    def has_activity(self, host: Host, suspect_since: float) -> bool | None:
        return self.provider.has_activity(host, suspect_since)

    def recover(self, host: Host) -> bool:
        return self.provider.recover(host)

    def fence(self, host: Host) -> bool:
        return self.provider.fence(host)

    def proves_dead(self, host: Host) -> bool:
        return self.provider.proves_dead(host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider!r})"


class ShadowHAProvider(ForwardingHAProvider):
    """Shadow mode (``cloudha.shadow``) around a provider: it checks, it does not act.

    Every check (eligibility, health, activity, ``proves_dead``) is the wrapped
    provider's; :meth:`recover` and :meth:`fence` record what they would do
    (``host_ha_recovery`` / ``host_ha_fence`` with ``shadow: true``) and
    return False, so Host-HA goes on as after a recovery or fence that did
    not succeed, and nothing is reset or powered off.
    """

    def __init__(self, provider: HAProvider, recorder: Recorder) -> None:
        super().__init__(provider)
        self.recorder = recorder

    def recover(self, host: Host) -> bool:
        self.recorder.emit(
            "host_ha_recovery",
            host=host.id,
            reason=f"shadow mode: {self.name} would reset {host.id} (BMC RESET), did nothing",
            provider=self.name,
            shadow=True,
        )
        return False

    def fence(self, host: Host) -> bool:
        self.recorder.emit(
            "host_ha_fence",
            host=host.id,
            reason=f"shadow mode: {self.name} would power {host.id} off, did nothing",
            provider=self.name,
            shadow=True,
        )
        return False
