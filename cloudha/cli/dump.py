"""``cloudha dump``: a management server's desired against actual state, and their freshness."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs
import click

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
        click.echo(f"cloudha dump: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    ms = simulation.ms
    if ms is None or not ms.alive:
        click.echo(
            f"cloudha dump: {scenario}: no management server is running at {at:g} s", err=True
        )
        sys.exit(2)
    document = ms.server.dump()
    if ms.paused:
        document["paused"] = True
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    _print(document)


def _fresh(flag: Any) -> str:
    return {True: "[green]fresh[/green]", False: "[red]not fresh[/red]"}.get(flag, "not evaluated")


def _print(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    judging = "judging" if document["judging"] else "[red]not judging[/red]"
    console.print(
        f"{document['server']} at t={document['t']:g} s ({document['at']}): {judging}"
        + (" [red](paused)[/red]" if document.get("paused") else "")
    )
    freshness = document.get("freshness") or {}
    for reason in freshness.get("reasons", []):
        console.print(f"  not fresh: {reason}")
    desired = document["desired"]
    actual = document["actual"]
    table = Table(
        title=f"desired ({_fresh(desired['fresh'])}) against actual ({_fresh(actual['fresh'])})"
    )
    for column in ("host", "status", "owner", "VMs", "last ping (s ago)", "power"):
        table.add_column(column)
    for host_id, seen in actual["hosts"].items():
        row = desired["hosts"].get(host_id, {})
        vms = ", ".join(f"{vm} {state}" for vm, state in sorted(row.get("vms", {}).items()))
        since = seen["since_last_ping"]
        table.add_row(
            host_id,
            str(row.get("status", "?")),
            str(row.get("owner") or "-"),
            vms or "-",
            "not monitored" if since is None else f"{since:.1f}",
            str(seen["power"] or "-"),
        )
    console.print(table)
    if desired.get("error"):
        console.print(f"[red]the directory did not answer: {desired['error']}[/red]")
