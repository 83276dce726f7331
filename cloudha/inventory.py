"""The inventory of ``cloudha run``: a fleet described in one TOML file (docs/inventory.md).

:func:`load_inventory` reads and validates the whole file and returns an
:class:`Inventory`, or raises :class:`InventoryError` listing every problem
found (not just the first), each with its file, line and key::

    cluster.toml:14: hosts[kvm2].oobm.driver: unknown driver 'ipmitol' (did you mean 'ipmitool'?)

Secrets (BMC passwords) are read at load, from an environment variable or a
file, into :class:`Secret`, whose ``repr``/``str`` names only where the value
came from; :meth:`Secret.reveal` is the one way to the value.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from cloudha.errors import ConfigurationError
from cloudha.model import Host, HypervisorType, Pool
from cloudha.settings import Settings
from cloudha.tomllines import PathPart, TomlLines

__all__ = [
    "AGENT_KINDS",
    "DEFAULT_DB_FILE",
    "OOBM_DRIVERS",
    "URI_FIELDS",
    "HostEntry",
    "Inventory",
    "InventoryError",
    "OobmEntry",
    "Problem",
    "Secret",
    "SshEntry",
    "load_inventory",
]

AGENT_KINDS: Final = ("ssh", "local")
"""How cloudha's agent-side commands run on a host: over SSH, or as local processes (a lab).

``local`` runs them on this machine, which answers for a host whatever became
of it: its agent check never finds it dead. It is for a lab whose hosts are
this machine, so a local host's address must be a loopback address."""
OOBM_DRIVERS: Final = ("ipmitool", "ipmi", "redfish")
"""The built-in power drivers (:func:`cloudha.oobm.drivers.default_power_drivers`)."""
URI_FIELDS: Final = ("address", "id", "name")
"""The fields of a ``libvirt_uri`` template."""
DEFAULT_DB_FILE: Final = "cloudha.db"
"""The SQLite file beside the inventory used when ``[server] db`` is not given."""
MAX_INVENTORY_BYTES: Final = 4 * 1024 * 1024

_TOP: Final = ("server", "settings", "defaults", "pools", "hosts", "vms")
_SERVER: Final = ("id", "db")
_SSH: Final = ("user", "port", "key", "known_hosts")
_OOBM: Final = ("driver", "address", "port", "username", "password_env", "password_file")
_PASSWORDS: Final = frozenset({"password_env", "password_file", "password"})
_HOST_ONLY: Final = ("id", "address", "name")
_SHARED: Final = (
    "cluster",
    "pod",
    "zone",
    "rack",
    "pools",
    "ssh",
    "libvirt_uri",
    "agent",
    "watchdog",
    "hypervisor",
    "capacity",
    "oobm",
)
_POOL: Final = ("id", "mount", "cluster", "zone", "type", "supports_ha", "allow_unmounted")
_VMS: Final = ("ha",)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- the model ------------------------------------------------------------------------


@attrs.frozen
class Problem:
    """One mistake in an inventory: ``FILE:LINE: KEY: message`` (line None when unknown)."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class InventoryError(ConfigurationError):
    """An inventory with problems; ``str()`` is one line per problem, in file order."""

    def __init__(self, problems: Sequence[Problem], *, source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        first = self.problems[0] if self.problems else None
        super().__init__(
            "\n".join(str(p) for p in self.problems) or "inventory has problems",
            key=first.key if first is not None else None,
            source=source,
        )


@attrs.frozen(repr=False)
class Secret:
    """A secret read at load; ``repr()``/``str()`` show where it came from, never its value.

    Attributes:
        origin: ``env NAME`` or ``file PATH``.
    """

    origin: str
    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        """The secret itself: give it to the driver, never to a log, an error or output."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.origin!r})"

    __str__ = __repr__


@attrs.frozen
class SshEntry:
    """How cloudha reaches a host over SSH (``agent = "ssh"``); host keys always verified.

    ``key`` None: paramiko's defaults (an SSH agent, ``~/.ssh/id_*``);
    ``known_hosts`` None: ``~/.ssh/known_hosts``.
    """

    user: str = "root"
    port: int = 22
    key: str | None = None
    known_hosts: str | None = None


@attrs.frozen
class OobmEntry:
    """A host's BMC: driver (``ipmitool``, ``ipmi``, ``redfish``), address, user, password."""

    driver: str
    address: str
    username: str
    password: Secret
    port: int | None = None


@attrs.frozen
class HostEntry:
    """One ``[[hosts]]`` entry with the ``[defaults]`` applied.

    ``libvirt_uri`` is the host's URI with the template filled in.
    ``capacity`` is how many VMs it may run (None: the daemon's default).
    ``allow_unmounted``: its HA pools are plain directories (each ``[[pools]]``
    entry says ``allow_unmounted = true``): its heartbeat checkers are given
    ``--allow-unmounted``. A host's HA pools are all such, or none.
    """

    id: str
    address: str
    cluster: str
    pod: str
    zone: str
    libvirt_uri: str
    agent: str
    ssh: SshEntry
    name: str = ""
    pools: tuple[str, ...] = ()
    rack: str | None = None
    watchdog: bool = False
    hypervisor: HypervisorType = HypervisorType.KVM
    capacity: int | None = None
    oobm: OobmEntry | None = None
    allow_unmounted: bool = False
    line: int | None = attrs.field(default=None, eq=False)
    """The line of its ``[[hosts]]`` header (for messages)."""

    def to_host(self) -> Host:
        """The host as the ports see it (:class:`~cloudha.model.Host`, no dynamic state)."""
        return Host(
            self.id,
            name=self.name or self.id,
            hypervisor=self.hypervisor,
            cluster=self.cluster,
            pod=self.pod,
            zone=self.zone,
            private_ip=self.address,
            watchdog=self.watchdog,
            rack=self.rack,
        )


@attrs.frozen
class Inventory:
    """A validated inventory (:func:`load_inventory`).

    Attributes:
        path: the file it was read from.
        server_id: ``[server] id``: the management server's id.
        db_url: ``[server] db``, relative SQLite paths made absolute from the
            inventory's directory (default: ``cloudha.db`` beside it).
        settings: ``[settings]`` over the catalogue's defaults.
        pools: ``[[pools]]``.
        hosts: ``[[hosts]]``, in file order.
        vm_ha: ``[vms] ha``: fnmatch patterns of the HA-enabled domain names.
        unmounted_pools: the ids of the pools that are plain directories
            (``allow_unmounted = true``).
    """

    path: Path
    server_id: str
    db_url: str
    settings: Settings
    pools: tuple[Pool, ...] = ()
    hosts: tuple[HostEntry, ...] = ()
    vm_ha: tuple[str, ...] = ()
    unmounted_pools: frozenset[str] = frozenset()

    def hosts_as_model(self) -> list[Host]:
        """Every host as a :class:`~cloudha.model.Host`."""
        return [h.to_host() for h in self.hosts]

    def host(self, host_id: str) -> HostEntry | None:
        """The entry of ``host_id``, if any."""
        return next((h for h in self.hosts if h.id == host_id), None)

    def is_ha(self, domain: str) -> bool:
        """True if the domain name matches one of the ``[vms] ha`` patterns."""
        return any(fnmatch.fnmatchcase(domain, p) for p in self.vm_ha)

    def summary(self) -> str:
        """``12 hosts in 2 clusters, 1 pool, 3 BMCs``."""
        clusters = len({h.cluster for h in self.hosts})
        bmcs = sum(1 for h in self.hosts if h.oobm is not None)
        return (
            f"{_plural(len(self.hosts), 'host')} in {_plural(clusters, 'cluster')},"
            f" {_plural(len(self.pools), 'pool')}, {_plural(bmcs, 'BMC')}"
        )


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- the loader -----------------------------------------------------------------------


_Where = Callable[[str], tuple[tuple[PathPart, ...], str]]
"""A key's path and shown name, by key."""


class _Missing:
    pass


_MISSING: Final = _Missing()


class _Loader:
    def __init__(self, path: Path, text: str | None, environ: Mapping[str, str]) -> None:
        self.path = path
        self.file = str(path)
        self.base = path.parent.resolve()
        self.lines = TomlLines(text)
        self.environ = environ
        self.problems: list[Problem] = []
        self.unmounted: set[str] = set()
        """The ids of the pools with ``allow_unmounted = true``."""

    # -- reporting

    def problem(self, where: Sequence[PathPart], shown: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.lines.find_path(where), shown, message))

    def unknown_keys(
        self,
        table: Mapping[str, Any],
        allowed: Iterable[str],
        where: Sequence[PathPart],
        shown: str,
    ) -> None:
        known = list(allowed)
        for key in table:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
            self.problem((*where, key), _join(shown, key), f"unknown key ({hint})")

    def table(
        self, parent: Mapping[str, Any], key: str, where: Sequence[PathPart], shown: str
    ) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.problem((*where, key), _join(shown, key), f"must be a table, got {_kind(value)}")
            return {}
        return value

    # -- typed values (each returns _MISSING after reporting a problem)

    def string(
        self, value: Any, where: Sequence[PathPart], shown: str, *, required: bool = True
    ) -> Any:
        if value is _MISSING:
            if required:
                self.problem(where, shown, "is required")
            return _MISSING
        if not isinstance(value, str) or not value.strip():
            self.problem(where, shown, f"must be a non-empty string, got {_kind(value)}")
            return _MISSING
        return value

    def integer(
        self, value: Any, where: Sequence[PathPart], shown: str, low: int, high: int
    ) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(where, shown, f"must be an integer in {low}..{high}, got {_kind(value)}")
            return _MISSING
        return value

    def boolean(self, value: Any, where: Sequence[PathPart], shown: str) -> Any:
        if not isinstance(value, bool):
            self.problem(where, shown, f"must be true or false, got {_kind(value)}")
            return _MISSING
        return value

    def strings(self, value: Any, where: Sequence[PathPart], shown: str) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(where, shown, f"must be a list of non-empty strings, got {_kind(value)}")
            return _MISSING
        return tuple(value)

    def readable(self, value: Any, where: Sequence[PathPart], shown: str, what: str) -> Any:
        name = self.string(value, where, shown, required=False)
        if name is _MISSING:
            return _MISSING
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = self.base / path
        if not path.is_file():
            self.problem(where, shown, f"{what} {str(path)!r} does not exist")
            return _MISSING
        if not os.access(path, os.R_OK):
            self.problem(where, shown, f"{what} {str(path)!r} is not readable")
            return _MISSING
        return str(path)

    # -- sections

    def load(self, doc: Mapping[str, Any]) -> Inventory | None:
        self.unknown_keys(doc, _TOP, (), "")
        server_id, db_url = self.server(self.table(doc, "server", (), ""))
        settings = self.settings(self.table(doc, "settings", (), ""))
        defaults = self.table(doc, "defaults", (), "")
        self.unknown_keys(defaults, _SHARED, ("defaults",), "defaults")
        pools = self.pools(doc.get("pools", []), defaults)
        hosts = self.hosts(doc.get("hosts", []), defaults, {p.id: p for p in pools})
        unmounted = frozenset(self.unmounted)
        vm_ha = self.vms(self.table(doc, "vms", (), ""))
        if self.problems:
            return None
        assert isinstance(server_id, str)
        assert isinstance(db_url, str)
        assert settings is not None
        return Inventory(
            path=self.path,
            server_id=server_id,
            db_url=db_url,
            settings=settings,
            pools=tuple(pools),
            hosts=tuple(hosts),
            vm_ha=vm_ha,
            unmounted_pools=unmounted,
        )

    def server(self, table: Mapping[str, Any]) -> tuple[Any, Any]:
        self.unknown_keys(table, _SERVER, ("server",), "server")
        server_id = self.string(table.get("id", _MISSING), ("server", "id"), "server.id")
        raw_db = table.get("db", _MISSING)
        if raw_db is _MISSING:
            return server_id, f"sqlite:///{(self.base / DEFAULT_DB_FILE).resolve()}"
        db = self.string(raw_db, ("server", "db"), "server.db")
        if db is _MISSING:
            return server_id, _MISSING
        import sqlalchemy as sa
        import sqlalchemy.exc

        try:
            url = sa.engine.make_url(db)
        except sqlalchemy.exc.ArgumentError:
            self.problem(("server", "db"), "server.db", "is not a database URL")
            return server_id, _MISSING
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            self.problem(
                ("server", "db"),
                "server.db",
                f"database {url.get_backend_name()!r} is not supported (sqlite or postgresql)",
            )
            return server_id, _MISSING
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            file = Path(url.database).expanduser()
            if not file.is_absolute():
                file = (self.base / file).resolve()
            db = url.set(database=str(file)).render_as_string(hide_password=False)
        return server_id, db

    def settings(self, table: Mapping[str, Any]) -> Settings | None:
        flat: dict[str, object] = {}
        _flatten(table, "", flat)
        # Settings reports one mistake at a time: drop each bad key and try again.
        for _ in range(len(flat) + 1):
            try:
                return Settings.from_mapping(flat, source=self.file)
            except ConfigurationError as exc:
                key = exc.key if isinstance(exc.key, str) and exc.key in flat else None
                message = _unsourced(str(exc), self.file)
                where: tuple[PathPart, ...] = ("settings", key) if key else ("settings",)
                shown = f"settings.{key}" if key else "settings"
                line = self.lines.find_path(where)
                if key and line == self.lines.find_path(("settings",)):
                    line = self.lines.find_path(("settings", *key.split(".")))
                self.problems.append(Problem(self.file, line, shown, message))
                if key is None:
                    return None
                del flat[key]
        return None

    def pools(self, raw: Any, defaults: Mapping[str, Any]) -> list[Pool]:
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.problem(("pools",), "pools", "must be an array of tables ([[pools]])")
            return []
        pools: list[Pool] = []
        seen: set[str] = set()
        for i, entry in enumerate(raw):
            where: tuple[PathPart, ...] = ("pools", i)
            shown = _item("pools", entry, i)
            self.unknown_keys(entry, _POOL, where, shown)
            pool_id = self.string(entry.get("id", _MISSING), (*where, "id"), f"{shown}.id")
            mount = self.string(entry.get("mount", _MISSING), (*where, "mount"), f"{shown}.mount")
            if mount is not _MISSING and not os.path.isabs(mount):
                self.problem((*where, "mount"), f"{shown}.mount", "must be an absolute path")
                mount = _MISSING
            cluster = self.string(
                entry.get("cluster", _MISSING),
                (*where, "cluster"),
                f"{shown}.cluster",
                required=False,
            )
            zone = self.string(
                entry.get("zone", defaults.get("zone", "z1")),
                (*where, "zone"),
                f"{shown}.zone",
            )
            kind = self.string(
                entry.get("type", "NetworkFilesystem"), (*where, "type"), f"{shown}.type"
            )
            supports_ha = self.boolean(
                entry.get("supports_ha", True), (*where, "supports_ha"), f"{shown}.supports_ha"
            )
            unmounted = self.boolean(
                entry.get("allow_unmounted", False),
                (*where, "allow_unmounted"),
                f"{shown}.allow_unmounted",
            )
            if isinstance(pool_id, str):
                if pool_id in seen:
                    self.problem((*where, "id"), f"{shown}.id", f"duplicate pool id {pool_id!r}")
                seen.add(pool_id)
            values = (pool_id, mount, zone, kind, supports_ha, unmounted)
            if _MISSING in values or (cluster is _MISSING and "cluster" in entry):
                continue
            if unmounted:
                self.unmounted.add(pool_id)
            pools.append(
                Pool(
                    pool_id,
                    mount,
                    type=kind,
                    supports_ha=supports_ha,
                    cluster=None if cluster is _MISSING else cluster,
                    zone=zone,
                )
            )
        return pools

    def hosts(
        self, raw: Any, defaults: Mapping[str, Any], pools: Mapping[str, Pool]
    ) -> list[HostEntry]:
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.problem(("hosts",), "hosts", "must be an array of tables ([[hosts]])")
            return []
        hosts: list[HostEntry] = []
        ids: dict[str, str] = {}
        addresses: dict[str, str] = {}
        bmcs: dict[tuple[str, int | None], str] = {}
        for i, entry in enumerate(raw):
            shown = _item("hosts", entry, i)
            host = self.host(entry, i, shown, defaults, pools)
            raw_id = entry.get("id")
            if isinstance(raw_id, str) and raw_id:
                if raw_id in ids:
                    self.problem(
                        ("hosts", i, "id"), f"{shown}.id", f"duplicate host id (also {ids[raw_id]})"
                    )
                ids.setdefault(raw_id, f"hosts[{i}]")
            if host is None:
                continue
            other = addresses.setdefault(host.address, host.id)
            if other != host.id:
                self.problem(
                    ("hosts", i, "address"),
                    f"{shown}.address",
                    f"address {host.address} is also host {other!r}'s",
                )
            if host.oobm is not None:
                bmc = (host.oobm.address, host.oobm.port)
                other = bmcs.setdefault(bmc, host.id)
                if other != host.id:
                    self.problem(
                        ("hosts", i, "oobm", "address"),
                        f"{shown}.oobm.address",
                        f"BMC {host.oobm.address} is also host {other!r}'s: fencing one would"
                        " power off the other",
                    )
            hosts.append(host)
        return hosts

    def host(
        self,
        entry: Mapping[str, Any],
        i: int,
        shown: str,
        defaults: Mapping[str, Any],
        pools: Mapping[str, Pool],
    ) -> HostEntry | None:
        here: tuple[PathPart, ...] = ("hosts", i)
        before = len(self.problems)
        self.unknown_keys(entry, (*_HOST_ONLY, *_SHARED), here, shown)

        def at(key: str) -> tuple[tuple[PathPart, ...], str]:
            if key in entry:
                return (*here, key), f"{shown}.{key}"
            if key in defaults:
                return ("defaults", key), f"defaults.{key}"
            return (*here, key), f"{shown}.{key}"

        def get(key: str, default: Any = _MISSING) -> Any:
            return entry.get(key, defaults.get(key, default))

        host_id = self.string(entry.get("id", _MISSING), (*here, "id"), f"{shown}.id")
        address = self.string(
            entry.get("address", _MISSING), (*here, "address"), f"{shown}.address"
        )
        if address is not _MISSING:
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                self.problem(
                    (*here, "address"), f"{shown}.address", f"{address!r} is not an IP address"
                )
                address = _MISSING
        name = self.string(entry.get("name", _MISSING), *at("name"), required=False)
        cluster = self.string(get("cluster"), *at("cluster"))
        pod = self.string(get("pod", "p1"), *at("pod"))
        zone = self.string(get("zone", "z1"), *at("zone"))
        rack = self.string(get("rack"), *at("rack"), required=False)
        watchdog = self.boolean(get("watchdog", False), *at("watchdog"))
        hypervisor = self.hypervisor(get("hypervisor", "KVM"), *at("hypervisor"))
        capacity = get("capacity")
        if capacity is not _MISSING:
            capacity = self.integer(capacity, *at("capacity"), 1, 1_000_000)
        agent = self.string(get("agent", "ssh"), *at("agent"))
        if agent is not _MISSING and agent not in AGENT_KINDS:
            self.problem(*at("agent"), f"must be one of {', '.join(AGENT_KINDS)}, got {agent!r}")
            agent = _MISSING
        if agent == "local" and isinstance(address, str) and not _loopback(address):
            self.problem(
                (*here, "address"),
                f"{shown}.address",
                f'agent = "local" runs the host\'s agent-side commands on this machine, which'
                " answers whatever became of the host (it never looks dead): it is for a lab"
                f" whose hosts are this machine, on loopback addresses, not {address}"
                ' (use agent = "ssh")',
            )
        host_pools = self.strings(get("pools", []), *at("pools"))
        if host_pools is not _MISSING:
            for pool_id in host_pools:
                pool = pools.get(pool_id)
                if pool is None:
                    self.problem(*at("pools"), f"unknown pool {pool_id!r}{_hint(pool_id, pools)}")
                elif (
                    pool.cluster is not None
                    and isinstance(cluster, str)
                    and pool.cluster != cluster
                ):
                    self.problem(
                        *at("pools"),
                        f"pool {pool_id!r} belongs to cluster {pool.cluster!r}, not {cluster!r}",
                    )
                elif isinstance(zone, str) and pool.zone != zone:
                    self.problem(
                        *at("pools"), f"pool {pool_id!r} is in zone {pool.zone!r}, not {zone!r}"
                    )
        allow_unmounted = False
        if host_pools is not _MISSING:
            ha_pools = [p for p in host_pools if p in pools and pools[p].supports_ha]
            plain = [p for p in ha_pools if p in self.unmounted]
            if plain and len(plain) < len(ha_pools):
                mounted = [p for p in ha_pools if p not in self.unmounted]
                self.problem(
                    *at("pools"),
                    f"mixes plain-directory pools (allow_unmounted: {', '.join(plain)}) with"
                    f" mounted ones ({', '.join(mounted)}): one heartbeat check reads them all,"
                    " so a host's HA pools are all plain directories or none",
                )
            allow_unmounted = bool(plain)
        ssh = self.ssh(entry, defaults, here, shown, check=agent == "ssh")
        uri = self.uri(get("libvirt_uri"), *at("libvirt_uri"), host_id, address, name)
        oobm = self.oobm(entry, defaults, here, shown)
        if len(self.problems) > before:
            return None
        return HostEntry(
            id=host_id,
            address=address,
            name="" if name is _MISSING else name,
            cluster=cluster,
            pod=pod,
            zone=zone,
            rack=None if rack is _MISSING else rack,
            pools=host_pools,
            libvirt_uri=uri,
            agent=agent,
            ssh=ssh,
            watchdog=watchdog,
            hypervisor=hypervisor,
            capacity=None if capacity is _MISSING else capacity,
            oobm=None if oobm is _MISSING else oobm,
            allow_unmounted=allow_unmounted,
            line=self.lines.find_path(here),
        )

    def hypervisor(self, value: Any, where: Sequence[PathPart], shown: str) -> Any:
        try:
            return HypervisorType(value)
        except ValueError:
            choices = ", ".join(h.value for h in HypervisorType)
            self.problem(where, shown, f"must be one of {choices}, got {_kind(value)}")
            return _MISSING

    def merged(
        self,
        key: str,
        entry: Mapping[str, Any],
        defaults: Mapping[str, Any],
        here: Sequence[PathPart],
        shown: str,
        allowed: Sequence[str],
    ) -> tuple[dict[str, Any], dict[str, tuple[tuple[PathPart, ...], str]]] | None:
        """The table ``key`` of the host over that of [defaults], and where each key came from."""
        out: dict[str, Any] = {}
        origin: dict[str, tuple[tuple[PathPart, ...], str]] = {}
        present = False
        for where, name, table in (
            (("defaults",), "defaults", defaults),
            ((*here,), shown, entry),
        ):
            if key not in table:
                continue
            value = table[key]
            if not isinstance(value, dict):
                self.problem((*where, key), f"{name}.{key}", f"must be a table, got {_kind(value)}")
                continue
            if where == ("defaults",) and key == "oobm" and key not in entry:
                continue  # [defaults] oobm only fills in the hosts that have a BMC
            present = True
            self.unknown_keys(value, allowed, (*where, key), f"{name}.{key}")
            if where != ("defaults",) and _PASSWORDS & value.keys():
                for k in _PASSWORDS:  # the host's own password replaces the default one
                    out.pop(k, None)
                    origin.pop(k, None)
            for k, v in value.items():
                out[k] = v
                origin[k] = ((*where, key, k), f"{name}.{key}.{k}")
        return (out, origin) if present else None

    def ssh(
        self,
        entry: Mapping[str, Any],
        defaults: Mapping[str, Any],
        here: Sequence[PathPart],
        shown: str,
        *,
        check: bool,
    ) -> SshEntry:
        found = self.merged("ssh", entry, defaults, here, shown, _SSH)
        table, origin = found if found is not None else ({}, {})

        def at(k: str) -> tuple[tuple[PathPart, ...], str]:
            return origin.get(k, ((*here, "ssh", k), f"{shown}.ssh.{k}"))

        user = self.string(table.get("user", "root"), *at("user"))
        port = self.integer(table.get("port", 22), *at("port"), 1, 65535)
        key = known_hosts = None
        if check:
            key = self.readable(table.get("key", _MISSING), *at("key"), "SSH key")
            known_hosts = self.readable(
                table.get("known_hosts", _MISSING), *at("known_hosts"), "known_hosts file"
            )
            if "known_hosts" not in table and not Path("~/.ssh/known_hosts").expanduser().is_file():
                self.problem(
                    *at("known_hosts"),
                    "not set, and ~/.ssh/known_hosts does not exist: host keys cannot be verified",
                )
        return SshEntry(
            user=user if isinstance(user, str) else "root",
            port=port if isinstance(port, int) else 22,
            key=key if isinstance(key, str) else None,
            known_hosts=known_hosts if isinstance(known_hosts, str) else None,
        )

    def uri(
        self,
        value: Any,
        where: Sequence[PathPart],
        shown: str,
        host_id: Any,
        address: Any,
        name: Any,
    ) -> Any:
        template = self.string(value, where, shown)
        if template is _MISSING:
            return _MISSING
        allowed = ", ".join(f"{{{f}}}" for f in URI_FIELDS)
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            self.problem(where, shown, f"malformed template ({exc}; write a brace as {{{{ }}}})")
            return _MISSING
        for _literal, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in URI_FIELDS:
                self.problem(where, shown, f"unknown field {{{field}}} (fields: {allowed})")
                return _MISSING
            if spec or conversion:
                self.problem(where, shown, f"field {{{field}}} takes no conversion or format spec")
                return _MISSING
        if not isinstance(host_id, str) or not isinstance(address, str):
            return _MISSING
        shown_address = f"[{address}]" if ":" in address else address
        return template.format(
            address=shown_address, id=host_id, name=name if isinstance(name, str) else host_id
        )

    def oobm(
        self,
        entry: Mapping[str, Any],
        defaults: Mapping[str, Any],
        here: Sequence[PathPart],
        shown: str,
    ) -> Any:
        found = self.merged("oobm", entry, defaults, here, shown, (*_OOBM, "password"))
        if found is None:
            return _MISSING
        table, origin = found

        def at(k: str) -> tuple[tuple[PathPart, ...], str]:
            return origin.get(k, ((*here, "oobm"), f"{shown}.oobm.{k}"))

        driver = self.string(table.get("driver", _MISSING), *at("driver"))
        if isinstance(driver, str) and driver not in OOBM_DRIVERS:
            self.problem(
                *at("driver"),
                f"unknown driver {driver!r}{_hint(driver, OOBM_DRIVERS)}"
                f" (drivers: {', '.join(OOBM_DRIVERS)})",
            )
            driver = _MISSING
        address = self.string(table.get("address", _MISSING), *at("address"))
        username = self.string(table.get("username", _MISSING), *at("username"))
        port = table.get("port", _MISSING)
        if port is not _MISSING:
            port = self.integer(port, *at("port"), 1, 65535)
        if "password" in table:
            self.problem(
                *at("password"),
                "a password is never written in the inventory: use password_env or password_file",
            )
            return _MISSING
        password = self.password(table, at)
        values = (driver, address, username, port, password)
        if any(v is _MISSING for v in values[:3]) or password is _MISSING:
            return _MISSING
        if port is _MISSING and "port" in table:
            return _MISSING
        return OobmEntry(
            driver=driver,
            address=address,
            username=username,
            password=password,
            port=None if port is _MISSING else port,
        )

    def password(self, table: Mapping[str, Any], at: _Where) -> Any:
        given = [k for k in ("password_env", "password_file") if k in table]
        if len(given) != 1:
            message = "set one of password_env, password_file" if not given else "set only one"
            self.problem(*at(given[-1] if given else "password_env"), message)
            return _MISSING
        if given[0] == "password_env":
            name = self.string(table["password_env"], *at("password_env"))
            if name is _MISSING:
                return _MISSING
            if not _ENV_NAME.match(name):
                self.problem(*at("password_env"), f"{name!r} is not an environment variable name")
                return _MISSING
            value = self.environ.get(name)
            if not value:
                self.problem(*at("password_env"), f"environment variable {name} is not set")
                return _MISSING
            return Secret(f"env {name}", value)
        path = self.readable(table["password_file"], *at("password_file"), "password file")
        if path is _MISSING:
            return _MISSING
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(
                *at("password_file"), f"cannot read password file {path!r} ({type(exc).__name__})"
            )
            return _MISSING
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            self.problem(*at("password_file"), f"password file {path!r} is empty")
            return _MISSING
        return Secret(f"file {path}", value)

    def vms(self, table: Mapping[str, Any]) -> tuple[str, ...]:
        self.unknown_keys(table, _VMS, ("vms",), "vms")
        patterns = self.strings(table.get("ha", []), ("vms", "ha"), "vms.ha")
        return () if patterns is _MISSING else patterns


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _item(table: str, entry: Mapping[str, Any], index: int) -> str:
    raw = entry.get("id")
    return f"{table}[{raw}]" if isinstance(raw, str) and raw else f"{table}[{index}]"


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hint(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: Mapping[str, Any], prefix: str, out: dict[str, object]) -> None:
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out)
        else:
            out[name] = value


def _unsourced(text: str, source: str) -> str:
    prefix = f"{source}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def load_inventory(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Inventory:
    """Read and validate the inventory at ``path`` (docs/inventory.md).

    Relative paths in it (key, known_hosts, password file, a SQLite
    database) are relative to the inventory's directory. BMC passwords are
    read now, from ``environ`` (default: ``os.environ``) or their files.

    Raises:
        InventoryError: every problem found, each with file, line and key.
    """
    file = Path(path)
    environ = os.environ if environ is None else environ
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_INVENTORY_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InventoryError([Problem(str(file), None, "", f"cannot read: {reason}")]) from None
    if len(data) > MAX_INVENTORY_BYTES:
        problem = Problem(str(file), None, "", f"larger than {MAX_INVENTORY_BYTES} bytes")
        raise InventoryError([problem])
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise InventoryError([Problem(str(file), None, "", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _AT_LINE.search(message)
        line = int(found.group(1)) if found else None
        message = _AT_LINE.sub("", message).strip()
        raise InventoryError([Problem(str(file), line, "", f"not valid TOML: {message}")]) from None
    except RecursionError:
        raise InventoryError([Problem(str(file), None, "", "nested too deeply")]) from None
    loader = _Loader(file, text, environ)
    inventory = loader.load(doc)
    if inventory is None:
        unique = list(dict.fromkeys(loader.problems))  # a [defaults] mistake, once
        problems = sorted(unique, key=lambda p: (p.line is None, p.line or 0))
        raise InventoryError(problems, source=str(file))
    return inventory
