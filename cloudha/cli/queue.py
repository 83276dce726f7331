"""``cloudha queue``: list, retry and cancel the works of the HA work queue (``op_ha_work``).

Every subcommand opens the queue's database with ``--db URL`` (the database a
management server's ``engine`` or ``cloudha run --db`` uses). ``retry`` and
``cancel`` record an ``ha_work`` evidence record of the operator's action in
the evidence store (``--evidence-db``, by default the same database), so
``cloudha explain VM --db URL`` shows who sent the work back or cancelled it.

Exit status (docs/cli.md): 0 done; 1 a retry or cancel was refused for at
least one work (the others were done); 2 bad input, or an unknown work id
(then nothing is changed); 3 the database cannot be opened or read.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

import click

from cloudha.cli.look import (
    EXIT_DATABASE,
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    emit_json,
    fail,
    iso,
    one_line,
    span,
    table,
)
from cloudha.clock import Clock, SystemClock
from cloudha.errors import CloudHAError, StoreError
from cloudha.ha.work import (
    QueueState,
    UnknownWorkError,
    UnreadableWorkError,
    Work,
    WorkRefusedError,
    WorkType,
    queue_state,
)

__all__ = ["queue", "work_document"]

log = logging.getLogger("cloudha.queue")

_STATES: Final = {
    "pending": (QueueState.PENDING,),
    "error": (QueueState.ERROR,),
    "cancelled": (QueueState.CANCELLED,),
    "done": (QueueState.DONE,),
    "all": tuple(QueueState),
}


def _epoch_iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def work_document(work: Work, now: dt.datetime) -> dict[str, Any]:
    """One work as ``cloudha queue list --json`` prints it (times ISO 8601 UTC, ages in seconds)."""
    now_s = now.timestamp()
    state = queue_state(work.step)
    return {
        "id": work.id,
        "vm": work.instance_id,
        "type": str(work.type),
        "step": str(work.step),
        "state": str(state),
        "host": work.host_id,
        "server": work.mgmt_server_id,
        "held": state is QueueState.PENDING and work.mgmt_server_id is not None,
        "tried": work.tried,
        "next_attempt": _epoch_iso(work.time_to_try) if state is QueueState.PENDING else None,
        "due_in": round(work.time_to_try - now_s, 3) if state is QueueState.PENDING else None,
        "created": iso(work.created),
        "age": round(now_s - work.created.timestamp(), 3),
        "taken": iso(work.taken),
        "reason": str(work.reason),
        "vm_type": str(work.vm_type),
        "previous_state": str(work.previous_state),
        "priority": work.priority,
        "generation": work.generation,
    }


def _next_attempt(doc: dict[str, Any]) -> str:
    if doc["state"] != str(QueueState.PENDING):
        return "-"
    if doc["held"]:
        return "held"
    due_in = doc["due_in"]
    return "now" if due_in <= 0 else f"in {span(due_in)}"


def _open(command: str, url: str) -> Any:
    """The queue's :class:`~cloudha.ha.store.SqlWorkStore` at ``url``; exit 3 when it cannot be."""
    import sqlalchemy as sa
    import sqlalchemy.exc

    from cloudha.evidence_store import open_engine
    from cloudha.ha.store import SqlWorkStore, op_ha_work

    try:
        engine = open_engine(url, must_exist=True, holds="the HA work queue")
    except CloudHAError as exc:
        fail(command, exc, EXIT_DATABASE)
    where = engine.url.render_as_string(hide_password=True)
    try:
        present = sa.inspect(engine).has_table(op_ha_work.name)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        fail(command, f"{where}: {_driver_message(exc)}", EXIT_DATABASE)
    if not present:
        engine.dispose()
        fail(
            command,
            f"{where}: no {op_ha_work.name} table: not an HA work queue"
            " (a management server creates it; cloudha.ha.store.upgrade migrates it)",
            EXIT_DATABASE,
        )
    try:
        return SqlWorkStore(engine, _clock())
    except CloudHAError as exc:
        engine.dispose()
        fail(command, f"{where}: {exc}", EXIT_DATABASE)


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {lines[0] if lines else ''}"


def _clock() -> Clock:
    return SystemClock()


def _default_operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "operator"
    return f"{user}@{socket.gethostname()}"


_db_option = click.option(
    "--db",
    "url",
    required=True,
    metavar="URL",
    help="The HA work queue's database, e.g. sqlite:////var/lib/cloudha/cloudha.db.",
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON document alone on stdout."
)


@click.group()
def queue() -> None:
    """List, retry or cancel the works of the HA work queue (docs/cli.md)."""


@queue.command(name="list")
@_db_option
@click.option(
    "--state",
    "states",
    type=click.Choice(list(_STATES), case_sensitive=False),
    multiple=True,
    help="Works in this state (repeatable; default: pending and error).",
)
@click.option("--host", "host_id", metavar="HOST", help="Only the works of this host.")
@click.option("--vm", "instance_id", metavar="VM", help="Only the works of this VM.")
@click.option(
    "--type",
    "work_type",
    type=click.Choice([t.value for t in WorkType], case_sensitive=False),
    help="Only works of this type.",
)
@_json_option
def list_(
    url: str,
    states: tuple[str, ...],
    host_id: str | None,
    instance_id: str | None,
    work_type: str | None,
    as_json: bool,
) -> None:
    """List the works of the queue, oldest first: pending and Error ones unless --state says.

    Error works are kept by design (a restart given up on, a row quarantined);
    this is where an operator sees them, to retry or cancel them.
    """
    command = "queue list"
    chosen = {s for name in (states or ("pending", "error")) for s in _STATES[name.lower()]}
    kind = None
    if work_type is not None:
        kind = next(t for t in WorkType if t.value.lower() == work_type.lower())
    store = _open(command, url)
    try:
        listing = store.list_works(
            states=chosen, host_id=host_id, instance_id=instance_id, type=kind
        )
    except StoreError as exc:
        fail(command, f"{_where(store)}: {exc}", EXIT_DATABASE)
    finally:
        store.engine.dispose()
    now = _clock().now()
    works = [work_document(work, now) for work in listing.works]
    unreadable = [_unreadable(exc) for exc in listing.unreadable]
    if as_json:
        emit_json({"works": works, "unreadable": unreadable})
        return
    shown = console()
    title = f"{len(works)} works ({', '.join(sorted(str(s) for s in chosen)) or 'none'})"
    shown.print(
        table(
            title,
            [">id", "VM", "type", "step", "host", "server", ">tried", "next", ">age"],
            (
                (
                    doc["id"],
                    doc["vm"],
                    doc["type"],
                    doc["step"],
                    doc["host"] or "-",
                    doc["server"] or "-",
                    doc["tried"],
                    _next_attempt(doc),
                    span(doc["age"]),
                )
                for doc in works
            ),
        )
    )
    for row in unreadable:
        shown.print(
            f"[red]row {row['id']} is unreadable: unknown {row['column']} {row['value']!r}"
            " (edited by hand; correct or delete it)[/red]"
        )


def _unreadable(exc: UnreadableWorkError) -> dict[str, Any]:
    return {"id": exc.work_id, "column": exc.column, "value": exc.value}


def _where(store: Any) -> str:
    return str(store.engine.url.render_as_string(hide_password=True))


_ids_argument = click.argument("work_ids", metavar="WORK_ID...", nargs=-1, required=True, type=int)
_evidence_option = click.option(
    "--evidence-db",
    "evidence_url",
    metavar="URL",
    help="Record the action in this evidence database (default: the --db database).",
)
_operator_option = click.option(
    "--operator",
    metavar="NAME",
    help="Who acts, for the evidence record (default: user@host).",
)


@queue.command()
@_db_option
@_ids_argument
@_evidence_option
@_operator_option
@_json_option
def retry(
    url: str,
    work_ids: tuple[int, ...],
    evidence_url: str | None,
    operator: str | None,
    as_json: bool,
) -> None:
    """Send Error or Cancelled works back to the queue, to be investigated anew, due now.

    A retried work gets step Investigating, never Scheduled: a restart proves
    the VM dead (or fences its host) again before any start. Its attempts
    start from 0 again; its fencing token is not touched (its next claim takes
    a fresh one). A pending or Done work, or one whose VM has a pending work
    of the same type already, is refused.
    """
    _act(
        "queue retry",
        "retry",
        url,
        work_ids,
        evidence_url,
        operator,
        as_json,
        lambda store, work_id, _who: store.retry_work(work_id),
        "sent back to be investigated anew, due now",
    )


@queue.command()
@_db_option
@_ids_argument
@_evidence_option
@_operator_option
@_json_option
def cancel(
    url: str,
    work_ids: tuple[int, ...],
    evidence_url: str | None,
    operator: str | None,
    as_json: bool,
) -> None:
    """Cancel pending works no server holds, or dismiss Error works.

    A claimed work is refused: its worker may be fencing, stopping or starting
    the VM at this moment. Wait for it, or stop its management server (which
    hands its works back unclaimed), then cancel. Cancelled works are deleted
    by the cleanup after time.between.failures.
    """
    _act(
        "queue cancel",
        "cancel",
        url,
        work_ids,
        evidence_url,
        operator,
        as_json,
        lambda store, work_id, who: store.cancel_work(work_id, who),
        "cancelled",
    )


def _act(
    command: str,
    action: str,
    url: str,
    work_ids: Sequence[int],
    evidence_url: str | None,
    operator: str | None,
    as_json: bool,
    change: Callable[[Any, int, str], Work],
    done: str,
) -> None:
    """Check every id exists, open the evidence store, then change each work in its own
    transaction and record it; exit 1 when some were refused."""
    who = operator or _default_operator()
    if not who.strip() or len(who) > 255:
        fail(command, f"--operator must be 1 to 255 characters, not {len(who)}", EXIT_USAGE)
    store = _open(command, url)
    try:
        try:
            before = {work_id: _exists(store, work_id) for work_id in dict.fromkeys(work_ids)}
        except StoreError as exc:
            fail(command, f"{_where(store)}: {exc}", EXIT_DATABASE)
        unknown = [str(work_id) for work_id, there in before.items() if not there]
        if unknown:
            fail(
                command,
                f"no HA work {', '.join(unknown)} in {_where(store)} (nothing changed;"
                " cloudha queue list --state all shows the works)",
                EXIT_USAGE,
            )
        evidence = _evidence_store(command, evidence_url or url)
        changed: list[Work] = []
        refused: list[tuple[int, str]] = []
        try:
            for work_id in before:
                try:
                    was = store.get(work_id)
                except UnreadableWorkError:
                    was = None
                try:
                    work = change(store, work_id, who)
                except UnknownWorkError:
                    refused.append((work_id, "it was deleted meanwhile"))
                    continue
                except WorkRefusedError as exc:
                    refused.append((work_id, exc.reason))
                    continue
                changed.append(work)
                _record(evidence, who, action, work, was, done)
        except StoreError as exc:
            fail(command, f"{_where(store)}: {exc}", EXIT_DATABASE)
        finally:
            unstored = _close(evidence)
    finally:
        store.engine.dispose()
    now = _clock().now()
    if as_json:
        emit_json(
            {
                "action": action,
                "operator": who,
                "changed": [work_document(work, now) for work in changed],
                "refused": [{"id": work_id, "reason": reason} for work_id, reason in refused],
            }
        )
    else:
        for work in changed:
            click.echo(
                f"work {work.id} ({work.type} of VM {work.instance_id}"
                f"{f' on host {work.host_id}' if work.host_id else ''}): {done}"
            )
    for work_id, reason in refused:
        click.echo(f"cloudha {command}: work {work_id} not changed: {one_line(reason)}", err=True)
    if unstored:
        click.echo(
            f"cloudha {command}: {unstored} evidence records of this action could not be"
            f" stored in {evidence_url or _where(store)} (the works were changed; see -v)",
            err=True,
        )
    if refused or unstored:
        raise SystemExit(EXIT_FAILED)


def _exists(store: Any, work_id: int) -> bool:
    try:
        return store.get(work_id) is not None
    except UnreadableWorkError:
        return True  # it exists; the change itself refuses it, naming the column


def _evidence_store(command: str, url: str) -> Any:
    """The evidence store for the action's records, opened (table created) before any change."""
    from cloudha.evidence_store import SqlEvidenceStore, open_engine

    try:
        engine = open_engine(url)
        return SqlEvidenceStore(engine, _clock())
    except CloudHAError as exc:
        fail(command, f"evidence database: {exc}", EXIT_DATABASE)


def _record(evidence: Any, who: str, action: str, work: Work, was: Work | None, done: str) -> None:
    from cloudha.evidence import Recorder

    from_step = None if was is None else str(was.step)
    Recorder(evidence, _clock(), who).emit(
        "ha_work",
        vm=work.instance_id,
        host=work.host_id,
        reason=f"{action} by operator {who}: {done}",
        work=work.id,
        type=str(work.type),
        step=str(work.step),
        tried=work.tried,
        action=action,
        operator=who,
        from_step=from_step,
    )
    log.info(
        "operator %s: %s of HA work %d (%s of VM %s): %s -> %s",
        who,
        action,
        work.id,
        work.type,
        work.instance_id,
        from_step,
        work.step,
    )


def _close(evidence: Any) -> int:
    """Write the evidence records; how many could not be stored."""
    try:
        evidence.close()
        return int(evidence.pending + evidence.dropped)
    finally:
        evidence.engine.dispose()
