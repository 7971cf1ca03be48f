"""``Connection.call_then_now`` on real loopback sockets, under asyncio and uvloop: a
request written by a thread that is not the loop's, its reply handed to the callback
on the loop, never ahead of frames queued before it, never lost when the connection
drops (a caller thread pushing a task itself, owner/task_submitter.py).

Every wait is bounded; nothing sleeps."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes import event_loop_policy  # noqa: F401  (the fixture: asyncio and uvloop)
from test_rpc_answer import TIMEOUT, Service, bounded, flushes_of, in_thread, in_thread_now

from aioray._private.rpc import rpc
from aioray._private.rpc.rpc import Connection, ConnectionLost, Server, connect

pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:pytest.PytestDeprecationWarning'
)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Service, Connection, Connection]]:
    """(service, the server's side of the connection, the client's side)."""
    service, accepted = Service(), []
    server = Server(rpc.handlers_of(service), on_connect=accepted.append)
    await server.start()
    client, _ = await connect(server.host, server.port, {}, timeout=TIMEOUT)
    try:
        yield service, accepted[0], client
    finally:
        client.close()
        await bounded(client.closed)
        await bounded(server.stop())


class Replies:
    """A ``then`` callback that records what it got, in which thread, and wakes the test."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, BaseException | None, int]] = []
        self.arrived = asyncio.Event()

    def __call__(self, reply: Any, exc: BaseException | None) -> None:
        self.got.append((reply, exc, threading.get_ident()))
        self.arrived.set()

    async def next(self) -> tuple[Any, BaseException | None, int]:
        await bounded(self.arrived.wait())
        return self.got[-1]


async def test_a_request_from_another_thread_is_written_by_that_thread(setup: Any) -> None:
    service, _, client = setup
    client.allow_thread_writes()
    flushes, replies = flushes_of(client), Replies()
    assert await in_thread(client.call_then_now, "later", "x", [b"arg"], replies, [])
    answer = await service.next_answer()
    answer.send({"done": 1})
    reply, exc, thread = await replies.next()
    assert exc is None and reply[0] == {"done": 1}
    assert thread == threading.get_ident()  # the reply is handled on the loop
    assert flushes == []  # the loop wrote nothing
    second = client.call_nowait("later")  # the framing is intact, the numbers distinct
    (await service.next_answer()).send("second")
    assert (await bounded(second))[0] == "second"


async def test_no_thread_writes_without_the_duplicate(setup: Any) -> None:
    """The duplicate is made on the loop (``allow_thread_writes``): without it a thread
    hands the request back, with nothing sent and nothing registered."""
    _, _, client = setup
    assert client._wfd < 0
    assert not await in_thread(client.call_then_now, "later", "x", [], Replies(), [])
    assert client._pending == {}


async def test_a_request_never_overtakes_frames_queued_before_it(setup: Any) -> None:
    service, _, client = setup
    client.allow_thread_writes()
    first = client.call_nowait("later", "first")  # in this loop iteration: not written yet
    replies = Replies()
    assert not in_thread_now(client.call_then_now, "later", "second", [], replies, [])
    assert len(client._pending) == 1  # nothing registered for the thread's request
    (await service.next_answer()).send("one")
    assert (await bounded(first))[0] == "one"
    assert replies.got == []


async def test_a_request_from_a_thread_fails_when_the_connection_drops(setup: Any) -> None:
    service, server_side, client = setup
    client.allow_thread_writes()
    replies = Replies()
    assert await in_thread(client.call_then_now, "later", "x", [], replies, [])
    await service.next_answer()  # it reached the server; the server now goes away
    server_side.close()
    reply, exc, _ = await replies.next()
    assert reply is None and isinstance(exc, ConnectionLost)
    assert not await in_thread(client.call_then_now, "later", "y", [], Replies(), [])


async def test_a_request_interrupted_at_its_write_is_neither_sent_nor_registered(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C raised in the write (KeyboardInterrupt out of ``os.writev``): the caller
    learns nothing went out from ``written`` staying empty, and no callback is left
    waiting for a reply that will never come."""
    _, _, client = setup
    client.allow_thread_writes()
    pending_before = dict(client._pending)

    def interrupted_writev(fd: int, frames: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "writev", interrupted_writev)
    written: list[int] = []

    def call() -> str:
        try:
            client.call_then_now("later", "x", [], Replies(), written)
        except KeyboardInterrupt:
            return "interrupted"
        return "returned"

    assert in_thread_now(call) == "interrupted"
    assert written == [] and client._pending == pending_before
