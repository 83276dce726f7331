"""``cloudha run``: a :class:`~cloudha.ManagementServer` assembled from an inventory.

A fleet of KVM hosts without an orchestrator has none of the ports an
embedding implements, so :func:`assemble` builds each from the inventory
(:func:`cloudha.inventory.load_inventory`) on one database:

* the host table: :class:`~cloudha.hoststore.SqlHostDirectory`, synced from
  the inventory (a host dropped from it is marked removed, never deleted);
* the agents: no agent pings, so the agent poller
  (:class:`~cloudha.detection.poller.AgentPoller`) asks each host's libvirtd
  every ``ping.interval`` (:class:`~cloudha.detection.poller.HypervisorPoller`);
  the investigators' commands run on the hosts over SSH
  (:class:`~cloudha.transport.gateway.SSHAgentGateway`, host keys verified
  through each host's ``known_hosts``; a neighbour's ``ping`` is the
  PingTest of fence on suspicion), or as local processes for
  ``agent = "local"`` hosts (a lab on one machine: no ping witness, and an
  agent check that never finds a host dead); a host whose pools are plain
  directories (``allow_unmounted`` in the inventory) has its heartbeat
  checkers told so;
* the hypervisors: :class:`~cloudha.transport.libvirt.LibvirtHypervisorProbe`
  on each host's libvirt URI (probe, and libvirt fencer's control);
* the VMs: :class:`~cloudha.ha.libvirt_orchestrator.LibvirtOrchestrator`
  with its registry in SQL (:class:`~cloudha.ha.vm_registry.SqlVmRegistry`),
  discovering the domains on every host at start and on reload, HA-enabled
  by the inventory's ``[vms] ha`` patterns;
* power fencing: the built-in OOBM drivers with each host's BMC;
* the HA work queue (migrated with Alembic), evidence in
  :class:`~cloudha.evidence_store.SqlEvidenceStore` (``cloudha explain --db``)
  teed with an in-memory :class:`~cloudha.evidence.EvidenceLog`, alerts to
  the log, shadow mode from ``--shadow``.

:class:`Assembly` holds all of it: :meth:`Assembly.start`,
:meth:`Assembly.reload` (a new inventory: host additions, removals and
credential changes apply at once; settings, the server id and the database
need a restart and are not applied), :meth:`Assembly.stop` and
:meth:`Assembly.close`. A loop writes fence readiness to the host table for
``cloudha status``. docs/run.md describes the daemon.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
import threading
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import Engine

from cloudha.clock import Clock, SystemClock
from cloudha.detection.poller import HypervisorPoller
from cloudha.errors import CloudHAError, ConfigurationError, ProbeConnectionError, StoreError
from cloudha.evidence import EvidenceLog, EvidenceSink, TeeSink
from cloudha.evidence_store import SqlEvidenceStore, open_engine
from cloudha.ha.store import create_schema, prepare_sqlite_engine, upgrade
from cloudha.model import Host, Pool
from cloudha.oobm.manager import StaticOobmConfigs
from cloudha.oobm.power import OobmConfig, PowerDriver
from cloudha.ports import (
    AgentGateway,
    Alert,
    Answer,
    Command,
    HypervisorProbe,
    MetricsSink,
    ShellResult,
    VmOrchestrator,
)
from cloudha.runtime import Loop, Pump, ThreadFactory
from cloudha.server import ManagementServer
from cloudha.settings import Settings

__all__ = [
    "DEFAULT_CAPACITY",
    "Assembly",
    "HostRoutes",
    "InventoryPools",
    "LoggingAlertSink",
    "ReloadResult",
    "assemble",
    "local_settings_file",
    "shown_url",
]

log = logging.getLogger(__name__)

DEFAULT_CAPACITY: Final = 100
"""VMs a host may run when the inventory does not say (the libvirt orchestrator's first fit)."""

_LOCAL_COMMAND: Final = (sys.executable, "-m", "cloudha")
"""How an ``agent = "local"`` host runs cloudha's agent-side commands: this very Python."""


# -- what the daemon reads of an inventory --------------------------------------------------
#
# cloudha.inventory.Inventory (and its HostEntry, OobmEntry ...) fit these; an
# embedding (cloudha demo --real) or a test may pass its own objects.


class SshView(Protocol):
    @property
    def user(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def key(self) -> str | None: ...
    @property
    def known_hosts(self) -> str | None: ...


class SecretView(Protocol):
    def reveal(self) -> str: ...


class OobmView(Protocol):
    @property
    def driver(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> SecretView: ...


class HostView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def pools(self) -> Sequence[str]: ...
    @property
    def libvirt_uri(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def ssh(self) -> SshView: ...
    @property
    def oobm(self) -> OobmView | None: ...
    @property
    def allow_unmounted(self) -> bool: ...

    def to_host(self) -> Host: ...


class InventoryView(Protocol):
    """What the daemon reads of an inventory (``path``, the file, is read when present)."""

    @property
    def server_id(self) -> str: ...
    @property
    def db_url(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def pools(self) -> Sequence[Pool]: ...
    @property
    def hosts(self) -> Sequence[HostView]: ...
    @property
    def vm_ha(self) -> Sequence[str]: ...


def _source(inventory: InventoryView) -> str:
    """The inventory's file for the log, or ``<inventory>`` when it does not say."""
    path = getattr(inventory, "path", None)
    return "<inventory>" if path is None else str(path)


def shown_url(url: str) -> str:
    """``url`` with its password hidden (for logs and errors)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<not a database URL>"


def _ha_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    frozen = tuple(patterns)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in frozen)


# -- small ports ----------------------------------------------------------------------


class LoggingAlertSink:
    """The :class:`~cloudha.ports.AlertSink` of the daemon: every alert is a WARNING log line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger if logger is not None else logging.getLogger("cloudha.alerts")
        self.sent = 0

    def send(self, alert: Alert) -> None:
        self.sent += 1
        where = f" host {alert.host_id}" if alert.host_id else ""
        body = f": {' '.join(alert.body.split())}" if alert.body else ""
        self.logger.warning("alert %s%s: %s%s", alert.type, where, alert.subject, body)


class InventoryPools:
    """The :class:`~cloudha.ports.StoragePoolDirectory` of an inventory: each host's pools.

    A host mounts the pools its entry names: its cluster's first, then the
    zone-wide ones (the order of the storage heartbeat's checks). Thread-safe;
    :meth:`update` replaces everything (a reload).
    """

    def __init__(self, pools: Iterable[Pool] = (), hosts: Mapping[str, Sequence[str]] = {}) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}
        self._hosts: dict[str, tuple[str, ...]] = {}
        self.update(pools, hosts)

    def update(self, pools: Iterable[Pool], hosts: Mapping[str, Sequence[str]]) -> None:
        with self._lock:
            self._pools = {p.id: p for p in pools}
            self._hosts = {h: tuple(ids) for h, ids in hosts.items()}

    def pools_for_host(self, host: Host) -> Sequence[Pool]:
        with self._lock:
            mine = [self._pools[i] for i in self._hosts.get(host.id, ()) if i in self._pools]
        return [p for p in mine if p.cluster is not None] + [p for p in mine if p.cluster is None]


class HostRoutes:
    """The agent gateway and host shell of the daemon: each host's own, by host id.

    A host's commands go to the :class:`~cloudha.ports.AgentGateway` (and
    its :class:`~cloudha.ports.HostShell`) built for it from its inventory
    entry; a host without one raises
    :class:`~cloudha.errors.ProbeConnectionError`. Thread-safe; :meth:`set`
    replaces the routes at once (a reload).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gateways: dict[str, AgentGateway] = {}
        self._shells: dict[str, Any] = {}

    def set(self, gateways: Mapping[str, AgentGateway], shells: Mapping[str, Any]) -> None:
        with self._lock:
            self._gateways = dict(gateways)
            self._shells = dict(shells)

    def _gateway(self, host: Host) -> AgentGateway:
        with self._lock:
            gateway = self._gateways.get(host.id)
        if gateway is None:
            raise ProbeConnectionError(f"host {host.id} is not in the inventory", host_id=host.id)
        return gateway

    def check_health(self, host: Host, *, timeout: float) -> bool:
        return self._gateway(host).check_health(host, timeout=timeout)

    def send(self, host: Host, command: Command, *, timeout: float) -> Answer:
        return self._gateway(host).send(host, command, timeout=timeout)

    def run(self, host: Host, argv: Sequence[str], *, timeout: float) -> ShellResult:
        with self._lock:
            shell = self._shells.get(host.id)
        if shell is None:
            raise ProbeConnectionError(
                f'host {host.id} has no SSH shell (agent = "local", or not in the inventory)',
                host_id=host.id,
            )
        result: ShellResult = shell.run(host, argv, timeout=timeout)
        return result

    def routed(self) -> list[str]:
        with self._lock:
            return sorted(self._gateways)


# -- the assembly ---------------------------------------------------------------------


@attrs.frozen
class ReloadResult:
    """What :meth:`Assembly.reload` did, and what it could not do without a restart.

    Attributes:
        added, removed, updated: host ids (the host table's sync).
        needs_restart: one sentence per change that is not applied until
            ``cloudha run`` restarts (settings, the server id, the database).
        lines: the log lines written, in order.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()


def _oobm_config(entry: HostView) -> OobmConfig | None:
    oobm = entry.oobm
    if oobm is None:
        return None
    return OobmConfig(
        driver=oobm.driver,
        address=oobm.address,
        username=oobm.username,
        password=oobm.password.reveal(),
        port=oobm.port,
        host_id=entry.id,
    )


def _transport_key(entry: HostView) -> tuple[Any, ...]:
    if entry.agent == "local":
        return ("local",)
    ssh = entry.ssh
    return ("ssh", ssh.user, ssh.port, ssh.key, ssh.known_hosts)


def _prepare_schema(engine: Engine) -> None:
    """Bring the database to cloudha's schema: Alembic migrations, or create a legacy one's."""
    names = set(sa.inspect(engine).get_table_names())
    if "op_ha_work" in names and "alembic_version" not in names:
        # Made by create_schema() (a test or a simulator database): add what is missing.
        log.warning(
            "database has cloudha tables but no Alembic version: missing tables are created"
        )
        create_schema(engine)
        return
    upgrade(engine)


class Assembly:
    """Everything ``cloudha run`` runs, built by :func:`assemble`; see the module docstring.

    Attributes:
        server: the management server.
        inventory: the inventory in force (replaced by :meth:`reload`).
        engine: the database.
        directory: the host table (``SqlHostDirectory``).
        orchestrator: the VM orchestrator (``LibvirtOrchestrator`` unless one was given).
        routes: each host's agent gateway and shell.
        probe: the hypervisor probe.
        oobm_configs: each host's BMC.
        pools: each host's storage pools.
        evidence_store: the SQL evidence store (None when evidence goes elsewhere).
        evidence_log: the in-memory evidence log.
        metrics: the metrics exporter given, if any.
    """

    def __init__(
        self,
        *,
        server: ManagementServer,
        inventory: InventoryView,
        engine: Engine,
        directory: Any,
        orchestrator: VmOrchestrator,
        routes: HostRoutes,
        probe: HypervisorProbe,
        oobm_configs: StaticOobmConfigs,
        pools: InventoryPools,
        evidence_store: SqlEvidenceStore | None,
        evidence_log: EvidenceLog,
        metrics: MetricsSink | None,
        clock: Clock,
        thread_factory: ThreadFactory,
        uris: dict[str, str],
        build_gateway: Callable[[HostView], tuple[AgentGateway, Any]],
        db_url: str,
    ) -> None:
        self.server = server
        self.inventory = inventory
        self.engine = engine
        self.directory = directory
        self.orchestrator = orchestrator
        self.routes = routes
        self.probe = probe
        self.oobm_configs = oobm_configs
        self.pools = pools
        self.evidence_store = evidence_store
        self.evidence_log = evidence_log
        self.metrics = metrics
        self.clock = clock
        self.thread_factory = thread_factory
        self.db_url = db_url
        self._uris = uris
        self._build_gateway = build_gateway
        self._lock = threading.Lock()
        self._readiness_pump: Pump | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def host_ids(self) -> list[str]:
        return sorted(h.id for h in self.inventory.hosts)

    def describe(self) -> str:
        """The startup line: inventory, database (password hidden), hosts, shadow."""
        inv = self.inventory
        shadow = "on" if self.server.settings.cloudha_shadow else "off"
        member = "" if self.server.cluster is None else " (a group member)"
        return (
            f"cloudha run: server {self.server.server_id}{member}, inventory {_source(inv)},"
            f" database {shown_url(self.db_url)}, {len(inv.hosts)} hosts"
            f" ({', '.join(self.host_ids) or 'none'}), shadow mode {shadow}"
        )

    def discover(self, hosts: Iterable[str] | None = None) -> None:
        """Ask the hosts' libvirtds which domains they hold (a LibvirtOrchestrator only)."""
        discover = getattr(self.orchestrator, "discover", None)
        if discover is None:
            return
        found = discover(ha=_ha_matcher(self.inventory.vm_ha), hosts=hosts)
        log.info(
            "discovery: %d VMs added (%s), %d corrected, %d HA flags changed",
            len(found.added),
            ", ".join(found.added) or "none",
            len(found.moved),
            len(found.ha_changed),
        )
        for conflict in found.conflicts:
            log.warning("discovery: left alone: %s", conflict)
        for host_id, why in sorted(found.unreachable.items()):
            log.warning("discovery: host %s could not be listed: %s", host_id, why)

    def start(self) -> None:
        """Discover the VMs, start the evidence writer, the server and the readiness loop."""
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.evidence_store is not None:
            self.evidence_store.start(self.thread_factory)
        self.discover()
        self.server.start()
        self._readiness_pump = Loop("FenceReadiness", self.readiness_tick).pump(
            clock=self.clock, thread_factory=self.thread_factory
        )
        self._readiness_pump.start()
        log.info("%s: started", self.describe())

    def readiness_tick(self) -> float:
        """Write every host's fence readiness to the host table; seconds until the next write."""
        self.write_readiness()
        return self.server.oobm_sync.interval

    def write_readiness(self) -> int:
        """Write the last fence-readiness check of every inventory host (``cloudha status``).

        A host without a BMC is written as not ready (None) with why.
        Returns how many hosts were written; a database failure is logged.
        """
        report = self.server.oobm.readiness_report()
        readiness: dict[str, tuple[bool | None, str]] = {}
        for host_id in self.host_ids:
            found = report.get(host_id)
            if found is not None:
                readiness[host_id] = (found.ready, found.reason)
            elif self.oobm_configs.oobm_config(Host(host_id)) is None:
                readiness[host_id] = (None, "no out-of-band management in the inventory")
            else:
                readiness[host_id] = (None, "not checked yet")
        try:
            self.directory.note_fence_readiness(readiness)
        except Exception as exc:
            log.warning("writing fence readiness failed: %s", exc)
            return 0
        return len(readiness)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (its works are handed back) and the readiness loop."""
        if self._readiness_pump is not None:
            self._readiness_pump.request_stop()
        self.server.stop(timeout)
        if self._readiness_pump is not None:
            self._readiness_pump.join(5.0)

    def close(self) -> None:
        """Release every resource: the evidence writer (flushed), transports, the engine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.evidence_store is not None:
            try:
                self.evidence_store.close()
            except Exception as exc:
                log.warning("closing the evidence store failed: %s", exc)
        for closeable in self._closeables():
            try:
                closeable.close()
            except Exception as exc:
                log.debug("closing %r failed: %s", closeable, exc)
        self.engine.dispose()

    def _closeables(self) -> list[Any]:
        found: list[Any] = [self.probe]
        found.extend(getattr(self._build_gateway, "transports", {}).values())
        return [c for c in found if callable(getattr(c, "close", None))]

    # -- reload ------------------------------------------------------------------------------

    def reload(self, inventory: InventoryView) -> ReloadResult:
        """Apply a new inventory; what needs a restart is logged and not applied.

        Hosts added, removed or changed (address, pools, libvirt URI, SSH user,
        key or known_hosts, BMC address or credentials) apply at once: the
        host table is synced, each host's gateway, shell, libvirt URI and BMC
        are replaced, and the new hosts' domains discovered. The VM HA
        patterns apply to every VM. Settings, the server id and the database
        are read once at start: a change there is logged as needing a
        restart of ``cloudha run`` and is not applied (the server is not
        restarted by itself: a restart makes every host wait out a doubled
        grace, which an operator should choose).
        """
        old = self.inventory
        lines: list[str] = []
        needs_restart: list[str] = []
        if inventory.settings != old.settings:
            before, after = old.settings.to_mapping(), inventory.settings.to_mapping()
            changed = sorted(k for k in after if before.get(k) != after[k])
            needs_restart.append(
                f"settings changed ({', '.join(changed)}): they need a restart of cloudha run"
            )
        if inventory.server_id != old.server_id:
            needs_restart.append(
                f"server id changed ({old.server_id} -> {inventory.server_id}):"
                " it needs a restart of cloudha run"
            )
        if inventory.db_url != old.db_url:
            needs_restart.append(
                f"database changed ({shown_url(old.db_url)} -> {shown_url(inventory.db_url)}):"
                " it needs a restart of cloudha run"
            )
        routes = self._routes_for(inventory)  # a key that cannot be read changes nothing
        synced = self.directory.sync(h.to_host() for h in inventory.hosts)
        self._apply_hosts(inventory, routes)
        with self._lock:
            self.inventory = inventory
        added = tuple(sorted(synced.added))
        removed = tuple(sorted(synced.removed))
        updated = tuple(sorted(synced.updated))
        lines.append(
            f"reload of {_source(inventory)}: hosts added {list(added)}, removed {list(removed)},"
            f" updated {list(updated)}; gateways, libvirt URIs and BMCs replaced"
        )
        for line in needs_restart:
            lines.append(f"reload: {line}; not applied (the server is not restarted)")
        for line in lines:
            log.log(logging.WARNING if line.startswith("reload: ") else logging.INFO, "%s", line)
        self.discover(hosts=[h for h in added if h in self._uris] or None)
        self.write_readiness()
        return ReloadResult(added, removed, updated, tuple(needs_restart), tuple(lines))

    def _routes_for(
        self, inventory: InventoryView
    ) -> tuple[dict[str, AgentGateway], dict[str, Any]]:
        """Each host's gateway and shell (may raise: nothing is applied yet)."""
        if isinstance(self._build_gateway, _Gateways):
            self._build_gateway.settings_file = local_settings_file(inventory)
        gateways: dict[str, AgentGateway] = {}
        shells: dict[str, Any] = {}
        for entry in inventory.hosts:
            gateway, shell = self._build_gateway(entry)
            gateways[entry.id] = gateway
            if shell is not None:
                shells[entry.id] = shell
        return gateways, shells

    def _apply_hosts(
        self,
        inventory: InventoryView,
        routes: tuple[dict[str, AgentGateway], dict[str, Any]] | None = None,
    ) -> None:
        entries = {h.id: h for h in inventory.hosts}
        gateways, shells = routes if routes is not None else self._routes_for(inventory)
        self.routes.set(gateways, shells)
        prune = getattr(self._build_gateway, "prune", None)
        if prune is not None:
            prune({_transport_key(e) for e in entries.values()})
        uris = {host_id: e.libvirt_uri for host_id, e in entries.items()}
        self._uris.clear()
        self._uris.update(uris)
        for host_id in set(self.oobm_configs.host_ids()) - set(entries):
            self.oobm_configs.set(host_id, None)
        for host_id, entry in entries.items():
            self.oobm_configs.set(host_id, _oobm_config(entry))
        self.pools.update(inventory.pools, {h: e.pools for h, e in entries.items()})
        set_hosts = getattr(self.orchestrator, "set_hosts", None)
        if set_hosts is not None and uris:
            set_hosts(uris, capacity=_capacities(inventory))

    def __repr__(self) -> str:
        return f"Assembly({self.inventory.server_id!r}, {len(self.inventory.hosts)} hosts)"


def _capacities(inventory: InventoryView) -> dict[str, int]:
    return {h.id: int(getattr(h, "capacity", None) or DEFAULT_CAPACITY) for h in inventory.hosts}


def local_settings_file(inventory: InventoryView) -> str | None:
    """The settings file an ``agent = "local"`` host's heartbeat checker reads, if any.

    A local host's writers run on this machine, so its checker judges their
    heartbeats with the inventory's own ``[settings]`` (the inventory file is
    a settings file: ``Settings.from_toml`` reads its ``settings`` table).
    None when the inventory file has no ``[settings]`` table (the checker's
    defaults) or cannot be read.
    """
    path = getattr(inventory, "path", None)
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            has_settings = isinstance(tomllib.load(handle).get("settings"), dict)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return str(path) if has_settings else None


class _Gateways:
    """Builds each host's gateway and shell, sharing one transport per distinct SSH setting.

    ``settings_file``: what a local host's heartbeat checker reads
    (:func:`local_settings_file`; replaced on reload).
    """

    def __init__(self, pools: InventoryPools, settings_file: str | None = None) -> None:
        self.pools = pools
        self.settings_file = settings_file
        self.transports: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def _transport(self, entry: HostView) -> Any:
        key = _transport_key(entry)
        with self._lock:
            found = self.transports.get(key)
            if found is not None:
                return found
        if key[0] == "local":
            from cloudha.transport.local import LocalTransport

            transport: Any = LocalTransport()
        else:
            from cloudha.transport.ssh import SSHTransport

            ssh = entry.ssh
            transport = SSHTransport(
                username=ssh.user,
                port=ssh.port,
                key_filename=ssh.key,
                known_hosts=ssh.known_hosts,
            )
        with self._lock:
            return self.transports.setdefault(key, transport)

    def __call__(self, entry: HostView) -> tuple[AgentGateway, Any]:
        from cloudha.transport.gateway import SSHAgentGateway

        transport = self._transport(entry)
        # Its pools are plain directories (the inventory's allow_unmounted): say so to its
        # heartbeat checkers, which otherwise refuse a pool where nothing is mounted.
        unmounted = entry.allow_unmounted
        if entry.agent == "local":
            gateway = SSHAgentGateway(
                transport,
                pools=self.pools,
                remote_command=_LOCAL_COMMAND,
                remote_settings=self.settings_file,
                allow_unmounted=unmounted,
                ping_command=None,  # this machine is no witness of a host's network
            )
            return gateway, None
        from cloudha.transport.shell import SSHHostShell

        gateway = SSHAgentGateway(transport, pools=self.pools, allow_unmounted=unmounted)
        return gateway, SSHHostShell(transport)

    def prune(self, keep: set[tuple[Any, ...]]) -> None:
        """Close the transports no host uses any more (a changed key, a removed host)."""
        with self._lock:
            gone = {k: t for k, t in self.transports.items() if k not in keep}
            for key in gone:
                del self.transports[key]
        for transport in gone.values():
            transport.close()


def _bmc_reads_off(server: ManagementServer) -> Callable[[str], bool]:
    """Asks a host's BMC now whether its power is off (the libvirt orchestrator's forced stop
    on a host whose libvirtd is gone counts as done then).

    True only on a STATUS that succeeded and read power Off, asked now (never the power
    state machine's last reading). A host not in the table, without a BMC, a BMC that
    cannot be reached or refuses the login, a failed STATUS, power On or Unknown, a host
    table that cannot be read: False (logged), never an exception.
    """
    from cloudha.oobm.power import PowerOperation, PowerState

    def powered_off(host_id: str) -> bool:
        try:
            host = server.directory.find_host(host_id)
            if host is None or server.oobm.config(host) is None:
                return False
            result = server.oobm.execute(host, PowerOperation.STATUS)
        except CloudHAError as exc:
            # The host table, the BMC (a reload may drop it between the two calls), its driver.
            log.warning("%s: the BMC could not say whether it is powered off: %s", host_id, exc)
            return False
        return result.success is True and result.state is PowerState.OFF

    return powered_off


def _group_options(group: bool, engine: Engine, clock: Clock, address: str) -> dict[str, Any]:
    """The ``registry`` and ``address`` of a group member; nothing for a server alone."""
    if not group:
        return {}
    from cloudha.cluster import SqlServerRegistry

    return {"registry": SqlServerRegistry(engine, clock), "address": address}


def assemble(
    inventory: InventoryView,
    *,
    db_url: str | None = None,
    shadow: bool = False,
    metrics: MetricsSink | None = None,
    clock: Clock | None = None,
    thread_factory: ThreadFactory = threading.Thread,
    probe: HypervisorProbe | None = None,
    orchestrator: VmOrchestrator | None = None,
    gateway: Callable[[HostView], tuple[AgentGateway, Any]] | None = None,
    power_drivers: Iterable[PowerDriver] | None = None,
    evidence: EvidenceSink | None = None,
    directory: Any | None = None,
    server_id: str | None = None,
    address: str = "",
    group: bool | None = None,
    **server_options: Any,
) -> Assembly:
    """Build the management server of ``cloudha run`` for ``inventory`` (not started).

    Args:
        inventory: the loaded inventory (:func:`cloudha.inventory.load_inventory`).
        db_url: the database (default: the inventory's ``[server] db``);
            ``sqlite:///path`` or ``postgresql+psycopg://...``.
        shadow: shadow mode (``cloudha.shadow``): every check and decision,
            nothing executed.
        metrics: the Prometheus exporter (``cloudha.metrics.Metrics()``), if any.
        clock: the time source (``SystemClock()``).
        thread_factory: makes every thread.
        probe: the hypervisor probe instead of libvirt (tests).
        orchestrator: the VM orchestrator instead of the SQL-backed libvirt one (tests).
        gateway: builds each host's ``(AgentGateway, HostShell | None)`` from its
            entry instead of SSH and local processes (tests).
        power_drivers: the OOBM drivers instead of the built-in ones (tests).
        evidence: one more evidence sink (e.g. the demo's live progress).
        directory: the host table instead of ``SqlHostDirectory`` on the
            database (tests): a HostDirectory with ``sync(hosts)`` and
            ``note_fence_readiness(readiness)``.
        server_id: this server's id instead of the inventory's ``[server] id``
            (``--server-id``: several servers of a group share one inventory).
        address: where operators reach this server (kept in the server registry).
        group: whether the server is a member of a group of servers on the
            database (:class:`~cloudha.cluster.SqlServerRegistry`: host
            ownership, takeover, fenced writes; docs/cluster.md). None (the
            default): on PostgreSQL yes, on SQLite (a file of one machine) no.
        server_options: more :class:`~cloudha.ManagementServer` arguments.

    Raises:
        StoreError: a bad database URL, or the database cannot be reached or
            its schema prepared (``cloudha run`` exits 3).
        ConfigurationError: an inventory without hosts, a host's SSH key or
            known_hosts that cannot be read.
    """
    clock = clock if clock is not None else SystemClock()
    url = db_url if db_url is not None else inventory.db_url
    settings = inventory.settings
    if shadow:
        settings = settings.with_overrides({"cloudha.shadow": True}, source="--shadow")
    try:
        engine = open_engine(url, holds="cloudha's state")
    except ConfigurationError as exc:
        raise StoreError(f"database: {exc}") from exc
    try:
        prepare_sqlite_engine(engine)
        with engine.connect():
            pass
        _prepare_schema(engine)
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        engine.dispose()
        orig = getattr(exc, "orig", None)
        detail = " ".join(str(orig if orig is not None else exc).split())
        raise StoreError(f"database {shown_url(url)} cannot be used: {detail}") from exc
    try:
        return _assemble(
            inventory,
            url=url,
            engine=engine,
            settings=settings,
            metrics=metrics,
            clock=clock,
            thread_factory=thread_factory,
            probe=probe,
            orchestrator=orchestrator,
            gateway=gateway,
            power_drivers=power_drivers,
            evidence=evidence,
            server_options=server_options,
            directory=directory,
            server_id=server_id if server_id is not None else inventory.server_id,
            address=address,
            group=engine.dialect.name == "postgresql" if group is None else group,
        )
    except BaseException:
        engine.dispose()
        raise


def _assemble(
    inventory: InventoryView,
    *,
    url: str,
    engine: Engine,
    settings: Settings,
    metrics: MetricsSink | None,
    clock: Clock,
    thread_factory: ThreadFactory,
    probe: HypervisorProbe | None,
    orchestrator: VmOrchestrator | None,
    gateway: Callable[[HostView], tuple[AgentGateway, Any]] | None,
    power_drivers: Iterable[PowerDriver] | None,
    evidence: EvidenceSink | None,
    server_options: Mapping[str, Any],
    directory: Any | None,
    server_id: str,
    address: str,
    group: bool,
) -> Assembly:
    if directory is None:
        from cloudha.hoststore import SqlHostDirectory

        directory = SqlHostDirectory(engine, clock)
    synced = directory.sync(h.to_host() for h in inventory.hosts)
    log.info(
        "host table: %d added, %d updated, %d removed",
        len(synced.added),
        len(synced.updated),
        len(synced.removed),
    )
    uris: dict[str, str] = {h.id: h.libvirt_uri for h in inventory.hosts}
    if probe is None:
        from cloudha.transport.libvirt import LibvirtHypervisorProbe

        probe = LibvirtHypervisorProbe(uri_of=lambda host: uris[host.id])
    if orchestrator is None:
        from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator
        from cloudha.ha.vm_registry import SqlVmRegistry

        if not uris:
            raise ConfigurationError("the inventory has no hosts", key="hosts")
        orchestrator = LibvirtOrchestrator(
            dict(uris), capacity=_capacities(inventory), registry=SqlVmRegistry(engine)
        )
        built_orchestrator: Any = orchestrator
    else:
        built_orchestrator = None
    pools = InventoryPools(inventory.pools, {h.id: h.pools for h in inventory.hosts})
    build = gateway if gateway is not None else _Gateways(pools, local_settings_file(inventory))
    routes = HostRoutes()
    oobm_configs = StaticOobmConfigs()
    if power_drivers is None:
        from cloudha.oobm.drivers import default_power_drivers

        power_drivers = default_power_drivers(settings)
    evidence_log = EvidenceLog()
    store = SqlEvidenceStore.from_settings(engine, clock, settings)
    sinks: list[EvidenceSink] = [evidence_log, store]
    if evidence is not None:
        sinks.append(evidence)
    server = ManagementServer(
        settings=settings,
        clock=clock,
        directory=directory,
        gateway=routes,
        orchestrator=orchestrator,
        alerts=LoggingAlertSink(),
        engine=engine,
        evidence=TeeSink(*sinks),
        server_id=server_id,
        thread_factory=thread_factory,
        oobm_drivers=power_drivers,
        oobm_configs=oobm_configs,
        pools=pools,
        hypervisor=probe,
        shell=routes,
        poller=HypervisorPoller(probe),
        metrics=metrics,
        **_group_options(group, engine, clock, address),
        **server_options,
    )
    if built_orchestrator is not None:
        built_orchestrator.powered_off = _bmc_reads_off(server)
    assembly = Assembly(
        server=server,
        inventory=inventory,
        engine=engine,
        directory=directory,
        orchestrator=orchestrator,
        routes=routes,
        probe=probe,
        oobm_configs=oobm_configs,
        pools=pools,
        evidence_store=store,
        evidence_log=evidence_log,
        metrics=metrics,
        clock=clock,
        thread_factory=thread_factory,
        uris=uris,
        build_gateway=build,
        db_url=url,
    )
    assembly._apply_hosts(inventory)
    return assembly
