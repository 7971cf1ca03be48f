"""``as_completed`` and ``map_unordered`` (Ray's ray.util helpers), sync and async.

Both iterate with ``for`` (blocking ``wait``) or ``async for`` (``wait_async``, never
blocking the loop). Results come in completion order, a chunk at a time; within a
chunk, in submission order (as ``wait`` returns them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import aioray.api as api
import aioray.async_api as async_api
from aioray._private.owner.object_ref import ObjectRef

DEFAULT_CHUNK_SIZE = 10
DEFAULT_BACKPRESSURE_SIZE = 100


class as_completed:
    """Yield the results of ``refs`` as they become ready, ``chunk_size`` at a time."""

    def __init__(
        self,
        refs: Sequence[ObjectRef],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        yield_obj_refs: bool = False,
        timeout: float | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("`chunk_size` must be >= 1")
        self._refs = list(refs)
        self._chunk = chunk_size
        self._refs_only = yield_obj_refs
        self._timeout = timeout

    def __iter__(self) -> Iterator[Any]:
        pending = self._refs
        while pending:
            n = min(self._chunk, len(pending))
            ready, pending = api.wait(pending, num_returns=n, timeout=self._timeout)
            if not ready:
                raise TimeoutError(f"no result became ready within {self._timeout}s")
            yield from (ready if self._refs_only else api.get(ready))

    async def __aiter__(self) -> AsyncIterator[Any]:
        pending = self._refs
        while pending:
            n = min(self._chunk, len(pending))
            ready, pending = await async_api.wait_async(
                pending, num_returns=n, timeout=self._timeout, fetch_local=True
            )
            if not ready:
                raise TimeoutError(f"no result became ready within {self._timeout}s")
            values = ready if self._refs_only else await async_api.get_async(ready)
            for v in values:
                yield v


class map_unordered:
    """Apply a remote function to ``items``; yield results as they complete.

    At most ``backpressure_size`` tasks are in flight (None: no limit).
    """

    def __init__(
        self,
        fn: Any,
        items: Iterable[Any],
        *,
        backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        yield_obj_refs: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("`chunk_size` must be >= 1")
        if backpressure_size is not None and backpressure_size < 1:
            raise ValueError("`backpressure_size` must be >= 1 or None")
        if not hasattr(fn, "remote"):
            raise TypeError("map_unordered() needs a remote function (decorated with @remote)")
        self._fn = fn
        self._items = items
        self._limit = backpressure_size
        self._chunk = chunk_size
        self._refs_only = yield_obj_refs

    def __iter__(self) -> Iterator[Any]:
        pending: list[ObjectRef] = []
        for item in self._items:
            if self._limit is not None and len(pending) >= self._limit:
                ready, pending = api.wait(pending, num_returns=min(self._chunk, len(pending)))
                yield from (ready if self._refs_only else api.get(ready))
            pending.append(self._fn.remote(item))
        yield from as_completed(pending, chunk_size=self._chunk, yield_obj_refs=self._refs_only)

    async def __aiter__(self) -> AsyncIterator[Any]:
        pending: list[ObjectRef] = []
        for item in self._items:
            if self._limit is not None and len(pending) >= self._limit:
                n = min(self._chunk, len(pending))
                ready, pending = await async_api.wait_async(
                    pending, num_returns=n, fetch_local=True
                )
                for v in ready if self._refs_only else await async_api.get_async(ready):
                    yield v
            pending.append(self._fn.remote(item))
        async for v in as_completed(
            pending, chunk_size=self._chunk, yield_obj_refs=self._refs_only
        ):
            yield v
