"""CloudStack's Host-HA framework (spec §7): per-host health, activity, recovery and fencing.

* :mod:`cloudha.hostha.fsm`: the state machine, exactly CloudStack's;
* :mod:`cloudha.hostha.config`: the state in SQL, its optimistic update and ownership rule;
* :mod:`cloudha.hostha.counter`: the per-resource counters;
* :mod:`cloudha.hostha.provider`: the provider base and the KVM provider;
* :mod:`cloudha.hostha.manager`: the poll loop and its bounded executors;
* :mod:`cloudha.hostha.bridge`: Host-HA's verdict for VM-HA (an investigator).

:class:`cloudha.ManagementServer` wires them in; docs/host-ha.md tells the story.
"""

from cloudha.hostha.bridge import HostHAInvestigator as HostHAInvestigator
from cloudha.hostha.config import HOST as HOST
from cloudha.hostha.config import HAConfig as HAConfig
from cloudha.hostha.config import SqlHAConfigStore as SqlHAConfigStore
from cloudha.hostha.counter import HAResourceCounter as HAResourceCounter
from cloudha.hostha.executor import BoundedExecutor as BoundedExecutor
from cloudha.hostha.executor import InlineExecutor as InlineExecutor
from cloudha.hostha.fsm import HA_TRANSITIONS as HA_TRANSITIONS
from cloudha.hostha.fsm import HAEvent as HAEvent
from cloudha.hostha.fsm import HAState as HAState
from cloudha.hostha.fsm import ha_transition as ha_transition
from cloudha.hostha.manager import CLUSTER as CLUSTER
from cloudha.hostha.manager import POLL_INTERVAL as POLL_INTERVAL
from cloudha.hostha.manager import ZONE as ZONE
from cloudha.hostha.manager import HAExecutors as HAExecutors
from cloudha.hostha.manager import HAManager as HAManager
from cloudha.hostha.provider import BaseHAProvider as BaseHAProvider
from cloudha.hostha.provider import HAProviderConfig as HAProviderConfig
from cloudha.hostha.provider import KVMHAProvider as KVMHAProvider

__all__ = [
    "CLUSTER",
    "HA_TRANSITIONS",
    "HOST",
    "POLL_INTERVAL",
    "ZONE",
    "BaseHAProvider",
    "BoundedExecutor",
    "HAConfig",
    "HAEvent",
    "HAExecutors",
    "HAManager",
    "HAProviderConfig",
    "HAResourceCounter",
    "HAState",
    "HostHAInvestigator",
    "InlineExecutor",
    "KVMHAProvider",
    "SqlHAConfigStore",
    "ha_transition",
]
