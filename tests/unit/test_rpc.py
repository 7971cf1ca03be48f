"""Service tests for aioray._private.rpc.rpc on real loopback sockets, under asyncio and uvloop.

Every wait is bounded by asyncio.wait_for and nothing sleeps: tests await events set
by handlers. Malformed-input tests speak raw bytes through asyncio.open_connection,
then check that the server dropped that peer only, logged why, and still serves a
well-behaved client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from fakes import event_loop_policy  # noqa: F401  (the fixture: asyncio and uvloop)

from aioray import exceptions as ray_exceptions
from aioray._private.rpc import rpc
from aioray._private.rpc.rpc import Connection, ConnectionLost, Reply, RpcError, Server, connect
from aioray._private.wire import auth, config, protocol
from aioray._private.wire.protocol import (
    MAX_BUFFER_BYTES,
    MAX_BUFFERS,
    MAX_HEADER_BYTES,
    NOTIFY,
    PREFIX,
    REQUEST,
    RESPONSE,
    Buffer,
    FrameDecoder,
    encode_frame,
)

T = TypeVar("T")

TIMEOUT = 5.0
SECRET = "s3cret"

# pytest-asyncio 1.x deprecates overriding event_loop_policy in favour of the
# pytest_asyncio_loop_factories hook, which only a conftest.py can provide.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:pytest.PytestDeprecationWarning'
)


async def bounded(aw: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(aw, timeout)


# -- the service under test ---------------------------------------------------------


class Service:
    """Handlers for every behaviour under test; events let tests await them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.notes: list[tuple[Any, list[bytes]]] = []
        self.noted = asyncio.Event()
        self.blob = b""
        self.gates: dict[int, asyncio.Event] = {}
        self.waiting = 0
        self.expected_waiting = 1
        self.all_waiting = asyncio.Event()
        self.later: list[asyncio.Future[Any]] = []
        self.later_arrived = asyncio.Event()

    def handle_echo(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        self.calls.append("echo")
        return body

    async def handle_echo_async(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        await asyncio.sleep(0)  # a real suspension point, not a wait
        return {"async": body}

    def handle_echo_buffers(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Reply:
        return Reply(body, [bytes(b) for b in buffers])

    def handle_blob(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Reply:
        return Reply({"size": len(self.blob)}, [self.blob])

    def handle_note(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        self.notes.append((body, [bytes(b) for b in buffers]))
        self.noted.set()

    def handle_fail(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        raise ValueError(f"boom {body}")

    async def handle_fail_async(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        await asyncio.sleep(0)
        raise KeyError(body)

    async def handle_gated(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        gate = self.gates.setdefault(body, asyncio.Event())
        self.waiting += 1
        if self.waiting == self.expected_waiting:
            self.all_waiting.set()
        await gate.wait()
        return body

    def handle_later(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        # A sync handler that answers later returns a future.
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.later.append(fut)
        self.later_arrived.set()
        return fut

    async def handle_call_back(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        return await conn.call("client_echo", body)

    def handle_notify_back(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        conn.notify("client_note", body, [b"from-server"])

    def expect_waiting(self, n: int) -> None:
        self.expected_waiting = n


class ClientService:
    def __init__(self) -> None:
        self.notes: list[tuple[Any, list[bytes]]] = []
        self.noted = asyncio.Event()

    def handle_client_echo(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        return ["client", body]

    def handle_client_note(self, conn: Connection, body: Any, buffers: list[Buffer]) -> None:
        self.notes.append((body, [bytes(b) for b in buffers]))
        self.noted.set()


def check_hello(hello: dict[str, Any]) -> dict[str, Any]:
    """Stands in for the token check: refuses a wrong token, greets by role."""
    token = hello.get("token", SECRET)
    if token != SECRET:
        raise PermissionError(f"bad token {token!r}")
    return {"welcome": hello.get("role")}


@pytest.fixture
async def service() -> Service:
    return Service()


@pytest.fixture
async def accepted() -> list[Connection]:
    """Server-side connections, in the order the server accepted them."""
    return []


@pytest.fixture
async def server(service: Service, accepted: list[Connection]) -> AsyncIterator[Server]:
    handlers = rpc.handlers_of(service)
    srv = Server(handlers, hello_check=check_hello, on_connect=accepted.append)
    await srv.start()
    yield srv
    await bounded(srv.stop())


@pytest.fixture
async def client_service() -> ClientService:
    return ClientService()


@pytest.fixture
async def client(server: Server, client_service: ClientService) -> AsyncIterator[Connection]:
    handlers = rpc.handlers_of(client_service)
    conn, _ = await connect(server.host, server.port, handlers, {"role": "test"}, timeout=TIMEOUT)
    yield conn
    conn.close()
    await bounded(conn.closed)


# -- helpers for raw peers ----------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_connection(
    server: Server,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await bounded(asyncio.open_connection(server.host, server.port))
    try:
        # The server speaks first: its authentication challenge (aioray._private.wire.auth).
        challenge = await bounded(reader.readexactly(len(CHALLENGE)))
        assert challenge[: -auth.CHALLENGE_BYTES] == CHALLENGE[: -auth.CHALLENGE_BYTES]
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await bounded(writer.wait_closed())


async def read_until_dropped(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    try:
        return await bounded(reader.read())
    except ConnectionResetError:
        return b""


async def read_frame(reader: asyncio.StreamReader, decoder: FrameDecoder) -> tuple[Any, ...]:
    """Read from a raw socket until ``decoder`` completes exactly one frame."""
    while True:
        data = await bounded(reader.read(65536))
        assert data, "server closed the connection"
        offset = 0
        frames: list[tuple[Any, ...]] = []
        while offset < len(data):
            buf = decoder.get_buffer()
            n = min(len(buf), len(data) - offset)
            buf[:n] = data[offset : offset + n]
            offset += n
            frames += decoder.buffer_updated(n)
        if frames:
            assert len(frames) == 1, frames
            return frames[0]


def frame(kind: int, seq: int, method: str | None, body: Any = None) -> bytes:
    return b"".join(bytes(p) for p in encode_frame(kind, seq, method, body))


HELLO = frame(REQUEST, 1, "hello", {"version": protocol.PROTOCOL_VERSION})
CHALLENGE = frame(NOTIFY, 0, "challenge", bytes(auth.CHALLENGE_BYTES))


async def raw_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: FrameDecoder
) -> None:
    writer.write(HELLO)
    kind, seq, _, body, _ = await read_frame(reader, decoder)
    assert (kind, seq, body["version"]) == (RESPONSE, 1, protocol.PROTOCOL_VERSION)


async def assert_still_serving(server: Server) -> None:
    """A new, well-behaved client can still handshake and call."""
    conn, _ = await connect(server.host, server.port, timeout=TIMEOUT)
    try:
        assert await bounded(conn.call("echo", "still here")) == "still here"
    finally:
        conn.close()
        await bounded(conn.closed)


async def assert_dropped(conn: Connection, caplog: pytest.LogCaptureFixture, *reason: str) -> None:
    """The server closed ``conn`` and logged a warning containing every ``reason``."""
    await bounded(asyncio.shield(conn.closed))
    logged = [
        r.getMessage()
        for r in caplog.records
        if r.name == rpc.logger.name and r.levelno >= logging.WARNING
    ]
    assert any(all(part in msg for part in reason) for msg in logged), logged


@pytest.fixture(autouse=True)
def _capture_rpc_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger=rpc.logger.name)
    rpc.peer_warnings.reset()  # each test sees its own warnings, never rate-limited
    yield
    rpc.peer_warnings.reset()


# -- requests and replies -----------------------------------------------------------


async def test_handshake_reports_both_sides(
    server: Server, client: Connection, accepted: list[Connection]
) -> None:
    # The client fixture said {"role": "test"}; check_hello answered with a welcome.
    conn, answer = await connect(server.host, server.port, hello={"role": "second"})
    try:
        assert answer == {"version": protocol.PROTOCOL_VERSION, "welcome": "second"}
        assert accepted[-1].peer_info == {"version": protocol.PROTOCOL_VERSION, "role": "second"}
        assert accepted[0].peer_info["role"] == "test"
    finally:
        conn.close()
        await bounded(conn.closed)


async def test_request_response_sync_handler(client: Connection, service: Service) -> None:
    body = {"list": [1, [2, 3]], "bin": b"\x00\x01", "none": None, "big": 2**63 - 1}
    assert await bounded(client.call("echo", body)) == body
    assert service.calls == ["echo"]


async def test_request_response_async_handler(client: Connection) -> None:
    assert await bounded(client.call("echo_async", [1, "two"])) == {"async": [1, "two"]}


async def test_handler_answering_later_with_a_future(client: Connection, service: Service) -> None:
    pending = client.call_nowait("later")
    await bounded(service.later_arrived.wait())
    assert not pending.done()
    service.later[0].set_result(Reply("done", [b"late"]))
    body, buffers = await bounded(pending)
    assert (body, [bytes(b) for b in buffers]) == ("done", [b"late"])

    service.later_arrived.clear()
    pending = client.call_nowait("later")
    await bounded(service.later_arrived.wait())
    service.later[1].set_exception(LookupError("gone"))
    with pytest.raises(RpcError) as info:
        await bounded(pending)
    assert (info.value.remote_type, info.value.remote_message) == ("LookupError", "gone")
    # Users catch Ray's class; it survives pickling (e.g. as a task's error).
    assert isinstance(info.value, ray_exceptions.RpcError) and info.value.rpc_code is None
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), str(again)) == (RpcError, str(info.value))


async def test_request_and_reply_carry_buffers(client: Connection) -> None:
    sent = [b"abc", bytearray(b""), memoryview(bytearray(range(256)))[10:20]]
    body, buffers = await bounded(client.call_full("echo_buffers", {"n": 3}, sent))
    assert body == {"n": 3}
    assert [bytes(b) for b in buffers] == [b"abc", b"", bytes(range(10, 20))]


async def test_reply_with_a_10_mib_buffer(client: Connection, service: Service) -> None:
    service.blob = os.urandom(10 << 20)
    body, buffers = await bounded(client.call_full("blob"))
    assert body == {"size": 10 << 20}
    assert len(buffers) == 1
    assert buffers[0] == service.blob
    # call() returns the body only.
    assert await bounded(client.call("blob")) == {"size": 10 << 20}


async def test_call_into_receives_the_reply_into_the_given_memory(
    client: Connection, service: Service
) -> None:
    service.blob = os.urandom(10 << 20)
    dest = bytearray(len(service.blob))
    body, buffers = await bounded(client.call_into("blob", None, [memoryview(dest)]))
    assert body == {"size": 10 << 20}
    assert dest == service.blob
    assert isinstance(buffers[0], memoryview) and buffers[0].obj is dest
    # The next call without a destination is received as usual.
    assert (await bounded(client.call_full("blob")))[1][0] == service.blob


async def test_request_with_a_10_mib_buffer_round_trip(client: Connection) -> None:
    blob = os.urandom(10 << 20)
    body, buffers = await bounded(client.call_full("echo_buffers", "up", [blob, b"tail"]))
    assert body == "up"
    assert buffers[0] == blob
    assert bytes(buffers[1]) == b"tail"


async def test_notify_is_one_way(client: Connection, service: Service) -> None:
    client.notify("note", {"x": 1}, [b"payload"])
    await bounded(service.noted.wait())
    assert service.notes == [({"x": 1}, [b"payload"])]


async def test_notify_gets_no_reply_on_the_wire(server: Server, service: Service) -> None:
    # A notification to a handler, to a failing handler and to an unknown method:
    # none answers, so the next frame the peer sees is the reply to its request.
    decoder = FrameDecoder()
    async with raw_connection(server) as (reader, writer):
        await raw_handshake(reader, writer, decoder)
        writer.write(frame(NOTIFY, 0, "note", "n1"))
        writer.write(frame(NOTIFY, 0, "fail", "n2"))
        writer.write(frame(NOTIFY, 0, "no_such_method", "n3"))
        writer.write(frame(REQUEST, 2, "echo", "ping"))
        assert await read_frame(reader, decoder) == (RESPONSE, 2, None, "ping", [])
    assert service.notes == [("n1", [])]


async def test_server_calls_and_notifies_the_client(
    client: Connection, client_service: ClientService
) -> None:
    assert await bounded(client.call("call_back", 42)) == ["client", 42]
    await bounded(client.call("notify_back", "hi"))
    await bounded(client_service.noted.wait())
    assert client_service.notes == [("hi", [b"from-server"])]


async def test_many_concurrent_requests_are_matched_by_seq(
    client: Connection, service: Service
) -> None:
    n = 100
    service.expect_waiting(n)
    futures = [client.call_nowait("gated", i) for i in range(n)]
    await bounded(service.all_waiting.wait())
    # Quick requests are not stuck behind the hundred in flight.
    quick = await bounded(asyncio.gather(*(client.call("echo", i) for i in range(500))))
    assert quick == list(range(500))
    # Complete in reverse order: each reply reaches its own caller and no other.
    for i in reversed(range(n)):
        service.gates[i].set()
        assert await bounded(futures[i]) == (i, [])
        assert not any(f.done() for f in futures[:i])


async def test_handler_exception_becomes_rpc_error(client: Connection) -> None:
    with pytest.raises(RpcError) as info:
        await bounded(client.call("fail", 7))
    assert (info.value.method, info.value.remote_type) == ("fail", "ValueError")
    assert info.value.remote_message == "boom 7"

    with pytest.raises(RpcError) as info:
        await bounded(client.call("fail_async", "k"))
    assert (info.value.method, info.value.remote_type) == ("fail_async", "KeyError")
    assert "'k'" in info.value.remote_message

    assert await bounded(client.call("echo", "after")) == "after"


async def test_unknown_method_is_an_error_reply(
    client: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RpcError) as info:
        await bounded(client.call("no_such_method", 1))
    assert info.value.remote_type == "UnknownMethod"
    assert "no_such_method" in info.value.remote_message
    assert "no_such_method" in caplog.text
    assert not client.is_closed
    assert await bounded(client.call("echo", "after")) == "after"


async def test_pending_calls_fail_when_the_server_closes(
    server: Server, client: Connection, service: Service
) -> None:
    service.expect_waiting(3)
    futures = [client.call_nowait("gated", i) for i in range(3)]
    await bounded(service.all_waiting.wait())
    await bounded(server.stop())
    for fut in futures:
        with pytest.raises(ConnectionLost):
            await bounded(fut)
    await bounded(client.closed)
    assert client.is_closed
    with pytest.raises(ConnectionLost):
        client.call_nowait("echo")


async def test_connect_to_a_port_nobody_listens_on() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # reserved, never listening: connections are refused
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionError, match="cannot connect"):
            await connect("127.0.0.1", port, timeout=TIMEOUT)


# -- bad peers: each is dropped with a logged reason, everyone else is served -------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        PREFIX.pack(4, 0) + b"\xc1\xc1\xc1\xc1",
    ],
    ids=["ff", "http", "bad-msgpack"],
)
async def test_raw_garbage(
    server: Server,
    client: Connection,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    async with raw_connection(server) as (reader, writer):
        writer.write(garbage)
        assert await read_until_dropped(reader) == b""
    await assert_dropped(accepted[1], caplog, "protocol error")
    assert await bounded(client.call("echo", "old client")) == "old client"
    await assert_still_serving(server)


async def test_truncated_frame_then_close(
    server: Server, service: Service, accepted: list[Connection]
) -> None:
    async with raw_connection(server) as (reader, writer):
        writer.write(HELLO[:-3])
        writer.write_eof()
        assert await read_until_dropped(reader) == b""
    await bounded(asyncio.shield(accepted[0].closed))
    assert service.calls == []
    await assert_still_serving(server)


async def test_unauthenticated_peer_cannot_claim_a_large_allocation(
    server: Server, accepted: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    """A 512 MiB buffer claimed before the hello is refused before anything is allocated."""
    claim = PREFIX.pack(len(HELLO) - 8, 1) + (512 * 1024 * 1024).to_bytes(8, "little") + HELLO[8:]
    async with raw_connection(server) as (reader, writer):
        writer.write(claim)
        assert await read_until_dropped(reader) == b""
    await assert_dropped(accepted[0], caplog, "protocol error", "buffers in one frame")
    await assert_still_serving(server)


async def test_truncated_frame_then_close_is_logged(
    server: Server, accepted: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    async with raw_connection(server) as (reader, writer):
        writer.write(HELLO[:-3])
        writer.write_eof()
        await read_until_dropped(reader)
    await assert_dropped(accepted[0], caplog, "")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (PREFIX.pack(MAX_HEADER_BYTES + 1, 0), "header length"),
        (PREFIX.pack(0xFFFFFFFF, 0), "header length"),
        (PREFIX.pack(1, MAX_BUFFERS + 1), "buffers in one frame"),
        (
            PREFIX.pack(len(HELLO) - 8, 1)
            + (MAX_BUFFER_BYTES + 1).to_bytes(8, "little")
            + HELLO[8:],
            "exceeds limit",
        ),
    ],
    ids=["header-over-limit", "header-4gib", "too-many-buffers", "buffer-over-limit"],
)
@pytest.mark.parametrize("after_handshake", [False, True], ids=["fresh", "greeted"])
async def test_oversized_length_prefix(
    server: Server,
    client: Connection,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    reason: str,
    after_handshake: bool,
) -> None:
    async with raw_connection(server) as (reader, writer):
        if after_handshake:
            await raw_handshake(reader, writer, FrameDecoder())
        writer.write(data)
        assert await read_until_dropped(reader) == b""
    if not after_handshake and reason == "exceeds limit":
        # Before its hello a peer may send no raw buffers at all: refused sooner.
        reason = "buffers in one frame"
    await assert_dropped(accepted[1], caplog, "protocol error", reason)
    assert await bounded(client.call("echo", "old client")) == "old client"
    await assert_still_serving(server)


@pytest.mark.parametrize(
    "first",
    [
        frame(REQUEST, 1, "echo", "sneaky"),
        frame(NOTIFY, 0, "note", "sneaky"),
        frame(RESPONSE, 1, None, "hello?"),
        frame(REQUEST, 1, "hello", ["version", protocol.PROTOCOL_VERSION]),
    ],
    ids=["request", "notify", "response", "hello-not-a-map"],
)
async def test_first_frame_not_a_hello(
    server: Server,
    service: Service,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    first: bytes,
) -> None:
    async with raw_connection(server) as (reader, writer):
        writer.write(first)
        assert await read_until_dropped(reader) == b""
    await assert_dropped(accepted[0], caplog, "first frame is not a handshake")
    assert service.calls == []
    assert service.notes == []
    await assert_still_serving(server)


async def test_frames_after_a_rejected_first_frame_are_ignored(
    server: Server, service: Service, accepted: list[Connection]
) -> None:
    async with raw_connection(server) as (reader, writer):
        # One write, so the server reads all three frames in one chunk.
        writer.write(frame(REQUEST, 1, "echo", "x") + HELLO + frame(REQUEST, 2, "echo", "y"))
        await read_until_dropped(reader)
    await bounded(asyncio.shield(accepted[0].closed))
    assert service.calls == []


async def test_hello_with_wrong_protocol_version(
    server: Server, client: Connection, accepted: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConnectionError, match="protocol version 99"):
        await connect(server.host, server.port, hello={"version": 99}, timeout=TIMEOUT)
    await assert_dropped(accepted[1], caplog, "protocol version 99")
    assert await bounded(client.call("echo", "old client")) == "old client"
    await assert_still_serving(server)


async def test_hello_check_refuses(
    server: Server, client: Connection, accepted: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConnectionError, match="bad token 'wrong'"):
        await connect(server.host, server.port, hello={"token": "wrong"}, timeout=TIMEOUT)
    await assert_dropped(accepted[1], caplog, "handshake refused", "bad token 'wrong'")
    assert accepted[1].peer_info is None
    conn, answer = await connect(server.host, server.port, hello={"token": SECRET, "role": "ok"})
    conn.close()
    await bounded(conn.closed)
    assert answer["welcome"] == "ok"
    await assert_still_serving(server)


async def test_refused_hello_reason_reaches_a_raw_peer(server: Server) -> None:
    hello = frame(REQUEST, 1, "hello", {"version": protocol.PROTOCOL_VERSION, "token": "x"})
    async with raw_connection(server) as (reader, writer):
        writer.write(hello)
        data = await read_until_dropped(reader)
    decoder = FrameDecoder()
    buf = decoder.get_buffer()
    buf[: len(data)] = data
    [(kind, seq, method, body, _)] = decoder.buffer_updated(len(data))
    assert (kind, seq, method) == (protocol.ERROR, 1, "hello")
    assert body == ["HandshakeError", "bad token 'x'"]


async def test_no_handshake_within_timeout(
    server: Server,
    client: Connection,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", 0.2)
    async with raw_connection(server) as (reader, _):
        assert await read_until_dropped(reader) == b""
    await assert_dropped(accepted[1], caplog, "no handshake within timeout")
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", 10.0)
    assert await bounded(client.call("echo", "old client")) == "old client"
    await assert_still_serving(server)


# -- what an unauthenticated peer can cost ------------------------------------------


async def test_receive_buffer_is_small_until_the_hello_passes(
    server: Server, accepted: list[Connection]
) -> None:
    async with raw_connection(server) as (reader, writer):
        assert accepted[0].receive_buffer_bytes <= 4096
        await raw_handshake(reader, writer, FrameDecoder())
        assert accepted[0].receive_buffer_bytes == rpc.RECEIVE_BUFFER_BYTES
        writer.write(frame(REQUEST, 2, "echo", b"x" * 100_000))  # a large frame still fits
        _, seq, _, body, _ = await read_frame(reader, FrameDecoder())
        assert (seq, body) == (2, b"x" * 100_000)


async def test_handshakes_in_progress_are_capped_by_evicting_the_oldest(
    server: Server,
    client: Connection,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "MAX_PENDING_HANDSHAKES", 2)
    async with raw_connection(server) as (oldest, _), raw_connection(server):
        assert len(rpc._handshaking) == 2
        async with raw_connection(server) as (reader, writer):  # the third gets its challenge
            assert await read_until_dropped(oldest) == b""  # and the first waited longest
            await assert_dropped(accepted[1], caplog, "evicted: 2 handshakes in progress")
            assert len(rpc._handshaking) == 2
            await raw_handshake(reader, writer, FrameDecoder())  # a real client gets through
            assert len(rpc._handshaking) == 1
        assert await bounded(client.call("echo", "old client")) == "old client"
    await assert_still_serving(server)
    assert not rpc._handshaking


async def test_connections_never_take_the_reserved_file_descriptors(
    server: Server,
    client: Connection,
    accepted: list[Connection],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = resource.getrlimit
    # Under a limit of 16 the reserve is its last 2: this test's sockets are above them.
    monkeypatch.setattr(resource, "getrlimit", lambda _: (16, 16))
    with pytest.raises(ConnectionError):
        await connect(server.host, server.port, timeout=TIMEOUT)
    await assert_dropped(accepted[1], caplog, "file descriptor", "in the last 2 of 16")
    assert await bounded(client.call("echo", "old client")) == "old client"
    monkeypatch.setattr(resource, "getrlimit", real)
    await assert_still_serving(server)


async def test_peer_warnings_are_rate_limited(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc.peer_warnings, "burst", 3)
    for _ in range(8):
        async with raw_connection(server) as (reader, writer):
            writer.write(b"\xff" * 8)
            await read_until_dropped(reader)
    await assert_still_serving(server)
    drops = [r for r in caplog.records if "protocol error" in r.getMessage()]
    assert len(drops) == 3
    monkeypatch.setattr(rpc.peer_warnings, "clock", lambda: float("inf"))  # the window ends
    rpc.peer_warnings.flush()
    assert "5 more such warnings (protocol error) in the last 60 s" in caplog.text


# -- handlers whose reply cannot be delivered ----------------------------------------


async def test_handler_finishing_after_its_peer_left_reports_nothing(
    server: Server, client: Connection, service: Service, accepted: list[Connection]
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        fut = client.call_nowait("gated", 1)
        await bounded(service.all_waiting.wait())
        client.close()
        with pytest.raises(ConnectionLost):
            await bounded(fut)
        await bounded(asyncio.shield(accepted[0].closed))
        service.gates[1].set()
        await assert_still_serving(server)  # many loop iterations: the handler is done
        assert errors == []
    finally:
        loop.set_exception_handler(None)


class UnencodableService:
    """Handlers whose results msgpack cannot encode."""

    def handle_sync(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        return {1, 2}

    async def handle_async(self, conn: Connection, body: Any, buffers: list[Buffer]) -> Any:
        return object()


@pytest.mark.parametrize("method", ["sync", "async"])
async def test_unencodable_result_becomes_rpc_error(method: str) -> None:
    srv = Server(rpc.handlers_of(UnencodableService()))
    await srv.start()
    try:
        conn, _ = await connect(srv.host, srv.port, timeout=TIMEOUT)
        try:
            with pytest.raises(RpcError):
                await bounded(conn.call(method), 1.0)
            assert not conn.is_closed
        finally:
            conn.close()
    finally:
        await bounded(srv.stop())
