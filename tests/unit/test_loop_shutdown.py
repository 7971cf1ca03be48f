"""A driver's loop stops (``stop_thread``) at whatever turn it has reached when the
stop arrives: work its CoreWorker started in its last turns must still end, not be
dropped with the loop, its coroutines never run ("coroutine ... was never awaited",
"Task was destroyed but it is pending!" when the collector finds them)."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest
from fakes import lease_grant, normal_task, offline_core_worker, settle

from aioray._private.owner.lifecycle import run_until_stopped
from aioray._private.rpc.loop import new_event_loop


def stop_after(loop: asyncio.AbstractEventLoop, turns: int) -> None:
    """Stop ``loop`` ``turns`` turns from now (each call_soon is the next turn's)."""
    if turns == 0:
        loop.stop()
    else:
        loop.call_soon(stop_after, loop, turns - 1)


@pytest.mark.parametrize("turns", range(6))
def test_work_started_as_the_core_worker_stops_ends_before_the_loop_closes(
    turns: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A task without retries in flight when the CoreWorker stops: closing its worker's
    connection fails the push, and the owner asks the worker's raylet whether its node
    died (``raylet_answers``, a ``Connection.call`` in ``asyncio.wait_for``), in tasks
    started over the next turns. The loop stopping in one of those turns closed them
    unstarted (test_tasks saw 'Connection.call' never awaited after test_node_failure)."""
    loop = new_event_loop()

    async def stop_with_a_task_in_flight() -> None:
        offline = offline_core_worker()
        cw = offline.cw
        cw.submitter.submit(normal_task(cw, max_retries=0))
        [request] = offline.raylet.pending("request_lease")
        offline.raylet.reply(request, lease_grant(1, 5001))
        await settle()
        assert offline.peers.at("127.0.0.1", 5001).pending("push_task")
        await cw.stop()  # closes the worker's connection: the push fails next turn
        stop_after(loop, turns)

    loop.create_task(stop_with_a_task_in_flight())
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.ERROR, "asyncio"):
        warnings.simplefilter("always")
        run_until_stopped(loop)
        gc.collect()
    assert loop.is_closed()
    assert [str(w.message) for w in seen if "never awaited" in str(w.message)] == []
    assert "destroyed but it is pending" not in caplog.text
