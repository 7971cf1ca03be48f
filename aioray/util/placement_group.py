"""``aioray.util.placement_group``: Ray's placement group API (over owner.placement_groups)."""

from __future__ import annotations

from typing import Any

from aioray._private.owner import placement_groups as _impl
from aioray._private.owner.placement_groups import (
    VALID_PLACEMENT_GROUP_STRATEGIES,
    PlacementGroup,
    PlacementGroupID,
)


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
) -> PlacementGroup:
    """Reserve ``bundles`` of resources across the cluster under ``strategy``, asynchronously.

    Strategies: "PACK" (as few nodes as possible), "SPREAD" (distinct nodes where
    possible), "STRICT_PACK" (one node), "STRICT_SPREAD" (one bundle per node).
    ``lifetime="detached"`` keeps the group after its job ends. ``pg.ready()`` /
    ``pg.wait(timeout)`` tell when every bundle is reserved.
    """
    return _impl.create(bundles, strategy, name, lifetime)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's resources; its running tasks and actors are killed."""
    _impl.remove(placement_group)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group with this name (in this namespace)."""
    return _impl.get_by_name(placement_group_name)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """State of one group, or of every group keyed by id hex."""
    return _impl.table(placement_group)


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in a driver."""
    return _impl.current()


def check_placement_group_index(placement_group: PlacementGroup, bundle_index: int) -> None:
    """ValueError unless ``bundle_index`` is -1 or names one of the group's bundles."""
    _impl.check_index(placement_group, bundle_index)


__all__ = [
    "VALID_PLACEMENT_GROUP_STRATEGIES",
    "PlacementGroup",
    "PlacementGroupID",
    "check_placement_group_index",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]
