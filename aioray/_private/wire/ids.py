"""Identifiers: raw bytes on the wire, hex strings for users.

An ObjectID is the TaskID that produced it plus a 4-byte return index, so an
object's producing task is known from its id alone. TaskIDs are a worker's random
8-byte prefix plus a per-worker counter: unique across the cluster with no
coordination and no syscall per id.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading

TASK_ID_SIZE = 16
OBJECT_ID_SIZE = TASK_ID_SIZE + 4
_INDEX = struct.Struct("<I")


def random_id(n: int = 16) -> bytes:
    return os.urandom(n)


class IdGenerator:
    """Makes TaskIDs for one worker; thread-safe because ``count`` is atomic in CPython."""

    def __init__(self, worker_id: bytes) -> None:
        self._prefix = worker_id[:8]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def task_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "little")


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + _INDEX.pack(index)


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_SIZE]


def index_of(object_id: bytes) -> int:
    return int(_INDEX.unpack_from(object_id, TASK_ID_SIZE)[0])
