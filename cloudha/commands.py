"""The agent commands cloudha's investigators send, and how their answers read.

Commands travel through the :class:`~cloudha.ports.AgentGateway` port as a
name and JSON-able parameters; an orchestrator's agent (or cloudha's own SSH
gateway, :mod:`cloudha.transport.gateway`) runs them on the host. Answers
carry explicit verdicts in ``Answer.data``, never CloudStack's inverted
booleans (where ``result=false`` meant "the heart is beating"):

* ``CheckOnHostCommand`` (``host_id``, ``host_ip``, ``fail_on_one_pool``):
  ``result`` is True when the check ran and ``data`` is a heartbeat report
  (:meth:`cloudha.heartbeat.HeartbeatReport.to_dict`) whose ``verdict`` is
  ALIVE, DEAD or UNKNOWN.
* ``CheckVirtualMachineCommand`` (``vm_name``): ``data["power_state"]`` is a
  :class:`~cloudha.model.VmPowerState` value.
* ``PingTestCommand`` (``ip``, and ``router_ip`` to ping through a router):
  ``result`` is True when ``ip`` answered, False when the ping ran and got no
  reply.

A gateway that cannot run a command at all answers ``result=False`` with
``data["supported"] = False`` (:data:`UNSUPPORTED`): that is no answer, never
"the ping got no reply" (:func:`answer_reached`).
* ``CheckVMActivityOnStoragePoolCommand`` (``host_id``, ``host_ip``,
  ``pool_id``, ``mount_point``, ``volumes``, ``suspect_time``, ``watchdog``):
  Host-HA's VM activity check (spec §6.4), run by a neighbour that mounts the
  pool. ``result`` is True when the check ran and ``data`` is an activity
  report (:meth:`cloudha.heartbeat.ActivityReport.to_dict`) whose ``verdict``
  is ALIVE (activity seen), DEAD (none) or UNKNOWN; read it with
  :func:`answer_verdict`.
* ``FenceCommand`` (``vm_name``, ``host_id``, ``host_ip``): for hypervisors
  whose agents fence a neighbour's VM themselves (XenServer): ``result`` is
  True only when the VM was fenced off. KVM does not use it: KVM "fencing"
  is proof through the storage heartbeat, the CheckOnHost command above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cloudha.investigators.base import Verdict
from cloudha.model import Host, Pool, Vm, VmPowerState
from cloudha.ports import Answer, Command

__all__ = [
    "CHECK_ON_HOST",
    "CHECK_VM",
    "CHECK_VM_ACTIVITY",
    "FENCE",
    "PING_TEST",
    "UNSUPPORTED",
    "answer_power_state",
    "answer_reached",
    "answer_verdict",
    "check_on_host",
    "check_vm",
    "check_vm_activity",
    "fence",
    "ping_test",
]

CHECK_ON_HOST = "CheckOnHostCommand"
CHECK_VM = "CheckVirtualMachineCommand"
CHECK_VM_ACTIVITY = "CheckVMActivityOnStoragePoolCommand"
PING_TEST = "PingTestCommand"
FENCE = "FenceCommand"


def check_on_host(target: Host, *, fail_on_one_pool: bool) -> Command:
    """Ask an agent to read ``target``'s storage heartbeat on its own pools."""
    return Command(
        CHECK_ON_HOST,
        {"host_id": target.id, "host_ip": target.private_ip, "fail_on_one_pool": fail_on_one_pool},
    )


def check_vm_activity(
    target: Host, pool: Pool, volumes: Sequence[str], *, suspect_time: float
) -> Command:
    """Ask a neighbour mounting ``pool`` for signs of life of ``target`` there since
    ``suspect_time`` (epoch seconds): its heartbeat, or writes to ``volumes``."""
    return Command(
        CHECK_VM_ACTIVITY,
        {
            "host_id": target.id,
            "host_ip": target.private_ip,
            "pool_id": pool.id,
            "mount_point": pool.mount_point,
            "volumes": list(volumes),
            "suspect_time": float(suspect_time),
            "watchdog": target.watchdog,
        },
    )


def check_vm(vm: Vm) -> Command:
    """Ask the VM's host for the VM's power state."""
    return Command(CHECK_VM, {"vm_name": vm.name})


def ping_test(ip: str, *, router_ip: str | None = None) -> Command:
    """Ask an agent whether ``ip`` answers (through ``router_ip`` when given)."""
    params: dict[str, Any] = {"ip": ip}
    if router_ip is not None:
        params["router_ip"] = router_ip
    return Command(PING_TEST, params)


def fence(vm: Vm, target: Host) -> Command:
    """Ask a neighbour's agent to fence ``vm`` off ``target``."""
    return Command(FENCE, {"vm_name": vm.name, "host_id": target.id, "host_ip": target.private_ip})


def answer_verdict(answer: Answer) -> tuple[Verdict, str]:
    """The verdict and reason in a CheckOnHost answer; UNKNOWN when it has none.

    A failed command or a malformed answer is UNKNOWN (never DEAD), with the
    reason saying what was wrong.
    """
    if not answer.result:
        return Verdict.UNKNOWN, f"check failed: {answer.details or 'no details'}"
    raw = _get(answer.data, "verdict")
    try:
        verdict = Verdict(raw)
    except ValueError:
        return Verdict.UNKNOWN, f"answer has no valid verdict: {raw!r}"
    reason = _get(answer.data, "reason")
    return verdict, reason if isinstance(reason, str) and reason else answer.details


UNSUPPORTED: Mapping[str, Any] = {"supported": False}
"""The ``data`` of an answer from a gateway that cannot run the command."""


def answer_reached(answer: Answer) -> bool | None:
    """A PingTest answer: True (the address answered), False (no reply), None (not run)."""
    if _get(answer.data, "supported") is False:
        return None
    return bool(answer.result)


def answer_power_state(answer: Answer) -> VmPowerState | None:
    """The power state in a CheckVirtualMachine answer, or None when it has none."""
    if not answer.result:
        return None
    try:
        return VmPowerState(_get(answer.data, "power_state"))
    except ValueError:
        return None


def _get(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key) if isinstance(data, Mapping) else None
