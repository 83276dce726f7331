"""The Host-HA state machine, exactly CloudStack's (spec §7.1-§7.3).

:func:`ha_transition` is a pure table look-up over the 41 transitions of
spec §7.3; anything else raises :class:`~cloudha.errors.NoTransitionError`.
``None`` stands for the initial state of a resource that has no HA state yet.
The table's gaps are CloudStack's and kept on purpose (a Fenced host has no
``Ineligible`` transition, CloudStack issue #11627: the manager must not
drive one).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from cloudha.errors import NoTransitionError
from cloudha.transitions import transition_table

__all__ = ["HA_TRANSITIONS", "HAEvent", "HAState", "ha_transition"]


class HAState(enum.Enum):
    """A resource's Host-HA state (CloudStack ``HAConfig.HAState``)."""

    DISABLED = "Disabled"
    AVAILABLE = "Available"
    INELIGIBLE = "Ineligible"
    SUSPECT = "Suspect"
    DEGRADED = "Degraded"
    CHECKING = "Checking"
    RECOVERING = "Recovering"
    RECOVERED = "Recovered"
    FENCING = "Fencing"
    FENCED = "Fenced"

    @property
    def description(self) -> str:
        """CloudStack's description of the state (spec §7.1)."""
        return _DESCRIPTIONS[self]

    def __str__(self) -> str:
        return self.value


_DESCRIPTIONS: Mapping[HAState, str] = MappingProxyType(
    {
        HAState.DISABLED: "HA Operations disabled",
        HAState.AVAILABLE: "The resource is healthy",
        HAState.INELIGIBLE: "The current state does not support HA/recovery",
        HAState.SUSPECT: "Most recent health check failed",
        HAState.DEGRADED: "The resource cannot be managed, but services end user requests",
        HAState.CHECKING: "The activity checks are currently being performed",
        HAState.RECOVERING: "The resource is undergoing recovery operation",
        HAState.RECOVERED: "The resource is recovered",
        HAState.FENCING: "The resource is undergoing fence operation",
        HAState.FENCED: "The resource is fenced",
    }
)


class HAEvent(enum.Enum):
    """Host-HA events (CloudStack ``HAConfig.Event``); ``PowerCycle`` is declared, never used."""

    ELIGIBLE = "Eligible"
    INELIGIBLE = "Ineligible"
    DISABLED = "Disabled"
    ENABLED = "Enabled"
    HEALTH_CHECK_PASSED = "HealthCheckPassed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    PERFORM_ACTIVITY_CHECK = "PerformActivityCheck"
    TOO_FEW_ACTIVITY_CHECK_SAMPLES = "TooFewActivityCheckSamples"
    PERIODIC_RECHECK_RESOURCE_ACTIVITY = "PeriodicRecheckResourceActivity"
    ACTIVITY_CHECK_FAILURE_OVER_THRESHOLD_RATIO = "ActivityCheckFailureOverThresholdRatio"
    ACTIVITY_CHECK_FAILURE_UNDER_THRESHOLD_RATIO = "ActivityCheckFailureUnderThresholdRatio"
    POWER_CYCLE = "PowerCycle"
    RECOVERED = "Recovered"
    RETRY_RECOVERY = "RetryRecovery"
    RECOVERY_WAIT_PERIOD_TIMEOUT = "RecoveryWaitPeriodTimeout"
    RECOVERY_OPERATION_THRESHOLD_EXCEEDED = "RecoveryOperationThresholdExceeded"
    RETRY_FENCING = "RetryFencing"
    FENCED = "Fenced"

    def __str__(self) -> str:
        return self.value


_S = HAState
_E = HAEvent

# (from, event, to) in the source order of spec §7.3.
_ROWS: tuple[tuple[HAState | None, HAEvent, HAState], ...] = (
    (None, _E.DISABLED, _S.DISABLED),
    (None, _E.ENABLED, _S.AVAILABLE),
    (None, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.DISABLED, _E.ENABLED, _S.AVAILABLE),
    (_S.INELIGIBLE, _E.DISABLED, _S.DISABLED),
    (_S.INELIGIBLE, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.INELIGIBLE, _E.ELIGIBLE, _S.AVAILABLE),
    (_S.AVAILABLE, _E.DISABLED, _S.DISABLED),
    (_S.AVAILABLE, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.AVAILABLE, _E.HEALTH_CHECK_PASSED, _S.AVAILABLE),
    (_S.AVAILABLE, _E.HEALTH_CHECK_FAILED, _S.SUSPECT),
    (_S.SUSPECT, _E.DISABLED, _S.DISABLED),
    (_S.SUSPECT, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.SUSPECT, _E.HEALTH_CHECK_FAILED, _S.SUSPECT),
    (_S.SUSPECT, _E.PERFORM_ACTIVITY_CHECK, _S.CHECKING),
    (_S.SUSPECT, _E.HEALTH_CHECK_PASSED, _S.AVAILABLE),
    (_S.CHECKING, _E.DISABLED, _S.DISABLED),
    (_S.CHECKING, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.CHECKING, _E.TOO_FEW_ACTIVITY_CHECK_SAMPLES, _S.SUSPECT),
    (_S.CHECKING, _E.ACTIVITY_CHECK_FAILURE_UNDER_THRESHOLD_RATIO, _S.DEGRADED),
    (_S.CHECKING, _E.ACTIVITY_CHECK_FAILURE_OVER_THRESHOLD_RATIO, _S.RECOVERING),
    (_S.DEGRADED, _E.DISABLED, _S.DISABLED),
    (_S.DEGRADED, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.DEGRADED, _E.HEALTH_CHECK_FAILED, _S.DEGRADED),
    (_S.DEGRADED, _E.HEALTH_CHECK_PASSED, _S.AVAILABLE),
    (_S.DEGRADED, _E.PERIODIC_RECHECK_RESOURCE_ACTIVITY, _S.SUSPECT),
    (_S.RECOVERING, _E.DISABLED, _S.DISABLED),
    (_S.RECOVERING, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.RECOVERING, _E.RETRY_RECOVERY, _S.RECOVERING),
    (_S.RECOVERING, _E.RECOVERED, _S.RECOVERED),
    (_S.RECOVERING, _E.RECOVERY_OPERATION_THRESHOLD_EXCEEDED, _S.FENCING),
    (_S.RECOVERED, _E.DISABLED, _S.DISABLED),
    (_S.RECOVERED, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.RECOVERED, _E.RECOVERY_WAIT_PERIOD_TIMEOUT, _S.AVAILABLE),
    (_S.FENCING, _E.DISABLED, _S.DISABLED),
    (_S.FENCING, _E.INELIGIBLE, _S.INELIGIBLE),
    (_S.FENCING, _E.RETRY_FENCING, _S.FENCING),
    (_S.FENCING, _E.FENCED, _S.FENCED),
    (_S.FENCED, _E.DISABLED, _S.DISABLED),
    (_S.FENCED, _E.HEALTH_CHECK_PASSED, _S.INELIGIBLE),
    (_S.FENCED, _E.HEALTH_CHECK_FAILED, _S.FENCED),
)


HA_TRANSITIONS: Mapping[tuple[HAState | None, HAEvent], HAState] = transition_table(
    _ROWS, "Host-HA"
)
"""Every ``(from, event) -> to`` of spec §7.3; ``from`` is ``None`` for the initial state."""


def ha_transition(current: HAState | None, event: HAEvent) -> HAState:
    """Return the Host-HA state ``event`` leads to from ``current``.

    Args:
        current: the resource's HA state, or ``None`` for one that has none yet.
        event: what happened.

    Raises:
        NoTransitionError: the table has no such transition.
    """
    try:
        return HA_TRANSITIONS[(current, event)]
    except KeyError:
        raise NoTransitionError(current, event) from None
