"""aioray.util: helpers with Ray's names."""

from aioray.api import list_named_actors
from aioray.util.actor_pool import ActorPool
from aioray.util.iteration import as_completed, map_unordered
from aioray.util.progress import progress
from aioray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
    "as_completed",
    "list_named_actors",
    "map_unordered",
    "progress",
]
