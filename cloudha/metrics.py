"""The Prometheus exporter of a management server (``pip install 'cloudha[metrics]'``).

:class:`Metrics` is the :class:`~cloudha.ports.MetricsSink` adapter for
Prometheus. Give it to a :class:`~cloudha.ManagementServer`::

    from cloudha.metrics import Metrics

    metrics = Metrics()  # its own CollectorRegistry
    server = ManagementServer(..., metrics=metrics)
    endpoint = metrics.serve(9100)  # HTTP /metrics on 127.0.0.1:9100, in a daemon thread
    ...
    endpoint.close()

Two kinds of metric, both documented in docs/metrics.md:

* **counters and histograms** are derived from the server's evidence records
  alone (the server tees every record to :meth:`Metrics.record`), so the
  simulator and a production server count alike: investigations and the
  witnesses' verdicts, fences and their duration, detection latency (the
  host's last ping to its Alert or Down verdict), recovery latency (the Down
  verdict to each HA VM started again), the fast path, storm protection, the
  escalation ladder, freshness holds, HA works ended;
* **gauges** are read at scrape time from the watched server's local state,
  its host directory and its work store: hosts by status, HA works by type and
  step, the queue depth and the age of its oldest pending work, freshness and
  why it is lost, each host's phi, and fence-path readiness
  (:class:`cloudha.oobm.metrics.OobmCollector`). A scrape never contacts a BMC
  or a host: one directory query and one grouped work-store query at most.

Labels are small and bounded: never a VM id; a host id only on the per-host
gauges whose series the fleet bounds (phi, fence-path readiness, power state).

This module imports without prometheus-client; building a :class:`Metrics`
raises :class:`~cloudha.errors.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from cloudha._extras import require
from cloudha.detection.freshness import CAUSES
from cloudha.errors import ConfigurationError
from cloudha.evidence import Evidence
from cloudha.ha.work import TERMINAL_VALUES, Step, WorkType
from cloudha.status import Status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

    from cloudha.server import ManagementServer

__all__ = [
    "DETECTION_BUCKETS",
    "FENCE_BUCKETS",
    "NOT_JUDGING_CAUSES",
    "RECOVERY_BUCKETS",
    "Metrics",
    "MetricsEndpoint",
]

log = logging.getLogger(__name__)

DETECTION_BUCKETS: Final = (
    5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0, 240.0, 300.0,
    450.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
)  # fmt: skip
"""Bucket bounds (seconds) of ``cloudha_detection_latency_seconds``: a fixed timeout of
2.5 x 60 s is 150 s; a storage-heartbeat verdict of a few minutes more; ``alert.wait`` 30 min."""

FENCE_BUCKETS: Final = (
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Bucket bounds (seconds) of ``cloudha_fence_duration_seconds`` (a BMC answers in seconds)."""

RECOVERY_BUCKETS: Final = (
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
"""Bucket bounds (seconds) of ``cloudha_recovery_latency_seconds``."""

NOT_JUDGING_CAUSES: Final = (*CAUSES, "resuming", "unevaluated")
"""The ``cause`` label of ``cloudha_not_judging``: the freshness causes, then ``resuming``
(fresh, but not yet for enough intervals in a row) and ``unevaluated`` (no evaluation yet)."""

_STATUSES: Final = tuple(s.value for s in Status if s is not Status.UNKNOWN)
_STEPS: Final = frozenset(s.value for s in Step)
_TYPES: Final = frozenset(t.value for t in WorkType)
_TERMINAL: Final = frozenset(TERMINAL_VALUES)
_SAME_PING: Final = 0.01  # seconds: two behind_on_ping records of one outage (rounded to ms)
_FAST_PATH: Final = {
    "held": "held",
    "would fence": "shadow",
    "FENCED": "fenced",
    "NOT_FENCED": "not_fenced",
    "NOT_APPLICABLE": "not_applicable",
}


def _label(value: object, default: str = "none") -> str:
    """A label value from an evidence field: its string, or ``default`` when missing."""
    if value is None or value == "":
        return default
    return str(value)


def _number(value: object) -> float | None:
    """A finite, non-negative float from an evidence field, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not 0.0 <= number < float("inf"):
        return None
    return number


class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint (:meth:`Metrics.serve`)."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, address: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address = address
        """The address it listens on."""
        self.port: int = httpd.server_port
        """The port it listens on (the one the system chose when asked for 0)."""
        self._closed = False

    @property
    def url(self) -> str:
        """``http://address:port/metrics`` (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> MetricsEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsEndpoint({self.url!r})"


class Metrics:
    """Prometheus metrics of a management server (a :class:`~cloudha.ports.MetricsSink`).

    Args:
        registry: where the metrics are registered; a new
            :class:`prometheus_client.CollectorRegistry` by default (so that
            two servers in one process, or tests, never share counters).

    Raises:
        MissingExtraError: prometheus-client is not installed
            (``pip install 'cloudha[metrics]'``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        client = require("prometheus_client", "metrics", "the Prometheus exporter")
        self.registry: CollectorRegistry = (
            registry if registry is not None else client.CollectorRegistry()
        )
        """The registry every metric is in (what :meth:`render` and :meth:`serve` expose)."""
        self._lock = threading.Lock()
        self._server: ManagementServer | None = None
        self._last_ping: dict[str, float] = {}  # host -> t of its last ping (this outage)
        self._detected: dict[str, set[str]] = {}  # host -> verdicts observed this outage
        self._down_at: dict[str, float] = {}  # host -> t of its Down verdict
        counter, histogram = client.Counter, client.Histogram
        reg = self.registry
        self.evidence_records = counter(
            "cloudha_evidence_records",
            "Evidence records made by the server, by kind",
            ["kind"],
            registry=reg,
        )
        self.host_status_changes = counter(
            "cloudha_host_status_changes",
            "Host status changes the server made, by old and new status",
            ["from", "to"],
            registry=reg,
        )
        self.investigations = counter(
            "cloudha_investigations",
            "Host investigations, by the investigator that decided and the status found",
            ["decided_by", "result"],
            registry=reg,
        )
        self.investigator_verdicts = counter(
            "cloudha_investigator_verdicts",
            "Findings of each witness in host investigations, by investigator and verdict",
            ["source", "verdict"],
            registry=reg,
        )
        self.fences = counter(
            "cloudha_fences",
            "Fence attempts, by path (chain, suspicion, host_ha), fencer and outcome",
            ["path", "fencer", "outcome"],
            registry=reg,
        )
        self.fence_duration = histogram(
            "cloudha_fence_duration_seconds",
            "How long each fence attempt took, by path and fencer",
            ["path", "fencer"],
            buckets=FENCE_BUCKETS,
            registry=reg,
        )
        self.fence_escalations = counter(
            "cloudha_fence_escalations",
            "Fences that no level of the fence chain could confirm (an alert each)",
            registry=reg,
        )
        self.detection_latency = histogram(
            "cloudha_detection_latency_seconds",
            "From a host's last ping to its Alert or Down verdict (once per outage each)",
            ["status"],
            buckets=DETECTION_BUCKETS,
            registry=reg,
        )
        self.recovery_latency = histogram(
            "cloudha_recovery_latency_seconds",
            "From a host's Down verdict to each of its HA VMs started again by HA",
            buckets=RECOVERY_BUCKETS,
            registry=reg,
        )
        self.ha_scheduled = counter(
            "cloudha_ha_scheduled",
            "Hosts whose HA VMs were handed to the HA work queue, by reason",
            ["reason"],
            registry=reg,
        )
        self.ha_works_ended = counter(
            "cloudha_ha_works_ended",
            "HA works that reached a terminal step, by type and step",
            ["type", "step"],
            registry=reg,
        )
        self.ha_work_retries = counter(
            "cloudha_ha_work_retries",
            "HA work attempts given back to be tried again, by type",
            ["type"],
            registry=reg,
        )
        self.fast_path = counter(
            "cloudha_fast_path",
            "Hosts in Alert offered to fence on suspicion, by outcome",
            ["outcome"],
            registry=reg,
        )
        self.storm_held = counter(
            "cloudha_storm_held",
            "Suspicion fences held back by storm protection, by rule (disruption, budget)",
            ["rule"],
            registry=reg,
        )
        self.escalation_steps = counter(
            "cloudha_escalation_steps",
            "Steps of the escalation ladder, by level and outcome",
            ["level", "outcome"],
            registry=reg,
        )
        self.freshness_holds = counter(
            "cloudha_freshness_holds",
            "Decisions held because the server's own view was not fresh, by what was held",
            ["held"],
            registry=reg,
        )
        self.host_ha_recoveries = counter(
            "cloudha_host_ha_recoveries",
            "Host-HA recoveries (resets), by provider and outcome",
            ["provider", "outcome"],
            registry=reg,
        )
        self.shadow_decisions = counter(
            "cloudha_shadow_decisions",
            "Decisions shadow mode recorded and did not carry out, by evidence kind",
            ["kind"],
            registry=reg,
        )
        self.registry.register(_ScrapeCollector(self))

    # -- the MetricsSink port ------------------------------------------------------------

    def watch(self, server: ManagementServer) -> None:
        """Read ``server`` at every scrape from now on (the newest server given wins)."""
        with self._lock:
            self._server = server

    @property
    def server(self) -> ManagementServer | None:
        """The server watched (None before :meth:`watch`)."""
        with self._lock:
            return self._server

    def record(self, evidence: Evidence) -> None:
        """Count one evidence record (called by the server for each; never raises)."""
        try:
            self._count(evidence)
        except Exception:
            log.exception("metrics: could not count %s host=%s", evidence.kind, evidence.host)

    def _count(self, e: Evidence) -> None:
        d: Mapping[str, Any] = e.details
        self.evidence_records.labels(e.kind).inc()
        if d.get("shadow") is True:
            self.shadow_decisions.labels(e.kind).inc()
        handler = _HANDLERS.get(e.kind)
        if handler is not None:
            handler(self, e, d)

    def _behind_on_ping(self, e: Evidence, d: Mapping[str, Any]) -> None:
        since = _number(d.get("since_last_ping"))
        if e.host is None or since is None:
            return
        last = e.t - since
        with self._lock:
            known = self._last_ping.get(e.host)
            if known is None or abs(known - last) > _SAME_PING:
                self._last_ping[e.host] = last
                self._detected[e.host] = set()

    def _host_status(self, e: Evidence, d: Mapping[str, Any]) -> None:
        to = _label(d.get("to"))
        self.host_status_changes.labels(_label(d.get("from")), to).inc()
        host = e.host
        if host is None:
            return
        observe: float | None = None
        with self._lock:
            if to in (Status.ALERT.value, Status.DOWN.value):
                last = self._last_ping.get(host)
                seen = self._detected.setdefault(host, set())
                if last is not None and to not in seen:
                    seen.add(to)
                    observe = max(0.0, e.t - last)
                if to == Status.DOWN.value:
                    self._down_at.setdefault(host, e.t)
            elif to != Status.DISCONNECTED.value:
                # Up, Connecting, Removed ...: the outage is over (or the host left).
                self._last_ping.pop(host, None)
                self._detected.pop(host, None)
                self._down_at.pop(host, None)
        if observe is not None:
            self.detection_latency.labels(to).observe(observe)

    def _investigation(self, e: Evidence, d: Mapping[str, Any]) -> None:
        self.investigations.labels(_label(d.get("decided_by")), _label(d.get("result"))).inc()
        findings = d.get("findings")
        if isinstance(findings, list):
            for finding in findings:
                if isinstance(finding, Mapping):
                    self.investigator_verdicts.labels(
                        _label(finding.get("source")), _label(finding.get("verdict"))
                    ).inc()

    def _fence(self, e: Evidence, d: Mapping[str, Any]) -> None:
        fencer = _label(d.get("fencer"))
        self.fences.labels("chain", fencer, _label(d.get("outcome"))).inc()
        seconds = _number(d.get("seconds"))
        if seconds is not None:
            self.fence_duration.labels("chain", fencer).observe(seconds)

    def _fence_escalated(self, e: Evidence, d: Mapping[str, Any]) -> None:
        self.fence_escalations.inc()

    def _suspicion(self, e: Evidence, d: Mapping[str, Any]) -> None:
        outcome = d.get("outcome")
        self.fast_path.labels(
            "declined" if outcome is None else _FAST_PATH.get(str(outcome), "other")
        ).inc()
        if "fencer" in d:  # a power-off was attempted
            fencer = _label(d.get("fencer"))
            self.fences.labels("suspicion", fencer, _label(outcome)).inc()
            seconds = _number(d.get("seconds"))
            if seconds is not None:
                self.fence_duration.labels("suspicion", fencer).observe(seconds)

    def _storm(self, e: Evidence, d: Mapping[str, Any]) -> None:
        self.storm_held.labels(_label(d.get("rule"))).inc()

    def _escalation(self, e: Evidence, d: Mapping[str, Any]) -> None:
        self.escalation_steps.labels(
            _label(d.get("level"), "ladder"), _label(d.get("outcome"))
        ).inc()

    def _freshness(self, e: Evidence, d: Mapping[str, Any]) -> None:
        held = d.get("held")
        if held is not None:
            self.freshness_holds.labels(_label(held)).inc()

    def _ha_scheduled(self, e: Evidence, d: Mapping[str, Any]) -> None:
        if d.get("shadow") is not True:
            self.ha_scheduled.labels(_label(d.get("ha_reason"))).inc()

    def _ha_work(self, e: Evidence, d: Mapping[str, Any]) -> None:
        raw_type, step = _label(d.get("type")), _label(d.get("step"))
        type_ = raw_type if raw_type in _TYPES else "other"
        if step in _TERMINAL:
            self.ha_works_ended.labels(type_, step).inc()
        elif step == "Rescheduled":
            self.ha_work_retries.labels(type_).inc()
        if (
            raw_type == WorkType.HA.value
            and step == Step.DONE.value
            and d.get("started_on") is not None
            and e.host is not None
        ):
            with self._lock:
                down_at = self._down_at.get(e.host)
            if down_at is not None:
                self.recovery_latency.observe(max(0.0, e.t - down_at))

    def _host_ha_fence(self, e: Evidence, d: Mapping[str, Any]) -> None:
        outcome = "FENCED" if d.get("fenced") is True else "NOT_FENCED"
        self.fences.labels("host_ha", _label(d.get("provider")), outcome).inc()

    def _host_ha_recovery(self, e: Evidence, d: Mapping[str, Any]) -> None:
        outcome = "succeeded" if d.get("recovered") is True else "failed"
        self.host_ha_recoveries.labels(_label(d.get("provider")), outcome).inc()

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of every metric (what ``/metrics`` answers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> MetricsEndpoint:
        """Serve ``/metrics`` over HTTP on ``address:port`` from a daemon thread.

        ``port`` 0 lets the system choose (:attr:`MetricsEndpoint.port` says which).

        Raises:
            ConfigurationError: the port is not an integer in 0..65535, or the
                address cannot be listened on (in use, not local, refused).
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(
                f"metrics port must be an integer from 0 to 65535, got {port!r}",
                key="metrics port",
                value=port,
            )
        from prometheus_client import start_http_server

        try:
            httpd, thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"the metrics endpoint cannot listen on {address} port {port}: "
                f"{exc.strerror or exc}",
                key="metrics port",
                value=port,
            ) from exc
        return MetricsEndpoint(httpd, thread, address)

    def __repr__(self) -> str:
        server = self.server
        return f"Metrics({'unwatched' if server is None else server.server_id})"


_HANDLERS: Final = {
    "behind_on_ping": Metrics._behind_on_ping,
    "host_status": Metrics._host_status,
    "investigation": Metrics._investigation,
    "fence": Metrics._fence,
    "fence_escalated": Metrics._fence_escalated,
    "suspicion": Metrics._suspicion,
    "storm": Metrics._storm,
    "escalation": Metrics._escalation,
    "freshness": Metrics._freshness,
    "ha_scheduled": Metrics._ha_scheduled,
    "ha_work": Metrics._ha_work,
    "host_ha_fence": Metrics._host_ha_fence,
    "host_ha_recovery": Metrics._host_ha_recovery,
}
"""The evidence kinds that feed a metric beyond ``cloudha_evidence_records_total``."""


class _ScrapeCollector:
    """The gauges read from the watched server at each scrape (cheap, local, no BMC)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # registering must not scrape

    def collect(self) -> Iterator[Metric]:
        server = self.metrics.server
        if server is None:
            return
        from prometheus_client.core import GaugeMetricFamily as Gauge

        from cloudha.oobm.metrics import OobmCollector

        up = Gauge(
            "cloudha_metrics_source_up",
            "1 when the scrape could read the source (directory, work_store), 0 when it failed",
            labels=["source"],
        )
        info = Gauge(
            "cloudha_server_info", "The management server these metrics describe", labels=["server"]
        )
        info.add_metric([server.server_id], 1.0)
        yield info
        hosts = self._hosts(server, Gauge)
        up.add_metric(["directory"], 0.0 if hosts is None else 1.0)
        if hosts is not None:
            yield hosts
        works = self._works(server, Gauge)
        up.add_metric(["work_store"], 0.0 if works is None else 1.0)
        if works is not None:
            yield from works
        yield up
        yield from self._freshness(server, Gauge)
        yield from self._detector(server, Gauge)
        yield from OobmCollector(server.oobm).collect()

    @staticmethod
    def _hosts(server: ManagementServer, family: type[GaugeMetricFamily]) -> Metric | None:
        # The raw directory, not the watched one: a scrape must not count as the
        # directory answering the server (freshness judges the server's own reads).
        try:
            rows = server.directory.list_hosts()
        except Exception as exc:
            log.warning("metrics: the host directory did not answer: %s", exc)
            return None
        counts = dict.fromkeys(_STATUSES, 0)
        for host in rows:
            if host.management_server_id not in (None, server.server_id):
                continue
            status = "none" if host.status is None else host.status.value
            counts[status] = counts.get(status, 0) + 1
        gauge = family(
            "cloudha_hosts",
            "Hosts this server owns (or nobody owns) in the host directory, by status",
            labels=["status"],
        )
        for status, count in counts.items():
            gauge.add_metric([status], float(count))
        return gauge

    @staticmethod
    def _works(server: ManagementServer, family: type[GaugeMetricFamily]) -> list[Metric] | None:
        try:
            tally = server.store.tally()
        except Exception as exc:
            log.warning("metrics: the HA work store did not answer: %s", exc)
            return None
        now = server.clock.now()
        works = family(
            "cloudha_ha_works",
            "HA works in the work store, by type and step (terminal steps until cleaned up)",
            labels=["type", "step"],
        )
        groups: dict[tuple[str, str], int] = {}
        depth = 0
        oldest = None
        for row in tally:
            key = (
                row.type if row.type in _TYPES else "other",
                row.step if row.step in _STEPS else "other",
            )
            groups[key] = groups.get(key, 0) + row.count
            if row.pending:
                depth += row.count
                oldest = row.oldest if oldest is None else min(oldest, row.oldest)
        for (type_, step), count in sorted(groups.items()):
            works.add_metric([type_, step], float(count))
        queue = family(
            "cloudha_ha_queue_depth", "HA works not in a terminal step (queued or in progress)"
        )
        queue.add_metric([], float(depth))
        age = family(
            "cloudha_ha_queue_oldest_age_seconds",
            "Age of the oldest HA work not in a terminal step (0 when there is none)",
        )
        age.add_metric([], 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()))
        return [works, queue, age]

    @staticmethod
    def _freshness(server: ManagementServer, family: type[GaugeMetricFamily]) -> Iterator[Metric]:
        freshness = server.freshness
        view = freshness.view
        judging = freshness.judging()
        fresh = family(
            "cloudha_fresh", "1 when the server's own view was fresh at its last evaluation"
        )
        fresh.add_metric([], 1.0 if view is not None and view.fresh else 0.0)
        yield fresh
        judge = family(
            "cloudha_judging", "1 when the server judges hosts (its view fresh long enough)"
        )
        judge.add_metric([], 1.0 if judging else 0.0)
        yield judge
        causes: set[str] = set()
        if judging:
            pass  # judging (or freshness is off: cloudha.freshness.enabled false)
        elif view is None:
            causes.add("unevaluated")
        else:
            causes.update(view.causes)
            if view.fresh:
                causes.add("resuming")
        if not judging and freshness.lapsed() is not None:
            causes.add("membership")  # checked at once, not only at the last evaluation
            causes.discard("resuming")
        why = family(
            "cloudha_not_judging",
            "1 for each reason the server does not judge hosts now, 0 for the others",
            labels=["cause"],
        )
        for cause in NOT_JUDGING_CAUSES:
            why.add_metric([cause], 1.0 if cause in causes else 0.0)
        yield why

    @staticmethod
    def _detector(server: ManagementServer, family: type[GaugeMetricFamily]) -> Iterator[Metric]:
        ping_map = server.ping_map
        hosts = ping_map.hosts()
        monitored = family("cloudha_monitored_hosts", "Hosts in the server's ping map")
        monitored.add_metric([], float(len(hosts)))
        yield monitored
        if server.agents.deadlines.phi is None:
            return  # phi accrual is off: no phi series at all
        phi = family(
            "cloudha_detector_phi",
            "Each monitored host's phi (suspicion level of the phi accrual detector)",
            labels=["host"],
        )
        highest = 0.0
        for host_id in sorted(hosts):
            value = ping_map.phi(host_id)
            if value is not None:
                phi.add_metric([host_id], value)
                highest = max(highest, value)
        yield phi
        top = family("cloudha_detector_phi_max", "The highest phi of any monitored host")
        top.add_metric([], highest)
        yield top
