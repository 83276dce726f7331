"""Host-HA state in SQL (spec §7.4) and the per-resource counters (spec §7.5)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloudha import NoTransitionError
from cloudha.errors import StoreError
from cloudha.ha.store import create_schema, ha_config
from cloudha.hostha import HAEvent, HAResourceCounter, HAState, SqlHAConfigStore
from cloudha.testing import FakeClock

T0 = dt.datetime(2026, 12, 6, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlHAConfigStore]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'ha.db'}")
    create_schema(engine)
    yield SqlHAConfigStore(engine, FakeClock(T0))
    engine.dispose()


def test_a_configured_host_starts_disabled_without_state(store: SqlHAConfigStore) -> None:
    config = store.configure("h1", "kvmhaprovider")
    assert (config.resource_id, config.resource_type, config.provider) == (
        "h1",
        "Host",
        "kvmhaprovider",
    )
    assert (config.enabled, config.state, config.update_count, config.mgmt_server_id) == (
        False,
        None,
        0,
        None,
    )
    # Configuring again changes the provider, never adds a row.
    again = store.configure("h1", "simulatorhaprovider")
    assert again.id == config.id
    assert again.provider == "simulatorhaprovider"
    assert [c.resource_id for c in store.list()] == ["h1"]
    enabled = store.set_enabled("h1", True)
    assert enabled is not None
    assert enabled.enabled
    assert store.set_enabled("nope", True) is None
    assert store.find("nope") is None


def test_a_transition_bumps_the_count_stamps_the_time_and_takes_ownership(
    store: SqlHAConfigStore,
) -> None:
    config = store.configure("h1", "kvmhaprovider")
    available = store.transition(config, HAEvent.ENABLED, "ms1")
    assert available is not None
    assert (available.state, available.update_count, available.mgmt_server_id) == (
        HAState.AVAILABLE,
        1,
        "ms1",
    )
    assert available.update_time == dt.datetime.fromtimestamp(T0, dt.UTC)
    suspect = store.transition(available, HAEvent.HEALTH_CHECK_FAILED, "ms1")
    assert suspect is not None
    assert suspect.state is HAState.SUSPECT
    # Disabled leaves the row unowned.
    disabled = store.transition(suspect, HAEvent.DISABLED, "ms1")
    assert disabled is not None
    assert (disabled.state, disabled.mgmt_server_id) == (HAState.DISABLED, None)


def test_an_owners_self_transition_writes_nothing(store: SqlHAConfigStore) -> None:
    available = store.transition(store.configure("h1", "p"), HAEvent.ENABLED, "ms1")
    assert available is not None
    assert store.transition(available, HAEvent.HEALTH_CHECK_PASSED, "ms1") is None
    assert store.find("h1") == available
    # Another server's self-transition of an unowned row is a write (it takes ownership).
    assert store.expire_ownership("ms1") == 1
    unowned = store.find("h1")
    assert unowned is not None
    assert unowned.mgmt_server_id is None
    taken = store.transition(unowned, HAEvent.HEALTH_CHECK_PASSED, "ms2")
    assert taken is not None
    assert taken.mgmt_server_id == "ms2"


def test_a_stale_read_loses_the_race_and_the_first_writer_wins(store: SqlHAConfigStore) -> None:
    available = store.transition(store.configure("h1", "p"), HAEvent.ENABLED, "ms1")
    assert available is not None
    first = store.transition(available, HAEvent.HEALTH_CHECK_FAILED, "ms1")
    assert first is not None
    # A second writer holding the same (now stale) read writes nothing.
    assert store.transition(available, HAEvent.INELIGIBLE, "ms2") is None
    now = store.find("h1")
    assert now is not None
    assert now.state is HAState.SUSPECT
    assert now.owned_by("ms1")
    assert not now.owned_by("ms2")


def test_a_missing_transition_raises_and_writes_nothing(store: SqlHAConfigStore) -> None:
    config = store.configure("h1", "p")
    with pytest.raises(NoTransitionError):
        store.transition(config, HAEvent.FENCED, "ms1")
    assert store.find("h1") == config


def test_a_row_edited_to_an_unknown_state_is_a_store_error_naming_it(
    store: SqlHAConfigStore,
) -> None:
    store.configure("h1", "p")
    with store._engine.begin() as conn:  # an operator's hand edit
        conn.execute(sa.update(ha_config).values(ha_state="Sleeping"))
    with pytest.raises(StoreError, match="ha_state 'Sleeping' is not a Host-HA state"):
        store.find("h1")


def test_only_sqlite_and_postgresql() -> None:
    engine = sa.create_mock_engine("mysql://u@localhost/db", executor=print)  # never connects
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        SqlHAConfigStore(engine, FakeClock())  # type: ignore[arg-type]


# -- HAResourceCounter ---------------------------------------------------------------------


def test_activity_samples_and_the_failure_ratio() -> None:
    counter = HAResourceCounter()
    for failed in (True, True, True, False):
        counter.record_activity_check(failed=failed)
    assert counter.has_enough_samples(4)
    assert not counter.has_enough_samples(5)
    assert counter.activity_threshold_exceeded(0.7)  # 3 > 2.8
    assert not counter.activity_threshold_exceeded(0.75)  # 3 > 3 is false: CloudStack's >
    counter.reset_activity()
    assert (counter.activity_checks, counter.activity_failures) == (0, 0)


def test_suspect_time_is_the_first_failed_health_check() -> None:
    counter = HAResourceCounter()
    assert counter.suspect_time(50.0) == 50.0
    counter.mark_suspected(10.0)
    counter.mark_suspected(20.0)
    assert counter.suspect_time(50.0) == 10.0
    counter.record_activity_check(failed=True)
    counter.recovery_ended()
    counter.reset_after_health()
    assert (counter.suspect_since, counter.activity_checks, counter.recovery_attempts) == (
        None,
        0,
        0,
    )


def test_activity_checks_are_spaced_by_the_interval_and_stamped() -> None:
    counter = HAResourceCounter()
    assert counter.can_perform_activity_check(60.0, 100.0)
    assert not counter.can_perform_activity_check(60.0, 160.0)  # exactly 60 s: not yet
    assert counter.can_perform_activity_check(60.0, 160.5)
    assert counter.last_activity_check == 160.5


def test_degraded_recheck_and_recovery_wait() -> None:
    counter = HAResourceCounter()
    assert counter.can_recheck_activity(300.0, 0.0)
    counter.mark_degraded(100.0)
    assert not counter.can_recheck_activity(300.0, 400.0)
    assert counter.can_recheck_activity(300.0, 400.1)
    assert not counter.can_exit_recovery(600.0, 10_000.0)  # never started
    counter.mark_recovery_started(1000.0)
    counter.mark_recovery_started(1500.0)  # the first call only
    assert not counter.can_exit_recovery(600.0, 1600.0)
    assert counter.can_exit_recovery(600.0, 1600.1)
    counter.mark_recovery_completed()
    assert counter.recovery_started is None


def test_never_two_recoveries_or_fences_at_once() -> None:
    counter = HAResourceCounter()
    assert counter.can_attempt_recovery()
    counter.recovery_begun()
    assert not counter.can_attempt_recovery()
    counter.record_activity_check(failed=True)
    counter.recovery_ended()
    assert counter.can_attempt_recovery()
    assert (counter.recovery_attempts, counter.activity_checks) == (1, 0)
    counter.fence_begun()
    assert not counter.can_attempt_fencing()
    counter.fence_ended(fenced=False)
    assert counter.can_attempt_fencing()
    assert counter.recovery_attempts == 1
    counter.fence_begun()
    counter.fence_ended(fenced=True)
    assert counter.recovery_attempts == 0
