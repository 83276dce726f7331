"""The HA manager's one way out to operators: alerts and ``ha_work`` evidence, never raising.

A failing :class:`~cloudha.ports.AlertSink` or
:class:`~cloudha.evidence.EvidenceSink` is logged with its traceback and
the work goes on: telling somebody must never stop a VM from being restarted.
"""

from __future__ import annotations

import logging

from cloudha.clock import Clock
from cloudha.evidence import EvidenceSink, JSONValue, Recorder
from cloudha.ha.decisions import Notice
from cloudha.ha.work import Step, Work
from cloudha.model import AlertType, Host
from cloudha.ports import Alert, AlertSink

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Alerts and evidence of one HA manager.

    Args:
        alerts: where operator alerts go (:attr:`alerts` may be replaced later).
        evidence: where evidence goes; None: none is recorded.
        clock: stamps the evidence.
        actor: the management server id the evidence names.
    """

    def __init__(
        self, alerts: AlertSink, evidence: EvidenceSink | None, clock: Clock, actor: str
    ) -> None:
        self.alerts = alerts
        self._recorder = None if evidence is None else Recorder(evidence, clock, actor)

    @property
    def records_evidence(self) -> bool:
        return self._recorder is not None

    def alert(
        self,
        type: AlertType,
        subject: str,
        body: str = "",
        *,
        host: Host | None = None,
        zone: str | None = None,
    ) -> bool:
        """Send one alert; False (logged) when the sink failed."""
        try:
            self.alerts.send(
                Alert(
                    type,
                    subject,
                    body,
                    host_id=None if host is None else host.id,
                    zone=zone if host is None else host.zone,
                    pod=None if host is None else host.pod,
                )
            )
        except Exception:
            log.exception("alert sink failed on %r", subject)
            return False
        return True

    def notice(self, notice: Notice | None) -> bool:
        """Send the alert a decision asked for (nothing for None)."""
        if notice is None:
            return True
        return self.alert(notice.type, notice.subject, notice.body, host=notice.host)

    def evidence(
        self,
        kind: str,
        *,
        host: str | None = None,
        vm: str | None = None,
        reason: str = "",
        **details: JSONValue,
    ) -> bool:
        """Record one piece of evidence; False (logged) when the sink failed."""
        if self._recorder is None:
            return True
        try:
            self._recorder.emit(kind, host=host, vm=vm, reason=reason, **details)
        except Exception:
            log.exception("evidence sink failed on %s %r", kind, reason)
            return False
        return True

    def work(self, work: Work, step: Step | str, reason: str, **details: JSONValue) -> bool:
        """The ``ha_work`` evidence of one step change of ``work``."""
        return self.evidence(
            "ha_work",
            vm=work.instance_id,
            host=work.host_id,
            reason=reason,
            work=work.id,
            type=str(work.type),
            step=str(step),
            tried=work.tried,
            **details,
        )
