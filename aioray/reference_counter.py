"""Per-process reference counts: when an object leaves scope, the owner frees it.

Pure, synchronous state (no loop). Counts change from any thread (ObjectRefs are
created and collected in user threads), so a lock guards them; the decision "this
object is out of scope" is handed to ``on_out_of_scope``, which the CoreWorker
batches onto its loop.

An object stays in scope while any of these is non-zero:
- local: live ObjectRef instances in this process;
- submitted: pending tasks that take it as a top-level argument;
- escaped: it was pickled into a value that left the process. Until borrower
  tracking lands (the memory issue) an escaped object is pinned for the
  owner's lifetime: a leak is preferable to a borrower finding it freed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class ReferenceCounter:
    def __init__(self, on_out_of_scope: Callable[[bytes], None]) -> None:
        self._lock = threading.Lock()
        self._local: dict[bytes, int] = {}
        self._submitted: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._on_out_of_scope = on_out_of_scope

    def __repr__(self) -> str:
        return (
            f"<ReferenceCounter local={len(self._local)} submitted={len(self._submitted)} "
            f"escaped={len(self._escaped)}>"
        )

    def add_local(self, oid: bytes) -> None:
        with self._lock:
            self._local[oid] = self._local.get(oid, 0) + 1

    def remove_local(self, oid: bytes) -> None:
        with self._lock:
            n = self._local.get(oid, 0) - 1
            if n > 0:
                self._local[oid] = n
                return
            self._local.pop(oid, None)
            if oid in self._submitted or oid in self._escaped:
                return
        self._on_out_of_scope(oid)

    def add_submitted(self, oids: Iterable[bytes]) -> None:
        with self._lock:
            for oid in oids:
                self._submitted[oid] = self._submitted.get(oid, 0) + 1

    def remove_submitted(self, oids: Iterable[bytes]) -> None:
        freed = []
        with self._lock:
            for oid in oids:
                n = self._submitted.get(oid, 0) - 1
                if n > 0:
                    self._submitted[oid] = n
                    continue
                self._submitted.pop(oid, None)
                if oid not in self._local and oid not in self._escaped:
                    freed.append(oid)
        for oid in freed:
            self._on_out_of_scope(oid)

    def mark_escaped(self, oids: Iterable[bytes]) -> None:
        with self._lock:
            self._escaped.update(oids)

    def in_scope(self, oid: bytes) -> bool:
        return oid in self._local or oid in self._submitted or oid in self._escaped

    def local_count(self, oid: bytes) -> int:
        return self._local.get(oid, 0)

    def num_tracked(self) -> int:
        return len(self._local.keys() | self._submitted.keys() | self._escaped)
