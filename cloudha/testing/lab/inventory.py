"""An inventory for ``cloudha run`` (docs/inventory.md) describing a lab.

:func:`write_inventory` writes one TOML file: the server and its database, the
lab's settings, the shared heartbeat directory as the pool, one ``[[hosts]]``
entry per lab host (its heartbeat address, its libvirt URI, its BMC with the
password in a file beside the inventory, readable by its owner only) and the
HA patterns of the lab's domains. The pool is a plain directory, and says so
(``allow_unmounted = true``: the hosts' heartbeat checkers are told). A
libvirt URI is written as a literal: the inventory reads ``libvirt_uri`` as a
template, so its braces are doubled. With ``agent = "ssh"`` each host names its
sshd (port, user, key and a known_hosts holding exactly its host key: host
keys are verified; the sshd listens on the host's own loopback address);
with ``agent = "local"`` cloudha's agent-side commands run on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cloudha.testing.lab.cluster import HA_PATTERNS, Lab, LabHost

__all__ = ["literal_uri", "write_inventory"]


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def literal_uri(uri: str) -> str:
    """``uri`` as an inventory ``libvirt_uri`` that means exactly it: ``{`` and ``}`` doubled
    (the inventory fills in ``{address}``, ``{id}`` and ``{name}``)."""
    return uri.replace("{", "{{").replace("}", "}}")


def _table(entries: Mapping[str, object]) -> str:
    return "{ " + ", ".join(f"{key} = {_value(value)}" for key, value in entries.items()) + " }"


def write_inventory(
    lab: Lab,
    path: Path,
    *,
    agent: str = "local",
    db: str | None = None,
    server_id: str = "lab",
    settings: Mapping[str, object] | None = None,
    oobm_driver: str = "ipmitool",
    hosts: list[LabHost] | None = None,
) -> Path:
    """Write the inventory of ``lab`` (or of ``hosts`` of it) to ``path``; returns ``path``.

    Args:
        agent: ``"local"`` (commands run here) or ``"ssh"`` (through each host's sshd;
            the lab must have them).
        db: the database URL (a SQLite file beside the inventory by default).
        settings: more settings, over the lab's own.
        oobm_driver: ``ipmitool`` or ``ipmi`` (pyghmi).
    """
    if agent not in ("local", "ssh"):
        raise ValueError(f"agent must be 'local' or 'ssh', got {agent!r}")
    chosen = lab.hosts if hosts is None else hosts
    if agent == "ssh" and any(h.sshd is None for h in chosen):
        raise ValueError("agent = 'ssh' needs a lab started with sshd=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    password = path.with_name(f"{path.stem}.bmc-password")
    password.write_text(lab.bmc_password)
    os.chmod(password, 0o600)
    merged = dict(lab.settings)
    merged.update(settings or {})
    lines = [
        f"# A lab of {len(chosen)} hosts of real processes on loopback (cloudha.testing.lab).",
        "[server]",
        f"id = {_q(server_id)}",
    ]
    if db is not None:
        lines.append(f"db = {_q(db)}")
    lines += ["", "[settings]"]
    lines += [f"{_q(key)} = {_value(value)}" for key, value in sorted(merged.items())]
    lines += [
        "",
        "[defaults]",
        'cluster = "lab"',
        'pod = "p1"',
        'zone = "z1"',
        'pools = ["pool"]',
        f"agent = {_q(agent)}",
        "watchdog = false",
        "",
        "[[pools]]",
        'id = "pool"',
        f"mount = {_q(str(lab.heartbeat_dir))}",
        'cluster = "lab"',
        "allow_unmounted = true  # a plain directory, not a mounted pool",
    ]
    for host in chosen:
        oobm = {
            "driver": oobm_driver,
            "address": host.bmc.address,
            "port": host.bmc.port,
            "username": host.bmc.username,
            "password_file": str(password),
        }
        lines += [
            "",
            "[[hosts]]",
            f"id = {_q(host.id)}",
            f"address = {_q(host.address)}",
            f"libvirt_uri = {_q(literal_uri(host.uri))}",
            f"oobm = {_table(oobm)}",
        ]
        if agent == "ssh":
            assert host.sshd is not None
            server = host.sshd.server
            ssh = {
                "port": server.port,
                "user": server.username,
                "key": str(server.client_key),
                "known_hosts": str(server.known_hosts),
            }
            lines.append(f"ssh = {_table(ssh)}")
    lines += ["", "[vms]", f"ha = {_value(list(HA_PATTERNS))}", ""]
    path.write_text("\n".join(lines))
    return path
