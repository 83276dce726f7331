"""``cloudha status`` and ``cloudha hosts`` on a SQLite database of cloudha run, on a fake clock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from cloudha.cli import fleet, main
from cloudha.cli.look import EXIT_USAGE
from cloudha.ha.store import SqlWorkStore, WorkType, upgrade
from cloudha.hoststore import SqlHostDirectory
from cloudha.model import Host, VmState
from cloudha.ports import StatusChange
from cloudha.status import Event, Status
from cloudha.testing import FakeClock

T0 = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC).timestamp()

KVM1 = Host("kvm1", cluster="c1", pod="p1", zone="z1", private_ip="10.0.0.1", rack="r1")
KVM2 = Host("kvm2", cluster="c1", pod="p1", zone="z1", private_ip="10.0.0.2", watchdog=True)
KVM3 = Host("kvm3", cluster="c2", pod="p1", zone="z1", private_ip="10.0.0.3")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(T0)
    monkeypatch.setattr(fleet, "_clock", lambda: clock)
    return clock


@pytest.fixture
def url(tmp_path: Path, clock: FakeClock) -> str:
    """A database as cloudha run leaves it: kvm1 Up (ms1), kvm2 new, kvm3 removed; 3 works."""
    url = f"sqlite:///{tmp_path / 'cloudha.db'}"
    engine = sa.create_engine(url)
    upgrade(engine)
    directory = SqlHostDirectory(engine, clock)
    directory.sync([KVM1, KVM2, KVM3])
    assert directory.update_status(
        StatusChange(
            "kvm1",
            None,
            Status.CONNECTING,
            Event.AGENT_CONNECTED,
            0,
            last_ping=T0 - 40,
            management_server_id="ms1",
        )
    )
    assert directory.update_status(
        StatusChange("kvm1", Status.CONNECTING, Status.UP, Event.READY, 1)
    )
    directory.note_fence_readiness(
        {
            "kvm1": (True, "ipmitool: chassis power is on"),
            "kvm2": (None, "no out-of-band management in the inventory"),
        }
    )
    directory.sync([KVM1, KVM2])
    store = SqlWorkStore(engine, clock)
    store.add("vm1", WorkType.HA, VmState.RUNNING)
    clock.advance(30)
    store.add("vm2", WorkType.HA, VmState.RUNNING)
    store.mark_error(store.add("vm3", WorkType.HA, VmState.RUNNING).id)
    clock.advance(20)
    engine.dispose()
    return url


def run(*argv: str) -> Result:
    result = CliRunner().invoke(main, list(argv))
    assert "Traceback" not in result.output
    return result


def test_status_counts_hosts_shows_each_and_the_queue(url: str) -> None:
    result = run("status", "--db", url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "2 hosts: 1 Up, 1 new (1 removed from the inventory)"
    kvm1 = next(line for line in lines if "kvm1" in line)
    assert "Up" in kvm1
    assert "ms1" in kvm1
    assert "1m30s ago" in kvm1  # pinged at T0 - 40, now T0 + 50
    assert "ready: ipmitool: chassis power is on" in kvm1
    kvm2 = next(line for line in lines if "kvm2" in line)
    assert "new" in kvm2
    assert "never" in kvm2
    assert "unknown" in kvm2
    assert "kvm3" not in result.stdout
    assert lines[-1] == (
        "HA queue: 2 pending (oldest 50s), 1 in Error (cloudha queue list shows them)"
    )


def test_status_json(url: str) -> None:
    result = run("status", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["by_status"] == {"Up": 1, "new": 1}
    assert doc["removed"] == 1
    assert doc["at"] == "2026-12-07T06:00:50+00:00"
    assert doc["queue"] == {"pending": 2, "oldest_age": 50.0, "error": 1}
    first, second = doc["hosts"]
    assert first == {
        "id": "kvm1",
        "status": "Up",
        "owner": "ms1",
        "owner_epoch": 0,
        "last_ping": "2026-12-07T05:59:20+00:00",
        "last_ping_age": 90.0,
        "fence_ready": True,
        "fence_detail": "ipmitool: chassis power is on",
        "fence_checked_at": "2026-12-07T06:00:00+00:00",
        "fence_checked_age": 50.0,
    }
    assert (second["id"], second["status"], second["last_ping"], second["fence_ready"]) == (
        "kvm2",
        None,
        None,
        None,
    )


def test_status_of_an_empty_table(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = sa.create_engine(url)
    upgrade(engine)
    engine.dispose()
    result = run("status", "--db", url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "0 hosts: no hosts"
    assert result.stdout.splitlines()[-1] == "HA queue: 0 pending, 0 in Error"


def test_hosts_lists_every_row_removed_ones_included(url: str) -> None:
    result = run("hosts", "--db", url)
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "kvm" in line}
    assert set(rows) == {"kvm1", "kvm2", "kvm3"}
    for cell in ("10.0.0.1", "c1/p1/z1", "r1", "KVM", "Up", "ms1"):
        assert cell in rows["kvm1"], cell
    assert "yes" in rows["kvm3"]
    assert "c2/p1/z1" in rows["kvm3"]
    assert "new" in rows["kvm2"]


def test_hosts_json(url: str) -> None:
    result = run("hosts", "--json", "--db", url)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["database"] == url
    assert [(h["id"], h["removed"], h["status"]) for h in doc["hosts"]] == [
        ("kvm1", False, "Up"),
        ("kvm2", False, None),
        ("kvm3", True, None),
    ]
    kvm2 = doc["hosts"][1]
    assert (kvm2["address"], kvm2["cluster"], kvm2["watchdog"], kvm2["rack"]) == (
        "10.0.0.2",
        "c1",
        True,
        None,
    )


def test_hosts_host_shows_one_host_in_full(url: str) -> None:
    result = run("hosts", "kvm1", "--db", url)
    assert result.exit_code == 0, result.output
    fields = {
        " ".join(cells[0].split()): cells[1].strip()
        for line in result.stdout.splitlines()
        if line.count("│") == 3 and len(cells := line.strip("│ ").split("│")) == 2
    }
    assert fields["address"] == "10.0.0.1"
    assert fields["status"] == "Up"
    assert fields["owner"] == "ms1"
    assert fields["update count"] == "2"
    assert fields["watchdog"] == "no"
    assert fields["removed"] == "no"
    assert fields["last ping age"] == "90 s"
    assert fields["fence detail"] == "ipmitool: chassis power is on"
    removed = run("hosts", "kvm3", "--db", url, "--json")
    assert removed.exit_code == 0, removed.output
    doc = json.loads(removed.stdout)
    assert (doc["id"], doc["removed"], doc["cluster"]) == ("kvm3", True, "c2")


def test_an_unknown_host_is_one_line_and_status_2(url: str) -> None:
    result = run("hosts", "kvm9", "--db", url)
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"cloudha hosts: no host 'kvm9' in {url} (3 hosts; cloudha hosts --db URL lists them)"
    ]


def test_an_unreadable_row_is_status_3_naming_the_host(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE cloudha_host SET status = 'Sleeping' WHERE id = 'kvm2'"))
    engine.dispose()
    for command in ("status", "hosts"):
        result = run(command, "--db", url)
        assert result.exit_code == 3, result.output
        assert len(result.stderr.splitlines()) == 1
        assert "'kvm2': status 'Sleeping' is not a Status" in result.stderr


def _inventory(tmp_path: Path, db: str) -> Path:
    """A small inventory (local agents: no SSH key, no BMC) naming ``db`` as its database."""
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'[server]\nid = "ms1"\ndb = "{db}"\n\n'
        '[[hosts]]\nid = "kvm1"\naddress = "127.0.0.1"\nagent = "local"\ncluster = "c1"\n'
        'libvirt_uri = "test:///default"\n',
        encoding="utf-8",
    )
    return path


def test_status_and_hosts_read_the_database_the_inventory_names(url: str, tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, url)
    by_db = run("status", "--db", url, "--json")
    by_inventory = run("status", "--inventory", str(inventory), "--json")
    assert by_inventory.exit_code == 0, by_inventory.output
    assert json.loads(by_inventory.output) == json.loads(by_db.output)
    listed = run("hosts", "kvm1", "--inventory", str(inventory), "--json")
    assert listed.exit_code == 0, listed.output
    direct = run("hosts", "kvm1", "--db", url, "--json")
    assert json.loads(listed.output) == json.loads(direct.output)


def test_a_bad_inventory_or_both_sources_is_one_line_and_status_2(url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nid = "ms1"\nnot toml\n', encoding="utf-8")
    result = run("status", "--inventory", str(bad))
    assert result.exit_code == EXIT_USAGE
    assert result.output.startswith("cloudha status: ")
    assert "bad.toml" in result.output
    assert result.output.count("\n") == 1
    both = run("hosts", "--db", url, "--inventory", str(_inventory(tmp_path, url)))
    assert both.exit_code == EXIT_USAGE
    assert "one of them" in both.output


def test_status_shows_every_server_and_the_hosts_it_owns(url: str, clock: FakeClock) -> None:
    from cloudha.cluster import SqlServerRegistry
    from cloudha.ha.store import cloudha_host

    engine = sa.create_engine(url)
    registry = SqlServerRegistry(engine, clock)
    epoch = registry.register("ms1", "10.1.0.1")
    assert registry.heartbeat("ms1", epoch)
    other = registry.register("ms2", "10.1.0.2")
    clock.advance(12)
    assert registry.declare_departed("ms2", other, 0, "ms1")
    with engine.begin() as conn:
        conn.execute(
            cloudha_host.update().where(cloudha_host.c.id == "kvm1").values(owner_epoch=epoch)
        )
    engine.dispose()

    doc = json.loads(run("status", "--db", url, "--json").output)
    servers = {s["id"]: s for s in doc["servers"]}
    assert servers["ms1"]["state"] == "Up"
    assert servers["ms1"]["address"] == "10.1.0.1"
    assert servers["ms1"]["epoch"] == epoch
    assert servers["ms1"]["beat"] == 1
    assert servers["ms1"]["last_heartbeat_age"] == 12.0
    assert servers["ms1"]["hosts"] == ["kvm1"]
    assert servers["ms2"]["state"] == "Departed"
    assert servers["ms2"]["departed_by"] == "ms1"
    assert servers["ms2"]["hosts"] == []
    assert doc["unowned"] == ["kvm2"]  # never connected: no owner yet
    assert {h["id"]: h["owner_epoch"] for h in doc["hosts"]} == {"kvm1": epoch, "kvm2": 0}

    shown = run("status", "--db", url)
    assert shown.exit_code == 0, shown.output
    assert "2 management servers" in shown.output
    assert "10.1.0.1" in shown.output
    assert "Departed" in shown.output
    assert "1 hosts owned by no live server" in shown.output


def test_status_without_a_server_registry_shows_no_servers(url: str) -> None:
    doc = json.loads(run("status", "--db", url, "--json").output)
    assert doc["servers"] == []
    assert doc["unowned"] == []
