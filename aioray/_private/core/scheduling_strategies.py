"""Scheduling strategies with Ray's names (public at aioray.util.scheduling_strategies)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aioray._private.wire.schema import LabelExpression, Strategy

if TYPE_CHECKING:
    from aioray._private.owner.placement_groups import PlacementGroup


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
        placement_group: PlacementGroup | None,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


class _LabelOperator:
    """One condition on a node label's value (Ray's In, NotIn, Exists, DoesNotExist)."""

    OP = ""

    def __init__(self, *values: str) -> None:
        for v in values:
            if not isinstance(v, str):
                raise ValueError(f"{type(self).__name__}: label values must be strings, got {v!r}.")
        self.values = list(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.values))})"


class In(_LabelOperator):
    """The label's value is one of ``values``."""

    OP = "in"

    def __init__(self, *values: str) -> None:
        if not values:
            raise ValueError("In() needs at least one value.")
        super().__init__(*values)


class NotIn(_LabelOperator):
    """The label is absent or its value is none of ``values``."""

    OP = "not_in"

    def __init__(self, *values: str) -> None:
        if not values:
            raise ValueError("NotIn() needs at least one value.")
        super().__init__(*values)


class Exists(_LabelOperator):
    """The node has the label."""

    OP = "exists"

    def __init__(self) -> None:
        super().__init__()


class DoesNotExist(_LabelOperator):
    """The node does not have the label."""

    OP = "does_not_exist"

    def __init__(self) -> None:
        super().__init__()


class NodeLabelSchedulingStrategy:
    """Run on a node whose labels satisfy ``hard``; prefer those satisfying ``soft``."""

    def __init__(
        self, hard: dict[str, _LabelOperator], *, soft: dict[str, _LabelOperator] | None = None
    ) -> None:
        self.hard = _check_labels("hard", hard)
        self.soft = _check_labels("soft", soft or {})
        if not self.hard and not self.soft:
            raise ValueError(
                "The `hard` and `soft` parameter of NodeLabelSchedulingStrategy cannot both "
                "be empty."
            )

    def __repr__(self) -> str:
        return f"NodeLabelSchedulingStrategy(hard={self.hard!r}, soft={self.soft!r})"


def _check_labels(which: str, expressions: object) -> dict[str, _LabelOperator]:
    if not isinstance(expressions, dict):
        raise ValueError(
            f"NodeLabelSchedulingStrategy: {which} must be a dict, got {expressions!r}"
        )
    for key, op in expressions.items():
        if not isinstance(key, str) or not isinstance(op, _LabelOperator):
            raise ValueError(
                f"NodeLabelSchedulingStrategy: {which} maps label names to In, NotIn, "
                f"Exists or DoesNotExist, got {key!r}: {op!r}."
            )
    return dict(expressions)


def _label_wire(expressions: dict[str, _LabelOperator]) -> list[LabelExpression]:
    return [(key, op.OP, op.values) for key, op in expressions.items()]


def strategy_to_wire(strategy: object) -> Strategy:
    """The form a scheduling strategy travels in to raylets and the GCS (None: DEFAULT).

    Placement-group strategies add their own form here.
    """
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return (
            "NODE",
            bytes.fromhex(strategy.node_id),
            bool(strategy.soft),
            bool(strategy._spill_on_unavailable),
            bool(strategy._fail_on_unavailable),
        )
    if isinstance(strategy, NodeLabelSchedulingStrategy):
        return ("LABEL", _label_wire(strategy.hard), _label_wire(strategy.soft))
    return None
