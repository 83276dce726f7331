"""Every simulator fault kind, declared once, as data.

The scenario parser (:mod:`cloudha.testing.scenario`), the fault table of
docs/simulator.md (``render_table``; a test compares them) and the fault
campaign generator (:mod:`cloudha.testing.campaign`) all read
:data:`FAULTS`. A new kind is one row here plus its effect in the simulator.

Each fault that breaks something names the kind that undoes it (``heal``);
the campaign always schedules that heal before the end of a run. A
``one_shot`` kind (``vm_crash``) has nothing to undo it and is not generated. A kind whose
effect the simulator does not implement yet has ``simulated=False``: the
parser accepts it (the format knows it) and the campaign does not generate it.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "BREAKING",
    "FAULTS",
    "FAULT_KINDS",
    "FaultKind",
    "Target",
    "by_name",
    "render_table",
]


class Target(enum.Enum):
    """What a fault's ``target`` names."""

    HOST = "host"
    POOL = "pool"
    VM = "vm"
    MANAGEMENT_SERVER = "management server"
    NONE = "none"

    @property
    def doc(self) -> str:
        return {
            Target.HOST: "host",
            Target.POOL: "pool",
            Target.VM: "VM",
            Target.MANAGEMENT_SERVER: "server (optional)",
            Target.NONE: "—",
        }[self]


@attrs.frozen
class FaultKind:
    """One fault kind of the scenario format.

    Attributes:
        name: the ``kind`` of a ``[[faults]]`` entry.
        target: what ``target`` names; for :attr:`Target.NONE` it is left out,
            for :attr:`Target.MANAGEMENT_SERVER` it is optional (a server id of
            ``[run] management_servers``; by default the first).
        heal: the kind that undoes this one, or ``None`` when this kind is
            itself a heal.
        doc: one line: the effect (the docs table's "Effect" column).
        simulated: the simulator implements the effect (the campaign
            generates only these).
        own_stream: the campaign draws this kind from a random stream of its
            own (not with the other kinds), so that seeds drawn before the kind
            existed keep their scenarios.
        one_shot: it breaks something no fault kind undoes (``vm_crash``:
            VM HA brings the VM back); it has no ``heal``, is no heal itself,
            and the campaign does not generate it.
    """

    name: str
    target: Target
    heal: str | None
    doc: str
    simulated: bool = True
    own_stream: bool = False
    one_shot: bool = False

    @property
    def is_heal(self) -> bool:
        return self.heal is None and not self.one_shot


FAULTS: tuple[FaultKind, ...] = (
    FaultKind(
        "host_crash",
        Target.HOST,
        "host_recover",
        "power lost: agent, VMs and heartbeat writer stop; power Off. Dead hardware until"
        " host_recover: the BMC answers and reads Off, a BMC ON or RESET does not revive it",
    ),
    FaultKind(
        "host_recover",
        Target.HOST,
        None,
        "power back; after boot the agent and the heartbeat writer start. On a hung host that"
        " still has power: the hang ends and its VMs run on where they were",
    ),
    FaultKind(
        "host_hang",
        Target.HOST,
        "host_recover",
        "the OS hangs: agent, heartbeat writer and VMs freeze and nothing answers, but the power"
        " stays On and the BMC answers (a BMC RESET, or OFF then ON, clears it; SOFT is ignored);"
        " a host with a watchdog is reset once its writer has not petted it for the watchdog"
        " timeout",
    ),
    FaultKind(
        "agent_stop",
        Target.HOST,
        "agent_start",
        "the agent process stops; its connection closes at once (the management server sees"
        " it); the host, its VMs and its heartbeat writer keep running",
    ),
    FaultKind(
        "agent_start",
        Target.HOST,
        None,
        "the agent starts and reconnects (a booting host starts it with its boot, a hung one not)",
    ),
    FaultKind(
        "vm_crash",
        Target.VM,
        None,
        "the VM's process dies on its host alone (host, agent and other VMs keep running): the"
        " host's next reports lack it; nothing undoes it but VM HA",
        one_shot=True,
    ),
    FaultKind(
        "mgmt_partition",
        Target.HOST,
        "mgmt_heal",
        "the link between the management server and this host is cut",
    ),
    FaultKind("mgmt_heal", Target.HOST, None, "that link is back"),
    FaultKind(
        "host_isolation",
        Target.HOST,
        "host_heal",
        "the host loses every network, storage included, but keeps running with its VMs (until"
        " its heartbeat writer gives up, or its watchdog expires, and resets it)",
    ),
    FaultKind("host_heal", Target.HOST, None, "the host's networks are back"),
    FaultKind(
        "heartbeat_stop",
        Target.HOST,
        "heartbeat_start",
        "the heartbeat writer stops; the host, agent and VMs keep running (until its watchdog,"
        " if it has one, resets it)",
    ),
    FaultKind(
        "heartbeat_start",
        Target.HOST,
        None,
        "the writer starts again (a new round at once)",
    ),
    FaultKind(
        "storage_outage",
        Target.POOL,
        "storage_heal",
        "the pool stops answering: writes block and fail after their timeout, reads fail",
    ),
    FaultKind("storage_heal", Target.POOL, None, "the pool answers again"),
    FaultKind(
        "bmc_down",
        Target.HOST,
        "bmc_up",
        "the host's BMC stops answering (every power operation times out)",
    ),
    FaultKind("bmc_up", Target.HOST, None, "the host's BMC answers again"),
    FaultKind(
        "ms_crash",
        Target.MANAGEMENT_SERVER,
        "ms_restart",
        "the management server process dies: its memory (ping map) is lost, the host table"
        " survives; in a group its peers declare it departed after cloudha.ms.takeover.timeout"
        " and take over its hosts and HA works",
    ),
    FaultKind(
        "ms_restart",
        Target.MANAGEMENT_SERVER,
        None,
        "a new management server process starts: it marks its hosts Disconnected (UNKNOWN) with a"
        " doubled grace ([Detection](detection.md)), agents reconnect; in a group it registers"
        " with a new epoch and takes up its hosts no peer took over",
    ),
    FaultKind(
        "ms_isolation",
        Target.MANAGEMENT_SERVER,
        "ms_heal",
        "the management server loses its network to every host",
    ),
    FaultKind("ms_heal", Target.MANAGEMENT_SERVER, None, "that network is back"),
    FaultKind(
        "ms_pause",
        Target.MANAGEMENT_SERVER,
        "ms_resume",
        "the management server process stalls (a long GC or VM pause): none of its loops run"
        " and agents' pings go unanswered, but it keeps its memory; in a group, past"
        " cloudha.ms.takeover.timeout its peers declare it departed and take over its hosts",
        own_stream=True,
    ),
    FaultKind(
        "ms_resume",
        Target.MANAGEMENT_SERVER,
        None,
        "the process wakes: its loops run at once, with every ping in its map stale; in a group,"
        " one declared departed meanwhile finds its heartbeat refused (ownership_lost),"
        " registers again and claims anew",
        own_stream=True,
    ),
    FaultKind(
        "orchestrator_outage",
        Target.NONE,
        "orchestrator_heal",
        "every call of the VM orchestrator and the host directory (the cloud's database and"
        " API) fails with a connection error (the SQL work queue still answers)",
    ),
    FaultKind(
        "orchestrator_heal",
        Target.NONE,
        None,
        "the VM orchestrator and the host directory answer again",
    ),
)
"""Every fault kind, in the order of the docs table."""

_BY_NAME = {f.name: f for f in FAULTS}
FAULT_KINDS = frozenset(_BY_NAME)
"""Every fault kind name the scenario format knows."""
BREAKING = tuple(f for f in FAULTS if not f.is_heal and not f.one_shot)
"""The kinds that break something (each names its heal)."""


def by_name(name: str) -> FaultKind:
    """The fault kind called ``name`` (``KeyError`` if there is none)."""
    return _BY_NAME[name]


def _check() -> None:
    for fault in FAULTS:
        if fault.one_shot and fault.heal is not None:
            raise AssertionError(f"fault {fault.name}: a one-shot fault has no heal")
        if fault.heal is not None:
            healer = _BY_NAME.get(fault.heal)
            if healer is None or not healer.is_heal or healer.target is not fault.target:
                raise AssertionError(f"fault {fault.name}: bad heal {fault.heal!r}")
    for fault in FAULTS:
        if fault.is_heal and not any(f.heal == fault.name for f in FAULTS):
            raise AssertionError(f"heal {fault.name} heals nothing")


_check()


def render_table() -> str:
    """The fault table of docs/simulator.md (Markdown), from :data:`FAULTS`."""
    lines = ["| Kind | Target | Heals with | Effect |", "|---|---|---|---|"]
    for fault in FAULTS:
        heal = f"`{fault.heal}`" if fault.heal else "—"
        effect = fault.doc if fault.simulated else f"{fault.doc} (not simulated yet)"
        lines.append(f"| `{fault.name}` | {fault.target.doc} | {heal} | {effect} |")
    return "\n".join(lines) + "\n"
