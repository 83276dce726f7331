"""``cloudha run`` as a subprocess on a lab of real processes: the real-component tests' harness.

:func:`start_daemon` starts a :class:`~cloudha.testing.lab.cluster.Lab` of
three hosts, each a libvirtd with the test driver and its own domains, an
sshd on the host's own loopback address (``agent = "ssh"``: cloudha's
agent-side commands run over SSH with the host key verified through the
known_hosts the lab writes; the lab's ``ping`` on each host answers for a
lab address while that host's processes run), a heartbeat writer on the
shared heartbeat directory and a fake BMC over real IPMI (driver
``ipmitool``). The daemon runs as ``python -m cloudha run --inventory ...
--metrics-port N`` on a SQLite database; the helpers read it through the
tools an operator has (``cloudha status``, ``cloudha explain``, ``/metrics``).
Everything listens on loopback; the lab's fast settings bound the wall time.
"""

from __future__ import annotations

import contextlib
import json
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
from cloudha.testing.lab.cluster import Lab
from cloudha.testing.lab.inventory import write_inventory
from cloudha.testing.lab.libvirtd import free_port
from cloudha.testing.lab.processes import dies_with_parent, python_env

__all__ = [
    "READY_WITHIN",
    "RECOVERED_WITHIN",
    "Daemon",
    "cloudha",
    "decisions",
    "host_statuses",
    "sample",
    "scrape",
    "start_daemon",
    "wait_for",
    "wait_ready",
]

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


def wait_ready(daemon: Daemon) -> None:
    """Every host Up in the host table."""
    wait_for(
        "every host Up",
        lambda: set(host_statuses(daemon, starting=True).values()) == {"Up"},
        READY_WITHIN,
        daemon,
    )


def decisions(daemon: Daemon, host: str) -> list[dict[str, Any]]:
    """``cloudha explain HOST --db ... --json``'s decisions, oldest first."""
    done = cloudha("explain", host, "--db", daemon.db, "--json")
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)["decisions"]
    return found


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


@contextlib.contextmanager
def start_daemon(root: Path) -> Iterator[Daemon]:
    """A lab of three hosts with sshds under ``root`` and ``cloudha run`` on it (started,
    not yet ready: see :func:`wait_ready`); both are stopped at the end."""
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
        try:
            yield Daemon(lab, process, inventory, db, port, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
