"""Values to bytes and back: cloudpickle, protocol 5, buffers kept out of band.

Large contiguous buffers (numpy arrays, bytes-likes) are not copied into the pickle
stream; they travel as separate raw buffers (frames on the wire, aligned sections
in a shared-memory segment) and come back as zero-copy views. ObjectRefs found
inside a value are collected while pickling, so the owner knows which refs a value
carries (borrowing: docs/architecture.md, "Ownership"). ``Any`` here is the user's
value: whatever a task takes, returns or puts.
"""

from __future__ import annotations

import io
import pickle
import threading
import traceback
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from aioray._private.wire import serializability
from aioray._private.wire.protocol import Buffer
from aioray.exceptions import RaySystemError

if TYPE_CHECKING:
    from aioray._private.owner.object_ref import ObjectRef

_capture = threading.local()


def _code_reduce_keeping_filename(
    code: types.CodeType,
) -> tuple[Callable[..., types.CodeType], tuple[object, ...]]:
    """cloudpickle's code reducer, but keeping ``co_filename`` (cloudpickle >= 3 writes
    "<dynamic-code>"): a task's traceback then names the user's file and shows its lines,
    as Ray's (whose vendored cloudpickle keeps it) does."""
    rebuild, args = _cloudpickle_code_reduce(code)
    if len(args) > _CO_FILENAME and args[_CO_FILENAME] == "<dynamic-code>":
        args = (*args[:_CO_FILENAME], code.co_filename, *args[_CO_FILENAME + 1 :])
    return rebuild, args


_CO_FILENAME = 10  # its place in types.CodeType's arguments (Python 3.10 to 3.13)
_cloudpickle_code_reduce = cloudpickle.CloudPickler._dispatch_table[types.CodeType]
cloudpickle.CloudPickler._dispatch_table[types.CodeType] = _code_reduce_keeping_filename


class SerializedObject:
    """A pickled value: the in-band stream, its out-of-band buffers, refs it holds."""

    __slots__ = ("buffers", "contained_refs", "data", "is_error")

    def __init__(
        self,
        data: bytes,
        buffers: list[Buffer],
        contained_refs: list[ObjectRef] | None = None,
        is_error: bool = False,
    ) -> None:
        self.data = data
        self.buffers = buffers
        self.contained_refs = contained_refs or []
        self.is_error = is_error

    @property
    def total_bytes(self) -> int:
        n = len(self.data)
        for b in self.buffers:
            n += b.nbytes if isinstance(b, memoryview) else len(b)
        return n


def record_ref(ref: ObjectRef) -> bool:
    """Called by ObjectRef.__reduce__: remember a ref pickled inside the current value.
    False if no value is being serialized here: the ref is pickled out of band (plain
    pickle or cloudpickle), where nothing will hold it for the reader."""
    refs = getattr(_capture, "refs", None)
    if refs is None:
        return False
    refs.append(ref)
    return True


def serialize(value: Any, is_error: bool = False) -> SerializedObject:
    """Pickle ``value``; raises TypeError naming the value when it cannot be pickled."""
    # Fast path for the commonest tiny values: no cloudpickle machinery.
    if value is None or type(value) in (int, float, bool, str, bytes):
        return SerializedObject(pickle.dumps(value, 5), [], None, is_error)
    buffers: list[Buffer] = []
    previous = getattr(_capture, "refs", None)
    refs: list[ObjectRef] = []
    _capture.refs = refs
    try:
        data = cloudpickle.dumps(
            value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw())
        )
    except Exception as e:
        raise TypeError(
            f"Could not serialize {_short_repr(value)}: {type(e).__name__}: {e}\n"
            + serializability.report(value)
        ) from e
    finally:
        _capture.refs = previous
    return SerializedObject(data, buffers, refs, is_error)


def deserialize(data: Buffer, buffers: Sequence[Buffer] = ()) -> Any:
    return pickle.loads(data, buffers=buffers)


def unreadable(e: Exception) -> Exception:
    """The error ``get`` raises when a stored value cannot be unpickled here: Ray's
    RaySystemError, carrying the original error and where it was raised."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return RaySystemError(e, tb)


def dumps_function(fn: Callable[..., Any] | type) -> bytes:
    return cloudpickle.dumps(fn, protocol=5)


def register_serializer(
    cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]
) -> None:
    """Pickle instances of ``cls`` as ``deserializer(serializer(obj))`` (Ray's API).

    The deserializer travels with each value, so other processes need no registration;
    values this process pickles use it from now on."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer takes a class, got {cls!r}")

    def reduce(obj: Any) -> tuple[Callable[[Any], Any], tuple[Any]]:
        return deserializer, (serializer(obj),)

    cloudpickle.CloudPickler._dispatch_table[cls] = reduce


def deregister_serializer(cls: type) -> None:
    """Undo ``register_serializer(cls, ...)``; a class never registered is an error."""
    try:
        del cloudpickle.CloudPickler._dispatch_table[cls]
    except KeyError:
        raise ValueError(f"No serializer is registered for {cls!r}.") from None


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def pickles(value: Any) -> bool:
    try:
        cloudpickle.dump(value, io.BytesIO(), protocol=5)
        return True
    except Exception:
        return False
