"""Background work a CoreWorker starts on its loop (``CoreWorker.spawn``): held until it
ends, so the loop's weak hold never lets it be destroyed while pending, and cancelled
when the CoreWorker stops."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from fakes import (
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)


async def test_a_task_awaiting_a_future_nothing_else_holds_is_not_collected(
    offline: OfflineCluster,
) -> None:
    cw = offline.cw
    futures: list[weakref.ref[asyncio.Future[None]]] = []

    async def wait() -> None:
        fut = asyncio.get_running_loop().create_future()
        futures.append(weakref.ref(fut))
        await fut

    task = weakref.ref(cw.spawn(wait()))
    await settle()
    gc.collect()  # task and future hold only each other: a cycle, unless spawn holds it
    alive = futures[0]()
    assert task() is not None and alive is not None
    alive.set_result(None)
    del alive
    await settle()
    assert not cw._background  # held only until it ended


async def test_stop_cancels_background_work(offline: OfflineCluster) -> None:
    cw = offline.cw
    task = cw.spawn(asyncio.Event().wait())
    await settle()
    await asyncio.wait_for(cw.stop(), 5)
    assert task.cancelled() and not cw._background


def test_a_blocking_call_after_the_loop_stopped_says_so_and_leaves_no_coroutine() -> None:
    """(no running loop: a driver's after shutdown) The coroutine is closed at once, not
    left for the collector to warn that it was never awaited."""
    import warnings

    from aioray._private.owner.core_worker import CoreWorker

    cw = CoreWorker("driver", "127.0.0.1", ("127.0.0.1", 1), ("127.0.0.1", 2))
    cw.loop = asyncio.new_event_loop()  # never run
    try:

        async def call() -> int:
            return 1

        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="CoreWorker is not running"):
                cw.run_sync(call())
            gc.collect()
        assert not [w for w in seen if "never awaited" in str(w.message)]
    finally:
        cw.loop.close()
