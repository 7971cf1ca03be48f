"""Sizes of a CoreWorker's bookkeeping tables, for leak checks and the memory benchmark.

A process that runs the same put/task cycle forever must not grow any table. Rather
than naming each table (and going stale as modules change), this walks the
CoreWorker and the state objects it holds and reports the length of every dict, set,
list and deque attribute, as ``"<owner>.<attribute>": size``. Per-key tables of
the scheduling classes (queues, leases) are summed over the classes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

_CONTAINERS = (dict, set, frozenset, list, collections.deque)


def _attributes(obj: Any) -> Iterator[tuple[str, Any]]:
    seen: set[str] = set()
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name not in seen and hasattr(obj, name):
                seen.add(name)
                yield name, getattr(obj, name)
    yield from getattr(obj, "__dict__", {}).items()


def _sizes(prefix: str, obj: Any, out: dict[str, int]) -> None:
    for name, value in _attributes(obj):
        if isinstance(value, _CONTAINERS):
            out[f"{prefix}.{name}"] = len(value)


def core_worker_tables(cw: Any) -> dict[str, int]:
    """(any thread; a snapshot, not atomic) Every table of ``cw`` and its state objects."""
    out: dict[str, int] = {}
    _sizes("core_worker", cw, out)
    for name in ("refs", "memory_store", "submitter", "actors", "streams"):
        part = getattr(cw, name, None)
        if part is not None:
            _sizes(name, part, out)
    classes = getattr(getattr(cw, "submitter", None), "classes", {})
    for field in ("queue", "leases"):
        out[f"submitter.classes.{field}"] = sum(len(getattr(c, field)) for c in classes.values())
    return out


def raylet_state(address: tuple[str, int] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """A raylet's ``get_state`` (its tables and store counters): this driver's own
    raylet, or the one at ``address`` over a connection of its own."""
    from aioray._private.owner import worker_context
    from aioray._private.rpc import loop as _loop
    from aioray._private.rpc import rpc

    if address is None:
        cw = worker_context.ensure_connected()
        return dict(cw.run_sync(cw.raylet.call("get_state"), timeout=timeout))

    async def query() -> dict[str, Any]:
        conn, _ = await rpc.connect(*address, hello={"role": "client"}, timeout=timeout)
        try:
            return dict(await conn.call("get_state"))
        finally:
            conn.close()

    return dict(_loop.run(query()))  # type: ignore[call-overload]
