"""The segment pool's policy (daemons/raylet/segment_pool.py), with no files: what it
grows, when a freed segment comes back, and how it gives way to objects."""

from __future__ import annotations

from aioray.daemons.raylet.segment_pool import CLAIMED, FREE, HELD, REUSING, SegmentPool

MB = 1 << 20
C = 10 * MB  # a size class


def pool(capacity: int = 100 * MB, **kw: float) -> SegmentPool:
    return SegmentPool(capacity, spare=2, max_fraction=0.5, idle_s=60.0, min_class=MB, **kw)  # type: ignore[arg-type]


def grow_all(p: SegmentPool, used: int = 0, now: float = 0.0) -> list[int]:
    """Plan and complete growths until the plan asks for none; the new segments' inodes."""
    inos = []
    while grow := p.plan(used, False, now).grow:
        (cls,) = grow  # one at a time
        held = p.placeholder(cls, -(len(inos) + 1))
        ino = 1000 + len(inos)
        p.grown(ino, cls, held)
        inos.append(ino)
    return inos


def test_nothing_grows_before_a_writer_wants_a_class() -> None:
    p = pool()
    assert p.plan(0, False, 0.0).grow == []
    p.wanted(C, 0.0)
    assert p.plan(0, False, 0.0).grow == [C]  # a spare segment of the class in demand
    assert len(grow_all(p)) == 2  # one at a time, up to spare


def test_growth_stays_within_the_room_objects_leave_and_max_fraction() -> None:
    p = pool()
    p.wanted(C, 0.0)
    assert len(grow_all(p, used=85 * MB)) == 1  # 15 MB of room: one segment
    p = pool()
    p.wanted(30 * MB, 0.0)
    assert len(grow_all(p)) == 1  # 50% of 100 MB holds one, not two


def test_no_growth_while_the_store_is_busy() -> None:
    p = pool()
    p.wanted(C, 0.0)
    assert p.plan(0, True, 0.0).grow == []  # objects being written, or waiting for room
    assert p.plan(0, False, 0.0).grow == [C]


def test_the_most_recently_wanted_class_grows_first() -> None:
    p = pool()
    p.wanted(C, 0.0)
    p.wanted(2 * C, 1.0)
    assert p.plan(0, False, 1.0).grow == [2 * C]


def test_growth_counts_placeholders_and_stops_at_spare() -> None:
    p = pool()
    p.wanted(C, 0.0)
    (cls,) = p.plan(0, False, 0.0).grow
    held = p.placeholder(cls, -1)
    assert p.nbytes == C and p.plan(0, False, 0.0).grow == []  # under way: counted
    p.grow_failed(held)
    assert p.nbytes == 0 and p.plan(0, False, 0.0).grow == [C]  # it failed: again
    p.grown(11, C, p.placeholder(C, -2))
    p.grown(12, C, p.placeholder(C, -3))
    assert p.nbytes == 2 * C and p.plan(0, False, 0.0).grow == []  # spare reached


def test_a_claim_takes_the_segment_and_its_bytes_out_of_the_pool() -> None:
    p = pool()
    p.wanted(C, 0.0)
    ino, _ = grow_all(p)
    assert p.claimed(ino) == C and ino not in p.segments and p.nbytes == C
    assert p.claimed(ino) == 0  # unknown now: a fresh file
    assert p.claimed(424242) == 0


def test_a_freed_segment_is_held_then_reused_only_when_the_shell_says_so() -> None:
    p = pool()
    p.wanted(C, 0.0)
    assert p.keep(7, C, C - MB, used=0)
    assert p.segments[7].state == HELD and p.nbytes == C - MB  # its object's bytes
    act = p.plan(0, False, 0.0)
    assert [s.ino for s in act.reuse] == [7] and p.segments[7].state == REUSING
    p.reused(p.segments[7], False, now=0.0)  # a reader still maps it
    assert p.segments[7].state == HELD
    assert p.plan(0, False, 0.01).reuse == []  # backing off
    assert [s.ino for s in p.plan(0, False, 0.06).reuse] == [7]
    p.reused(p.segments[7], True, now=0.06)
    assert p.segments[7].state == FREE and p.nbytes == C  # grown back to its class


def test_the_backoff_doubles_and_an_exiting_process_resets_it() -> None:
    p = pool()
    p.wanted(C, 0.0)
    p.keep(7, C, C, used=0)
    now = 0.0
    for _ in range(4):
        (s,) = p.plan(0, False, now).reuse
        p.reused(s, False, now)
        now = s.retry_at
    assert s.backoff > 0.4
    p.retry_held(now=now - 0.3)
    assert [x.ino for x in p.plan(0, False, now - 0.3).reuse] == [7]


def test_a_class_short_of_segments_retries_its_held_ones_at_once() -> None:
    p = pool()
    p.wanted(C, 0.0)
    p.keep(7, C, C, used=0)
    (s,) = p.plan(0, False, 0.0).reuse
    p.reused(s, False, 0.0)
    p.wanted(C, 0.01)
    assert [x.ino for x in p.plan(0, False, 0.01).reuse] == [7]


def test_keep_refuses_classes_nobody_wants_and_beyond_the_limits() -> None:
    p = pool()
    assert not p.keep(7, C, C, used=0)  # no writer asked for this class
    p.wanted(C, 0.0)
    assert not p.keep(0, C, C, used=0)  # inode unknown
    assert not p.keep(7, C, C, used=95 * MB)  # no room beside the objects
    for ino in (1, 2, 3, 4):
        assert p.keep(ino, C, C, used=0)
    assert not p.keep(5, C, C, used=0)  # spare + 2 of a class at most


def test_the_pool_gives_way_to_objects_free_segments_first() -> None:
    p = pool()
    p.wanted(C, 0.0)
    free = grow_all(p)
    p.keep(7, C, C, used=0)
    assert p.nbytes == 3 * C
    act = p.plan(85 * MB, False, 0.0)  # 85 + 30 > 100: 15 MB must go
    assert sorted(s.ino for s in act.drop) == sorted(free)
    for s in act.drop:
        p.dropped(s)
    (held,) = act.reuse
    p.reused(held, False, 0.0)  # a reader maps it
    assert p.nbytes == C and 85 * MB + p.nbytes <= 100 * MB
    act = p.plan(95 * MB, False, 0.0)
    assert [s.ino for s in act.drop] == [7]  # then held ones


def test_a_dropped_segment_a_writer_claimed_first_is_counted_until_its_create() -> None:
    p = pool()
    p.wanted(C, 0.0)
    ino, _ = grow_all(p)
    p.vanished(p.segments[ino])
    assert p.segments[ino].state == CLAIMED and p.nbytes == 2 * C
    assert all(s.ino != ino for s in p.plan(95 * MB, False, 0.0).drop)  # not droppable
    assert p.claimed(ino) == C and p.nbytes == C


def test_an_idle_class_is_dropped() -> None:
    p = pool()
    p.wanted(C, 0.0)
    inos = grow_all(p)
    p.keep(7, C, C, used=0)
    act = p.plan(0, False, 30.0)
    assert act.drop == []
    p.reused(act.reuse[0], False, 30.0)
    act = p.plan(0, False, 61.0)
    assert sorted(s.ino for s in act.drop) == sorted([*inos, 7])
    assert act.grow == []


def test_next_retry_names_the_earliest_held_segment() -> None:
    p = pool()
    assert p.next_retry() is None
    p.wanted(C, 0.0)
    p.keep(7, C, C, used=0)
    assert p.next_retry() == 0.0


def test_take_prefers_a_segment_mapped_already() -> None:
    p = pool()
    p.wanted(C, 0.0)
    first, second = grow_all(p)
    taken = p.take(C, warm=[second])
    assert taken is not None and taken.ino == second
    taken = p.take(C)
    assert taken is not None and taken.ino in (first, second)
    assert p.take(2 * C) is None
