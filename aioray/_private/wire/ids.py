"""Identifiers: raw bytes on the wire, hex strings for users.

An ObjectID is the TaskID that produced it plus a 4-byte return index, so an
object's producing task is known from its id alone. A TaskID is a worker's random
8-byte prefix, a per-worker counter (unique across the cluster with no coordination
and no syscall per id), then the 4-byte JobID of the job it runs for, last as in
Ray's layout: ``ObjectRef.job_id()`` and ``task_id()`` read the id alone.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from typing import TypeVar

JOB_ID_SIZE = 4
TASK_ID_SIZE = 16 + JOB_ID_SIZE
OBJECT_ID_SIZE = TASK_ID_SIZE + 4
_INDEX = struct.Struct("<I")
_TASK_ID = struct.Struct(f"<8sQ{JOB_ID_SIZE}s")  # worker prefix, counter, job id


def random_id(n: int = 16) -> bytes:
    return os.urandom(n)


class IdGenerator:
    """Makes TaskIDs for one worker; thread-safe because ``count`` is atomic in CPython."""

    def __init__(self, worker_id: bytes) -> None:
        self._prefix = worker_id[:8]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def task_id(self, job_id: bytes) -> bytes:
        """A new TaskID of job ``job_id`` (its 4 bytes end the id)."""
        # One pack call: cheaper than the two concatenations it replaces (measured).
        return _TASK_ID.pack(self._prefix, next(self._counter), job_id)


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + _INDEX.pack(index)


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_SIZE]


def job_id_of(task_or_object_id: bytes) -> bytes:
    """The JobID bytes inside a TaskID or an ObjectID."""
    return task_or_object_id[TASK_ID_SIZE - JOB_ID_SIZE : TASK_ID_SIZE]


def index_of(object_id: bytes) -> int:
    return int(_INDEX.unpack_from(object_id, TASK_ID_SIZE)[0])


# -- Ray's id classes (ray.NodeID, ray.JobID, ...): the users' view of the raw bytes ------
_ID = TypeVar("_ID", bound="BaseID")


class BaseID:
    """An id as Ray shows it: ``hex()``, ``binary()``, ``from_hex``, ``nil()``."""

    __slots__ = ("_id",)
    SIZE = 16

    def __init__(self, id_bytes: bytes) -> None:
        if not isinstance(id_bytes, bytes):
            raise TypeError(f"{type(self).__name__} takes bytes, got {type(id_bytes).__name__}")
        if len(id_bytes) != self.SIZE:
            raise ValueError(
                f"{type(self).__name__} must be {self.SIZE} bytes long, got {len(id_bytes)}"
            )
        self._id = id_bytes

    @classmethod
    def from_binary(cls: type[_ID], id_bytes: bytes) -> _ID:
        return cls(id_bytes)

    @classmethod
    def from_hex(cls: type[_ID], hex_id: str | bytes) -> _ID:
        text = hex_id.decode() if isinstance(hex_id, bytes) else hex_id
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"{cls.__name__}.from_hex: {hex_id!r} is not hex") from None
        return cls(raw)

    @classmethod
    def from_random(cls: type[_ID]) -> _ID:
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def nil(cls: type[_ID]) -> _ID:
        return cls(b"\xff" * cls.SIZE)

    @classmethod
    def size(cls) -> int:
        return cls.SIZE

    def is_nil(self) -> bool:
        return self._id == b"\xff" * self.SIZE

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._id.hex()})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type, tuple[bytes]]:
        return (type(self), (self._id,))


class NodeID(BaseID):
    """A node's id (16 bytes here; 28 in Ray)."""


class ActorID(BaseID):
    """An actor's id."""


class WorkerID(BaseID):
    """A worker process's id."""


class TaskID(BaseID):
    """A task's id: its ObjectRefs' ids start with it; its last 4 bytes are its JobID."""

    SIZE = TASK_ID_SIZE

    def job_id(self) -> JobID:
        """The job the task belongs to (Ray's ``TaskID.job_id()``)."""
        return JobID(job_id_of(self._id))


class ObjectID(BaseID):
    """An object's id: the producing task's id and a return index."""

    SIZE = OBJECT_ID_SIZE

    def task_id(self) -> TaskID:
        """The id of the task that created the object."""
        return TaskID(task_id_of(self._id))

    def job_id(self) -> JobID:
        """The job the object belongs to."""
        return JobID(job_id_of(self._id))


class PlacementGroupID(BaseID):
    """A placement group's id."""


class JobID(BaseID):
    """A job's id: 4 bytes, the GCS's counter (little-endian), as in Ray."""

    SIZE = JOB_ID_SIZE

    @classmethod
    def from_int(cls, value: int) -> JobID:
        """The JobID whose bytes are ``value`` little-endian (Ray's ``JobID.from_int``)."""
        return cls(value.to_bytes(cls.SIZE, "little"))

    def int(self) -> int:
        """This job id as an integer (its bytes read little-endian); ``from_int`` inverts it."""
        return int.from_bytes(self._id, "little")
