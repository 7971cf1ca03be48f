"""rpc.Answer on real loopback sockets, under asyncio and uvloop: a request answered later,
from the loop or straight from another thread (``send_now``, ``Connection.write_now``),
never ahead of frames queued before it and never twice.

Every wait is bounded; nothing sleeps."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
from fakes import event_loop_policy  # noqa: F401  (the fixture: asyncio and uvloop)

from aioray._private.rpc import rpc
from aioray._private.rpc.answer import Answer
from aioray._private.rpc.rpc import Connection, Reply, RpcError, Server, connect
from aioray._private.wire.protocol import Buffer

T = TypeVar("T")
TIMEOUT = 10.0

pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:pytest.PytestDeprecationWarning'
)


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, TIMEOUT)


class Service:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.arrived = asyncio.Event()

    def handle_later(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Answer:
        answer = Answer()
        self.answers.append(answer)
        self.arrived.set()
        return answer

    async def next_answer(self) -> Answer:
        await bounded(self.arrived.wait())
        self.arrived.clear()
        return self.answers[-1]


class Notes:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def handle_note(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        self.seen.append(body)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Service, Connection, Connection, Notes]]:
    """(service, the server's side of the connection, the client's side, client notes)."""
    service, notes, accepted = Service(), Notes(), []
    server = Server(rpc.handlers_of(service), on_connect=accepted.append)
    await server.start()
    client, _ = await connect(server.host, server.port, rpc.handlers_of(notes), timeout=TIMEOUT)
    try:
        yield service, accepted[0], client, notes
    finally:
        client.close()
        await bounded(client.closed)
        await bounded(server.stop())


def flushes_of(conn: Connection) -> list[int]:
    """Count the loop's writes on ``conn`` (its scheduled ``_flush`` calls)."""
    count: list[int] = []
    flush = conn._flush

    def counted() -> None:
        count.append(1)
        flush()

    conn._flush = counted  # type: ignore[method-assign]
    return count


async def in_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a thread of its own (not the loop's); its result."""
    return await bounded(asyncio.to_thread(fn, *args))


def in_thread_now(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in another thread while this loop does nothing meanwhile."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join(TIMEOUT)
    assert result, "the thread did not finish"
    return result[0]


async def test_an_answer_from_another_thread_is_written_by_that_thread(setup: Any) -> None:
    service, server_side, client, _ = setup
    flushes = flushes_of(server_side)
    pending = client.call_nowait("later", "x")
    answer = await service.next_answer()
    writer: list[int] = []

    def answer_now() -> bool:
        writer.append(threading.get_ident())
        return answer.send_now({"done": 1}, [b"buf"])

    assert await in_thread(answer_now)
    body, buffers = await bounded(pending)
    assert (body, [bytes(b) for b in buffers]) == ({"done": 1}, [b"buf"])
    assert flushes == [] and writer[0] != threading.get_ident()  # the loop wrote nothing
    answer.send("again")  # answered once: a later answer is dropped
    second = client.call_nowait("later", "y")
    (await service.next_answer()).send("second")
    assert (await bounded(second))[0] == "second"  # the framing is intact


async def test_an_answer_never_overtakes_frames_queued_before_it(setup: Any) -> None:
    service, server_side, client, notes = setup
    pending = client.call_nowait("later")
    answer = await service.next_answer()
    server_side.notify("note", "queued first")  # in this loop iteration: not written yet
    assert not in_thread_now(answer.send_now, "reply", [])  # must not go ahead of it
    assert not answer.done()
    answer.send(Reply("reply", [b"late"]))  # so the loop answers, after the note
    body, _ = await bounded(pending)
    assert body == "reply" and notes.seen == ["queued first"]


async def test_a_large_answer_from_another_thread_is_finished_by_the_loop(setup: Any) -> None:
    """More than the socket takes at once: the thread writes what fits, the loop the rest,
    before anything else."""
    service, server_side, client, notes = setup
    blob = os.urandom(32 << 20)
    pending = client.call_nowait("later")
    answer = await service.next_answer()
    assert in_thread_now(answer.send_now, "big", [blob])
    assert server_side._out  # the socket took part of it: the rest waits for the loop
    server_side.notify("note", "after")  # queued behind the rest of the answer
    body, buffers = await bounded(pending)
    assert body == "big" and bytes(buffers[0]) == blob
    second = client.call_nowait("later")
    (await service.next_answer()).send("second")
    assert (await bounded(second))[0] == "second"
    assert notes.seen == ["after"]


async def test_a_failed_answer_raises_at_the_caller(setup: Any) -> None:
    service, _, client, _ = setup
    pending = client.call_nowait("later")
    answer = await service.next_answer()
    answer.fail(LookupError("gone"))
    answer.send("ignored")
    with pytest.raises(RpcError) as info:
        await bounded(pending)
    assert (info.value.remote_type, info.value.remote_message) == ("LookupError", "gone")


async def test_an_answer_to_a_peer_that_left_is_dropped(setup: Any) -> None:
    service, server_side, client, _ = setup
    client.call_nowait("later").cancel()
    answer = await service.next_answer()
    client.close()
    await bounded(server_side.closed)
    assert not await in_thread(answer.send_now, "too late", [])  # nothing to write to
    answer.send("too late")  # and the loop drops it quietly
    assert answer.done()


async def test_the_duplicate_answers_are_written_to_lives_and_dies_with_the_socket(
    setup: Any,
) -> None:
    """Made on the loop when an answer is bound (a thread making it could dup a number the
    loop had just closed, or that already names another file), closed with the connection."""
    service, server_side, client, _ = setup
    assert server_side._wfd < 0  # no answer owed yet: no duplicate
    pending = client.call_nowait("later")
    answer = await service.next_answer()
    wfd = server_side._wfd
    inode = os.fstat(server_side._fd).st_ino
    assert wfd >= 0 and os.fstat(wfd).st_ino == inode
    assert await in_thread(answer.send_now, "ok", [])
    assert (await bounded(pending))[0] == "ok"
    client.close()
    await bounded(server_side.closed)
    assert server_side._wfd < 0
    try:  # closed, not leaked (its number may name a newer file by now, not this socket)
        assert os.fstat(wfd).st_ino != inode
    except OSError:
        pass


async def test_a_tls_connection_is_answered_through_the_loop() -> None:
    """TLS frames are the loop's to write: another thread must never touch the socket."""

    class TlsTransport(asyncio.Transport):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"socket": self.sock, "sslcontext": object()}.get(name, default)

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as sock:
        peer, _ = listener.accept()
        with peer:
            conn = Connection({})
            conn.connection_made(TlsTransport(sock))
            answer = Answer()
            answer.bind(conn, 0, 1, "later")
            assert not conn.write_now([b"frame"], answer) and not answer.done()
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):  # nothing reached the peer
                peer.recv(16)
