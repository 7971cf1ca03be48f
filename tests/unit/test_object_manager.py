"""Unit tests of the node object store's accounting and eviction/spill policy (no I/O)."""

from __future__ import annotations

from aioray.daemons.raylet.object_manager import (
    CREATE,
    DISK_FULL,
    IN_SHM,
    RESTORE,
    RESTORING,
    SECONDARY,
    SPILLED,
    SPILLING,
    TOO_BIG,
    ObjectManager,
    Request,
)

MB = 1 << 20


def oid(i: int) -> bytes:
    return i.to_bytes(4, "little") * 5


def create(m: ObjectManager, i: int, size: int) -> None:
    """Ask for room, get it at once, write, seal."""
    m.request(Request(oid(i), size, CREATE))
    act = m.schedule()
    assert [r.oid for r in act.granted] == [oid(i)]
    m.seal(oid(i), size)


def cache(m: ObjectManager, i: int, size: int) -> None:
    m.request(Request(oid(i), size, SECONDARY))
    assert m.schedule().granted
    m.add_secondary(oid(i), size)


def test_grants_what_fits_and_frees_give_room_back():
    m = ObjectManager(100 * MB)
    create(m, 1, 60 * MB)
    create(m, 2, 40 * MB)
    assert m.used == 100 * MB and m.available == 0
    m.free(oid(1))
    assert m.used == 40 * MB
    create(m, 3, 60 * MB)
    assert m.used == 100 * MB


def test_evicts_unpinned_secondary_copies_before_spilling_primaries():
    m = ObjectManager(100 * MB)
    create(m, 1, 30 * MB)  # primary, oldest
    cache(m, 2, 30 * MB)  # secondary, pinned by a reader
    cache(m, 3, 30 * MB)  # secondary
    m.pin(oid(2))
    m.request(Request(oid(4), 30 * MB, CREATE))
    act = m.schedule()
    assert [o for o, _ in act.evict] == [oid(3)]
    assert act.spill == []
    assert [r.oid for r in act.granted] == [oid(4)]
    assert oid(3) not in m.entries
    assert m.used == 90 * MB


def test_spills_oldest_primaries_first_and_only_what_is_needed():
    m = ObjectManager(100 * MB)
    for i in range(1, 5):
        create(m, i, 25 * MB)
    m.request(Request(oid(5), 40 * MB, CREATE))
    act = m.schedule()
    # 40 MB short: the two oldest 25 MB objects cover it; the newer two stay.
    assert [o for o, _ in act.spill] == [oid(1), oid(2)]
    assert act.granted == []
    assert m.entries[oid(1)].state == SPILLING and m.entries[oid(3)].state == IN_SHM
    # Asking again while the spills are in flight spills nothing more.
    assert m.schedule().spill == []
    m.spill_done(oid(1), "/spill/1")
    m.spill_done(oid(2), "/spill/2")
    act = m.schedule()
    assert [r.oid for r in act.granted] == [oid(5)]
    assert m.used == 90 * MB and m.spilled_bytes == 50 * MB
    assert m.entries[oid(1)].state == SPILLED


def test_restored_object_counts_as_newest():
    m = ObjectManager(100 * MB)
    create(m, 1, 50 * MB)
    create(m, 2, 50 * MB)
    m.request(Request(oid(3), 50 * MB, CREATE))
    (spilled,) = [o for o, _ in m.schedule().spill]
    assert spilled == oid(1)
    m.spill_done(oid(1), "/spill/1")
    m.schedule()
    m.seal(oid(3), 50 * MB)
    # Restoring 1 needs room: 2 (now the oldest in memory) is spilled, not 3.
    m.request(Request(oid(1), 50 * MB, RESTORE))
    assert [o for o, _ in m.schedule().spill] == [oid(2)]
    m.spill_done(oid(2), "/spill/2")
    act = m.schedule()
    assert [r.oid for r in act.granted] == [oid(1)]
    assert m.entries[oid(1)].state == RESTORING
    assert m.restore_done(oid(1))
    assert m.entries[oid(1)].state == IN_SHM and m.entries[oid(1)].spill_path == "/spill/1"
    assert list(m.entries)[-1] == oid(1)
    assert m.spilled_bytes == 50 * MB and m.used == 100 * MB
    # Its spill file is still on disk: spilling it again only drops the segment.
    m.request(Request(oid(4), 100 * MB, CREATE))
    act = m.schedule()
    assert [o for o, _ in act.spill] == [oid(3)]
    assert [o for o, _ in act.evict] == [oid(1)]
    assert m.entries[oid(1)].state == SPILLED


def test_object_larger_than_capacity_fails_at_once_and_blocks_nobody():
    m = ObjectManager(100 * MB)
    create(m, 1, 50 * MB)
    m.request(Request(oid(2), 101 * MB, CREATE))
    m.request(Request(oid(3), 10 * MB, CREATE))
    act = m.schedule()
    assert [(r.oid, why) for r, why in act.failed] == [(oid(2), TOO_BIG)]
    assert [r.oid for r in act.granted] == [oid(3)]
    assert m.entries[oid(1)].state == IN_SHM  # nothing else was touched


def test_full_disk_fails_the_request_instead_of_spilling():
    m = ObjectManager(100 * MB)
    create(m, 1, 80 * MB)
    m.request(Request(oid(2), 50 * MB, CREATE))
    asked = []
    act = m.schedule(lambda: asked.append(1) or False)
    assert asked == [1]
    assert [(r.oid, why) for r, why in act.failed] == [(oid(2), DISK_FULL)]
    assert act.spill == [] and m.entries[oid(1)].state == IN_SHM


def test_disk_is_not_checked_when_nothing_must_be_spilled():
    m = ObjectManager(100 * MB)
    m.request(Request(oid(1), 50 * MB, CREATE))
    assert m.schedule(lambda: 1 / 0).granted  # type: ignore[arg-type,return-value]


def test_without_spilling_a_full_store_is_stuck_until_a_free():
    m = ObjectManager(100 * MB, spilling_enabled=False)
    create(m, 1, 80 * MB)
    m.request(Request(oid(2), 50 * MB, CREATE))
    act = m.schedule()
    assert act.stuck and act.spill == [] and act.granted == []
    m.free(oid(1))
    assert [r.oid for r in m.schedule().granted] == [oid(2)]


def test_free_while_spilling_and_while_restoring_keeps_the_books_straight():
    m = ObjectManager(100 * MB)
    create(m, 1, 60 * MB)
    m.request(Request(oid(2), 60 * MB, CREATE))
    assert [o for o, _ in m.schedule().spill] == [oid(1)]
    m.free(oid(1))
    assert not m.spill_done(oid(1), "/spill/1")  # the shell deletes the file
    assert m.used == 0 and m.spilling == 0
    assert [r.oid for r in m.schedule().granted] == [oid(2)]
    m.seal(oid(2), 60 * MB)
    m.request(Request(oid(3), 60 * MB, CREATE))
    m.schedule()
    m.spill_done(oid(2), "/spill/2")
    m.schedule()
    m.seal(oid(3), 60 * MB)
    m.free(oid(3))
    m.request(Request(oid(2), 60 * MB, RESTORE))
    assert m.schedule().granted
    m.free(oid(2))
    assert not m.restore_done(oid(2))
    assert m.used == 0 and m.spilled_bytes == 0 and m.in_flight == 0 and not m.entries


def test_seal_without_reservation_is_counted_and_room_made_after():
    m = ObjectManager(100 * MB)
    create(m, 1, 80 * MB)
    m.seal(oid(2), 50 * MB)  # written by a creator that could not wait for room
    assert m.used == 130 * MB
    act = m.schedule()
    assert [o for o, _ in act.spill] == [oid(1)]
    m.spill_done(oid(1), "/spill/1")
    assert m.used == 50 * MB


def test_freeing_an_object_drops_its_queued_requests():
    m = ObjectManager(100 * MB)
    create(m, 1, 80 * MB)
    m.request(Request(oid(2), 50 * MB, CREATE))
    m.request(Request(oid(3), 10 * MB, CREATE))
    m.schedule()  # 2 waits for the spill of 1
    assert [r.oid for r in m.drop_requests(oid(2))] == [oid(2)]
    assert [r.oid for r in m.queue] == [oid(3)]
    assert m.drop_requests(oid(2)) == []
