"""A cluster of real processes on loopback: :class:`Lab` and its :class:`LabHost` hosts.

Each host ``kvm1`` ... ``kvmN`` is, all on 127.0.0.1:

* a **libvirtd** hosting the test driver on its own TCP port
  (:mod:`cloudha.testing.lab.libvirtd`), its default ``test`` domain removed
  and a few domains of its own defined and running (``kvm1-web``,
  ``kvm1-db`` ... :data:`DOMAIN_ROLES`); the lab keeps the holder connection
  that keeps the test driver's state;
* a **heartbeat writer**: ``cloudha heartbeat write`` on the lab's shared
  heartbeat directory (standing in for the NFS pool), keyed by the host's
  heartbeat address :attr:`LabHost.address`;
* a **fake BMC** over real IPMI (:mod:`cloudha.testing.lab.fakebmc`) whose
  power-off SIGKILLs that host's processes: the libvirtd, the writer and,
  when there is one, the sshd;
* optionally an **sshd** (:mod:`cloudha.testing.lab.sshd`), the host's agent
  side for ``agent = "ssh"`` (its sessions get a ``PYTHONPATH`` to this
  cloudha, so ``python -m cloudha`` runs there, and a ``PATH`` whose
  ``ping`` is the lab's, :mod:`cloudha.testing.lab.ping`: a lab address
  answers while that host's processes run).

A host's heartbeat address is an identity, not a place: every server listens
on 127.0.0.1, and the address only names the host's heartbeat file
(``<dir>/KVMHA/hb-<address>``). No traffic is sent to it by the lab.

:meth:`Lab.close` (also at exit, and from ``with``) stops everything and
removes the lab's files unless ``keep`` was asked; each child is started
through ``setpriv --pdeathsig KILL``, so even a killed lab leaves no process
behind. The writers run with ``reboot.host.and.alert.management.on.heartbeat.timeout``
false whatever the settings say: a lab must never reset the machine it runs on.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cloudha._extras import require
from cloudha.errors import ProbeError
from cloudha.heartbeat import heartbeat_path
from cloudha.oobm.power import OobmConfig, PowerOperation, PowerResult
from cloudha.testing.lab.fakebmc import FakeBmcServer, start_fake_bmc
from cloudha.testing.lab.libvirtd import LibvirtDaemon, domain_xml, start_libvirtd, stop_libvirtd
from cloudha.testing.lab.processes import (
    LabError,
    ProcessId,
    alive,
    dies_with_parent,
    kill_trees,
    process_id,
    python_env,
    wait_gone,
    write_kill_file,
)
from cloudha.testing.lab.sshd import SshDaemon, start_sshd

__all__ = [
    "DOMAIN_ROLES",
    "FAST_SETTINGS",
    "HA_PATTERNS",
    "Lab",
    "LabDomain",
    "LabHost",
]

DOMAIN_ROLES: tuple[tuple[str, bool], ...] = (("web", True), ("db", True), ("scratch", False))
"""The domains each host runs, by role, and whether they are HA-enabled: ``kvm1-web`` ..."""

HA_PATTERNS: tuple[str, ...] = ("*-web", "*-db")
"""fnmatch patterns naming the HA-enabled domains of :data:`DOMAIN_ROLES`."""

FAST_SETTINGS: Mapping[str, object] = {
    "ping.interval": 1,
    "ping.timeout": 3,
    "time.to.sleep": 1,
    "kvm.heartbeat.update.frequency": 1000,  # milliseconds
    "kvm.heartbeat.update.max.tries": 2,
    "kvm.heartbeat.update.retry.sleep": 200,
    "heartbeat.update.timeout": 1000,
    "outofbandmanagement.action.timeout": 5,
    "outofbandmanagement.background.task.execution.interval": 1,
    "investigate.retry.interval": 2,
    "restart.retry.interval": 2,
}
"""Settings for a lab run that detects, fences and restarts in seconds."""

KILL_FILE = "host.pids"
_NEVER_RESET = "reboot.host.and.alert.management.on.heartbeat.timeout"
_NAMESPACE = uuid.UUID("5d6a0f0e-6c1b-4b5e-9a55-0c10dba1ab00")
_BMC_USER = "admin"
_WRITER_READY = 10.0


@attrs.frozen
class LabDomain:
    """One domain a lab host starts with."""

    name: str
    uuid: str
    ha: bool


@attrs.define(eq=False)
class LabHost:
    """One host of the lab.

    Attributes:
        id: ``kvm1`` ...
        address: the heartbeat address (``Host.private_ip``; names the heartbeat file).
        root: the host's directory (logs, kill file, BMC state, sshd keys).
        libvirtd: its libvirtd (``libvirtd.server.uri``, ``.holder``).
        bmc: its fake BMC (``bmc.port``, ``bmc.username``, ``bmc.password``).
        writer: its ``cloudha heartbeat write`` process.
        sshd: its sshd, when the lab has them.
        domains: the domains it started with.
    """

    id: str
    address: str
    root: Path
    libvirtd: LibvirtDaemon
    bmc: FakeBmcServer
    writer: subprocess.Popen[bytes] | None = None
    sshd: SshDaemon | None = None
    domains: tuple[LabDomain, ...] = ()

    @property
    def uri(self) -> str:
        """Its libvirt URI, ``test+tcp://127.0.0.1:PORT/default``."""
        return self.libvirtd.server.uri

    @property
    def kill_file(self) -> Path:
        """The processes its BMC kills at power-off (``PID START`` lines)."""
        return self.root / KILL_FILE

    def processes(self) -> list[ProcessId]:
        """The host's processes that still run: libvirtd, the writer, the sshd."""
        pids = [self.libvirtd.process.pid]
        if self.writer is not None:
            pids.append(self.writer.pid)
        if self.sshd is not None:
            pids.append(self.sshd.pid)
        found = [process_id(pid) for pid in pids]
        return [p for p in found if p is not None and alive(p)]

    def alive(self) -> bool:
        """Whether its libvirtd still runs (a powered-off host's does not)."""
        return self.libvirtd.process.poll() is None

    def running(self) -> set[str]:
        """The names of the domains running on it now; empty when the host is dead."""
        if not self.alive():
            return set()
        libvirt = require("libvirt", "libvirt", "the lab")
        try:
            return {d.name() for d in self.libvirtd.server.holder.listAllDomains() if d.isActive()}
        except libvirt.libvirtError:
            return set()

    def power_config(self, driver: str = "ipmitool") -> OobmConfig:
        """An :class:`OobmConfig` for its BMC."""
        return self.bmc.config(driver=driver, host_id=self.id)

    def publish_processes(self) -> None:
        """Write its kill file: what its BMC kills at power-off."""
        write_kill_file(self.kill_file, self.processes())

    def reap(self) -> None:
        """Collect the exit status of its processes that died (a powered-off host's)."""
        processes = [self.libvirtd.process, self.writer]
        if self.sshd is not None:
            processes.append(self.sshd.process)
        for process in processes:
            if process is not None:
                process.poll()


def _allow_unmounted() -> list[str]:
    """``--allow-unmounted`` when ``cloudha heartbeat write`` has it (a lab's pool is a plain
    directory)."""
    from cloudha.cli.heartbeat import write

    return ["--allow-unmounted"] if any(p.name == "allow_unmounted" for p in write.params) else []


class Lab:
    """N hosts of real processes on loopback (see the module doc).

    Args:
        root: the lab's directory (a fresh one under the system temp dir by
            default); it holds the heartbeat directory and one directory per host.
        hosts: how many hosts (``kvm1`` ...).
        sshd: give every host an sshd (its agent side).
        settings: the settings of the heartbeat writers (and of a daemon run
            against the lab); :data:`FAST_SETTINGS` by default. The writers
            never reset the machine whatever they say.
        roles: the domains each host starts with (:data:`DOMAIN_ROLES`).
        address: each host's heartbeat address from its index (1-based).
        bmc_password: the BMCs' password (a random one by default).
        keep: leave the lab's files (logs) behind at :meth:`close`.

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        hosts: int = 3,
        sshd: bool = False,
        settings: Mapping[str, object] | None = None,
        roles: Sequence[tuple[str, bool]] = DOMAIN_ROLES,
        address: Callable[[int], str] | None = None,
        bmc_password: str | None = None,
        keep: bool = False,
    ) -> None:
        if hosts < 1:
            raise ValueError(f"a lab needs at least one host, got {hosts}")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="cloudha-lab-")) if root is None else root
        self.size = hosts
        self.with_sshd = sshd
        self.settings: dict[str, object] = dict(FAST_SETTINGS if settings is None else settings)
        self.settings[_NEVER_RESET] = False
        self.roles = tuple(roles)
        self._address: Callable[[int], str] = address or (lambda index: f"127.0.0.{10 + index}")
        self.bmc_password = bmc_password or f"lab-{uuid.uuid4().hex[:16]}"
        self.keep = keep
        self.hosts: list[LabHost] = []
        self._lock = threading.Lock()
        self._closed = False
        self._started = False

    # -- paths ------------------------------------------------------------------

    @property
    def heartbeat_dir(self) -> Path:
        """The shared directory every host writes its heartbeat to (the "NFS pool")."""
        return self.root / "pool"

    @property
    def settings_file(self) -> Path:
        """The writers' settings (a TOML ``[settings]`` table)."""
        return self.root / "settings.toml"

    def host(self, host_id: str) -> LabHost:
        """The host named ``host_id``; KeyError when there is none."""
        for host in self.hosts:
            if host.id == host_id:
                return host
        raise KeyError(host_id)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Lab:
        """Start every host; on any failure stop what started and raise :class:`LabError`."""
        require("libvirt", "libvirt", "the lab")
        require("pyghmi", "ipmi", "the lab's fake BMCs")
        if self.with_sshd:
            require("paramiko", "ssh", "the lab's sshd hosts")
        if self._started:
            raise LabError("the lab is already started")
        self._started = True
        atexit.register(self.close)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.heartbeat_dir.mkdir(exist_ok=True)
            self._write_settings()
            self._write_program()
            self._write_ping()
            for index in range(1, self.size + 1):
                self.hosts.append(self._start_host(index))
            for host in self.hosts:
                self._wait_heartbeat(host)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_settings(self) -> None:
        lines = ["[settings]"]
        for key, value in sorted(self.settings.items()):
            lines.append(f'"{key}" = {_toml_value(value)}')
        self.settings_file.write_text("\n".join(lines) + "\n")

    def _start_host(self, index: int) -> LabHost:
        host_id = f"kvm{index}"
        root = self.root / host_id
        root.mkdir(exist_ok=True)
        kill_file = root / KILL_FILE
        started: list[Any] = []
        try:
            daemon = start_libvirtd(f"lab-{host_id}")
            started.append(daemon)
            bmc = start_fake_bmc(
                root, username=_BMC_USER, password=self.bmc_password, kill_file=kill_file
            )
            started.append(bmc)
            host = LabHost(host_id, self._address(index), root, daemon, bmc)
            started = [host]
            host.domains = self._define_domains(host)
            if self.with_sshd:
                host.sshd = start_sshd(
                    root / "ssh", session_env=self._session_env(), address=host.address
                )
            host.writer = self._start_writer(host)
            host.publish_processes()
        except BaseException:
            for thing in reversed(started):
                if isinstance(thing, LabHost):
                    self._stop_host(thing)
                elif isinstance(thing, FakeBmcServer):
                    thing.stop()
                else:
                    stop_libvirtd(thing)
            raise
        return host

    @property
    def cloudha_program(self) -> Path:
        """The lab hosts' ``cloudha``: this very cloudha, as if installed on each host, whose
        heartbeat commands take the lab's plain heartbeat directory for a mounted pool
        (``--allow-unmounted``). Written by :meth:`start`."""
        return self.root / "bin" / "cloudha"

    def _write_program(self) -> None:
        python = shlex.quote(sys.executable)
        script = f"""#!/bin/sh
# cloudha on a lab host (cloudha.testing.lab): the pool is a plain directory here.
case "$1 $2" in
    "heartbeat write"|"heartbeat check"|"heartbeat activity")
        sub="$2"; shift 2
        exec {python} -m cloudha heartbeat "$sub" --allow-unmounted "$@" ;;
esac
exec {python} -m cloudha "$@"
"""
        self.cloudha_program.parent.mkdir(exist_ok=True)
        self.cloudha_program.write_text(script)
        self.cloudha_program.chmod(0o755)

    @property
    def ping_program(self) -> Path:
        """The lab hosts' ``ping`` (:mod:`cloudha.testing.lab.ping`): an address of a lab host
        answers while one of that host's processes runs, whatever loopback does. Written by
        :meth:`start`, next to :attr:`cloudha_program`."""
        return self.root / "bin" / "ping"

    def _write_ping(self) -> None:
        from cloudha.testing.lab import ping

        hosts = self.root / "addresses.json"
        addresses = {
            self._address(index): str(self.root / f"kvm{index}" / KILL_FILE)
            for index in range(1, self.size + 1)
        }
        hosts.write_text(json.dumps(addresses, indent=2, sort_keys=True) + "\n")
        python, script = shlex.quote(sys.executable), shlex.quote(str(Path(ping.__file__)))
        self.ping_program.parent.mkdir(exist_ok=True)
        self.ping_program.write_text(
            "#!/bin/sh\n# ping on a lab host (cloudha.testing.lab.ping).\n"
            f'exec {python} -S {script} {shlex.quote(str(hosts))} "$@"\n'
        )
        self.ping_program.chmod(0o755)

    def _session_env(self) -> dict[str, str]:
        """What an SSH session on a lab host sees: :attr:`cloudha_program` as ``cloudha``
        and :attr:`ping_program` as ``ping`` on the PATH, and the lab's settings as
        ``CLOUDHA_*`` variables."""
        from cloudha.settings import KEYS

        env = {
            "PYTHONPATH": python_env()["PYTHONPATH"],
            "PATH": f"{self.cloudha_program.parent}:/usr/local/bin:/usr/bin:/bin",
        }
        for key, value in self.settings.items():
            env[KEYS[key].environment_variable] = _env_value(value)
        return env

    def _define_domains(self, host: LabHost) -> tuple[LabDomain, ...]:
        libvirt = require("libvirt", "libvirt", "the lab")
        holder = host.libvirtd.server.holder
        try:
            default = holder.lookupByName("test")
        except libvirt.libvirtError:
            default = None
        domains = []
        try:
            if default is not None:  # the test driver's own domain: the same name on every host
                if default.isActive():
                    default.destroy()
                default.undefine()
            for role, ha in self.roles:
                name = f"{host.id}-{role}"
                domain = LabDomain(name, str(uuid.uuid5(_NAMESPACE, name)), ha)
                holder.defineXML(domain_xml(domain.name, domain.uuid)).create()
                domains.append(domain)
        except libvirt.libvirtError as exc:
            raise LabError(f"{host.id}: defining its domains failed: {exc}") from None
        return tuple(domains)

    def _start_writer(self, host: LabHost) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "cloudha",
            "heartbeat",
            "write",
            "--mount",
            str(self.heartbeat_dir),
            "--host-ip",
            host.address,
            "--settings",
            str(self.settings_file),
            *_allow_unmounted(),
        ]
        with (host.root / "heartbeat.log").open("ab") as log:
            return subprocess.Popen(
                dies_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=python_env(),
                start_new_session=True,
            )

    def heartbeat_file(self, host: LabHost) -> Path:
        """Where ``host`` writes its heartbeat."""
        return Path(heartbeat_path(str(self.heartbeat_dir), host.address))

    def _wait_heartbeat(self, host: LabHost) -> None:
        deadline = time.monotonic() + _WRITER_READY
        path = self.heartbeat_file(host)
        while not path.exists():
            assert host.writer is not None
            if host.writer.poll() is not None or time.monotonic() > deadline:
                log = (host.root / "heartbeat.log").read_text(errors="replace")
                raise LabError(
                    f"{host.id}: the heartbeat writer wrote nothing to {path}"
                    f" (exit status {host.writer.returncode}); its log:\n{log[-2000:]}"
                )
            time.sleep(0.05)

    # -- what happens to hosts -------------------------------------------------

    def power_off(self, host_id: str, *, driver: str = "ipmitool", timeout: float = 10.0) -> None:
        """Power ``host_id`` off at its BMC over IPMI (its processes die): "the host dies".

        ``driver``: cloudha's ``ipmitool`` driver (the ``ipmitool`` program) or ``ipmi``
        (pyghmi). Returns once its processes are gone; :class:`LabError` otherwise.
        """
        host = self.host(host_id)
        config = host.power_config(driver)
        power = _power_driver(driver)
        deadline = time.monotonic() + timeout
        while True:  # IPMI runs over UDP: a lost or raced session is tried again
            try:
                result = power.execute(config, PowerOperation.OFF, timeout=timeout)
                break
            except ProbeError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"{host_id}: powering it off at its BMC failed: {exc}") from None
                time.sleep(0.2)
        _check(result, host_id)
        left = wait_gone([p.pid for p in host.processes()], timeout)
        host.reap()
        if left:
            raise LabError(f"{host_id}: powered off, but pids {left} still run")

    def crash(self, host_id: str, *, timeout: float = 10.0) -> None:
        """Kill ``host_id``'s processes while its BMC still reads power On (a kernel panic,
        a hung host): its libvirtd, heartbeat writer and sshd die, and powering it off is
        left to a fence. Returns once they are gone; :class:`LabError` otherwise."""
        host = self.host(host_id)
        left = kill_trees(host.processes())
        left = wait_gone(left, timeout)
        host.reap()
        if left:
            raise LabError(f"{host_id}: crashed, but pids {left} still run")

    def where(self, domain: str) -> list[str]:
        """The hosts on which ``domain`` runs now (one, if all is well)."""
        return [h.id for h in self.hosts if domain in h.running()]

    def ha_domains(self, host_id: str) -> list[str]:
        """The HA-enabled domains ``host_id`` started with."""
        return [d.name for d in self.host(host_id).domains if d.ha]

    def close(self) -> None:
        """Stop every host and remove the lab's files (unless ``keep``). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for host in self.hosts:
            self._stop_host(host)
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_host(self, host: LabHost) -> None:
        if host.writer is not None:
            _terminate(host.writer)
        if host.sshd is not None:
            host.sshd.stop()
        host.bmc.stop()
        stop_libvirtd(host.libvirtd, remove=not self.keep)
        if self.keep:  # its logs join the host's kept files; its own directory goes
            for name in ("libvirtd.log", "libvirtd.out"):
                with contextlib.suppress(OSError):
                    shutil.copyfile(host.libvirtd.root / name, host.root / name)
            shutil.rmtree(host.libvirtd.root, ignore_errors=True)
        left = kill_trees(host.processes())
        wait_gone(left, 5.0)
        host.reap()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _power_driver(name: str) -> Any:
    if name == "ipmitool":
        from cloudha.oobm.ipmitool import IpmitoolDriver

        return IpmitoolDriver()
    if name == "ipmi":
        from cloudha.oobm.ipmi import PyghmiDriver

        return PyghmiDriver()
    raise ValueError(f"unknown power driver {name!r} (ipmitool or ipmi)")


def _check(result: PowerResult, host_id: str) -> None:
    if not result.success:
        raise LabError(f"{host_id}: the BMC refused power off: {result.message}")
