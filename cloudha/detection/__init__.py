"""Detection: the ping map and host deadlines, PingTask, MonitorTask, disconnect handling."""

from cloudha.detection.agents import AgentManager as AgentManager
from cloudha.detection.agents import BehindOnPingListener as BehindOnPingListener
from cloudha.detection.agents import Investigation as Investigation
from cloudha.detection.deadlines import START_GRACE_FACTOR as START_GRACE_FACTOR
from cloudha.detection.deadlines import HostDeadlines as HostDeadlines
from cloudha.detection.decisions import DisconnectAction as DisconnectAction
from cloudha.detection.decisions import DisconnectDecision as DisconnectDecision
from cloudha.detection.decisions import decide_after_investigation as decide_after_investigation
from cloudha.detection.decisions import monitor_event_for as monitor_event_for
from cloudha.detection.decisions import needs_investigation as needs_investigation
from cloudha.detection.monitor import MonitorTask as MonitorTask
from cloudha.detection.phi import ArrivalWindow as ArrivalWindow
from cloudha.detection.phi import PhiAccrualDetector as PhiAccrualDetector
from cloudha.detection.ping_task import PingTask as PingTask
from cloudha.detection.pingmap import UNMONITORED_HOST_TYPES as UNMONITORED_HOST_TYPES
from cloudha.detection.pingmap import PingMap as PingMap

__all__ = [
    "START_GRACE_FACTOR",
    "UNMONITORED_HOST_TYPES",
    "AgentManager",
    "ArrivalWindow",
    "BehindOnPingListener",
    "DisconnectAction",
    "DisconnectDecision",
    "HostDeadlines",
    "Investigation",
    "MonitorTask",
    "PhiAccrualDetector",
    "PingMap",
    "PingTask",
    "decide_after_investigation",
    "monitor_event_for",
    "needs_investigation",
]
