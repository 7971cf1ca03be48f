"""The client side of a node's shared-memory object store: segment files.

Each large object is one file in /dev/shm named after the session, the node
whose store holds it and the object id, and read with ``mmap``: readers get
read-only views, and numpy arrays unpickled from them are zero-copy. A segment is
either a fresh file (``write_segment``) or a pre-faulted one taken from the node's
pool (``shm_pool.py``). An object larger than the whole store is a file on disk
instead, linked from its place here (``write_fallback``). No multiprocessing
resource tracker is involved (CPython gh-82300 unlinks segments a process merely
attached to).

Readers and reuse. A reader holds a shared ``flock`` on the segment for as long as
its mapping lives (the lock belongs to the open file, which the mapping keeps
open), and the kernel drops it when the last view is unmapped or the process
dies. The raylet reuses a freed segment only once it can take the lock
exclusively, and first zeroes the segment's *seal*: the object id at offset 0,
which every writer writes last. A reader checks the seal under its lock, so a
file reused since the reader opened it reads as missing, never as another
object's bytes.

Layout: the seal (object id, SEAL_BYTES), header ``<8sIQ`` (magic, buffer count,
pickle length), buffer lengths ``<Q`` each, then the pickle stream and every
buffer, each at a 64-byte boundary.
"""

from __future__ import annotations

import fcntl
import functools
import mmap
import os
import shutil
import struct
from collections.abc import Sequence

from aioray._private.wire import config
from aioray._private.wire.protocol import Buffer

MAGIC = b"AIORAY02"
SEAL_BYTES = 24  # the object id (20 bytes), zero-padded
_HEAD = struct.Struct("<8sIQ")
ALIGN = 64
_ZEROS = bytes(ALIGN)
_IOV_MAX = 512


_shm_dirs: dict[str, str] = {}  # the configured directory -> the one used


def shm_dir() -> str:
    """Where segments live: ``config.SHM_DIR`` (/dev/shm), else /tmp. Looked up once per
    configured path (every get names a segment: a stat each time cost ~3 µs)."""
    wanted = config.SHM_DIR
    found = _shm_dirs.get(wanted)
    if found is None:
        found = _shm_dirs[wanted] = wanted if os.path.isdir(wanted) else "/tmp"
    return found


def node_prefix(session_id: str, node_id: bytes) -> str:
    """The file name prefix of every segment in one node's store."""
    return f"{config.SHM_PREFIX}{session_id}_{node_id.hex()[:16]}_"


@functools.lru_cache(maxsize=64)
def _store_prefix(directory: str, session_id: str, node_id: bytes) -> str:
    return os.path.join(directory, node_prefix(session_id, node_id))


def segment_path(session_id: str, object_id: bytes, node_id: bytes) -> str:
    """Where ``node_id``'s store keeps its copy of ``object_id``.

    Each node's store is its own namespace (the node id is in the name): nodes of
    a test cluster share one /dev/shm, and a node must read only its own copies.
    """
    return _store_prefix(shm_dir(), session_id, node_id) + object_id.hex()


def _pad(n: int) -> int:
    return -n % ALIGN


def _nbytes(b: Buffer) -> int:
    return b.nbytes if isinstance(b, memoryview) else len(b)


def seal_of(object_id: bytes) -> bytes:
    """The bytes at offset 0 of ``object_id``'s segment once it is complete."""
    return object_id.ljust(SEAL_BYTES, b"\0")


def layout(data_len: int, buffer_lens: Sequence[int]) -> tuple[int, list[int]]:
    """Return (total size, offset of the pickle stream then of each buffer)."""
    head = SEAL_BYTES + _HEAD.size + 8 * len(buffer_lens)
    offsets = []
    pos = head + _pad(head)
    for n in (data_len, *buffer_lens):
        offsets.append(pos)
        pos += n + _pad(n)
    return pos, offsets


def body_parts(data: Buffer, buffers: Sequence[Buffer]) -> list[Buffer]:
    """Everything after the seal, in order and padded: what a writer writes first."""
    lens = [_nbytes(b) for b in buffers]
    header = _HEAD.pack(MAGIC, len(buffers), _nbytes(data)) + struct.pack(f"<{len(lens)}Q", *lens)
    parts: list[Buffer] = [header, _ZEROS[: _pad(SEAL_BYTES + len(header))]]
    for part in (data, *buffers):
        parts.append(part)
        parts.append(_ZEROS[: _pad(_nbytes(part))])
    return [p for p in parts if _nbytes(p)]


def write_parts(fd: int, object_id: bytes, data: Buffer, buffers: Sequence[Buffer]) -> int:
    """Write the object into the open file ``fd``: the body, then the seal; return its size."""
    parts = body_parts(data, buffers)
    offset = SEAL_BYTES
    for i in range(0, len(parts), _IOV_MAX):
        chunk = parts[i : i + _IOV_MAX]
        want = sum(_nbytes(p) for p in chunk)
        done = os.pwritev(fd, chunk, offset)
        while done < want:  # short write: finish the rest piece by piece
            flat = memoryview(b"".join(bytes(p) for p in chunk))
            done += os.pwrite(fd, flat[done:], offset + done)
        offset += want
    os.pwrite(fd, seal_of(object_id), 0)  # last: a reader checks it
    return offset


def write_segment(
    path: str, object_id: bytes, data: Buffer, buffers: Sequence[Buffer]
) -> tuple[int, int]:
    """Create the segment file (it must not exist) and write the object; return its
    size and inode number (which names the file to the raylet)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        size = write_parts(fd, object_id, data, buffers)
        ino = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)
    return size, ino


def write_fallback(
    path: str, target: str, object_id: bytes, data: Buffer, buffers: Sequence[Buffer]
) -> int:
    """Write an object too large for the store to the file ``target`` on disk, and link
    it from its segment ``path``: readers map it the same way (Ray's fallback allocation)."""
    try:
        size, _ = write_segment(target, object_id, data, buffers)
    except FileExistsError:  # a copy of an earlier run of this task (lineage)
        _unlink(target)
        size, _ = write_segment(target, object_id, data, buffers)
    _unlink(path)
    os.symlink(target, path)
    return size


def map_segment(path: str, object_id: bytes) -> memoryview:
    """Map ``object_id``'s segment read-only and hold it: a view of the whole object.

    The reader's shared lock lives as long as the mapping (the views keep it alive;
    nothing needs to be closed), so the segment cannot be reused under it.
    FileNotFoundError if the file there is not (or no longer, or not yet) this object.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return map_open(fd, path, object_id)
    finally:
        os.close(fd)


def _lock_and_map(fd: int, path: str) -> mmap.mmap:
    """A reader's shared lock on ``path`` (open as ``fd``), then a read-only mapping of it."""
    fcntl.flock(fd, fcntl.LOCK_SH)
    size = os.fstat(fd).st_size
    if size < SEAL_BYTES + _HEAD.size:
        raise FileNotFoundError(f"{path} is not complete")
    return mmap.mmap(fd, size, prot=mmap.PROT_READ)


def map_open(fd: int, path: str, object_id: bytes) -> memoryview:
    """A reader's steps once it has opened ``path`` as ``fd`` (``map_segment``): lock,
    map, then check the seal, which no one can change while the lock is held."""
    mm = _lock_and_map(fd, path)
    try:
        return object_view(mm, path, object_id)
    except BaseException:
        mm.close()
        raise


def _contents(
    mapping: mmap.mmap, path: str, object_id: bytes
) -> tuple[int, tuple[int, ...], int, list[int]]:
    """(pickle stream's length, buffers' lengths, total size, offsets) of ``object_id``
    in a mapping of its segment, once the seal says it is there. Call it holding a
    reader's lock on the file (``map_open``), or the seal may change."""
    if mapping[:SEAL_BYTES] != seal_of(object_id):
        # Reused for another object since it was opened, or still being written.
        raise FileNotFoundError(f"{path} does not hold object {object_id.hex()}")
    magic, nbuf, data_len = _HEAD.unpack_from(mapping, SEAL_BYTES)
    if magic != MAGIC:
        raise ValueError(f"{path} is not an aioray object segment")
    lens = struct.unpack_from(f"<{nbuf}Q", mapping, SEAL_BYTES + _HEAD.size)
    total, offsets = layout(data_len, lens)
    return data_len, lens, total, offsets


def object_view(mapping: mmap.mmap, path: str, object_id: bytes) -> memoryview:
    """The view of ``object_id`` in a mapping of its segment, once the seal says it is there.

    Call it holding a reader's lock on the file (``map_open``), or the seal may change."""
    return memoryview(mapping)[: _contents(mapping, path, object_id)[2]]


def read_segment(path: str, object_id: bytes) -> tuple[memoryview, list[memoryview]]:
    """Map a segment read-only; return views of its pickle stream and buffers.

    The views keep the mapping (and the reader's lock) alive on their own. (``map_segment``'s
    steps, the header read once: every get of an object in shared memory comes here.)
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = _lock_and_map(fd, path)
    finally:
        os.close(fd)
    try:
        data_len, lens, _, offsets = _contents(mm, path, object_id)
    except BaseException:
        mm.close()
        raise
    view = memoryview(mm)
    start = offsets[0]
    data = view[start : start + data_len]
    bufs = [view[o : o + n] for o, n in zip(offsets[1:], lens, strict=True)]
    return data, bufs


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def delete_segment(path: str) -> None:
    """Remove a segment file (or, for a node's pool directory, all of it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


def list_segments(session_id: str | None = None, node_id: bytes | None = None) -> list[str]:
    """Segment files (and partial pulls, and pool directories) of a session, or of one
    node of it."""
    if session_id and node_id:
        prefix = node_prefix(session_id, node_id)
    else:
        prefix = config.SHM_PREFIX + (f"{session_id}_" if session_id else "")
    d = shm_dir()
    try:
        return [os.path.join(d, n) for n in os.listdir(d) if n.startswith(prefix)]
    except FileNotFoundError:
        return []
