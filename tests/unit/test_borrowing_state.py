"""Borrowing (core/borrowing.py): the sender registers the receiver's hold before a
value leaves; the receiver adopts its holds and returns them in one message; an owner
drops the holds of a borrower whose connection closed. Run on an offline CoreWorker:
messages to owners are frames on fake connections."""

from __future__ import annotations

from typing import Any

from fakes import (
    FakeConnection,
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)

from aioray._private.core.borrowing import ADOPT

OWNER = ["10.0.0.9", 4000, b"o" * 16]
X, Y = b"x" * 20, b"y" * 20


def mine(offline: OfflineCluster, oid: bytes) -> list[Any]:
    offline.cw.owned.add(oid)
    return [oid, list(offline.cw.address)]


async def test_lending_own_refs_counts_them_here_and_goes_on_at_once(
    offline: OfflineCluster,
) -> None:
    cw, went = offline.cw, []
    cw.borrowing.lend([mine(offline, X)], lambda: went.append(True))
    assert went == [True]
    assert cw.refs.snapshot()[X] == {"borrowers": 1}
    assert offline.peers.opened == []  # nobody asked


async def test_lending_a_borrowed_ref_waits_for_its_owner(offline: OfflineCluster) -> None:
    cw, went = offline.cw, []
    cw.borrowing.lend([[X, OWNER], [Y, OWNER]], lambda: went.append(True))
    await settle()
    owner = offline.peers.at("10.0.0.9", 4000)
    [req] = owner.pending("borrow")
    assert req.body == [[X, 1], [Y, 1]]  # one request per owner
    assert went == []  # the value must not leave before the owner counted the holds
    owner.reply(req, True)
    await settle()
    assert went == [True]


async def test_lending_goes_on_when_the_owner_is_gone(offline: OfflineCluster) -> None:
    offline.peers.unreachable.add(("10.0.0.9", 4000))
    went: list[bool] = []
    offline.cw.borrowing.lend([[X, OWNER]], lambda: went.append(True))
    await settle()
    assert went == [True]  # the receiver's get will report the dead owner


async def test_a_receiver_adopts_then_returns_in_one_queue(offline: OfflineCluster) -> None:
    cw = offline.cw
    cw.borrowing.receive([[X, OWNER]])
    cw.borrowing.receive([[X, OWNER]])
    assert cw.refs.snapshot()[X] == {"credit": 2}
    await settle()
    owner = offline.peers.at("10.0.0.9", 4000)
    assert [(s.method, s.body) for s in owner.sent] == [
        ("borrow", [[X, 1, ADOPT], [X, 1, ADOPT]])  # batched: one message per iteration
    ]
    cw.borrowing.release(X)  # left scope here: the credit goes back, once
    cw.borrowing.release(X)
    await settle()
    assert owner.sent[-1].body == [[X, -2]] and len(owner.sent) == 2


async def test_an_object_still_in_scope_returns_nothing(offline: OfflineCluster) -> None:
    cw = offline.cw
    cw.borrowing.hold([[X, OWNER]])  # a stored value contains it
    cw.borrowing.release(X)
    await settle()
    assert [s.body for s in offline.peers.at("10.0.0.9", 4000).sent] == [[[X, 1, ADOPT]]]


async def test_an_own_ref_coming_back_nets_out(offline: OfflineCluster) -> None:
    cw = offline.cw
    pair = mine(offline, X)
    cw.borrowing.lend([pair], lambda: None)
    cw.borrowing.receive([pair])
    assert X not in cw.refs.snapshot()
    await settle()
    assert offline.peers.opened == []


async def test_the_owner_frees_when_every_borrower_returned(offline: OfflineCluster) -> None:
    cw, borrower = offline.cw, FakeConnection("borrower")
    mine(offline, X)
    cw.refs.add_local(X)
    cw.borrowing.handle_borrow(borrower, [[X, 2]], None)  # type: ignore[arg-type]
    cw.borrowing.handle_borrow(borrower, [[X, 2, ADOPT]], None)  # type: ignore[arg-type]
    cw.refs.remove_local(X)
    assert cw.refs.in_scope(X)
    cw.borrowing.handle_borrow(borrower, [[X, -1]], None)  # type: ignore[arg-type]
    assert cw.refs.snapshot()[X] == {"borrowers": 1}
    cw.borrowing.handle_borrow(borrower, [[X, -1]], None)  # type: ignore[arg-type]
    assert not cw.refs.in_scope(X)
    borrower.drop()  # nothing adopted is left: nothing subtracted twice
    assert X not in cw.refs.snapshot()


async def test_a_dead_borrowers_adopted_holds_go_with_it(offline: OfflineCluster) -> None:
    cw = offline.cw
    alive, dead = FakeConnection("alive"), FakeConnection("dead")
    mine(offline, X)
    cw.borrowing.handle_borrow(alive, [[X, 2]], None)  # type: ignore[arg-type]
    cw.borrowing.handle_borrow(alive, [[X, 1, ADOPT]], None)  # type: ignore[arg-type]
    cw.borrowing.handle_borrow(dead, [[X, 1, ADOPT]], None)  # type: ignore[arg-type]
    dead.drop()
    assert cw.refs.snapshot()[X] == {"borrowers": 1}
    alive.drop()
    assert not cw.refs.in_scope(X)


async def test_holds_on_objects_not_owned_here_are_ignored(offline: OfflineCluster) -> None:
    cw = offline.cw
    cw.borrowing.handle_borrow(FakeConnection(), [[X, 3]], None)  # type: ignore[arg-type]
    assert cw.refs.snapshot() == {}
