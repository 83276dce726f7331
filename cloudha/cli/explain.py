"""``cloudha explain``: the chain of decisions about a host or VM, from an SQL evidence store.

Exit status: 0 with the chain printed; 2 when the store holds nothing about
the subject; 3 when the database cannot be opened or read (a bad URL, a
missing file or table, an unreachable server). Each failure is one line on
stderr.
"""

from __future__ import annotations

import json
from typing import Any, Final

import click

from cloudha.cli.look import EXIT_DATABASE, EXIT_USAGE, emit_json, fail
from cloudha.errors import CloudHAError

__all__ = ["EXIT_DATABASE", "EXIT_UNKNOWN_SUBJECT", "explain", "format_decision"]

EXIT_UNKNOWN_SUBJECT: Final = EXIT_USAGE
"""The evidence store holds no record about the subject (:data:`~cloudha.cli.look.EXIT_USAGE`)."""

_HEADER: Final = frozenset({"t", "at", "kind", "actor", "host", "vm", "reason", "findings"})


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def format_decision(event: dict[str, Any]) -> list[str]:
    """One decision (a flat event with ``at``) as lines of text: header, why, facts, findings."""
    about = " ".join(f"{key} {event[key]}" for key in ("host", "vm") if event.get(key) is not None)
    lines = [
        f"t={event['t']:.3f}s  {event.get('at', '')}  {event['kind']}  {about}  by {event['actor']}"
    ]
    if event.get("reason"):
        lines.append(f"  why: {event['reason']}")
    facts = [f"{key}={_value(value)}" for key, value in event.items() if key not in _HEADER]
    if facts:
        lines.append("  " + "  ".join(facts))
    for finding in event.get("findings") or ():
        if not isinstance(finding, dict):
            lines.append(f"  - {_value(finding)}")
            continue
        rest = {k: v for k, v in finding.items() if k not in ("source", "verdict", "reason")}
        line = f"  - {finding.get('source')}: {finding.get('verdict')}: {finding.get('reason', '')}"
        if rest:
            line += "  " + "  ".join(f"{key}={_value(value)}" for key, value in rest.items())
        lines.append(line)
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@click.command()
@click.argument("subject")
@click.option(
    "--db",
    "url",
    required=True,
    metavar="URL",
    help="The evidence database, e.g. sqlite:////var/lib/cloudha/evidence.db.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"subject": ..., "decisions": [...]} alone on stdout.',
)
def explain(subject: str, url: str, as_json: bool) -> None:
    """Print the chain of decisions about SUBJECT (a host or VM id) stored in --db.

    Each decision shows its time (monotonic t and UTC wall time), who decided,
    what, why (the rule that fired), its facts and thresholds, and for an
    investigation every witness's answer. Exit status 2: nothing is stored
    about SUBJECT; 3: the database cannot be opened or read.
    """
    from cloudha.clock import SystemClock
    from cloudha.evidence_store import SqlEvidenceStore, open_engine

    try:
        engine = open_engine(url, must_exist=True)
    except CloudHAError as exc:
        fail("explain", exc, EXIT_DATABASE)
    try:
        store = SqlEvidenceStore(engine, SystemClock(), create=False)
        chain = store.decisions_about(subject)
        known = store.subjects() if not chain else {}
    except CloudHAError as exc:
        fail("explain", exc, EXIT_DATABASE)
    finally:
        engine.dispose()
    if not chain:
        where = engine.url.render_as_string(hide_password=True)
        hosts, vms = len(known.get("hosts", ())), len(known.get("vms", ()))
        fail(
            "explain",
            f"no evidence about {subject!r} in {where} (it holds evidence about"
            f" {_count(hosts, 'host')} and {_count(vms, 'VM')})",
            EXIT_UNKNOWN_SUBJECT,
        )
    decisions = [record.to_event(wall=True) for record in chain]
    if as_json:
        emit_json({"subject": subject, "decisions": decisions})
        return
    click.echo(f"{subject}: {len(decisions)} decisions")
    for event in decisions:
        click.echo("")
        for line in format_decision(event):
            click.echo(line)
