"""Test support: a fake clock, fakes of every port, a simulated World, and the simulator.

A :class:`World` (``cloudha.testing.world``) is the simulated cloud's ground truth with a
fake of every port backed by it (``World.ports()``); the simulator runs a
:class:`cloudha.ManagementServer` on one, and so can an embedder's test (with a FakeClock).

Not imported by ``import cloudha``.
"""

from cloudha.testing.clock import FakeClock as FakeClock
from cloudha.testing.cluster import FakeServerRegistry as FakeServerRegistry
from cloudha.testing.cluster import check_server_registry as check_server_registry
from cloudha.testing.contract import check_agent_gateway as check_agent_gateway
from cloudha.testing.contract import check_fencer as check_fencer
from cloudha.testing.contract import check_ha_provider as check_ha_provider
from cloudha.testing.contract import check_host_directory as check_host_directory
from cloudha.testing.contract import check_host_poller as check_host_poller
from cloudha.testing.contract import check_host_shell as check_host_shell
from cloudha.testing.contract import check_investigator as check_investigator
from cloudha.testing.contract import check_metrics_sink as check_metrics_sink
from cloudha.testing.contract import check_power_driver as check_power_driver
from cloudha.testing.contract import check_suspicion_check as check_suspicion_check
from cloudha.testing.contract import check_vm_orchestrator as check_vm_orchestrator
from cloudha.testing.contract import check_volume_directory as check_volume_directory
from cloudha.testing.fakes import FakeAgentGateway as FakeAgentGateway
from cloudha.testing.fakes import FakeDirectAgentResource as FakeDirectAgentResource
from cloudha.testing.fakes import FakeHostPoller as FakeHostPoller
from cloudha.testing.fakes import FakeHostShell as FakeHostShell
from cloudha.testing.fakes import FakeHypervisorProbe as FakeHypervisorProbe
from cloudha.testing.fakes import InMemoryHostDirectory as InMemoryHostDirectory
from cloudha.testing.fakes import InMemoryStoragePools as InMemoryStoragePools
from cloudha.testing.fakes import InMemoryVmNetworks as InMemoryVmNetworks
from cloudha.testing.fakes import InMemoryVolumeDirectory as InMemoryVolumeDirectory
from cloudha.testing.fakes import RecordingAlertSink as RecordingAlertSink
from cloudha.testing.fakes import RecordingHAScheduler as RecordingHAScheduler
from cloudha.testing.fakes import RecordingMetricsSink as RecordingMetricsSink
from cloudha.testing.fakes import RecordingMigrationFailures as RecordingMigrationFailures
from cloudha.testing.fakes import ScheduledRestart as ScheduledRestart
from cloudha.testing.fakes import ScriptedFencer as ScriptedFencer
from cloudha.testing.fakes import ScriptedHAProvider as ScriptedHAProvider
from cloudha.testing.fakes import ScriptedInvestigator as ScriptedInvestigator
from cloudha.testing.fakes import ScriptedSuspicion as ScriptedSuspicion
from cloudha.testing.heartbeat import FakeWatchdog as FakeWatchdog
from cloudha.testing.heartbeat import MemoryStorage as MemoryStorage
from cloudha.testing.heartbeat import RecordingSelfFencer as RecordingSelfFencer
from cloudha.testing.heartbeat import ScriptedIsolationProbe as ScriptedIsolationProbe
from cloudha.testing.heartbeat import check_isolation_probe as check_isolation_probe
from cloudha.testing.heartbeat import check_watchdog as check_watchdog
from cloudha.testing.loops import LoopRunner as LoopRunner
from cloudha.testing.oobm import FakeBmc as FakeBmc
from cloudha.testing.oobm import FakePowerDriver as FakePowerDriver
from cloudha.testing.orchestrator import FakeOrchestratorHost as FakeOrchestratorHost
from cloudha.testing.orchestrator import InMemoryOrchestrator as InMemoryOrchestrator
from cloudha.testing.orchestrator import OrchestratorCall as OrchestratorCall
from cloudha.testing.orchestrator import StartRecord as StartRecord
from cloudha.testing.scenario import Scenario as Scenario
from cloudha.testing.scenario import load_scenario as load_scenario
from cloudha.testing.scenario import parse_scenario as parse_scenario
from cloudha.testing.simulator import Simulation as Simulation
from cloudha.testing.simulator import simulate as simulate
from cloudha.testing.simulator import to_json as to_json
from cloudha.testing.workstore import InMemoryWorkStore as InMemoryWorkStore
from cloudha.testing.workstore import check_work_store as check_work_store
from cloudha.testing.world import EventTimeline as EventTimeline
from cloudha.testing.world import World as World
from cloudha.testing.world import WorldAgentGateway as WorldAgentGateway
from cloudha.testing.world import WorldDirectResources as WorldDirectResources
from cloudha.testing.world import WorldHost as WorldHost
from cloudha.testing.world import WorldHostDirectory as WorldHostDirectory
from cloudha.testing.world import WorldHostShell as WorldHostShell
from cloudha.testing.world import WorldHypervisors as WorldHypervisors
from cloudha.testing.world import WorldOrchestrator as WorldOrchestrator
from cloudha.testing.world import WorldPools as WorldPools
from cloudha.testing.world import WorldPorts as WorldPorts
from cloudha.testing.world import WorldPowerDriver as WorldPowerDriver
from cloudha.testing.world import WorldStorage as WorldStorage
from cloudha.testing.world import WorldVm as WorldVm
from cloudha.testing.world import WorldVolumes as WorldVolumes

__all__ = [
    "EventTimeline",
    "FakeAgentGateway",
    "FakeBmc",
    "FakeClock",
    "FakeDirectAgentResource",
    "FakeHostPoller",
    "FakeHostShell",
    "FakeHypervisorProbe",
    "FakeOrchestratorHost",
    "FakePowerDriver",
    "FakeServerRegistry",
    "FakeWatchdog",
    "InMemoryHostDirectory",
    "InMemoryOrchestrator",
    "InMemoryStoragePools",
    "InMemoryVmNetworks",
    "InMemoryVolumeDirectory",
    "InMemoryWorkStore",
    "LoopRunner",
    "MemoryStorage",
    "OrchestratorCall",
    "RecordingAlertSink",
    "RecordingHAScheduler",
    "RecordingMetricsSink",
    "RecordingMigrationFailures",
    "RecordingSelfFencer",
    "Scenario",
    "ScheduledRestart",
    "ScriptedFencer",
    "ScriptedHAProvider",
    "ScriptedInvestigator",
    "ScriptedIsolationProbe",
    "ScriptedSuspicion",
    "Simulation",
    "StartRecord",
    "World",
    "WorldAgentGateway",
    "WorldDirectResources",
    "WorldHost",
    "WorldHostDirectory",
    "WorldHostShell",
    "WorldHypervisors",
    "WorldOrchestrator",
    "WorldPools",
    "WorldPorts",
    "WorldPowerDriver",
    "WorldStorage",
    "WorldVm",
    "WorldVolumes",
    "check_agent_gateway",
    "check_fencer",
    "check_ha_provider",
    "check_host_directory",
    "check_host_poller",
    "check_host_shell",
    "check_investigator",
    "check_isolation_probe",
    "check_metrics_sink",
    "check_power_driver",
    "check_server_registry",
    "check_suspicion_check",
    "check_vm_orchestrator",
    "check_volume_directory",
    "check_watchdog",
    "check_work_store",
    "load_scenario",
    "parse_scenario",
    "simulate",
    "to_json",
]
