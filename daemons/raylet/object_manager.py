"""The node object store's bookkeeping: capacity, eviction and spill decisions.

Pure state, no I/O: the raylet's ``StoreService`` (store_service.py) feeds it
events (a creator asks for room, an object is sealed, freed, spilled, restored)
and performs the actions ``schedule`` returns (evict, spill, grant, fail).

Every object here is one segment file. Its bytes count against ``capacity``
while a segment exists or is being written: states CREATING (room granted, the
creator is writing), IN_SHM, SPILLING (being copied to disk; the segment goes
when the copy is done) and RESTORING (room granted, being copied back). A
SPILLED object costs no memory.

A *primary* copy is the one its creator wrote on this node: pinned until its
owner frees it, so it can only be spilled. A *secondary* copy is a cached copy
pulled from another node (``add_secondary``): it can be evicted (dropped) at any
time while no reader pins it, because the primary lives elsewhere.

Making room for a request that does not fit, in this order:
1. Evict unpinned secondary copies, least recently added first.
2. Spill primary copies, oldest first (creation or restore order), until the
   bytes already being spilled plus these cover the shortfall. Oldest first
   because the newest objects are the likeliest to be read next (a value just
   put is about to be passed to tasks, a task return about to be fetched), and
   it is Ray's order too; stopping as soon as the shortfall is covered keeps the
   disk traffic to what the request needs.
Requests are served in arrival order, so a stream of small creates cannot
starve a large one. An object (or a copy pulled from another node) larger than
the capacity can never fit in memory: as Ray's fallback allocation, it is granted
a file on disk instead (state FALLBACK, counted in ``fallback_bytes``, never
against the capacity, never spilled or evicted), unless the disk is over its
usage threshold. Any other request fails when room is short and nothing can be
spilled (spilling disabled, or the spill disk over its usage threshold).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CREATING = "CREATING"
IN_SHM = "IN_SHM"
SPILLING = "SPILLING"
SPILLED = "SPILLED"
RESTORING = "RESTORING"
FALLBACK = "FALLBACK"  # larger than the store: its segment is a file on disk
_HOLDS_MEMORY = (CREATING, IN_SHM, SPILLING, RESTORING)

# Request kinds.
CREATE = "create"
RESTORE = "restore"
SECONDARY = "secondary"

# Failure reasons returned in Actions.failed.
TOO_BIG = "too_big"
FULL = "full"
DISK_FULL = "disk_full"


@dataclass(slots=True)
class Entry:
    size: int
    primary: bool
    state: str
    spill_path: str | None = None  # set once a spill finished; kept after a restore
    pins: int = 0  # readers of a secondary copy; a pinned copy is not evicted
    source: bytes | None = None  # a secondary copy: the node it was pulled from
    ino: int = 0  # its segment file's inode (0: unknown), so the pool can take it back


@dataclass(slots=True)
class Request:
    """A wish for ``size`` bytes of room: to create, restore or cache ``oid``."""

    oid: bytes
    size: int
    kind: str
    token: object = None  # the shell's handle for answering


@dataclass
class Actions:
    """What the shell must do after ``schedule``."""

    granted: list[Request] = field(default_factory=list)
    # Unlink these segments: evicted copies, and objects whose spill file already exists.
    evict: list[tuple[bytes, Entry]] = field(default_factory=list)
    spill: list[tuple[bytes, Entry]] = field(default_factory=list)  # copy to disk, then unlink
    fallback: list[Request] = field(default_factory=list)  # granted a file on disk
    failed: list[tuple[Request, str]] = field(default_factory=list)
    stuck: bool = False  # the head request waits and nothing under way can make room


class ObjectManager:
    """Capacity accounting and the eviction/spill policy of one node's store."""

    def __init__(self, capacity: int, spilling_enabled: bool = True) -> None:
        self.capacity = capacity
        self.spilling_enabled = spilling_enabled
        # Insertion order is age order: a restored object moves to the end.
        self.entries: dict[bytes, Entry] = {}
        self.queue: collections.deque[Request] = collections.deque()
        self.used = 0  # bytes of segments that exist or are being written
        self.spilling = 0  # bytes being spilled (leaving memory soon)
        self.in_flight = 0  # creates and restores granted but not finished
        self.spilled_bytes = 0  # bytes of objects whose only copy is on disk
        self.fallback_bytes = 0  # bytes of objects too large for the store, on disk
        self.num_spilled_total = 0
        self.num_restored_total = 0

    def __repr__(self) -> str:
        return (
            f"<ObjectManager used={self.used}/{self.capacity} objects={len(self.entries)} "
            f"spilling={self.spilling} spilled={self.spilled_bytes} queued={len(self.queue)}>"
        )

    @property
    def available(self) -> int:
        return max(0, self.capacity - self.used)

    # -- events ----------------------------------------------------------------------
    def request(self, req: Request) -> None:
        """Ask for room; the answer comes out of a later ``schedule``."""
        self.queue.append(req)

    def seal(self, oid: bytes, size: int) -> None:
        """The creator finished writing. An object nobody asked room for is taken as is
        (a creator that could not wait); ``schedule`` then makes room after the fact."""
        e = self.entries.get(oid)
        if e is None:
            self.entries[oid] = Entry(size, True, IN_SHM)
            self.used += size
            return
        if e.state == FALLBACK:
            self.fallback_bytes += size - e.size
            e.size = size
        elif e.state == CREATING:
            self.in_flight -= 1
            self.used += size - e.size
            e.size = size
            e.state = IN_SHM

    def adopt(self, oid: bytes, size: int) -> Entry:
        """A creator is writing ``oid`` into a pooled segment it claimed: its room came
        from the pool (which counted it), so it is granted at once, queue or not."""
        e = self.entries[oid] = Entry(size, True, CREATING)
        self.used += size
        self.in_flight += 1
        return e

    def add_secondary(self, oid: bytes, size: int) -> None:
        """A cached copy of a remote object is now complete in its segment here."""
        self.seal(oid, size)

    def pin(self, oid: bytes) -> None:
        e = self.entries.get(oid)
        if e is not None:
            e.pins += 1

    def unpin(self, oid: bytes) -> None:
        e = self.entries.get(oid)
        if e is not None and e.pins > 0:
            e.pins -= 1

    def free(self, oid: bytes) -> Entry | None:
        """The owner freed the object (or its creator died mid-write): forget it.

        Returns the entry so the shell can delete its segment and spill file.
        Requests still queued for it are dropped (see ``drop_requests``).
        """
        e = self.entries.pop(oid, None)
        if e is None:
            return None
        if e.state in _HOLDS_MEMORY:
            self.used -= e.size
        if e.state == SPILLING:
            self.spilling -= e.size
        if e.state in (CREATING, RESTORING):
            self.in_flight -= 1
        if e.state in (SPILLED, RESTORING):
            self.spilled_bytes -= e.size
        if e.state == FALLBACK:
            self.fallback_bytes -= e.size
        return e

    def drop_requests(self, oid: bytes) -> list[Request]:
        """Take the queued requests for ``oid`` out of the queue (it was freed)."""
        if not any(r.oid == oid for r in self.queue):
            return []
        dropped = [r for r in self.queue if r.oid == oid]
        self.queue = collections.deque(r for r in self.queue if r.oid != oid)
        return dropped

    def spill_done(self, oid: bytes, path: str) -> bool:
        """The copy to disk finished; False if the object was freed meanwhile."""
        e = self.entries.get(oid)
        if e is None or e.state != SPILLING:
            return False
        e.state, e.spill_path = SPILLED, path
        self.used -= e.size
        self.spilling -= e.size
        self.spilled_bytes += e.size
        self.num_spilled_total += 1
        return True

    def spill_failed(self, oid: bytes) -> None:
        e = self.entries.get(oid)
        if e is not None and e.state == SPILLING:
            e.state = IN_SHM
            self.spilling -= e.size

    def restore_done(self, oid: bytes) -> bool:
        """The segment is back; the object counts as the newest. False if freed meanwhile."""
        e = self.entries.pop(oid, None)
        if e is None:
            return False
        self.entries[oid] = e  # move to the end: newest
        if e.state == RESTORING:
            e.state = IN_SHM
            self.in_flight -= 1
            self.spilled_bytes -= e.size
            self.num_restored_total += 1
        return True

    def restore_failed(self, oid: bytes) -> None:
        e = self.entries.get(oid)
        if e is not None and e.state == RESTORING:
            e.state = SPILLED
            self.used -= e.size
            self.in_flight -= 1

    # -- decisions ---------------------------------------------------------------------
    def schedule(self, can_spill: Callable[[], bool] = lambda: True) -> Actions:
        """Grant what fits, in order; make room for the head request if it does not.

        ``can_spill()`` says whether the spill disk takes more (under its usage
        threshold); it is asked only when something would have to be spilled, or an
        object too large for the store would go to disk.
        """
        act = Actions()
        disk_ok: bool | None = None
        over = self.used - self.spilling - self.capacity
        if over > 0:  # a seal nobody asked room for overflowed the store
            over = self._evict(over, act)
            if over > 0 and self.spilling_enabled and can_spill():
                self._spill(over, act)
        while self.queue:
            req = self.queue[0]
            if req.size > self.capacity:
                self.queue.popleft()
                if req.kind == RESTORE:  # (an object on disk is never spilled)
                    act.failed.append((req, TOO_BIG))
                    continue
                if disk_ok is None:
                    disk_ok = can_spill()
                if not disk_ok:
                    act.failed.append((req, DISK_FULL))
                    continue
                if req.oid in self.entries:  # a newer copy replaces it
                    self.free(req.oid)
                self.entries[req.oid] = Entry(req.size, req.kind == CREATE, FALLBACK)
                self.fallback_bytes += req.size
                act.fallback.append(req)
                continue
            if self.used + req.size <= self.capacity:
                self.queue.popleft()
                self._grant(req)
                act.granted.append(req)
                continue
            short = self.used + req.size - self.capacity - self.spilling
            if short > 0:
                short = self._evict(short, act)
            if short > 0 and self.spilling_enabled and any(self._spillable()):
                if disk_ok is None:
                    disk_ok = can_spill()
                if not disk_ok:
                    if self.spilling == 0 and self.in_flight == 0:
                        self.queue.popleft()
                        act.failed.append((req, DISK_FULL))
                        continue
                    break  # what is under way may still make room
                short = self._spill(short, act)
            if self.used + req.size <= self.capacity:
                continue  # evictions made room: grant it on the next turn
            if short > 0 and self.spilling == 0 and self.in_flight == 0:
                act.stuck = True  # only frees can help now
            break
        return act

    def fail_head(self) -> Request | None:
        """Give up on the head request (it waited while nothing could make room)."""
        return self.queue.popleft() if self.queue else None

    def _grant(self, req: Request) -> None:
        if req.kind == RESTORE:
            e = self.entries.get(req.oid)
            if e is None or e.state != SPILLED:
                return  # freed, or already restored: nothing to reserve
            e.state = RESTORING
        else:
            if req.oid in self.entries:  # a newer copy replaces it (its task ran again)
                self.free(req.oid)
            self.entries[req.oid] = Entry(req.size, req.kind == CREATE, CREATING)
        self.used += req.size
        self.in_flight += 1

    def _evict(self, short: int, act: Actions) -> int:
        victims = [
            (oid, e)
            for oid, e in self.entries.items()
            if not e.primary and e.state == IN_SHM and e.pins == 0
        ]
        for oid, e in victims:
            if short <= 0:
                break
            del self.entries[oid]
            self.used -= e.size
            short -= e.size
            act.evict.append((oid, e))
        return short

    def _spillable(self) -> Iterator[tuple[bytes, Entry]]:
        return ((oid, e) for oid, e in self.entries.items() if e.primary and e.state == IN_SHM)

    def _spill(self, short: int, act: Actions) -> int:
        for oid, e in self._spillable():
            if short <= 0:
                break
            short -= e.size
            if e.spill_path is not None:
                # Spilled before and restored since: its file is still on disk, so
                # dropping the segment is enough.
                e.state = SPILLED
                self.used -= e.size
                self.spilled_bytes += e.size
                act.evict.append((oid, e))
                continue
            e.state = SPILLING
            self.spilling += e.size
            act.spill.append((oid, e))
        return short

    def stats(self) -> dict[str, int]:
        return {
            "capacity": self.capacity,
            "used": self.used,
            "objects": len(self.entries),
            "spilled_bytes": self.spilled_bytes,
            "fallback_bytes": self.fallback_bytes,
            "spilled_total": self.num_spilled_total,
            "restored_total": self.num_restored_total,
            "queued": len(self.queue),
        }
