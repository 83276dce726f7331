"""cloudha: Apache CloudStack's host-availability machinery as a library.

The public API is what this module exports (``__all__``); test support lives
in :mod:`cloudha.testing`, which ``import cloudha`` does not import.
"""

import logging as _logging

from cloudha.clock import Clock as Clock
from cloudha.clock import SystemClock as SystemClock
from cloudha.detection import AgentManager as AgentManager
from cloudha.detection import BehindOnPingListener as BehindOnPingListener
from cloudha.detection import DisconnectAction as DisconnectAction
from cloudha.detection import DisconnectDecision as DisconnectDecision
from cloudha.detection import Investigation as Investigation
from cloudha.detection import MonitorTask as MonitorTask
from cloudha.detection import PingMap as PingMap
from cloudha.detection import PingTask as PingTask
from cloudha.detection import decide_after_investigation as decide_after_investigation
from cloudha.detection import needs_investigation as needs_investigation
from cloudha.errors import CloudHAError as CloudHAError
from cloudha.errors import ConfigurationError as ConfigurationError
from cloudha.errors import LifecycleError as LifecycleError
from cloudha.errors import MissingExtraError as MissingExtraError
from cloudha.errors import NoTransitionError as NoTransitionError
from cloudha.errors import ProbeAuthError as ProbeAuthError
from cloudha.errors import ProbeConnectionError as ProbeConnectionError
from cloudha.errors import ProbeError as ProbeError
from cloudha.errors import ProbeHostKeyError as ProbeHostKeyError
from cloudha.errors import ProbeTimeout as ProbeTimeout
from cloudha.errors import ScenarioError as ScenarioError
from cloudha.evidence import Evidence as Evidence
from cloudha.evidence import EvidenceLog as EvidenceLog
from cloudha.evidence import EvidenceSink as EvidenceSink
from cloudha.evidence import Recorder as Recorder
from cloudha.evidence import TeeSink as TeeSink
from cloudha.evidence_store import SqlEvidenceStore as SqlEvidenceStore
from cloudha.fencing import BaseFenceBuilder as BaseFenceBuilder
from cloudha.fencing import FenceBuilder as FenceBuilder
from cloudha.fencing import FenceChain as FenceChain
from cloudha.fencing import FenceDecision as FenceDecision
from cloudha.fencing import FenceLevel as FenceLevel
from cloudha.fencing import FenceOutcome as FenceOutcome
from cloudha.fencing import FencerContext as FencerContext
from cloudha.fencing import FenceResult as FenceResult
from cloudha.fencing import KVMFenceBuilder as KVMFenceBuilder
from cloudha.fencing import LibvirtFencer as LibvirtFencer
from cloudha.fencing import PowerFencer as PowerFencer
from cloudha.fencing import build_fence_chain as build_fence_chain
from cloudha.hostha import HAEvent as HAEvent
from cloudha.hostha import HAState as HAState
from cloudha.hostha import ha_transition as ha_transition
from cloudha.investigators import AgentCheckInvestigator as AgentCheckInvestigator
from cloudha.investigators import AgentInvestigatorBase as AgentInvestigatorBase
from cloudha.investigators import BaseInvestigator as BaseInvestigator
from cloudha.investigators import BMCInvestigator as BMCInvestigator
from cloudha.investigators import ChainResult as ChainResult
from cloudha.investigators import Finding as Finding
from cloudha.investigators import HypervisorInvestigator as HypervisorInvestigator
from cloudha.investigators import Investigator as Investigator
from cloudha.investigators import InvestigatorChain as InvestigatorChain
from cloudha.investigators import InvestigatorContext as InvestigatorContext
from cloudha.investigators import KVMInvestigator as KVMInvestigator
from cloudha.investigators import ManagementIPInvestigator as ManagementIPInvestigator
from cloudha.investigators import PingInvestigator as PingInvestigator
from cloudha.investigators import Verdict as Verdict
from cloudha.investigators import VMwareInvestigator as VMwareInvestigator
from cloudha.investigators import XenServerInvestigator as XenServerInvestigator
from cloudha.investigators import build_chain as build_chain
from cloudha.investigators import host_outcome as host_outcome
from cloudha.model import AlertType as AlertType
from cloudha.model import Host as Host
from cloudha.model import HostType as HostType
from cloudha.model import HypervisorType as HypervisorType
from cloudha.model import Pool as Pool
from cloudha.model import ReasonType as ReasonType
from cloudha.model import ResourceState as ResourceState
from cloudha.model import Vm as Vm
from cloudha.model import VmPowerState as VmPowerState
from cloudha.model import VmState as VmState
from cloudha.model import VmType as VmType
from cloudha.oobm import BasePowerDriver as BasePowerDriver
from cloudha.oobm import OobmConfig as OobmConfig
from cloudha.oobm import OutOfBandManager as OutOfBandManager
from cloudha.oobm import PowerDriver as PowerDriver
from cloudha.oobm import PowerOperation as PowerOperation
from cloudha.oobm import PowerState as PowerState
from cloudha.oobm import StaticOobmConfigs as StaticOobmConfigs
from cloudha.ports import KEEP as KEEP
from cloudha.ports import AgentGateway as AgentGateway
from cloudha.ports import Alert as Alert
from cloudha.ports import AlertSink as AlertSink
from cloudha.ports import Answer as Answer
from cloudha.ports import Command as Command
from cloudha.ports import CommandListener as CommandListener
from cloudha.ports import ConnectionListener as ConnectionListener
from cloudha.ports import DirectAgentResource as DirectAgentResource
from cloudha.ports import DomainState as DomainState
from cloudha.ports import GuestNic as GuestNic
from cloudha.ports import HAScheduler as HAScheduler
from cloudha.ports import HostDirectory as HostDirectory
from cloudha.ports import HostPoller as HostPoller
from cloudha.ports import HypervisorControl as HypervisorControl
from cloudha.ports import HypervisorProbe as HypervisorProbe
from cloudha.ports import HypervisorReport as HypervisorReport
from cloudha.ports import MaintenanceChecker as MaintenanceChecker
from cloudha.ports import MetricsSink as MetricsSink
from cloudha.ports import MigrationFailureSink as MigrationFailureSink
from cloudha.ports import PingReport as PingReport
from cloudha.ports import Router as Router
from cloudha.ports import StatusChange as StatusChange
from cloudha.ports import StoragePoolDirectory as StoragePoolDirectory
from cloudha.ports import VmNetworkDirectory as VmNetworkDirectory
from cloudha.ports import VmOrchestrator as VmOrchestrator
from cloudha.ports import VmSync as VmSync
from cloudha.runtime import Loop as Loop
from cloudha.runtime import Pump as Pump
from cloudha.server import ManagementServer as ManagementServer
from cloudha.settings import Settings as Settings
from cloudha.status import Event as Event
from cloudha.status import Status as Status
from cloudha.status import host_transition as host_transition
from cloudha.status import next_status_on_disconnection as next_status_on_disconnection

__version__ = "0.1.0"

_logging.getLogger(__name__).addHandler(_logging.NullHandler())


__all__ = [
    "KEEP",
    "AgentCheckInvestigator",
    "AgentGateway",
    "AgentInvestigatorBase",
    "AgentManager",
    "Alert",
    "AlertSink",
    "AlertType",
    "Answer",
    "BMCInvestigator",
    "BaseFenceBuilder",
    "BaseInvestigator",
    "BasePowerDriver",
    "BehindOnPingListener",
    "ChainResult",
    "Clock",
    "CloudHAError",
    "Command",
    "CommandListener",
    "ConfigurationError",
    "ConnectionListener",
    "DirectAgentResource",
    "DisconnectAction",
    "DisconnectDecision",
    "DomainState",
    "Event",
    "Evidence",
    "EvidenceLog",
    "EvidenceSink",
    "FenceBuilder",
    "FenceChain",
    "FenceDecision",
    "FenceLevel",
    "FenceOutcome",
    "FenceResult",
    "FencerContext",
    "Finding",
    "GuestNic",
    "HAEvent",
    "HAScheduler",
    "HAState",
    "Host",
    "HostDirectory",
    "HostPoller",
    "HostType",
    "HypervisorControl",
    "HypervisorInvestigator",
    "HypervisorProbe",
    "HypervisorReport",
    "HypervisorType",
    "Investigation",
    "Investigator",
    "InvestigatorChain",
    "InvestigatorContext",
    "KVMFenceBuilder",
    "KVMInvestigator",
    "LibvirtFencer",
    "LifecycleError",
    "Loop",
    "MaintenanceChecker",
    "ManagementIPInvestigator",
    "ManagementServer",
    "MetricsSink",
    "MigrationFailureSink",
    "MissingExtraError",
    "MonitorTask",
    "NoTransitionError",
    "OobmConfig",
    "OutOfBandManager",
    "PingInvestigator",
    "PingMap",
    "PingReport",
    "PingTask",
    "Pool",
    "PowerDriver",
    "PowerFencer",
    "PowerOperation",
    "PowerState",
    "ProbeAuthError",
    "ProbeConnectionError",
    "ProbeError",
    "ProbeHostKeyError",
    "ProbeTimeout",
    "Pump",
    "ReasonType",
    "Recorder",
    "ResourceState",
    "Router",
    "ScenarioError",
    "Settings",
    "SqlEvidenceStore",
    "StaticOobmConfigs",
    "Status",
    "StatusChange",
    "StoragePoolDirectory",
    "SystemClock",
    "TeeSink",
    "VMwareInvestigator",
    "Verdict",
    "Vm",
    "VmNetworkDirectory",
    "VmOrchestrator",
    "VmPowerState",
    "VmState",
    "VmSync",
    "VmType",
    "XenServerInvestigator",
    "build_chain",
    "build_fence_chain",
    "decide_after_investigation",
    "ha_transition",
    "host_outcome",
    "host_transition",
    "needs_investigation",
    "next_status_on_disconnection",
]
