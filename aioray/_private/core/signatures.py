"""Checking a call's arguments against the function's signature at ``.remote()``, as Ray
does, so a wrong argument count fails at submission rather than at ``get``.

A signature is read once per function (or method) and reduced to the range of
positional-argument counts that need no further check; only a call with keyword
arguments or a count out of that range pays for ``inspect.Signature.bind``."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from aioray._private.wire.schema import SignatureWire

_P = inspect.Parameter
_NO_CHECK: tuple[int, int, inspect.Signature | None] = (0, sys.maxsize, None)


def arity(
    fn: Callable[..., object], drop_first: bool = False
) -> tuple[int, int, inspect.Signature | None]:
    """``(lo, hi, signature)``: a call with no keywords and lo <= len(args) <= hi binds.

    ``drop_first`` leaves out ``self`` (an actor method read from its class). A callable
    whose signature cannot be read is never checked."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return _NO_CHECK
    params = list(sig.parameters.values())
    if drop_first and params and params[0].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
        params = params[1:]
        sig = sig.replace(parameters=params)
    lo = hi = 0
    for p in params:
        if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is _P.empty:
                lo = hi
        elif p.kind is _P.VAR_POSITIONAL:
            hi = sys.maxsize
        elif p.kind is _P.KEYWORD_ONLY and p.default is _P.empty:
            return 1, 0, sig  # a required keyword: every call is bound
    return lo, hi, sig


def to_wire(fn: Callable[..., object], drop_first: bool) -> SignatureWire | None:
    """A method's signature in msgpack's types (it travels in the actor's meta)."""
    lo, hi, sig = arity(fn, drop_first)
    if sig is None:
        return None
    params = [(p.name, int(p.kind), p.default is not _P.empty) for p in sig.parameters.values()]
    return (lo, min(hi, sys.maxsize), params)


def from_wire(wire: SignatureWire | None) -> tuple[int, int, inspect.Signature | None]:
    """``arity``'s answer from ``to_wire``'s form (defaults stand in as None)."""
    if not wire:
        return _NO_CHECK
    lo, hi, params = wire
    sig = inspect.Signature(
        [
            _P(name, inspect._ParameterKind(kind), default=None if has_default else _P.empty)
            for name, kind, has_default in params
        ]
    )
    return lo, hi, sig


def check(sig: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TypeError (with ``bind``'s message, as Ray gives) unless the call binds (``args`` and
    ``kwargs`` are the user's values)."""
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(str(e)) from None
