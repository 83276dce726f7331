"""``cloudha run`` as a subprocess on a lab of real processes, and one host killed.

Three lab hosts (:class:`cloudha.testing.lab.cluster.Lab`), each a libvirtd
with the test driver and its own domains, an sshd on the host's own loopback
address (``agent = "ssh"``: cloudha's agent-side commands run over SSH with
the host key verified through the known_hosts the lab writes), a heartbeat
writer on the shared heartbeat directory and a fake BMC over real IPMI
(driver ``ipmitool``). The daemon runs as ``python -m cloudha run
--inventory ... --metrics-port N`` on a SQLite database.

kvm2 is then powered off at its BMC over IPMI: its libvirtd, sshd and
heartbeat writer die at once, so the daemon must find it Down (no pings, no
SSH, its heartbeat stale on the neighbours, its BMC reading power Off),
count its VMs stopped (the BMC proves it) and start its HA domains on
another host's libvirtd. The test
checks each of those through the tools an operator has: the libvirtds
themselves, ``cloudha status --db``, ``cloudha explain HOST --db``, the
``/metrics`` endpoint, and SIGTERM ending the daemon with exit status 0.
Everything listens on loopback; fast settings bound the wall time.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from cloudha.cli.look import EXIT_DATABASE
from cloudha.oobm.ipmitool import IpmitoolDriver
from cloudha.oobm.power import PowerOperation, PowerState
from cloudha.testing.lab.cluster import Lab
from cloudha.testing.lab.inventory import write_inventory
from cloudha.testing.lab.libvirtd import free_port
from cloudha.testing.lab.processes import dies_with_parent, python_env

pytestmark = pytest.mark.integration

VICTIM = "kvm2"
READY_WITHIN = 30.0
RECOVERED_WITHIN = 45.0


@attrs.define
class Daemon:
    lab: Lab
    process: subprocess.Popen[bytes]
    inventory: Path
    db: str
    metrics_port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def cloudha(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudha", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        check=False,
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if daemon.process.poll() is not None:
            pytest.fail(f"cloudha run exited {daemon.process.returncode}:\n{daemon.log_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout:g}s; the daemon's log:\n{daemon.log_text()}")
        time.sleep(0.2)


def host_statuses(daemon: Daemon, *, starting: bool = False) -> dict[str, str | None]:
    """Each host's status in the host table, read as ``cloudha status --json`` prints it.

    ``starting``: the daemon may not have made its database yet (then: no hosts).
    """
    done = cloudha("status", "--db", daemon.db, "--json")
    if starting and done.returncode == EXIT_DATABASE:
        return {}
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    return {row["id"]: row["status"] for row in document["hosts"]}


def scrape(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
        return text


def sample(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("run-real")
    with Lab(root / "lab", hosts=3, sshd=True) as lab:
        db = f"sqlite:///{root / 'cloudha.db'}"
        inventory = write_inventory(
            lab, root / "cluster.toml", agent="ssh", db=db, server_id="ms1", oobm_driver="ipmitool"
        )
        port = free_port()
        log = root / "cloudha-run.log"
        argv = [sys.executable, "-m", "cloudha", "-v", "run", "--inventory", str(inventory)]
        argv += ["--metrics-port", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                dies_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=python_env(),
                start_new_session=True,
            )
        started = Daemon(lab, process, inventory, db, port, log)
        try:
            yield started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="module")
def crashed(daemon: Daemon) -> Daemon:
    """Every host Up and every domain known, then the victim is powered off at its BMC."""
    lab = daemon.lab
    wait_for(
        "every host Up",
        lambda: set(host_statuses(daemon, starting=True).values()) == {"Up"},
        READY_WITHIN,
        daemon,
    )
    lab.power_off(VICTIM, driver="ipmitool")
    ha = lab.ha_domains(VICTIM)
    wait_for(
        f"{', '.join(ha)} running on another host",
        lambda: all(lab.where(vm) for vm in ha),
        RECOVERED_WITHIN,
        daemon,
    )
    return daemon


def test_the_dead_hosts_ha_vms_run_on_another_hosts_libvirtd(crashed: Daemon) -> None:
    lab = crashed.lab
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


def test_the_dead_hosts_bmc_reads_power_off(crashed: Daemon) -> None:
    bmc = crashed.lab.host(VICTIM).power_config("ipmitool")
    status = IpmitoolDriver().execute(bmc, PowerOperation.STATUS, timeout=10)
    assert status.state is PowerState.OFF


def test_cloudha_status_shows_the_dead_host_down(crashed: Daemon) -> None:
    statuses = host_statuses(crashed)
    assert statuses[VICTIM] == "Down"
    assert {h: s for h, s in statuses.items() if h != VICTIM} == {"kvm1": "Up", "kvm3": "Up"}
    shown = cloudha("status", "--db", crashed.db)
    assert shown.returncode == 0, shown.stderr
    assert VICTIM in shown.stdout
    assert "Down" in shown.stdout
    assert crashed.lab.bmc_password not in shown.stdout + shown.stderr


def test_cloudha_explain_shows_the_chain_from_detection_to_restart(crashed: Daemon) -> None:
    done = cloudha("explain", VICTIM, "--db", crashed.db, "--json")
    assert done.returncode == 0, done.stderr
    decisions: list[dict[str, Any]] = json.loads(done.stdout)["decisions"]
    kinds = [d["kind"] for d in decisions]
    for kind in ("behind_on_ping", "investigation", "host_status", "ha_scheduled", "ha_work"):
        assert kind in kinds, kinds
    # In order: noticed, investigated Down, its VMs scheduled, then started elsewhere.
    first = {kind: kinds.index(kind) for kind in kinds[::-1]}
    assert first["behind_on_ping"] < first["investigation"] < first["ha_scheduled"]
    down = [d for d in decisions if d["kind"] == "investigation" and d.get("result") == "Down"]
    assert down
    assert down[0]["decided_by"] == "BMCInvestigator"
    scheduled = [d for d in decisions if d["kind"] == "ha_scheduled"]
    assert "no fence needed" in scheduled[0]["reason"]  # the BMC proved it off
    started = [
        d for d in decisions if d["kind"] == "ha_work" and "started on host" in d.get("reason", "")
    ]
    assert sorted(d["vm"] for d in started) == sorted(crashed.lab.ha_domains(VICTIM))
    text = cloudha("explain", VICTIM, "--db", crashed.db)
    assert text.returncode == 0, text.stderr
    assert "Down" in text.stdout
    assert crashed.lab.bmc_password not in text.stdout + text.stderr


def test_metrics_show_the_down_verdict_and_the_recovery(crashed: Daemon) -> None:
    metrics = scrape(crashed)
    ha = len(crashed.lab.ha_domains(VICTIM))
    assert sample(metrics, "cloudha_recovery_latency_seconds_count") == ha
    assert sample(metrics, "cloudha_host_status_changes_total", to="Down") >= 1
    assert (
        sample(metrics, "cloudha_investigations_total", decided_by="BMCInvestigator", result="Down")
        >= 1
    )


def test_the_log_holds_no_secret_and_sigterm_stops_the_daemon_with_status_0(
    crashed: Daemon,
) -> None:
    process = crashed.process
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)
    log = crashed.log_text()
    assert process.returncode == 0, log
    assert "cloudha run: server ms1" in log
    assert crashed.lab.bmc_password not in log
