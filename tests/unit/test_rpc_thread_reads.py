"""A connection's read side lent to a caller thread (rpc/thread_reads.py), on real
loopback sockets under asyncio and uvloop: the thread reads the reply to its own
request while the loop does not; frames before it reach the loop in order; the loop
takes the read side back for its own requests, after a deadline, on a closed
connection; Ctrl-C held off while a reply is dealt with; the spin before it sleeps.

Every wait is bounded; nothing sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import test_rpc_answer
from fakes import event_loop_policy  # noqa: F401  (the fixture: asyncio and uvloop)
from test_rpc_answer import TIMEOUT, bounded, in_thread
from test_rpc_thread_calls import Replies

from aioray._private.rpc import thread_reads
from aioray._private.rpc.rpc import ConnectionLost
from aioray._private.rpc.spin_wait import SpinBudget
from aioray._private.rpc.thread_reads import InterruptHold
from aioray._private.wire.protocol import NOTIFY, RESPONSE

pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:pytest.PytestDeprecationWarning'
)


# (service, the server's side, the client's side, the notes the client got): as there
setup = pytest.fixture(test_rpc_answer.setup.__wrapped__)  # type: ignore[attr-defined]


def lent(client: Any) -> None:
    """What a lease's connection goes through before it is parked (owner/leases.py)."""
    client.allow_thread_writes()
    client.allow_thread_reads()
    client.pause_reads()
    assert client._reads_paused


async def until(predicate: Any) -> None:
    """Let the loop run until ``predicate()`` holds (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0)


def read(client: Any, seq: int, deadline: float | None = None) -> Any:
    """(a thread) Take the read side, read the reply to ``seq``, forget it, keep the side
    lent: what owner/reply_reads.py does with a plain success."""
    assert client.take_reads()
    held = InterruptHold()
    frame = client.read_reply(seq, deadline, held)
    try:
        if frame is not None:
            assert client.forget(seq)
            client.release_reads(keep=True)
        return frame
    finally:
        held.release()


async def test_a_thread_reads_the_reply_to_its_request_itself(setup: Any) -> None:
    service, _, client, _ = setup
    lent(client)
    replies = Replies()
    seq = await in_thread(client.call_then_now, "later", "x", [], replies, [])
    reading = asyncio.ensure_future(in_thread(read, client, seq))
    (await service.next_answer()).send({"done": 1})
    kind, got_seq, _, body, _ = await reading
    assert (kind, got_seq, body) == (RESPONSE, seq, {"done": 1})
    assert replies.got == []  # the loop never saw the reply
    assert client._reads_paused and not client._reading  # still lent
    client.resume_reads()
    second = client.call_nowait("later")  # the loop reads again; the framing is intact
    (await service.next_answer()).send("second")
    assert (await bounded(second))[0] == "second"


async def test_frames_before_the_reply_reach_the_loop_in_order(setup: Any) -> None:
    service, server_side, client, notes = setup
    lent(client)
    seq = await in_thread(client.call_then_now, "later", None, [], Replies(), [])
    answer = await service.next_answer()
    server_side.notify("note", 1)
    server_side.notify("note", 2)
    answer.send("reply")
    server_side.notify("note", 3)  # after the reply: the thread's if read with it, else the loop's
    frame = await in_thread(read, client, seq)
    assert frame[3] == "reply"
    await until(lambda: notes.seen[:2] == [1, 2])
    client.resume_reads()
    await until(lambda: notes.seen == [1, 2, 3])


async def test_a_request_of_the_loop_takes_the_read_side_back(setup: Any) -> None:
    """A lent connection is not read by the loop; a request the loop sends makes it read
    again, or its reply would wait for a thread that never comes."""
    service, _, client, _ = setup
    lent(client)
    fut = client.call_nowait("later")
    assert not client._reads_paused
    (await service.next_answer()).send("mine")
    assert (await bounded(fut))[0] == "mine"


async def test_a_request_of_the_loop_while_a_thread_reads_is_answered(setup: Any) -> None:
    service, _, client, _ = setup
    lent(client)
    seq = await in_thread(client.call_then_now, "later", "thread's", [], Replies(), [])
    threads = await service.next_answer()
    assert client.take_reads()
    held = InterruptHold()
    reading = asyncio.ensure_future(in_thread(client.read_reply, seq, None, held))
    await until(lambda: client._reading)
    loops = client.call_nowait("later")  # the thread holds the read side: asked back
    assert client._want_back and client._reads_paused
    (await service.next_answer()).send("loop's")  # read by the thread, handed over
    assert (await bounded(loops))[0] == "loop's"
    threads.send("thread's")
    frame = await reading
    assert frame[3] == "thread's"
    assert client.forget(seq)
    client.release_reads(keep=True)  # the loop wanted it back: given back
    await until(lambda: not client._reads_paused)


async def test_a_deadline_gives_the_read_side_back_to_the_loop(setup: Any) -> None:
    service, _, client, _ = setup
    lent(client)
    replies = Replies()
    seq = await in_thread(client.call_then_now, "later", None, [], replies, [])
    answer = await service.next_answer()
    assert await in_thread(read, client, seq, time.monotonic() + 0.05) is None
    await until(lambda: not client._reads_paused)
    answer.send("late")
    reply, exc, _ = await replies.next()  # read and handled by the loop
    assert exc is None and reply[0] == "late"


async def test_a_reply_the_loop_read_first_is_not_waited_for(setup: Any) -> None:
    """The loop read the reply before the thread took the read side (then lent it again):
    the thread does not wait for a reply that already came."""
    service, _, client, _ = setup
    client.allow_thread_writes()
    client.allow_thread_reads()
    replies = Replies()
    seq = await in_thread(client.call_then_now, "later", None, [], replies, [])
    (await service.next_answer()).send("read by the loop")
    await replies.next()
    client.pause_reads()
    assert await in_thread(read, client, seq) is None  # (at once: no deadline to wait for)


async def test_a_connection_that_closes_ends_the_read(setup: Any) -> None:
    service, server_side, client, _ = setup
    lent(client)
    replies = Replies()
    seq = await in_thread(client.call_then_now, "later", None, [], replies, [])
    await service.next_answer()
    reading = asyncio.ensure_future(in_thread(read, client, seq))
    await until(lambda: client._reading)
    server_side.close()
    assert await reading is None  # end of stream: the read side goes back to the loop
    _, exc, _ = await replies.next()  # which sees the loss and fails the request
    assert isinstance(exc, ConnectionLost)
    await bounded(client.closed)
    assert client._rfd == -1  # the readers' duplicate is closed


async def test_no_reads_to_take_unless_lent(setup: Any) -> None:
    _, _, client, _ = setup
    client.allow_thread_writes()
    client.allow_thread_reads()
    assert not client.take_reads()  # the loop reads
    pending = client.call_nowait("later")
    client.pause_reads()
    assert not client._reads_paused  # a reply the loop awaits: not lent
    pending.cancel()
    client._pending.clear()
    client.pause_reads()
    assert client.take_reads()
    assert not client.take_reads()  # one thread at a time
    client.release_reads(keep=True)
    assert client.take_reads()
    client.release_reads(keep=False)
    await until(lambda: not client._reads_paused)


def test_an_interrupt_while_held_is_delivered_on_release() -> None:
    held = InterruptHold()
    held.hold()
    os.kill(os.getpid(), signal.SIGINT)  # (runs its handler at the next bytecode)
    for _ in range(1000):
        if held.hit:
            break
        time.sleep(0.001)  # (the handler runs between bytecodes; bounded)
    assert held.hit  # recorded, not raised
    with pytest.raises(KeyboardInterrupt):
        held.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    held.release()  # a second release does nothing


async def test_a_notice_for_the_loop_is_not_taken_for_the_reply(setup: Any) -> None:
    """A notice carries sequence 0: never the reply to a request."""
    service, server_side, client, notes = setup
    lent(client)
    seq = await in_thread(client.call_then_now, "later", None, [], Replies(), [])
    answer = await service.next_answer()
    server_side._send(NOTIFY, seq, "note", "notice with the reply's number")
    answer.send("reply")
    frame = await in_thread(read, client, seq)
    assert frame[0] == RESPONSE and frame[3] == "reply"
    await until(lambda: notes.seen == ["notice with the reply's number"])


async def test_a_reply_the_spin_catches_keeps_its_budget_and_a_late_one_shrinks_it(
    setup: Any,
) -> None:
    """The reading thread polls before it sleeps (rpc/spin_wait.py); what it waited
    teaches the connection's budget."""
    service, _, client, _ = setup
    lent(client)
    client._spin = SpinBudget(TIMEOUT)  # spins as long as any wait here takes
    seq = await in_thread(client.call_then_now, "later", None, [], Replies(), [])
    reading = asyncio.ensure_future(in_thread(read, client, seq))
    (await service.next_answer()).send("soon")
    assert (await reading)[3] == "soon"
    assert client._spin.now == TIMEOUT  # caught by the spin
    client._spin = SpinBudget(0.001)
    seq = await in_thread(client.call_then_now, "later", None, [], Replies(), [])
    answer = await service.next_answer()
    reading = asyncio.ensure_future(in_thread(read, client, seq))
    await until(lambda: client._reading)
    late = time.monotonic() + 0.01  # ten times the limit
    await until(lambda: time.monotonic() > late)
    answer.send("late")
    assert (await reading)[3] == "late"
    assert client._spin.now == 0.0005


async def test_a_deadline_sooner_than_the_spin_ends_the_read(setup: Any) -> None:
    service, _, client, _ = setup
    lent(client)
    client._spin = SpinBudget(3600.0)
    seq = await in_thread(client.call_then_now, "later", None, [], Replies(), [])
    await service.next_answer()
    start = time.monotonic()
    assert await in_thread(read, client, seq, time.monotonic() + 0.05) is None
    assert time.monotonic() - start < TIMEOUT
    await until(lambda: not client._reads_paused)


async def test_ctrl_c_in_the_spin_gives_the_read_side_back(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, client, _ = setup
    lent(client)

    class Interrupt(BaseException):
        """KeyboardInterrupt's stand-in (asyncio would stop the test's loop with it)."""

    def interrupted(ready: Any, seconds: float) -> bool:
        raise Interrupt  # (where the main thread's Ctrl-C would land)

    monkeypatch.setattr(thread_reads, "spin", interrupted)
    replies = Replies()
    seq = await in_thread(client.call_then_now, "later", None, [], replies, [])
    answer = await service.next_answer()
    with pytest.raises(Interrupt):
        await in_thread(read, client, seq)
    await until(lambda: not client._reads_paused)  # the loop reads again
    answer.send("after the interrupt")
    reply, exc, _ = await replies.next()
    assert exc is None and reply[0] == "after the interrupt"
