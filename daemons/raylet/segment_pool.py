"""The bookkeeping of a node's pool of pre-faulted segments: which to grow, reuse or drop.

Pure state, no I/O (the file steps are ``aioray/_private/wire/shm_pool.py``; the raylet's
``PoolService`` performs what this decides). The pool holds the segments that do not
hold a live object:

- GROWING: being created and pre-faulted off the event loop.
- FREE: in its class's free list; a writer may claim it at any moment, without asking.
- HELD: its object was freed and its file parked; it goes back to the free list once no
  reader maps it (``shm_pool.reuse`` succeeds), retried with a backoff, at once when a
  process of the node exits (its mappings go with it) or its class runs short.
- REUSING: a reuse attempt is running.
- CLAIMED: dropping it found it claimed by a writer whose ``create_object`` has not
  arrived yet.

Every byte of these counts in the store's usage with the objects' bytes, and the pool
gives way to objects: when both exceed the capacity, free and held segments are dropped
(``reclaim``) before any object is evicted or spilled. A held segment dropped is
unlinked; its memory goes when its last reader unmaps it, as a freed object's did
before the pool existed. Growth: a class that writers asked for in the last
``idle_s`` keeps ``spare`` free segments, within ``max_fraction`` of the capacity and
the room the objects leave, one segment at a time and only while no object is being
written (``plan``'s ``busy``); a class nobody asked for in ``idle_s`` is dropped.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

GROWING = "GROWING"
FREE = "FREE"
HELD = "HELD"
REUSING = "REUSING"
CLAIMED = "CLAIMED"

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0


@dataclass(slots=True)
class Segment:
    ino: int
    cls: int
    state: str
    nbytes: int  # memory it holds now: its class, or a held object's size
    retry_at: float = 0.0
    backoff: float = RETRY_FIRST_S


@dataclass
class PoolActions:
    """What the shell must do after ``plan``."""

    grow: list[int] = field(default_factory=list)  # classes: create one segment each
    reuse: list[Segment] = field(default_factory=list)  # held segments to try
    drop: list[Segment] = field(default_factory=list)  # free or held: unlink


class SegmentPool:
    """The pool's state and policy for one node's store."""

    def __init__(
        self,
        capacity: int,
        spare: int = 2,
        max_fraction: float = 0.5,
        idle_s: float = 60.0,
        min_class: int = 1,
    ) -> None:
        self.capacity = capacity
        self.spare = spare
        self.max_fraction = max_fraction
        self.idle_s = idle_s
        self.min_class = min_class
        self.segments: dict[int, Segment] = {}
        self.nbytes = 0
        self.demand: dict[int, float] = {}  # class -> last time a writer wanted one
        self.num_grown = 0
        self.num_reused = 0
        self.num_claimed = 0
        self.num_dropped = 0
        self.num_busy = 0  # reuse attempts that found a reader still mapping the segment

    def __repr__(self) -> str:
        return (
            f"<SegmentPool bytes={self.nbytes} segments={len(self.segments)} "
            f"free={self.count(FREE)} held={self.count(HELD)}>"
        )

    def count(self, state: str, cls: int = 0) -> int:
        return sum(1 for s in self.segments.values() if s.state == state and cls in (0, s.cls))

    def limit(self, used: int) -> int:
        """The most the pool may hold beside ``used`` bytes of objects."""
        return max(0, min(self.capacity - used, int(self.capacity * self.max_fraction)))

    # -- events ------------------------------------------------------------------------
    def wanted(self, cls: int, now: float) -> None:
        """A writer asked for a segment of class ``cls`` (it found one or not)."""
        if cls >= self.min_class:
            self.demand[cls] = now
            for s in self.segments.values():
                if s.state == HELD and s.cls == cls:
                    s.retry_at = min(s.retry_at, now)

    def claimed(self, ino: int) -> int:
        """A writer took segment ``ino`` from the free list: it holds an object now.
        Its class, or 0 if the pool did not know it (then it is a fresh file)."""
        s = self.segments.get(ino)
        if s is None or s.state not in (FREE, CLAIMED):
            return 0
        self._remove(s)
        self.num_claimed += 1
        return s.cls

    def take(self, cls: int, warm: Container[int] = ()) -> Segment | None:
        """A free segment of class ``cls`` for the raylet's own use (a pulled copy),
        one of ``warm`` (mapped already) if it can: the shell renames it out of the free
        list, then calls ``claimed``."""
        found = None
        for s in self.segments.values():
            if s.state == FREE and s.cls == cls:
                if s.ino in warm:
                    return s
                found = found or s
        return found

    def keep(self, ino: int, cls: int, size: int, used: int) -> bool:
        """An object of ``size`` bytes in segment ``ino`` was freed: hold the segment for
        reuse (True; the shell parks its file) or let it go (False; unlinked)."""
        if cls not in self.demand or ino <= 0 or ino in self.segments:
            return False
        mine = sum(1 for s in self.segments.values() if s.cls == cls)
        if mine >= self.spare + 2 or self.nbytes + cls > self.limit(used):
            return False
        self._add(Segment(ino, cls, HELD, size))
        return True

    def grown(self, ino: int, cls: int, placeholder: Segment) -> None:
        """A segment of class ``cls`` was created (``placeholder`` counted it meanwhile)."""
        self._remove(placeholder)
        self._add(Segment(ino, cls, FREE, cls))
        self.num_grown += 1

    def grow_failed(self, placeholder: Segment) -> None:
        self._remove(placeholder)

    def reused(self, s: Segment, ok: bool, now: float) -> None:
        """A reuse attempt ended: back in the free list, or still mapped by a reader."""
        if self.segments.get(s.ino) is not s:
            return
        if ok:
            self.nbytes += s.cls - s.nbytes
            s.state, s.nbytes, s.backoff = FREE, s.cls, RETRY_FIRST_S
            self.num_reused += 1
        else:
            s.state = HELD
            self.num_busy += 1
            s.retry_at = now + s.backoff
            s.backoff = min(RETRY_MAX_S, s.backoff * 2)

    def vanished(self, s: Segment) -> None:
        """Dropping free segment ``s`` found it gone: a writer claimed it just before."""
        if self.segments.get(s.ino) is s:
            s.state = CLAIMED

    def retry_held(self, now: float) -> None:
        """A process exited: its mappings are gone, so held segments may be free now."""
        for s in self.segments.values():
            if s.state == HELD:
                s.retry_at, s.backoff = now, RETRY_FIRST_S

    def dropped(self, s: Segment) -> None:
        """The shell took ``s`` out of the pool's files (it unlinks it next)."""
        if self.segments.get(s.ino) is s:
            self._remove(s)
            self.num_dropped += 1

    # -- decisions ---------------------------------------------------------------------
    def plan(self, used: int, busy: bool, now: float) -> PoolActions:
        """What to do now, with ``used`` bytes of objects in the store; ``busy``: objects
        are being written or restored, or requests wait for room (the pool grows only
        when the store is quiet: pre-faulting a segment beside a write into a fresh
        file slows both, the kernel allocating pages for each)."""
        act = PoolActions()
        over = used + self.nbytes - self.capacity
        if over > 0:
            act.drop += self._reclaim(over)
        for cls, last in list(self.demand.items()):
            if now - last > self.idle_s:
                del self.demand[cls]
        chosen = {id(s) for s in act.drop}
        act.drop += [
            s
            for s in self.segments.values()
            if s.cls not in self.demand and s.state in (FREE, HELD) and id(s) not in chosen
        ]
        chosen = {id(s) for s in act.drop}
        for s in self.segments.values():
            if s.state == HELD and s.retry_at <= now and id(s) not in chosen:
                s.state = REUSING
                act.reuse.append(s)
        if not busy:
            act.grow = self._growth(used)
        return act

    def next_retry(self) -> float | None:
        """When the next held segment is due (None: none held)."""
        due = [s.retry_at for s in self.segments.values() if s.state == HELD]
        return min(due) if due else None

    def _reclaim(self, over: int) -> list[Segment]:
        """Segments to drop, at least ``over`` bytes: free ones first, largest first."""
        order = sorted(
            (s for s in self.segments.values() if s.state in (FREE, HELD)),
            key=lambda s: (s.state != FREE, -s.nbytes),
        )
        chosen = []
        for s in order:
            if over <= 0:
                break
            chosen.append(s)
            over -= s.nbytes
        return chosen

    def _growth(self, used: int) -> list[int]:
        """One segment to grow, of the most recently wanted class short of spares (one at
        a time: each takes a core's worth of page zeroing)."""
        if any(s.state == GROWING for s in self.segments.values()):
            return []
        room = self.limit(used) - self.nbytes
        for cls in sorted(self.demand, key=self.demand.__getitem__, reverse=True):
            have = sum(
                1 for s in self.segments.values() if s.cls == cls and s.state in (FREE, GROWING)
            )
            if have < self.spare and cls <= room:
                return [cls]
        return []

    def placeholder(self, cls: int, key: int) -> Segment:
        """Count a segment about to be grown (``key``: a unique negative stand-in inode)."""
        s = Segment(key, cls, GROWING, cls)
        self._add(s)
        return s

    def _add(self, s: Segment) -> None:
        self.segments[s.ino] = s
        self.nbytes += s.nbytes

    def _remove(self, s: Segment) -> None:
        del self.segments[s.ino]
        self.nbytes -= s.nbytes

    def stats(self) -> dict[str, int]:
        return {
            "pool_bytes": self.nbytes,
            "pool_free": self.count(FREE),
            "pool_held": self.count(HELD) + self.count(REUSING),
            "pool_grown_total": self.num_grown,
            "pool_reused_total": self.num_reused,
            "pool_claimed_total": self.num_claimed,
            "pool_dropped_total": self.num_dropped,
            "pool_busy_total": self.num_busy,
        }
