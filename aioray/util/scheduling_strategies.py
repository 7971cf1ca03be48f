"""``aioray.util.scheduling_strategies``: Ray's scheduling strategies, at Ray's path.

They are defined in the core floor (aioray/_private/core/scheduling_strategies.py),
where the option checks and the task and actor specs use them."""

from aioray._private.core.scheduling_strategies import (
    DoesNotExist,
    Exists,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "DoesNotExist",
    "Exists",
    "In",
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "NotIn",
    "PlacementGroupSchedulingStrategy",
]
