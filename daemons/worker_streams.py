"""A worker's side of streaming generators (``num_returns="streaming"``; the protocol:
aioray/_private/owner/streaming.py): each item goes to the caller as it is yielded, and
a generator with backpressure waits for the caller's acknowledgements."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioray._private.core.borrowing import pairs_of
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import PushReply, Return, StreamAck, TaskSpec

if TYPE_CHECKING:
    from aioray.daemons.actor_host import Job

    from aioray._private.owner.core_worker import CoreWorker

# pack_value(spec, index, value, buffers, lend) -> the item's return descriptor
PackValue = Callable[[TaskSpec, int, Any, list[Buffer], list[ObjectRef]], Return]


class StreamSender:
    """Sends a streaming task's items and holds it back while its caller lags."""

    def __init__(self, cw: CoreWorker, pack_value: PackValue) -> None:
        self.cw = cw
        self.pack_value = pack_value
        self.acks: dict[bytes, int] = {}  # streaming task -> items its caller took
        self.cond = threading.Condition()

    def run(self, spec: TaskSpec, job: Job, gen: Any) -> tuple[PushReply, list[Buffer]]:
        """(execution thread) Send every item ``gen`` yields; the reply that ends the stream."""
        if not hasattr(gen, "__iter__") or isinstance(gen, (str, bytes, dict)):
            raise TypeError(
                f"{spec['name']} has num_returns='streaming' but returned "
                f"{type(gen).__name__}, not a generator"
            )
        task_id, limit, count = spec["tid"], spec.get("bp") or 0, 0
        try:
            for item in gen:
                self.send_item(job, count, item)
                count += 1
                if limit > 0:  # Ray: pause while produced - consumed >= limit
                    self.wait_for_consumer(task_id, count - limit + 1)
        finally:
            with self.cond:
                self.acks.pop(task_id, None)
        return {"r": [], "n": count}, []

    def send_item(self, job: Job, index: int, value: Any) -> None:
        """(any thread) Serialize one streamed item and send it to the caller."""
        bufs: list[Buffer] = []
        lend: list[ObjectRef] = []
        desc = self.pack_value(job.spec, index, value, bufs, lend)
        self.cw.post(self._notify_item, job, [job.spec["tid"], index, *desc], bufs, lend)

    def _notify_item(
        self, job: Job, body: list[Any], bufs: list[Buffer], lend: list[ObjectRef]
    ) -> None:
        def send() -> None:
            if job.conn is not None and not job.conn.is_closed:
                job.conn.notify("stream_item", body, bufs)

        if lend:
            self.cw.borrowing.lend(pairs_of(lend), send)
        else:
            send()

    def wait_for_consumer(self, task_id: bytes, at_least: int) -> None:
        """(a task's thread) Return once the caller has taken ``at_least`` items."""
        with self.cond:
            while self.acks.get(task_id, 0) < at_least:
                # A timeout, so a cancel (an exception raised in this thread) gets through.
                self.cond.wait(0.1)

    def handle_stream_ack(self, conn: rpc.Connection, body: StreamAck, _: list[Buffer]) -> None:
        """``stream_ack`` [task id, items consumed] (notice, from the owner): a streaming task
        blocked by backpressure may yield again."""
        task_id, consumed = body
        with self.cond:
            self.acks[task_id] = max(consumed, self.acks.get(task_id, 0))
            self.cond.notify_all()
