"""Borrowing: refs that travel inside values keep their objects alive, and no longer.

A ref nested in a task argument, a return value, a put value or a value fetched
from its owner is *borrowed* by the process that receives it. The protocol is
"the sender registers the receiver's hold before sending" (lend), so a hold can
never be missing while a ref is in flight:

- lend: before a value carrying refs leaves this process, the owner of each ref
  counts one more hold (``borrowers``). For a ref this process owns that is a
  local increment; for one it borrowed, a ``borrow`` request to the owner that is
  answered before the value is sent. The sender's own hold lasts until then, so
  the count never touches zero in between.
- receive: the receiver records the hold as *credit* (or, if it owns the ref
  itself, nets it out). The value that carried the refs holds them (``contained``
  for stored objects, a temporary local hold for a task's arguments).
- adopt: the receiver tells the owner, on its own connection, which holds are its
  own; if that connection closes (the borrower died) the owner drops them.
- release: when a borrowed object leaves scope in a process (no instance, no
  pending task, no stored object containing it), its credit goes back to the
  owner in one ``borrow`` notification with a negative count (batched per owner
  per loop iteration). The owner frees the object when its own refs, its stored
  objects and all borrowers are gone.

Messages to one owner travel on one connection, so a process's registrations
on behalf of others always precede its own return. A return from another
process may overtake a registration; the count then dips below zero for a
moment, which still counts as held (reference_counter.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import Address, BorrowEntry, ContainedRef, HostPort

if TYPE_CHECKING:
    from aioray._private.core.interfaces import BorrowingHost
    from aioray._private.owner.object_ref import ObjectRef

logger = logging.getLogger("aioray")

# A contained ref on the wire: [object id, owner address [ip, port, worker id]].
Pair = ContainedRef
ADOPT = 1
# A ``borrow`` entry as sent (a list; schema.BorrowEntry declares its positions).
Entry = list[bytes | int]


def pairs_of(refs: Iterable[ObjectRef]) -> list[ContainedRef]:
    """Wire pairs for ObjectRefs, each object once."""
    seen: set[bytes] = set()
    out: list[ContainedRef] = []
    for r in refs:
        if r._id not in seen and r._owner is not None:
            seen.add(r._id)
            out.append((r._id, r._owner))
    return out


class Borrowing:
    def __init__(self, cw: BorrowingHost) -> None:
        self.cw = cw
        self._outbox: dict[HostPort, list[Entry]] = {}
        self._flush_scheduled = False
        # Owner side: holds each borrower adopted, by its connection.
        self._held_by: dict[rpc.Connection, dict[bytes, int]] = {}

    def _owns(self, pair: Pair) -> bool:
        return pair[1][2] == self.cw.worker_id

    # -- sending ----------------------------------------------------------------------------
    def lend(self, pairs: Sequence[Pair], then: Callable[[], None]) -> None:
        """(loop) Register one hold per pair for the receiver of a value, then call ``then``.

        ``then`` runs at once when this process owns every ref; otherwise after the
        owners answered (or turned out to be dead: the receiver's get will say so).
        """
        remote: dict[HostPort, list[Entry]] = {}
        for pair in pairs:
            if self._owns(pair):
                self.cw.refs.add_borrowers(pair[0], 1)
            else:
                owner = pair[1]
                remote.setdefault((owner[0], owner[1]), []).append([pair[0], 1])
        if not remote:
            then()
            return
        self.cw.loop.create_task(self._lend_remote(remote, then))

    async def _lend_remote(
        self, remote: dict[HostPort, list[Entry]], then: Callable[[], None]
    ) -> None:
        async def one(addr: HostPort, body: list[Entry]) -> None:
            try:
                conn = await self.cw.connect_peer(*addr)
                await conn.call("borrow", body)
            except (ConnectionError, rpc.RpcError) as e:
                logger.debug("lending to a receiver: owner %s:%d unreachable: %s", *addr, e)

        await asyncio.gather(*[one(a, b) for a, b in remote.items()])
        then()

    # -- receiving ----------------------------------------------------------------------------
    def receive(self, pairs: Sequence[Pair]) -> None:
        """(loop) Holds were registered for this process: record them, and tell each
        owner they are ours (so it can drop them if this process dies)."""
        refs = self.cw.refs
        for pair in pairs:
            if self._owns(pair):
                refs.add_borrowers(pair[0], -1)  # our own object came back: count it here
            else:
                ip, port, worker_id = pair[1]  # (a list on the wire: a tuple here, a key)
                owner = (ip, port, worker_id)
                refs.add_credit(pair[0], owner, 1)
                self._send(owner, [pair[0], 1, ADOPT])

    def hold(self, pairs: Sequence[Pair]) -> None:
        """(loop) A value carrying these refs arrived and is kept here: record the
        holds lent for it and hold the refs until ``refs.remove_contained``."""
        self.receive(pairs)
        self.cw.refs.add_contained(p[0] for p in pairs)

    # -- returning -----------------------------------------------------------------------------
    def release(self, oid: bytes) -> None:
        """(loop) A borrowed object left scope here: give its credit back to the owner."""
        owner, n = self.cw.refs.take_credit(oid)
        if n and owner is not None:
            self._send(owner, [oid, -n])

    def _send(self, owner: Address, entry: Entry) -> None:
        # Adoptions and returns to one owner keep their order: one queue, one connection.
        self._outbox.setdefault((owner[0], owner[1]), []).append(entry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.cw.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for addr, body in outbox.items():
            conn = self.cw.peer(*addr)
            if conn is not None:
                conn.notify("borrow", body)
            else:
                self.cw.loop.create_task(self._send_later(addr, body))

    async def _send_later(self, addr: HostPort, body: list[Entry]) -> None:
        try:
            conn = await self.cw.connect_peer(*addr)
        except ConnectionError:
            return  # the owner is gone, and its objects with it
        conn.notify("borrow", body)

    # -- owner side ----------------------------------------------------------------------------
    def handle_borrow(self, conn: rpc.Connection, body: list[BorrowEntry], _: list[Buffer]) -> bool:
        """Entries: [oid, +n] holds registered for a receiver (by its sender), [oid, n,
        ADOPT] the receiver saying they are its own, [oid, -n] the receiver returning."""
        refs, owned = self.cw.refs, self.cw.owned
        held = self._held_by.get(conn)
        for entry in body:
            oid, n = entry[0], entry[1]
            if oid not in owned:
                continue
            if len(entry) > 2:  # ADOPT: attribute, the count itself is unchanged
                if held is None:
                    held = self._held_by[conn] = {}
                    conn.on_close.append(self._borrower_gone)
                held[oid] = held.get(oid, 0) + n
                continue
            if n < 0 and held:
                h = held.get(oid, 0)
                if h:
                    left = h - min(h, -n)
                    if left:
                        held[oid] = left
                    else:
                        del held[oid]
            refs.add_borrowers(oid, n)
        return True

    def _borrower_gone(self, conn: rpc.Connection) -> None:
        """A borrower's connection closed (it died): its holds go with it."""
        held = self._held_by.pop(conn, None)
        if not held or self.cw.closing:
            return
        for oid, n in held.items():
            if oid in self.cw.owned:
                self.cw.refs.add_borrowers(oid, -n)
