"""``aioray.util.check_serialize``: Ray's serializability report, at Ray's path."""

from aioray._private.wire.serializability import FailureTuple, inspect_serializability

__all__ = ["FailureTuple", "inspect_serializability"]
