"""Out-of-band management: power drivers, the power-state machine, readiness (docs/fencing.md).

The drivers live in their own modules so that their optional dependencies
load only when used: :mod:`cloudha.oobm.ipmitool` (the ``ipmitool``
program), :mod:`cloudha.oobm.ipmi` (pyghmi), :mod:`cloudha.oobm.redfish`
(sushy); :func:`cloudha.oobm.drivers.default_power_drivers` builds those
that can be loaded.
"""

from cloudha.oobm.manager import OobmConfigSource as OobmConfigSource
from cloudha.oobm.manager import OobmNotConfigured as OobmNotConfigured
from cloudha.oobm.manager import OobmSyncTask as OobmSyncTask
from cloudha.oobm.manager import OutOfBandManager as OutOfBandManager
from cloudha.oobm.manager import Readiness as Readiness
from cloudha.oobm.manager import StaticOobmConfigs as StaticOobmConfigs
from cloudha.oobm.power import BasePowerDriver as BasePowerDriver
from cloudha.oobm.power import OobmConfig as OobmConfig
from cloudha.oobm.power import PowerCommandError as PowerCommandError
from cloudha.oobm.power import PowerDriver as PowerDriver
from cloudha.oobm.power import PowerEvent as PowerEvent
from cloudha.oobm.power import PowerOperation as PowerOperation
from cloudha.oobm.power import PowerResult as PowerResult
from cloudha.oobm.power import PowerState as PowerState
from cloudha.oobm.power import next_power_state as next_power_state
from cloudha.oobm.power import power_event as power_event

__all__ = [
    "BasePowerDriver",
    "OobmConfig",
    "OobmConfigSource",
    "OobmNotConfigured",
    "OobmSyncTask",
    "OutOfBandManager",
    "PowerCommandError",
    "PowerDriver",
    "PowerEvent",
    "PowerOperation",
    "PowerResult",
    "PowerState",
    "Readiness",
    "StaticOobmConfigs",
    "next_power_state",
    "power_event",
]
