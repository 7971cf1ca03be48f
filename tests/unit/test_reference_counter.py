"""ReferenceCounter: an object leaves scope here exactly when its last hold goes.

Pure state: events in (holds added and removed), decisions out (``on_out_of_scope``
called once per object that nothing holds any more)."""

from __future__ import annotations

import threading

import pytest

from aioray._private.core.reference_counter import ReferenceCounter

A, B = b"a" * 20, b"b" * 20


@pytest.fixture
def freed() -> list[bytes]:
    return []


@pytest.fixture
def rc(freed: list[bytes]) -> ReferenceCounter:
    return ReferenceCounter(freed.append)


def test_the_last_local_ref_frees_once(rc: ReferenceCounter, freed: list[bytes]) -> None:
    rc.add_local(A)
    rc.add_local(A)
    rc.remove_local(A)
    assert freed == [] and rc.in_scope(A) and rc.local_count(A) == 1
    rc.remove_local(A)
    assert freed == [A] and not rc.in_scope(A) and rc.num_tracked() == 0


@pytest.mark.parametrize("hold", ["submitted", "contained", "borrowers", "pinned"])
def test_any_other_hold_outlives_the_local_refs(
    rc: ReferenceCounter, freed: list[bytes], hold: str
) -> None:
    rc.add_local(A)
    if hold == "borrowers":
        rc.add_borrowers(A, 1)
    elif hold == "pinned":
        rc.pin([A])
    else:
        getattr(rc, f"add_{hold}")([A])
    rc.remove_local(A)
    assert freed == [] and rc.in_scope(A)
    assert rc.snapshot()[A] == {hold: 1}
    if hold == "pinned":
        return  # held for the process's lifetime
    if hold == "borrowers":
        rc.add_borrowers(A, -1)
    else:
        getattr(rc, f"remove_{hold}")([A])
    assert freed == [A] and rc.snapshot() == {}


def test_holds_released_in_any_order_free_after_the_last(
    rc: ReferenceCounter, freed: list[bytes]
) -> None:
    rc.add_submitted([A, B])
    rc.add_contained([A])
    rc.add_local(B)
    rc.remove_submitted([A, B])
    assert freed == []
    rc.remove_local(B)
    assert freed == [B]
    rc.remove_contained([A])
    assert freed == [B, A]


def test_a_borrower_return_overtaking_its_registration_keeps_the_object(
    rc: ReferenceCounter, freed: list[bytes]
) -> None:
    # -1 arrives before +1 (another connection): the count dips below zero, still held.
    rc.add_local(A)
    rc.add_borrowers(A, -1)
    rc.remove_local(A)
    assert freed == [] and rc.snapshot()[A] == {"borrowers": -1}
    rc.add_borrowers(A, 1)
    assert freed == [A]


def test_credit_is_taken_only_once_the_object_is_out_of_scope(rc: ReferenceCounter) -> None:
    owner = ("10.0.0.1", 5, b"o" * 16)
    rc.add_local(A)
    rc.add_credit(A, owner)
    rc.add_credit(A, owner, 2)
    assert rc.take_credit(A) == (None, 0)  # still referenced here: nothing to return
    rc.remove_local(A)
    assert rc.take_credit(A) == (owner, 3)
    assert rc.take_credit(A) == (None, 0)  # returned once


def test_counts_from_many_threads_add_up(rc: ReferenceCounter, freed: list[bytes]) -> None:
    rc.add_local(A)

    def churn() -> None:
        for _ in range(2000):
            rc.add_local(A)
            rc.remove_local(A)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rc.local_count(A) == 1 and freed == []
    rc.remove_local(A)
    assert freed == [A]
