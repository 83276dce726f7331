"""``cloudha demo --real`` itself, as a user runs it: a subprocess, under a minute.

It starts a lab of three hosts of real processes (libvirtd with the test
driver, a heartbeat writer, a fake BMC over IPMI), the daemon in process,
powers kvm2 off at its BMC and follows the recovery. The test checks the
exit status and the timeline (``--json``) and the live view and summary
(without), that the run stays within its time limit, and that the lab leaves
no process and no file behind (its libvirtds' directories included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudha.testing.lab.processes import python_env

pytestmark = pytest.mark.integration

WALL_LIMIT = 60.0


def demo(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = python_env()
    env["COLUMNS"] = "120"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cloudha", "demo", "--real", *args],
        capture_output=True,
        text=True,
        timeout=WALL_LIMIT + 30,
        env=env,
        check=False,
    )
    return done, time.monotonic() - started


_MARKS = ("cloudha-demo-", "cloudha-lab-kvm")  # the demo's directory, its libvirtds' directories


def lab_processes() -> set[tuple[int, str]]:
    """Processes that run from a demo's or a lab host's files."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(mark in cmdline for mark in _MARKS):
            found.add((int(entry), cmdline))
    return found


def lab_files() -> set[str]:
    """The demo's and the lab's directories in the temporary directory."""
    root = Path(tempfile.gettempdir())
    return {p.name for p in root.iterdir() if p.name.startswith(_MARKS)}


@pytest.fixture
def nothing_left_behind() -> Iterator[None]:
    """The demo leaves no process and no file of its lab (others' are left alone)."""
    processes, files = lab_processes(), lab_files()
    yield
    assert lab_processes() - processes == set()
    assert lab_files() - files == set()


@pytest.mark.usefixtures("nothing_left_behind")
def test_demo_real_recovers_the_dead_hosts_ha_vms_within_a_minute() -> None:
    done, wall = demo("--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert wall < WALL_LIMIT
    document: dict[str, Any] = json.loads(done.stdout)
    assert document["ok"] is True
    assert document["victim"] == "kvm2"
    assert document["ha_vms"] == ["kvm2-web", "kvm2-db"]
    for vm in document["ha_vms"]:
        where = document["vms"][vm]
        assert where["host"] in ("kvm1", "kvm3")
        assert 0 < where["recovered_in"] <= document["limit"]
    timeline = document["timeline"]
    steps = [s["step"] for s in timeline]
    for step in ("ready", "killed", "detected", "investigated", "down", "fenced"):
        assert steps.count(step) == 1, steps
    assert sorted(s["vm"] for s in timeline if s["step"] == "running") == sorted(document["ha_vms"])
    at = {s["step"]: s["t"] for s in timeline if "vm" not in s}
    assert at["ready"] < 0 <= at["killed"] < at["detected"] <= at["investigated"] <= at["down"]
    assert "BMC" in next(s["detail"] for s in timeline if s["step"] == "investigated")


@pytest.mark.usefixtures("nothing_left_behind")
def test_demo_real_shows_live_progress_and_a_summary(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    done, wall = demo("--keep", str(keep))
    assert done.returncode == 0, done.stdout + done.stderr
    assert wall < WALL_LIMIT
    out = done.stdout
    for words in (
        "kvm2 will be powered off at its BMC",
        "detected: no ping for",
        "investigated: Down",
        "running kvm2-web: kvm2-web runs on",
        "recovery as it happens",
        "HA VMs of the dead host",
        "OK: every HA VM of kvm2 runs elsewhere",
    ):
        assert words in out, out
    assert done.stderr == ""  # the daemon's warnings are held back without -v
    # --keep leaves the inventory and the database for cloudha explain.
    inventory = (keep / "cluster.toml").read_text()
    assert 'agent = "local"' in inventory
    password = (keep / "cluster.bmc-password").read_text()
    assert password not in inventory
    assert password not in out
    explained = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudha",
            "explain",
            "kvm2-web",
            "--db",
            f"sqlite:///{keep}/cloudha.db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(),
        check=False,
    )
    assert explained.returncode == 0, explained.stderr
    assert "started on host" in explained.stdout
    assert "libvirt version" in (keep / "lab" / "kvm2" / "libvirtd.log").read_text()
