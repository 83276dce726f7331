"""A reference :class:`~cloudha.ha.orchestrator.VmOrchestrator` over libvirt, for demos,
tests and ``cloudha run``.

:class:`LibvirtOrchestrator` keeps a VM registry (VM id → domain XML, state,
current host, highest generation, HA flag) and drives one libvirtd per host
id. The registry lives in memory, or, given a
:class:`~cloudha.ha.vm_registry.VmRegistry` (:class:`~cloudha.ha.vm_registry.SqlVmRegistry`),
is written through to SQL on every change and read back at start, so a
daemon restart loses no VM. :meth:`LibvirtOrchestrator.discover` adds the
domains found on the hosts' libvirtds. It is not a cloud's VM manager: there
is no planner beyond first-fit over sorted host ids, and no storage handling.

Like :mod:`cloudha.transport.libvirt`, every libvirt call runs in its own
daemon worker thread with its own connection, and the caller waits at most
the configured timeout; a worker that misses its deadline is abandoned and
closes its connection when libvirt returns. Registry changes happen under a
lock; libvirt calls happen outside it, with the VM marked Starting,
Stopping, Migrating or Expunging meanwhile so that a concurrent operation on
the same VM is refused
(:class:`~cloudha.ha.orchestrator.ConcurrentOperationError`).

It needs the ``libvirt`` extra (libvirt-python); the module imports without it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from cloudha._extras import lazy_module, require
from cloudha.deadline import DeadlineExceeded, DeadlineRunner
from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
    StoreError,
)
from cloudha.ha.orchestrator import (
    ConcurrentOperationError,
    InsufficientCapacityError,
    Planner,
    StaleGenerationError,
    StartParams,
    UnknownVmError,
)
from cloudha.ha.vm_registry import VmRecord, VmRegistry
from cloudha.model import HypervisorType, Vm, VmState, VmType
from cloudha.redact import redact
from cloudha.transport.libvirt import redact_uri

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy_module("libvirt", "libvirt", "the libvirt orchestrator")

__all__ = ["Discovery", "DomainSeen", "LibvirtOrchestrator"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_COUNTED: Final = frozenset(
    {VmState.RUNNING, VmState.STARTING, VmState.STOPPING, VmState.MIGRATING, VmState.UNKNOWN}
)
"""States in which a VM takes room on its host."""
_BUSY: Final = frozenset({VmState.STARTING, VmState.STOPPING, VmState.MIGRATING, VmState.EXPUNGING})
"""States in which an operation of this adapter is under way on the VM."""


@attrs.define
class _Entry:
    """A VM of the registry (mutable; guarded by the orchestrator's lock).

    ``defined_on``: hosts where this adapter may have defined the domain
    (the registration host, and every host a start was attempted on).
    ``migrating_to``: the target of a migration under way; the VM takes
    room there as well as on its source meanwhile.
    """

    vm: Vm
    xml: str
    domain: str
    uuid: str
    local_storage: bool
    generation: int = 0
    defined_on: set[str] = attrs.field(factory=set)
    migrating_to: str | None = None


_AFTER_CRASH: Final = {
    VmState.STARTING: VmState.UNKNOWN,
    VmState.STOPPING: VmState.UNKNOWN,
    VmState.MIGRATING: VmState.UNKNOWN,
    VmState.EXPUNGING: VmState.DESTROYED,
}
"""A stored VM caught in an operation by a restart: what it is taken to be at load."""


@attrs.frozen
class DomainSeen:
    """One domain as a host's libvirtd listed it (:meth:`LibvirtOrchestrator.discover`)."""

    name: str
    uuid: str
    active: bool
    xml: str


@attrs.frozen
class Discovery:
    """What one :meth:`LibvirtOrchestrator.discover` found and did.

    Attributes:
        added: VM ids registered from domains not in the registry.
        moved: VM ids whose recorded state or host was corrected from what
            the hosts run (``vm -> "Running on h2"``).
        conflicts: one sentence per domain left alone (another UUID under a
            known name, a VM running on several hosts).
        unreachable: host id → why it could not be listed.
        ha_changed: VM ids whose HA flag changed.
    """

    added: tuple[str, ...] = ()
    moved: Mapping[str, str] = attrs.field(factory=dict)
    conflicts: tuple[str, ...] = ()
    unreachable: Mapping[str, str] = attrs.field(factory=dict)
    ha_changed: tuple[str, ...] = ()


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, got {value!r}", key=name, value=value
        )
    return float(value)


def _parse_domain(xml: str) -> tuple[str, str, str]:
    """The domain's name, its UUID and its XML with a ``<uuid>`` (one is added when missing).

    A fixed UUID makes redefining the domain on a host idempotent; libvirt
    refuses a second definition of a name under another UUID.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigurationError(f"domain XML is malformed: {exc}", key="xml") from None
    name = root.findtext("name")
    if root.tag != "domain" or not name or not name.strip():
        raise ConfigurationError("domain XML needs a <domain> root with a <name>", key="xml")
    domain_uuid = (root.findtext("uuid") or "").strip()
    if not domain_uuid:
        for old in root.findall("uuid"):
            root.remove(old)
        domain_uuid = str(uuid.uuid4())
        uuid_element = ET.Element("uuid")
        uuid_element.text = domain_uuid
        root.insert(1, uuid_element)
        xml = ET.tostring(root, encoding="unicode")
    return name.strip(), domain_uuid, xml


class LibvirtOrchestrator:
    """The VM orchestrator port over libvirt daemons, one per host id.

    Args:
        hosts: host id → libvirt URI. Several host ids may share a URI (one
            daemon playing several hosts in a demo).
        capacity: how many VMs each host may run (Running, Starting,
            Stopping or Unknown VMs of the registry count); an int for every
            host or a mapping host id → count (missing hosts: 1).
        host_tags: host id → tags, for ``StartParams.ha_tag``.
        timeout: seconds a caller waits for one libvirt call (connect
            included).
        shutdown_timeout: seconds a graceful stop (``force=False``) waits for
            the guest to power off, on top of ``timeout``.
        registry: where the VM registry is kept durably
            (:class:`~cloudha.ha.vm_registry.SqlVmRegistry`); None: in memory
            only. Its records are loaded here; a VM stored in the middle of
            an operation (the process stopped during a start, stop or
            migration) is loaded ``Unknown`` on its host (it may run: a
            forced stop comes before any restart), one being expunged as
            ``Destroyed`` (expunge it again). Every change is written
            through; a failed write is logged and retried with the next one,
            except the start of a VM, which is refused
            (:class:`~cloudha.errors.StoreError`) unless its generation is
            stored first: a fencing token is never used twice, even across
            a restart.
        powered_off: asks a host's BMC, now, whether its power is off (True
            only on a definite Off). A forced stop on a host whose libvirtd
            refuses the connection then counts as done when it says so: a
            host without power runs no domain (CloudStack's stop that
            "cleans up even if unable to stop", after a power fence). None:
            such a stop raises, as any connection error.

    Raises:
        MissingExtraError: libvirt-python is not installed (``pip install 'cloudha[libvirt]'``).
        ConfigurationError: no hosts, an empty URI, a negative capacity or a
            bad timeout.
        StoreError: the registry cannot be read.

    Semantics beyond the port (see :class:`~cloudha.ha.orchestrator.VmOrchestrator`):

    * ``advance_stop``: ``force=True`` calls ``destroy()``, ``force=False``
      ``shutdown()`` and waits up to ``shutdown_timeout`` for the domain to be
      inactive (else :class:`~cloudha.errors.ProbeTimeout`, VM ``Unknown``).
      A domain that is already inactive or missing on the host counts as
      stopped; with ``powered_off``, so does a forced stop on a host whose
      libvirtd cannot be reached and whose BMC reads its power Off.
    * ``advance_start``: picks the first host in sorted id order that is not
      avoided, carries ``ha_tag`` when set and has room; ``defineXML`` then
      ``create()`` there. A libvirt error before ``create()`` was sent (cannot
      connect, define refused) leaves the VM Stopped and the generation
      unused; a failure of ``create()`` itself, or a timeout, leaves it
      ``Unknown`` on that host with the generation used (it may be running):
      stop it with ``force=True`` before the next start. Before starting,
      every other host the domain was ever defined on (except
      ``avoid_hosts``: the caller has proved those dead) is asked whether
      the domain is active there; a domain found active there or on the
      chosen host is not started again: the VM is recorded Running on that
      host with the generation used, and
      :class:`~cloudha.ha.orchestrator.ConcurrentOperationError` is raised.
      A host that cannot be asked leaves the VM Stopped and its error is
      raised: it might run the guest. No other host is tried after a
      libvirt failure; the caller retries with ``avoid_hosts``.
    * ``migrate_away`` is a **cold migration**: this reference adapter has no
      shared storage, so the domain is shut down gracefully on the source
      (as ``advance_stop(force=False)``) and defined and started on the
      target, i.e. the guest restarts. A real adapter would live-migrate with
      ``virDomainMigrateToURI3``. The target is the first host in sorted id
      order other than the source with room (every configured host counts as
      Up; host tags play no part). The VM is Migrating meanwhile (it takes
      room on both hosts, and concurrent operations on it are refused). The
      generation is unchanged: a migration is not an HA restart. Outcomes:
      the source does not stop (a definite libvirt error) → still Running
      there; it may not have stopped (timeout) → ``Unknown`` on the source;
      the target start fails before ``create()`` was sent (cannot connect,
      define refused) → the domain is started again on the source (Running
      there, or Stopped if that fails too) and the target's error is
      raised; the target start may have happened (``create()`` failed or
      timed out) or the domain is already active on the target → ``Unknown``
      on the target, and the source is **not** restarted, so that the guest
      never runs twice. The domain stays defined (inactive) on the source.
    * ``destroy``: stops the domain as ``advance_stop(force=True)`` if the VM
      is not Stopped or Destroyed, then marks it Destroyed (the domain stays
      defined). With ``expunge=True`` the VM is Expunging meanwhile and the
      domain is undefined on every host in which this adapter may have
      defined it (a domain already missing there is fine; one that is
      active there, or that has another UUID, is left alone: the first is
      refused with :class:`~cloudha.ha.orchestrator.ConcurrentOperationError`);
      then the VM leaves the registry. When an undefine fails the VM stays
      Destroyed and the error is raised; calling again finishes the expunge.
    * Errors: :class:`~cloudha.errors.ProbeTimeout` (no answer in time, or a
      keepalive timeout), :class:`~cloudha.errors.ProbeAuthError`
      (authentication refused), :class:`~cloudha.errors.ProbeConnectionError`
      (anything else libvirt reports); all carry ``host_id``, and messages
      never show a password from a URI.
    """

    def __init__(
        self,
        hosts: Mapping[str, str],
        *,
        capacity: int | Mapping[str, int] = 1,
        host_tags: Mapping[str, Iterable[str]] | None = None,
        timeout: float = 10.0,
        shutdown_timeout: float = 30.0,
        registry: VmRegistry | None = None,
        powered_off: Callable[[str], bool] | None = None,
    ) -> None:
        require("libvirt", "libvirt", "the libvirt orchestrator")
        self.powered_off = powered_off
        self._uris, self._capacity, self._tags = self._host_tables(hosts, capacity, host_tags)
        self.timeout = _positive("timeout", timeout)
        self.shutdown_timeout = _positive("shutdown_timeout", shutdown_timeout)
        self._lock = threading.Lock()
        self._vms: dict[str, _Entry] = {}
        self._runner = DeadlineRunner("libvirt orchestrator")
        self._registry = registry
        self._dirty: set[str] = set()  # VM ids whose last write failed (saved or deleted)
        if registry is not None:
            for record in registry.load():
                self._vms[record.vm_id] = self._loaded(record)

    @staticmethod
    def _host_tables(
        hosts: Mapping[str, str],
        capacity: int | Mapping[str, int],
        host_tags: Mapping[str, Iterable[str]] | None,
    ) -> tuple[dict[str, str], dict[str, int], dict[str, frozenset[str]]]:
        if not hosts:
            raise ConfigurationError("at least one host is needed", key="hosts")
        for host_id, uri in hosts.items():
            if not isinstance(uri, str) or not uri.strip():
                raise ConfigurationError(
                    f"host {host_id} has no libvirt URI", key="hosts", value=host_id
                )
        uris = dict(hosts)
        if isinstance(capacity, int):
            capacities = dict.fromkeys(uris, capacity)
        else:
            capacities = {h: capacity.get(h, 1) for h in uris}
        for host_id, count in capacities.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigurationError(
                    f"capacity of host {host_id} must be a whole number >= 0, got {count!r}",
                    key="capacity",
                    value=count,
                )
        tags = {h: frozenset((host_tags or {}).get(h, ())) for h in uris}
        return uris, capacities, tags

    def set_hosts(
        self,
        hosts: Mapping[str, str],
        *,
        capacity: int | Mapping[str, int] = 1,
        host_tags: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Replace the hosts (a reloaded inventory): their URIs, capacities and tags.

        VMs recorded on a host no longer listed keep their record (the HA
        path decides about them once that host is found Down); no VM is
        started on such a host.

        Raises:
            ConfigurationError: as the constructor (nothing is changed then).
        """
        uris, capacities, tags = self._host_tables(hosts, capacity, host_tags)
        with self._lock:
            self._uris, self._capacity, self._tags = uris, capacities, tags

    @property
    def host_ids(self) -> list[str]:
        """The configured hosts, sorted."""
        with self._lock:
            return sorted(self._uris)

    # -- durability ----------------------------------------------------------------

    @staticmethod
    def _loaded(record: VmRecord) -> _Entry:
        state = _AFTER_CRASH.get(record.state, record.state)
        defined = set(record.defined_on)
        if record.migrating_to is not None:
            defined.add(record.migrating_to)
        if state is not record.state:
            log.warning(
                "VM %s was %s when the registry was last written: taken as %s on host %s",
                record.vm_id,
                record.state,
                state,
                record.host_id,
            )
        host_id = None if state is VmState.DESTROYED else record.host_id
        vm = Vm(
            record.vm_id,
            name=record.domain,
            type=record.vm_type,
            state=state,
            host_id=host_id,
            last_host_id=record.last_host_id,
            ha_enabled=record.ha_enabled,
            hypervisor=HypervisorType.KVM,
            updated=record.updated + (state is not record.state),
        )
        return _Entry(
            vm,
            record.xml,
            record.domain,
            record.uuid,
            record.local_storage,
            generation=record.generation,
            defined_on=defined,
        )

    @staticmethod
    def _record(entry: _Entry) -> VmRecord:
        vm = entry.vm
        return VmRecord(
            vm_id=vm.id,
            domain=entry.domain,
            uuid=entry.uuid,
            xml=entry.xml,
            vm_type=vm.type,
            state=vm.state,
            host_id=vm.host_id,
            last_host_id=vm.last_host_id,
            ha_enabled=vm.ha_enabled,
            local_storage=entry.local_storage,
            generation=entry.generation,
            updated=vm.updated,
            defined_on=frozenset(entry.defined_on),
            migrating_to=entry.migrating_to,
        )

    def _persist(self, vm_id: str, *, durable: bool = False) -> None:
        """Under the lock: write ``vm_id``'s entry (or its removal) and any failed earlier write.

        A failure is logged and the write retried with the next one; with
        ``durable`` it is raised instead (:class:`~cloudha.errors.StoreError`).
        """
        registry = self._registry
        if registry is None:
            return
        self._dirty.add(vm_id)
        try:
            for pending in sorted(self._dirty):
                entry = self._vms.get(pending)
                if entry is None:
                    registry.delete(pending)
                else:
                    registry.save(self._record(entry))
                self._dirty.discard(pending)
        except StoreError as exc:
            if durable:
                raise
            log.warning(
                "VM registry: writing %s failed, retried with the next change: %s", vm_id, exc
            )

    def flush(self) -> bool:
        """Write every change whose write failed; True when none is left."""
        with self._lock:
            if not self._dirty:
                return True
            self._persist(min(self._dirty))
            return not self._dirty

    # -- discovery -------------------------------------------------------------------

    def discover(
        self,
        *,
        ha: Callable[[str], bool] | None = None,
        hosts: Iterable[str] | None = None,
    ) -> Discovery:
        """List the domains on each host's libvirtd and bring the registry up to date.

        * A domain not in the registry is registered, with its domain name as
          its VM id: Running on the host where it is active, else Stopped
          (defined there). Its XML is the persistent definition
          (``XMLDesc(VIR_DOMAIN_XML_INACTIVE)``; secrets such as VNC
          passwords are not carried over).
        * A registered VM found active on exactly one host, while its record
          says it is Stopped, Unknown, or Running on a host that was listed
          and does not run it, is recorded Running there (someone started or
          moved it meanwhile). A VM recorded Running on a host that was listed
          without it is left alone: the VM sync finds it missing from that
          host's reports and restarts it (``ha.vm.restart.hostup``).
        * A name already registered under another UUID, or a VM active on
          several hosts, is left alone and reported in ``conflicts``.
        * ``ha(domain name)`` (the inventory's patterns) sets every VM's HA
          flag; None leaves the flags alone (new VMs are HA-enabled).

        A host that cannot be listed (within ``timeout``) is skipped and
        named in ``unreachable``; its VMs' records stay as they are.
        ``hosts``: the hosts to list (default every configured host).
        """
        listed: dict[str, list[DomainSeen]] = {}
        unreachable: dict[str, str] = {}
        for host_id in sorted(self.host_ids if hosts is None else hosts):
            try:
                listed[host_id] = self._run(host_id, self._list_domains)
            except (ProbeError, KeyError) as exc:
                unreachable[host_id] = str(exc) if isinstance(exc, ProbeError) else "unknown host"
        added: list[str] = []
        moved: dict[str, str] = {}
        conflicts: list[str] = []
        ha_changed: list[str] = []
        with self._lock:
            active_on: dict[str, list[str]] = {}
            for host_id, domains in sorted(listed.items()):
                for seen in domains:
                    entry = self._vms.get(seen.name)
                    if entry is None:
                        entry = self._discovered(seen, host_id, ha)
                        added.append(seen.name)
                    elif entry.uuid.lower() != seen.uuid.lower():
                        conflicts.append(
                            f"domain {seen.name} on host {host_id} has UUID {seen.uuid},"
                            f" the registry's VM {seen.name} has {entry.uuid}: left alone"
                        )
                        continue
                    if host_id not in entry.defined_on:
                        entry.defined_on.add(host_id)
                        self._persist(entry.vm.id)
                    if seen.active:
                        active_on.setdefault(entry.vm.id, []).append(host_id)
            for vm_id, entry in sorted(self._vms.items()):
                running = active_on.get(vm_id, [])
                if len(running) > 1:
                    conflicts.append(f"VM {vm_id} is active on several hosts: {sorted(running)}")
                elif len(running) == 1 and vm_id not in added:
                    where = self._corrected(entry, running[0], listed)
                    if where is not None:
                        moved[vm_id] = where
                if ha is not None and entry.vm.state is not VmState.EXPUNGING:
                    wanted = bool(ha(entry.domain))
                    if wanted != entry.vm.ha_enabled:
                        self._set(entry, ha_enabled=wanted)
                        ha_changed.append(vm_id)
        for line in conflicts:
            log.warning("discovery: %s", line)
        return Discovery(
            added=tuple(added),
            moved=moved,
            conflicts=tuple(conflicts),
            unreachable=unreachable,
            ha_changed=tuple(ha_changed),
        )

    def _discovered(
        self, seen: DomainSeen, host_id: str, ha: Callable[[str], bool] | None
    ) -> _Entry:
        """Under the lock: register a domain found on ``host_id``."""
        name, domain_uuid, xml = _parse_domain(seen.xml)
        vm = Vm(
            seen.name,
            name=name,
            state=VmState.RUNNING if seen.active else VmState.STOPPED,
            host_id=host_id if seen.active else None,
            last_host_id=host_id,
            ha_enabled=True if ha is None else bool(ha(name)),
            hypervisor=HypervisorType.KVM,
        )
        entry = _Entry(vm, xml, name, domain_uuid, False, defined_on={host_id})
        self._vms[vm.id] = entry
        self._persist(vm.id)
        log.info(
            "discovery: VM %s found %s on host %s",
            vm.id,
            "running" if seen.active else "defined",
            host_id,
        )
        return entry

    def _corrected(
        self, entry: _Entry, active: str, listed: Mapping[str, Sequence[DomainSeen]]
    ) -> str | None:
        """Under the lock: record ``entry`` Running on ``active`` if its record says otherwise."""
        vm = entry.vm
        if vm.state is VmState.RUNNING and vm.host_id == active:
            return None
        if vm.state in _BUSY or vm.state is VmState.DESTROYED:
            return None
        if (
            vm.state in (VmState.RUNNING, VmState.UNKNOWN)
            and vm.host_id not in (None, active)
            and vm.host_id not in listed
        ):
            return None  # its recorded host could not be asked: it may run there
        self._set(entry, state=VmState.RUNNING, host_id=active, last_host_id=active)
        log.warning(
            "discovery: VM %s was recorded %s%s but runs on host %s: recorded Running there",
            vm.id,
            vm.state,
            f" on host {vm.host_id}" if vm.host_id else "",
            active,
        )
        return f"Running on {active}"

    @staticmethod
    def _list_domains(conn: Any) -> list[DomainSeen]:
        seen: list[DomainSeen] = []
        for dom in conn.listAllDomains(0):
            try:
                active = bool(dom.isActive())
                flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
                seen.append(
                    DomainSeen(
                        str(dom.name()), str(dom.UUIDString()), active, str(dom.XMLDesc(flags))
                    )
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return seen

    # -- registry ----------------------------------------------------------------

    def register_vm(
        self,
        vm_id: str,
        xml: str,
        *,
        host_id: str | None = None,
        vm_type: VmType = VmType.USER,
        ha_enabled: bool = True,
        local_storage: bool = False,
    ) -> Vm:
        """Add a VM to the registry (no libvirt call is made).

        ``host_id`` given: the domain is taken to be running there already
        (state Running); None: the VM is Stopped. The VM's name is the
        domain name in ``xml``. Give ``xml`` the ``<uuid>`` of the domain
        already defined on the hosts, if any: without one a fresh UUID is
        added, and libvirt refuses to redefine a name under another UUID.

        Raises:
            ConfigurationError: unknown host, malformed XML or no ``<name>``,
                or the VM id is already registered.
        """
        name, domain_uuid, xml = _parse_domain(xml)
        if host_id is not None and host_id not in self._uris:
            raise ConfigurationError(f"unknown host {host_id!r}", key="host_id", value=host_id)
        vm = Vm(
            vm_id,
            name=name,
            type=vm_type,
            state=VmState.RUNNING if host_id else VmState.STOPPED,
            host_id=host_id,
            last_host_id=host_id,
            ha_enabled=ha_enabled,
            hypervisor=HypervisorType.KVM,
        )
        with self._lock:
            if vm_id in self._vms:
                raise ConfigurationError(f"VM {vm_id!r} is already registered", key="vm_id")
            self._vms[vm_id] = _Entry(
                vm,
                xml,
                name,
                domain_uuid,
                local_storage,
                defined_on={host_id} if host_id else set(),
            )
            self._persist(vm_id)
        return vm

    def uri_of(self, host_id: str) -> str:
        """The libvirt URI of ``host_id`` (may hold credentials; see :func:`redact_uri`)."""
        return self._uris[host_id]

    def highest_generation(self, vm_id: str) -> int:
        """The highest generation used for the VM (0: none yet)."""
        with self._lock:
            return self._entry(vm_id).generation

    @property
    def lingering(self) -> int:
        """Workers abandoned on a timeout that have not returned yet."""
        return self._runner.lingering

    # -- the port -----------------------------------------------------------------

    def find_vm(self, vm_id: str) -> Vm | None:
        """The VM's snapshot from the registry, or None."""
        with self._lock:
            entry = self._vms.get(vm_id)
            return entry.vm if entry else None

    def list_vms_on_host(self, host_id: str) -> Sequence[Vm]:
        """Registry VMs whose ``host_id`` is ``host_id``, sorted by id (libvirt is not asked)."""
        with self._lock:
            return [e.vm for _id, e in sorted(self._vms.items()) if e.vm.host_id == host_id]

    def can_restart_on_another_server(self, vm: Vm) -> bool:
        """False for VMs registered with ``local_storage=True`` (and unknown VMs)."""
        with self._lock:
            entry = self._vms.get(vm.id)
            return entry is not None and not entry.local_storage

    def advance_stop(self, vm: Vm, *, force: bool) -> None:
        """Destroy (``force``) or shut down the VM's domain on its host; see the class."""
        with self._lock:
            entry = self._entry(vm.id)
            if entry.vm.state in (VmState.STOPPED, VmState.DESTROYED):
                return
            before, host_id = self._begin_stop(entry)
        self._stop_on_host(entry, host_id, before, force)
        with self._lock:
            self._set(
                entry,
                state=VmState.STOPPED,
                host_id=None,
                last_host_id=host_id or entry.vm.last_host_id,
            )

    def migrate_away(self, vm: Vm, source_host_id: str) -> str:
        """Move the VM off ``source_host_id`` by a cold migration; see the class.

        This reference adapter has no shared storage, so the domain is shut
        down on the source and started on the target: the guest restarts. A
        real adapter would live-migrate with ``virDomainMigrateToURI3``.
        """
        with self._lock:
            entry = self._entry(vm.id)
            current = entry.vm
            if current.state is not VmState.RUNNING or current.host_id != source_host_id:
                where = f" on host {current.host_id}" if current.host_id else ""
                raise ConcurrentOperationError(
                    vm.id, f"VM is {current.state}{where}, not Running on host {source_host_id}"
                )
            target = self._first_fit(avoid_hosts=frozenset({source_host_id}), ha_tag=None)
            if target is None:
                raise InsufficientCapacityError(
                    vm.id, scope="zone", reason=f"no host other than {source_host_id} has room"
                )
            entry.migrating_to = target
            self._set(entry, state=VmState.MIGRATING)
        log.info("migrating VM %s from host %s to host %s (cold)", vm.id, source_host_id, target)
        self._stop_on_host(entry, source_host_id, VmState.RUNNING, force=False)
        with self._lock:
            newly_defined = target not in entry.defined_on
            entry.defined_on.add(target)
            self._persist(entry.vm.id)
        sent = threading.Event()
        try:
            self._run(target, lambda conn: self._start_domain(conn, entry, sent))
        except (ProbeError, ConcurrentOperationError) as exc:
            uncertain = sent.is_set() or isinstance(exc, ProbeTimeout | ConcurrentOperationError)
            if uncertain:
                with self._lock:
                    entry.migrating_to = None
                    self._set(entry, state=VmState.UNKNOWN, host_id=target)
            else:  # not defined on the target: connecting or defining failed
                if newly_defined:
                    with self._lock:
                        entry.defined_on.discard(target)
                        self._persist(entry.vm.id)
                self._start_back(entry, source_host_id, target, exc)
            raise
        with self._lock:
            entry.migrating_to = None
            self._set(entry, state=VmState.RUNNING, host_id=target, last_host_id=target)
        return target

    def destroy(self, vm: Vm, *, expunge: bool) -> None:
        """Force-stop the VM's domain if it runs, then mark it Destroyed or expunge it.

        See the class.
        """
        with self._lock:
            entry = self._entry(vm.id)
            if entry.vm.state is VmState.DESTROYED and not expunge:
                return
            # A Stopped or Destroyed VM has no host: nothing is stopped then.
            before, host_id = self._begin_stop(entry)
        self._stop_on_host(entry, host_id, before, force=True)
        with self._lock:
            last = entry.vm.host_id or entry.vm.last_host_id
            self._set(
                entry,
                state=VmState.EXPUNGING if expunge else VmState.DESTROYED,
                host_id=None,
                last_host_id=last,
            )
            hosts = sorted(entry.defined_on)
        if not expunge:
            return
        for host_id in hosts:
            try:
                self._run(host_id, lambda conn: self._undefine_domain(conn, entry))
            except (ProbeError, ConcurrentOperationError):
                with self._lock:
                    self._set(entry, state=VmState.DESTROYED)
                raise
            with self._lock:
                entry.defined_on.discard(host_id)
                self._persist(entry.vm.id)
        with self._lock:
            del self._vms[vm.id]
            self._persist(vm.id)

    def advance_start(self, vm: Vm, params: StartParams, planner: Planner) -> str:
        """Define and create the VM's domain on the first eligible host; see the class.

        ``planner`` is recorded in the log only: both planners are first-fit here.
        """
        with self._lock:
            entry = self._entry(vm.id)
            if params.generation <= entry.generation:
                raise StaleGenerationError(
                    vm.id, generation=params.generation, highest=entry.generation
                )
            if entry.vm.state is not VmState.STOPPED:
                raise ConcurrentOperationError(vm.id, f"VM is {entry.vm.state}")
            host_id = self._choose_host(params)
            if host_id is None:
                raise InsufficientCapacityError(
                    vm.id, scope="zone", reason="no eligible host has room"
                )
            previous = entry.generation
            before = entry.vm
            entry.generation = params.generation
            elsewhere = sorted(entry.defined_on - set(params.avoid_hosts) - {host_id})
            newly_defined = host_id not in entry.defined_on
            entry.defined_on.add(host_id)
            self._set(entry, state=VmState.STARTING, host_id=host_id, persist=False)
            try:
                # The generation is durable before anything is started with it.
                self._persist(vm.id, durable=True)
            except StoreError:
                entry.generation = previous
                entry.vm = before
                if newly_defined:
                    entry.defined_on.discard(host_id)
                raise
        log.info(
            "starting VM %s (generation %d, %s planner) on host %s",
            vm.id,
            params.generation,
            planner,
            host_id,
        )
        try:
            running_on = next(
                (h for h in elsewhere if self._run(h, lambda conn: self._is_active(conn, entry))),
                None,
            )
        except ProbeError:
            with self._lock:  # nothing was sent: as if never asked
                entry.generation = previous
                if newly_defined:
                    entry.defined_on.discard(host_id)
                self._set(entry, state=VmState.STOPPED, host_id=None)
            raise
        sent = threading.Event()
        try:
            if running_on is None:
                self._run(host_id, lambda conn: self._start_domain(conn, entry, sent))
        except ConcurrentOperationError:
            running_on = host_id
        except ProbeError as exc:
            uncertain = sent.is_set() or isinstance(exc, ProbeTimeout)
            with self._lock:
                if uncertain:
                    self._set(entry, state=VmState.UNKNOWN)
                else:  # not defined there: connecting or defining failed
                    entry.generation = previous
                    if newly_defined:
                        entry.defined_on.discard(host_id)
                    self._set(entry, state=VmState.STOPPED, host_id=None)
            raise
        if running_on is not None:
            # It runs already (a late start, someone by hand): record where,
            # keep the generation used, and start nothing.
            with self._lock:
                self._set(entry, state=VmState.RUNNING, host_id=running_on, last_host_id=running_on)
            raise ConcurrentOperationError(
                vm.id, f"domain {entry.domain} is already running on host {running_on}"
            )
        with self._lock:
            self._set(entry, state=VmState.RUNNING, host_id=host_id, last_host_id=host_id)
        return host_id

    # -- libvirt work (in worker threads) --------------------------------------------

    def _stop_domain(self, conn: Any, domain: str, force: bool) -> None:
        try:
            dom = conn.lookupByName(domain)
            if not dom.isActive():
                return
            try:
                if force:
                    dom.destroy()
                else:
                    dom.shutdown()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
            if force:
                return
            deadline = time.monotonic() + self.shutdown_timeout
            pause = threading.Event()
            while dom.isActive():
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"domain {domain} did not shut down within {self.shutdown_timeout:.3g} s"
                    )
                pause.wait(0.1)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise

    @staticmethod
    def _start_domain(conn: Any, entry: _Entry, sent: threading.Event) -> None:
        """Define and create the domain; refused when it is already active there."""
        dom = conn.defineXML(entry.xml)
        if dom.isActive():
            raise ConcurrentOperationError(
                entry.vm.id, f"domain {entry.domain} is already running there"
            )
        sent.set()
        dom.create()

    @staticmethod
    def _is_active(conn: Any, entry: _Entry) -> bool:
        """Whether the VM's domain (by UUID) is active on this host."""
        try:
            return bool(conn.lookupByUUIDString(entry.uuid).isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    @staticmethod
    def _undefine_domain(conn: Any, entry: _Entry) -> None:
        """Undefine the VM's domain: missing or another UUID is fine, active is refused."""
        try:
            dom = conn.lookupByName(entry.domain)
            if dom.UUIDString().lower() != entry.uuid.lower():
                return
            if dom.isActive():
                raise ConcurrentOperationError(
                    entry.vm.id, f"domain {entry.domain} is running there; not undefined"
                )
            dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise

    # -- plumbing ---------------------------------------------------------------------

    def _entry(self, vm_id: str) -> _Entry:
        entry = self._vms.get(vm_id)
        if entry is None:
            raise UnknownVmError(vm_id)
        return entry

    def _begin_stop(self, entry: _Entry) -> tuple[VmState, str | None]:
        """Under the lock: refuse a busy VM, mark it Stopping if it has a host.

        Returns its state before and its host (None: nothing to stop there).
        """
        before = entry.vm.state
        if before in _BUSY:
            raise ConcurrentOperationError(entry.vm.id, f"VM is {before}")
        host_id = entry.vm.host_id
        if host_id is not None:
            self._set(entry, state=VmState.STOPPING)
        return before, host_id

    def _stop_on_host(
        self, entry: _Entry, host_id: str | None, before: VmState, force: bool
    ) -> None:
        """Outside the lock: stop the domain on ``host_id`` (None: nothing to do).

        On a timeout the VM becomes ``Unknown`` on that host; on another
        libvirt error it gets its ``before`` state back; either is raised
        (and a migration under way is over).
        """
        if host_id is None:
            return
        try:
            self._run(
                host_id,
                lambda conn: self._stop_domain(conn, entry.domain, force),
                extra=0.0 if force else self.shutdown_timeout,
            )
        except ProbeConnectionError as exc:
            if force and self._proven_off(host_id):
                log.info(
                    "VM %s counts as stopped: host %s is powered off (%s)",
                    entry.vm.id,
                    host_id,
                    exc,
                )
                return
            with self._lock:
                entry.migrating_to = None
                self._set(entry, state=before)
            raise
        except ProbeTimeout:
            with self._lock:
                entry.migrating_to = None
                self._set(entry, state=VmState.UNKNOWN)
            raise
        except ProbeError:
            with self._lock:
                entry.migrating_to = None
                self._set(entry, state=before)
            raise

    def _proven_off(self, host_id: str) -> bool:
        """Whether ``powered_off`` says ``host_id`` has no power (a failing check: no)."""
        if self.powered_off is None:
            return False
        try:
            return self.powered_off(host_id) is True
        except Exception as exc:
            log.warning("asking whether host %s is powered off failed: %s", host_id, exc)
            return False

    def _start_back(self, entry: _Entry, source: str, target: str, error: BaseException) -> None:
        """After a definite failure on ``target``: start the domain again on ``source``."""
        log.warning(
            "migration of VM %s to host %s failed (%s); starting it again on host %s",
            entry.vm.id,
            target,
            error,
            source,
        )
        sent = threading.Event()
        try:
            self._run(source, lambda conn: self._start_domain(conn, entry, sent))
        except (ProbeError, ConcurrentOperationError) as exc:
            log.error("VM %s could not be started again on host %s: %s", entry.vm.id, source, exc)
            uncertain = sent.is_set() or isinstance(exc, ProbeTimeout | ConcurrentOperationError)
            with self._lock:
                entry.migrating_to = None
                if uncertain:
                    self._set(entry, state=VmState.UNKNOWN, host_id=source)
                else:
                    self._set(entry, state=VmState.STOPPED, host_id=None, last_host_id=source)
            return
        with self._lock:
            entry.migrating_to = None
            self._set(entry, state=VmState.RUNNING, host_id=source, last_host_id=source)

    def _set(self, entry: _Entry, *, persist: bool = True, **changes: Any) -> None:
        """Apply ``changes`` to the VM's snapshot, counting a state change in ``updated``;
        then write the entry through (unless ``persist`` is False)."""
        changed = any(getattr(entry.vm, k) != v for k, v in changes.items())
        if changed:
            entry.vm = attrs.evolve(entry.vm, updated=entry.vm.updated + 1, **changes)
        if persist:
            self._persist(entry.vm.id)

    def _choose_host(self, params: StartParams) -> str | None:
        return self._first_fit(
            avoid_hosts=params.avoid_hosts, ha_tag=params.ha_tag, prefer=params.prefer_host
        )

    def _first_fit(
        self, *, avoid_hosts: frozenset[str], ha_tag: str | None, prefer: str | None = None
    ) -> str | None:
        """Under the lock: ``prefer`` if it qualifies, else the first host in sorted id order
        not avoided, tagged, with room."""
        for host_id in sorted(self._uris, key=lambda h: (h != prefer, h)):
            if host_id in avoid_hosts:
                continue
            if ha_tag is not None and ha_tag not in self._tags[host_id]:
                continue
            used = sum(
                1
                for e in self._vms.values()
                if (e.vm.host_id == host_id and e.vm.state in _COUNTED) or e.migrating_to == host_id
            )
            if used < self._capacity[host_id]:
                return host_id
        return None

    def _run(self, host_id: str, act: Callable[[Any], _T], *, extra: float = 0.0) -> _T:
        uri = self._uris[host_id]
        shown, secrets = redact_uri(uri)
        try:
            return self._runner.run(
                lambda _ticket: self._work(uri, shown, act),
                self.timeout + extra,
                label=f"{host_id} at {shown}",
            )
        except DeadlineExceeded:
            raise ProbeTimeout(
                f"libvirt on host {host_id} ({shown}) did not answer in time", host_id=host_id
            ) from None
        except libvirt.libvirtError as exc:
            raise self._map_error(exc, host_id, shown, secrets) from None
        except TimeoutError as exc:
            raise ProbeTimeout(f"host {host_id}: {exc}", host_id=host_id) from None

    @staticmethod
    def _work(uri: str, shown: str, act: Callable[[Any], _T]) -> _T:
        """In the worker: open, act, and always close the connection."""
        conn: Any = libvirt.open(uri)
        try:
            return act(conn)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError as exc:
                log.debug("closing the libvirt connection to %s failed: %s", shown, exc)

    @staticmethod
    def _map_error(exc: Any, host_id: str, shown: str, secrets: tuple[str, ...]) -> ProbeError:
        message = redact(str(exc), *secrets)
        code = exc.get_error_code()
        if code in (
            libvirt.VIR_ERR_AUTH_FAILED,
            libvirt.VIR_ERR_AUTH_CANCELLED,
            libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        ):
            return ProbeAuthError(
                f"libvirt on host {host_id} ({shown}) refused authentication: {message}",
                host_id=host_id,
            )
        if "keepalive" in message.lower():
            return ProbeTimeout(
                f"libvirt on host {host_id} ({shown}) stopped answering: {message}",
                host_id=host_id,
            )
        return ProbeConnectionError(
            f"libvirt on host {host_id} ({shown}) failed: {message}", host_id=host_id
        )
