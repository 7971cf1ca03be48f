"""aioray.util: helpers with Ray's names."""

from aioray.api import list_named_actors
from aioray.util.actor_pool import ActorPool
from aioray.util.iteration import as_completed, map_unordered
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
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroup",
    "PlacementGroupSchedulingStrategy",
    "as_completed",
    "get_current_placement_group",
    "get_placement_group",
    "list_named_actors",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "progress",
    "remove_placement_group",
]
