"""One connection over TCP: framing, requests in flight, replies, batched writes.

Floor 2 (sockets); ``rpc`` connects and serves with it. One ``Connection``
multiplexes requests in flight (by sequence id), responses and one-way
notifications in both directions. Outgoing frames written during one loop
iteration are flushed together with a single ``writelines``. A server-side
connection is admitted, then greeted (``handshake``) before it dispatches anything.

Handlers are methods named ``handle_<method>`` on a service object, plain or
``async``; they receive ``(conn, body, buffers)`` and return a body, or
``Reply(body, buffers)`` to attach raw buffers, or a future or an ``Answer`` (answer.py,
which may answer from another thread) to reply later.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from aioray._private.rpc import handshake
from aioray._private.rpc.answer import Answer, Then, ThenFn
from aioray._private.rpc.handshake import HelloCheck
from aioray._private.rpc.peer_log import RateLimitedLog
from aioray._private.rpc.thread_reads import ThreadReads
from aioray._private.wire import auth, config, protocol
from aioray._private.wire.protocol import ERROR, NOTIFY, REQUEST, RESPONSE, Buffer, ProtocolError
from aioray._private.wire.schema import Hello
from aioray.exceptions import RpcError as RayRpcError

# The rpc layer logs under one name, its public module's (as before this module split off).
logger = logging.getLogger("aioray._private.rpc.rpc")

# A peer's receive buffer before and after its hello: small until it proved the token.
HELLO_BUFFER_BYTES = 2048
RECEIVE_BUFFER_BYTES = 512 * 1024

peer_warnings = RateLimitedLog(logger, config.PEER_LOG_BURST, config.PEER_LOG_WINDOW_S)


class RpcError(RayRpcError):
    """The remote handler raised; carries the remote exception's type name. It reaches
    users as Ray's ``ray.exceptions.RpcError`` (a failed call to a daemon)."""

    def __init__(self, method: str, remote_type: str, message: str) -> None:
        super().__init__(f"{method}: {remote_type}: {message}")
        self.method = method
        self.remote_type = remote_type
        self.remote_message = message

    def __reduce__(self) -> Any:
        return (type(self), (self.method, self.remote_type, self.remote_message))


class ConnectionLost(ConnectionError):
    """The connection closed while a request was in flight."""


class Reply:
    """A handler's answer that carries raw out-of-band buffers next to its body."""

    __slots__ = ("body", "buffers")

    def __init__(self, body: Any, buffers: Sequence[Buffer] = ()) -> None:
        self.body = body
        self.buffers = buffers


# A handler receives (connection, body, buffers): its body's type is its method's
# declaration in schema.py (``Any`` here: each handler annotates its own), and it
# returns the reply's body, a Reply, or a future of either.
Handler = Callable[["Connection", Any, list[Buffer]], Any]


def handlers_of(service: object) -> dict[str, Handler]:
    """Collect ``handle_<name>`` methods of a service object into a dispatch table."""
    return {
        name[len("handle_") :]: getattr(service, name)
        for name in dir(service)
        if name.startswith("handle_") and callable(getattr(service, name))
    }


class Connection(ThreadReads, asyncio.BufferedProtocol):
    """One TCP connection: framing, request/response matching, batched writes."""

    def __init__(
        self,
        handlers: dict[str, Handler] | None = None,
        *,
        server_side: bool = False,
        hello_check: HelloCheck | None = None,
        name: str = "",
        is_async: dict[str, bool] | None = None,
        hello_timeout: float = config.HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._handlers = handlers or {}
        # A server computes this once for all its connections (memory per peer).
        self._is_async = is_async if is_async is not None else async_table(self._handlers)
        self._decoder = protocol.FrameDecoder(
            HELLO_BUFFER_BYTES if server_side else RECEIVE_BUFFER_BYTES
        )
        self._transport: asyncio.Transport | None = None
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[Any, list[Buffer]]]] = {}
        self._out: list[Buffer] = []
        self._flush_scheduled = False
        self._wlock = threading.Lock()  # held by every write to the socket (answer.py)
        self._fd = -1  # a plain TCP socket's descriptor: other threads may write to it
        self._wfd = -1  # their own duplicate of it, made on first use
        self._server_side = server_side
        self._hello_check = hello_check
        self._greeted = not server_side
        if server_side:
            self._decoder.max_header = protocol.HELLO_MAX_HEADER_BYTES
            self._decoder.max_buffers = 0
        self._dead = False  # aborted: ignore whatever else the peer already sent
        self._hello_timer: asyncio.TimerHandle | None = None
        self._hello_timeout = hello_timeout  # server side: how long a peer has to say hello
        self._challenge = b""  # server side: what this peer must answer
        self.challenge: asyncio.Future[bytes] = self.loop.create_future()  # client side
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.peer_info: Hello | None = None  # what the peer said in its hello
        self.state: dict[str, Any] = {}  # per-connection data owned by the service
        self.on_close: list[Callable[[Connection], None]] = []
        self.name = name

    def __repr__(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return f"<Connection {self.name} peer={peer} pending={len(self._pending)}>"

    @property
    def receive_buffer_bytes(self) -> int:
        """Size of this connection's receive buffer (small until the peer's hello)."""
        return self._decoder.capacity

    # -- asyncio.BufferedProtocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if transport.get_extra_info("sslcontext") is None:  # (TLS: through the loop)
                self._fd = sock.fileno()
        if self._server_side:
            refused = handshake.admission(sock)
            if refused is not None:
                self._abort(refused, "refused")
                return
            handshake.handshaking[self] = self._abort
            self._hello_timer = self.loop.call_later(
                self._hello_timeout, self._abort, "no handshake within timeout", "timeout"
            )
            self._challenge = auth.new_challenge()
            self._send(NOTIFY, 0, "challenge", self._challenge)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except ProtocolError as e:
            self._abort(f"protocol error: {e}", "protocol error")
            return
        except MemoryError:
            self._abort("out of memory receiving a frame", "protocol error")
            return
        for kind, seq, method, body, buffers in frames:
            if self._dead:
                return
            self._dispatch(kind, seq, method, body, buffers)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed.done():
            return  # reported once (a TLS listener reports a failed handshake itself)
        if self._decoder.partial and not self._dead:
            self._peer_warning("partial frame", "%r closed in the middle of a frame", self)
        self._transport = None
        self._dead = True
        self._uncount()
        with self._wlock:  # (a thread writing an answer holds it: the dup stays open)
            if self._wfd >= 0:
                os.close(self._wfd)
                self._wfd = -1
            self._close_reads()
            pending, self._pending = self._pending, {}  # (a reading thread's ``forget``)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if not self.challenge.done():
            self.challenge.set_result(b"")  # a connect() waiting for it then sees the loss
        label = f"connection {self.name}" if self.name else "connection"
        err = ConnectionLost(f"{label} lost" + (f": {exc}" if exc else ""))
        self._decoder.destinations.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        for cb in self.on_close:
            try:
                cb(self)
            except Exception:
                logger.exception("on_close callback failed for %r", self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # -- dispatch -----------------------------------------------------------------
    def _dispatch(
        self, kind: int, seq: int, method: str | None, body: Any, buffers: list[Buffer]
    ) -> None:
        if not self._greeted:
            self._greet(kind, seq, method, body)
            return
        if kind in (RESPONSE, ERROR):
            if self._decoder.destinations:
                self._decoder.destinations.pop(seq, None)
            fut = self._pending.pop(seq, None)
            if fut is None or fut.done():
                return
            if kind == RESPONSE:
                fut.set_result((body, buffers))
            else:
                fut.set_exception(RpcError(str(method), *_error_fields(body)))
            return
        assert method is not None
        handler = self._handlers.get(method)
        if handler is None:
            if method == "challenge" and not self.challenge.done() and isinstance(body, bytes):
                self.challenge.set_result(body)  # the server's first frame (see auth)
                return
            self._peer_warning("unknown method", "unknown method %r from %r", method, self)
            if kind == REQUEST:
                self._send(ERROR, seq, method, ["UnknownMethod", f"no method {method!r}"])
            return
        if self._is_async[method]:
            task = self.loop.create_task(handler(self, body, buffers))
            task.add_done_callback(lambda t: self._finish(kind, seq, method, t))
            return
        try:
            result = handler(self, body, buffers)
        except Exception as e:
            self.reply_error(kind, seq, method, e)
            return
        if result.__class__ is Answer:
            if self._wfd < 0:
                self.allow_thread_writes()  # (the execution thread may answer itself)
            result.bind(self, kind, seq, method)
        elif isinstance(result, asyncio.Future):
            # A handler that answers later (e.g. when a task finishes) returns a future.
            result.add_done_callback(lambda f: self._finish(kind, seq, method, f))
        elif kind == REQUEST:
            self.reply(seq, method, result)

    def _finish(self, kind: int, seq: int, method: str, task: asyncio.Future[Any]) -> None:
        if self._transport is None or self._dead:
            if not task.cancelled():
                task.exception()  # the peer left: nobody to tell, nothing to log
            return
        if task.cancelled():
            if kind == REQUEST:
                self._send(ERROR, seq, method, ["Cancelled", "handler cancelled"])
            return
        exc = task.exception()
        if exc is not None:
            self.reply_error(kind, seq, method, exc)
        elif kind == REQUEST:
            self.reply(seq, method, task.result())

    def reply(self, seq: int, method: str, result: Any) -> None:
        """(loop) Send the response to request ``seq``: a body, or a ``Reply``."""
        try:
            if isinstance(result, Reply):
                self._send(RESPONSE, seq, None, result.body, result.buffers)
            else:
                self._send(RESPONSE, seq, None, result)
        except (TypeError, ValueError, OverflowError) as e:  # msgpack cannot encode the result
            logger.error("handler %s returned an unencodable result: %s", method, e)
            self._send(ERROR, seq, method, ["EncodeError", f"unencodable result: {e}"])

    def reply_error(self, kind: int, seq: int, method: str, exc: BaseException) -> None:
        """(loop) Answer request ``seq`` with an error (a notification's is logged)."""
        if kind == REQUEST:
            self._send(ERROR, seq, method, [type(exc).__name__, str(exc)])
        elif not isinstance(exc, ConnectionError):
            logger.error("notification handler %s failed", method, exc_info=exc)

    def _greet(self, kind: int, seq: int, method: str | None, body: Any) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if kind != REQUEST or method != "hello" or not isinstance(body, dict):
            self._abort(f"first frame is not a handshake (method={method!r})", "handshake")
            return
        try:
            answer = handshake.check_hello(body, self._challenge, self._hello_check)
        except handshake.HelloRefused as e:
            self._send(ERROR, seq, method, [e.remote_type, e.reason])
            self._abort(e.log, e.kind, flush=True)
            return
        self.peer_info = cast(Hello, body)
        self._greeted = True
        self._uncount()
        self._decoder.max_header = protocol.MAX_HEADER_BYTES
        self._decoder.max_buffers = protocol.MAX_BUFFERS
        self._decoder.grow(RECEIVE_BUFFER_BYTES)
        self._send(RESPONSE, seq, None, answer)

    def _abort(self, reason: str, kind: str = "dropped", flush: bool = False) -> None:
        if self._transport is None or self._dead:
            return
        self._dead = True
        self._uncount()
        peer = self._transport.get_extra_info("peername")
        self._peer_warning(kind, "dropping connection from %s: %s", peer, reason)
        if flush:
            self._flush()
            self._transport.close()
        else:
            self._transport.abort()

    def _uncount(self) -> None:
        handshake.handshaking.pop(self, None)

    def _peer_warning(self, kind: str, msg: str, *args: Any) -> None:
        due = peer_warnings.warning(kind, msg, *args)
        if due is not None:
            self.loop.call_later(due, flush_peer_warnings, self.loop)

    # -- sending ------------------------------------------------------------------
    def _send(
        self, kind: int, seq: int, method: str | None, body: Any, buffers: Sequence[Buffer] = ()
    ) -> None:
        if self._transport is None:
            raise ConnectionLost(f"connection {self.name} is closed")
        self._out.extend(protocol.encode_frame(kind, seq, method, body, buffers))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            with self._wlock:
                out, self._out = self._out, []
                self._transport.writelines(out)

    def write_now(self, frames: list[Buffer], answer: Answer) -> bool:
        """(any thread) Write ``answer``'s frames from this thread if nothing is queued
        before them (True: answered); False, with nothing written, when they must go
        through the loop: TLS, frames or bytes waiting, the connection closing."""
        if self._fd < 0 or len(frames) > MAX_DIRECT_PARTS:
            return False
        with self._wlock:
            if not self._writable_now():
                return False
            if answer.answered:
                return True
            if not self._writev_now(frames):
                return False  # (the loop sees the connection fail and drops the answer)
            answer.answered = True
        return True

    def call_then_now(
        self,
        method: str,
        body: Any,
        buffers: Sequence[Buffer],
        then: ThenFn,
        written: list[int],
    ) -> int:
        """(any thread but the loop's) ``call_then``, the request written from this thread
        (``write_now``'s way): its sequence number; 0, with nothing sent or registered,
        when it must go through the loop: TLS, no duplicate made (``allow_thread_writes``),
        frames or bytes waiting, the connection closing. The reply's callback is registered before
        the write (a reply may be read before ``writev`` returns), under the write lock
        (``connection_lost`` takes it before failing what is pending).

        ``written`` gets the bytes the write took, in the same C call as the write: if
        an interrupt (KeyboardInterrupt, in the main thread) raises out of here, the
        request went out (and is owed its reply) exactly when ``written`` is not empty."""
        if self._wfd < 0:  # (read without the lock: looked at again under it)
            return 0
        seq = next(self._seq)  # (atomic: a number lost on the way back is only a gap)
        frames = protocol.encode_frame(REQUEST, seq, method, body, buffers)
        if len(frames) > MAX_DIRECT_PARTS:
            return 0
        with self._wlock:
            if not self._writable_now():
                return 0
            self._pending[seq] = Then(then, self.loop)  # type: ignore[assignment]
            try:
                written.extend(map(os.writev, (self._wfd,), (frames,)))  # (one C call)
            except BlockingIOError:
                written.append(0)
            except BaseException as e:
                if not written:  # nothing went out: the loop sends it (and sees why)
                    self._pending.pop(seq, None)
                    if isinstance(e, OSError):
                        return 0
                    raise
                self._queue_rest(frames, written[0])  # (interrupted after the write)
                raise
            self._queue_rest(frames, written[0])
        return seq

    def allow_thread_writes(self) -> None:
        """(loop) Make the duplicate of a plain TCP socket's descriptor that other threads
        write to (``write_now``, ``call_then_now``), once. Made on the loop, where the
        socket is surely open: made from a thread, the loop could close the socket
        first, and its number could belong to another file by then."""
        if self._wfd < 0 and self._fd >= 0 and self._transport is not None:
            self._wfd = os.dup(self._fd)

    def _writable_now(self) -> bool:
        """(write lock held) Nothing waits to be written before a thread's frames, and
        the connection is open with its duplicate made."""
        transport = self._transport
        return not (
            self._out
            or transport is None
            or self._dead
            or self._wfd < 0
            or transport.is_closing()
            or transport.get_write_buffer_size()
        )

    def _writev_now(self, frames: list[Buffer]) -> bool:
        """(write lock held, ``_writable_now``) Write ``frames`` to the duplicate; what the
        socket does not take at once goes to the front of the queue, for the loop to
        write first. False if nothing could be written (the socket failed)."""
        try:
            written = os.writev(self._wfd, frames)
        except BlockingIOError:
            written = 0
        except OSError:
            return False
        self._queue_rest(frames, written)
        return True

    def _queue_rest(self, frames: list[Buffer], written: int) -> None:
        """(write lock held) What the socket did not take of a thread's frames goes to
        the front of the queue, for the loop to write before anything else."""
        rest = _unwritten(frames, written)
        if rest:  # the socket's buffer is full
            self._out[:0] = rest
            self.loop.call_soon_threadsafe(self._flush)

    def call_nowait(
        self, method: str, body: Any = None, buffers: Sequence[Buffer] = ()
    ) -> asyncio.Future[tuple[Any, list[Buffer]]]:
        """Send a request; the future resolves to ``(body, buffers)`` of the reply."""
        seq = next(self._seq)
        fut: asyncio.Future[tuple[Any, list[Buffer]]] = self.loop.create_future()
        self._send(REQUEST, seq, method, body, buffers)
        self._pending[seq] = fut
        if self._reads_paused:  # (lent to caller threads: this reply is the loop's)
            self.resume_reads()
        return fut

    def call_then(self, method: str, body: Any, buffers: Sequence[Buffer], then: ThenFn) -> None:
        """Send a request; ``then((body, buffers), None)`` runs as soon as the reply is
        read, ``then(None, error)`` one loop iteration after it failed (answer.py)."""
        seq = next(self._seq)
        self._send(REQUEST, seq, method, body, buffers)
        self._pending[seq] = Then(then, self.loop)  # type: ignore[assignment]
        if self._reads_paused:
            self.resume_reads()

    def call_into(
        self, method: str, body: Any, destinations: list[memoryview]
    ) -> asyncio.Future[tuple[Any, list[Buffer]]]:
        """Send a request whose reply's raw buffers are received straight into
        ``destinations`` (one memoryview per buffer, of the exact length; a buffer of
        another length is received into new memory as usual). The views must stay
        writable until the future is done or the connection closed."""
        seq = next(self._seq)
        fut: asyncio.Future[tuple[Any, list[Buffer]]] = self.loop.create_future()
        self._send(REQUEST, seq, method, body)
        self._pending[seq] = fut
        self._decoder.destinations[seq] = destinations
        if self._reads_paused:
            self.resume_reads()
        return fut

    async def call(self, method: str, body: Any = None, buffers: Sequence[Buffer] = ()) -> Any:
        """Send a request and return the body of the reply."""
        reply, _ = await self.call_nowait(method, body, buffers)
        return reply

    async def call_full(
        self, method: str, body: Any = None, buffers: Sequence[Buffer] = ()
    ) -> tuple[Any, list[Buffer]]:
        return await self.call_nowait(method, body, buffers)

    def notify(self, method: str, body: Any = None, buffers: Sequence[Buffer] = ()) -> None:
        """Send a one-way message."""
        self._send(NOTIFY, 0, method, body, buffers)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        self._flush()
        if self._paused and self._transport is not None:
            w: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(w)
            await w

    @property
    def is_closed(self) -> bool:
        return self._transport is None

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()


def async_table(handlers: dict[str, Handler]) -> dict[str, bool]:
    """Which handlers are coroutine functions (run as tasks), by method name."""
    return {k: inspect.iscoroutinefunction(v) for k, v in handlers.items()}


def flush_peer_warnings(loop: asyncio.AbstractEventLoop) -> None:
    """Write the summaries of the windows that ended; again later if one has not yet."""
    due = peer_warnings.flush()
    if due is not None:
        loop.call_later(due, flush_peer_warnings, loop)


def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, list) and len(body) == 2:
        return str(body[0]), str(body[1])
    return "RemoteError", repr(body)


# A response written from another thread goes out in one writev of at most this many parts.
MAX_DIRECT_PARTS = 64


def _unwritten(frames: list[Buffer], written: int) -> list[Buffer]:
    """What is left of ``frames`` after the first ``written`` bytes went out."""
    rest: list[Buffer] = []
    for part in frames:
        size = part.nbytes if isinstance(part, memoryview) else len(part)
        if written >= size:
            written -= size
            continue
        rest.append(memoryview(part).cast("B")[written:] if written else part)
        written = 0
    return rest
