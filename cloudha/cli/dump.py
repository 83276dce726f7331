"""``cloudha dump``: a management server's desired against actual state, and their freshness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import click

from cloudha.cli.look import EXIT_USAGE, console, emit_json, fail, table
from cloudha.errors import CloudHAError

__all__ = ["dump"]


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--at",
    "at",
    type=click.FloatRange(min=0.0),
    required=True,
    metavar="T",
    help="Virtual second at which to look (the run stops there).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document alone on stdout.")
def dump(scenario: Path, at: float, as_json: bool) -> None:
    """Run SCENARIO up to --at T and print what its management server believes (desired:
    the host directory and the orchestrator) against what it sees (actual: pings, agents,
    BMCs), with the freshness of each.

    Exit status: 0, or 2 for a bad scenario or no management server running at T.
    """
    from cloudha.testing.scenario import load_scenario
    from cloudha.testing.simulator import Simulation

    try:
        loaded = load_scenario(scenario)
        simulation = Simulation(attrs.evolve(loaded, until=at))
        simulation.run()
    except CloudHAError as exc:
        fail("dump", exc, EXIT_USAGE)
    ms = simulation.ms
    if ms is None or not ms.alive:
        fail("dump", f"{scenario}: no management server is running at {at:g} s", EXIT_USAGE)
    document = ms.server.dump()
    if ms.paused:
        document["paused"] = True
    if as_json:
        emit_json(document)
        return
    _print(document)


def _fresh(flag: Any) -> str:
    return {True: "[green]fresh[/green]", False: "[red]not fresh[/red]"}.get(flag, "not evaluated")


def _print(document: dict[str, Any]) -> None:
    out = console()
    judging = "judging" if document["judging"] else "[red]not judging[/red]"
    out.print(
        f"{document['server']} at t={document['t']:g} s ({document['at']}): {judging}"
        + (" [red](paused)[/red]" if document.get("paused") else "")
    )
    freshness = document.get("freshness") or {}
    for reason in freshness.get("reasons", []):
        out.print(f"  not fresh: {reason}")
    desired = document["desired"]
    actual = document["actual"]
    rows = []
    for host_id, seen in actual["hosts"].items():
        row = desired["hosts"].get(host_id, {})
        vms = ", ".join(f"{vm} {state}" for vm, state in sorted(row.get("vms", {}).items()))
        since = seen["since_last_ping"]
        rows.append(
            (
                host_id,
                str(row.get("status", "?")),
                str(row.get("owner") or "-"),
                vms or "-",
                "not monitored" if since is None else f"{since:.1f}",
                str(seen["power"] or "-"),
            )
        )
    out.print(
        table(
            f"desired ({_fresh(desired['fresh'])}) against actual ({_fresh(actual['fresh'])})",
            ["host", "status", "owner", "VMs", "last ping (s ago)", "power"],
            rows,
        )
    )
    if desired.get("error"):
        out.print(f"[red]the directory did not answer: {desired['error']}[/red]")
