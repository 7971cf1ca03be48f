"""ObjectRef: the user's handle to an object, counted by its process's CoreWorker."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from aioray import serialization

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker

# The CoreWorker of this process (driver or worker); set when it starts.
_core_worker: CoreWorker | None = None


def set_core_worker(cw: CoreWorker | None) -> None:
    global _core_worker
    _core_worker = cw


class ObjectRef:
    """A reference to an object in the cluster: a future for a task's result or a put value."""

    __slots__ = ("__weakref__", "_cw", "_id", "_owner")

    def __init__(self, object_id: bytes, owner: tuple[str, int, bytes] | None, _count: bool = True):
        self._id = object_id
        self._owner = owner
        cw = _core_worker
        self._cw = cw if _count else None
        if self._cw is not None:
            self._cw.refs.add_local(object_id)

    def __del__(self) -> None:
        cw = self._cw
        if cw is not None:
            try:
                cw.refs.remove_local(self._id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> str:
        return self._id[:16].hex()

    @property
    def owner_address(self) -> tuple[str, int, bytes] | None:
        return self._owner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def _repr_html_(self) -> str:
        from aioray import _html

        return _html.object_ref_html(self)

    def __reduce__(self) -> Any:
        serialization.record_ref(self)
        return (_rebuild_ref, (self._id, self._owner))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._async_get().__await__()

    async def _async_get(self) -> Any:
        from aioray import api

        return await api.get_async(self)

    def as_future(self) -> asyncio.Future[Any]:
        """An asyncio future on the running loop that resolves to the value."""
        return asyncio.ensure_future(self._async_get())

    def future(self) -> concurrent.futures.Future[Any]:
        """A concurrent.futures.Future that resolves to the value (or its error)."""
        from aioray import api

        return api.get_future(self)


def _rebuild_ref(object_id: bytes, owner: tuple[str, int, bytes] | None) -> ObjectRef:
    if owner is not None:
        owner = (owner[0], owner[1], owner[2])
    return ObjectRef(object_id, owner)
