"""The Host-HA state machine is exactly spec §7.3: 41 rows, CloudStack's strings."""

from __future__ import annotations

import itertools

import pytest

import cloudha
from cloudha import NoTransitionError
from cloudha.hostha import HA_TRANSITIONS, HAEvent, HAState, ha_transition

# Spec §7.3 in CloudStack's own strings, written out independently of the implementation.
SPEC = """
- Disabled Disabled
- Enabled Available
- Ineligible Ineligible
Disabled Enabled Available
Ineligible Disabled Disabled
Ineligible Ineligible Ineligible
Ineligible Eligible Available
Available Disabled Disabled
Available Ineligible Ineligible
Available HealthCheckPassed Available
Available HealthCheckFailed Suspect
Suspect Disabled Disabled
Suspect Ineligible Ineligible
Suspect HealthCheckFailed Suspect
Suspect PerformActivityCheck Checking
Suspect HealthCheckPassed Available
Checking Disabled Disabled
Checking Ineligible Ineligible
Checking TooFewActivityCheckSamples Suspect
Checking ActivityCheckFailureUnderThresholdRatio Degraded
Checking ActivityCheckFailureOverThresholdRatio Recovering
Degraded Disabled Disabled
Degraded Ineligible Ineligible
Degraded HealthCheckFailed Degraded
Degraded HealthCheckPassed Available
Degraded PeriodicRecheckResourceActivity Suspect
Recovering Disabled Disabled
Recovering Ineligible Ineligible
Recovering RetryRecovery Recovering
Recovering Recovered Recovered
Recovering RecoveryOperationThresholdExceeded Fencing
Recovered Disabled Disabled
Recovered Ineligible Ineligible
Recovered RecoveryWaitPeriodTimeout Available
Fencing Disabled Disabled
Fencing Ineligible Ineligible
Fencing RetryFencing Fencing
Fencing Fenced Fenced
Fenced Disabled Disabled
Fenced HealthCheckPassed Ineligible
Fenced HealthCheckFailed Fenced
"""


def _rows() -> list[tuple[HAState | None, HAEvent, HAState]]:
    rows = []
    for line in SPEC.strip().splitlines():
        current, event, target = line.split()
        rows.append((None if current == "-" else HAState(current), HAEvent(event), HAState(target)))
    return rows


ROWS = _rows()


def test_the_table_is_exactly_the_41_rows_of_the_spec() -> None:
    assert len(ROWS) == 41
    assert dict(HA_TRANSITIONS) == {(c, e): t for c, e, t in ROWS}


@pytest.mark.parametrize(("current", "event", "target"), ROWS)
def test_every_row(current: HAState | None, event: HAEvent, target: HAState) -> None:
    assert ha_transition(current, event) is target
    assert cloudha.ha_transition(current, event) is target


MISSING = [
    (c, e) for c, e in itertools.product([None, *HAState], HAEvent) if (c, e) not in HA_TRANSITIONS
]


@pytest.mark.parametrize(("current", "event"), MISSING)
def test_every_other_pair_raises(current: HAState | None, event: HAEvent) -> None:
    with pytest.raises(NoTransitionError) as caught:
        ha_transition(current, event)
    assert caught.value.current is current
    assert caught.value.event is event


def test_the_notable_absences_of_the_spec() -> None:
    # CloudStack #11627: a Fenced host entering maintenance has no Ineligible transition.
    for current, event in [
        (HAState.FENCED, HAEvent.INELIGIBLE),
        (HAState.DISABLED, HAEvent.DISABLED),
        (HAState.DISABLED, HAEvent.INELIGIBLE),
        (HAState.CHECKING, HAEvent.HEALTH_CHECK_PASSED),
        (HAState.CHECKING, HAEvent.HEALTH_CHECK_FAILED),
        (HAState.RECOVERED, HAEvent.HEALTH_CHECK_PASSED),
        (HAState.AVAILABLE, HAEvent.ELIGIBLE),
        (HAState.FENCING, HAEvent.HEALTH_CHECK_PASSED),
        (None, HAEvent.POWER_CYCLE),
    ]:
        assert (current, event) in MISSING
    assert not any(e is HAEvent.POWER_CYCLE for _, e in HA_TRANSITIONS)


def test_strings_and_names_are_cloudstacks() -> None:
    assert HAState("Checking") is HAState.CHECKING
    assert HAEvent("TooFewActivityCheckSamples") is HAEvent.TOO_FEW_ACTIVITY_CHECK_SAMPLES
    assert [s.value for s in HAState] == [
        "Disabled",
        "Available",
        "Ineligible",
        "Suspect",
        "Degraded",
        "Checking",
        "Recovering",
        "Recovered",
        "Fencing",
        "Fenced",
    ]
    assert len(HAEvent) == 18
    assert str(HAState.FENCED) == "Fenced"
    assert HAState.DEGRADED.description == (
        "The resource cannot be managed, but services end user requests"
    )
    with pytest.raises(NoTransitionError, match="from initial state on event 'Fenced'"):
        ha_transition(None, HAEvent.FENCED)
