"""``cloudha run`` as a subprocess on a lab of real processes, and one host crashed: fenced.

The lab and the daemon: :mod:`tests.integration.rundaemon` (three hosts, each
a libvirtd with the test driver, an sshd, a heartbeat writer and a fake BMC
over real IPMI; ``agent = "ssh"``, driver ``ipmitool``).

kvm2 crashes (:meth:`Lab.crash <cloudha.testing.lab.cluster.Lab.crash>`): its
libvirtd, sshd and heartbeat writer are killed while its BMC still reads
power On, so nothing proves it dead. The daemon must see every witness lose
it (its libvirtd and SSH silent, the neighbours' ``ping`` over SSH getting
no reply, its heartbeat late as the neighbours read it over SSH, its BMC
ready), fence it on suspicion over IPMI (power Off, read back Off), and only
then start its HA domains on another host's libvirtd. The test checks the
fence and the recovery where an operator would: the BMC, the libvirtds,
``cloudha status``, ``cloudha explain`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

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


def power(daemon: Daemon, host: str) -> PowerState | None:
    bmc = daemon.lab.host(host).power_config("ipmitool")
    return IpmitoolDriver().execute(bmc, PowerOperation.STATUS, timeout=10).state


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Every host Up, then the victim crashes (BMC still On) and its HA VMs run elsewhere."""
    with start_daemon(tmp_path_factory.mktemp("run-real-crash")) as daemon:
        lab = daemon.lab
        wait_ready(daemon)
        lab.crash(VICTIM)
        assert not lab.host(VICTIM).alive()
        assert power(daemon, VICTIM) is PowerState.ON  # nothing proves it dead yet
        ha = lab.ha_domains(VICTIM)
        wait_for(
            f"{', '.join(ha)} running on another host",
            lambda: all(lab.where(vm) for vm in ha),
            RECOVERED_WITHIN,
            daemon,
        )
        yield daemon


def the_fence(found: list[dict[str, Any]]) -> dict[str, Any]:
    fences = [d for d in found if d["kind"] == "suspicion" and "fencer" in d]
    assert len(fences) == 1, fences  # fenced once, never twice
    return fences[0]


def test_the_crashed_host_was_fenced_at_its_bmc(crashed: Daemon) -> None:
    assert power(crashed, VICTIM) is PowerState.OFF
    assert {h: power(crashed, h) for h in ("kvm1", "kvm3")} == {
        "kvm1": PowerState.ON,
        "kvm3": PowerState.ON,
    }


def test_its_ha_vms_run_once_on_another_hosts_libvirtd(crashed: Daemon) -> None:
    lab = crashed.lab
    for vm in lab.ha_domains(VICTIM):
        where = lab.where(vm)
        assert len(where) == 1  # never twice
        assert where[0] != VICTIM
        holder = lab.host(where[0]).libvirtd.server.holder
        assert holder.lookupByName(vm).isActive()
    scratch = [d.name for d in lab.host(VICTIM).domains if not d.ha]
    assert scratch
    assert all(lab.where(vm) == [] for vm in scratch)


def test_cloudha_status_shows_it_down(crashed: Daemon) -> None:
    assert host_statuses(crashed) == {"kvm1": "Up", VICTIM: "Down", "kvm3": "Up"}


def test_explain_shows_every_witness_lost_it_then_the_fence_then_the_restarts(
    crashed: Daemon,
) -> None:
    found = decisions(crashed, VICTIM)
    fence = the_fence(found)
    assert fence["qualifies"] is True
    assert fence["fencer"] == "PowerFencer"
    assert fence["outcome"] == "FENCED"
    witnesses = {w["witness"]: w for w in fence["witnesses"]}
    assert witnesses["agent"]["answer"] == "no answer"
    # The neighbours were asked over SSH, and their ping got no reply.
    assert witnesses["ping kvm1"]["answer"] == "does not reach it"
    assert witnesses["ping kvm3"]["answer"] == "does not reach it"
    assert witnesses["heartbeat pool"]["for_fence"] is True  # late, as the neighbours read it
    assert witnesses["fence path"]["answer"] == "BMC answered: power is On"
    assert all(w["for_fence"] for w in fence["witnesses"])
    steps = [s["operation"] for s in fence["fence_evidence"]["steps"]]
    assert steps == ["STATUS", "OFF", "STATUS"]  # off, then read back Off
    # Never a Down verdict before the fence (nothing proved it dead), every restart after it.
    at = found.index(fence)
    downs = [i for i, d in enumerate(found) if d["kind"] == "host_status" and d.get("to") == "Down"]
    assert downs
    assert min(downs) > at
    started = [
        i
        for i, d in enumerate(found)
        if d["kind"] == "ha_work" and "started on host" in d.get("reason", "")
    ]
    assert len(started) == len(crashed.lab.ha_domains(VICTIM))
    assert min(started) > at
    # Before the fence every suspicion decision that did not qualify fenced nothing.
    assert all("fencer" not in d for d in found[:at] if d["kind"] == "suspicion")


def test_metrics_show_the_fence_and_the_recovery(crashed: Daemon) -> None:
    metrics = scrape(crashed)
    ha = len(crashed.lab.ha_domains(VICTIM))
    assert sample(metrics, "cloudha_fences_total", path="suspicion", outcome="FENCED") == 1
    assert sample(metrics, "cloudha_fences_total") == 1  # that one fence, no other
    assert sample(metrics, "cloudha_fence_duration_seconds_count", path="suspicion") == 1
    assert sample(metrics, "cloudha_fast_path_total", outcome="fenced") == 1
    assert sample(metrics, "cloudha_recovery_latency_seconds_count") == ha
    assert sample(metrics, "cloudha_host_status_changes_total", to="Down") >= 1


def test_no_secret_in_the_log_and_sigterm_stops_the_daemon(crashed: Daemon) -> None:
    shown = cloudha("explain", VICTIM, "--db", crashed.db)
    assert shown.returncode == 0, shown.stderr
    assert "fenced on suspicion" in shown.stdout
    process = crashed.process
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    log = crashed.log_text()
    assert process.returncode == 0, log
    assert crashed.lab.bmc_password not in log + shown.stdout + shown.stderr
