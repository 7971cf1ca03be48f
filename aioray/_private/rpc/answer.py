"""Replies without futures, both ways: a request answered later, maybe from another
thread (``Answer``), and a reply handed to a callback as soon as it is read (``Then``).

``Answer`` is what a handler returns when its reply is not ready yet (a worker's
``push_task``: the reply comes when the task ends). On the connection's loop, ``send``
and ``fail`` answer as a returned future's result would. From any other thread,
``send_now`` writes the response to the socket itself when nothing is queued on the
connection before it (``Connection.write_now``): a task's reply then leaves from the thread that
ran the task, without a hand-off to the loop and a wake-up of it. When that cannot be
done it returns False, and the caller answers through the loop instead.

Writing from a thread that is not the loop's is safe because every write to the
socket holds the connection's write lock (``Connection._flush`` too), because the
thread writes only when the connection has no frame and no byte waiting, so nothing
can be ahead of it, and because it writes to a duplicate of the descriptor, made on
the loop when the first answer is bound and closed under the write lock, which the
loop closing its own cannot hand over to another file meanwhile. What the
socket does not take at once goes to the front of the connection's queue, for the
loop to write before anything else. TLS connections are the loop's alone.

``Then`` stands where a pending request's future would (``Connection.call_then``):
the reply runs the callback while its frame is being read, not one loop iteration
later through the future's callbacks; an error (the connection lost) still runs it
one iteration later, as a future's callback would have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aioray._private.wire.protocol import REQUEST, RESPONSE, Buffer, encode_frame

if TYPE_CHECKING:
    from aioray._private.rpc.connection import Connection

logger = logging.getLogger(__name__)

# then(reply, error): the reply as (body, buffers), or None and the error.
ThenFn = Callable[[Any, BaseException | None], None]


class Then:
    """A pending request's callback, in the place of its future (``call_then``)."""

    __slots__ = ("fn", "loop")

    def __init__(self, fn: ThenFn, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop

    def done(self) -> bool:
        return False  # (the connection drops it once it has run)

    def set_result(self, reply: tuple[Any, list[Buffer]]) -> None:
        try:
            self.fn(reply, None)
        except Exception:  # (the frames read with it must still be dispatched)
            logger.exception("reply callback %r failed", self.fn)

    def set_exception(self, exc: BaseException) -> None:
        self.loop.call_soon(self.fn, None, exc)


class Answer:
    """The answer to one request, owed until ``send``, ``fail`` or ``send_now``.

    A handler returns it unbound; the connection binds it to the request before any
    other callback runs. Once answered, later answers are dropped (a cancel on the
    loop and the task's own end can race: the peer ignores a second response)."""

    __slots__ = ("answered", "conn", "kind", "method", "seq")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.kind = REQUEST
        self.seq = 0
        self.method = ""
        self.answered = False

    def __repr__(self) -> str:
        return f"<Answer {self.method} seq={self.seq} answered={self.answered}>"

    def bind(self, conn: Connection, kind: int, seq: int, method: str) -> None:
        """(loop) The request this answers (called by the connection). ``conn`` is set
        last: a thread that sees it set sees the rest (``send_now``)."""
        self.kind, self.seq, self.method = kind, seq, method
        self.conn = conn

    def done(self) -> bool:
        return self.answered

    def send(self, result: Any) -> None:
        """(loop) Answer with ``result`` (a body, or an ``rpc.Reply`` with buffers)."""
        if self.answered:
            return
        self.answered = True
        conn = self.conn
        if conn is not None and not conn.is_closed and self.kind == REQUEST:
            conn.reply(self.seq, self.method, result)

    def fail(self, exc: BaseException) -> None:
        """(loop) Answer with an error (the peer's call raises RpcError)."""
        if self.answered:
            return
        self.answered = True
        conn = self.conn
        if conn is not None and not conn.is_closed:
            conn.reply_error(self.kind, self.seq, self.method, exc)

    def send_now(self, body: Any, buffers: Sequence[Buffer]) -> bool:
        """(any thread) Answer at once from this thread; False if it must be answered
        through the loop (not bound yet, TLS, something queued before it, unencodable)."""
        conn = self.conn
        if self.answered or conn is None:
            return self.answered
        if self.kind != REQUEST:
            self.answered = True
            return True
        try:
            frames = encode_frame(RESPONSE, self.seq, None, body, buffers)
        except (TypeError, ValueError, OverflowError):
            return False  # the loop's answer reports it
        return conn.write_now(frames, self)
