"""Helpers shared by the simulation tests: reading the JSON document."""

from __future__ import annotations

from typing import Any

CLEAN = {
    "double_run": 0,
    "fenced_alive_host": 0,
    "down_with_running_vms": 0,
    "lost_work": 0,
    "unrecovered_ha_vm": 0,
}
"""Every invariant at 0."""


def events(doc: dict[str, Any], kind: str, **match: Any) -> list[dict[str, Any]]:
    """The events of ``kind`` whose fields equal ``match``, in time order."""
    return [
        e
        for e in doc["events"]
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())
    ]


def down_time(doc: dict[str, Any], host: str) -> float:
    """When ``host`` went Down (it must have, once)."""
    (down,) = events(doc, "host_status", host=host, to="Down")
    return float(down["t"])


def first_restart(doc: dict[str, Any], host: str = "h2") -> float:
    """When the first HA VM of ``host`` (the ``vm2…`` VMs) ran on another host."""
    return min(
        float(e["t"])
        for e in events(doc, "vm_state", state="Running")
        if e["vm"].startswith("vm2") and e["host"] != host
    )
