"""``cloudha run --inventory cluster.toml [--db URL] [--server-id ID] [--shadow] ...``.

The daemon for a fleet without an orchestrator (docs/run.md): it assembles a
:class:`~cloudha.ManagementServer` from the inventory
(:func:`cloudha.daemon.assemble`), starts it, and runs until SIGTERM or
SIGINT (a graceful stop: the loops end, unfinished HA works are handed back,
exit 0). SIGHUP reloads the inventory: a bad one is logged, one line per
problem, and the one in force is kept. Everything is logged through
:mod:`logging` (INFO and up unless ``-v`` asks for more).

On PostgreSQL (or with ``--group``) the server is one member of a group of
servers on that database (docs/cluster.md): ``--server-id`` names it (default:
the inventory's ``[server] id``), and it refuses to start (exit 2) while
another live process heartbeats under the same id.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from cloudha.cli.look import EXIT_DATABASE, EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, one_line
from cloudha.errors import (
    CloudHAError,
    ConfigurationError,
    LifecycleError,
    MissingExtraError,
    StoreError,
)

if TYPE_CHECKING:
    from cloudha.metrics import Metrics, MetricsEndpoint

__all__ = ["make_metrics", "run", "serve_metrics"]

log = logging.getLogger("cloudha.run")

_COMMAND = "run"


def make_metrics(port: int | None) -> Metrics | None:
    """The metrics exporter for ``--metrics-port`` (None without it).

    The one place ``--metrics-port`` meets :mod:`cloudha.metrics`; the
    exporter joins the server as its ``metrics=`` sink.
    """
    if port is None:
        return None
    if not 0 <= port <= 65535:
        fail(_COMMAND, f"--metrics-port: {port} is not a port (0 to 65535)", EXIT_USAGE)
    from cloudha.metrics import Metrics

    try:
        return Metrics()
    except MissingExtraError as exc:
        fail(_COMMAND, exc, EXIT_USAGE)


def serve_metrics(metrics: Metrics, port: int, address: str) -> MetricsEndpoint:
    """Serve ``metrics`` over HTTP on ``address:port`` (``/metrics``); exits 2 if it cannot."""
    try:
        endpoint = metrics.serve(port, address)
    except ConfigurationError as exc:
        fail(_COMMAND, f"--metrics-port: {exc}", EXIT_USAGE)
    log.info("cloudha run: metrics served on %s", endpoint.url)
    return endpoint


def _load(path: Path) -> Any:
    """The inventory at ``path``; raises InventoryError / ConfigurationError."""
    from cloudha.inventory import load_inventory

    if not path.is_file():
        raise ConfigurationError(f"{path}: no such inventory file", key="inventory")
    return load_inventory(path)


def _problems(exc: Exception) -> list[str]:
    lines = [one_line(line) for line in str(exc).splitlines() if line.strip()]
    return lines or [one_line(exc)]


class _Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; the main thread does the work."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop: str | None = None
        self.reloads = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reloads += 1
        elif self.stop is None:
            self.stop = signal.Signals(signum).name
        self.wake.set()


@click.command(_COMMAND)
@click.option(
    "--inventory",
    "inventory_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The inventory (docs/inventory.md): hosts, pools, BMCs, settings.",
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="The database (default: the inventory's [server] db; sqlite:///path or"
    " postgresql+psycopg://...).",
)
@click.option(
    "--server-id",
    metavar="ID",
    help="This server's id (default: the inventory's [server] id); each server of a group"
    " needs its own.",
)
@click.option(
    "--address",
    default="",
    metavar="TEXT",
    help="Where operators reach this server, shown by cloudha status (default: the host name).",
)
@click.option(
    "--group/--alone",
    "group",
    default=None,
    help="Be a member of the group of servers on the database, or run alone (default:"
    " a member on PostgreSQL, alone on SQLite).",
)
@click.option("--shadow", is_flag=True, help="Shadow mode: decide everything, execute nothing.")
@click.option(
    "--metrics-port",
    type=int,
    metavar="N",
    help="Serve Prometheus metrics on this port (/metrics; 0: any free port, logged).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDR",
    help="The address the metrics endpoint listens on.",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds a graceful stop may take.",
)
def run(
    inventory_path: Path,
    db_url: str | None,
    server_id: str | None,
    address: str,
    group: bool | None,
    shadow: bool,
    metrics_port: int | None,
    metrics_address: str,
    stop_timeout: float,
) -> None:
    """Run cloudha on the fleet of an inventory until SIGTERM (SIGHUP reloads it)."""
    from cloudha.daemon import assemble

    root = logging.getLogger()
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    if root.getEffectiveLevel() >= logging.INFO:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugins, one line each
    try:
        inventory = _load(inventory_path)
    except ConfigurationError as exc:
        lines = _problems(exc)
        for line in lines[:-1]:
            click.echo(f"cloudha {_COMMAND}: {line}", err=True)
        fail(_COMMAND, lines[-1], EXIT_USAGE)
    if server_id is not None and not _ID.fullmatch(server_id):
        fail(
            _COMMAND,
            f"--server-id: {server_id!r} is not a server id"
            " (1 to 64 letters, digits, '.', '_' or '-', a letter or digit first)",
            EXIT_USAGE,
        )
    metrics = make_metrics(metrics_port)
    try:
        assembly = assemble(
            inventory,
            db_url=db_url,
            shadow=shadow,
            metrics=metrics,
            server_id=server_id,
            address=address or socket.gethostname(),
            group=group,
        )
    except StoreError as exc:
        fail(_COMMAND, exc, EXIT_DATABASE)
    except CloudHAError as exc:
        fail(_COMMAND, exc, EXIT_USAGE)
    try:
        in_use = id_in_use(assembly.server)
    except StoreError as exc:
        assembly.close()
        fail(_COMMAND, exc, EXIT_DATABASE)
    if in_use is not None:
        assembly.close()
        fail(_COMMAND, in_use, EXIT_USAGE)
    signals = _Signals()
    signals.install()
    status = EXIT_OK
    endpoint: MetricsEndpoint | None = None
    try:
        if metrics is not None and metrics_port is not None:
            endpoint = serve_metrics(metrics, metrics_port, metrics_address)
        assembly.start()
        log.info("cloudha run: SIGTERM or SIGINT stops, SIGHUP reloads %s", inventory_path)
        reloaded = 0
        while signals.stop is None:
            signals.wake.wait(1.0)
            signals.wake.clear()
            while reloaded < signals.reloads and signals.stop is None:
                reloaded += 1
                _reload(assembly, inventory_path)
        log.info("cloudha run: %s received, stopping", signals.stop)
        try:
            assembly.stop(stop_timeout)
        except LifecycleError as exc:
            log.error("cloudha run: %s", exc)
            status = EXIT_FAILED
    finally:
        signals.restore()
        if endpoint is not None:
            endpoint.close()
        assembly.close()
    log.info("cloudha run: stopped")
    raise SystemExit(status)


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def id_in_use(server: Any, *, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Why ``server``'s id is taken by another live process of its group, or None.

    A row of the registry under this id that is Up is watched for two
    ``cloudha.ms.heartbeat.interval``: a beat that moves is another process
    heartbeating (a crashed server's row stands still, and restarting it is
    allowed). None for a server that runs alone.
    """
    cluster = getattr(server, "cluster", None)
    if cluster is None:
        return None
    from cloudha.ports import ServerState

    def row() -> Any:
        return next((r for r in cluster.registry.servers() if r.id == server.server_id), None)

    first = row()
    if first is None or first.state is not ServerState.UP:
        return None
    interval = server.settings.cloudha_ms_heartbeat_interval
    for _ in range(4):
        sleep(interval / 2)
        now = row()
        if now is None or now.state is not ServerState.UP:
            return None
        if (now.epoch, now.beat) != (first.epoch, first.beat):
            where = f" at {now.address}" if now.address else ""
            return (
                f"server id {server.server_id!r} is in use: a live server{where} heartbeats under"
                " it; give each server of the group its own --server-id (or [server] id)"
            )
    return None


def _reload(assembly: Any, path: Path) -> None:
    log.info("cloudha run: SIGHUP: reloading %s", path)
    try:
        inventory = _load(path)
    except ConfigurationError as exc:
        for line in _problems(exc):
            log.error("reload refused: %s", line)
        log.error("reload refused: the inventory in force is kept")
        return
    try:
        assembly.reload(inventory)
    except CloudHAError as exc:
        log.error("reload failed (the hosts in force are kept where it stopped): %s", one_line(exc))
