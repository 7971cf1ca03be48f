"""A raylet forwarding an owner's free to the node holding the primary copy: when that
node cannot be told (it died and our view of it lags), the copies pulled from it are
freed everywhere instead of kept forever."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aioray.daemons.raylet.object_transfer import ObjectTransfer
from fakes import FakeConnection

HERE, VICTIM, OTHER = b"h" * 16, b"v" * 16, b"o" * 16
OIDS = [b"\x01" * 20, b"\x02" * 20]


class Store:
    def __init__(self) -> None:
        self.freed_copies: list[tuple[bytes, list[bytes]]] = []

    def free_copies(self, source: bytes, oids: list[bytes]) -> None:
        self.freed_copies.append((source, oids))


def transfer(peers: dict[bytes, Any]) -> tuple[ObjectTransfer, Store]:
    """An ObjectTransfer whose view says every node is alive; ``connect`` hands out
    ``peers`` (an exception stands for a node that cannot be reached)."""
    store = Store()
    view = {n: SimpleNamespace(node_id=n, alive=True) for n in (HERE, VICTIM, OTHER)}
    raylet = SimpleNamespace(
        store=store, node_id=HERE, spillback=SimpleNamespace(view=SimpleNamespace(nodes=view))
    )
    xfer = ObjectTransfer(raylet)

    async def connect(node: bytes) -> Any:
        peer = peers[node]
        if isinstance(peer, BaseException):
            raise peer
        return peer

    xfer.connect = connect
    return xfer, store


async def settle(xfer: ObjectTransfer) -> None:
    """Until every send (and the sends a failed one started) is done."""
    while xfer._sending:
        await asyncio.wait_for(asyncio.gather(*xfer._sending), 5)


async def test_a_free_the_primarys_node_answers_is_not_broadcast() -> None:
    victim = FakeConnection("victim", answer=lambda method, body: None)
    other = FakeConnection("other")
    xfer, store = transfer({VICTIM: victim, OTHER: other})
    xfer.free_at([(VICTIM, OIDS)])
    await settle(xfer)
    assert [(s.method, s.body) for s in victim.sent] == [("free_objects", OIDS)]
    assert other.sent == [] and store.freed_copies == []


async def test_a_free_for_a_node_that_cannot_be_reached_frees_its_copies_everywhere() -> None:
    other = FakeConnection("other")
    xfer, store = transfer({VICTIM: ConnectionRefusedError("refused"), OTHER: other})
    xfer.free_at([(VICTIM, OIDS)])
    await settle(xfer)
    assert store.freed_copies == [(VICTIM, OIDS)]
    assert [(s.method, s.body) for s in other.sent] == [("free_copies", [VICTIM, OIDS])]


async def test_a_free_whose_connection_drops_before_the_answer_frees_its_copies() -> None:
    victim = FakeConnection("victim")  # never answers: the test drops it
    other = FakeConnection("other")
    xfer, store = transfer({VICTIM: victim, OTHER: other})
    xfer.free_at([(VICTIM, OIDS)])
    for _ in range(3):  # the call is sent within a few turns of the loop
        await asyncio.sleep(0)
    assert [s.method for s in victim.sent] == ["free_objects"]
    victim.drop()  # the pending call fails with ConnectionLost
    await settle(xfer)
    assert store.freed_copies == [(VICTIM, OIDS)]
    assert [(s.method, s.body) for s in other.sent] == [("free_copies", [VICTIM, OIDS])]
