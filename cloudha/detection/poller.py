"""The agent poller: pings on behalf of hosts whose agents do not ping by themselves.

CloudStack's KVM agents connect to the management server and ping it; a
fleet run by ``cloudha run`` has no such agents, so the management server
asks each KVM host itself. Every ``ping.interval`` :class:`AgentPoller`
probes every owned host without a direct agent through a
:class:`~cloudha.ports.HostPoller` and feeds each answer into the
:class:`~cloudha.detection.AgentManager` exactly as an agent's ping (a host
no longer monitored is loaded again with its VM report). A failed probe
feeds nothing: as in CloudStack, the *absence* of pings is what the monitor
detects, and the investigators then decide what it means.

Probes run on a bounded executor (``cloudha.poll.workers`` threads), each
within ``cloudha.poll.timeout`` seconds, so a dead host's timeout never
delays the others' pings. A host whose previous probe has not returned is
not probed again until it has (probes of one host never pile up), and an
answer that comes later than the timeout is discarded: a late ping would
make a host look alive for a time it was not heard from.

:class:`HypervisorPoller` is the poller over a
:class:`~cloudha.ports.HypervisorProbe` (libvirt): a host answers when its
hypervisor does, and its running domains are its VM report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Final

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.hostha.executor import BoundedExecutor
from cloudha.model import Host
from cloudha.ports import HostPoller, HypervisorProbe, PingReport, TaskExecutor
from cloudha.settings import Settings

__all__ = ["AgentPoller", "HypervisorPoller", "PollStats"]

log = logging.getLogger(__name__)

_PENDING: Final = 100_000
"""Queued probes the default executor accepts (one per host at most: far more than a fleet)."""


class PollStats:
    """Counters of an :class:`AgentPoller` (read them for tests and metrics)."""

    def __init__(self) -> None:
        self.rounds = 0
        """Rounds run."""
        self.probes = 0
        """Probes started."""
        self.answered = 0
        """Probes whose report was fed to the agent manager."""
        self.failed = 0
        """Probes that gave no answer (None, a ProbeError, or another error)."""
        self.late = 0
        """Answers discarded for coming after ``cloudha.poll.timeout``."""
        self.skipped = 0
        """Hosts not probed in a round because their previous probe had not returned."""
        self.refused = 0
        """Probes the executor refused (full or stopped)."""


class AgentPoller:
    """Probe every polled host once per ``ping.interval`` and feed the answers as pings.

    Args:
        poller: the status probe (:class:`~cloudha.ports.HostPoller`).
        hosts: the hosts to poll now (re-read every round: a host added or
            taken over later is polled too, one removed is dropped). A
            failure keeps the previous round's hosts.
        on_ping: called with each timely report (the management server's
            ``ping_received``, falling back to ``agent_connected``).
        settings: ``ping.interval``, ``cloudha.poll.timeout``, ``cloudha.poll.workers``.
        clock: the time source (lateness and the fixed rate).
        executor: where the probes run; by default ``cloudha.poll.workers``
            threads from ``thread_factory``. The simulator and unit tests pass
            an :class:`~cloudha.hostha.executor.InlineExecutor`.
        thread_factory: makes the default executor's threads.

    :meth:`tick` starts one round and returns the seconds until the next one
    (fixed rate: one ``ping.interval`` after this round started).
    """

    def __init__(
        self,
        poller: HostPoller,
        hosts: Callable[[], Iterable[Host]],
        on_ping: Callable[[PingReport], object],
        *,
        settings: Settings,
        clock: Clock,
        executor: TaskExecutor | None = None,
        thread_factory: Callable[..., threading.Thread] = threading.Thread,
    ) -> None:
        self.poller = poller
        self.hosts = hosts
        self.on_ping = on_ping
        self.settings = settings
        self.clock = clock
        self.timeout = settings.cloudha_poll_timeout
        self.executor: TaskExecutor = (
            executor
            if executor is not None
            else BoundedExecutor(
                "AgentPoller",
                workers=settings.cloudha_poll_workers,
                pending=_PENDING,
                thread_factory=thread_factory,
            )
        )
        self.stats = PollStats()
        self._lock = threading.Lock()
        self._in_flight: dict[str, float] = {}  # host id -> monotonic start of its probe
        self._overdue: set[str] = set()  # in flight past the timeout, logged once
        self._known: list[Host] = []
        self._next_round: float | None = None
        self._stopped = False

    # -- the loop ----------------------------------------------------------------

    def tick(self) -> float:
        """Start one round of probes; seconds until the next round."""
        now = self.clock.monotonic()
        interval = self.settings.ping_interval
        if self._stopped:
            return interval
        try:
            self._known = list(self.hosts())
        except Exception as exc:
            log.warning(
                "agent poller: the host list failed, polling the %d hosts known: %s",
                len(self._known),
                exc,
            )
        self.stats.rounds += 1
        for host in self._known:
            self._start(host, now)
        if self._next_round is None or self._next_round + interval <= now:
            self._next_round = now + interval
        else:
            self._next_round += interval
        return max(0.0, self._next_round - self.clock.monotonic())

    def _start(self, host: Host, now: float) -> None:
        with self._lock:
            started = self._in_flight.get(host.id)
            if started is not None:
                self.stats.skipped += 1
                if now - started > self.timeout and host.id not in self._overdue:
                    self._overdue.add(host.id)
                    log.warning(
                        "agent poller: the probe of %s has not returned %.1fs after it started"
                        " (limit %gs); %s is not probed again until it does",
                        host.id,
                        now - started,
                        self.timeout,
                        host.id,
                    )
                return
            self._in_flight[host.id] = now
            self.stats.probes += 1
        if not self.executor.submit(lambda: self._probe(host)):
            with self._lock:
                self._in_flight.pop(host.id, None)
                self.stats.probes -= 1
                self.stats.refused += 1

    def _probe(self, host: Host) -> None:
        started = self.clock.monotonic()
        report: PingReport | None = None
        try:
            if not self._stopped:
                report = self.poller.poll(host, timeout=self.timeout)
        except ProbeError as exc:
            log.debug("agent poller: %s does not answer: %s", host.id, exc)
        except Exception:
            log.exception("agent poller: the probe of %s raised", host.id)
        finally:
            with self._lock:
                self._in_flight.pop(host.id, None)
                self._overdue.discard(host.id)
        took = self.clock.monotonic() - started
        with self._lock:
            if report is None:
                self.stats.failed += 1
                return
            if report.host_id != host.id:
                self.stats.failed += 1
                log.error(
                    "agent poller: the probe of %s reported host %s; ignored",
                    host.id,
                    report.host_id,
                )
                return
            if took > self.timeout:
                self.stats.late += 1
                log.info(
                    "agent poller: %s answered after %.1fs (limit %gs); not counted as a ping",
                    host.id,
                    took,
                    self.timeout,
                )
                return
            if self._stopped:
                return
            self.stats.answered += 1
        try:
            self.on_ping(report)
        except Exception:
            log.exception("agent poller: feeding the ping of %s failed", host.id)

    # -- introspection and lifecycle ------------------------------------------------

    def in_flight(self) -> frozenset[str]:
        """Hosts whose probe has not returned yet."""
        with self._lock:
            return frozenset(self._in_flight)

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling: no new probe starts, answers still coming are dropped.

        Probes under way are given ``timeout`` seconds to return; idempotent.
        """
        self._stopped = True
        self.executor.shutdown(timeout)


class HypervisorPoller:
    """The :class:`~cloudha.ports.HostPoller` over a hypervisor probe (libvirt).

    A host answers when its hypervisor answers
    (:meth:`~cloudha.ports.HypervisorProbe.probe_host` within the timeout);
    the running domains it lists (``HypervisorReport.domains``) are its VM
    report, mapped to VM ids by ``vm_ids`` (by default a domain's name is its
    VM's id, as
    :meth:`cloudha.ha.libvirt_orchestrator.LibvirtOrchestrator.discover` registers them).
    A probe that does not list domains reports no VMs (``vms=None``).

    Args:
        probe: the hypervisor probe (e.g.
            :class:`~cloudha.transport.libvirt.LibvirtHypervisorProbe`).
        vm_ids: ``(host, domain names) -> VM ids``.
    """

    def __init__(
        self,
        probe: HypervisorProbe,
        *,
        vm_ids: Callable[[Host, Collection[str]], Collection[str]] | None = None,
    ) -> None:
        if not callable(getattr(probe, "probe_host", None)):
            raise ConfigurationError(
                f"HypervisorPoller needs a HypervisorProbe, got {type(probe).__name__}",
                key="probe",
            )
        self.probe = probe
        self.vm_ids = vm_ids

    def poll(self, host: Host, *, timeout: float) -> PingReport | None:
        report = self.probe.probe_host(host, timeout=timeout)
        if report.domains is None:
            return PingReport(host.id)
        names = report.domains
        vms = names if self.vm_ids is None else self.vm_ids(host, names)
        return PingReport(host.id, vms=frozenset(vms))

    def __repr__(self) -> str:
        return f"HypervisorPoller({self.probe!r})"
