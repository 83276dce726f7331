"""The lab's inventory writer: what it writes loads as the inventory of the lab it describes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from cloudha.inventory import load_inventory
from cloudha.testing.lab.cluster import Lab
from cloudha.testing.lab.inventory import literal_uri, write_inventory


def fake_lab(tmp_path: Path, uris: list[str]) -> Lab:
    """What write_inventory reads of a Lab, without starting one."""
    hosts = [
        SimpleNamespace(
            id=f"kvm{i}",
            address=f"127.0.0.{10 + i}",
            uri=uri,
            bmc=SimpleNamespace(address="127.0.0.1", port=6230 + i, username="admin"),
            sshd=None,
        )
        for i, uri in enumerate(uris, start=1)
    ]
    lab = SimpleNamespace(
        hosts=hosts,
        bmc_password="lab-password",
        settings={"ping.interval": 1},
        heartbeat_dir=tmp_path / "pool",
    )
    return cast(Lab, lab)


@pytest.mark.parametrize(
    "uri",
    [
        "test+tcp://127.0.0.1:16509/default",
        "test:///{id}/default",  # braces that are no template field of the inventory's
        "qemu+tcp://127.0.0.1/system?x={{y}}&z=}{",
    ],
)
def test_a_libvirt_uri_is_written_as_a_literal(tmp_path: Path, uri: str) -> None:
    path = write_inventory(fake_lab(tmp_path, [uri]), tmp_path / "cluster.toml")
    (host,) = load_inventory(path, environ={}).hosts
    assert host.libvirt_uri == uri  # not filled in as a template


def test_literal_uri_doubles_every_brace() -> None:
    assert literal_uri("a{b}c") == "a{{b}}c"
    assert literal_uri("no braces") == "no braces"
    assert literal_uri("}{") == "}}{{"


def test_the_lab_pool_is_a_plain_directory_and_its_hosts_local_on_loopback(
    tmp_path: Path,
) -> None:
    lab = fake_lab(tmp_path, ["test:///default", "test:///default"])
    inventory = load_inventory(write_inventory(lab, tmp_path / "cluster.toml"), environ={})
    assert inventory.unmounted_pools == frozenset({"pool"})
    assert [(h.agent, h.address, h.allow_unmounted) for h in inventory.hosts] == [
        ("local", "127.0.0.11", True),
        ("local", "127.0.0.12", True),
    ]
    password = tmp_path / "cluster.bmc-password"
    assert password.stat().st_mode & 0o077 == 0
    assert "lab-password" not in (tmp_path / "cluster.toml").read_text()
