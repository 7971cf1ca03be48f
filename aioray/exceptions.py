"""Exceptions with Ray's class names, so ``except ray.exceptions.X`` keeps working."""

from __future__ import annotations

import pickle
from typing import Any


class RayError(Exception):
    """Base of every aioray error."""


class RaySystemError(RayError):
    """The system failed (a daemon, a connection, reading a value back), not the user's code.

    As Ray's: ``client_exc`` is the error or its text, ``traceback_str`` where it happened.
    """

    def __init__(self, client_exc: Any = "", traceback_str: str | None = None) -> None:
        self.client_exc = client_exc
        self.traceback_str = traceback_str
        if traceback_str is None:
            super().__init__(client_exc)
        else:
            super().__init__(client_exc, traceback_str)

    def __str__(self) -> str:
        text = f"System error: {self.client_exc}"
        if self.traceback_str:
            text += f"\ntraceback: {self.traceback_str}"
        return text


class UnserializableException(RayError):
    """A task's exception was pickled where it was raised but cannot be rebuilt here
    (e.g. its class's ``__init__`` wants other arguments than its ``args``).

    Carries the original's text and traceback, as captured where it was raised. It
    arrives as the cause of a RayTaskError, so ``get`` raises an exception that is
    both a RayTaskError and an UnserializableException.
    """

    def __init__(self, original_stack_trace: str, reason: str = "") -> None:
        self._original_stack_trace = original_stack_trace
        self.reason = reason
        super().__init__(original_stack_trace, reason)

    @property
    def original_stack_trace(self) -> str:
        """The original exception's text and traceback, as formatted where it was raised."""
        return self._original_stack_trace

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"Failed to deserialize the exception{why}. Original exception:\n"
            f"{self._original_stack_trace}"
        )


class RayTaskError(RayError):
    """A task raised. ``get`` raises an instance of both this class and the cause's class."""

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        pid: int | None = None,
        ip: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        # Not super(): in a dual class the next __init__ is the cause class's, which
        # would run on this message and overwrite the cause's attributes.
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        where = f" (pid={self.pid}, ip={self.ip})" if self.pid is not None else ""
        kind = type(self.cause).__name__ if self.cause else "Error"
        return f"{kind} in {self.function_name}(){where}\n{self.traceback_str}"

    def __str__(self) -> str:
        return self._message()

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an exception that is both a RayTaskError and the cause's class."""
        cause = self.cause
        if cause is None or isinstance(cause, RayTaskError):
            return self
        cause_cls = type(cause)
        try:
            cls = _dual_class(cause_cls)
            err: RayTaskError = RayTaskError.__new__(cls)
            err.args = cause.args
            err.__dict__.update(getattr(cause, "__dict__", {}))
            RayTaskError.__init__(
                err, self.function_name, self.traceback_str, cause, self.pid, self.ip
            )
            err.args = cause.args
            return err
        except TypeError:  # a cause class that cannot be a base (e.g. with __slots__ clash)
            return self

    def __reduce__(self) -> Any:
        # The cause travels pickled on its own, so that a cause that cannot be rebuilt
        # on the reader's side costs only the cause, not the text and traceback.
        return (
            _rebuild_task_error,
            (self.function_name, self.traceback_str, _pickle_cause(self.cause), self.pid, self.ip),
        )


def _pickle_cause(cause: BaseException | None) -> bytes | None:
    if cause is None:
        return None
    import cloudpickle  # (here: the daemons import this module, and never pickle a cause)

    try:
        return cloudpickle.dumps(cause, protocol=5)
    except Exception as e:  # as Ray: the cause is replaced by a RayError saying why
        return pickle.dumps(
            RayError(
                f"The original cause of the RayTaskError ({type(cause)}) isn't serializable: "
                f"{e}. Overwriting the cause to a RayError."
            )
        )


def _rebuild_task_error(
    function_name: str, traceback_str: str, cause: bytes | None, pid: int | None, ip: str | None
) -> RayTaskError:
    rebuilt: BaseException | None = None
    if cause is not None:
        try:
            rebuilt = pickle.loads(cause)
        except Exception as e:
            rebuilt = UnserializableException(traceback_str, f"{type(e).__name__}: {e}")
    return RayTaskError(function_name, traceback_str, rebuilt, pid, ip)


_dual_classes: dict[type, type[RayTaskError]] = {}


def _dual_class(cause_cls: type) -> type[RayTaskError]:
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        name = f"RayTaskError({cause_cls.__name__})"

        def _str(self: RayTaskError) -> str:
            return RayTaskError._message(self)

        cls = type(name, (RayTaskError, cause_cls), {"__str__": _str, "__module__": __name__})
        _dual_classes[cause_cls] = cls
    return cls


class GetTimeoutError(RayError, TimeoutError):
    """``get`` timed out."""


class TaskCancelledError(RayError):
    """The task was cancelled before it finished."""

    def __init__(self, task_id: str | None = None, message: str = "") -> None:
        self.task_id = task_id
        super().__init__(message or f"Task {task_id} was cancelled")


class WorkerCrashedError(RayError):
    """The worker executing the task died unexpectedly."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The worker died unexpectedly while executing this task "
            "(os._exit, a signal, or out of memory)."
        )


class ObjectLostError(RayError):
    """Every copy of the object is lost and it cannot be rebuilt."""

    def __init__(self, object_ref_hex: str = "", message: str = "") -> None:
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost and cannot be reconstructed.")


class ObjectFreedError(ObjectLostError):
    """The object was freed: its last reference went out of scope."""


class OwnerDiedError(ObjectLostError):
    """The process that owns the object died."""


class ObjectStoreFullError(RayError):
    """The object store has no room for the object."""


class OutOfDiskError(RayError):
    """The object store is full and the local disk is too full to spill to."""


class OutOfMemoryError(RayError):
    """The node ran out of memory and the worker was killed."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Lineage reconstruction of the object failed."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """The task that makes the object has no retries left to rebuild it."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """The lineage needed to rebuild the object was not kept (over the lineage budget)."""


class RayActorError(RayError):
    """The actor died or could not be created."""


class ActorDiedError(RayActorError):
    """The actor is dead."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (e.g. restarting)."""


class TaskUnschedulableError(RayError):
    """The task can never be scheduled (e.g. affinity to a dead node)."""


class ActorUnschedulableError(RayError):
    """The actor can never be scheduled."""


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed, so it can never run."""


class ActorPlacementGroupRemoved(RayError):
    """The actor's placement group was removed."""


class PendingCallsLimitExceeded(RayError):
    """Too many calls are queued on the actor (max_pending_calls)."""


class RuntimeEnvSetupError(RayError):
    """The runtime environment could not be set up (the message ends with the tool's output)."""

    def __init__(self, error_message: str | None = None) -> None:
        self.error_message = error_message
        super().__init__(error_message)

    def __str__(self) -> str:
        msg = "Failed to set up runtime environment."
        return f"{msg}\n{self.error_message}" if self.error_message else msg


class CrossLanguageError(RayError):
    """An error raised across languages (Ray's name; aioray runs Python only)."""


class LocalRayletDiedError(RayError):
    """The raylet of this process's node died: a driver's tasks not finished yet fail."""

    def __str__(self) -> str:
        if self.args:
            return str(self.args[0])
        return "The task's local raylet died. Check raylet.out for more information."


class NodeDiedError(RayError):
    """The node a task was running on died (or became unreachable) before it finished."""

    def __init__(self, message: str = "") -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching the object from another node timed out."""


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """The object's owner no longer has it: it went out of scope there while this
    reference existed (a reference the owner never counted, e.g. one rebuilt from an id
    and an owner address)."""

    def __init__(self, object_ref_hex: str = "", message: str = "") -> None:
        super().__init__(
            object_ref_hex,
            message
            or f"Failed to retrieve object {object_ref_hex}. The object has already been "
            "deleted by the reference counting protocol. This should not happen.",
        )


class RpcError(RayError):
    """A remote procedure call failed (``rpc_code`` says how, when known)."""

    def __init__(self, message: str = "", rpc_code: int | None = None) -> None:
        self.rpc_code = rpc_code
        super().__init__(message)


class PlasmaObjectNotAvailable(RayError):
    """The object was not available within the given timeout."""


class AsyncioActorExit(RayError):
    """Raised when an asyncio actor intentionally exits via exit_actor()."""


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor with that name already exists in the namespace (also a ValueError,
    which is what Ray raised before the class existed)."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return self.error_message


class ActorHandleNotFoundError(ValueError, RayError):
    """``kill`` of an actor handle made in a previous session (before shutdown and init);
    also a ValueError, as in Ray."""

    def __init__(self, error_message: str) -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return self.error_message


class AuthenticationError(RayError, ConnectionError):
    """A connection offered no cluster token, or another cluster's."""


class ObjectRefStreamEndOfStreamError(RayError):
    """A streaming generator has no more items."""


class StreamingGeneratorReplayInconsistentError(RaySystemError):
    """A retried streaming generator produced different items the second time."""


class OufOfBandObjectRefSerializationException(RayError):  # (sic: Ray's spelling)
    """An ObjectRef was pickled with a plain pickler, outside aioray's serialization."""


class UserCodeException(RayError):
    """An exception raised by user code (a marker base used by Ray's libraries)."""


class ActorExit(BaseException):
    """Raised by exit_actor(): unwinds the calling method; the worker then exits.

    (aioray.actor.exit_actor raises it; it lives here, at the bottom, because the worker
    daemon that catches it sits below the public API.)"""


__all__ = [
    "ActorAlreadyExistsError",
    "ActorDiedError",
    "ActorHandleNotFoundError",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "AsyncioActorExit",
    "AuthenticationError",
    "CrossLanguageError",
    "GetTimeoutError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectFreedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectRefStreamEndOfStreamError",
    "ObjectStoreFullError",
    "OufOfBandObjectRefSerializationException",
    "OutOfDiskError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "PlasmaObjectNotAvailable",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "ReferenceCountingAssertionError",
    "RpcError",
    "RuntimeEnvSetupError",
    "StreamingGeneratorReplayInconsistentError",
    "TaskCancelledError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "UnserializableException",
    "UserCodeException",
    "WorkerCrashedError",
]
