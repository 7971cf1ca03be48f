"""Calls user threads hand to the CoreWorker's loop that nothing waits for (freeing a
small object whose last ObjectRef went): queued with the loop's posts, but without
waking it. They run when the loop wakes for anything else, or within ``DELAY_S``.

Why: a sync loop ``get(f.remote())`` drops the last result's ref as ``get`` returns,
and the ``post`` of its free woke the loop at once, while the caller still had the
next ``.remote()`` and ``get`` to run: the loop woke only to wait for the GIL, a
second wake-up per round trip. Now the free rides with the next submission's post.

The bound: while lazy posts keep coming, the loop keeps a timer (every ``DELAY_S``)
that drains the posts. When a tick finds that none came since the last, it stops; a
lazy post that finds no timer wakes the loop as ``post`` does, which starts one. A
post does (1) queue, (2) count, (3) look for the timer; a tick does (a) clear the
timer, (b) drain, (c) compare the count with the last tick's and re-arm if it moved.
A post that saw the timer before (a) was queued before (b): it runs now. A post after
(a) sees no timer and wakes the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

DELAY_S = 0.05  # the longest a lazy post waits for the loop to wake


class LazyPosts:
    """Lazy calls onto one CoreWorker's loop: queued with its posts, without a wake-up."""

    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.count = 0  # lazy posts made (only grows; each tick compares it)
        self.seen = 0  # the count at the last tick
        self.tick: asyncio.TimerHandle | None = None  # armed while lazy posts keep coming

    def __repr__(self) -> str:
        return f"<LazyPosts count={self.count} ticking={self.tick is not None}>"

    def free(self, oid: bytes) -> None:
        """(any thread) Free an object no ObjectRef here names any more: lazily if this
        process owns it and it is a small value (its memory is ours alone and nothing
        waits for it), else (in shared memory, holding refs, borrowed) at once."""
        cw = self.cw
        obj = cw.memory_store.get(oid)
        if (
            obj is None
            or obj.data is None
            or obj.contained
            or oid not in cw.owned
            or cw.in_loop_thread()
        ):
            cw.post(cw.free_unreferenced, oid)
        else:
            self.post(cw.free_unreferenced, oid)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """(any thread but the loop's) Run ``fn(*args)`` on the loop within DELAY_S: with
        the next drain of its posts (``CoreWorker.post``), or at the latest at a tick."""
        self.cw.post_quietly(fn, *args)  # (1)
        self.count += 1  # (2)
        if self.tick is None:  # (3) no timer runs: wake the loop now, which starts one
            self.cw.post(self._start)

    def _start(self) -> None:
        if self.tick is None and not self.cw.closing:
            self.seen = self.count
            self.tick = self.cw.loop.call_later(DELAY_S, self._tick)

    def _tick(self) -> None:
        self.tick = None  # (a) from here on a lazy post wakes the loop itself
        self.cw.drain_posted()  # (b)
        if self.count != self.seen and not self.cw.closing:  # (c) some came since
            self.seen = self.count
            self.tick = self.cw.loop.call_later(DELAY_S, self._tick)
