"""Investigator plugins loaded through entry points by test_investigators."""

from __future__ import annotations

from cloudha import Finding, Host, InvestigatorContext
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
