"""``cloudha simulate --evidence-db`` and ``cloudha explain``."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from cloudha.cli import main
from cloudha.cli.explain import EXIT_DATABASE, EXIT_UNKNOWN_SUBJECT

ROOT = Path(__file__).resolve().parents[2]
CRASH = ROOT / "examples" / "scenarios" / "single-host-crash.toml"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def crash_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The evidence of examples/scenarios/single-host-crash.toml (h2 crashes, vm1 restarts)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ev') / 'crash.db'}"
    result = run("simulate", str(CRASH), "--evidence-db", url, "--json")
    assert result.exit_code == 0, result.output
    return url


def explain_json(url: str, subject: str) -> list[dict[str, Any]]:
    result = run("explain", subject, "--db", url, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["subject", "decisions"]
    assert document["subject"] == subject
    decisions: list[dict[str, Any]] = document["decisions"]
    return decisions


def index(decisions: list[dict[str, Any]], **match: Any) -> int:
    for i, decision in enumerate(decisions):
        if all(decision.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no decision with {match}: {[d['kind'] for d in decisions]}")


def test_a_crashed_hosts_chain_runs_from_ping_timeout_to_restart(crash_db: str) -> None:
    decisions = explain_json(crash_db, "h2")
    for decision in decisions:
        assert {"t", "at", "kind", "actor"} <= set(decision)
        # Simulated wall time is virtual time after the epoch, in UTC.
        at = dt.datetime.fromisoformat(decision["at"])
        assert at.utcoffset() == dt.timedelta(0)
        assert abs((at - EPOCH).total_seconds() - decision["t"]) < 0.001
    behind = index(decisions, kind="behind_on_ping")
    assert decisions[behind]["timeout"] == 150.0  # ping.timeout 2.5 x ping.interval 60
    assert decisions[behind]["since_last_ping"] > 150.0
    down = index(decisions, kind="investigation", result="Down")
    findings = decisions[down]["findings"]
    assert {f["source"] for f in findings} >= {"KVMInvestigator"}
    assert all({"source", "verdict", "reason"} <= set(f) for f in findings)
    assert any(f["verdict"] == "DEAD" and "neighbours" in f.get("evidence", {}) for f in findings)
    status = index(decisions, kind="host_status", to="Down")
    scheduled = index(decisions, kind="ha_scheduled")
    fenced = index(decisions, kind="fence", vm="vm1", outcome="FENCED")
    done = index(decisions, kind="ha_work", vm="vm1", step="Done")
    assert behind < down < status < scheduled < fenced < done
    assert decisions[fenced]["fencer"] == "KVMFenceBuilder"
    assert decisions[fenced]["reason"]
    assert [d["t"] for d in decisions] == sorted(d["t"] for d in decisions)


def test_a_vms_chain_has_the_investigation_that_downed_its_host_and_its_ha_work(
    crash_db: str,
) -> None:
    decisions = explain_json(crash_db, "vm1")
    down = index(decisions, kind="investigation", host="h2", result="Down")
    steps = [d["step"] for d in decisions if d["kind"] == "ha_work"]
    assert steps[0] == "Investigating"
    assert steps[-1] == "Done"
    assert down < index(decisions, kind="fence", outcome="FENCED") < index(decisions, step="Done")
    running = index(decisions, kind="vm_state", state="Running")
    assert decisions[running]["host"] != "h2"
    # Only vm1's own records and its hosts' own: never another VM's.
    assert {d.get("vm") for d in decisions} <= {None, "vm1"}


def test_the_human_chain_shows_times_rules_thresholds_and_witnesses(crash_db: str) -> None:
    result = run("explain", "vm1", "--db", crash_db)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("vm1: ")
    assert "behind_on_ping  host h2  by ms1" in text
    assert "why: no ping for" in text
    assert "timeout=150.0" in text
    assert "- KVMInvestigator: DEAD: " in text
    assert "fencer=KVMFenceBuilder  outcome=FENCED" in text
    assert "step=Done" in text
    assert "1970-01-01T00:" in text


def test_an_unknown_subject_exits_2_with_one_line(crash_db: str) -> None:
    result = run("explain", "vm404", "--db", crash_db)
    assert result.exit_code == EXIT_UNKNOWN_SUBJECT == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "vm404" in result.stderr
    assert "crash.db" in result.stderr
    # h1 and vm2 saw no decision: only h2, h3 (where vm1 started) and vm1 did.
    assert "(it holds evidence about 2 hosts and 1 VM)" in result.stderr


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("nonsense", "not a database URL"),
        ("mysql://u:hunter2@db/x", "SQLite or PostgreSQL"),
        ("sqlite:////nonexistent/dir/ev.db", "no such database file"),
        ("postgresql+psycopg://u:hunter2@127.0.0.1:1/x", "127.0.0.1"),
    ],
)
def test_a_bad_database_exits_3_with_one_line(url: str, words: str) -> None:
    result = run("explain", "h1", "--db", url)
    assert result.exit_code == EXIT_DATABASE == 3, result.output
    assert result.stderr.count("\n") == 1
    assert words in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.output


def test_a_database_without_evidence_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    result = run("explain", "h1", "--db", f"sqlite:///{path}")
    assert result.exit_code == 3
    assert "no cloudha_evidence table" in result.stderr


def test_the_document_is_the_same_with_or_without_an_evidence_db(tmp_path: Path) -> None:
    plain = run("simulate", str(CRASH), "--json")
    stored = run("simulate", str(CRASH), "--json", "--evidence-db", f"sqlite:///{tmp_path}/e.db")
    assert plain.exit_code == stored.exit_code == 0
    assert plain.stdout == stored.stdout
    events = json.loads(plain.stdout)["events"]
    assert all("at" not in event for event in events)
    engine = sa.create_engine(f"sqlite:///{tmp_path}/e.db")
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM cloudha_evidence")).scalar_one()
    engine.dispose()
    assert count == len(events)


def test_simulate_refuses_a_store_that_holds_evidence_and_other_misuse(crash_db: str) -> None:
    again = run("simulate", str(CRASH), "--evidence-db", crash_db)
    assert again.exit_code == 2
    assert "already holds" in again.stderr
    assert again.stderr.count("\n") == 1
    campaign = run("simulate", "--campaign", "1", "--evidence-db", crash_db)
    assert campaign.exit_code == 2
    assert "--evidence-db goes with SCENARIO only" in campaign.stderr
    bad = run("simulate", str(CRASH), "--evidence-db", "nonsense")
    assert bad.exit_code == 3  # a bad database URL is EXIT_DATABASE, as for explain
    assert "not a database URL" in bad.stderr


def test_python_m_cloudha_explain_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudha", "explain", "h1", "--db", f"sqlite:///{tmp_path}/x.db"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("cloudha explain: ")
    assert proc.stderr.count("\n") == 1


def test_explain_reads_a_read_only_database(crash_db: str, tmp_path: Path) -> None:
    copy = tmp_path / "ro.db"
    copy.write_bytes(Path(crash_db.removeprefix("sqlite:///")).read_bytes())
    # mode=ro is read-only even for root (chmod is not): explain must not need to write.
    url = f"sqlite:///file:{copy}?mode=ro&uri=true"
    result = run("explain", "h2", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decisions"]
    missing = run("explain", "h2", "--db", f"sqlite:///file:{tmp_path}/none.db?mode=ro&uri=true")
    assert missing.exit_code == 3
    assert "no such database file" in missing.stderr


def test_explain_starts_a_hosts_chain_with_the_fault_injected_into_it(tmp_path: Path) -> None:
    from cloudha.testing import simulate

    root = Path(__file__).resolve().parents[2]
    doc = simulate(root / "examples" / "scenarios" / "single-host-crash.toml")
    (crash,) = [e for e in doc["events"] if e["kind"] == "fault" and e["fault"] == "host_crash"]
    assert crash["host"] == crash["target"]
    pool_faults = [e for e in doc["events"] if e["kind"] == "fault" and "host" not in e]
    assert all(e["fault"] != "host_crash" for e in pool_faults)
