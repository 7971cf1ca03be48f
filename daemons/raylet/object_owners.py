"""Which local process owns each object sealed on this node, so an owner's death frees them.

An object's owner is the process that created its ref (the driver or worker that
called put, or the caller of the task that returned it), not necessarily the one
that wrote the segment. When an owner's connection to this raylet closes, the
objects it owned can never be read again (borrowers get OwnerDiedError from the
owner's address), so their segments and spill files go at once.
"""

from __future__ import annotations


class ObjectOwners:
    def __init__(self) -> None:
        self._owner_of: dict[bytes, bytes] = {}
        self._objects_of: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def sealed(self, oid: bytes, owner: bytes | None) -> None:
        if owner:
            self._owner_of[oid] = owner
            self._objects_of.setdefault(owner, set()).add(oid)

    def freed(self, oid: bytes) -> None:
        owner = self._owner_of.pop(oid, None)
        if owner is not None:
            objects = self._objects_of.get(owner)
            if objects is not None:
                objects.discard(oid)
                if not objects:
                    del self._objects_of[owner]

    def owner_died(self, owner: bytes) -> list[bytes]:
        """Forget and return the objects ``owner`` owned."""
        oids = self._objects_of.pop(owner, set())
        for oid in oids:
            self._owner_of.pop(oid, None)
        return list(oids)
