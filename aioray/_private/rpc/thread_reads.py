"""A caller thread reading the reply to its own request, on a connection the loop lent it.

Floor 2. A sync round trip read by the loop costs the caller two wake-ups: the loop's
for the reply, then its own once the loop's turn is over. Read by the caller thread
itself it costs one. So a connection the loop expects nothing on but the replies to
caller threads' requests (an idle lease's, owner/leases.py) can be *lent*: the loop
stops reading it (``pause_reads``), a thread that waits for a reply takes the read side
(``take_reads``), reads until its reply comes (``read_reply``), hands every other frame
it read to the loop in order, and gives the read side up (``release_reads``). The loop
takes it back with ``resume_reads``: at once if no thread reads, else when that thread
is done. Every request the loop sends resumes its reading first, so a reply only a
loop waits for is never left unread.

The state is four fields, changed under the connection's write lock, so a thread and
the loop never read the socket at once. A thread reads from its own duplicate of the
socket (made on the loop, closed by whoever finishes last), polls in slices so a
connection that closed meanwhile does not hold it, and defers Ctrl-C from the moment
it reads bytes until its caller has dealt with the reply (``InterruptHold``): bytes
read from a socket cannot be put back, so an interrupt between the read and the hand-
over would lose a reply.
"""

from __future__ import annotations

import _signal
import asyncio
import os
import select
import threading
import time
from functools import partial
from time import perf_counter
from typing import Any

from aioray._private.rpc.spin_wait import SpinBudget, spin
from aioray._private.wire import protocol
from aioray._private.wire.protocol import ERROR, RESPONSE, Buffer, ProtocolError

POLL_SLICE_S = 0.1  # how soon a reading thread notices its connection closed
_MAIN = threading.main_thread().ident
_SIGINT = 2

Frame = tuple[int, int, Any, Any, list[Buffer]]


class InterruptHold:
    """Ctrl-C held off in the main thread between ``hold`` and ``release`` (elsewhere a
    no-op: KeyboardInterrupt is raised only in the main thread). An interrupt that came
    meanwhile is delivered by ``release``, through the handler that was in place."""

    __slots__ = ("hit", "old")

    def __init__(self) -> None:
        self.old: Any = None
        self.hit = False

    def hold(self) -> None:
        if threading.get_ident() == _MAIN:
            self.hit = False
            # (an interrupt after the swap, even before ``old`` is stored, runs ``_held``,
            # which only records it)
            self.old = _signal.signal(_SIGINT, self._held)

    def _held(self, signum: int, frame: Any) -> None:
        self.hit = True

    def release(self) -> None:
        old, self.old = self.old, None
        if old is None:
            return
        _signal.signal(_SIGINT, old)
        if self.hit:
            self.hit = False
            if callable(old):
                old(_SIGINT, None)  # (the default handler raises KeyboardInterrupt)
            elif old == _signal.SIG_DFL:
                raise KeyboardInterrupt


class ThreadReads:
    """The read side of a ``Connection`` lent to caller threads (mixed into it)."""

    # (class defaults: a connection never lent pays nothing for them)
    _reads_paused = False  # (write lock) the loop does not read: a thread may
    _reading = False  # (write lock) a thread holds the read side
    _want_back = False  # (write lock) the loop asked for it back while a thread read
    _rfd = -1  # the reading threads' duplicate of the socket
    _spin: SpinBudget  # how long a reading thread polls before it sleeps (set when lent)

    # Provided by Connection:
    loop: asyncio.AbstractEventLoop
    _wlock: threading.Lock
    _fd: int
    _dead: bool
    _transport: asyncio.Transport | None
    _pending: dict[int, Any]
    _decoder: protocol.FrameDecoder

    def _dispatch(self, kind: int, seq: int, method: Any, body: Any, buffers: list[Buffer]) -> None:
        raise NotImplementedError

    def _abort(self, reason: str, kind: str = "dropped", flush: bool = False) -> None:
        raise NotImplementedError

    def allow_thread_reads(self) -> None:
        """(loop) Make the readers' duplicate of a plain TCP socket, once (on the loop,
        where the socket is surely open: see ``allow_thread_writes``)."""
        if self._rfd < 0 and self._fd >= 0 and self._transport is not None and not self._dead:
            self._rfd = os.dup(self._fd)
            self._spin = SpinBudget()

    def pause_reads(self) -> None:
        """(loop) Lend the read side: stop reading, unless a reply to a request of the
        loop's is still awaited here (it would wait for a thread that may never read)."""
        if (
            self._reads_paused
            or self._pending
            or self._rfd < 0
            or self._dead
            or self._transport is None
        ):
            return
        self._transport.pause_reading()
        self._reads_paused = True

    def resume_reads(self) -> None:
        """(loop) Read again: now if no thread reads, else once that thread is done."""
        if not self._reads_paused:
            return
        with self._wlock:
            if self._reading:
                self._want_back = True
                return
            self._reads_paused = self._want_back = False
        transport = self._transport
        if transport is not None:
            transport.resume_reading()

    def awaits(self, seq: int) -> bool:
        """(loop) Whether the reply to request ``seq`` is still to be read."""
        return seq in self._pending

    def take_reads(self) -> bool:
        """(a thread) Take the read side if it is lent and nobody holds it."""
        if not self._reads_paused:  # (looked at again under the lock)
            return False
        with self._wlock:
            if not self._reads_paused or self._reading or self._want_back or self._dead:
                return False
            self._reading = True
        return True

    def read_reply(self, seq: int, deadline: float | None, held: InterruptHold) -> Frame | None:
        """(the thread holding the read side) Read until the reply to request ``seq``
        comes; frames before it go to the loop, in order. None, with the read side
        given back, if the reply was read already, the deadline passed, the connection
        closed or failed. With a
        reply, Ctrl-C stays held off (``held``) until the caller releases it: the caller
        forgets the request (``forget``) and gives the read side up."""
        if seq not in self._pending:  # read by the loop before this thread took over
            self.release_reads(keep=True)
            return None
        fd = self._rfd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        budget = self._spin
        start = perf_counter()
        try:
            if budget.now:  # (a reply that comes soon finds this CPU still running)
                wait = budget.now if deadline is None else deadline - time.monotonic()
                spin(partial(poller.poll, 0), min(wait, budget.now))
            while True:
                wait = POLL_SLICE_S if deadline is None else deadline - time.monotonic()
                if wait < 0 or self._dead:
                    self.release_reads(keep=False)
                    return None
                if not poller.poll(min(wait, POLL_SLICE_S) * 1000.0):  # (Ctrl-C lands here)
                    continue
                held.hold()
                reply = self._read_frames(fd, seq)
                if reply is not None:
                    if reply.__class__ is tuple:
                        budget.waited(perf_counter() - start)
                        return reply
                    self.release_reads(keep=False)  # (closed, or a protocol error)
                    held.release()
                    return None
                held.release()
        except BaseException:
            self.release_reads(keep=False)
            held.release()
            raise

    def _read_frames(self, fd: int, seq: int) -> Frame | bool | None:
        """(held) One read: the reply to ``seq`` if it came (the frames before it
        posted to the loop), False if the connection closed or failed, else None."""
        decoder = self._decoder
        try:
            n = os.readv(fd, [decoder.get_buffer()])
        except BlockingIOError:
            return None
        except OSError:
            return False
        if n == 0:
            return False  # end of stream: the loop sees it once it reads again
        try:
            frames = decoder.buffer_updated(n)
        except (ProtocolError, MemoryError) as e:
            self.loop.call_soon_threadsafe(self._abort, f"protocol error: {e}", "protocol error")
            return False
        reply = None
        others = []
        for frame in frames:
            if reply is None and frame[1] == seq and frame[0] in (RESPONSE, ERROR):
                reply = frame
            else:
                others.append(frame)
        if others:
            self.loop.call_soon_threadsafe(self._dispatch_frames, others)
        return reply

    def _dispatch_frames(self, frames: list[Frame]) -> None:
        """(loop) Frames a reading thread read that were not its reply."""
        for frame in frames:
            if self._dead:
                return
            self._dispatch(*frame)

    def forget(self, seq: int) -> bool:
        """(the thread holding the read side) Take request ``seq`` off the pending ones:
        its reply is the thread's. False if the connection failed it already."""
        with self._wlock:
            return self._pending.pop(seq, None) is not None

    def hand_over(self, frame: Frame) -> None:
        """(the thread holding the read side) The reply it read is the loop's to deal
        with after all: dispatched there, after what was posted before."""
        self.loop.call_soon_threadsafe(self._dispatch_frames, [frame])
        self.release_reads(keep=False)

    def release_reads(self, keep: bool) -> None:
        """(the thread holding the read side) Give it up: still lent (``keep``) unless
        the loop asked for it back or awaits a reply here, else back to the loop."""
        with self._wlock:
            self._reading = False
            if self._dead:
                if self._rfd >= 0:
                    os.close(self._rfd)
                    self._rfd = -1
                return
            back = not keep or self._want_back or bool(self._pending)
        if back:
            try:
                self.loop.call_soon_threadsafe(self.resume_reads)
            except RuntimeError:  # (the loop closed: nothing reads any more)
                pass

    def _close_reads(self) -> None:
        """(loop, write lock held, connection lost) Close the readers' duplicate unless a
        thread reads from it (that thread closes it when it is done)."""
        if self._rfd >= 0 and not self._reading:
            os.close(self._rfd)
            self._rfd = -1
