"""Metrics on virtual time: a simulated crash is counted as a production server counts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudha.metrics import Metrics
from cloudha.testing import Simulation, load_scenario
from cloudha.testing.simulator import WORK_SECONDS
from tests.simulation.support import CLEAN, down_time, events

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "examples" / "scenarios"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def run(name: str) -> tuple[dict[str, Any], Metrics, Simulation]:
    metrics = Metrics()
    sim = Simulation(load_scenario(SCENARIOS / name), metrics=metrics)
    return sim.run(), metrics, sim


def samples(metrics: Metrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_a_single_host_crash_counts_its_detection_fence_and_recovery() -> None:
    doc, metrics, sim = run("single-host-crash.toml")
    assert doc["invariants"] == CLEAN
    found = samples(metrics)
    settings = sim.settings
    crash = 300.0  # the scenario's host_crash of h2
    timeout = settings.ping_timeout * settings.ping_interval  # 150 s

    # Detection: from h2's last ping (which the monitor's record gives) to each verdict.
    (behind,) = events(doc, "behind_on_ping", host="h2")
    last_ping = behind["t"] - behind["since_last_ping"]
    assert crash - settings.ping_interval < last_ping <= crash  # its last ping before the crash
    (alert,) = events(doc, "host_status", host="h2", to="Alert")
    down = down_time(doc, "h2")
    name = "cloudha_detection_latency_seconds"
    alert_latency = value(found, f"{name}_sum", status="Alert")
    assert value(found, f"{name}_count", status="Alert") == 1
    assert alert_latency is not None
    assert alert_latency == pytest.approx(alert["t"] - last_ping, abs=1e-3)
    # The deadline-driven monitor: examined within 1 % of the timeout after it.
    assert timeout <= alert_latency <= timeout * 1.01 + 1e-3
    assert value(found, f"{name}_count", status="Down") == 1
    assert value(found, f"{name}_sum", status="Down") == pytest.approx(down - last_ping, abs=1e-3)
    assert value(found, f"{name}_bucket", status="Alert", le="150.0") == 0
    assert value(found, f"{name}_bucket", status="Alert", le="180.0") == 1

    # The fence: one failed libvirt attempt, then the storage-heartbeat proof.
    assert len(events(doc, "fence")) == 2
    fences = "cloudha_fences_total"
    assert value(found, fences, path="chain", fencer="KVMFenceBuilder", outcome="FENCED") == 1
    assert value(found, fences, path="chain", fencer="LibvirtFencer", outcome="NOT_FENCED") == 1
    assert (
        value(found, "cloudha_fence_duration_seconds_count", path="chain", fencer="KVMFenceBuilder")
        == 1
    )
    assert value(found, "cloudha_fence_escalations_total") == 0

    # The recovery: vm1 ran again on another host one worker hold after the Down verdict.
    (started,) = events(doc, "vm_state", vm="vm1", state="Running")
    assert started["host"] != "h2"
    assert value(found, "cloudha_recovery_latency_seconds_count") == 1
    recovery = value(found, "cloudha_recovery_latency_seconds_sum")
    assert recovery == pytest.approx(started["t"] - down, abs=1e-3)
    assert recovery == pytest.approx(WORK_SECONDS)
    assert value(found, "cloudha_ha_works_ended_total", type="HA", step="Done") == 1
    assert value(found, "cloudha_ha_scheduled_total", reason="HostDown") == 1

    # Investigations: every record counted, by the investigator that decided.
    investigations = events(doc, "investigation", host="h2")
    downs = [i for i in investigations if i["result"] == "Down"]
    assert value(
        found, "cloudha_investigations_total", decided_by="KVMInvestigator", result="Down"
    ) == len(downs)
    assert sum(v for (n, _), v in found.items() if n == "cloudha_investigations_total") == len(
        events(doc, "investigation")
    )

    # The gauges at the end of the run, read from the server's directory and queue.
    assert value(found, "cloudha_hosts", status="Down") == 1
    assert value(found, "cloudha_hosts", status="Up") == 2
    assert value(found, "cloudha_ha_works", type="HA", step="Done") == 1
    assert value(found, "cloudha_ha_queue_depth") == 0
    assert value(found, "cloudha_judging") == 1
    # Every record of the server is counted (the simulator's own faults and VM states are not).
    server_events = [e for e in doc["events"] if e["actor"] == "ms1"]
    assert sum(v for (n, _), v in found.items() if n == "cloudha_evidence_records_total") == len(
        server_events
    )


def test_a_restarted_management_server_is_watched_and_counts_go_on() -> None:
    doc, metrics, sim = run("monitor-restart.toml")
    assert doc["invariants"] == CLEAN
    assert sim.ms is not None
    assert metrics.server is sim.ms.server  # the server started at 700 s, not the crashed one
    found = samples(metrics)
    assert value(found, "cloudha_hosts", status="Down") == 1
    # h2 crashed while no server ran: the new server never heard it, so its detection
    # is timed from the ms_restart at 700 s, when h2 was re-adopted (docs/metrics.md).
    down = down_time(doc, "h2")
    assert value(found, "cloudha_detection_latency_seconds_sum", status="Down") == pytest.approx(
        down - 700.0
    )
    assert value(found, "cloudha_recovery_latency_seconds_count") == len(
        events(doc, "ha_work", vm="vm2", step="Done")
    )
    server_events = [e for e in doc["events"] if e["actor"] == "ms1"]
    assert sum(v for (n, _), v in found.items() if n == "cloudha_evidence_records_total") == len(
        server_events
    )
