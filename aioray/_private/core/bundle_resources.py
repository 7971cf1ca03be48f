"""Placement-group resource names (Ray's), shared by the raylet, the GCS and the owners.

A committed bundle ``i`` of group ``g`` adds to its node, for each resource ``R`` it
reserved, ``R_group_i_g`` (that bundle) and ``R_group_g`` (any bundle of the group
on that node), plus ``bundle_group_i_g`` and ``bundle_group_g`` of 1000 units each.
A task in the group asks for the renamed resources and 0.001 of the ``bundle``
one, so even a task asking for nothing is steered to the bundle's node. Since
these are ordinary resource names, the schedulers need no special case.
"""

from __future__ import annotations

BUNDLE = "bundle"
BUNDLE_UNITS = 1000.0
BUNDLE_REQUEST = 0.001


def group_resources(pg_hex: str, index: int, bundle: dict[str, float]) -> dict[str, float]:
    """What committing bundle ``index`` adds to its node's resources."""
    out: dict[str, float] = {}
    for name, amount in bundle.items():
        if amount > 0:
            out[f"{name}_group_{index}_{pg_hex}"] = float(amount)
            out[f"{name}_group_{pg_hex}"] = float(amount)
    out[f"{BUNDLE}_group_{index}_{pg_hex}"] = BUNDLE_UNITS
    out[f"{BUNDLE}_group_{pg_hex}"] = BUNDLE_UNITS
    return out


def task_resources(pg_hex: str, index: int, request: dict[str, float]) -> dict[str, float]:
    """A task's or actor's request rewritten to run in bundle ``index`` (-1: any bundle)."""
    suffix = f"{index}_{pg_hex}" if index >= 0 else pg_hex
    out = {f"{name}_group_{suffix}": amount for name, amount in request.items() if amount > 0}
    out[f"{BUNDLE}_group_{suffix}"] = BUNDLE_REQUEST
    return out


def is_group_resource(name: str, pg_hex: str | None = None) -> bool:
    """Whether ``name`` is a placement group's (``pg_hex``'s, if given) resource."""
    if pg_hex is not None:
        return name.endswith(pg_hex) and "_group_" in name
    return "_group_" in name


def add(into: dict[str, float], res: dict[str, float], sign: float = 1.0) -> None:
    """``into += sign * res``, dropping names that reach zero."""
    for k, v in res.items():
        left = into.get(k, 0.0) + sign * v
        if abs(left) < 1e-9:
            into.pop(k, None)
        else:
            into[k] = left
