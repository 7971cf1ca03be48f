"""aioray.util: helpers with Ray's names."""

from aioray.api import list_named_actors
from aioray.util.actor_pool import ActorPool
from aioray.util.check_serialize import inspect_serializability
from aioray.util.iteration import as_completed, map_unordered
from aioray.util.network import get_node_ip_address
from aioray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from aioray.util.progress import progress
from aioray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)
from aioray.util.serialization import deregister_serializer, register_serializer

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "PlacementGroup",
    "PlacementGroupSchedulingStrategy",
    "as_completed",
    "deregister_serializer",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "inspect_serializability",
    "list_named_actors",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "progress",
    "register_serializer",
    "remove_placement_group",
]
