"""Investigators: witnesses that say whether a host or VM is alive."""

from cloudha.investigators.base import (
    BaseInvestigator as BaseInvestigator,
)
from cloudha.investigators.base import (
    Finding as Finding,
)
from cloudha.investigators.base import (
    Investigator as Investigator,
)
from cloudha.investigators.base import (
    Verdict as Verdict,
)
from cloudha.investigators.base import (
    host_outcome as host_outcome,
)
from cloudha.investigators.chain import (
    ChainResult as ChainResult,
)
from cloudha.investigators.chain import (
    InvestigatorChain as InvestigatorChain,
)
from cloudha.investigators.chain import (
    order_by_name as order_by_name,
)

__all__ = [
    "BaseInvestigator",
    "ChainResult",
    "Finding",
    "Investigator",
    "InvestigatorChain",
    "Verdict",
    "host_outcome",
    "order_by_name",
]
