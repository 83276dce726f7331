"""CloudStack's Host-HA framework (spec §7): the per-host HA state machine and its parts."""

from cloudha.hostha.fsm import HA_TRANSITIONS as HA_TRANSITIONS
from cloudha.hostha.fsm import HAEvent as HAEvent
from cloudha.hostha.fsm import HAState as HAState
from cloudha.hostha.fsm import ha_transition as ha_transition

__all__ = ["HA_TRANSITIONS", "HAEvent", "HAState", "ha_transition"]
