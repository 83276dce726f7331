"""Several management servers on one database: the registry, host ownership and takeover.

See docs/cluster.md. :class:`SqlServerRegistry` keeps the servers;
:class:`ClusterMember` is each server's ``Cluster`` loop (heartbeat,
departures, claims, rebalancing), wired by :class:`cloudha.ManagementServer`
when it is given a ``registry``.
"""

from cloudha.cluster.member import ClusterMember
from cloudha.cluster.registry import SqlServerRegistry

__all__ = ["ClusterMember", "SqlServerRegistry"]
