"""``cloudha demo --real``: a lab cluster, the daemon in process, one host killed at its BMC.

:func:`run_real_demo` starts a :class:`~cloudha.testing.lab.cluster.Lab` of real
processes on loopback, writes an inventory for it (``agent = "local"``, the
lab's libvirt URIs and BMCs, fast settings), assembles the ``cloudha run``
daemon in this process (:func:`cloudha.daemon.assemble`) and starts it. Once
every host is Up, it powers one host off at its BMC over IPMI (its libvirtd
and heartbeat writer die) and follows what happens: the server's evidence
says when the host was detected, investigated, declared Down and fenced; the
lab's libvirtds say where each of the dead host's HA VMs runs. It ends when
every one of them runs on another host, or when the time limit passes.

Each step is a :class:`Step` handed to ``on_step`` as it happens (the command
prints them live); :class:`DemoResult` is the whole timeline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import attrs

from cloudha.errors import CloudHAError, MissingExtraError
from cloudha.evidence import Evidence

__all__ = [
    "DemoResult",
    "DemoUnavailableError",
    "Step",
    "check_prerequisites",
    "run_real_demo",
]

log = logging.getLogger(__name__)

INSTALL = "bash scripts/setup.sh test"
"""What installs everything the real demo needs."""

_READY_TIMEOUT = 30.0
_POLL = 0.1


class DemoUnavailableError(CloudHAError):
    """This machine lacks what the real demo needs (an extra, libvirtd, setpriv)."""


@attrs.frozen
class Step:
    """One thing that happened, ``t`` seconds after the kill (negative: before it).

    ``step`` is one of ``ready``, ``killed``, ``detected``, ``investigated``,
    ``down``, ``fenced``, ``restarted`` (the HA worker started the VM) and
    ``running`` (the VM's domain runs on another host's libvirtd).
    """

    t: float
    step: str
    host: str | None = None
    vm: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 3), "step": self.step}
        if self.host is not None:
            out["host"] = self.host
        if self.vm is not None:
            out["vm"] = self.vm
        if self.detail:
            out["detail"] = self.detail
        return out


@attrs.define
class DemoResult:
    """The demo's outcome.

    Attributes:
        victim: the host killed.
        hosts: every lab host.
        ha_vms: the victim's HA VMs.
        placement: where each of them runs at the end (None: nowhere else).
        recovered_in: seconds from the kill to each one running elsewhere.
        steps: the timeline.
        limit: the seconds they had.
        startup: seconds from the demo's start to the kill.
    """

    victim: str
    hosts: list[str]
    ha_vms: list[str]
    limit: float
    placement: dict[str, str | None] = attrs.field(factory=dict)
    recovered_in: dict[str, float] = attrs.field(factory=dict)
    steps: list[Step] = attrs.field(factory=list)
    startup: float = 0.0
    workdir: str | None = None

    @property
    def ok(self) -> bool:
        """Every HA VM of the victim runs on another host within the limit."""
        return all(
            self.placement.get(vm) not in (None, self.victim)
            and self.recovered_in.get(vm, float("inf")) <= self.limit
            for vm in self.ha_vms
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "victim": self.victim,
            "hosts": self.hosts,
            "ha_vms": self.ha_vms,
            "limit": self.limit,
            "startup": round(self.startup, 3),
            "ok": self.ok,
            "vms": {
                vm: {
                    "host": self.placement.get(vm),
                    "recovered_in": (
                        None if vm not in self.recovered_in else round(self.recovered_in[vm], 3)
                    ),
                }
                for vm in self.ha_vms
            },
            "timeline": [s.to_dict() for s in self.steps],
        }


def check_prerequisites() -> None:
    """Raise :class:`DemoUnavailableError` (one line) unless the real demo can run here."""
    from cloudha._extras import require
    from cloudha.testing.lab.libvirtd import LIBVIRTD

    missing = []
    for module, extra, what in (
        ("libvirt", "libvirt", "libvirt-python"),
        ("pyghmi", "ipmi", "pyghmi"),
    ):
        try:
            require(module, extra, "the real demo")
        except MissingExtraError:
            missing.append(what)
    if not (LIBVIRTD.is_file() and os.access(LIBVIRTD, os.X_OK)):
        missing.append(f"Debian's libvirt-daemon ({LIBVIRTD})")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        missing.append("setpriv (util-linux)")
    if missing:
        raise DemoUnavailableError(
            f"--real needs {', '.join(missing)}: install them with `{INSTALL}`"
        )
    for module in ("cloudha.daemon", "cloudha.inventory"):
        if importlib.util.find_spec(module) is None:
            raise DemoUnavailableError(f"--real needs {module} (the cloudha run daemon)")


class _Follower:
    """Turns the server's evidence about the victim and its VMs into :class:`Step` s."""

    def __init__(self, victim: str, ha_vms: list[str], emit: Callable[[Step], None]) -> None:
        self.victim = victim
        self.ha_vms = set(ha_vms)
        self.emit = emit
        self.killed_at: float | None = None
        self.seen: set[tuple[str, str | None]] = set()
        self.lock = threading.Lock()

    def now(self) -> float:
        return 0.0 if self.killed_at is None else time.monotonic() - self.killed_at

    def once(self, step: str, vm: str | None, detail: str) -> None:
        with self.lock:
            if (step, vm) in self.seen or self.killed_at is None:
                return
            self.seen.add((step, vm))
        self.emit(Step(self.now(), step, self.victim, vm, detail))

    def record(self, evidence: Evidence) -> None:
        if evidence.host != self.victim or self.killed_at is None:
            return
        details = evidence.details
        kind = evidence.kind
        if kind == "behind_on_ping":
            self.once("detected", None, evidence.reason)
        elif kind == "host_status":
            to = str(details.get("to"))
            if to in ("Alert", "Disconnected", "Down"):
                self.once("detected", None, f"status {details.get('from')} -> {to}")
            if to == "Down":
                self.once("down", None, f"{details.get('from')} -> Down ({details.get('event')})")
        elif kind == "investigation":
            self.once("detected", None, evidence.reason)
            if details.get("result") == "Down":  # the investigation that decided
                decided = details.get("decided_by")
                why = next(
                    (
                        str(f.get("reason"))
                        for f in details.get("findings") or ()
                        if isinstance(f, dict) and f.get("source") == decided and f.get("reason")
                    ),
                    evidence.reason,
                )
                by = f" by {decided}" if decided else ""
                self.once("investigated", None, f"Down{by}: {why}")
        elif kind == "suspicion" and details.get("qualifies") and details.get("outcome"):
            self.once("fenced", None, f"fence on suspicion {details.get('outcome')}")
        elif kind == "fence" and str(details.get("outcome")) == "FENCED":
            self.once("fenced", evidence.vm, f"{details.get('fencer')}: {evidence.reason}")
        elif kind == "ha_scheduled" and "no fence needed" in evidence.reason:
            self.once("fenced", None, "no fence needed: its VMs were proven stopped at the verdict")
        elif kind == "ha_work" and evidence.vm in self.ha_vms and details.get("step") == "Done":
            self.once("restarted", evidence.vm, evidence.reason)


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread meanwhile, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_real_demo(
    *,
    hosts: int = 3,
    victim: str = "kvm2",
    limit: float = 60.0,
    workdir: Path | None = None,
    on_step: Callable[[Step], None] = lambda step: None,
    kill_driver: str | None = None,
) -> DemoResult:
    """Run the real demo (see the module doc); the lab is gone when it returns.

    Args:
        hosts: lab hosts (``kvm1`` ...; at least 2).
        victim: the host to kill.
        limit: seconds after the kill by which every HA VM of the victim must run elsewhere.
        workdir: keep the lab's files (inventory, database, logs) there; a
            temporary directory removed at the end by default.
        on_step: called with each :class:`Step` as it happens (from any thread).
        kill_driver: the IPMI client that powers the victim off, and the
            daemon's power driver: ``ipmitool`` (the default when installed) or
            ``ipmi`` (pyghmi, in this process).

    Raises:
        DemoUnavailableError: this machine cannot run it.
        CloudHAError: a lab component or the daemon could not start.
    """
    from cloudha.status import Status
    from cloudha.testing.lab.agent import lab_gateways
    from cloudha.testing.lab.cluster import Lab
    from cloudha.testing.lab.inventory import write_inventory

    if hosts < 2:
        raise ValueError("the demo needs at least 2 hosts")
    check_prerequisites()
    if kill_driver is None:
        kill_driver = "ipmitool" if shutil.which("ipmitool") else "ipmi"
    from cloudha.daemon import assemble
    from cloudha.inventory import load_inventory

    started = time.monotonic()
    keep = workdir is not None
    root = Path(tempfile.mkdtemp(prefix="cloudha-demo-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    names = [f"kvm{i}" for i in range(1, hosts + 1)]
    if victim not in names:
        raise ValueError(f"--kill {victim}: the lab's hosts are {', '.join(names)}")
    result = DemoResult(victim=victim, hosts=names, ha_vms=[], limit=limit, workdir=str(root))
    steps_lock = threading.Lock()

    def emit(step: Step) -> None:
        with steps_lock:
            result.steps.append(step)
        on_step(step)

    lab = Lab(root / "lab", hosts=hosts, keep=keep)
    assembly: Any = None
    try:
        with _terminated_as_interrupt():
            lab.start()
            result.ha_vms = lab.ha_domains(victim)
            inventory_path = write_inventory(
                lab,
                root / "cluster.toml",
                agent="local",
                db=f"sqlite:///{root / 'cloudha.db'}",
                server_id="demo",
                oobm_driver=kill_driver,
            )
            inventory = load_inventory(inventory_path)
            follower = _Follower(victim, result.ha_vms, emit)
            # The lab's hosts are this machine: their agent side must die with them.
            assembly = assemble(inventory, evidence=follower, gateway=lab_gateways(lab))
            server = assembly.server
            assembly.start()
            _wait_ready(server, lab, names, result.ha_vms, Status.UP)
            emit(Step(-(time.monotonic() - started), "ready", None, None, _ready_detail(lab)))
            result.startup = time.monotonic() - started
            follower.killed_at = time.monotonic()
            lab.power_off(victim, driver=kill_driver)
            emit(Step(follower.now(), "killed", victim, None, "powered off at its BMC over IPMI"))
            _follow(lab, result, follower, emit)
    finally:
        if assembly is not None:
            with contextlib.suppress(Exception):
                assembly.stop(10.0)
            with contextlib.suppress(Exception):
                assembly.close()
        lab.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _ready_detail(lab: Any) -> str:
    vms = sum(len(h.domains) for h in lab.hosts)
    return f"{len(lab.hosts)} hosts Up, {vms} VMs running"


def _wait_ready(server: Any, lab: Any, names: list[str], ha_vms: list[str], up: Any) -> None:
    """Until every host is Up and the orchestrator knows the victim's HA VMs as HA."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        statuses = {}
        for name in names:
            host = server.directory.find_host(name)
            statuses[name] = None if host is None else host.status
        known = [server.orchestrator.find_vm(vm) for vm in ha_vms]
        if all(s is up for s in statuses.values()) and all(
            v is not None and v.ha_enabled for v in known
        ):
            return
        if time.monotonic() > deadline:
            shown = ", ".join(f"{k} {v}" for k, v in statuses.items())
            raise CloudHAError(
                f"the lab was not ready within {_READY_TIMEOUT:g}s: hosts {shown};"
                f" HA VMs known: {sum(v is not None for v in known)} of {len(ha_vms)}"
            )
        time.sleep(_POLL)


def _follow(
    lab: Any, result: DemoResult, follower: _Follower, emit: Callable[[Step], None]
) -> None:
    """Until every HA VM of the victim runs elsewhere, or the limit passes."""
    assert follower.killed_at is not None
    while True:
        for vm in result.ha_vms:
            if vm in result.recovered_in:
                continue
            where = [h for h in lab.where(vm) if h != result.victim]
            if where:
                result.recovered_in[vm] = follower.now()
                result.placement[vm] = where[0]
                emit(Step(follower.now(), "running", where[0], vm, f"{vm} runs on {where[0]}"))
        if len(result.recovered_in) == len(result.ha_vms):
            return
        if follower.now() > result.limit:
            for vm in result.ha_vms:
                result.placement.setdefault(vm, None)
            return
        time.sleep(_POLL)
