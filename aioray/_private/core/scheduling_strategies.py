"""Scheduling strategies with Ray's names (public at aioray.util.scheduling_strategies)."""

from __future__ import annotations

from typing import Any


class NodeAffinitySchedulingStrategy:
    """Run on the node with ``node_id``; with ``soft=True`` fall back to any node."""

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        try:
            bytes.fromhex(node_id)
        except (TypeError, ValueError):
            raise ValueError(
                f"NodeAffinitySchedulingStrategy: node_id must be a node id in hex "
                f"(e.g. from get_runtime_context().get_node_id()), got {node_id!r}."
            ) from None
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run inside a placement group's bundle."""

    def __init__(
        self,
        placement_group: Any,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


def strategy_to_wire(strategy: Any) -> Any:
    """The form a scheduling strategy travels in to raylets and the GCS (None: DEFAULT).

    Placement-group strategies add their own form here.
    """
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return [
            "NODE",
            bytes.fromhex(strategy.node_id),
            bool(strategy.soft),
            bool(strategy._spill_on_unavailable),
            bool(strategy._fail_on_unavailable),
        ]
    return None
