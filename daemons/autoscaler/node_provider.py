"""The node provider interface: what the autoscaler asks of the system that makes nodes.

A provider creates nodes of a type, terminates them, and lists the nodes it made
that are not terminated, with their tags (cluster name, node type) and, once
known, the address their raylet registers with (how the autoscaler matches a
provider node to a GCS node). Implementations: ``local_provider`` (serve-node
processes on loopback addresses) and ``kubernetes_provider`` (worker pods).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from aioray.daemons.autoscaler.config import NodeType

TAG_CLUSTER = "aioray.io/cluster"
TAG_NODE_TYPE = "aioray.io/node-type"
LAUNCHING, RUNNING = "launching", "running"


class ProviderError(Exception):
    """The provider refused or failed a request; the message says why (shown in status)."""


@dataclass
class ProviderNode:
    """A node the provider made: its id, type, address (empty until known) and state."""

    node_id: str
    node_type: str
    ip: str = ""
    state: str = LAUNCHING  # the provider's own view (a Pending pod is launching)
    tags: dict[str, str] = field(default_factory=dict)


class NodeProvider(abc.ABC):
    """Create, list and terminate the cluster's worker nodes."""

    @abc.abstractmethod
    async def create_node(self, node_type: NodeType, count: int) -> list[str]:
        """Start ``count`` nodes of ``node_type``; their ids. Raises ProviderError."""

    @abc.abstractmethod
    async def terminate_node(self, node_id: str) -> None:
        """Stop the node (gone from ``non_terminated_nodes`` after). Raises ProviderError."""

    @abc.abstractmethod
    async def non_terminated_nodes(self) -> list[ProviderNode]:
        """The nodes this cluster's provider made that are launching or running."""

    @abc.abstractmethod
    async def close(self) -> None:
        """The autoscaler stops: release what the provider holds (the local one
        stops its nodes: they belong to this cluster's life)."""
