"""Mutual TLS for every connection, configured as Ray's is: where the certificates are.

Floor 1 (no sockets; ``rpc`` applies the contexts). With ``AIORAY_USE_TLS=1`` (or
Ray's ``RAY_USE_TLS=1``) every connection a process opens or accepts is TLS, and
both ends present a certificate signed by the cluster's CA:

- ``AIORAY_TLS_SERVER_CERT`` / ``RAY_TLS_SERVER_CERT``: this process's certificate
  (PEM), presented as a server and as a client alike;
- ``AIORAY_TLS_SERVER_KEY`` / ``RAY_TLS_SERVER_KEY``: its private key;
- ``AIORAY_TLS_CA_CERT`` / ``RAY_TLS_CA_CERT``: the CA that signs every member's
  certificate; a peer whose certificate it did not sign, or that has none, is
  refused during the TLS handshake.

A peer is identified by its certificate's chain, not by its host name (nodes dial
each other by IP, as in Ray). TLS protects the traffic; the cluster token (``auth``)
is still checked inside it. docs/security.md shows how to make the certificates.
"""

from __future__ import annotations

import os
import ssl

USE_ENV = ("AIORAY_USE_TLS", "RAY_USE_TLS")
CERT_ENV = ("AIORAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_CERT")
KEY_ENV = ("AIORAY_TLS_SERVER_KEY", "RAY_TLS_SERVER_KEY")
CA_ENV = ("AIORAY_TLS_CA_CERT", "RAY_TLS_CA_CERT")

_contexts: dict[tuple[str, ...], ssl.SSLContext] = {}


class TLSConfigError(ValueError):
    """TLS is on, but its certificates are missing or cannot be loaded."""


def _env(names: tuple[str, ...]) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return ""


def enabled() -> bool:
    """Whether this process speaks TLS (read from the environment each time)."""
    return _env(USE_ENV).lower() in ("1", "true", "yes")


def server_context() -> ssl.SSLContext | None:
    """The context a server wraps accepted connections in, or None without TLS."""
    return _context(server_side=True) if enabled() else None


def client_context() -> ssl.SSLContext | None:
    """The context a client wraps its connections in, or None without TLS."""
    return _context(server_side=False) if enabled() else None


def _context(server_side: bool) -> ssl.SSLContext:
    paths = (_env(CERT_ENV), _env(KEY_ENV), _env(CA_ENV))
    key = (str(server_side), *paths)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _contexts[key] = make_context(*paths, server_side=server_side)
    return ctx


def make_context(cert: str, key: str, ca: str, *, server_side: bool) -> ssl.SSLContext:
    """A mutual-TLS context: presents ``cert``/``key``, requires a peer signed by ``ca``."""
    missing = [
        names[0] for names, value in ((CERT_ENV, cert), (KEY_ENV, key), (CA_ENV, ca)) if not value
    ]
    if missing:
        raise TLSConfigError(f"TLS is on ({USE_ENV[0]}=1) but {', '.join(missing)} is not set")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as e:
        raise TLSConfigError(f"cannot load the TLS certificates ({cert}, {key}, {ca}): {e}") from e
    ctx.verify_mode = ssl.CERT_REQUIRED  # both sides: a peer without a valid cert is refused
    ctx.check_hostname = False
    return ctx


def reset() -> None:
    """Forget the contexts built so far (after the certificates changed)."""
    _contexts.clear()
