"""Exceptions with Ray's class names, so ``except ray.exceptions.X`` keeps working."""

from __future__ import annotations

from typing import Any


class RayError(Exception):
    """Base of every aioray error."""


class RaySystemError(RayError):
    """The system failed (a daemon, a connection), not the user's code."""


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
        super().__init__(self._message())

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
        return (
            RayTaskError,
            (self.function_name, self.traceback_str, self.cause, self.pid, self.ip),
        )


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
    """The runtime environment could not be set up."""


class CrossLanguageError(RayError):
    """An error raised across languages (Ray's name; aioray runs Python only)."""


class LocalRayletDiedError(RayError):
    """The raylet of this process's node died."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "The task's local raylet died."


class NodeDiedError(RayError):
    """The node the task or object was on died."""


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching the object from another node timed out."""


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """The object was freed early: a reference counting bug."""


class RpcError(RayError):
    """A remote procedure call failed (``rpc_code`` says how, when known)."""

    def __init__(self, message: str = "", rpc_code: int | None = None) -> None:
        self.rpc_code = rpc_code
        super().__init__(message)


class PlasmaObjectNotAvailable(RayError):
    """The object was not available within the given timeout."""


class AsyncioActorExit(RayError):
    """Raised when an asyncio actor intentionally exits via exit_actor()."""


class ActorAlreadyExistsError(RayError, ValueError):
    """An actor with that name already exists in the namespace (also a ValueError,
    which is what Ray raised before the class existed)."""


class ActorHandleNotFoundError(RayError, ValueError):
    """No actor has that handle or name."""


class AuthenticationError(RayError, ConnectionError):
    """A connection offered no cluster token, or another cluster's."""


class ObjectRefStreamEndOfStreamError(RayError):
    """A streaming generator has no more items."""


class StreamingGeneratorReplayInconsistentError(RayError):
    """A retried streaming generator produced different items the second time."""


class OufOfBandObjectRefSerializationException(RayError):  # (sic: Ray's spelling)
    """An ObjectRef was pickled with a plain pickler, outside aioray's serialization."""


class UnserializableException(RayError):
    """A task's exception could not be pickled; this keeps its text and traceback."""

    def __init__(self, original_stack_trace: str = "") -> None:
        self.original_stack_trace = original_stack_trace
        super().__init__(original_stack_trace)

    def __str__(self) -> str:
        return (
            "Failed to deserialize exception. Refer to https://docs.ray.io/en/latest/"
            "ray-core/objects/serialization.html#custom-serializers-for-exceptions for "
            "more information.\nOriginal exception:\n" + self.original_stack_trace
        )


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
