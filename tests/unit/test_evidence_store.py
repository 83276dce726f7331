"""Lasting evidence: the wall time of a record, the SQL evidence store, TeeSink."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from cloudha import Settings, SqlEvidenceStore, SystemClock, TeeSink
from cloudha.errors import ConfigurationError, LifecycleError, StoreError
from cloudha.evidence import Evidence, EvidenceLog, EvidenceSink, Recorder
from cloudha.evidence_store import cloudha_evidence, open_engine
from cloudha.testing import FakeClock
from cloudha.testing.world import EventTimeline

T0 = 1_800_000_000.0  # 2027-01-15, so ages are not near the epoch


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'ev.db'}")
    yield eng
    eng.dispose()


class Failing:
    """Makes every statement on ``engine`` fail (like a lost database) while ``on``."""

    def __init__(self, engine: sa.Engine) -> None:
        self.on = False
        self.attempts = 0
        sa.event.listen(engine, "before_cursor_execute", self._check)

    def _check(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            self.attempts += int(self.on)
        if self.on:
            raise sqlalchemy.exc.OperationalError(statement, None, Exception("disk I/O error"))


class Deletes:
    """Counts DELETE statements on ``engine`` (the prunes)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.count += statement.lstrip().upper().startswith("DELETE")


def rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(cloudha_evidence)).one()[0])


# -- the record's wall time ------------------------------------------------------


def test_a_record_carries_utc_wall_time_beside_the_monotonic_one() -> None:
    clock = FakeClock(T0)
    log = EvidenceLog()
    record = Recorder(log, clock, "ms1").emit("alert", host="h1", reason="r", subject="s")
    assert record.at == dt.datetime.fromtimestamp(T0, dt.UTC)
    assert record.at.tzinfo is dt.UTC
    event = record.to_event(wall=True)
    assert list(event)[:3] == ["t", "at", "kind"]
    assert event["at"] == "2027-01-15T08:00:00+00:00"
    assert dt.datetime.fromisoformat(event["at"]).timestamp() == T0
    # The simulator's documents keep their shape: no "at" unless asked.
    assert "at" not in record.to_event()


def test_a_wall_time_in_another_zone_becomes_utc_and_a_naive_one_is_refused() -> None:
    plus2 = dt.datetime(2027, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    record = Evidence(kind="k", t=1.0, at=plus2, actor="a")
    assert record.at == dt.datetime(2027, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert record.at.utcoffset() == dt.timedelta(0)
    with pytest.raises(ValueError, match="naive"):
        Evidence(kind="k", t=1.0, at=dt.datetime(2027, 1, 1), actor="a")  # noqa: DTZ001


# -- storing and reading ---------------------------------------------------------


def test_records_round_trip_with_their_details_and_times(engine: sa.Engine) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock)
    rec = Recorder(store, clock, "ms1")
    findings = [{"source": "KVMInvestigator", "verdict": "DEAD", "reason": "stale", "evidence": {}}]
    first = rec.emit("investigation", host="h1", reason="found Down", findings=findings)
    clock.advance(1.5)
    second = rec.emit("fence", host="h1", vm="vm1", reason="fenced", fencer="F", outcome="FENCED")
    clock.advance(1)
    rec.emit("vm_state", host="h2", vm="vm2", state="Running")
    assert store.stored == 3
    assert store.pending == 0
    assert len(store) == 3
    assert store.records_for("h1") == [first, second]
    assert store.records(vm="vm1") == [second]
    assert store.records(kinds=["investigation", "vm_state"])[0] == first
    assert store.records_for("vm1")[0].at == dt.datetime.fromtimestamp(T0 + 1.5, dt.UTC)
    assert store.subjects() == {"hosts": {"h1", "h2"}, "vms": {"vm1", "vm2"}}
    assert store.records_for("nobody") == []
    assert store.decisions_about("nobody") == []


def test_details_that_are_not_strict_json_are_stored_as_strings_not_stuck(
    engine: sa.Engine,
) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock)
    rec = Recorder(store, clock, "ms1")
    rec.emit("odd", host="h" * 300, ratio=float("nan"), when=dt.date(2027, 1, 1), pair=(1, 2))
    rec.emit("alert", host="h1")
    assert (store.stored, store.pending, store.failed_writes) == (2, 0, 0)
    [odd] = store.records(kinds=["odd"])
    assert dict(odd.details) == {"ratio": "nan", "when": "2027-01-01", "pair": [1, 2]}
    assert odd.host == "h" * 300


def test_a_second_store_on_the_same_database_reads_what_the_first_wrote(
    engine: sa.Engine,
) -> None:
    clock = FakeClock(T0)
    Recorder(SqlEvidenceStore(engine, clock), clock, "ms1").emit("alert", host="h1")
    reader = SqlEvidenceStore(engine, clock, create=False)
    assert [r.kind for r in reader.records_for("h1")] == ["alert"]


def test_a_reader_does_not_create_the_table(engine: sa.Engine) -> None:
    with pytest.raises(StoreError, match="no cloudha_evidence table"):
        SqlEvidenceStore(engine, FakeClock(T0), create=False)


def test_a_vms_chain_has_its_hosts_decisions_up_to_its_last_record_there(
    engine: sa.Engine,
) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock)
    rec = Recorder(store, clock, "ms1")
    rec.emit("fence_readiness", host="h3", reason="h3's BMC answered")
    rec.emit("investigation", host="h2", result="Down", reason="dead")
    rec.emit("host_status", host="h2", reason="event HostDown", to="Down")
    rec.emit("fence", host="h2", vm="vm9", reason="another VM's fence")
    clock.advance(1)
    rec.emit("fence", host="h2", vm="vm1", reason="fenced")
    rec.emit("vm_state", host="h3", vm="vm1", state="Running")
    rec.emit("ha_work", host="h2", vm="vm1", step="Done", reason="started on host h3")
    clock.advance(100)
    rec.emit("host_status", host="h2", reason="later, unrelated", to="Up")
    rec.emit("alert", host="h3", reason="h3 is where vm1 went, not why")
    chain = [(r.kind, r.host, r.vm) for r in store.decisions_about("vm1")]
    assert chain == [
        ("investigation", "h2", None),
        ("host_status", "h2", None),
        ("fence", "h2", "vm1"),
        ("vm_state", "h3", "vm1"),
        ("ha_work", "h2", "vm1"),
    ]
    host_chain = [r.reason for r in store.decisions_about("h2")]
    assert host_chain == [
        "dead",
        "event HostDown",
        "another VM's fence",
        "fenced",
        "started on host h3",
        "later, unrelated",
    ]


# -- retention -------------------------------------------------------------------


def test_retention_by_age_prunes_at_most_once_per_interval(engine: sa.Engine) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock, retention=3600, prune_interval=60)
    deletes = Deletes(engine)
    rec = Recorder(store, clock, "ms1")
    for _ in range(50):
        rec.emit("behind_on_ping", host="old")
    assert deletes.count == 0  # not on every insert
    clock.advance(3601)
    rec.emit("behind_on_ping", host="new")
    assert deletes.count == 2  # one prune: by age, then by count
    assert store.subjects()["hosts"] == {"new"}
    clock.advance(30)
    rec.emit("behind_on_ping", host="new")
    assert deletes.count == 2


def test_retention_by_count_keeps_the_newest_within_one_percent(engine: sa.Engine) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock, max_records=200, prune_interval=1e9)
    rec = Recorder(store, clock, "ms1")
    for i in range(500):
        rec.emit("alert", host=f"h{i}")
        assert rows(engine) <= 200 + 2  # a prune every 1% (2 rows) of the budget
    store.prune()
    assert rows(engine) == 200
    assert {f"h{i}" for i in range(300, 500)} == store.subjects()["hosts"]


def test_from_settings_takes_the_retention_settings(engine: sa.Engine) -> None:
    settings = Settings.from_mapping(
        {"cloudha.evidence.retention": 7200, "cloudha.evidence.max.records": 500}
    )
    store = SqlEvidenceStore.from_settings(engine, FakeClock(T0), settings)
    assert (store.retention, store.max_records) == (7200.0, 500)
    defaults = Settings()
    assert defaults.cloudha_evidence_retention == 30 * 86_400.0
    assert defaults.cloudha_evidence_max_records == 1_000_000
    with pytest.raises(ConfigurationError, match=r"cloudha\.evidence\.retention"):
        Settings.from_mapping({"cloudha.evidence.retention": 1})
    with pytest.raises(ConfigurationError, match=r"cloudha\.evidence\.max\.records"):
        Settings.from_mapping({"cloudha.evidence.max.records": 0})


@pytest.mark.parametrize(
    "bad",
    [{"retention": 0}, {"max_records": 0}, {"buffer": 0}, {"retry_interval": -1}],
)
def test_bounds_must_be_positive(engine: sa.Engine, bad: dict[str, float]) -> None:
    key = next(iter(bad))
    with pytest.raises(ConfigurationError, match=key) as excinfo:
        SqlEvidenceStore(engine, FakeClock(T0), **bad)  # type: ignore[arg-type]
    assert excinfo.value.key == key


# -- failures --------------------------------------------------------------------


def test_a_database_failure_never_raises_and_the_records_are_written_later(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock, retry_interval=5)
    failing = Failing(engine)
    rec = Recorder(store, clock, "ms1")
    failing.on = True
    with caplog.at_level(logging.DEBUG, logger="cloudha.evidence_store"):
        rec.emit("investigation", host="h1", reason="first")
        rec.emit("host_status", host="h1", reason="second")  # within the retry interval
        clock.advance(5)
        rec.emit("alert", host="h1", reason="third")  # retries, fails again
    assert failing.attempts == 2
    assert (store.failed_writes, store.pending, store.stored, store.dropped) == (2, 3, 0, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per outage, naming the database
    assert "write failed, 1 records buffered" in warnings[0].getMessage()
    assert "ev.db" in warnings[0].getMessage()
    failing.on = False
    rec.emit("alert", host="h1", reason="fourth")  # still within the retry interval
    assert store.pending == 4
    clock.advance(5)
    with caplog.at_level(logging.WARNING, logger="cloudha.evidence_store"):
        rec.emit("alert", host="h1", reason="fifth")
    assert "writing again" in caplog.text
    assert (store.pending, store.stored) == (0, 5)
    assert [r.reason for r in store.records_for("h1")] == [
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
    ]


def test_a_long_outage_drops_the_oldest_records_and_says_so(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock, buffer=3)
    failing = Failing(engine)
    failing.on = True
    rec = Recorder(store, clock, "ms1")
    with caplog.at_level(logging.ERROR, logger="cloudha.evidence_store"):
        for i in range(5):
            rec.emit("alert", host="h1", reason=str(i))
    assert (store.pending, store.dropped) == (3, 2)
    assert "buffer full" in caplog.text
    failing.on = False
    assert store.flush()
    assert [r.reason for r in store.records_for("h1")] == ["2", "3", "4"]


def test_close_flushes_and_logs_what_it_could_not_write(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock)
    failing = Failing(engine)
    failing.on = True
    Recorder(store, clock, "ms1").emit("alert", host="h1")
    with caplog.at_level(logging.ERROR, logger="cloudha.evidence_store"):
        store.close()
    assert "closed with 1 records unwritten" in caplog.text
    failing.on = False
    store.close()
    assert store.pending == 0
    assert rows(engine) == 1


def test_concurrent_writers_lose_nothing(engine: sa.Engine) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            rec = Recorder(store, clock, f"ms{n}")
            for i in range(100):
                rec.emit("alert", host=f"h{n}", vm=f"vm{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.flush()
    assert (store.stored, store.failed_writes, store.dropped) == (600, 0, 0)
    assert rows(engine) == 600
    for n in range(6):
        assert [r.vm for r in store.records(host=f"h{n}")] == [f"vm{i}" for i in range(100)]


class Slow:
    """Makes every INSERT on ``engine`` take ``seconds`` (a database that hardly answers)."""

    def __init__(self, engine: sa.Engine, seconds: float) -> None:
        self.seconds = seconds
        sa.event.listen(engine, "before_cursor_execute", self._wait)

    def _wait(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            time.sleep(self.seconds)


def test_with_its_writer_thread_no_recorder_waits_for_a_slow_database(
    engine: sa.Engine,
) -> None:
    clock = SystemClock()
    store = SqlEvidenceStore(engine, clock)
    Slow(engine, 1.0)
    store.start()
    with pytest.raises(LifecycleError, match="running already"):
        store.start()
    rec = Recorder(store, clock, "ms1")
    started = time.monotonic()
    for i in range(50):
        rec.emit("alert", host="h1", vm=f"vm{i}")
    assert time.monotonic() - started < 0.5  # less than one insert: nobody waited
    store.close()
    assert (store.pending, store.stored, store.failed_writes) == (0, 50, 0)
    assert [r.vm for r in store.records(host="h1")] == [f"vm{i}" for i in range(50)]
    rec.emit("alert", host="h1", vm="after")  # closed: written by the caller again
    assert (store.pending, store.stored) == (0, 51)


def test_the_writer_loop_sleeps_until_a_prune_or_the_next_retry(engine: sa.Engine) -> None:
    clock = FakeClock(T0)
    store = SqlEvidenceStore(engine, clock, retry_interval=5, prune_interval=60)
    loop = store.loop()
    assert (loop.name, loop.wake_on_work) == ("Evidence-Writer", True)
    assert loop.tick() == 60.0
    failing = Failing(engine)
    failing.on = True
    Recorder(store, clock, "ms1").emit("alert", host="h1")  # the first attempt fails
    clock.advance(2)
    assert loop.tick() == 3.0  # woken early (a record): no attempt before the retry is due
    assert (store.failed_writes, failing.attempts) == (1, 1)
    clock.advance(3)
    assert loop.tick() == 5.0  # due: tried, failed, next retry in 5 s
    assert failing.attempts == 2
    failing.on = False
    clock.advance(5)
    assert loop.tick() == 60.0
    assert (store.pending, store.stored) == (0, 1)


def test_without_a_writer_thread_only_one_recorder_waits_for_the_database(
    engine: sa.Engine,
) -> None:
    clock = SystemClock()
    store = SqlEvidenceStore(engine, clock)
    Slow(engine, 1.0)
    slow_one = threading.Thread(target=lambda: Recorder(store, clock, "a").emit("alert", host="a"))
    slow_one.start()
    time.sleep(0.2)  # the first writer is now inside its INSERT
    started = time.monotonic()
    Recorder(store, clock, "b").emit("alert", host="b")
    assert time.monotonic() - started < 0.5  # left its record to the writer
    slow_one.join()
    assert store.flush()
    assert store.subjects()["hosts"] == {"a", "b"}


def test_a_reading_failure_is_a_store_error_naming_the_database(engine: sa.Engine) -> None:
    store = SqlEvidenceStore(engine, FakeClock(T0))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE cloudha_evidence"))
    with pytest.raises(StoreError, match=r"ev\.db.*no such table"):
        store.records_for("h1")


# -- opening a database by URL ---------------------------------------------------


def test_open_engine_errors_name_the_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a database URL"):
        open_engine("not a url")
    with pytest.raises(ConfigurationError, match="SQLite or PostgreSQL, not 'mysql'"):
        open_engine("mysql://u:secret@db/x")
    with pytest.raises(ConfigurationError, match="no such database file") as excinfo:
        open_engine(f"sqlite:///{tmp_path / 'missing.db'}", must_exist=True)
    assert excinfo.value.key == "url"
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ConfigurationError, match="in-memory"):
        open_engine("sqlite://", must_exist=True)
    with pytest.raises(ConfigurationError) as secret:
        open_engine("mysql://u:hunter2@db/x")
    assert "hunter2" not in str(secret.value)
    open_engine(f"sqlite:///{tmp_path / 'new.db'}").dispose()


# -- fan-out ---------------------------------------------------------------------


class Broken:
    def record(self, evidence: Evidence) -> None:
        raise RuntimeError("sink down")


def test_tee_sink_feeds_every_sink_even_when_one_fails(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    memory = EvidenceLog()
    store = SqlEvidenceStore(engine, clock)
    tee = TeeSink(Broken(), memory, store)
    assert isinstance(tee, EvidenceSink)
    with caplog.at_level(logging.ERROR, logger="cloudha.evidence"):
        Recorder(tee, clock, "ms1").emit("alert", host="h1")
    assert "failed on alert host=h1" in caplog.text
    assert len(memory) == 1
    assert len(store) == 1
    with pytest.raises(TypeError, match="sink 0"):
        TeeSink(object())  # type: ignore[arg-type]


def test_the_simulators_timeline_feeds_its_extra_sinks_after_its_own_event() -> None:
    timeline = EventTimeline()
    memory = EvidenceLog()
    timeline.sinks.append(memory)
    Recorder(timeline, FakeClock(T0), "ms1").emit("alert", host="h1")
    assert [e["kind"] for e in timeline.events] == ["alert"]
    assert [r.kind for r in memory] == ["alert"]


def test_a_management_server_keeps_its_log_and_stores_on_the_work_queues_engine() -> None:
    from tests.unit.test_server import Cloud, run

    cloud = Cloud()
    store = SqlEvidenceStore(cloud.engine, cloud.clock)
    server = cloud.server(evidence=TeeSink(cloud.evidence, store))
    server.recover()
    cloud.kill("h1")
    run(server, cloud.clock, 120, alive=("h2", "h3"))
    store.close()
    assert store.pending == 0
    assert len(store) == len(cloud.evidence) > 0
    assert [r.to_event() for r in store.records()] == [r.to_event() for r in cloud.evidence]
    chain = store.decisions_about("vm1")
    assert any(r.kind == "host_status" and r.details.get("to") == "Down" for r in chain)
    assert [r.details["step"] for r in chain if r.kind == "ha_work"][-1] == "Done"
    assert {r.actor for r in chain} == {"ms1"}
