"""The raylet's shell around its segment pool: performs what ``SegmentPool`` decides.

The store service (store_service.py) tells it about writers' claims, frees and the
room its objects use; this module moves files (``shm_pool``'s steps) and runs the slow
ones (pre-faulting a new segment, growing a reused one back to its class, unlinking) on
one I/O thread, never on the loop. A freed object's segment is parked on the loop, at
once, so no reader can open it under the object's name after the free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import time
from typing import Any

from aioray.daemons.raylet.segment_pool import Segment, SegmentPool

from aioray._private.wire import config, object_store, shm_pool

logger = logging.getLogger(__name__)

SPARE = int(config.env_float("SHM_POOL_SPARE", 2))  # free segments kept per class in demand
MAX_FRACTION = config.env_float("SHM_POOL_MAX_FRACTION", 0.5)  # of the store, at most
IDLE_S = config.env_float("SHM_POOL_IDLE_S", 60.0)  # a class unused this long is dropped
RAYLET_MAPS_BYTES = int(config.env_float("SHM_POOL_RAYLET_MAPS_BYTES", 1 << 30))


class PoolService:
    def __init__(self, capacity: int, enabled: bool = True) -> None:
        self.pool = SegmentPool(
            capacity, SPARE, MAX_FRACTION, IDLE_S, shm_pool.class_of(shm_pool.MIN_BYTES)
        )
        self.enabled = enabled and SPARE > 0
        self.dir = ""
        self.io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aioray-pool")
        self.maps = shm_pool.SegmentMaps(RAYLET_MAPS_BYTES)  # this raylet's, for pulled copies
        self._keys = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._stopped = False
        self.used = 0  # bytes of the store's objects, set by the store before each run
        self.busy = False  # objects are being written or wait for room: do not grow

    def __repr__(self) -> str:
        return f"<PoolService {self.pool!r}>"

    def start(self, session_id: str, node_id: bytes) -> None:
        self.dir = shm_pool.pool_dir(session_id, node_id)
        if self.enabled:
            os.makedirs(self.dir, exist_ok=True)

    def stop(self) -> None:
        """Stop the I/O and delete every pooled segment (held ones included)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self.io.shutdown(wait=True, cancel_futures=True)
        self.maps.clear()
        if self.dir:
            object_store.delete_segment(self.dir)

    # -- events from the store --------------------------------------------------------------
    def wanted(self, size: int) -> None:
        """A writer here needs a segment for ``size`` bytes (it found one or not)."""
        cls = shm_pool.class_of(size)
        if cls and self.enabled:
            self.pool.wanted(cls, time.monotonic())

    def claimed(self, ino: int) -> bool:
        """A writer took pooled segment ``ino`` for an object (``create_object`` named it)."""
        return bool(ino) and self.pool.claimed(ino) > 0

    def take(self, size: int, dst: str) -> tuple[int, int] | None:
        """Claim a free segment for ``size`` bytes here (a pulled copy), renamed to ``dst``:
        its (class, inode), or None."""
        cls = shm_pool.class_of(size)
        if not cls or not self.enabled:
            return None
        self.pool.wanted(cls, time.monotonic())
        warm = self.maps.prefer(cls)  # its pages are mapped here already
        while (s := self.pool.take(cls, warm)) is not None:
            try:
                os.rename(shm_pool.free_path(self.dir, cls, s.ino), dst)
            except FileNotFoundError:
                self.pool.vanished(s)  # a writer took it: its create_object will say so
                continue
            self.pool.claimed(s.ino)
            return cls, s.ino
        return None

    def release(self, path: str, ino: int, size: int) -> None:
        """The object in segment ``path`` (inode ``ino``, 0 if unknown) was freed: keep
        the segment for reuse, or delete it as before the pool existed."""
        cls = shm_pool.class_of(size)
        if self.enabled and cls and self.pool.keep(ino, cls, size, self.used):
            if shm_pool.park(path, self.dir, ino):
                return
            # Not there, or a newer copy of the object replaced it: not ours to touch.
            self.pool.dropped(self.pool.segments[ino])
            return
        object_store.delete_segment(path)

    def process_exited(self) -> None:
        """A process of this node exited: segments it mapped may be reusable now."""
        if self.pool.count("HELD"):
            self.pool.retry_held(time.monotonic())
            self.run()

    # -- performing ---------------------------------------------------------------------------
    def run(self) -> None:
        """Plan and perform: drop what does not fit, retry held segments, grow."""
        if self._stopped or not self.enabled:
            return
        if self.maps:  # (a few fstat calls) let go of mappings of segments unlinked since
            self.maps.drop_stale()
        now = time.monotonic()
        act = self.pool.plan(self.used, self.busy, now)
        for s in act.drop:
            self._drop(s)
        loop = asyncio.get_running_loop()
        for s in act.reuse:
            reuse = loop.run_in_executor(self.io, shm_pool.reuse, self.dir, s.ino, s.cls)
            reuse.add_done_callback(functools.partial(self._reused, s))
        for cls in act.grow:
            key = next(self._keys)
            held = self.pool.placeholder(cls, -key)
            path = os.path.join(self.dir, f"g{key}")
            grow = loop.run_in_executor(self.io, shm_pool.grow, path, cls)
            grow.add_done_callback(functools.partial(self._grown, path, cls, held))
        self._schedule(now)

    def _drop(self, s: Segment) -> None:
        src = (
            shm_pool.free_path(self.dir, s.cls, s.ino)
            if s.state == "FREE"
            else shm_pool.held_path(self.dir, s.ino)
        )
        trash = os.path.join(self.dir, f"x{s.ino}")
        try:
            os.rename(src, trash)  # atomic: a writer claims it first, or never
        except FileNotFoundError:
            self.pool.vanished(s)
            return
        self.pool.dropped(s)
        self.io.submit(object_store.delete_segment, trash)  # freeing pages takes a while

    def _reused(self, s: Segment, f: asyncio.Future[bool]) -> None:
        if f.cancelled() or self._stopped:
            return
        exc = f.exception()
        if exc is not None:
            logger.warning("cannot reuse pooled segment %d: %s", s.ino, exc)
            self.pool.dropped(s)
            self.io.submit(object_store.delete_segment, shm_pool.held_path(self.dir, s.ino))
        else:
            ok = bool(f.result())
            if ok:  # into the free list here, on the loop: claims then name a known segment
                shm_pool.add_free(self.dir, shm_pool.held_path(self.dir, s.ino), s.cls, s.ino)
            self.pool.reused(s, ok, time.monotonic())
        self.run()

    def _grown(self, path: str, cls: int, held: Segment, f: asyncio.Future[int]) -> None:
        if f.cancelled() or self._stopped:
            return
        exc = f.exception()
        if exc is not None:
            logger.info("cannot grow the segment pool by %d bytes: %s", cls, exc)
            self.pool.grow_failed(held)
            return
        self.pool.grown(f.result(), cls, held)
        shm_pool.add_free(self.dir, path, cls, f.result())
        self.run()

    def _schedule(self, now: float) -> None:
        """Wake for the next held segment's retry, or to drop idle classes."""
        due = self.pool.next_retry()
        if due is None and not self.pool.segments:
            return
        at = due if due is not None else now + IDLE_S / 4
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(
            asyncio.get_running_loop().time() + max(0.0, at - now), self._wake
        )

    def _wake(self) -> None:
        self._timer = None
        self.run()

    def stats(self) -> dict[str, Any]:
        return self.pool.stats()
