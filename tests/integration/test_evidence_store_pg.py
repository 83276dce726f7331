"""The SQL evidence store and ``cloudha explain`` on a real PostgreSQL server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cloudha import SqlEvidenceStore
from cloudha.cli import main
from cloudha.evidence import Recorder
from cloudha.testing.clock import FakeClock
from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def test_store_prune_and_read_on_postgres(postgres_db: str) -> None:  # noqa: F811
    engine = sa.create_engine(postgres_db)
    try:
        clock = FakeClock(T0)
        store = SqlEvidenceStore(engine, clock, max_records=100, retention=3600)
        threads = [
            threading.Thread(
                target=lambda n=n: [
                    Recorder(store, clock, f"ms{n}").emit("alert", host=f"h{n}", vm=f"vm{i}")
                    for i in range(50)
                ]
            )
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.flush()
        assert (store.stored, store.failed_writes) == (200, 0)
        store.prune()
        assert len(store) == 100
        clock.advance(3601)
        Recorder(store, clock, "ms1").emit("investigation", host="h9", findings=[{"x": 1}])
        store.prune()
        assert store.subjects() == {"hosts": {"h9"}, "vms": set()}
        [record] = store.decisions_about("h9")
        assert record.details == {"findings": [{"x": 1}]}
        assert record.at.timestamp() == T0 + 3601
    finally:
        engine.dispose()


def test_simulate_into_postgres_then_explain(postgres_db: str) -> None:  # noqa: F811
    runner = CliRunner()
    scenario = ROOT / "examples" / "scenarios" / "single-host-crash.toml"
    filled = runner.invoke(main, ["simulate", str(scenario), "--evidence-db", postgres_db])
    assert filled.exit_code == 0, filled.output
    result = runner.invoke(main, ["explain", "vm1", "--db", postgres_db, "--json"])
    assert result.exit_code == 0, result.output
    steps = [d["step"] for d in json.loads(result.stdout)["decisions"] if d["kind"] == "ha_work"]
    assert steps[-1] == "Done"
