"""``.remote()`` of an actor method from a caller thread, on an offline CoreWorker: a
call made while calls are in flight (a burst) goes to the loop without asking
``push_now``, and a Ctrl-C landing anywhere in ``.remote()`` never loses a call's number
nor sends a call twice. The thread is a real one (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import dis
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import pytest
from fakes import (
    OfflineCluster,
    actor_call,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
    value_reply,
)
from test_task_submitter import result
from test_thread_push import AID, alive_actor, pushed_seqs

from aioray._private.owner.object_ref import ObjectRef
from aioray._private.wire.schema import ActorMeta
from aioray._private.wire.task_spec import TaskEntry
from aioray.actor import ActorHandle, ActorMethod

META: ActorMeta = {"cls": "A", "module": "m", "methods": {"f": {"nret": 1}}}  # type: ignore[typeddict-item]


async def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a thread that is not the loop's, as a user's code calls; its result."""
    out = await asyncio.wait_for(asyncio.to_thread(fn), 10)
    await settle()
    return out


async def test_a_call_made_while_calls_are_in_flight_does_not_ask_push_now(
    offline: OfflineCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The burst's way: the loop writes its calls together, and ``.remote()`` posts them
    without the cost of asking (the call in flight is the decisive test); a call made
    when none is in flight is pushed by its thread."""
    cw = offline.cw
    worker = await alive_actor(offline)
    handle = ActorHandle(AID, META)
    asked: list[int] = []
    push_now = cw.actors.push_now

    def spy(task: TaskEntry) -> bool:
        asked.append(task.spec["seq"])
        return push_now(task)

    monkeypatch.setattr(cw.actors, "push_now", spy)
    first = await in_thread(handle.f.remote)
    assert asked == [1] and worker.written_by_threads == 1
    second = await in_thread(handle.f.remote)  # the first one still in flight
    assert asked == [1] and pushed_seqs(worker) == [0, 1, 2]
    for push, value in zip(worker.pending("push_actor_task"), (1, 2), strict=True):
        worker.reply(push, *value_reply(value))
    await settle()
    assert result(offline, first) == 1 and result(offline, second) == 2


# -- a Ctrl-C (KeyboardInterrupt) at any point of .remote() --------------------------------
def interrupting(n: int) -> Callable[[FrameType, str, Any], Any]:
    """A trace function raising KeyboardInterrupt at the ``n``-th point of
    ``ActorMethod.remote`` where CPython could raise one: its first instruction and
    each instruction after a call (where the interpreter checks for a signal, as at
    backward jumps, which ``remote`` has none of; not between two other instructions)."""
    code = ActorMethod.remote.__code__
    ops = {i.offset: i.opname for i in dis.get_instructions(code)}
    seen, previous = 0, -1

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen, previous
        if event == "opcode":
            if previous < 0 or ops.get(previous, "").startswith("CALL"):
                seen += 1
                if seen == n:
                    raise KeyboardInterrupt
            previous = frame.f_lasti
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        return local

    return tracer


def remote_interrupted(handle: ActorHandle, n: int) -> bool:
    """``handle.f.remote()`` with a Ctrl-C at its ``n``-th point; False if it has fewer."""
    sys.settrace(interrupting(n))
    try:
        handle.f.remote()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "in-flight"])
async def test_a_ctrl_c_anywhere_in_remote_loses_no_number_and_sends_nothing_twice(
    offline: OfflineCluster, busy: bool
) -> None:
    """Interrupted at each point in turn (on an idle actor, where the thread pushes its
    call itself, or with a call in flight, where the loop does), then called again: the
    calls numbered are all sent, once each and in order, and the next call's result
    comes (a number taken and not submitted would hold back every later call)."""
    cw = offline.cw
    worker = await alive_actor(offline)
    handle = ActorHandle(AID, META)
    n = 0
    while True:
        n += 1
        if busy:
            earlier = actor_call(cw, AID)
            cw.actors.submit(earlier)
        was = await in_thread(partial(remote_interrupted, handle, n))
        ref: ObjectRef = await in_thread(handle.f.remote)
        sent = pushed_seqs(worker)
        assert sent == list(range(len(sent))), (n, sent)  # in order, none twice, no gap
        for push in worker.pending("push_actor_task"):
            worker.reply(push, *value_reply(n))
        await settle()
        assert result(offline, ref) == n
        if not was:
            break
    assert n > 10  # (every call and its handler were reached)
