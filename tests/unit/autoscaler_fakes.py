"""Shared fakes for the autoscaler's unit tests: configs and node states, built short."""

from __future__ import annotations

from typing import Any

from aioray.daemons.autoscaler.config import AutoscalingConfig, parse
from aioray.daemons.autoscaler.planner import Demand, NodeState, shape_of


def make_config(types: dict[str, dict[str, Any]] | None = None, **top: Any) -> AutoscalingConfig:
    """A local-provider config; ``types`` defaults to one 2-CPU worker type (max 3)."""
    raw: dict[str, Any] = {
        "provider": {"type": "local"},
        "available_node_types": types
        or {"cpu2": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 3}},
        **top,
    }
    return parse(raw)


def head(cpus: float = 0, node_id: str = "head") -> NodeState:
    res = {"CPU": float(cpus)}
    return NodeState(node_id, "head", res, dict(res), is_head=True)


def worker(
    node_id: str,
    node_type: str = "cpu2",
    total: dict[str, float] | None = None,
    free: dict[str, float] | None = None,
    idle_since: float | None = None,
    launching: bool = False,
) -> NodeState:
    total = total or {"CPU": 2.0}
    return NodeState(
        node_id,
        node_type,
        total,
        dict(total if free is None else free),
        False,
        launching,
        idle_since,
    )


def tasks(*shapes: tuple[dict[str, float], int]) -> Demand:
    return Demand(shapes={shape_of(s): c for s, c in shapes})
