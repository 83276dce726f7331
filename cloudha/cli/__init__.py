"""The ``cloudha`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from cloudha.cli import config as _config
from cloudha.cli import demo as _demo
from cloudha.cli import dump as _dump
from cloudha.cli import explain as _explain
from cloudha.cli import fleet as _fleet
from cloudha.cli import heartbeat as _heartbeat
from cloudha.cli import plot as _plot
from cloudha.cli import queue as _queue
from cloudha.cli import run as _run
from cloudha.cli.look import (
    EXIT_DATABASE,
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    emit_json,
    fail,
    table,
)
from cloudha.errors import CloudHAError, ConfigurationError, StoreError

__all__ = ["main"]

_SHOWN_KINDS = frozenset(
    {"fault", "host_status", "alert", "ha_scheduled", "grace", "fence", "ha_work", "vm_state"}
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cloudha", prog_name="cloudha")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """cloudha: host availability for cloud orchestrators."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s"
    )


main.add_command(_heartbeat.heartbeat)
main.add_command(_dump.dump)
main.add_command(_explain.explain)
main.add_command(_demo.demo)
main.add_command(_queue.queue)
main.add_command(_run.run)
main.add_command(_fleet.status)
main.add_command(_fleet.hosts)
main.add_command(_config.config)


@main.command()
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document alone on stdout.")
@click.option(
    "--all-events",
    is_flag=True,
    help="Show every evidence record in the timeline, not only changes.",
)
@click.option("--check", is_flag=True, help="Exit with status 1 when an invariant is violated.")
@click.option(
    "--evidence-db",
    "evidence_db",
    metavar="URL",
    help="Also store the evidence in this (empty) SQL database, for cloudha explain.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also draw the timeline picture into FILE (.svg or .png; the plot extra).",
)
@click.option(
    "--campaign",
    type=click.IntRange(min=0),
    metavar="N",
    help="Run N random fault scenarios instead of SCENARIO (docs/reliability.md).",
)
@click.option(
    "--fuzz",
    type=click.IntRange(min=0),
    metavar="N",
    help="Feed N malformed scenario files to this command and check each fails cleanly.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of --campaign/--fuzz.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    metavar="J",
    help="Processes for --campaign/--fuzz (default: every CPU).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write each violation's shrunk scenario (TOML) to DIR.",
)
@click.option(
    "--no-shrink",
    "no_shrink",
    is_flag=True,
    help="Keep each violating --campaign scenario whole (faster).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds each --fuzz case may take.",
)
def simulate(
    scenario: Path | None,
    as_json: bool,
    all_events: bool,
    check: bool,
    evidence_db: str | None,
    plot: Path | None,
    campaign: int | None,
    fuzz: int | None,
    seed: int,
    jobs: int | None,
    out: Path | None,
    no_shrink: bool,
    timeout: float,
) -> None:
    """Run SCENARIO (a TOML file) on virtual time and report what happened.

    With --campaign N, run N random scenarios from --seed instead, and exit
    with status 1 if any violates an invariant.

    Exit status: 0 done; 1 an invariant violated (with --check, or in a
    campaign or fuzz run); 2 a bad scenario or options; 3 the --evidence-db
    database cannot be opened or written.
    """
    modes = sum(x is not None for x in (scenario, campaign, fuzz))
    if modes != 1:
        fail("simulate", "give exactly one of SCENARIO, --campaign N or --fuzz N", EXIT_USAGE)
    if evidence_db is not None and scenario is None:
        fail("simulate", "--evidence-db goes with SCENARIO only", EXIT_USAGE)
    _plot.check_plot(plot, scenario=scenario)
    if campaign is not None or fuzz is not None:
        _campaign(
            campaign,
            fuzz,
            seed=seed,
            jobs=jobs,
            out=out,
            as_json=as_json,
            timeout=timeout,
            shrinking=not no_shrink,
        )
        return
    assert scenario is not None
    from cloudha.testing.scenario import load_scenario
    from cloudha.testing.simulator import simulate as run
    from cloudha.testing.simulator import to_json

    try:
        loaded = load_scenario(scenario)
        document = run(loaded) if evidence_db is None else _run_into(loaded, evidence_db)
    except StoreError as exc:  # the evidence database
        fail("simulate", exc, EXIT_DATABASE)
    except CloudHAError as exc:
        fail("simulate", exc, EXIT_USAGE)
    _plot.write_plot(document, plot)
    if as_json:
        click.echo(to_json(document), nl=False)
    else:
        _print_timeline(document, all_events=all_events)
    if check and any(document["invariants"].values()):
        sys.exit(EXIT_FAILED)


def _run_into(loaded: Any, url: str) -> dict[str, Any]:
    """Run the ``loaded`` scenario with its evidence also stored at ``url`` (which must hold
    none yet). Raises StoreError when the database cannot be opened or written, and
    ConfigurationError when it holds evidence already."""
    from cloudha.evidence_store import SqlEvidenceStore, open_engine
    from cloudha.testing.simulator import Simulation

    try:
        engine = open_engine(url)
    except CloudHAError as exc:
        raise StoreError(f"--evidence-db: {exc}") from exc
    try:
        sim = Simulation(loaded)
        store = SqlEvidenceStore.from_settings(engine, sim.clock, sim.settings)
        where = engine.url.render_as_string(hide_password=True)
        if held := len(store):  # the wrong database given: bad input, not a database fault
            raise ConfigurationError(
                f"{where} already holds {held} evidence records; simulate fills an empty"
                " evidence store (give another database)"
            )
        sim.timeline.sinks.append(store)
        document = sim.run()
        store.close()
        if store.pending or store.dropped:
            raise StoreError(
                f"{where}: {store.pending + store.dropped} of the simulation's evidence"
                " records could not be stored (see the log with -v)"
            )
        return document
    finally:
        engine.dispose()


def _campaign(
    campaign: int | None,
    fuzz: int | None,
    *,
    seed: int,
    jobs: int | None,
    out: Path | None,
    as_json: bool,
    timeout: float,
    shrinking: bool,
) -> None:
    import time

    from cloudha.testing.campaign import run_campaign, run_fuzz

    started = time.monotonic()
    try:
        if campaign is not None:
            result = run_campaign(campaign, seed, jobs=jobs, out=out, shrinking=shrinking)
        else:
            assert fuzz is not None
            result = run_fuzz(fuzz, seed, jobs=jobs, out=out, timeout=timeout)
    except OSError as exc:
        fail("simulate", f"{out}: {exc.strerror or exc}", EXIT_USAGE)
    elapsed = time.monotonic() - started
    if as_json:
        emit_json(result)
    else:
        what = "fault campaign" if campaign is not None else "fuzz"
        click.echo(
            f"{what}: {result['runs']} runs from seed {seed} in {elapsed:.1f}s:"
            f" {len(result['violations'])} violations"
        )
        for name, count in result["by_invariant"].items():
            click.echo(f"  {name}: {count}")
        for violation in result["violations"]:
            shown = violation["scenario"] if out is not None else "(use --out DIR to keep it)"
            click.echo(f"  seed {violation['seed']}: {violation['invariant']} {shown}")
    if result["violations"]:
        sys.exit(EXIT_FAILED)


def _summary(event: dict[str, Any]) -> str:
    kind = event["kind"]
    if kind == "host_status":
        return f"{event.get('from')} -> {event.get('to')}  ({event.get('event')})"
    if kind == "fault":
        target = f" {event['target']}" if event.get("target") else ""
        return f"{event['fault']}{target} [{event['status']}]"
    if kind == "investigation":
        return (
            f"result={event.get('result')} action={event.get('action')}: {event.get('reason', '')}"
        )
    if kind == "alert":
        return str(event.get("subject", ""))
    if kind == "vm_state":
        return f"{event.get('vm')} {event.get('state')}"
    if kind == "ha_work":
        return (
            f"{event.get('vm')} {event.get('type')} {event.get('step')}: {event.get('reason', '')}"
        )
    if kind == "fence":
        outcome = f"{event.get('fencer')} {event.get('outcome')}"
        return f"{event.get('vm')} {outcome}: {event.get('reason', '')}"
    if kind == "suspicion":
        if not event.get("qualifies"):
            return str(event.get("reason", ""))
        return f"fence on suspicion {event.get('outcome')}: {event.get('reason', '')}"
    return str(event.get("reason", ""))


def _print_timeline(document: dict[str, Any], *, all_events: bool) -> None:
    out = console()
    meta = document["scenario"]
    rows = []
    hidden = 0
    for event in document["events"]:
        shown = event["kind"] in _SHOWN_KINDS or (
            event["kind"] == "suspicion" and event.get("qualifies")  # a fence on suspicion
        )
        if not all_events and not shown:
            hidden += 1
            continue
        who = event.get("host") or event.get("vm") or event.get("target") or ""
        rows.append((f"{event['t']:.1f}", event["kind"], str(who), _summary(event)))
    out.print(
        table(
            f"{meta['source']}: {meta['hosts']} hosts, {meta['vms']} VMs, seed {meta['seed']}",
            [">t (s)", "kind", "host/vm", "what"],
            rows,
        )
    )
    if hidden:
        out.print(
            f"({hidden} more evidence records: behind-on-ping checks and investigations;"
            " --all-events shows them)"
        )
    final = document["final"]["hosts"]
    counts: dict[str, int] = {}
    for host in final.values():
        key = f"{host['status']}/{host['power']}"
        counts[key] = counts.get(key, 0) + 1
    out.print("Hosts at the end: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    vms = document["final"]["vms"]
    running = sum(1 for vm in vms.values() if vm["state"] == "Running")
    out.print(f"VMs at the end: {running} running, {len(vms) - running} stopped")
    invariants = document["invariants"]
    bad = {k: v for k, v in invariants.items() if v}
    if bad:
        out.print(
            "[red]Invariant violations: " + ", ".join(f"{k}={v}" for k, v in bad.items()) + "[/red]"
        )
    else:
        out.print("[green]Invariants hold: " + ", ".join(invariants) + "[/green]")
