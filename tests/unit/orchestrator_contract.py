"""The VmOrchestrator contract check, now public as ``cloudha.testing.check_vm_orchestrator``."""

from __future__ import annotations

from cloudha.testing.contract import Make, check_vm_orchestrator

__all__ = ["Make", "check_orchestrator"]

check_orchestrator = check_vm_orchestrator
