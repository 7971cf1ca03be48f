"""A request answered later, maybe from another thread: what a handler returns when its
reply is not ready yet (a worker's ``push_task``: the reply comes when the task ends).

On the connection's loop, ``send`` and ``fail`` answer as a returned future's result
would. From any other thread, ``send_now`` writes the response to the socket itself
when nothing is queued on the connection before it (``Connection.write_now``): a
task's reply then leaves from the thread that ran the task, without a hand-off to the
loop and a wake-up of it. When that cannot be done it returns False, and the caller
answers through the loop instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aioray._private.wire.protocol import REQUEST, RESPONSE, Buffer, encode_frame

if TYPE_CHECKING:
    from aioray._private.rpc.rpc import Connection


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
        """(loop) The request this answers (called by the connection)."""
        self.conn, self.kind, self.seq, self.method = conn, kind, seq, method

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
