"""``cloudha run`` as a subprocess on a lab of real processes, and one host powered off.

The lab and the daemon: :mod:`tests.integration.rundaemon` (three hosts, each
a libvirtd with the test driver, an sshd, a heartbeat writer and a fake BMC
over real IPMI; ``agent = "ssh"``, driver ``ipmitool``).

kvm2 is powered off at its BMC over IPMI: its libvirtd, sshd and
heartbeat writer die at once, so the daemon must find it Down (no pings, no
SSH, its heartbeat stale on the neighbours, its BMC reading power Off),
count its VMs stopped (the BMC proves it: no fence is needed) and start its
HA domains on another host's libvirtd. The test checks each of those through
the tools an operator has: the libvirtds themselves, ``cloudha status --db``,
``cloudha explain HOST --db``, the ``/metrics`` endpoint, and SIGTERM ending
the daemon with exit status 0. A host that crashes with its BMC still
reading On, and is fenced, is test_run_real_crash.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator

import pytest

from cloudha.oobm.ipmitool import IpmitoolDriver
from cloudha.oobm.power import PowerOperation, PowerState
from tests.integration.rundaemon import (
    RECOVERED_WITHIN,
    Daemon,
    cloudha,
    decisions,
    host_statuses,
    sample,
    scrape,
    start_daemon,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.integration

VICTIM = "kvm2"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with start_daemon(tmp_path_factory.mktemp("run-real")) as started:
        yield started


@pytest.fixture(scope="module")
def powered_off(daemon: Daemon) -> Daemon:
    """Every host Up and every domain known, then the victim is powered off at its BMC."""
    lab = daemon.lab
    wait_ready(daemon)
    lab.power_off(VICTIM, driver="ipmitool")
    ha = lab.ha_domains(VICTIM)
    wait_for(
        f"{', '.join(ha)} running on another host",
        lambda: all(lab.where(vm) for vm in ha),
        RECOVERED_WITHIN,
        daemon,
    )
    return daemon


def test_the_dead_hosts_ha_vms_run_on_another_hosts_libvirtd(powered_off: Daemon) -> None:
    lab = powered_off.lab
    assert not lab.host(VICTIM).alive()
    for vm in lab.ha_domains(VICTIM):
        where = lab.where(vm)
        assert len(where) == 1  # never twice
        assert where[0] != VICTIM
        # Defined and started there by cloudha: the other libvirtd holds the domain now.
        holder = lab.host(where[0]).libvirtd.server.holder
        assert holder.lookupByName(vm).isActive()
    # The VM that is not HA-enabled is started nowhere.
    scratch = [d.name for d in lab.host(VICTIM).domains if not d.ha]
    assert scratch
    assert all(lab.where(vm) == [] for vm in scratch)


def test_the_dead_hosts_bmc_reads_power_off(powered_off: Daemon) -> None:
    bmc = powered_off.lab.host(VICTIM).power_config("ipmitool")
    status = IpmitoolDriver().execute(bmc, PowerOperation.STATUS, timeout=10)
    assert status.state is PowerState.OFF


def test_cloudha_status_shows_the_dead_host_down(powered_off: Daemon) -> None:
    statuses = host_statuses(powered_off)
    assert statuses[VICTIM] == "Down"
    assert {h: s for h, s in statuses.items() if h != VICTIM} == {"kvm1": "Up", "kvm3": "Up"}
    shown = cloudha("status", "--db", powered_off.db)
    assert shown.returncode == 0, shown.stderr
    assert VICTIM in shown.stdout
    assert "Down" in shown.stdout
    assert powered_off.lab.bmc_password not in shown.stdout + shown.stderr


def test_cloudha_explain_shows_the_chain_from_detection_to_restart(powered_off: Daemon) -> None:
    found = decisions(powered_off, VICTIM)
    kinds = [d["kind"] for d in found]
    for kind in ("behind_on_ping", "investigation", "host_status", "ha_scheduled", "ha_work"):
        assert kind in kinds, kinds
    # In order: noticed, investigated Down, its VMs scheduled, then started elsewhere.
    first = {kind: kinds.index(kind) for kind in kinds[::-1]}
    assert first["behind_on_ping"] < first["investigation"] < first["ha_scheduled"]
    down = [d for d in found if d["kind"] == "investigation" and d.get("result") == "Down"]
    assert down
    assert down[0]["decided_by"] == "BMCInvestigator"
    scheduled = [d for d in found if d["kind"] == "ha_scheduled"]
    assert "no fence needed" in scheduled[0]["reason"]  # the BMC proved it off
    started = [
        d for d in found if d["kind"] == "ha_work" and "started on host" in d.get("reason", "")
    ]
    assert sorted(d["vm"] for d in started) == sorted(powered_off.lab.ha_domains(VICTIM))
    text = cloudha("explain", VICTIM, "--db", powered_off.db)
    assert text.returncode == 0, text.stderr
    assert "Down" in text.stdout
    assert powered_off.lab.bmc_password not in text.stdout + text.stderr


def test_metrics_show_the_down_verdict_and_the_recovery(powered_off: Daemon) -> None:
    metrics = scrape(powered_off)
    ha = len(powered_off.lab.ha_domains(VICTIM))
    assert sample(metrics, "cloudha_recovery_latency_seconds_count") == ha
    assert sample(metrics, "cloudha_host_status_changes_total", to="Down") >= 1
    assert (
        sample(metrics, "cloudha_investigations_total", decided_by="BMCInvestigator", result="Down")
        >= 1
    )
    assert sample(metrics, "cloudha_fences_total") == 0  # the BMC proved it off: no fence


def test_the_log_holds_no_secret_and_sigterm_stops_the_daemon_with_status_0(
    powered_off: Daemon,
) -> None:
    process = powered_off.process
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    log = powered_off.log_text()
    assert process.returncode == 0, log
    assert "cloudha run: server ms1" in log
    assert powered_off.lab.bmc_password not in log
