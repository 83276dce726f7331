"""``cloudha status`` and ``cloudha hosts``: what the host table of ``cloudha run`` holds.

Both read the database ``cloudha run`` keeps (``--db URL``): the host table
(:class:`cloudha.hoststore.SqlHostDirectory`), and for ``status`` the HA
work queue (:class:`cloudha.ha.store.SqlWorkStore`) too. They only read.

Exit status (docs/cli.md): 0 shown; 2 bad input (an option, an unknown
host); 3 the database cannot be opened or read, or holds no host table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from cloudha.cli.look import (
    EXIT_DATABASE,
    EXIT_USAGE,
    console,
    emit_json,
    fail,
    iso,
    one_line,
    span,
    table,
)
from cloudha.clock import Clock, SystemClock
from cloudha.errors import CloudHAError, ConfigurationError, StoreError

__all__ = ["host_document", "hosts", "status"]

_NO_STATUS: Final = "new"
"""How a host with no status yet (it never connected) is shown and counted."""

_T = TypeVar("_T")


def _clock() -> Clock:
    return SystemClock()


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{span(max(0.0, seconds))} ago"


def host_document(row: Any, now: dt.datetime) -> dict[str, Any]:
    """One row of the host table (a :class:`~cloudha.hoststore.HostRow`) as ``--json`` prints it.

    ``last_ping`` is the row's wall-clock ``last_ping`` (ISO 8601 UTC; null
    before the host first connected) and ``last_ping_age`` its age in
    seconds at ``now``; likewise ``fence_checked_at`` and ``fence_checked_age``.
    """
    host = row.host
    now_s = now.timestamp()
    pinged = host.last_ping > 0
    checked = row.fence_checked_at
    return {
        "id": host.id,
        "name": host.name,
        "address": host.private_ip,
        "cluster": host.cluster,
        "pod": host.pod,
        "zone": host.zone,
        "rack": host.rack,
        "type": str(host.type),
        "hypervisor": str(host.hypervisor),
        "resource_state": str(host.resource_state),
        "watchdog": host.watchdog,
        "status": None if host.status is None else str(host.status),
        "removed": row.removed,
        "owner": host.management_server_id,
        "owner_epoch": host.owner_epoch,
        "update_count": host.update_count,
        "last_ping": (iso(dt.datetime.fromtimestamp(host.last_ping, dt.UTC)) if pinged else None),
        "last_ping_age": round(now_s - host.last_ping, 3) if pinged else None,
        "disconnected_on": (
            None
            if host.disconnected_on is None
            else iso(dt.datetime.fromtimestamp(host.disconnected_on, dt.UTC))
        ),
        "fence_ready": row.fence_ready,
        "fence_detail": row.fence_detail,
        "fence_checked_at": iso(checked),
        "fence_checked_age": None if checked is None else round(now_s - checked.timestamp(), 3),
    }


# -- opening the database -------------------------------------------------------------


class _Database:
    """The host table (and the queue) of one database, for one command."""

    def __init__(self, command: str, url: str) -> None:
        import sqlalchemy as sa
        import sqlalchemy.exc

        from cloudha.evidence_store import open_engine
        from cloudha.ha.store import cloudha_host
        from cloudha.hoststore import SqlHostDirectory

        self.command = command
        try:
            self.engine = open_engine(url, must_exist=True, holds="the host table")
        except CloudHAError as exc:
            fail(command, exc, EXIT_DATABASE)
        self.where = self.engine.url.render_as_string(hide_password=True)
        try:
            present = sa.inspect(self.engine).has_table(cloudha_host.name)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self.close()
            fail(command, f"{self.where}: {_driver_message(exc)}", EXIT_DATABASE)
        if not present:
            self.close()
            fail(
                command,
                f"{self.where}: no {cloudha_host.name} table: not the database of cloudha run"
                " (cloudha run creates it; cloudha.ha.store.upgrade migrates it)",
                EXIT_DATABASE,
            )
        self.clock = _clock()
        self.directory = self.read(lambda: SqlHostDirectory(self.engine, self.clock))

    def read(self, what: Callable[[], _T]) -> _T:
        """``what()``, with a store error as exit 3 naming the database."""
        try:
            return what()
        except StoreError as exc:
            self.close()
            fail(self.command, f"{self.where}: {exc}", EXIT_DATABASE)

    def close(self) -> None:
        self.engine.dispose()


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {lines[0] if lines else ''}"


def _open(command: str, url: str | None, inventory: Path | None) -> _Database:
    if (url is None) == (inventory is None):
        fail(
            command,
            "give the database of cloudha run: --db URL or --inventory FILE (one of them)",
            EXIT_USAGE,
        )
    if inventory is not None:
        from cloudha.inventory import InventoryError, load_inventory

        try:
            url = load_inventory(inventory).db_url
        except InventoryError as exc:
            more = len(exc.problems) - 1
            also = f" (and {more} more: cloudha config check {inventory})" if more > 0 else ""
            fail(command, f"{one_line(exc)}{also}", EXIT_USAGE)
        except ConfigurationError as exc:
            fail(command, exc, EXIT_USAGE)
    assert url is not None
    return _Database(command, url)


_db_option = click.option(
    "--db",
    "url",
    metavar="URL",
    help="The database of cloudha run, e.g. sqlite:////var/lib/cloudha/cloudha.db.",
)
_inventory_option = click.option(
    "--inventory",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="The inventory of cloudha run: its database (server.db) is read.",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON document alone on stdout."
)


# -- status ---------------------------------------------------------------------------


def _queue(database: _Database, now: dt.datetime) -> dict[str, Any]:
    from cloudha.ha.store import SqlWorkStore
    from cloudha.ha.work import Step

    tallies = database.read(lambda: SqlWorkStore(database.engine, database.clock).tally())
    pending = [t for t in tallies if t.pending]
    oldest = min((t.oldest for t in pending), default=None)
    return {
        "pending": sum(t.count for t in pending),
        "oldest_age": None if oldest is None else round((now - oldest).total_seconds(), 3),
        "error": sum(t.count for t in tallies if t.step == Step.ERROR.value),
    }


def _servers(database: _Database, docs: Sequence[dict[str, Any]], now: dt.datetime) -> list[Any]:
    """Every management server of the registry, with the hosts each owns at its epoch.

    Empty for a database without the registry table (written before groups).
    """
    from cloudha.cluster import SqlServerRegistry
    from cloudha.ha.store import cloudha_management_server

    present = database.read(lambda: _has_table(database, cloudha_management_server.name))
    if not present:
        return []
    records = database.read(lambda: SqlServerRegistry(database.engine, database.clock).servers())
    now_s = now.timestamp()
    found = []
    for record in records:
        owned = [
            doc["id"]
            for doc in docs
            if doc["owner"] == record.id and doc["owner_epoch"] == record.epoch
        ]
        found.append(
            {
                "id": record.id,
                "address": record.address,
                "state": record.state.value,
                "epoch": record.epoch,
                "beat": record.beat,
                "last_heartbeat": iso(dt.datetime.fromtimestamp(record.heartbeat_at, dt.UTC)),
                "last_heartbeat_age": round(now_s - record.heartbeat_at, 3),
                "departed_by": record.departed_by,
                "hosts": owned,
            }
        )
    return found


def _has_table(database: _Database, name: str) -> bool:
    import sqlalchemy as sa
    import sqlalchemy.exc

    try:
        return bool(sa.inspect(database.engine).has_table(name))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StoreError(_driver_message(exc)) from exc


def _orphans(docs: Sequence[dict[str, Any]], servers: Sequence[dict[str, Any]]) -> list[str]:
    """Hosts no Up server owns at its epoch (claimed by the group within a scan interval)."""
    up = {s["id"]: s["epoch"] for s in servers if s["state"] == "Up"}
    return [
        doc["id"]
        for doc in docs
        if doc["owner"] is None or up.get(doc["owner"]) != doc["owner_epoch"]
    ]


def _fence(doc: dict[str, Any]) -> str:
    ready = doc["fence_ready"]
    if doc["fence_checked_at"] is None:
        return "not checked"
    word = "ready" if ready else "NOT ready" if ready is False else "unknown"
    return f"{word}: {doc['fence_detail']}" if doc["fence_detail"] else word


def _by_status(docs: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for doc in docs:
        key = doc["status"] or _NO_STATUS
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


@click.command()
@_db_option
@_inventory_option
@_json_option
def status(url: str | None, inventory: Path | None, as_json: bool) -> None:
    """The fleet at a glance: the management servers and the hosts each owns, hosts by
    status, each host's owner, last ping and fence readiness, and the HA work queue's depth.

    Hosts removed from the inventory are counted apart (cloudha hosts lists
    them). The last ping is the host row's (set when the agent connects and
    when an investigation finds the host Up), not each agent ping.
    """
    command = "status"
    database = _open(command, url, inventory)
    try:
        rows = database.read(database.directory.rows)
        now = database.clock.now()
        queue = _queue(database, now)
        docs = [host_document(row, now) for row in rows if not row.removed]
        servers = _servers(database, docs, now)
    finally:
        database.close()
    removed = sum(1 for row in rows if row.removed)
    by_status = _by_status(docs)
    orphans = _orphans(docs, servers) if servers else []
    if as_json:
        emit_json(
            {
                "database": database.where,
                "at": iso(now),
                "by_status": by_status,
                "removed": removed,
                "servers": servers,
                "unowned": orphans,
                "hosts": [
                    {
                        key: doc[key]
                        for key in (
                            "id",
                            "status",
                            "owner",
                            "owner_epoch",
                            "last_ping",
                            "last_ping_age",
                            "fence_ready",
                            "fence_detail",
                            "fence_checked_at",
                            "fence_checked_age",
                        )
                    }
                    for doc in docs
                ],
                "queue": queue,
            }
        )
        return
    shown = console()
    if servers:
        shown.print(
            table(
                f"{len(servers)} management servers",
                ["server", "address", "state", "epoch", ">last heartbeat", ">hosts"],
                (
                    (
                        s["id"],
                        s["address"] or "-",
                        s["state"]
                        + (f" (declared by {s['departed_by']})" if s["departed_by"] else ""),
                        str(s["epoch"]),
                        _age(s["last_heartbeat_age"]),
                        str(len(s["hosts"])),
                    )
                    for s in servers
                ),
            )
        )
        if orphans:
            shown.print(
                f"{len(orphans)} hosts owned by no live server (the group claims them): "
                + ", ".join(orphans[:10])
                + (" ..." if len(orphans) > 10 else "")
            )
    counts = ", ".join(f"{n} {name}" for name, n in by_status.items()) or "no hosts"
    extra = f" ({removed} removed from the inventory)" if removed else ""
    shown.print(f"{len(docs)} hosts: {counts}{extra}")
    shown.print(
        table(
            None,
            ["host", "status", "owner", ">last ping", "fence"],
            (
                (
                    doc["id"],
                    doc["status"] or _NO_STATUS,
                    doc["owner"] or "-",
                    _age(doc["last_ping_age"]),
                    _fence(doc),
                )
                for doc in docs
            ),
        )
    )
    oldest = queue["oldest_age"]
    shown.print(
        f"HA queue: {queue['pending']} pending"
        + ("" if oldest is None else f" (oldest {span(max(0.0, oldest))})")
        + f", {queue['error']} in Error"
        + (" (cloudha queue list shows them)" if queue["error"] else "")
    )


# -- hosts ----------------------------------------------------------------------------


def _details(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key, value in doc.items():
        if value is None:
            shown = "-"
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        elif key.endswith("_age"):
            shown = f"{value:.0f} s"
        else:
            shown = str(value)
        yield key.replace("_", " "), shown


_HOSTS_COLUMNS: Final = (
    "host",
    "address",
    "cluster/pod/zone",
    "rack",
    "hypervisor",
    "status",
    "removed",
    "owner",
)


@click.command()
@click.argument("host_id", metavar="[HOST]", required=False)
@_db_option
@_inventory_option
@_json_option
def hosts(host_id: str | None, url: str | None, inventory: Path | None, as_json: bool) -> None:
    """List the host table of cloudha run, removed hosts included; with HOST, that host in full."""
    command = "hosts"
    database = _open(command, url, inventory)
    try:
        rows = database.read(database.directory.rows)
        now = database.clock.now()
    finally:
        database.close()
    docs = [host_document(row, now) for row in rows]
    if host_id is not None:
        found = [doc for doc in docs if doc["id"] == host_id]
        if not found:
            fail(
                command,
                f"no host {host_id!r} in {database.where} ({len(docs)} hosts;"
                " cloudha hosts --db URL lists them)",
                EXIT_USAGE,
            )
        if as_json:
            emit_json(found[0])
        else:
            console().print(table(f"host {host_id}", ["field", "value"], _details(found[0])))
        return
    if as_json:
        emit_json({"database": database.where, "hosts": docs})
        return
    console().print(
        table(
            f"{len(docs)} hosts in {database.where}",
            _HOSTS_COLUMNS,
            (
                (
                    doc["id"],
                    doc["address"] or "-",
                    f"{doc['cluster'] or '-'}/{doc['pod']}/{doc['zone']}",
                    doc["rack"] or "-",
                    doc["hypervisor"],
                    doc["status"] or _NO_STATUS,
                    "yes" if doc["removed"] else "no",
                    doc["owner"] or "-",
                )
                for doc in docs
            ),
        )
    )
