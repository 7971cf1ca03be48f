"""A node's pool of pre-faulted shared-memory segments, as files: size classes, names,
the claim a writer makes without asking the raylet, and the raylet's steps to reuse one.

The first write into a fresh /dev/shm file pays for every page (the kernel allocates
and zeroes it inside the write); a pooled segment's pages exist already, so a put only
copies. Free segments of size class ``c`` are files ``<pool>/<c>/<inode>`` in the node's
pool directory. A writer takes one by renaming it to its object's segment path (an
atomic claim: of two writers, one gets ENOENT and tries the next), trims it to the
object's size (the store counts an object's own bytes, as for a fresh file), writes the
object and its seal last (``object_store``), and names the inode to the raylet in
``create_object`` / ``object_sealed``.

When the object is freed, the raylet ``park``s the file under ``<pool>/h<inode>``, away
from the object's name, and ``reuse``s it only once it can take the file's lock
exclusively, i.e. once no reader maps it: readers hold a shared lock as long as their
mapping lives, released by the kernel on unmap or process death. Reuse zeroes the seal
before the file can be claimed again, so a reader that opened it earlier finds it no
longer holds its object. The raylet's bookkeeping is ``daemons/raylet/segment_pool.py``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aioray._private.wire import config, object_store
from aioray._private.wire.protocol import Buffer

MIN_BYTES = int(config.env_float("SHM_POOL_MIN_BYTES", 1 << 20))  # smaller objects: fresh files
STEPS = 16  # size classes per doubling: a class is at most 1/16 larger than its object
HEADROOM = 64 * 1024  # a class holds its round size plus a header: 100 MiB arrays fit 100 MiB
HELD = "h"  # prefix of parked segments (freed, maybe still mapped by readers)


def class_of(size: int) -> int:
    """The size class (bytes of its segments) for an object of ``size`` bytes, or 0 if
    the object is too small to be pooled."""
    if size < MIN_BYTES:
        return 0
    n = max(size - HEADROOM, MIN_BYTES)
    base = 1 << ((n - 1).bit_length() - 1)  # base < n <= 2 * base
    step = base // STEPS
    return base + -(-(n - base) // step) * step + HEADROOM


def pool_dir(session_id: str, node_id: bytes) -> str:
    """The directory that holds one node's pooled segments."""
    return os.path.join(
        object_store.shm_dir(), object_store.node_prefix(session_id, node_id) + "pool"
    )


def free_path(pool: str, cls: int, ino: int) -> str:
    return os.path.join(pool, str(cls), str(ino))


def held_path(pool: str, ino: int) -> str:
    return os.path.join(pool, f"{HELD}{ino}")


# -- the writer's side -----------------------------------------------------------------------
def claim(pool: str, cls: int, dst: str, prefer: Sequence[int] = ()) -> int:
    """Take a free segment of class ``cls``, renamed to ``dst``: its inode, or 0 when the
    pool has none (write a fresh file then).

    ``prefer``: inodes to try first (segments this process has mapped already)."""
    folder = os.path.join(pool, str(cls))
    for ino in prefer:
        try:
            os.rename(os.path.join(folder, str(ino)), dst)
            return ino
        except FileNotFoundError:
            pass
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    os.rename(entry.path, dst)
                except FileNotFoundError:
                    continue  # another writer took it first
                return int(entry.name)
    except FileNotFoundError:
        pass  # no pool for this class (or none at all) on this node
    return 0


class SegmentMaps:
    """Mappings of pooled segments this process used before, kept to use again.

    Copying into pages already mapped here runs at memcpy speed; mapping them costs a
    page fault per page, about as much as the copy. A writer maps a segment on its
    second claim by this process (a one-off write goes through ``pwritev``), if the
    mapping fits in ``max_bytes`` and ``max_maps`` beside those it keeps: a writer
    never drops a mapping for another, or segments of a class that rotate through
    more than fits would each be mapped again and again. The raylet maps the segments
    it receives pulled copies into, and those it sends copies from (``view``),
    dropping the least recently used. A segment the raylet unlinked (the store needed
    its room, or its class went idle) is dropped by ``drop_stale``, so no process
    keeps its memory alive for long.
    """

    def __init__(self, max_bytes: int, max_maps: int = 8) -> None:
        self.max_bytes = max_bytes
        self.max_maps = max_maps
        self._lock = threading.Lock()
        # inode -> (mapping, its own descriptor, writable)
        self._maps: OrderedDict[int, tuple[Any, int, bool]] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()  # claimed once, not mapped

    def __len__(self) -> int:
        return len(self._maps)

    def prefer(self, cls: int) -> list[int]:
        """Inodes of mapped segments of class ``cls``, most recently used first."""
        with self._lock:
            return [ino for ino, (mm, _, w) in reversed(self._maps.items()) if w and len(mm) == cls]

    def write(
        self,
        path: str,
        fd: int,
        ino: int,
        cls: int,
        object_id: bytes,
        data: Buffer,
        buffers: Sequence[Buffer],
    ) -> int:
        """Write the object into the claimed segment ``path`` (open as ``fd``); its size."""
        mm = self._mapping(path, ino, cls)
        if mm is None:
            return object_store.write_parts(fd, object_id, data, buffers)
        return _copy_into(mm, object_id, data, buffers)

    def mapped(self, path: str, ino: int, cls: int) -> Any:
        """A writable mapping of the claimed segment ``path``, kept (within the bounds) to
        write into again; a fresh one if this segment is new here."""
        return self._mapping(path, ino, cls, eager=True)

    def _mapping(self, path: str, ino: int, cls: int, eager: bool = False) -> Any:
        """A kept mapping of the segment, or a new one (on a file description of its own:
        the writer's locked one must close when the write ends)."""
        import mmap

        with self._lock:
            found = self._maps.get(ino)
            if found is not None and found[2] and len(found[0]) == cls:
                self._maps.move_to_end(ino)
                return found[0]
            if ino not in self._seen and not eager:
                self._seen[ino] = None
                if len(self._seen) > 4 * self.max_maps:
                    self._seen.popitem(last=False)
                return None
            room = self.max_bytes - self._bytes()
            if found is not None:
                room += len(found[0])  # (replaced)
            if not eager and (cls > room or len(self._maps) >= self.max_maps):
                # Full: a writer does not evict a mapping it may use next (segments of
                # one class rotate); one the raylet let go of is dropped by drop_stale.
                return None
            keep = cls <= self.max_bytes
        own = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(own, cls)
        except BaseException:
            os.close(own)
            raise
        if not keep:
            os.close(own)
            return mm
        self._keep(ino, mm, own, True)
        return mm

    def view(self, path: str, ino: int, object_id: bytes) -> tuple[memoryview, int]:
        """A reader's view of ``object_id`` in segment ``path`` (inode ``ino``) through a
        kept mapping, and the descriptor holding the reader's lock: close it when done
        with the view. FileNotFoundError if the file there is not that object."""
        import mmap

        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_ino != ino:
                raise FileNotFoundError(f"{path} is not segment {ino}")
            with self._lock:
                found = self._maps.get(ino)
                mm = found[0] if found is not None and len(found[0]) >= st.st_size else None
                if mm is not None:
                    self._maps.move_to_end(ino)
            if mm is None:
                own = os.open(path, os.O_RDONLY)
                try:
                    mm = mmap.mmap(own, st.st_size, prot=mmap.PROT_READ)
                except BaseException:
                    os.close(own)
                    raise
                self._keep(ino, mm, own, False)
            return object_store.object_view(mm, path, object_id), fd
        except BaseException:
            os.close(fd)
            raise

    def _keep(self, ino: int, mm: Any, fd: int, writable: bool) -> None:
        with self._lock:
            old = self._maps.pop(ino, None)
            self._maps[ino] = (mm, fd, writable)
            dropped = [old] if old else []
            while len(self._maps) > self.max_maps or self._bytes() > self.max_bytes:
                dropped.append(self._maps.popitem(last=False)[1])
        _close(dropped)

    def _bytes(self) -> int:
        return sum(len(m[0]) for m in self._maps.values())

    def drop_stale(self) -> None:
        """Forget mappings of segments that are no longer linked anywhere."""
        with self._lock:
            stale = [ino for ino, m in self._maps.items() if _unlinked(m[1])]
            dropped = [self._maps.pop(ino) for ino in stale]
        _close(dropped)

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._maps.values())
            self._maps.clear()
            self._seen.clear()
        _close(dropped)


def _unlinked(fd: int) -> bool:
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


def _close(maps: list[tuple[Any, int, bool]]) -> None:
    for mm, fd, _ in maps:
        os.close(fd)
        try:
            mm.close()
        except BufferError:  # a copy into it is still running in another thread: GC unmaps
            pass


def _copy_into(mm: Any, object_id: bytes, data: Buffer, buffers: Sequence[Buffer]) -> int:
    """Copy the object into a writable mapping of its segment, the seal last."""
    import numpy as np

    offset = object_store.SEAL_BYTES
    for part in object_store.body_parts(data, buffers):
        n = part.nbytes if isinstance(part, memoryview) else len(part)
        if n >= 1 << 16:  # numpy copies without the GIL
            dst = np.frombuffer(mm, dtype=np.uint8, count=n, offset=offset)
            np.copyto(dst, np.frombuffer(part, dtype=np.uint8))
        else:
            mm[offset : offset + n] = part
        offset += n
    mm[: object_store.SEAL_BYTES] = object_store.seal_of(object_id)
    return offset


# -- the raylet's side ------------------------------------------------------------------------
def grow(path: str, cls: int) -> int:
    """Create segment file ``path`` of class ``cls`` with all its pages allocated; its
    inode. ``add_free`` then puts it in the free list.

    Blocking (the kernel zeroes every page): run it off the event loop."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.posix_fallocate(fd, 0, cls)
        ino = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return ino


def add_free(pool: str, path: str, cls: int, ino: int) -> None:
    """Put segment file ``path`` (class ``cls``, inode ``ino``) in the free list, where
    writers claim it: the raylet does it on its loop, having counted it first, so that
    every claim it hears of names a segment it knows."""
    try:
        os.rename(path, free_path(pool, cls, ino))
    except FileNotFoundError:
        os.makedirs(os.path.join(pool, str(cls)), exist_ok=True)  # the class's first
        os.rename(path, free_path(pool, cls, ino))


def park(path: str, pool: str, ino: int) -> bool:
    """Move a freed object's segment ``path`` out of readers' sight, to its held name.

    False (and nothing moved) if the file there is not inode ``ino`` any more: a newer
    copy of the object replaced it, which is not ours to take."""
    held = held_path(pool, ino)
    try:
        os.rename(path, held)
    except FileNotFoundError:
        return False
    if os.stat(held).st_ino != ino:
        os.rename(held, path)  # someone else's: put it back
        return False
    return True


def reuse(pool: str, ino: int, cls: int) -> bool:
    """Make a parked segment ready for the free list if no reader maps it (its lock is
    free): seal zeroed, grown back to its class; False while readers still hold it.
    ``add_free`` then puts it in the free list.

    Blocking when the segment must be grown back: run it off the event loop."""
    held = held_path(pool, ino)
    fd = os.open(held, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        os.pwrite(fd, bytes(object_store.SEAL_BYTES), 0)  # before anyone can claim it
        fcntl.flock(fd, fcntl.LOCK_UN)  # (a late reader finds no seal from now on)
        size = os.fstat(fd).st_size
        if size < cls:
            os.posix_fallocate(fd, size, cls - size)
        elif size > cls:
            os.ftruncate(fd, cls)
    finally:
        os.close(fd)
    return True
