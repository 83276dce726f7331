"""cloudha.metrics: counters from evidence records, gauges read at scrape time, the port."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from cloudha import (
    ConfigurationError,
    Evidence,
    EvidenceLog,
    Host,
    InvestigatorChain,
    ManagementServer,
    Settings,
    Status,
    Vm,
    VmState,
)
from cloudha.ha.store import WorkType
from cloudha.metrics import NOT_JUDGING_CAUSES, Metrics
from cloudha.ports import MetricsSink
from cloudha.testing import (
    FakeAgentGateway,
    FakeClock,
    FakeOrchestratorHost,
    InMemoryHostDirectory,
    InMemoryOrchestrator,
    RecordingAlertSink,
    RecordingMetricsSink,
    ScriptedInvestigator,
    check_metrics_sink,
)
from cloudha.testing.contract import sample_evidence

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of the exposition, by name and label set (parsed, as Prometheus would)."""
    found: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def ev(
    kind: str, t: float, host: str | None = "h1", vm: str | None = None, **details: Any
) -> Evidence:
    return Evidence(kind, t, AT, "ms1", host, vm, "test", details)


def feed(metrics: Metrics, records: Iterable[Evidence]) -> None:
    for record in records:
        metrics.record(record)


# -- counters and histograms from evidence ----------------------------------------------


def test_detection_latency_runs_from_the_last_ping_to_each_verdict_once_per_outage() -> None:
    m = Metrics()
    feed(
        m,
        [
            ev("behind_on_ping", 442.346, since_last_ping=151.5, timeout=150.0),
            ev(
                "host_status",
                442.346,
                **{"from": "Up", "to": "Alert", "event": "AgentDisconnected"},
            ),
            # Examined again in the same outage: the same last ping (rounded to the ms).
            ev("behind_on_ping", 502.346, since_last_ping=211.5004),
            ev("host_status", 802.346, **{"from": "Alert", "to": "Down", "event": "HostDown"}),
            # A second Down verdict of the same outage (re-adopted after a restart): not again.
            ev("host_status", 900.0, **{"from": "Disconnected", "to": "Down"}),
            # The host comes back: the outage is over; the next one is timed from its own ping.
            ev("host_status", 1000.0, **{"from": "Down", "to": "Up"}),
            ev("behind_on_ping", 2000.0, since_last_ping=155.0),
            ev("host_status", 2000.0, **{"from": "Up", "to": "Alert"}),
            # A verdict about a host whose last ping nobody recorded: no observation.
            ev("host_status", 2100.0, host="h9", **{"from": "Up", "to": "Down"}),
        ],
    )
    found = samples(m)
    name = "cloudha_detection_latency_seconds"
    assert value(found, f"{name}_count", status="Alert") == 2
    assert value(found, f"{name}_sum", status="Alert") == pytest.approx(151.5 + 155.0)
    assert value(found, f"{name}_count", status="Down") == 1
    assert value(found, f"{name}_sum", status="Down") == pytest.approx(511.5)
    assert value(found, f"{name}_bucket", status="Alert", le="150.0") == 0
    assert value(found, f"{name}_bucket", status="Alert", le="180.0") == 2
    assert value(found, f"{name}_bucket", status="Down", le="450.0") == 0
    assert value(found, f"{name}_bucket", status="Down", le="600.0") == 1
    assert value(found, "cloudha_host_status_changes_total", **{"from": "Alert", "to": "Down"}) == 1
    assert value(found, "cloudha_host_status_changes_total", **{"from": "Up", "to": "Alert"}) == 2
    assert value(found, "cloudha_evidence_records_total", kind="host_status") == 6


def test_a_host_that_pinged_between_two_checks_starts_a_new_outage() -> None:
    m = Metrics()
    feed(
        m,
        [
            ev("behind_on_ping", 100.0, since_last_ping=50.0),  # last ping at 50
            ev("host_status", 100.0, **{"from": "Up", "to": "Alert"}),
            ev("behind_on_ping", 300.0, since_last_ping=60.0),  # it pinged at 240 meanwhile
            ev("host_status", 310.0, **{"from": "Up", "to": "Alert"}),
        ],
    )
    found = samples(m)
    assert value(found, "cloudha_detection_latency_seconds_count", status="Alert") == 2
    assert value(found, "cloudha_detection_latency_seconds_sum", status="Alert") == 50 + 70


def test_recovery_latency_runs_from_the_down_verdict_to_each_restart() -> None:
    m = Metrics()
    done = {"type": "HA", "step": "Done"}
    feed(
        m,
        [
            ev("host_status", 800.0, **{"from": "Alert", "to": "Down"}),
            ev("ha_work", 801.0, vm="vm1", type="HA", step="Investigating"),
            ev("ha_work", 860.0, vm="vm1", started_on="h3", **done),
            ev("ha_work", 1400.0, vm="vm2", started_on="h2", **done),
            # Done without a start (the VM was stopped, or gone): not a recovery.
            ev("ha_work", 900.0, vm="vm3", **done),
            # A restart of a VM whose host nobody declared Down: not timed either.
            ev("ha_work", 905.0, host="h7", vm="vm4", started_on="h1", **done),
            ev("ha_work", 910.0, vm="vm5", type="HA", step="Rescheduled", retry_in=30.0),
            ev("ha_work", 920.0, vm="vm6", type="Migration", step="Error"),
            ev("ha_scheduled", 800.0, ha_reason="HostDown", investigate=True),
            ev("ha_scheduled", 800.0, ha_reason="HostDown", investigate=True, shadow=True),
        ],
    )
    found = samples(m)
    assert value(found, "cloudha_recovery_latency_seconds_count") == 2
    assert value(found, "cloudha_recovery_latency_seconds_sum") == 60 + 600
    assert value(found, "cloudha_recovery_latency_seconds_bucket", le="60.0") == 1
    assert value(found, "cloudha_recovery_latency_seconds_bucket", le="600.0") == 2
    assert value(found, "cloudha_ha_works_ended_total", type="HA", step="Done") == 4
    assert value(found, "cloudha_ha_works_ended_total", type="Migration", step="Error") == 1
    assert value(found, "cloudha_ha_work_retries_total", type="HA") == 1
    assert value(found, "cloudha_ha_scheduled_total", reason="HostDown") == 1
    assert value(found, "cloudha_shadow_decisions_total", kind="ha_scheduled") == 1


def test_fences_by_path_fencer_and_outcome_with_their_duration() -> None:
    m = Metrics()
    feed(
        m,
        [
            ev("fence", 1.0, vm="vm1", fencer="LibvirtFencer", outcome="NOT_FENCED", seconds=10.0),
            ev("fence", 2.0, vm="vm1", fencer="PowerFencer", outcome="FENCED", seconds=2.5),
            ev("fence", 3.0, vm="vm2", fencer="PowerFencer", outcome="FENCED", seconds=0.75),
            ev("fence_escalated", 4.0, vm="vm3", attempts=[]),
            ev(
                "suspicion",
                5.0,
                qualifies=True,
                fencer="PowerFencer",
                outcome="FENCED",
                seconds=1.0,
            ),
            ev("suspicion", 6.0, qualifies=False),
            ev("suspicion", 7.0, qualifies=True, outcome="held", held="budget spent"),
            ev("suspicion", 8.0, qualifies=True, outcome="would fence", shadow=True),
            ev("storm", 7.0, rule="budget", domains=[]),
            ev("storm", 7.5, rule="disruption", domains=[]),
            ev("host_ha_fence", 9.0, fenced=True, proven=False, provider="kvmhaprovider"),
            ev("host_ha_fence", 9.5, fenced=False, proven=True, provider="kvmhaprovider"),
        ],
    )
    found = samples(m)
    fences = "cloudha_fences_total"
    assert value(found, fences, path="chain", fencer="PowerFencer", outcome="FENCED") == 2
    assert value(found, fences, path="chain", fencer="LibvirtFencer", outcome="NOT_FENCED") == 1
    assert value(found, fences, path="suspicion", fencer="PowerFencer", outcome="FENCED") == 1
    assert value(found, fences, path="host_ha", fencer="kvmhaprovider", outcome="FENCED") == 1
    assert value(found, fences, path="host_ha", fencer="kvmhaprovider", outcome="NOT_FENCED") == 1
    duration = "cloudha_fence_duration_seconds"
    assert value(found, f"{duration}_count", path="chain", fencer="PowerFencer") == 2
    assert value(found, f"{duration}_sum", path="chain", fencer="PowerFencer") == 3.25
    assert value(found, f"{duration}_bucket", path="chain", fencer="PowerFencer", le="1.0") == 1
    assert value(found, f"{duration}_bucket", path="chain", fencer="PowerFencer", le="5.0") == 2
    assert value(found, f"{duration}_sum", path="suspicion", fencer="PowerFencer") == 1.0
    assert value(found, "cloudha_fence_escalations_total") == 1
    fast = "cloudha_fast_path_total"
    assert [value(found, fast, outcome=o) for o in ("fenced", "declined", "held", "shadow")] == [
        1,
        1,
        1,
        1,
    ]
    assert value(found, "cloudha_storm_held_total", rule="budget") == 1
    assert value(found, "cloudha_storm_held_total", rule="disruption") == 1
    assert value(found, "cloudha_shadow_decisions_total", kind="suspicion") == 1


def test_investigations_by_decider_and_every_witness_verdict() -> None:
    m = Metrics()
    findings = [
        {"source": "CheckHealth", "verdict": "UNKNOWN", "reason": "no answer"},
        {"source": "KVMInvestigator", "verdict": "DEAD", "reason": "stale heartbeat"},
    ]
    feed(
        m,
        [
            ev(
                "investigation", 1.0, result="Down", decided_by="KVMInvestigator", findings=findings
            ),
            ev("investigation", 2.0, result=None, decided_by=None, findings=findings[:1]),
        ],
    )
    found = samples(m)
    inv = "cloudha_investigations_total"
    assert value(found, inv, decided_by="KVMInvestigator", result="Down") == 1
    assert value(found, inv, decided_by="none", result="none") == 1
    verdicts = "cloudha_investigator_verdicts_total"
    assert value(found, verdicts, source="CheckHealth", verdict="UNKNOWN") == 2
    assert value(found, verdicts, source="KVMInvestigator", verdict="DEAD") == 1


def test_escalation_freshness_holds_and_host_ha_recoveries() -> None:
    m = Metrics()
    feed(
        m,
        [
            ev("escalation", 1.0, level="agent.restart", step=1, outcome="failed", timeout=180.0),
            ev("escalation", 2.0, level="fence", step=2, outcome="started", timeout=None),
            ev("escalation", 3.0, level=None, step=None, outcome="reset", timeout=None),
            ev("freshness", 4.0, host=None, fresh=False, judging=False, reasons=["x"]),
            ev("freshness", 5.0, fresh=False, held="investigation"),
            ev("freshness", 6.0, fresh=False, held="investigation"),
            ev("host_ha_recovery", 7.0, recovered=True, provider="kvmhaprovider"),
            ev("a_kind_nobody_counts", 8.0),
        ],
    )
    found = samples(m)
    steps = "cloudha_escalation_steps_total"
    assert value(found, steps, level="agent.restart", outcome="failed") == 1
    assert value(found, steps, level="fence", outcome="started") == 1
    assert value(found, steps, level="ladder", outcome="reset") == 1
    assert value(found, "cloudha_freshness_holds_total", held="investigation") == 2
    recoveries = "cloudha_host_ha_recoveries_total"
    assert value(found, recoveries, provider="kvmhaprovider", outcome="succeeded") == 1
    assert value(found, "cloudha_evidence_records_total", kind="a_kind_nobody_counts") == 1
    assert value(found, "cloudha_evidence_records_total", kind="freshness") == 3


def test_no_label_is_a_vm_id_and_hosts_label_only_per_host_gauges() -> None:
    m = Metrics()
    check_metrics_sink(m, scrape=m.render)  # every kind, odd fields, and a watched server
    per_host = {"cloudha_detector_phi", "cloudha_fence_path_ready"}
    per_host |= {"cloudha_fence_path_checked_age_seconds", "cloudha_oobm_power_state"}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            assert "vm" not in sample.labels, sample
            assert not any(v.startswith("vm") for v in sample.labels.values()), sample
            if "host" in sample.labels:
                assert family.name in per_host, sample


# -- gauges read from the server at scrape time --------------------------------------------


class Rig:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.clock = FakeClock(1000.0)
        self.directory = InMemoryHostDirectory(
            [
                Host("h1", status=Status.UP, last_ping=1000.0, management_server_id="ms1"),
                Host("h2", status=Status.UP, last_ping=1000.0, management_server_id="ms1"),
                Host("h3", status=Status.DOWN, last_ping=900.0, management_server_id="ms1"),
                Host("h4", status=Status.ALERT, last_ping=900.0, management_server_id=None),
                Host("h5", status=Status.UP, last_ping=1000.0, management_server_id="ms2"),
            ]
        )
        self.gateway = FakeAgentGateway(dict.fromkeys(("h1", "h2", "h3", "h4", "h5"), True))
        self.engine = sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
        self.metrics = Metrics()
        self.evidence = EvidenceLog()
        self.server = ManagementServer(
            settings=Settings.from_mapping({"ping.interval": 10, **(settings or {})}),
            clock=self.clock,
            directory=self.directory,
            gateway=self.gateway,
            orchestrator=InMemoryOrchestrator(
                [FakeOrchestratorHost(h) for h in ("h1", "h2", "h3")],
                [Vm("vm1", host_id="h3", last_host_id="h3", ha_enabled=True)],
            ),
            alerts=RecordingAlertSink(),
            engine=self.engine,
            evidence=self.evidence,
            investigators=InvestigatorChain([ScriptedInvestigator(self.clock)]),
            discover_plugins=False,
            metrics=self.metrics,
        )

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def rig() -> Iterable[Rig]:
    made = Rig()
    yield made
    made.close()


def test_hosts_by_status_counts_the_hosts_this_server_owns(rig: Rig) -> None:
    found = samples(rig.metrics)
    assert value(found, "cloudha_hosts", status="Up") == 2  # h5 belongs to ms2
    assert value(found, "cloudha_hosts", status="Down") == 1
    assert value(found, "cloudha_hosts", status="Alert") == 1  # owned by nobody
    assert value(found, "cloudha_hosts", status="Disconnected") == 0
    assert value(found, "cloudha_server_info", server="ms1") == 1
    assert value(found, "cloudha_metrics_source_up", source="directory") == 1


def test_ha_works_by_type_and_step_with_queue_depth_and_oldest_age(rig: Rig) -> None:
    store = rig.server.store
    found = samples(rig.metrics)
    assert value(found, "cloudha_ha_queue_depth") == 0
    assert value(found, "cloudha_ha_queue_oldest_age_seconds") == 0
    store.add("vm1", WorkType.HA, VmState.RUNNING, host_id="h3")
    rig.clock.advance(30)
    store.add("vm2", WorkType.HA, VmState.RUNNING, host_id="h3")
    store.add("vm3", WorkType.MIGRATION, VmState.RUNNING, host_id="h1")
    work = store.claim("ms1")
    assert work is not None
    store.finish(work)  # vm1's: Done, no longer pending
    rig.clock.advance(15)
    found = samples(rig.metrics)
    assert value(found, "cloudha_ha_works", type="HA", step="Done") == 1
    assert value(found, "cloudha_ha_works", type="HA", step="Scheduled") == 1
    assert value(found, "cloudha_ha_works", type="Migration", step="Scheduled") == 1
    assert value(found, "cloudha_ha_queue_depth") == 2
    assert value(found, "cloudha_ha_queue_oldest_age_seconds") == 15
    assert value(found, "cloudha_metrics_source_up", source="work_store") == 1


def test_freshness_gauges_say_why_the_server_does_not_judge(rig: Rig) -> None:
    found = samples(rig.metrics)
    assert value(found, "cloudha_fresh") == 0
    assert value(found, "cloudha_judging") == 0
    assert value(found, "cloudha_not_judging", cause="unevaluated") == 1
    rig.server.recover(connected=["h1", "h2"])
    rig.server.freshness.evaluate()
    found = samples(rig.metrics)
    assert value(found, "cloudha_fresh") == 1
    assert value(found, "cloudha_judging") == 0
    assert value(found, "cloudha_not_judging", cause="resuming") == 1
    assert value(found, "cloudha_not_judging", cause="unevaluated") == 0
    for _ in range(3):
        rig.clock.advance(10)
        for host in ("h1", "h2"):
            rig.server.agents.ping_received(host)
        rig.server.freshness.evaluate()
    found = samples(rig.metrics)
    assert value(found, "cloudha_judging") == 1
    assert all(
        value(found, "cloudha_not_judging", cause=c) == 0
        for c in ("paused", "pings", "store", "directory", "resuming", "unevaluated")
    )
    rig.clock.advance(100)  # nobody pings: the actual state goes stale
    rig.server.freshness.evaluate()
    found = samples(rig.metrics)
    assert value(found, "cloudha_fresh") == 0
    assert value(found, "cloudha_judging") == 0
    assert value(found, "cloudha_not_judging", cause="pings") == 1
    assert value(found, "cloudha_not_judging", cause="resuming") == 0


def test_phi_is_exported_per_host_only_when_the_detector_is_on(rig: Rig) -> None:
    rig.server.recover(connected=["h1", "h2"])
    found = samples(rig.metrics)
    assert value(found, "cloudha_monitored_hosts") == 2
    assert not any(name.startswith("cloudha_detector_phi") for name, _ in found)
    on = Rig({"cloudha.phi.enabled": True})
    try:
        on.server.recover(connected=["h1", "h2"])
        for _ in range(5):
            on.clock.advance(10)
            for host in ("h1", "h2"):
                on.server.agents.ping_received(host)
        on.clock.advance(25)  # both 25 s late on a 10 s rhythm
        on.server.agents.ping_received("h2")  # h2 is on time again
        on.clock.advance(5)
        found = samples(on.metrics)
        phi = {h: value(found, "cloudha_detector_phi", host=h) for h in ("h1", "h2")}
        assert phi == {h: on.server.ping_map.phi(h) for h in ("h1", "h2")}
        late, on_time = phi["h1"], phi["h2"]
        assert late is not None
        assert on_time is not None
        assert late > on_time
        assert value(found, "cloudha_detector_phi_max") == late
        on.clock.advance(60)
        later = value(samples(on.metrics), "cloudha_detector_phi", host="h1")
        assert later is not None
        assert later > late
    finally:
        on.close()


def test_a_scrape_reads_no_agent_and_survives_a_silent_directory(rig: Rig) -> None:
    rig.server.recover(connected=["h1", "h2"])
    rig.gateway.calls.clear()

    def down(**_: Any) -> list[Host]:
        raise ConnectionError("directory down")

    rig.directory.list_hosts = down  # type: ignore[method-assign]
    found = samples(rig.metrics)
    assert value(found, "cloudha_metrics_source_up", source="directory") == 0
    assert value(found, "cloudha_hosts", status="Up") is None
    assert value(found, "cloudha_ha_queue_depth") == 0  # the other sources still answer
    assert rig.gateway.calls == []
    # The scrape's directory failure is not the server's: its freshness did not note it.
    assert rig.server.freshness.view is None or "directory" not in rig.server.freshness.view.causes


# -- the port and its wiring -----------------------------------------------------------------


def test_the_server_tees_its_evidence_into_the_sink_and_keeps_its_own_log() -> None:
    clock = FakeClock(1000.0)
    sink = RecordingMetricsSink()
    evidence = EvidenceLog()
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    directory = InMemoryHostDirectory(
        [Host("h1", status=Status.UP, last_ping=1000.0, management_server_id="ms1")]
    )
    server = ManagementServer(
        settings=Settings.from_mapping({"ping.interval": 10}),
        clock=clock,
        directory=directory,
        gateway=FakeAgentGateway({"h1": None}),
        orchestrator=InMemoryOrchestrator([FakeOrchestratorHost("h1")], []),
        alerts=RecordingAlertSink(),
        engine=engine,
        evidence=evidence,
        investigators=InvestigatorChain([ScriptedInvestigator(clock)]),
        discover_plugins=False,
        metrics=sink,
    )
    try:
        assert sink.servers == [server]
        assert server.metrics is sink
        assert server.evidence is evidence
        server.recover(connected=["h1"])
        clock.advance(100)
        server.monitor_tick()
        assert "behind_on_ping" in sink.kinds()
        assert [r.kind for r in evidence.records()] == sink.kinds()
    finally:
        engine.dispose()
    assert isinstance(sink, MetricsSink)


def test_a_metrics_sink_without_watch_is_refused_naming_the_port() -> None:
    class CountsOnly:
        def record(self, evidence: Evidence) -> None:
            pass

    clock = FakeClock(0.0)
    with pytest.raises(
        ConfigurationError, match=r"port metrics \(CountsOnly\) has no method watch"
    ):
        ManagementServer(
            settings=Settings(),
            clock=clock,
            directory=InMemoryHostDirectory(),
            gateway=FakeAgentGateway(),
            orchestrator=InMemoryOrchestrator([], []),
            alerts=RecordingAlertSink(),
            engine=sa.create_engine("sqlite://"),
            discover_plugins=False,
            metrics=CountsOnly(),  # type: ignore[arg-type]
        )


def test_the_contract_holds_for_both_sinks_and_catches_a_raising_one() -> None:
    metrics = Metrics()
    check_metrics_sink(metrics, scrape=metrics.render)
    check_metrics_sink(RecordingMetricsSink())

    class Fussy(RecordingMetricsSink):
        def record(self, evidence: Evidence) -> None:
            _ = float(evidence.details["since_last_ping"])  # KeyError on most kinds

    with pytest.raises(AssertionError, match=r"record\(.*\) raised KeyError"):
        check_metrics_sink(Fussy())

    class Chatty(Metrics):
        def render(self) -> bytes:
            server = self.server
            assert server is not None
            for host in server.directory.list_hosts():
                server.gateway.check_health(host, timeout=1.0)
            return super().render()

    chatty = Chatty()
    with pytest.raises(AssertionError, match="a scrape called agents"):
        check_metrics_sink(chatty, scrape=chatty.render)


def test_a_restarted_server_is_the_one_watched() -> None:
    metrics = Metrics()
    assert metrics.server is None
    assert repr(metrics) == "Metrics(unwatched)"
    first, second = Rig(), Rig()
    try:
        metrics.watch(first.server)
        metrics.watch(second.server)
        assert metrics.server is second.server
    finally:
        first.close()
        second.close()


def test_a_bad_port_is_a_one_line_configuration_error() -> None:
    metrics = Metrics()
    for port in (-1, 65536, "9100", True):
        with pytest.raises(ConfigurationError, match="metrics port must be an integer"):
            metrics.serve(port)  # type: ignore[arg-type]


def test_every_metric_is_documented_with_its_labels() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in text.splitlines()
        if line.startswith("| `cloudha_")
    }
    on = Rig({"cloudha.phi.enabled": True})
    try:
        on.server.recover(connected=["h1", "h2"])
        feed(on.metrics, sample_evidence())  # every counter gets a series, with its labels
        names = []
        for family in on.metrics.registry.collect():
            name = f"{family.name}_total" if family.type == "counter" else family.name
            names.append(name)
            assert name in rows, f"{name} is not in docs/metrics.md"
            labels = {k for s in family.samples for k in s.labels if k != "le"}
            for label in labels:
                assert f"`{label}`" in rows[name], (name, label)
    finally:
        on.close()
    assert sorted(rows) == sorted(names), "docs/metrics.md lists a metric that does not exist"


def test_with_freshness_off_the_server_always_judges_and_gives_no_cause() -> None:
    off = Rig({"cloudha.freshness.enabled": False})
    try:
        off.server.freshness.evaluate()
        found = samples(off.metrics)
        assert value(found, "cloudha_judging") == 1
        assert value(found, "cloudha_fresh") == 0  # nothing is evaluated
        causes = [k for k in found if k[0] == "cloudha_not_judging"]
        assert len(causes) == len(NOT_JUDGING_CAUSES)
        assert all(found[k] == 0 for k in causes)
    finally:
        off.close()
