"""CloudStack's Host-HA framework (spec §7): the per-host HA state machine and its parts.

Built so far: the state machine (:mod:`cloudha.hostha.fsm`), the state in SQL
with its optimistic update and ownership rule (:mod:`cloudha.hostha.config`)
and the per-resource counters (:mod:`cloudha.hostha.counter`). The manager's
poll loop, the providers and the bridge to VM HA are not built yet.
"""

from cloudha.hostha.config import HOST as HOST
from cloudha.hostha.config import HAConfig as HAConfig
from cloudha.hostha.config import SqlHAConfigStore as SqlHAConfigStore
from cloudha.hostha.counter import HAResourceCounter as HAResourceCounter
from cloudha.hostha.fsm import HA_TRANSITIONS as HA_TRANSITIONS
from cloudha.hostha.fsm import HAEvent as HAEvent
from cloudha.hostha.fsm import HAState as HAState
from cloudha.hostha.fsm import ha_transition as ha_transition

__all__ = [
    "HA_TRANSITIONS",
    "HOST",
    "HAConfig",
    "HAEvent",
    "HAResourceCounter",
    "HAState",
    "SqlHAConfigStore",
    "ha_transition",
]
