"""The GCS's internal key-value store (Ray's ``ray.experimental.internal_kv``).

Keys and values are bytes (str is encoded as UTF-8). The store is durable: it is
written through to the GCS's SQLite database and survives a GCS restart.
"""

from __future__ import annotations

from aioray.api import gcs_call


def _bytes(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


def _ns(namespace: bytes | str | None) -> str:
    if namespace is None:
        return ""
    return namespace.decode() if isinstance(namespace, bytes) else namespace


def _internal_kv_initialized() -> bool:
    from aioray.api import is_initialized

    return is_initialized()


def _internal_kv_put(
    key: bytes | str,
    value: bytes | str,
    overwrite: bool = True,
    *,
    namespace: bytes | str | None = None,
) -> bool:
    """Store ``value``; True when the key already existed (Ray's return value)."""
    existed = _internal_kv_exists(key, namespace=namespace)
    gcs_call("kv_put", [_ns(namespace), _bytes(key), _bytes(value), bool(overwrite)])
    return existed


def _internal_kv_get(key: bytes | str, *, namespace: bytes | str | None = None) -> bytes | None:
    value = gcs_call("kv_get", [_ns(namespace), _bytes(key)])
    return None if value is None else bytes(value)


def _internal_kv_exists(key: bytes | str, *, namespace: bytes | str | None = None) -> bool:
    return _internal_kv_get(key, namespace=namespace) is not None


def _internal_kv_del(
    key: bytes | str, *, del_by_prefix: bool = False, namespace: bytes | str | None = None
) -> int:
    keys = _internal_kv_list(key, namespace=namespace) if del_by_prefix else [_bytes(key)]
    return sum(bool(gcs_call("kv_del", [_ns(namespace), k])) for k in keys)


def _internal_kv_list(prefix: bytes | str, *, namespace: bytes | str | None = None) -> list[bytes]:
    return [bytes(k) for k in gcs_call("kv_keys", [_ns(namespace), _bytes(prefix)])]
