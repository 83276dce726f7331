"""Fence-path readiness and power states as Prometheus metrics (``pip install 'cloudha[metrics]'``).

``register_oobm_metrics(manager)`` adds a collector that reports, at every
scrape, what :class:`~cloudha.oobm.OutOfBandManager` last saw (no BMC is
contacted by a scrape):

* ``cloudha_fence_path_ready{host,driver}``: 1 when the last readiness check
  of the host's BMC worked, 0 when it failed;
* ``cloudha_fence_path_checked_age_seconds{host}``: seconds since that check
  (a stalled background sync shows as a growing age);
* ``cloudha_oobm_power_state{host,state}``: 1 for the host's current power
  state (On, Off, Unknown, Disabled), 0 for the others.

This module imports without prometheus-client; building an
:class:`OobmCollector` (or registering one) then raises
:class:`~cloudha.errors.MissingExtraError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cloudha._extras import require
from cloudha.oobm.manager import OutOfBandManager
from cloudha.oobm.power import PowerState

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["OobmCollector", "register_oobm_metrics"]


class OobmCollector:
    """A Prometheus collector over an :class:`OutOfBandManager`'s readiness and power states."""

    def __init__(self, manager: OutOfBandManager) -> None:
        require("prometheus_client", "metrics", "the Prometheus metrics collector")
        self.manager = manager

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ready = GaugeMetricFamily(
            "cloudha_fence_path_ready",
            "1 when the host's BMC answered the last readiness check with its credentials",
            labels=["host", "driver"],
        )
        age = GaugeMetricFamily(
            "cloudha_fence_path_checked_age_seconds",
            "Seconds since the host's fence path was last checked",
            labels=["host"],
        )
        power = GaugeMetricFamily(
            "cloudha_oobm_power_state",
            "1 for the host's power state as out-of-band management knows it",
            labels=["host", "state"],
        )
        now = self.manager.clock.monotonic()
        for host_id, readiness in self.manager.readiness_report().items():
            ready.add_metric([host_id, readiness.driver or ""], 1.0 if readiness.ready else 0.0)
            age.add_metric([host_id], max(0.0, now - readiness.checked_at))
            state = self.manager.power_state(host_id)
            if state is not None:
                for candidate in PowerState:
                    power.add_metric([host_id, candidate.value], 1.0 if candidate is state else 0.0)
        yield ready
        yield age
        yield power


def register_oobm_metrics(
    manager: OutOfBandManager, registry: CollectorRegistry | None = None
) -> OobmCollector:
    """Register an :class:`OobmCollector` (in the default registry unless one is given).

    Raises:
        MissingExtraError: prometheus-client is not installed
            (``pip install 'cloudha[metrics]'``).
    """
    collector = OobmCollector(manager)
    from prometheus_client import REGISTRY

    (registry if registry is not None else REGISTRY).register(collector)
    return collector
