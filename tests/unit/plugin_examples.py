"""Investigator and fencer plugins loaded through entry points by the unit tests."""

from __future__ import annotations

from cloudha import Finding, Host, InvestigatorContext, Vm
from cloudha.fencing.base import BaseFenceBuilder, FenceResult
from cloudha.fencing.registry import FencerContext
from cloudha.investigators import BaseInvestigator


class ExampleInvestigator(BaseInvestigator):
    name = "ExamplePlugin"

    def __init__(self, ctx: InvestigatorContext) -> None:
        super().__init__(ctx.clock)

    def _agent_alive(self, host: Host) -> Finding:
        return self.unknown("example plugin never knows")


class WithFromContext(BaseInvestigator):
    name = "FromContextPlugin"

    @classmethod
    def from_context(cls, ctx: InvestigatorContext) -> WithFromContext:
        return cls(ctx.clock)

    def _agent_alive(self, host: Host) -> Finding:
        return self.unknown("never knows either")


def raising_factory(ctx: InvestigatorContext) -> ExampleInvestigator:
    raise RuntimeError("cannot reach the plugin's backend")


def not_an_investigator(ctx: InvestigatorContext) -> object:
    return object()


NOT_CALLABLE = 42


class ExampleFencer(BaseFenceBuilder):
    """A fencer plugin built from the fencer context."""

    name = "ExampleFencer"

    def __init__(self, ctx: FencerContext) -> None:
        super().__init__(ctx.clock, timeout=5.0)

    def _fence(self, vm: Vm, host: Host) -> FenceResult:
        return self.not_fenced("example fencer never fences")


def not_a_fencer(ctx: FencerContext) -> object:
    return object()
