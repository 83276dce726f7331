"""``cloudha config check FILE [--test-credentials] [--json]``: is an inventory right?

The inventory (docs/inventory.md) is loaded as ``cloudha run`` loads it. Each
problem is one line on stdout, ``FILE:LINE: KEY: message``, then one line on
stderr says how many there were. With ``--test-credentials`` each host's SSH,
libvirt URI and BMC are tried too (:mod:`cloudha.credentials`).

Exit status (docs/cli.md): 0 the inventory is right (and every credential
tried worked); 1 ``--test-credentials`` and a try failed; 2 the file is
missing or has problems, or a bad option.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import click

from cloudha.cli.look import EXIT_FAILED, EXIT_OK, EXIT_USAGE, console, emit_json, fail, table

__all__ = ["config", "inventory_document"]

_COMMAND: Final = "config check"


def inventory_document(inventory: Any) -> dict[str, Any]:
    """What ``--json`` shows of a loaded inventory: no secret, only where each comes from."""
    import sqlalchemy as sa

    from cloudha.transport.libvirt import redact_uri

    hosts = []
    for h in inventory.hosts:
        oobm = None
        if h.oobm is not None:
            oobm = {
                "driver": h.oobm.driver,
                "address": h.oobm.address,
                "port": h.oobm.port,
                "username": h.oobm.username,
                "password": h.oobm.password.origin,
            }
        hosts.append(
            {
                "id": h.id,
                "address": h.address,
                "cluster": h.cluster,
                "pod": h.pod,
                "zone": h.zone,
                "rack": h.rack,
                "pools": list(h.pools),
                "agent": h.agent,
                "ssh": None
                if h.agent == "local"
                else {
                    "user": h.ssh.user,
                    "port": h.ssh.port,
                    "key": h.ssh.key,
                    "known_hosts": h.ssh.known_hosts,
                },
                "libvirt_uri": redact_uri(h.libvirt_uri)[0],
                "watchdog": h.watchdog,
                "capacity": h.capacity,
                "oobm": oobm,
            }
        )
    return {
        "server_id": inventory.server_id,
        "db": sa.engine.make_url(inventory.db_url).render_as_string(hide_password=True),
        "pools": [
            {
                "id": p.id,
                "mount": p.mount_point,
                "cluster": p.cluster,
                "zone": p.zone,
                "allow_unmounted": p.id in inventory.unmounted_pools,
            }
            for p in inventory.pools
        ],
        "hosts": hosts,
        "vm_ha": list(inventory.vm_ha),
    }


@click.group("config")
def config() -> None:
    """Check the inventory of ``cloudha run``."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE")
@click.option(
    "--test-credentials",
    is_flag=True,
    help="Also try each host's SSH, libvirt URI and BMC (power status).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=300),
    default=10.0,
    show_default=True,
    help="Seconds each credential try may take.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def check(file: Path, test_credentials: bool, timeout: float, as_json: bool) -> None:
    """Validate the inventory FILE: every mistake with its file, line and key."""
    from cloudha.inventory import InventoryError, load_inventory

    if not file.is_file():
        fail(_COMMAND, f"{file}: no such inventory file")
    try:
        inventory = load_inventory(file)
    except InventoryError as exc:
        if as_json:
            emit_json(
                {
                    "file": str(file),
                    "ok": False,
                    "problems": [
                        {"file": p.file, "line": p.line, "key": p.key, "message": p.message}
                        for p in exc.problems
                    ],
                }
            )
        else:
            for problem in exc.problems:
                click.echo(str(problem))
        count = len(exc.problems)
        fail(_COMMAND, f"{file}: {count} problem{'' if count == 1 else 's'}", EXIT_USAGE)
    summary = inventory.summary()
    checks = []
    if test_credentials:
        from cloudha.credentials import check_credentials

        # Each failure is in the report: paramiko's tracebacks and the deadline
        # runner's warnings about the same tries would only repeat it on stderr.
        quieted = [logging.getLogger(n) for n in ("paramiko", "cloudha.deadline")]
        levels = [logger.level for logger in quieted]
        for logger, level in zip(quieted, (logging.CRITICAL, logging.ERROR), strict=True):
            logger.setLevel(level)
        try:
            checks = check_credentials(inventory, timeout=timeout)
        finally:  # the levels are the process's: give them back (in-process callers, tests)
            for logger, level in zip(quieted, levels, strict=True):
                logger.setLevel(level)
    failed = [c for c in checks if c.ok is False]
    verdict = "OK" if not failed else f"{len(failed)} credential check(s) FAILED"
    if as_json:
        document = {"file": str(file), "ok": not failed, "summary": summary, "problems": []}
        document.update(inventory_document(inventory))
        if test_credentials:
            document["credentials"] = [c.to_dict() for c in checks]
        emit_json(document)
    else:
        if test_credentials:
            shown = {True: "ok", False: "FAILED", None: "skipped"}
            console().print(
                table(
                    "Credentials",
                    ["host", "part", "result", "detail"],
                    ((c.host_id, c.part, shown[c.ok], c.detail) for c in checks),
                )
            )
        click.echo(f"{summary}: {verdict}")
    if failed:
        fail(_COMMAND, f"{file}: {verdict}", EXIT_FAILED)
    raise SystemExit(EXIT_OK)
