"""Shared fakes for the unit tests: connections that record what is sent, and a real
CoreWorker that is never started, wired to them instead of sockets.

``FakeConnection`` has the surface of ``rpc.Connection`` the services use (``notify``,
``call_nowait``, ``call``, ``on_close``, ``state``, ``is_closed``): every frame sent is
kept in ``sent``, and the test answers a request (``reply``, ``fail``) or drops the
connection (``drop``: pending calls fail with ConnectionLost, ``on_close`` runs), which
is how a worker or an owner dies here. ``offline_core_worker`` gives a CoreWorker whose
raylet, GCS and peers are such connections: the owner-side state (reference counts,
memory store, borrowing, lineage, submitters) then runs for real, events in and
frames out, with no process and no socket.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from aioray._private.owner.core_worker import CoreWorker
from aioray._private.owner.object_ref import set_core_worker
from aioray._private.rpc.rpc import ConnectionLost
from aioray._private.wire import ids, serialization
from aioray._private.wire.task_spec import TaskEntry

NODE_ID = b"\x0e" * 16


@dataclass
class Sent:
    """One frame a FakeConnection was asked to send; ``reply`` is set for a request."""

    method: str
    body: Any
    buffers: Sequence[Any] = ()
    reply: asyncio.Future[Any] | None = field(default=None, repr=False)


class FakeConnection:
    """Stands in for an ``rpc.Connection``: records frames, lets the test answer."""

    def __init__(self, name: str = "fake", answer: Callable[[str, Any], Any] | None = None) -> None:
        self.name = name
        # Answers every request at once when set: answer(method, body) is the reply's
        # body (an exception it raises fails the request). Else the test answers.
        self.answer = answer
        self.state: dict[str, Any] = {}
        self.on_close: list[Any] = []
        self.is_closed = False
        self.sent: list[Sent] = []
        # Requests other threads wrote themselves (call_then_now); False: they cannot.
        self.thread_writes = True
        self.written_by_threads = 0
        self.interrupt: str | None = None  # a Ctrl-C in call_then_now: "before" / "after"
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # (made outside a loop: no thread writes to it)
            self.loop = None

    def __repr__(self) -> str:
        return f"<FakeConnection {self.name} sent={len(self.sent)} closed={self.is_closed}>"

    def _check_open(self) -> None:
        if self.is_closed:
            raise ConnectionLost(f"connection {self.name} is closed")

    def notify(self, method: str, body: Any = None, buffers: Sequence[Any] = ()) -> None:
        self._check_open()
        self.sent.append(Sent(method, body, buffers))

    def call_nowait(
        self, method: str, body: Any = None, buffers: Sequence[Any] = ()
    ) -> asyncio.Future[Any]:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(method, body, buffers, fut))
        if self.answer is not None:
            try:
                fut.set_result((self.answer(method, body), []))
            except Exception as e:
                fut.set_exception(e)
        return fut

    async def call(self, method: str, body: Any = None, buffers: Sequence[Any] = ()) -> Any:
        reply, _ = await self.call_nowait(method, body, buffers)
        return reply

    async def call_full(self, method: str, body: Any = None, buffers: Sequence[Any] = ()) -> Any:
        return await self.call_nowait(method, body, buffers)

    # -- what the test sees and does ------------------------------------------------------
    def methods(self) -> list[str]:
        return [s.method for s in self.sent]

    def pending(self, method: str | None = None) -> list[Sent]:
        """Requests (of ``method``) not answered yet, oldest first."""
        return [
            s
            for s in self.sent
            if s.reply is not None and not s.reply.done() and method in (None, s.method)
        ]

    def call_then(
        self, method: str, body: Any, buffers: Sequence[Any], then: Callable[[Any, Any], None]
    ) -> None:
        """As ``rpc.Connection.call_then``: ``then(reply, None)`` or ``then(None, error)``."""

        def done(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                then(None, ConnectionLost("cancelled"))
            elif fut.exception() is not None:
                then(None, fut.exception())
            else:
                then(fut.result(), None)

        self.call_nowait(method, body, buffers).add_done_callback(done)

    def call_then_now(
        self,
        method: str,
        body: Any,
        buffers: Sequence[Any],
        then: Callable[[Any, Any], None],
        written: list[int],
    ) -> int:
        """As ``rpc.Connection.call_then_now`` (from a thread that is not the loop's): the
        request is recorded on the loop soon (run ``settle``); its number, 0 when it cannot be
        written from the thread (``thread_writes`` off, or the connection closed).
        ``interrupt``: raise KeyboardInterrupt "before" the write or "after" it, as a
        Ctrl-C landing there would."""
        if self.interrupt == "before":
            raise KeyboardInterrupt
        if not self.thread_writes or self.is_closed or self.loop is None:
            return 0
        self.written_by_threads += 1
        self.loop.call_soon_threadsafe(self.call_then, method, body, buffers, then)
        written.append(1)
        if self.interrupt == "after":
            raise KeyboardInterrupt
        return self.written_by_threads

    def allow_thread_writes(self) -> None:
        """As ``rpc.Connection.allow_thread_writes`` (nothing to make here)."""

    # The read side lent to caller threads (rpc/thread_reads.py): recorded, never taken
    # (no socket here: every reply reaches the loop).
    reads_paused = False

    def allow_thread_reads(self) -> None:
        """As ``rpc.Connection.allow_thread_reads`` (nothing to make here)."""

    def pause_reads(self) -> None:
        self.reads_paused = True

    def resume_reads(self) -> None:
        self.reads_paused = False

    def take_reads(self) -> bool:
        return False

    def awaits(self, seq: int) -> bool:
        return False

    def reply(self, sent: Sent, body: Any, buffers: Sequence[Any] = ()) -> None:
        assert sent.reply is not None and not sent.reply.done(), sent
        sent.reply.set_result((body, list(buffers)))

    def fail(self, sent: Sent, exc: BaseException) -> None:
        assert sent.reply is not None and not sent.reply.done(), sent
        sent.reply.set_exception(exc)

    def drop(self) -> None:
        """The peer died: pending requests fail with ConnectionLost, ``on_close`` runs."""
        if self.is_closed:
            return
        self.is_closed = True
        err = ConnectionLost(f"connection {self.name} lost")
        for s in self.sent:
            if s.reply is not None and not s.reply.done():
                s.reply.set_exception(err)
        for cb in self.on_close:
            cb(self)

    close = drop


class FakePeers:
    """The processes a CoreWorker connects to (workers, owners, actors), by address.

    ``connect`` opens one FakeConnection per address, as ``CoreWorker.connect_peer``
    does (a dropped one is replaced on the next connect); an address in
    ``unreachable`` refuses with ConnectionError.
    """

    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.unreachable: set[tuple[str, int]] = set()
        self.opened: list[FakeConnection] = []

    async def connect(self, ip: str, port: int) -> FakeConnection:
        key = (ip, port)
        if key in self.unreachable:
            raise ConnectionError(f"cannot connect to {ip}:{port}")
        conn: Any = self.cw._peers.get(key)
        if conn is None or conn.is_closed:
            conn = FakeConnection(f"peer {ip}:{port}")
            self.cw._peers[key] = conn
            self.opened.append(conn)
        return conn

    def at(self, ip: str, port: int) -> FakeConnection:
        """The live connection to ``ip:port`` (it must have been opened)."""
        conn: Any = self.cw._peers[(ip, port)]
        return conn


@dataclass
class OfflineCluster:
    """A CoreWorker that was never started, and the fakes around it."""

    cw: CoreWorker
    raylet: FakeConnection
    gcs: FakeConnection
    peers: FakePeers


def offline_core_worker(worker_id: bytes | None = None) -> OfflineCluster:
    """(in a running loop) A real CoreWorker on this loop and thread, with fake
    connections to its raylet, its GCS and its peers. It is not made this process's
    CoreWorker: the ``offline`` fixture does that (ObjectRefs count with it)."""
    cw = CoreWorker("driver", "127.0.0.1", ("127.0.0.1", 1), ("127.0.0.1", 2), worker_id)
    cw.loop = asyncio.get_running_loop()
    cw._loop_thread_id = threading.get_ident()
    cw.node_id, cw.session_id = NODE_ID, "unit"
    cw.address = ("127.0.0.1", 7000, cw.worker_id)
    raylet, gcs = FakeConnection("raylet"), FakeConnection("gcs")
    cw.raylet = raylet  # type: ignore[assignment]
    peers = FakePeers(cw)
    cw.connect_peer = peers.connect  # type: ignore[method-assign,assignment]

    async def gcs_connection() -> Any:
        return gcs

    cw.gcs_connection = gcs_connection  # type: ignore[method-assign]
    return OfflineCluster(cw, raylet, gcs, peers)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Runs a module's async tests under asyncio and under uvloop: a module imports
    ``event_loop_policy`` to use it (and filters pytest-asyncio's deprecation of
    overriding it, which only a conftest.py could avoid)."""
    if request.param == "uvloop":
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture(name="offline")
async def offline_fixture() -> AsyncIterator[OfflineCluster]:
    """The ``offline`` fixture: an offline CoreWorker on the test's loop, made this
    process's CoreWorker so that ObjectRefs count with it. A test module imports
    ``offline_fixture`` to use it (tests/unit has no conftest: ``from conftest import``
    in tests/e2e must find the e2e one)."""
    cluster = offline_core_worker()
    set_core_worker(cluster.cw)
    try:
        yield cluster
    finally:
        cluster.cw.closing = True
        set_core_worker(None)


async def settle(rounds: int = 5) -> None:
    """Let callbacks and tasks already scheduled on the running loop run (a fixed number
    of loop iterations: nothing here waits for time to pass)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- building tasks and replies ------------------------------------------------------------
def normal_task(
    cw: CoreWorker,
    *,
    max_retries: int = 0,
    retry_exceptions: bool | list[type] = False,
    dep_refs: Sequence[Any] = (),
    nret: int = 1,
    name: str = "f",
) -> TaskEntry:
    """A task of a function with no arguments, owned by ``cw``, as remote_function
    builds it; its return ids are in ``cw.owned``."""
    tid = cw.ids.task_id(cw.job_id)
    spec = {"tid": tid, "fid": b"F" * 16, "nret": nret, "name": name}
    return_ids = tuple(ids.object_id(tid, i + 1) for i in range(nret))
    cw.owned.update(return_ids)
    return TaskEntry(
        spec, return_ids, None, dep_refs, {"CPU": 1.0}, max_retries, retry_exceptions, b"fn", ("k",)
    )


def actor_call(cw: CoreWorker, aid: bytes, *, max_task_retries: int = 0) -> TaskEntry:
    """A call of a method of actor ``aid`` with no arguments, owned by ``cw``."""
    tid = cw.ids.task_id(cw.job_id)
    spec = {"tid": tid, "aid": aid, "m": "f", "name": "A.f", "nret": 1}
    spec["seq"] = next(cw.actors.tickets_of(aid))  # (numbered as .remote() does: submit it next)
    rid = ids.object_id(tid, 1)
    cw.owned.add(rid)
    return TaskEntry(spec, (rid,), None, (), {}, max_task_retries, False, None, ())


def value_reply(*values: Any) -> tuple[dict[str, Any], list[Any]]:
    """A push reply (body, buffers) returning ``values`` inline, as a worker sends it."""
    rets, bufs = [], []
    for v in values:
        so = serialization.serialize(v)
        rets.append([0, len(so.buffers), False])
        bufs.extend([so.data, *so.buffers])
    return {"r": rets}, bufs


def error_reply(exc: BaseException) -> tuple[dict[str, Any], list[Any]]:
    """A push reply saying the task raised ``exc`` (an application error)."""
    so = serialization.serialize(exc, is_error=True)
    return {"r": [[0, len(so.buffers), True]], "x": 1}, [so.data, *so.buffers]


def lease_grant(lease_id: int, port: int) -> dict[str, Any]:
    """A raylet's grant of a worker lease at 127.0.0.1:``port``."""
    return {"lid": lease_id, "wid": bytes([lease_id]) * 16, "addr": ["127.0.0.1", port]}


def shm_reply(node_id: bytes, size: int = 1000) -> tuple[dict[str, Any], list[Any]]:
    """A push reply whose one return value was written to ``node_id``'s shm store."""
    return {"r": [[1, size, node_id]]}, []


async def grant_and_push(offline: OfflineCluster, port: int) -> tuple[FakeConnection, Sent]:
    """Grant the oldest lease request a worker at ``port``; the worker and the push
    the owner sent it."""
    req = offline.raylet.pending("request_lease")[0]
    offline.raylet.reply(req, lease_grant(port - 5000, port))
    await settle()
    worker = offline.peers.at("127.0.0.1", port)
    [push] = worker.pending("push_task")
    return worker, push


async def pushed(offline: OfflineCluster, task: TaskEntry) -> tuple[FakeConnection, Sent]:
    """The worker ``task`` was pushed to and the push: on a lease the owner holds, or
    else on a new one granted now (at the next free port from 5001)."""
    await settle()
    for worker in offline.peers.opened:
        for push in worker.pending("push_task"):
            if push.body["tid"] == task.task_id:
                return worker, push
    return await grant_and_push(offline, 5001 + len(offline.peers.opened))
