"""``aioray.util.serialization``: custom serializers for a class (Ray's API)."""

from aioray._private.wire.serialization import deregister_serializer, register_serializer

__all__ = ["deregister_serializer", "register_serializer"]
