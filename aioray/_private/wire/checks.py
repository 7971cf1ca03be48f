"""Checks of a message body as it arrives from the wire, against its schema declaration.

Floor 1 (wire). ``schema.py`` declares the bodies for mypy; at run time a handler that
stores what it receives, or accounts with it, first runs these on the body. A body of
the wrong shape, type or range (a buggy or hostile peer) is refused with an error that
names the method, the field and what was expected; the RPC layer answers a request with
it (and logs a notice's), and nothing of the body reaches the handler's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# A field of an array body: its name, and the types its value may have (exactly: True
# is not an int here, and an int amount is a float's only stand-in, in ``resources``).
Field = tuple[str, type | tuple[type, ...]]


def array(method: str, body: object, fields: Sequence[Field]) -> Sequence[Any]:
    """``body`` if it is an array of exactly ``fields`` (name, types), else a TypeError
    naming the first field that is wrong."""
    if not isinstance(body, (list, tuple)) or len(body) != len(fields):
        names = ", ".join(name for name, _ in fields)
        raise TypeError(f"{method} takes [{names}], got {_kind(body)}")
    for (name, types), value in zip(fields, body, strict=True):
        allowed = types if isinstance(types, tuple) else (types,)
        if type(value) not in allowed:
            wanted = " or ".join(t.__name__ for t in allowed)
            raise TypeError(f"{method}: {name} must be {wanted}, got {_kind(value)}")
    return body


def resources(method: str, name: str, value: object) -> dict[str, float]:
    """A resource map (``schema.Resources``) as floats: names are strings, amounts finite
    and not negative (a NaN or an infinity would poison the node's accounting for good),
    else a TypeError or ValueError naming the entry."""
    if type(value) is not dict:
        raise TypeError(f"{method}: {name} must be a map of resource amounts, got {_kind(value)}")
    out: dict[str, float] = {}
    for k, amount in value.items():
        if type(k) is not str:
            raise TypeError(f"{method}: {name} has a resource name that is not a string: {k!r}")
        if type(amount) not in (int, float) or not math.isfinite(amount) or amount < 0:
            raise ValueError(
                f"{method}: {name}[{k!r}] must be a finite amount >= 0, got {amount!r}"
            )
        out[k] = float(amount)
    return out


def _kind(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)}"
    return type(value).__name__
