"""Freshness: the monitor judges others only while its own view is fresh (CloudFoundry hm9000).

A management server that stalled (a long GC or VM pause), lost its network,
or reads a host directory that does not answer sees every host as silent at
once. Judging then would call healthy hosts Down, fence them and start their
VMs twice. :class:`Freshness` keeps the server's own view honest:

* **actual state** is fresh when pings arrived, within the last
  ``cloudha.freshness.window`` ping intervals, from at least
  ``cloudha.freshness.min.ping.share`` of the monitored hosts (a host whose
  BMC reads power Off is not expected to ping and is not counted), when the
  monitor itself ran within that window (a paused process wakes with every
  ping stale), and when the HA work store accepted its last write;
* **desired state** is fresh when the host directory answered within the window;
* **membership** (a server of a group, :class:`cloudha.cluster.ClusterMember`)
  holds while the server's group lease runs: it ends
  ``cloudha.ms.takeover.timeout`` less one ``cloudha.ms.heartbeat.interval``
  after the last heartbeat the registry accepted was sent. A peer declares a
  server departed only after seeing its last accepted heartbeat unchanged for
  the whole takeover timeout, so a server whose lease ran out may already be
  departed, its hosts and works claimed by others: it judges nothing until a
  heartbeat goes through again (or is refused: then it lost its ownership).
  The lease is checked at every :meth:`Freshness.hold`, not only once per
  round, and also when the gate is disabled (``cloudha.freshness.enabled``):
  it is the group's safety, not a tuning.

While not fresh nothing is judged: no verdict becomes Down, no fence, no HA
scheduling (the agent manager, the HA workers and Host-HA ask :meth:`judging`).
Each change is a ``freshness`` evidence record saying why ("not fresh,
because …"), with an alert when judging stops; judging resumes after
``cloudha.freshness.resume.intervals`` consecutive fresh evaluations (one
per ping interval). After a start the count begins at 0: a new server first
watches its view fill up.

Everything is pure bookkeeping on the injected clock; :meth:`evaluate` is
called by the monitor loop (:meth:`cloudha.ManagementServer.monitor_tick`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import attrs

from cloudha.clock import Clock
from cloudha.detection.pingmap import PingMap
from cloudha.evidence import Recorder
from cloudha.model import AlertType
from cloudha.ports import Alert, AlertSink
from cloudha.settings import Settings

__all__ = ["CAUSES", "Freshness", "FreshnessView"]

log = logging.getLogger(__name__)

CAUSES = ("paused", "pings", "store", "directory", "membership")
"""Why a view is not fresh, as bounded codes (:attr:`FreshnessView.causes`): the monitor
paused, too few hosts pinged, the HA work store refused a write, the host directory is silent,
the server's group lease ran out."""


@attrs.frozen
class FreshnessView:
    """One evaluation of the server's own view.

    Attributes:
        actual: the actual state (pings, the monitor, the store) is fresh.
        desired: the desired state (the host directory) is fresh.
        reasons: why not, one phrase each (empty when fresh).
        monitored: hosts in the ping map (less the silent ones known powered off).
        pinged: of those, how many pinged within the window.
        window: the window, in seconds.
        causes: the codes of :data:`CAUSES` behind ``reasons`` (empty when fresh).
    """

    actual: bool
    desired: bool
    reasons: tuple[str, ...]
    monitored: int
    pinged: int
    window: float
    causes: tuple[str, ...] = ()

    @property
    def fresh(self) -> bool:
        return self.actual and self.desired

    @property
    def ping_share(self) -> float | None:
        return None if self.monitored == 0 else self.pinged / self.monitored

    def to_dict(self) -> dict[str, Any]:
        share = self.ping_share
        return {
            "actual": self.actual,
            "desired": self.desired,
            "monitored": self.monitored,
            "pinged": self.pinged,
            "ping_share": None if share is None else round(share, 3),
            "window": self.window,
            "reasons": list(self.reasons),
            "causes": list(self.causes),
        }


class Freshness:
    """Whether this server may judge other hosts now (see the module docstring).

    Args:
        settings: ``cloudha.freshness.*`` and ``ping.interval``.
        clock: the time source.
        ping_map: the monitored hosts and their last pings.
        recorder: where ``freshness`` records go.
        alerts: where the alert goes when judging stops.
        powered_off: whether a host's BMC last read power Off (such a host
            is not expected to ping); None: every monitored host counts.
        probe_directory: a cheap directory query, made when no answer was
            noted within the window (a quiet fleet does not query it); its
            outcome must reach :meth:`note_directory` (the server's
            :class:`~cloudha.server.WatchedDirectory` does that).
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        ping_map: PingMap,
        recorder: Recorder,
        alerts: AlertSink,
        *,
        powered_off: Callable[[str], bool] | None = None,
        probe_directory: Callable[[], object] | None = None,
    ) -> None:
        self.enabled = settings.cloudha_freshness_enabled
        self.interval = settings.ping_interval
        self.window = settings.cloudha_freshness_window * settings.ping_interval
        self.min_share = settings.cloudha_freshness_min_ping_share
        self.resume_after = settings.cloudha_freshness_resume_intervals
        self.clock = clock
        self.ping_map = ping_map
        self.recorder = recorder
        self.alerts = alerts
        self.powered_off = powered_off
        self.probe_directory = probe_directory
        self._lock = threading.Lock()
        now = clock.monotonic()
        self._directory_ok: float | None = now
        self._directory_error: str | None = None
        self._store_error: str | None = None
        self._lease_until: float | None = None
        self._lease_from: float | None = None
        self._last_tick: float | None = None
        self._evaluated_at: float | None = None
        self._fresh_runs = 0
        self._judging = not self.enabled
        self._view: FreshnessView | None = None
        self._last_fresh: bool | None = None
        self._held: dict[str, float] = {}

    # -- what the server notes -------------------------------------------------

    def note_directory(self, error: Exception | None) -> None:
        """A host directory call answered (``error`` None) or failed."""
        with self._lock:
            if error is None:
                self._directory_ok = self.clock.monotonic()
                self._directory_error = None
            else:
                self._directory_error = f"{type(error).__name__}: {error}"

    def note_store(self, error: Exception | None) -> None:
        """A write to the HA work store succeeded (``error`` None) or failed."""
        with self._lock:
            self._store_error = None if error is None else f"{type(error).__name__}: {error}"

    def note_lease(self, sent: float | None, until: float | None) -> None:
        """The group lease: the last accepted heartbeat was sent at ``sent`` (monotonic) and
        the lease runs until ``until``; both None: not a member of a group (no lease)."""
        with self._lock:
            self._lease_from = sent
            self._lease_until = until

    def lapsed(self) -> str | None:
        """Why the group lease does not hold now; None when it holds or there is none."""
        return self._lapsed(self.clock.monotonic())

    def _lapsed(self, now: float) -> str | None:
        """Why the group lease does not hold at ``now`` (None: it holds, or there is none)."""
        with self._lock:
            until, sent = self._lease_until, self._lease_from
        if until is None or now < until:
            return None
        if sent is None:
            return "this server is not a member of its group (its ownership was lost)"
        return (
            f"this server's last heartbeat the group registry accepted was sent"
            f" {now - sent:.0f} s ago: a peer may have declared it departed and taken its hosts"
        )

    # -- the gate ----------------------------------------------------------------

    def judging(self) -> bool:
        """May the server judge others now? (When disabled: while its group lease holds.)"""
        with self._lock:
            judging = self._judging
        return judging and self._lapsed(self.clock.monotonic()) is None

    @property
    def view(self) -> FreshnessView | None:
        """The last evaluation (None before the first)."""
        with self._lock:
            return self._view

    def hold(
        self,
        what: str,
        *,
        host: str | None = None,
        vm: str | None = None,
        record: bool = True,
        lease_only: bool = False,
    ) -> bool:
        """True (and a ``freshness`` record, at most once per interval per subject, unless
        not ``record``) when ``what`` must wait because the view is not fresh; False when it
        may go on. A lapsed group lease holds at once, whatever the last evaluation.
        ``lease_only``: only the lease counts (a host row write that judges nothing, such as
        an agent connecting, which a view still filling up must not stop)."""
        now = self.clock.monotonic()
        lapsed = self._lapsed(now)
        if lease_only and lapsed is None:
            return False
        if not lease_only and self.judging():
            return False
        if not record:
            return True
        subject = host or vm or ""
        with self._lock:
            last = self._held.get(subject)
            if last is not None and now - last < self.interval:
                return True
            self._held[subject] = now
            view = self._view
            runs = self._fresh_runs
        if lapsed is not None:
            because = lapsed
        elif view is not None and view.reasons:
            because = "; ".join(view.reasons)
        else:
            because = f"fresh for {runs} of the {self.resume_after} intervals in a row it needs"
        self.recorder.emit(
            "freshness",
            host=host,
            vm=vm,
            reason=f"{what} held: this server's view is not fresh ({because})",
            fresh=False,
            held=what,
        )
        return True

    # -- evaluation ----------------------------------------------------------------

    def evaluate(self) -> bool:
        """Called every monitor round; True when judging.

        The view is computed every round (a host falls behind on ping between
        two intervals, and must not be judged on an older view); a stale view
        stops judging at once, and a fresh one counts towards resuming at most
        once per ping interval. A round later than the window after the
        previous one is a pause.
        """
        if not self.enabled:
            return True
        now = self.clock.monotonic()
        with self._lock:
            previous_tick = self._last_tick
            self._last_tick = now
            paused_for = None
            if previous_tick is not None and now - previous_tick > self.window:
                paused_for = now - previous_tick
        view = self._evaluate(now, paused_for=paused_for)
        with self._lock:
            self._view = view
            was = self._judging
            if not view.fresh:
                self._fresh_runs = 0
                self._evaluated_at = None
            elif self._evaluated_at is None or now - self._evaluated_at >= self.interval:
                self._fresh_runs += 1
                self._evaluated_at = now
            judging = self._fresh_runs >= self.resume_after
            self._judging = judging
            if judging:
                self._held.clear()
            changed = view.fresh != self._last_fresh or judging != was
            self._last_fresh = view.fresh
        if changed:
            self._record(view, judging, was)
        return judging

    def _evaluate(self, now: float, *, paused_for: float | None) -> FreshnessView:
        reasons: list[str] = []
        causes: list[str] = []
        if paused_for is not None:
            causes.append("paused")
            reasons.append(
                f"the monitor did not run for {paused_for:.0f} s (a pause), every ping is stale"
            )
        # O(silent hosts): the ping map keeps the oldest pings first.
        silent = self.ping_map.behind(self.window)
        off = 0 if self.powered_off is None else sum(1 for h in silent if self.powered_off(h))
        monitored = len(self.ping_map) - off
        pinged = monitored - (len(silent) - off)
        actual = True
        if monitored and pinged / monitored < self.min_share:
            actual = False
            causes.append("pings")
            reasons.append(
                f"only {pinged} of {monitored} monitored hosts pinged within {self.window:g} s"
                f" (under {self.min_share:.0%})"
            )
        if paused_for is not None:
            actual = False
        lapsed = self._lapsed(now)
        if lapsed is not None:
            actual = False
            causes.append("membership")
            reasons.append(lapsed)
        with self._lock:
            directory_ok = self._directory_ok
        if self.probe_directory is not None and (
            directory_ok is None or now - directory_ok > self.window / 2
        ):
            try:
                self.probe_directory()
            except Exception as exc:
                log.warning("freshness: the host directory did not answer: %s", exc)
        with self._lock:
            store_error = self._store_error
            directory_ok = self._directory_ok
            directory_error = self._directory_error
        if store_error is not None:
            actual = False
            causes.append("store")
            reasons.append(f"the HA work store refused its last write ({store_error})")
        desired = directory_ok is not None and now - directory_ok <= self.window
        if not desired:
            age = "never" if directory_ok is None else f"{now - directory_ok:.0f} s ago"
            why = f"; {directory_error}" if directory_error else ""
            causes.append("directory")
            reasons.append(f"the host directory last answered {age}{why}")
        return FreshnessView(
            actual, desired, tuple(reasons), monitored, pinged, self.window, tuple(causes)
        )

    def _record(self, view: FreshnessView, judging: bool, was: bool) -> None:
        if judging:
            reason = f"fresh for {self.resume_after} intervals in a row: judging"
        elif view.fresh:
            reason = (
                f"fresh, judging after {self.resume_after} fresh intervals in a row"
                " (not judging meanwhile)"
            )
        else:
            reason = "not fresh, because " + "; ".join(view.reasons)
        self.recorder.emit(
            "freshness", reason=reason, fresh=view.fresh, judging=judging, **view.to_dict()
        )
        if was and not judging:
            try:
                self.alerts.send(Alert(AlertType.MANAGEMENT, "cloudha stops judging hosts", reason))
            except Exception:
                log.exception("alert sink failed (freshness)")
