"""aioray.util: helpers with Ray's names."""

from aioray.api import list_named_actors
from aioray.util.actor_pool import ActorPool
from aioray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "ActorPool",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
    "list_named_actors",
]
