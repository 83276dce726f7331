"""``cloudha run`` as a subprocess on a tiny inventory: two real libvirtds (test driver, loopback).

Every host is ``agent = "local"`` (cloudha's agent-side commands run on this
machine) and its hypervisor a real libvirtd on 127.0.0.1; a host's address
only names it (no traffic goes there). The daemon runs as an operator runs
it, ``python -m cloudha run --inventory FILE``, logging to stderr, and is
driven by signals: its startup line, the agent poller bringing the hosts Up
in the SQL host table, discovery of the running domains into the VM
registry, the metrics endpoint, a SIGHUP that adds a host, a SIGHUP with a
broken inventory that is refused (the one in force is kept), and SIGTERM:
exit 0 with the server's HA works handed back. Bad inputs (a missing
inventory, an unreachable database) are one line on stderr and a non-zero
exit. (Killing a host, with sshd and BMCs, is the ``cloudha demo --real`` tests' part.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cloudha.clock import SystemClock
from cloudha.ha.store import SqlWorkStore, Step, WorkType
from cloudha.ha.vm_registry import SqlVmRegistry, VmRecord
from cloudha.hoststore import HostRow, SqlHostDirectory
from cloudha.model import VmState
from cloudha.status import Status
from tests.integration.libvirtd import LibvirtServer, free_port, start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "ping.interval": 1,
    "ping.timeout": 3,
    "time.to.sleep": 1,
    "outofbandmanagement.background.task.execution.interval": 1,
}
STARTED = 60.0
"""Seconds the daemon may take to start, a host to come Up, a reload to be logged."""


@pytest.fixture(scope="module")
def hypervisors() -> Iterator[tuple[LibvirtServer, LibvirtServer]]:
    """Two libvirtds of this module, each running a domain or two of its own."""
    a = start_libvirtd("libvirtd-run-a")
    try:
        b = start_libvirtd("libvirtd-run-b")
        try:
            for server, names in ((a.server, ("web-a", "scratch-a")), (b.server, ("web-b",))):
                # The test driver's own "test" domain would run on both "hosts" at once.
                server.holder.lookupByName("test").destroy()
                for name in names:
                    server.holder.defineXML(domain_xml(name)).create()
            yield a.server, b.server
        finally:
            stop_libvirtd(b)
    finally:
        stop_libvirtd(a)


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


def write_inventory(path: Path, hosts: dict[str, str], *, db: str, pool: Path) -> Path:
    """An inventory of ``hosts`` (id -> libvirt URI), every one ``agent = "local"``."""
    lines = ["[server]", 'id = "ms1"', f'db = "{db}"', "", "[settings]"]
    lines += [f'"{key}" = {value}' for key, value in SETTINGS.items()]
    lines += [
        "",
        "[defaults]",
        'cluster = "c1"',
        'pod = "p1"',
        'zone = "z1"',
        'pools = ["pool"]',
        'agent = "local"',
        "watchdog = false",
        "",
        "[[pools]]",
        'id = "pool"',
        f'mount = "{pool}"',
        'cluster = "c1"',
    ]
    for n, (host_id, uri) in enumerate(sorted(hosts.items()), start=11):
        lines += ["", "[[hosts]]", f'id = "{host_id}"', f'address = "127.0.0.{n}"']
        lines.append(f'libvirt_uri = "{uri}"')
    lines += ["", "[vms]", 'ha = ["web-*"]', ""]
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """A ``cloudha run`` subprocess and its log (stderr, in a file)."""

    def __init__(self, inventory: Path, log: Path, *options: str) -> None:
        self.log_path = log
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloudha", "run", "--inventory", str(inventory), *options],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, *, after: int = 0, within: float = STARTED) -> re.Match[str]:
        """The first match of ``pattern`` in the log after offset ``after``, within ``within`` s."""
        deadline = time.monotonic() + within
        while True:
            found = re.search(pattern, self.text()[after:])
            if found is not None:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"cloudha run exited ({self.process.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the log within {within} s:\n{self.text()}")
            time.sleep(0.1)

    def signal(self, signum: int) -> int:
        """Send ``signum``; returns the log's length before it (for :meth:`wait_for`)."""
        mark = len(self.text())
        self.process.send_signal(signum)
        return mark

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def eventually(check: Callable[[], Any], what: str, within: float = STARTED) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s (last: {value!r})")
        time.sleep(0.2)


def hosts_table(engine: sa.Engine) -> dict[str, HostRow]:
    return {row.host.id: row for row in SqlHostDirectory(engine, SystemClock()).rows()}


def vms(engine: sa.Engine) -> dict[str, VmRecord]:
    return {record.vm_id: record for record in SqlVmRegistry(engine).load()}


def is_up(engine: sa.Engine, host_id: str) -> bool:
    row = hosts_table(engine).get(host_id)
    return row is not None and not row.removed and row.host.status is Status.UP


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts: killed afterwards if still running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def test_run_starts_reloads_refuses_a_broken_inventory_and_stops_on_sigterm(
    hypervisors: tuple[LibvirtServer, LibvirtServer],
    daemons: list[Daemon],
    tmp_path: Path,
) -> None:
    a, b = hypervisors
    pool = tmp_path / "pool"
    pool.mkdir()
    db = f"sqlite:///{tmp_path / 'cloudha.db'}"
    inventory = write_inventory(tmp_path / "cluster.toml", {"h1": a.uri}, db=db, pool=pool)
    metrics_port = free_port()
    daemon = Daemon(inventory, tmp_path / "run.log", "--metrics-port", str(metrics_port))
    daemons.append(daemon)

    # Startup: one line naming the inventory, the database, the hosts and shadow mode.
    started = daemon.wait_for(
        r"cloudha run: server ms1, inventory (.*?), database (.*?), (.*): started"
    )
    assert started.group(1) == str(inventory)
    assert started.group(2) == db
    assert started.group(3) == "1 hosts (h1), shadow mode off"
    engine = sa.create_engine(db)
    try:
        # The poller's pings bring h1 Up; discovery registered its domains, HA by pattern.
        eventually(lambda: is_up(engine, "h1"), "h1 Up in the host table")
        # Fence readiness, for cloudha status: h1 has no BMC in the inventory.
        eventually(lambda: hosts_table(engine)["h1"].fence_checked_at, "fence readiness written")
        row = hosts_table(engine)["h1"]
        assert (row.fence_ready, row.fence_detail) == (
            None,
            "no out-of-band management in the inventory",
        )
        found = vms(engine)
        assert found["web-a"].host_id == "h1"
        assert found["web-a"].state is VmState.RUNNING
        assert found["web-a"].ha_enabled
        assert not found["scratch-a"].ha_enabled
        assert "web-b" not in found
        assert found["test"].state is VmState.STOPPED  # defined on h1, not running
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            exposed = r.read().decode()
        assert "cloudha_" in exposed

        # SIGHUP with h2 added: synced, polled Up and its domains discovered, no restart.
        write_inventory(inventory, {"h1": a.uri, "h2": b.uri}, db=db, pool=pool)
        mark = daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"reload of .*: hosts added \['h2'\], removed \[\]", after=mark)
        eventually(lambda: is_up(engine, "h2"), "h2 Up in the host table")
        assert eventually(lambda: vms(engine).get("web-b"), "web-b discovered").host_id == "h2"
        assert daemon.process.poll() is None

        # SIGHUP with a broken inventory: refused, one line per problem, the old one kept.
        inventory.write_text(inventory.read_text() + '\n[bogus]\nkey = "x"\n')
        mark = daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"reload refused: the inventory in force is kept", after=mark)
        refused = daemon.text()[mark:]
        assert "bogus" in refused
        assert "reload of" not in refused
        time.sleep(3 * SETTINGS["ping.interval"])  # a few more polling rounds
        table = hosts_table(engine)
        assert sorted(table) == ["h1", "h2"]
        assert [row.removed for row in table.values()] == [False, False]
        assert [is_up(engine, h) for h in ("h1", "h2")] == [True, True]

        # A work held by this server (as a worker holds one while it runs) ...
        works = SqlWorkStore(engine, SystemClock())
        added = works.add("web-a", WorkType.HA, VmState.RUNNING, host_id="h1")
        held = eventually(lambda: works.claim("ms1"), "a work claimed for ms1")
        assert held.id == added.id

        # ... SIGTERM: a graceful stop, the work handed back, exit 0.
        mark = daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(60) == 0
        stopped = daemon.text()[mark:]
        assert "cloudha run: SIGTERM received, stopping" in stopped
        assert re.search(r"management server ms1 stopped; [1-9]\d* works handed back", stopped)
        assert "cloudha run: stopped" in stopped
        back = works.get(added.id)
        assert back is not None
        assert (back.mgmt_server_id, back.step) == (None, Step.INVESTIGATING)
        assert "Traceback" not in daemon.text()
    finally:
        engine.dispose()


def run_once(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudha", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    return lines[0]


def test_a_missing_inventory_is_one_line_exit_2(tmp_path: Path) -> None:
    done = run_once("--inventory", str(tmp_path / "missing.toml"))
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("cloudha run: ")
    assert "missing.toml" in line


def test_an_unreachable_database_is_one_line_exit_3_without_its_password(
    hypervisors: tuple[LibvirtServer, LibvirtServer], tmp_path: Path
) -> None:
    a, _b = hypervisors
    pool = tmp_path / "pool"
    pool.mkdir()
    unused = tmp_path / "unused.db"
    inventory = write_inventory(
        tmp_path / "cluster.toml", {"h1": a.uri}, db=f"sqlite:///{unused}", pool=pool
    )
    port = free_port()  # nothing listens there
    done = run_once(
        "--inventory",
        str(inventory),
        "--db",
        f"postgresql+psycopg://cloudha:hunter2@127.0.0.1:{port}/x",
    )
    assert done.returncode == 3
    line = one_line(done)
    assert line.startswith("cloudha run: database postgresql+psycopg://cloudha:***@127.0.0.1:")
    assert "hunter2" not in done.stderr
    assert not unused.exists()  # --db wins over the inventory's
