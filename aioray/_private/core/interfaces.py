"""What the core floor's services need of their process's CoreWorker, named as Protocols.

``Borrowing`` and ``Lineage`` keep their state here but send and resubmit through the
owner (the CoreWorker, floor 4): each names just the members it uses, so a test can
hand it any object that has them, and the CoreWorker satisfies them structurally.
Members a service assigns are attributes; the others it only reads or calls.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aioray._private.core.memory_store import MemoryStore
    from aioray._private.core.reference_counter import ReferenceCounter
    from aioray._private.rpc import rpc
    from aioray._private.wire.task_spec import TaskEntry


class BorrowingHost(Protocol):
    """What ``Borrowing`` uses: the counts, the loop, and connections to owners."""

    worker_id: bytes
    refs: ReferenceCounter
    owned: set[bytes]
    loop: asyncio.AbstractEventLoop
    closing: bool

    async def connect_peer(self, ip: str, port: int) -> rpc.Connection: ...

    def peer(self, ip: str, port: int) -> rpc.Connection | None: ...


class Resubmits(Protocol):
    """The task submitter, as lineage uses it: run a finished task again."""

    def submit(self, task: TaskEntry) -> None: ...


class LineageHost(Protocol):
    """What ``Lineage`` uses: the counts and objects, this node's store, the submitter."""

    refs: ReferenceCounter
    owned: set[bytes]
    memory_store: MemoryStore
    loop: asyncio.AbstractEventLoop
    node_id: bytes
    session_id: str

    @property
    def submitter(self) -> Resubmits: ...

    def free_shm(self, oid: bytes, node_id: bytes | None = None) -> None: ...
