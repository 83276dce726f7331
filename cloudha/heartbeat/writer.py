"""The heartbeat writer (CloudStack's ``KVMHAMonitor``, spec §6.2).

:func:`writer_plan` is the whole decision logic, as a generator of actions
(:class:`Write`, :class:`Sleep`, :class:`SelfFence`, :class:`Pet`) that knows nothing of
threads, files or clocks. :class:`HeartbeatWriter` drives it on a real host;
the simulator drives the same plan on virtual time.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import types
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Protocol, TypeAlias, final, runtime_checkable

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError
from cloudha.heartbeat.files import format_heartbeat, heartbeat_path, normalize_host_ip
from cloudha.heartbeat.isolation import LinkState, link_state
from cloudha.heartbeat.storage import StorageAccess
from cloudha.heartbeat.timing import HeartbeatTiming
from cloudha.model import Pool
from cloudha.ports import IsolationProbe, Watchdog

__all__ = [
    "HeartbeatWriter",
    "Pet",
    "SelfFence",
    "SelfFencer",
    "Sleep",
    "StorageFault",
    "SysrqSelfFencer",
    "Write",
    "WriterAction",
    "writer_plan",
]

log = logging.getLogger("cloudha.heartbeat")


@attrs.frozen
class Write:
    """Write the heartbeat to ``pool`` now; send back True (written) or False (failed).

    ``attempt`` counts from 1 within the pool's round.
    """

    pool: Pool
    attempt: int


@attrs.frozen
class Sleep:
    """Pause ``seconds``, then send back None.

    ``reason`` is ``"retry"`` (between failed attempts on a pool) or
    ``"round"`` (after every pool of a round).
    """

    seconds: float
    reason: str


@attrs.frozen
class SelfFence:
    """Every attempt on ``pool`` failed: reset this host now. The plan ends after it."""

    pool: Pool
    reason: str


@attrs.frozen
class Pet:
    """Renew the lease: pet the watchdog now, then send back None.

    Only a plan made with ``watchdog=True`` asks for it. ``proof`` says what
    renews it: ``"heartbeat"``, every pool of this round was written; or
    ``"agent"``, a heartbeat write failed but the agent is connected
    (:class:`~cloudha.heartbeat.isolation.LinkState`). The driver pets only
    if :meth:`HeartbeatTiming.may_pet` allows it for the age of the proof:
    the time since the round's first successful write started, or since
    the agent sent its last acknowledged ping (a writer stalled between its
    proof and its pet must not buy its host more time).
    """

    proof: str = "heartbeat"


@attrs.frozen
class StorageFault:
    """Every attempt on ``pool`` failed, but the host is not isolated: report, do not reset.

    ``link`` says why (the agent is connected, or the isolation address
    answers and the watchdog's lease decides). Send back None; the plan
    goes on with the next pool.
    """

    pool: Pool
    reason: str
    link: LinkState


WriterAction: TypeAlias = Write | Sleep | SelfFence | Pet | StorageFault
"""What :func:`writer_plan` asks its driver to do."""


def writer_plan(
    pools: Callable[[], Sequence[Pool]],
    timing: HeartbeatTiming,
    *,
    reboot_on_failure: bool,
    watchdog: bool = False,
    link: Callable[[], LinkState] | None = None,
) -> Generator[WriterAction, bool | None, None]:
    """The writer's actions, forever (CloudStack's ``KVMHAMonitor`` loop).

    Each round calls ``pools()`` again, then for each pool yields
    ``Write(pool, attempt)`` for attempt 1..``max_tries`` until one is
    answered True, with ``Sleep(retry_sleep, "retry")`` between failed
    attempts. When every attempt on a pool failed: with ``reboot_on_failure``
    it yields ``SelfFence(pool, reason)`` and ends; without, it logs an error
    and goes on with the next pool. With ``watchdog``, a round that wrote
    every pool (at least one) then yields :class:`Pet`; a round with no
    pool, or with a pool that could not be written, does not, so the
    watchdog resets a host whose heartbeat is going stale on any of its
    pools. After the pools (none is fine) it yields
    ``Sleep(frequency, "round")``.

    With ``watchdog``, the first :class:`Pet` is where the writer arms the
    device (opening ``/dev/watchdog`` restarts a countdown a previous writer
    left running, so arming is only safe right after a fresh heartbeat). A
    pool that cannot be written before that first pet yields
    :class:`SelfFence` whatever ``reboot_on_failure`` says: nothing else
    would reset the host before its old heartbeat is called stale.

    With ``link`` (isolation-aware self-fencing, :mod:`cloudha.heartbeat.isolation`),
    a pool whose every attempt failed is first judged by ``link()``:

    * :attr:`~LinkState.CONNECTED`: the plan yields :class:`StorageFault`
      and does not reset; with an armed watchdog it yields
      ``Pet(proof="agent")`` after each failed attempt and at the round's
      end, so the lease lasts while the agent can prove the host is not
      isolated.
    * :attr:`~LinkState.PARTITIONED`: :class:`StorageFault`, no reset and no
      pet: an armed watchdog resets the host when its lease runs out, unless
      the heartbeat or the agent's connection comes back first; without a
      watchdog a stale heartbeat proves nothing, so nothing needs resetting.
    * :attr:`~LinkState.ISOLATED`: as without ``link``.

    A watchdog that is not armed yet still resets the host (the agent has
    not started).
    Driving: start with ``next(plan)`` (or ``plan.send(None)``); answer a
    :class:`Write` with ``plan.send(True)`` or ``plan.send(False)``, a
    :class:`Sleep`, a :class:`Pet` or a :class:`SelfFence` with ``plan.send(None)``.

    Raises:
        TypeError: (from ``send``) when a Write is answered with anything but a bool.
    """
    armed = False
    while True:
        round_pools = tuple(pools())
        every_pool_written = bool(round_pools)
        for pool in round_pools:
            written = False
            for attempt in range(1, timing.max_tries + 1):
                result = yield Write(pool, attempt)
                if not isinstance(result, bool):
                    raise TypeError(
                        f"answer Write with True or False, got {result!r} (pool {pool.id})"
                    )
                if result:
                    written = True
                    break
                if watchdog and armed and link is not None and link() is LinkState.CONNECTED:
                    yield Pet("agent")
                if attempt < timing.max_tries:
                    yield Sleep(timing.retry_sleep, "retry")
            if written:
                continue
            every_pool_written = False
            reason = (
                f"could not write the heartbeat to pool {pool.id} ({pool.mount_point})"
                f" in {timing.max_tries} tries"
            )
            state = link() if link is not None and (armed or not watchdog) else None
            if state is LinkState.CONNECTED:
                yield StorageFault(
                    pool,
                    f"{reason}; the agent is connected, so the host is not isolated and stays up",
                    state,
                )
                continue
            if state is LinkState.PARTITIONED:
                yield StorageFault(
                    pool,
                    f"{reason}; the agent lost the management server but the isolation address"
                    " answers: no reset now"
                    + (
                        "; the watchdog resets the host unless the heartbeat or the agent"
                        " comes back"
                        if watchdog
                        else ""
                    ),
                    state,
                )
                continue
            if state is LinkState.ISOLATED:
                reason += (
                    "; the agent lost the management server and the isolation address is silent"
                )
            if reboot_on_failure or (watchdog and not armed):
                if not reboot_on_failure:
                    reason += "; the watchdog is not armed yet, so the writer resets the host"
                yield SelfFence(pool, reason)
                return
            log.error("%s; not rebooting (reboot on heartbeat timeout is off)", reason)
        if watchdog and every_pool_written:
            yield Pet()
            armed = True
        elif watchdog and armed and link is not None and link() is LinkState.CONNECTED:
            yield Pet("agent")
        yield Sleep(timing.frequency, "round")


@runtime_checkable
class SelfFencer(Protocol):
    """Resets the local host when its heartbeat cannot be written."""

    def self_fence(self, reason: str) -> None:
        """Reset this host now; ``reason`` says why. On a real host this does not return."""


@final
class SysrqSelfFencer:
    """Resets the host like ``kvmheartbeat.sh -c``: log, ``sync``, then sysrq ``b``.

    Logs CRITICAL with the reason (logger ``cloudha.heartbeat``), runs
    :func:`os.sync` in a daemon thread and waits at most ``sync_wait``
    seconds for it (a sync to a hung NFS server never ends), then writes
    ``b"b"`` to ``trigger_path``: an immediate reset, no clean shutdown.

    Args:
        trigger_path: the sysrq trigger (``/proc/sysrq-trigger``).
        sync_wait: the longest wait for ``sync``, in seconds.
        sync: the flush to run (``os.sync``; tests replace it).

    Raises (from :meth:`self_fence`):
        OSError: the trigger could not be written (logged, then re-raised).
    """

    def __init__(
        self,
        trigger_path: str = "/proc/sysrq-trigger",
        sync_wait: float = 5.0,
        *,
        sync: Callable[[], None] = os.sync,
    ) -> None:
        if not sync_wait >= 0:
            raise ValueError(f"sync_wait must be >= 0, got {sync_wait!r}")
        self.trigger_path = trigger_path
        self.sync_wait = sync_wait
        self._sync = sync

    def self_fence(self, reason: str) -> None:
        log.critical(
            "%s: resetting this host through %s (unable to write the storage heartbeat)",
            reason,
            self.trigger_path,
        )
        syncer = threading.Thread(target=self._sync, name="cloudha-self-fence-sync", daemon=True)
        syncer.start()
        syncer.join(self.sync_wait)
        try:
            with open(self.trigger_path, "wb", buffering=0) as trigger:
                trigger.write(b"b")
        except OSError as exc:
            log.critical("cannot reset this host through %s: %s", self.trigger_path, exc)
            raise

    def __repr__(self) -> str:
        return f"SysrqSelfFencer(trigger_path={self.trigger_path!r}, sync_wait={self.sync_wait!r})"


class HeartbeatWriter:
    """Writes this host's heartbeat to its HA pools, self-fencing when it cannot.

    Args:
        storage: access to the pools' mount points.
        clock: the time written into the heartbeat, and the sleeps.
        timing: frequency, tries, retry sleep and write timeout.
        host_ip: this host's private address (the heartbeat file's name).
        pools: the HA pools, or a callable giving them (asked every round).
        reboot_on_failure: self-fence when every try on a pool failed
            (``reboot.host.and.alert.management.on.heartbeat.timeout``).
        self_fencer: how to self-fence; :class:`SysrqSelfFencer` by default.
        watchdog: the watchdog to arm (:class:`~cloudha.heartbeat.LinuxWatchdog`);
            None runs without one, and then a stale heartbeat of this host
            proves nothing (its inventory row must say ``watchdog=False``).
        watchdog_timeout: the watchdog's countdown (``cloudha.watchdog.timeout``).
        isolation: what the host knows of its connection
            (:class:`~cloudha.heartbeat.isolation.FileIsolationProbe`); with it
            the writer is isolation-aware (:func:`writer_plan`'s ``link``),
            without it a pool that cannot be written resets the host as in CloudStack.
        agent_window: how recent the agent's last acknowledged ping must be
            for the host to count as connected (``cloudha.isolation.agent.window``).
        reset_margin: the longest time from the watchdog's expiry until
            the host is reset (``cloudha.watchdog.reset.margin``).

    The watchdog is armed after the first round that wrote every pool (a
    pool that cannot be written before then resets the host: see
    :func:`writer_plan`), petted after each later round that wrote every
    pool (when :meth:`HeartbeatTiming.may_pet` allows it),
    disarmed (magic close) when ``stop`` ends :meth:`run`, and closed
    armed on any other end (self-fence, error): the host is then reset
    unless a new writer arms it again in time. A deliberate stop thus
    leaves a host without the guarantee: stop the writer only on a host
    that runs no VMs or whose inventory row says ``watchdog=False``.

    Raises:
        ConfigurationError: ``host_ip`` is not an IP address, or with a
            watchdog, ``watchdog_timeout`` and ``reset_margin`` cannot
            guarantee the host is reset before its heartbeat is stale
            (:meth:`HeartbeatTiming.check_watchdog`).
    """

    def __init__(
        self,
        *,
        storage: StorageAccess,
        clock: Clock,
        timing: HeartbeatTiming,
        host_ip: str,
        pools: Sequence[Pool] | Callable[[], Sequence[Pool]],
        reboot_on_failure: bool = True,
        self_fencer: SelfFencer | None = None,
        watchdog: Watchdog | None = None,
        watchdog_timeout: float = 300.0,
        reset_margin: float = 30.0,
        isolation: IsolationProbe | None = None,
        agent_window: float = 120.0,
    ) -> None:
        if watchdog is not None:
            timing.check_watchdog(watchdog_timeout, reset_margin)
        self.storage = storage
        self.clock = clock
        self.timing = timing
        self.host_ip = normalize_host_ip(host_ip)
        if callable(pools):
            self._pools: Callable[[], Sequence[Pool]] = pools
        else:
            fixed = tuple(pools)
            self._pools = lambda: fixed
        self.reboot_on_failure = reboot_on_failure
        self.self_fencer: SelfFencer = self_fencer if self_fencer is not None else SysrqSelfFencer()
        self.watchdog = watchdog
        self.watchdog_timeout = float(watchdog_timeout)
        self.reset_margin = float(reset_margin)
        self.isolation = isolation
        self.agent_window = float(agent_window)
        self.storage_faults = 0
        """Pools that could not be written while the host was not isolated (no reset)."""
        self._lock = threading.Lock()
        self._last_success: dict[str, float] = {}
        self._stuck: dict[str, threading.Thread] = {}
        self._last_started = 0.0
        self.last_pet: float | None = None
        """``clock.monotonic()`` of the last pet of the watchdog, None before the first."""
        self.skipped_pets = 0
        """Pets skipped because the round's first write was too old (see :class:`Pet`)."""

    @property
    def last_success(self) -> Mapping[str, float]:
        """Pool id → ``clock.now()`` epoch seconds of its last successful write (a copy)."""
        with self._lock:
            return types.MappingProxyType(dict(self._last_success))

    def run(self, stop: threading.Event) -> None:
        """Write heartbeats until ``stop`` is set or the plan ends after self-fencing.

        Sleeps with ``clock.wait(stop, seconds)``, so setting ``stop`` ends a
        sleep at once; a write in progress is not interrupted (it is bounded
        by ``timing.write_timeout``). Stopping never self-fences. With a
        watchdog, see the class docstring: armed first, disarmed only when
        ``stop`` ends the run.

        Raises:
            OSError: the self-fencer could not reset the host, or the
                watchdog could not be opened.
            ConfigurationError: the watchdog's effective timeout is longer
                than ``watchdog_timeout``.
        """
        watchdog = self.watchdog
        timeout = self.watchdog_timeout
        armed = False
        plan = writer_plan(
            self._pools,
            self.timing,
            reboot_on_failure=self.reboot_on_failure,
            watchdog=watchdog is not None,
            link=None if self.isolation is None else self._link,
        )
        answer: bool | None = None
        round_started: float | None = None
        clean = False
        try:
            while not stop.is_set():
                try:
                    action = plan.send(answer)
                except StopIteration:
                    return
                answer = None
                if isinstance(action, Write):
                    answer = self.write_once(action.pool)
                    if answer and round_started is None:
                        round_started = self._last_started
                elif isinstance(action, Pet) and action.proof == "agent":
                    assert watchdog is not None
                    assert armed
                    age = self._acknowledged_age()
                    if age is not None:
                        self._pet(watchdog, timeout, age, "the agent's last acknowledged ping")
                elif isinstance(action, Pet):
                    assert watchdog is not None
                    assert round_started is not None
                    age = self.clock.monotonic() - round_started
                    if armed:
                        self._pet(watchdog, timeout, age)
                    elif self._may_pet(timeout, age):
                        timeout = self._arm(watchdog, timeout)
                        armed = True
                    round_started = None
                elif isinstance(action, StorageFault):
                    self.storage_faults += 1
                    log.error("%s", action.reason)
                elif isinstance(action, Sleep):
                    if action.reason == "round":
                        round_started = None
                    if self.clock.wait(stop, action.seconds):
                        break
                else:
                    self.self_fencer.self_fence(action.reason)
            clean = True
        finally:
            plan.close()
            if watchdog is not None and armed:
                watchdog.close(disarm=clean)

    def _arm(self, watchdog: Watchdog, timeout: float) -> float:
        """Arm the watchdog (right after the first round that wrote every pool);
        the effective timeout."""
        effective = watchdog.arm(math.ceil(timeout))
        if effective > timeout:
            watchdog.close(disarm=True)
            raise ConfigurationError(
                f"watchdog {watchdog!r} runs a {effective:g} s countdown, longer than"
                f" cloudha.watchdog.timeout ({timeout:g} s)",
                key="cloudha.watchdog.timeout",
                value=timeout,
            )
        self.last_pet = self.clock.monotonic()
        return effective

    def _acknowledged_age(self) -> float | None:
        """Seconds since the agent sent its last acknowledged ping (None: none, or no probe)."""
        if self.isolation is None:
            return None
        acknowledged = self.isolation.acknowledged_at()
        if acknowledged is None:
            return None
        return self.clock.now().timestamp() - acknowledged

    def _link(self) -> LinkState:
        """:func:`~cloudha.heartbeat.isolation.link_state` now (the address pinged only
        when the agent is not connected)."""
        assert self.isolation is not None
        age = self._acknowledged_age()
        if age is not None and 0.0 <= age <= self.agent_window:
            return LinkState.CONNECTED
        return link_state(age, self.agent_window, self.isolation.isolation_answers())

    def _may_pet(
        self, timeout: float, age: float, proof: str = "this round's first heartbeat write"
    ) -> bool:
        """Whether a countdown (re)started now ends before a proof ``age`` seconds old is
        stale; counted and logged when not (arming and petting alike)."""
        if self.timing.may_pet(age, timeout, self.reset_margin):
            return True
        self.skipped_pets += 1
        log.error(
            "not petting the watchdog: %s started %g s ago; with the %g s watchdog and"
            " %g s reset margin the host could outlive it",
            proof,
            age,
            timeout,
            self.reset_margin,
        )
        return False

    def _pet(
        self,
        watchdog: Watchdog,
        timeout: float,
        age: float,
        proof: str = "this round's first heartbeat write",
    ) -> None:
        if not self._may_pet(timeout, age, proof):
            return
        try:
            watchdog.keepalive()
        except OSError as exc:
            log.error("cannot pet the watchdog %r: %s", watchdog, exc.strerror or exc)
            return
        self.last_pet = self.clock.monotonic()

    def write_once(self, pool: Pool) -> bool:
        """One attempt at writing the heartbeat (the current time) to ``pool``.

        The write runs in a worker thread and the attempt lasts at most
        ``timing.write_timeout`` seconds: a write to a hung NFS server must
        not hang the writer. A worker that outlives its attempt is
        remembered; the next attempt on that pool starts no second write
        while it is stuck: it waits for it within its own timeout, fails if
        it is still stuck, and otherwise writes a fresh heartbeat in the
        time left. So every failed attempt takes as long as a hung write
        would, and the writer self-fences only after its whole retry budget.
        Failures (an :class:`OSError`, a timeout, any other exception from
        the storage) are logged with the pool's id and the reason.

        Returns:
            True when the heartbeat was written, False otherwise.
        """
        path = heartbeat_path(pool.mount_point, self.host_ip)
        timeout = self.timing.write_timeout
        with self._lock:
            stuck = self._stuck.pop(pool.id, None)
        if stuck is not None:
            started = self.clock.monotonic()
            stuck.join(timeout)
            if stuck.is_alive():
                with self._lock:
                    self._stuck[pool.id] = stuck
                log.error(
                    "heartbeat write to pool %s (%s): the previous write is still hung"
                    " after %g s more; attempt counted as failed",
                    pool.id,
                    path,
                    timeout,
                )
                return False
            timeout -= self.clock.monotonic() - started
            if timeout <= 0:
                log.error(
                    "heartbeat write to pool %s (%s): no time left after the previous hung write",
                    pool.id,
                    path,
                )
                return False
        now = self.clock.now().timestamp()
        started = self.clock.monotonic()
        data = format_heartbeat(now)
        failure: list[BaseException] = []

        def write() -> None:
            try:
                self.storage.write_atomic(path, data)
            except Exception as exc:  # any storage failure is a failed attempt
                failure.append(exc)

        worker = threading.Thread(
            target=write, name=f"cloudha-heartbeat-write-{pool.id}", daemon=True
        )
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            with self._lock:
                self._stuck[pool.id] = worker
            log.error(
                "heartbeat write to pool %s (%s) timed out after %g s",
                pool.id,
                path,
                self.timing.write_timeout,
            )
            return False
        if failure:
            exc = failure[0]
            if isinstance(exc, OSError):
                log.error(
                    "heartbeat write to pool %s (%s) failed: %s", pool.id, path, exc.strerror or exc
                )
            else:
                log.error("heartbeat write to pool %s (%s) failed", pool.id, path, exc_info=exc)
            return False
        with self._lock:
            self._last_success[pool.id] = now
        self._last_started = started
        return True

    def __repr__(self) -> str:
        return f"HeartbeatWriter(host_ip={self.host_ip!r}, timing={self.timing!r})"
