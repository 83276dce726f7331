"""The inventory of ``cloudha run``: what loads, and every mistake with its file, line and key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cloudha.inventory import (
    HostEntry,
    Inventory,
    InventoryError,
    Problem,
    Secret,
    load_inventory,
)
from cloudha.model import Host, HypervisorType, Pool
from cloudha.tomllines import TomlLines

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "inventory" / "cluster.toml"
PASSWORD = "s3cret-bmc-Pa55"


def write(tmp_path: Path, body: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A key, a known_hosts and a BMC password file beside the inventories."""
    (tmp_path / "id_ed25519").write_text("not parsed at load\n")
    (tmp_path / "known_hosts").write_text("")
    password = tmp_path / "bmc.password"
    password.write_text(PASSWORD + "\n")
    os.chmod(password, 0o600)
    return tmp_path


GOOD = """
[server]
id = "ms1"

[settings]
"ping.interval" = 10

[defaults]
cluster = "c1"
pools = ["nfs1"]
libvirt_uri = "qemu+ssh://root@{address}/system?name={id}"
ssh = { user = "cloudha", key = "id_ed25519", known_hosts = "known_hosts" }
oobm = { driver = "ipmitool", username = "admin", password_file = "bmc.password" }
watchdog = true

[[pools]]
id = "nfs1"
mount = "/mnt/nfs1"
cluster = "c1"

[[hosts]]
id = "kvm1"
address = "10.0.0.1"
rack = "r1"
oobm = { address = "10.0.1.1", port = 6230 }

[[hosts]]
id = "kvm2"
address = "fd00::2"
ssh = { port = 2222 }
capacity = 7

[vms]
ha = ["web-*", "db1"]
"""


def problems(path: Path, **environ: str) -> list[Problem]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(path, environ=environ)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return caught.value.problems


def only(path: Path, **environ: str) -> Problem:
    (found,) = problems(path, **environ)
    return found


# -- what loads ---------------------------------------------------------------------------


def test_a_good_inventory_loads_with_its_defaults(files: Path) -> None:
    inventory = load_inventory(write(files, GOOD), environ={})
    assert inventory.server_id == "ms1"
    assert inventory.db_url == f"sqlite:///{files.resolve() / 'cloudha.db'}"
    assert inventory.settings.ping_interval == 10
    assert inventory.pools == (Pool("nfs1", "/mnt/nfs1", cluster="c1"),)
    assert inventory.vm_ha == ("web-*", "db1")
    assert inventory.is_ha("web-7")
    assert not inventory.is_ha("scratch")
    kvm1, kvm2 = inventory.hosts
    assert kvm1.libvirt_uri == "qemu+ssh://root@10.0.0.1/system?name=kvm1"
    assert kvm2.libvirt_uri == "qemu+ssh://root@[fd00::2]/system?name=kvm2"
    # ssh merges key by key over [defaults]; paths are made absolute from the inventory's directory
    assert (kvm1.ssh.user, kvm1.ssh.port) == ("cloudha", 22)
    assert (kvm2.ssh.user, kvm2.ssh.port) == ("cloudha", 2222)
    assert kvm2.ssh.key == str(files.resolve() / "id_ed25519")
    assert kvm2.ssh.known_hosts == str(files.resolve() / "known_hosts")
    # [defaults] oobm fills in the hosts that have a BMC; kvm2 has none
    assert kvm1.oobm is not None
    assert kvm2.oobm is None
    assert (kvm1.oobm.driver, kvm1.oobm.address, kvm1.oobm.port) == ("ipmitool", "10.0.1.1", 6230)
    assert kvm1.oobm.username == "admin"
    assert kvm1.oobm.password.reveal() == PASSWORD
    assert (kvm1.capacity, kvm2.capacity) == (None, 7)
    assert kvm1.to_host() == Host(
        "kvm1", cluster="c1", private_ip="10.0.0.1", watchdog=True, rack="r1"
    )
    assert inventory.hosts_as_model() == [kvm1.to_host(), kvm2.to_host()]
    assert inventory.host("kvm2") is kvm2
    assert inventory.host("nope") is None
    assert inventory.summary() == "2 hosts in 1 cluster, 1 pool, 1 BMC"


def test_the_example_inventory_loads() -> None:
    inventory = load_inventory(EXAMPLE, environ={})
    assert [h.id for h in inventory.hosts] == ["kvm1", "kvm2", "kvm3"]
    assert all(h.oobm is not None and h.watchdog for h in inventory.hosts)
    assert inventory.summary() == "3 hosts in 1 cluster, 1 pool, 3 BMCs"


def test_the_lab_writers_shape_loads(tmp_path: Path) -> None:
    """What cloudha.testing.lab.inventory.write_inventory writes: agent local, literal URIs."""
    password = tmp_path / "lab.bmc-password"
    password.write_text(PASSWORD)
    path = write(
        tmp_path,
        f"""
        # A lab of 2 hosts
        [server]
        id = "lab"
        db = "sqlite:///{tmp_path}/lab.db"

        [settings]
        "reboot.host.and.alert.management.on.heartbeat.timeout" = false
        "ping.interval" = 2

        [defaults]
        cluster = "lab"
        pod = "p1"
        zone = "z1"
        pools = ["pool"]
        agent = "local"
        watchdog = false

        [[pools]]
        id = "pool"
        mount = "{tmp_path}/hb"
        cluster = "lab"

        [[hosts]]
        id = "lab1"
        address = "127.0.0.11"
        libvirt_uri = "test+tcp://127.0.0.1:40001/default"
        oobm = {{ driver = "ipmitool", address = "127.0.0.1", port = 40101, username = "admin",\
        password_file = "{password}" }}

        [[hosts]]
        id = "lab2"
        address = "127.0.0.12"
        libvirt_uri = "test+tcp://127.0.0.1:40002/default"
        oobm = {{ driver = "ipmi", address = "127.0.0.1", port = 40102, username = "admin",\
        password_file = "{password}" }}

        [vms]
        ha = ["*-web", "*-db"]
        """,
    )
    inventory = load_inventory(path, environ={})
    assert inventory.db_url == f"sqlite:///{tmp_path}/lab.db"
    assert [h.agent for h in inventory.hosts] == ["local", "local"]
    assert inventory.hosts[0].libvirt_uri == "test+tcp://127.0.0.1:40001/default"
    assert [h.oobm.password.reveal() for h in inventory.hosts if h.oobm] == [PASSWORD] * 2


def test_a_relative_sqlite_database_is_beside_the_inventory(files: Path) -> None:
    path = write(files, GOOD.replace('id = "ms1"', 'id = "ms1"\ndb = "sqlite:///data/ha.db"'))
    assert load_inventory(path, environ={}).db_url == f"sqlite:///{files.resolve()}/data/ha.db"


def test_a_password_from_the_environment_and_secrets_never_shown(files: Path) -> None:
    path = write(files, GOOD.replace('password_file = "bmc.password"', 'password_env = "BMC_PW"'))
    inventory = load_inventory(path, environ={"BMC_PW": PASSWORD})
    oobm = inventory.hosts[0].oobm
    assert oobm is not None
    assert oobm.password.reveal() == PASSWORD
    assert repr(oobm.password) == str(oobm.password) == "Secret('env BMC_PW')"
    assert PASSWORD not in repr(inventory)
    assert PASSWORD not in str(inventory)


def test_secret_equality_follows_the_value() -> None:
    assert Secret("env A", "x") == Secret("env A", "x")
    assert Secret("env A", "x") != Secret("env A", "y")  # a rotated password is a change


# -- every mistake: file, line, key -------------------------------------------------------


def test_unknown_keys_with_did_you_mean(files: Path) -> None:
    path = write(files, GOOD.replace('rack = "r1"', 'rakc = "r1"').replace("[vms]", "[vmz]"))
    found = problems(path)
    assert [str(p) for p in found] == [
        f"{path}:23: hosts[kvm1].rakc: unknown key (did you mean 'rack'?)",
        f"{path}:32: vmz: unknown key (did you mean 'vms'?)",
    ]


def test_wrong_types_name_the_key_and_the_value(files: Path) -> None:
    text = GOOD.replace("capacity = 7", 'capacity = "seven"').replace(
        "watchdog = true", 'watchdog = "yes"'
    )
    found = {p.key: p for p in problems(write(files, text))}
    assert found["hosts[kvm2].capacity"].line == 30
    assert "integer" in found["hosts[kvm2].capacity"].message
    assert found["defaults.watchdog"].line == 13
    assert found["defaults.watchdog"].message == "must be true or false, got 'yes'"


def test_a_port_out_of_range(files: Path) -> None:
    found = only(write(files, GOOD.replace("port = 6230", "port = 70000")))
    assert (found.line, found.key) == (24, "hosts[kvm1].oobm.port")


def test_duplicate_host_ids_and_addresses(files: Path) -> None:
    text = GOOD.replace('id = "kvm2"\naddress = "fd00::2"', 'id = "kvm1"\naddress = "10.0.0.1"')
    found = problems(write(files, text))
    assert [(p.line, p.key) for p in found] == [(27, "hosts[kvm1].id")]
    assert "duplicate host id" in found[0].message
    text = GOOD.replace('address = "fd00::2"', 'address = "10.0.0.1"')
    found = problems(write(files, text))
    assert [(p.line, p.key) for p in found] == [(28, "hosts[kvm2].address")]
    assert "also host 'kvm1'" in found[0].message


def test_two_hosts_with_one_bmc(files: Path) -> None:
    text = GOOD.replace(
        "capacity = 7", 'capacity = 7\noobm = { address = "10.0.1.1", port = 6230 }'
    )
    found = only(write(files, text))
    assert (found.line, found.key) == (31, "hosts[kvm2].oobm.address")
    assert "power off the other" in found.message


def test_an_address_that_is_not_an_ip(files: Path) -> None:
    found = only(write(files, GOOD.replace('"10.0.0.1"', '"kvm1.example"')))
    assert (found.line, found.key) == (22, "hosts[kvm1].address")


def test_a_host_naming_an_unknown_pool(files: Path) -> None:
    text = GOOD.replace("capacity = 7", 'capacity = 7\npools = ["nfs2", "nsf1"]')
    found = problems(write(files, text))
    assert [(p.line, p.key) for p in found] == [(31, "hosts[kvm2].pools")] * 2
    assert found[1].message == "unknown pool 'nsf1' (did you mean 'nfs1'?)"


def test_a_pool_of_another_cluster(files: Path) -> None:
    text = GOOD.replace('id = "kvm2"', 'id = "kvm2"\ncluster = "c2"')
    found = only(write(files, text))
    assert found.key == "defaults.pools"
    assert found.message == "pool 'nfs1' belongs to cluster 'c1', not 'c2'"


def test_a_bad_libvirt_template_field(files: Path) -> None:
    found = only(write(files, GOOD.replace("{id}", "{host}")))
    assert (found.line, found.key) == (10, "defaults.libvirt_uri")
    assert found.message == "unknown field {host} (fields: {address}, {id}, {name})"


def test_an_unknown_oobm_driver(files: Path) -> None:
    found = only(write(files, GOOD.replace('driver = "ipmitool"', 'driver = "ipmitol"')))
    assert (found.line, found.key) == (12, "defaults.oobm.driver")
    assert "did you mean 'ipmitool'?" in found.message


def test_every_bad_setting_is_reported(files: Path) -> None:
    text = GOOD.replace('"ping.interval" = 10', '"ping.intreval" = 10\n"ping.timeout" = -1')
    found = problems(write(files, text))
    assert [(p.line, p.key) for p in found] == [
        (5, "settings.ping.intreval"),
        (6, "settings.ping.timeout"),
    ]
    assert "ping.interval" in found[0].message  # the catalogue's own "did you mean"


def test_a_missing_key_file_and_known_hosts(files: Path) -> None:
    (files / "id_ed25519").unlink()
    (files / "known_hosts").unlink()
    found = problems(write(files, GOOD))
    # both hosts inherit them from [defaults]: each problem is said once
    assert [(p.line, p.key) for p in found] == [
        (11, "defaults.ssh.key"),
        (11, "defaults.ssh.known_hosts"),
    ]
    assert "does not exist" in found[0].message


def local(text: str) -> str:
    """``text`` with ``agent = "local"`` hosts, on loopback addresses (a lab)."""
    text = text.replace("watchdog = true", 'watchdog = true\nagent = "local"')
    return text.replace('"10.0.0.1"', '"127.0.0.11"').replace('"fd00::2"', '"::1"')


def test_local_agents_need_no_ssh_files(files: Path) -> None:
    (files / "id_ed25519").unlink()
    text = local(GOOD)
    assert [h.agent for h in load_inventory(write(files, text), environ={}).hosts] == ["local"] * 2


def test_a_local_agent_is_for_a_lab_on_loopback_only(files: Path) -> None:
    """A local host's agent check runs on this machine and never finds it dead: refused for a
    host that is not this machine."""
    text = GOOD.replace("watchdog = true", 'watchdog = true\nagent = "local"')
    found = problems(write(files, text))
    assert [(p.line, p.key) for p in found] == [
        (23, "hosts[kvm1].address"),
        (29, "hosts[kvm2].address"),
    ]
    assert "never looks dead" in found[0].message
    assert "not 10.0.0.1" in found[0].message
    assert 'use agent = "ssh"' in found[0].message
    # The same addresses over SSH are fine.
    assert len(load_inventory(write(files, GOOD), environ={}).hosts) == 2


def test_a_pool_that_is_a_plain_directory_says_so(files: Path) -> None:
    text = GOOD.replace(
        'cluster = "c1"\n\n[[hosts]]', 'cluster = "c1"\nallow_unmounted = true\n\n[[hosts]]', 1
    )
    inventory = load_inventory(write(files, text), environ={})
    assert inventory.unmounted_pools == frozenset({"nfs1"})
    assert [h.allow_unmounted for h in inventory.hosts] == [True, True]
    plain = load_inventory(write(files, GOOD), environ={})
    assert plain.unmounted_pools == frozenset()
    assert [h.allow_unmounted for h in plain.hosts] == [False, False]  # the default: mounted


def test_allow_unmounted_must_be_a_boolean_and_a_host_cannot_mix_pools(files: Path) -> None:
    text = GOOD.replace(
        'cluster = "c1"\n\n[[hosts]]', 'cluster = "c1"\nallow_unmounted = "yes"\n\n[[hosts]]', 1
    )
    (found,) = [p for p in problems(write(files, text)) if p.key.startswith("pools")]
    assert (found.key, found.message) == (
        "pools[nfs1].allow_unmounted",
        "must be true or false, got 'yes'",
    )
    mixed = GOOD.replace(
        'cluster = "c1"\n\n[[hosts]]',
        'cluster = "c1"\nallow_unmounted = true\n\n[[pools]]\nid = "nfs2"\nmount = "/mnt/nfs2"\n'
        'cluster = "c1"\n\n[[hosts]]',
        1,
    ).replace('pools = ["nfs1"]', 'pools = ["nfs1", "nfs2"]')
    (found,) = problems(write(files, mixed))
    assert found.key == "defaults.pools"
    assert (
        "mixes plain-directory pools (allow_unmounted: nfs1) with mounted ones (nfs2)"
        in found.message
    )


def test_a_missing_environment_variable(files: Path) -> None:
    path = write(files, GOOD.replace('password_file = "bmc.password"', 'password_env = "BMC_PW"'))
    found = only(path)
    assert (found.line, found.key) == (12, "defaults.oobm.password_env")
    assert found.message == "environment variable BMC_PW is not set"


def test_an_unreadable_or_empty_password_file(files: Path) -> None:
    (files / "bmc.password").write_text("\n")
    found = only(write(files, GOOD))
    assert (found.line, found.key) == (12, "defaults.oobm.password_file")
    assert "is empty" in found.message
    (files / "bmc.password").unlink()
    assert "does not exist" in only(write(files, GOOD)).message


def test_a_password_in_the_inventory_is_refused_and_not_echoed(files: Path) -> None:
    text = GOOD.replace("port = 6230 }", f'port = 6230, password = "{PASSWORD}" }}')
    with pytest.raises(InventoryError) as caught:
        load_inventory(write(files, text), environ={})
    assert PASSWORD not in str(caught.value)
    assert "password_env or password_file" in str(caught.value)


def test_a_missing_required_key(files: Path) -> None:
    text = GOOD.replace('id = "ms1"\n', "").replace('cluster = "c1"\npools', "pools")
    found = problems(write(files, text))
    assert ("server.id", 1) in [(p.key, p.line) for p in found]
    assert {p.key for p in found} >= {"hosts[kvm1].cluster", "hosts[kvm2].cluster"}


def test_all_problems_are_collected_in_file_order(files: Path) -> None:
    text = (
        GOOD.replace('"ping.interval" = 10', '"ping.interval" = "often"')
        .replace('driver = "ipmitool"', 'driver = "x"')
        .replace('rack = "r1"', "rack = 1")
        .replace('"db1"', "2")
    )
    found = problems(write(files, text))
    assert [p.key for p in found] == [
        "settings.ping.interval",
        "defaults.oobm.driver",
        "hosts[kvm1].rack",
        "vms.ha",
    ]
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)


def test_not_toml_names_the_line(tmp_path: Path) -> None:
    found = only(write(tmp_path, '[server]\nid = "ms1"\nnot toml\n'))
    assert found.line == 3
    assert found.message.startswith("not valid TOML")


def test_a_missing_file(tmp_path: Path) -> None:
    found = only(tmp_path / "nope.toml")
    assert "cannot read" in found.message


def test_the_error_is_a_configuration_error_one_line_per_problem(files: Path) -> None:
    from cloudha.errors import ConfigurationError

    text = GOOD.replace('rack = "r1"', 'rakc = "r1"').replace("capacity = 7", "capacity = 0")
    with pytest.raises(ConfigurationError) as caught:
        load_inventory(write(files, text), environ={})
    assert len(str(caught.value).splitlines()) == 2


def test_the_daemon_reads_these_attributes(files: Path) -> None:
    """What cloudha.daemon's InventoryView and HostView read (duck-typed there)."""
    inventory = load_inventory(write(files, GOOD), environ={})
    assert isinstance(inventory, Inventory)
    for name in ("path", "server_id", "db_url", "settings", "pools", "hosts", "vm_ha"):
        assert hasattr(inventory, name)
    host = inventory.hosts[0]
    assert isinstance(host, HostEntry)
    for name in ("id", "address", "pools", "libvirt_uri", "agent", "ssh", "oobm", "capacity"):
        assert hasattr(host, name)
    assert (host.ssh.user, host.ssh.port) == ("cloudha", 22)
    assert host.hypervisor is HypervisorType.KVM


# -- the line finder shared with the simulator's scenarios ---------------------------------


def test_toml_lines_finds_nested_paths() -> None:
    lines = TomlLines(
        textwrap.dedent(
            """\
            [server]
            id = "x"
            [[hosts]]
            id = "a"
            oobm = { driver = "d" }
            [[hosts]]
            id = "b"
            [hosts.ssh]
            user = "u"
            "quoted.key" = 1
            dotted.key = 2
            text = \"\"\"
            [[hosts]]
            \"\"\"
            """
        )
    )
    assert lines.find_path(("server", "id")) == 2
    assert lines.find_path(("hosts", 0, "oobm", "driver")) == 5
    assert lines.find_path(("hosts", 1)) == 6
    assert lines.find_path(("hosts", 1, "ssh", "user")) == 9
    assert lines.find_path(("hosts", 1, "ssh", "quoted.key")) == 10
    assert lines.find_path(("hosts", 1, "ssh", "dotted", "key")) == 11
    assert lines.find_path(("hosts", 1, "ssh", "missing")) == 8
    assert ("hosts", 2) not in lines.paths  # that [[hosts]] is inside a multi-line string
    assert lines.find("hosts", 1, "id") == 7
    assert lines.find("server", 0, "nope") == 1
    assert TomlLines(None).find_path(("a",)) is None


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """docs/inventory.md's full example, with its /etc/cloudha files made in tmp_path."""
    import re

    text = (ROOT / "docs" / "inventory.md").read_text(encoding="utf-8")
    found = re.search(r"```toml\n(.*?)```", text, re.S)
    assert found is not None
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("id_ed25519", "known_hosts", "kvm2.bmc"):
        (etc / name).write_text("secret-2\n" if name.endswith(".bmc") else "")
    path = write(tmp_path, found.group(1).replace("/etc/cloudha/", f"{etc}/"))
    inventory = load_inventory(path, environ={"BMC_PASSWORD": "secret-1"})
    assert [h.id for h in inventory.hosts] == ["kvm1", "kvm2", "kvm3"]
    kvm1, kvm2, kvm3 = inventory.hosts
    assert kvm1.oobm is not None
    assert kvm2.oobm is not None
    assert (kvm1.oobm.password.reveal(), kvm2.oobm.password.reveal()) == ("secret-1", "secret-2")
    assert (kvm2.oobm.driver, kvm2.oobm.username, kvm2.ssh.port) == ("redfish", "cloudha", 2222)
    assert (kvm3.cluster, kvm3.pools, kvm3.oobm) == ("c2", (), None)
    assert inventory.db_url == "postgresql+psycopg://cloudha@db.example/cloudha"
