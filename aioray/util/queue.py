"""Queue (aioray.util.queue): a FIFO queue shared by tasks and actors, as in Ray.

The items live in one async actor, ``_QueueActor``, around an asyncio.Queue; a Queue
is a picklable client of that actor, so it can be passed to tasks. ``ray`` is looked
up at call time, so importing this module is cycle-free.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable
from typing import Any

import aioray as ray


class Empty(queue.Empty):
    """Raised by get() when the queue is empty: at once (non-blocking) or on timeout."""


class Full(queue.Full):
    """Raised by put() when the queue is full: at once (non-blocking) or on timeout."""


def _plain(err: Exception) -> Exception:
    """The Empty/Full a remote call raised, without its RayTaskError wrapper."""
    cls = Empty if isinstance(err, Empty) else Full
    return cls(*err.args)


def _result(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except (Empty, Full) as err:
        raise _plain(err) from None


async def _result_async(ref: Any) -> Any:
    try:
        return await ref
    except (Empty, Full) as err:
        raise _plain(err) from None


def _check_timeout(block: bool, timeout: float | None) -> None:
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in, first-out queue on the cluster, like asyncio.Queue with sync and async API.

    put() blocks while the queue is full and get() while it is empty, each up to an
    optional timeout; the batch calls move many items in one round trip. With several
    producers (consumers) blocked on a full (empty) queue, their order is not guaranteed.

    Args:
        maxsize: the most items the queue holds; 0 means unbounded.
        actor_options: options for the backing actor, passed to ``.options(...)``
            (e.g. ``{"num_cpus": 1}``).

    Example::

        q = Queue(maxsize=10)
        q.put(1)
        q.get()  # 1
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        self.maxsize = maxsize
        actor_cls = ray.remote(_QueueActor).options(**(actor_options or {}))
        self.actor: Any = actor_cls.remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def __repr__(self) -> str:
        return f"<Queue maxsize={self.maxsize} actor={self.actor!r}>"

    def size(self) -> int:
        """The number of items in the queue."""
        return int(ray.get(self.actor.qsize.remote()))

    def qsize(self) -> int:
        """The number of items in the queue (same as size())."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no items."""
        return bool(ray.get(self.actor.empty.remote()))

    def full(self) -> bool:
        """Whether the queue holds maxsize items (never, if unbounded)."""
        return bool(ray.get(self.actor.full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if full and ``block``, wait up to ``timeout`` seconds for room.

        Raises:
            Full: the queue is full and ``block`` is False, or the wait timed out.
            ValueError: ``block`` is True and ``timeout`` is negative.
        """
        _result(self._put(item, block, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """put() for asyncio code: awaits instead of blocking; raises as put() does."""
        await _result_async(self._put(item, block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the next item; if empty and ``block``, wait up to ``timeout``.

        Raises:
            Empty: the queue is empty and ``block`` is False, or the wait timed out.
            ValueError: ``block`` is True and ``timeout`` is negative.
        """
        return _result(self._get(block, timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """get() for asyncio code: awaits instead of blocking; raises as get() does."""
        return await _result_async(self._get(block, timeout))

    def put_nowait(self, item: Any) -> None:
        """put(item, block=False): raises Full at once if the queue is full."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all ``items`` in order, or none of them if they do not all fit.

        Raises:
            TypeError: ``items`` is not iterable.
            Full: the items do not fit in the queue.
        """
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _result(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """get(block=False): raises Empty at once if the queue is empty."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the next ``num_items`` items in order, or none if too few.

        Raises:
            TypeError: ``num_items`` is not an int.
            ValueError: ``num_items`` is negative.
            Empty: the queue holds fewer than ``num_items`` items.
        """
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return list(_result(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Terminate the backing actor, releasing its resources; the items are lost.

        Args:
            force: kill the actor at once. Otherwise ask it to exit, and kill it only
                if it has not exited after ``grace_period_s`` seconds.
            grace_period_s: how long a graceful exit may take.
        """
        if self.actor is not None:
            if force:
                ray.kill(self.actor, no_restart=True)
            else:
                done = self.actor.__ray_terminate__.remote()
                _, not_done = ray.wait([done], timeout=grace_period_s)
                if not_done:
                    ray.kill(self.actor, no_restart=True)
        self.actor = None

    def _put(self, item: Any, block: bool, timeout: float | None) -> Any:
        _check_timeout(block, timeout)
        if not block:
            return self.actor.put_nowait.remote(item)
        return self.actor.put.remote(item, timeout)

    def _get(self, block: bool, timeout: float | None) -> Any:
        _check_timeout(block, timeout)
        if not block:
            return self.actor.get_nowait.remote()
        return self.actor.get.remote(timeout)


class _QueueActor:
    """The actor that holds a Queue's items; every method is async, so they interleave."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        # Room now: take it, even with timeout=0 (wait_for would give up before trying).
        if not self.queue.full():
            self.queue.put_nowait(item)
            return
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"Queue still full after {timeout} s") from None

    async def get(self, timeout: float | None = None) -> Any:
        if not self.queue.empty():
            return self.queue.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"Queue still empty after {timeout} s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"Queue is full (maxsize {self.maxsize})") from None

    async def put_nowait_batch(self, items: list[Any]) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(
                f"Cannot add {len(items)} items to queue of size "
                f"{self.queue.qsize()} and maxsize {self.maxsize}."
            )
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("Queue is empty") from None

    async def get_nowait_batch(self, num_items: int) -> list[Any]:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]
