"""Per-process reference counts: when an object leaves scope, it is released.

Pure, synchronous state (no loop). Counts change from any thread (ObjectRefs are
created and collected in user threads), so a lock guards them; the decision "this
object is out of scope here" is handed to ``on_out_of_scope``, which the
CoreWorker batches onto its loop: an owner then frees the object, a borrower
returns its borrow to the owner (see borrowing.py for the protocol).

An object stays in scope in this process while any of these is non-zero:
- local: live ObjectRef instances in this process;
- submitted: pending tasks that take it as an argument (top level or nested);
- contained: objects stored here (owned, or cached copies) whose value holds a ref to it;
- borrowers (owner only): holds other processes registered with us, net of returns.
  It can dip below zero for a moment (a return overtook the registration on
  another connection); any non-zero value keeps the object;
- pinned: held for this process's lifetime (an actor's creation arguments).

A borrower also keeps ``credit``: how many holds the owner counts for this
process. When the object leaves scope here, the credit goes back in one message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from aioray._private.wire.schema import Address


class ReferenceCounter:
    def __init__(self, on_out_of_scope: Callable[[bytes], None]) -> None:
        self._lock = threading.Lock()
        self._local: dict[bytes, int] = {}
        self._submitted: dict[bytes, int] = {}
        self._contained: dict[bytes, int] = {}
        self._borrowers: dict[bytes, int] = {}
        self._pinned: set[bytes] = set()
        self._credit: dict[bytes, int] = {}
        self._owners: dict[bytes, Address] = {}
        self._on_out_of_scope = on_out_of_scope

    def __repr__(self) -> str:
        return (
            f"<ReferenceCounter local={len(self._local)} submitted={len(self._submitted)} "
            f"contained={len(self._contained)} borrowed_by_others={len(self._borrowers)} "
            f"credit={len(self._credit)} pinned={len(self._pinned)}>"
        )

    def _held(self, oid: bytes) -> bool:
        return (
            oid in self._local
            or oid in self._submitted
            or oid in self._contained
            or oid in self._borrowers
            or oid in self._pinned
        )

    @staticmethod
    def _bump(table: dict[bytes, int], oid: bytes, n: int) -> None:
        v = table.get(oid, 0) + n
        if v:
            table[oid] = v
        else:
            table.pop(oid, None)

    def _change(self, table: dict[bytes, int], oids: Iterable[bytes], n: int) -> None:
        freed = []
        with self._lock:
            for oid in oids:
                self._bump(table, oid, n)
                if n < 0 and not self._held(oid):
                    freed.append(oid)
        for oid in freed:
            self._on_out_of_scope(oid)

    # -- local ObjectRef instances (the hot path: one object id, no generator) --------------
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
            if self._held(oid):
                return
        self._on_out_of_scope(oid)

    # -- the other holds -----------------------------------------------------------------------
    def add_submitted(self, oids: Iterable[bytes]) -> None:
        self._change(self._submitted, oids, 1)

    def remove_submitted(self, oids: Iterable[bytes]) -> None:
        self._change(self._submitted, oids, -1)

    def add_contained(self, oids: Iterable[bytes]) -> None:
        self._change(self._contained, oids, 1)

    def remove_contained(self, oids: Iterable[bytes]) -> None:
        self._change(self._contained, oids, -1)

    def add_borrowers(self, oid: bytes, n: int) -> None:
        """(owner) Other processes took (n > 0) or returned (n < 0) holds on ``oid``."""
        with self._lock:
            self._bump(self._borrowers, oid, n)
            if self._held(oid):
                return
        self._on_out_of_scope(oid)

    def pin(self, oids: Iterable[bytes]) -> None:
        with self._lock:
            self._pinned.update(oids)

    # -- a borrower's credit at the owner ------------------------------------------------
    def add_credit(self, oid: bytes, owner: Address, n: int = 1) -> None:
        with self._lock:
            self._credit[oid] = self._credit.get(oid, 0) + n
            self._owners[oid] = owner

    def take_credit(self, oid: bytes) -> tuple[Address | None, int]:
        """Remove and return (owner, credit) of a borrowed object that left scope here;
        (None, 0) if it is back in scope or there is none."""
        with self._lock:
            if self._held(oid):
                return None, 0
            return self._owners.pop(oid, None), self._credit.pop(oid, 0)

    # -- queries ----------------------------------------------------------------------------------
    def in_scope(self, oid: bytes) -> bool:
        return self._held(oid)

    def local_count(self, oid: bytes) -> int:
        return self._local.get(oid, 0)

    def num_tracked(self) -> int:
        return len(
            self._local.keys()
            | self._submitted.keys()
            | self._contained.keys()
            | self._borrowers.keys()
            | self._pinned
        )

    def snapshot(self) -> dict[bytes, dict[str, int]]:
        """Every tracked object with its non-zero holds (for ``aioray memory``)."""
        with self._lock:
            tables = {
                "local": self._local,
                "submitted": self._submitted,
                "contained": self._contained,
                "borrowers": self._borrowers,
                "credit": self._credit,
            }
            out: dict[bytes, dict[str, int]] = {}
            for name, table in tables.items():
                for oid, n in table.items():
                    out.setdefault(oid, {})[name] = n
            for oid in self._pinned:
                out.setdefault(oid, {})["pinned"] = 1
            return out
