"""Investigators: witnesses that say whether a host or VM is alive."""

from cloudha.investigators.agent_check import AgentCheckInvestigator as AgentCheckInvestigator
from cloudha.investigators.base import BaseInvestigator as BaseInvestigator
from cloudha.investigators.base import Finding as Finding
from cloudha.investigators.base import Investigator as Investigator
from cloudha.investigators.base import Verdict as Verdict
from cloudha.investigators.base import Witness as Witness
from cloudha.investigators.base import host_outcome as host_outcome
from cloudha.investigators.chain import ChainResult as ChainResult
from cloudha.investigators.chain import InvestigatorChain as InvestigatorChain
from cloudha.investigators.chain import order_by_name as order_by_name
from cloudha.investigators.chain import proves_no_vm_runs as proves_no_vm_runs
from cloudha.investigators.hypervisor import HypervisorInvestigator as HypervisorInvestigator
from cloudha.investigators.kvm import KVMInvestigator as KVMInvestigator
from cloudha.investigators.ping import ManagementIPInvestigator as ManagementIPInvestigator
from cloudha.investigators.ping import PingInvestigator as PingInvestigator
from cloudha.investigators.power import BMCInvestigator as BMCInvestigator
from cloudha.investigators.registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from cloudha.investigators.registry import InvestigatorContext as InvestigatorContext
from cloudha.investigators.registry import build_chain as build_chain
from cloudha.investigators.registry import builtin_investigators as builtin_investigators
from cloudha.investigators.registry import discover_investigators as discover_investigators
from cloudha.investigators.support import AgentInvestigatorBase as AgentInvestigatorBase
from cloudha.investigators.support import StaleProof as StaleProof
from cloudha.investigators.support import judge_stale as judge_stale
from cloudha.investigators.support import stale_proof as stale_proof
from cloudha.investigators.vmware import VMwareInvestigator as VMwareInvestigator
from cloudha.investigators.xen import XenServerInvestigator as XenServerInvestigator

__all__ = [
    "ENTRY_POINT_GROUP",
    "AgentCheckInvestigator",
    "AgentInvestigatorBase",
    "BMCInvestigator",
    "BaseInvestigator",
    "ChainResult",
    "Finding",
    "HypervisorInvestigator",
    "Investigator",
    "InvestigatorChain",
    "InvestigatorContext",
    "KVMInvestigator",
    "ManagementIPInvestigator",
    "PingInvestigator",
    "StaleProof",
    "VMwareInvestigator",
    "Verdict",
    "Witness",
    "XenServerInvestigator",
    "build_chain",
    "builtin_investigators",
    "discover_investigators",
    "host_outcome",
    "judge_stale",
    "order_by_name",
    "proves_no_vm_runs",
    "stale_proof",
]
