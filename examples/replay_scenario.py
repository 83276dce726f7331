"""Replay a scenario on the simulator and read its result document from Python.

Run: ``python examples/replay_scenario.py [SCENARIO.toml]`` (a few seconds;
default ``examples/scenarios/single-host-crash.toml``).

``cloudha simulate`` prints a timeline; the same run from Python gives the
JSON document as a dict (docs/simulator.md, "The JSON document"): every
decision as an event, the final state of each host and VM, and the invariant
counts. This example:

1. loads the scenario (``cloudha.testing.load_scenario``: a bad file is one
   ``ScenarioError`` naming the file, line and key) and runs it
   (``cloudha.testing.simulate``: the real ``ManagementServer`` on virtual
   time, deterministic for a seed);
2. checks the invariants and prints where each VM ended up;
3. measures, for each HA VM on a host that failed, how long after the fault it
   ran again, on which host, and which witness proved its host dead;
4. asks "what if every host had a BMC?": the same scenario with
   ``oobm = "ipmi"`` on each host, edited as data and validated by
   ``cloudha.testing.parse_scenario``, and compares the recovery times.

It exits with status 1 when an invariant is violated or an HA VM was not
recovered, so it can guard a configuration in CI.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from cloudha import ScenarioError
from cloudha.testing import Scenario, load_scenario, parse_scenario, simulate

DEFAULT = Path(__file__).parent / "scenarios" / "single-host-crash.toml"
HOST_FAULTS = {"host_crash", "host_hang"}  # faults that take a host's VMs down


def recoveries(scenario: Scenario, doc: dict[str, Any]) -> dict[str, tuple[float, str, str]]:
    """HA VM -> (seconds from its host's fault to running again, where, who proved it dead)."""
    home = {vm.id: vm.host for vm in scenario.vms if vm.ha}
    failed_at: dict[str, float] = {}  # host -> when its first fault struck
    proved_by: dict[str, str] = {}  # host -> the witness or fencer that proved it dead
    found: dict[str, tuple[float, str, str]] = {}
    for event in doc["events"]:  # in time order
        kind, host = event["kind"], event.get("host")
        if kind == "fault" and event["fault"] in HOST_FAULTS and host is not None:
            failed_at.setdefault(host, event["t"])
        elif kind == "investigation" and event.get("result") == "Down" and host is not None:
            proved_by.setdefault(host, str(event.get("decided_by")))
        elif kind == "suspicion" and event.get("outcome") == "FENCED" and host is not None:
            proved_by.setdefault(host, str(event.get("fencer")))  # fence on suspicion
        elif kind == "vm_state" and event["state"] == "Running" and event["vm"] in home:
            vm, origin = event["vm"], home[event["vm"]]
            if origin in failed_at and vm not in found:
                seconds = event["t"] - failed_at[origin]
                found[vm] = (seconds, str(host), proved_by.get(origin, "?"))
    return found


def with_bmcs(path: Path) -> Scenario | None:
    """The scenario at ``path`` with a simulated BMC on every host (None: all have one)."""
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    hosts = data.get("hosts", [])
    if all(h.get("oobm", "none") != "none" for h in hosts):
        return None
    for host in hosts:
        if host.get("oobm", "none") == "none":
            host["oobm"] = "ipmi"
    return parse_scenario(data, source=f"{path} with BMCs")


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(f"replay_scenario: {exc}", file=sys.stderr)
        return 2
    doc = simulate(scenario)
    info = doc["scenario"]
    print(
        f"{path.name}: {info['hosts']} hosts, {info['vms']} VMs, {len(doc['events'])} events"
        f" in {info['until']:.0f} virtual seconds"
    )

    broken = {name: count for name, count in doc["invariants"].items() if count}
    print("invariants hold" if not broken else f"invariants violated: {broken}")
    ended = doc["final"]["vms"]
    for vm_id, vm in sorted(ended.items())[:10]:  # the first ten
        print(f"  {vm_id}: {vm['state']} on {vm['host']}")
    if len(ended) > 10:
        print(f"  ... and {len(ended) - 10} more VMs")
    hosts = doc["final"]["hosts"]
    down = sorted(h for h, state in hosts.items() if state["status"] == "Down")
    shown = ", ".join(down[:10]) + (f" and {len(down) - 10} more" if len(down) > 10 else "")
    print(f"hosts Down at the end: {shown or 'none'}")

    measured = recoveries(scenario, doc)
    failed = [vm for vm in scenario.vms if vm.ha and ended[vm.id]["state"] != "Running"]
    for vm_id, (seconds, host, proof) in sorted(measured.items())[:10]:
        print(f"{vm_id} ran again on {host} {seconds:.0f}s after its host failed ({proof})")
    if measured:
        slowest = max(seconds for seconds, _, _ in measured.values())
        print(f"HA VMs recovered: {len(measured)}, the slowest {slowest:.0f}s after its fault")

    other = with_bmcs(path)
    if other is None:
        print("every host already has a BMC")
    else:
        faster = recoveries(other, simulate(other))
        for vm_id, (seconds, _, proof) in sorted(faster.items())[:10]:
            before = measured.get(vm_id)
            was = f"instead of {before[0]:.0f}s" if before else "(not recovered without)"
            print(f"with a BMC on every host: {vm_id} back after {seconds:.0f}s {was} ({proof})")
    return 1 if broken or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
