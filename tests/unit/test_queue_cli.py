"""``cloudha queue list|retry|cancel`` on a SQLite work queue written by the real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from cloudha.cli import main
from cloudha.clock import SystemClock
from cloudha.evidence_store import SqlEvidenceStore
from cloudha.ha.store import SqlWorkStore, Step, WorkType, create_schema, op_ha_work
from cloudha.model import VmState


@attrs.frozen
class Queue:
    url: str
    store: SqlWorkStore
    error: int
    held: int
    waiting: int
    done: int


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    url = f"sqlite:///{tmp_path / 'cloudha.db'}"
    engine = sa.create_engine(url)
    create_schema(engine)
    store = SqlWorkStore(engine, SystemClock())
    store.add("vm-1", WorkType.HA, VmState.RUNNING, host_id="h1")
    gave_up = store.claim("ms-1")
    assert gave_up is not None
    store.finish(gave_up, Step.ERROR, attempt=True)
    store.add("vm-2", WorkType.HA, VmState.RUNNING, host_id="h1")
    held = store.claim("ms-1")
    assert held is not None
    waiting = store.add(
        "vm-3",
        WorkType.MIGRATION,
        VmState.RUNNING,
        host_id="h2",
        time_to_try=SystemClock().now().timestamp() + 300,
    )
    done = store.add("vm-4", WorkType.HA, VmState.RUNNING, host_id="h2", step=Step.DONE)
    try:
        yield Queue(url, store, gave_up.id, held.id, waiting.id, done.id)
    finally:
        engine.dispose()


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["queue", *args])


def one_error_line(result: Result, status: int, *words: str) -> str:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_list_shows_pending_and_error_works_by_default(queue: Queue) -> None:
    result = run("list", "--db", queue.url, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = {row["id"]: row for row in document["works"]}
    assert sorted(rows) == [queue.error, queue.held, queue.waiting]
    assert document["unreadable"] == []
    error, held, waiting = rows[queue.error], rows[queue.held], rows[queue.waiting]
    assert (error["state"], error["step"], error["tried"], error["server"]) == (
        "error",
        "Error",
        1,
        "ms-1",
    )
    assert error["next_attempt"] is None
    assert (held["held"], held["server"], held["vm"], held["host"]) == (True, "ms-1", "vm-2", "h1")
    assert (waiting["held"], waiting["type"]) == (False, "Migration")
    assert 290 < waiting["due_in"] <= 300
    assert all(row["age"] >= 0 for row in rows.values())


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--state", "error"], ["error"]),
        (["--state", "done"], ["done"]),
        (["--state", "all"], ["error", "held", "waiting", "done"]),
        (["--state", "pending", "--type", "migration"], ["waiting"]),
        (["--state", "all", "--host", "h2"], ["waiting", "done"]),
        (["--vm", "vm-2"], ["held"]),
        (["--host", "nowhere"], []),
    ],
)
def test_list_filters(queue: Queue, filters: list[str], expected: list[str]) -> None:
    result = run("list", "--db", queue.url, "--json", *filters)
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.stdout)["works"]] == [
        getattr(queue, name) for name in expected
    ]


def test_list_as_a_table(queue: Queue) -> None:
    result = run("list", "--db", queue.url)
    assert result.exit_code == 0, result.output
    assert "3 works (error, pending)" in result.stdout
    for cell in ("vm-1", "Error", "ms-1", "held", "in 4m", "Migration"):
        assert cell in result.stdout
    assert result.stderr == ""


def test_list_shows_a_hand_edited_row_apart(queue: Queue) -> None:
    with queue.store.engine.begin() as conn:
        conn.execute(
            op_ha_work.update().where(op_ha_work.c.id == queue.error).values(type="Teleport")
        )
    result = run("list", "--db", queue.url, "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["unreadable"] == [{"id": queue.error, "column": "type", "value": "Teleport"}]
    table = run("list", "--db", queue.url)
    assert f"row {queue.error} is unreadable: unknown type 'Teleport'" in table.stdout
    retry = run("retry", "--db", queue.url, str(queue.error))
    one_error_line(retry, 1, f"work {queue.error} not changed", "unreadable")


def test_retry_sends_an_error_work_back_and_records_evidence(queue: Queue) -> None:
    result = run(
        "retry", "--db", queue.url, str(queue.error), "--operator", "alice@console", "--json"
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["action"], document["operator"], document["refused"]) == (
        "retry",
        "alice@console",
        [],
    )
    (changed,) = document["changed"]
    assert (changed["id"], changed["step"], changed["server"], changed["tried"]) == (
        queue.error,
        "Investigating",
        None,
        0,
    )
    assert changed["due_in"] <= 0
    evidence = SqlEvidenceStore(queue.store.engine, SystemClock(), create=False)
    (record,) = evidence.records_for("vm-1")
    assert (record.kind, record.actor, record.host) == ("ha_work", "alice@console", "h1")
    assert record.details["action"] == "retry"
    assert record.details["from_step"] == "Error"
    assert record.details["step"] == "Investigating"
    assert "alice@console" in record.reason
    explained = CliRunner().invoke(main, ["explain", "vm-1", "--db", queue.url])
    assert explained.exit_code == 0
    assert "retry by operator alice@console" in explained.stdout


def test_retry_keeps_the_fencing_tokens(queue: Queue) -> None:
    before = queue.store.get(queue.error)
    assert before is not None
    token = queue.store.current_generation("vm-1")
    assert run("retry", "--db", queue.url, str(queue.error)).exit_code == 0
    after = queue.store.get(queue.error)
    assert after is not None
    assert after.generation == before.generation
    assert queue.store.current_generation("vm-1") == token
    claimed = queue.store.claim("ms-2")
    assert claimed is not None
    assert claimed.id == queue.error
    assert claimed.generation == token + 1


def test_retry_into_a_separate_evidence_database(queue: Queue, tmp_path: Path) -> None:
    evidence_url = f"sqlite:///{tmp_path / 'evidence.db'}"
    result = run(
        "retry", "--db", queue.url, str(queue.error), "--evidence-db", evidence_url, "--json"
    )
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(evidence_url)
    try:
        records = SqlEvidenceStore(engine, SystemClock(), create=False).records_for("vm-1")
        assert [r.details["action"] for r in records] == ["retry"]
    finally:
        engine.dispose()


def test_retry_refuses_pending_and_done_works_and_does_the_others(queue: Queue) -> None:
    result = run("retry", "--db", queue.url, str(queue.error), str(queue.held))
    line = one_error_line(result, 1, f"work {queue.held} not changed", "held by ms-1")
    assert line.startswith("cloudha queue retry: ")
    assert f"work {queue.error} (HA of VM vm-1 on host h1): sent back" in result.stdout
    done = run("retry", "--db", queue.url, str(queue.done))
    one_error_line(done, 1, "Done")


def test_cancel_a_waiting_work_and_refuse_a_claimed_one(queue: Queue) -> None:
    result = run("cancel", "--db", queue.url, str(queue.waiting), "--operator", "bob")
    assert result.exit_code == 0, result.output
    assert f"work {queue.waiting} (Migration of VM vm-3 on host h2): cancelled" in result.stdout
    cancelled = queue.store.get(queue.waiting)
    assert cancelled is not None
    assert (cancelled.step, cancelled.mgmt_server_id) == (Step.CANCELLED, "bob")
    claimed = run("cancel", "--db", queue.url, str(queue.held))
    one_error_line(claimed, 1, "claimed", "held by ms-1", "stop that server")
    held = queue.store.get(queue.held)
    assert held is not None
    assert (held.step, held.mgmt_server_id) == (Step.SCHEDULED, "ms-1")
    dismissed = run("cancel", "--db", queue.url, str(queue.error), "--json")
    assert dismissed.exit_code == 0
    assert json.loads(dismissed.stdout)["changed"][0]["step"] == "Cancelled"
    again = run("retry", "--db", queue.url, str(queue.waiting))  # a cancelled work can come back
    assert again.exit_code == 0, again.output


def test_an_unknown_work_changes_nothing_and_exits_2(queue: Queue) -> None:
    result = run("retry", "--db", queue.url, str(queue.error), "999")
    one_error_line(result, 2, "no HA work 999", "nothing changed")
    assert result.stdout == ""
    still = queue.store.get(queue.error)
    assert still is not None
    assert still.step is Step.ERROR
    cancel = run("cancel", "--db", queue.url, "999", "1000")
    one_error_line(cancel, 2, "no HA work 999, 1000")


def test_a_bad_operator_name_exits_2(queue: Queue) -> None:
    result = run("cancel", "--db", queue.url, str(queue.waiting), "--operator", "x" * 300)
    one_error_line(result, 2, "--operator")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", ["is not a database URL"]),
        ("mysql://db/cloudha", ["SQLite or PostgreSQL", "mysql"]),
        ("sqlite:////nonexistent/cloudha.db", ["no such database file"]),
        ("sqlite://", ["in-memory"]),
        ("postgresql+psycopg://cloudha:s3cret@127.0.0.1:1/cloudha", ["127.0.0.1", "refused"]),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["retry", "1"], ["cancel", "1"]])
def test_a_bad_database_is_one_line_and_exit_3(
    command: list[str], url: str, words: list[str]
) -> None:
    result = run(*command, "--db", url)
    line = one_error_line(result, 3, *words)
    assert "s3cret" not in line


def test_a_database_without_the_queue_is_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    result = run("list", "--db", f"sqlite:///{path}")
    one_error_line(result, 3, "no op_ha_work table")
