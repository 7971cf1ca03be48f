"""A peer before its hello passes: the admission of an accepted connection, and the
server's checks of the hello (``connection`` applies both; ``tls_listener`` admits too).

Floor 2 (sockets). Every connection starts with a handshake: the server sends a
``challenge``, the client answers with ``hello`` (protocol version, role, the HMAC of
the challenge under the cluster token, see ``auth``); a peer that fails it, or sends a
malformed or oversized frame, is disconnected with a logged reason while the server
keeps serving everyone else, and the client raises that reason (``rpc.connect``).

Until its hello passes, a peer costs a few KiB: a small receive buffer (grown to
full size after the handshake). A process keeps at most
``config.MAX_PENDING_HANDSHAKES`` such connections, and never more than half the
descriptors it may open: a connection accepted beyond that evicts the one that
has waited longest (a real client answers in one round trip, so silent sockets
cannot crowd it out). A connection accepted onto one of the last
``config.FD_RESERVE`` file descriptors (at most an eighth of the limit) is closed
at once: the process keeps those for its files, pipes and outgoing connections.
Warnings a peer can cause are rate-limited (``peer_log``).
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

from aioray._private.wire import auth, config, protocol
from aioray._private.wire.schema import Hello

# A server's check of a client's hello: the extra fields of its answer, or raise to refuse.
HelloCheck = Callable[[Hello], "Mapping[str, object] | None"]

# Accepted connections of this process whose hello has not passed yet, oldest first,
# each with what drops it: ``(reason, kind)``, as ``Connection`` drops a peer.
handshaking: dict[object, Callable[[str, str], None]] = {}


class HelloRefused(Exception):
    """A hello the server refuses: ``remote_type`` and ``reason`` are sent to the
    client, ``log`` is the peer warning's text and ``kind`` its rate-limit class."""

    def __init__(self, remote_type: str, reason: str, log: str, kind: str) -> None:
        super().__init__(reason)
        self.remote_type = remote_type
        self.reason = reason
        self.log = log
        self.kind = kind


def check_hello(
    body: dict[str, Any], challenge: bytes, hello_check: HelloCheck | None
) -> dict[str, object]:
    """The answer to a hello that passes (its protocol version, its proof of
    ``challenge`` under the cluster token, then ``hello_check``), or raise
    ``HelloRefused`` with the first reason it fails."""
    version = body.get("version")
    if version != protocol.PROTOCOL_VERSION:
        reason = f"protocol version {version!r} != {protocol.PROTOCOL_VERSION}"
        raise HelloRefused("HandshakeError", reason, reason, "handshake")
    refused = auth.check(auth.cluster_token(), challenge, body.get("auth"))
    if refused is not None:
        log = f"authentication failed: {refused}"
        raise HelloRefused("AuthenticationError", refused, log, "authentication")
    try:
        answer = hello_check(cast(Hello, body)) if hello_check else {}
    except Exception as e:
        raise HelloRefused("HandshakeError", str(e), f"handshake refused: {e}", "handshake") from e
    return {"version": protocol.PROTOCOL_VERSION, **(answer or {})}


def max_handshakes() -> int:
    """The cap on handshakes in progress, read at each accept (``TLSListener``)."""
    return config.MAX_PENDING_HANDSHAKES


def admission(sock: socket.socket | None) -> str | None:
    """Why a connection just accepted must be closed at once, or None to serve it
    (after evicting the longest-waiting handshake if too many are in progress)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    reserve = min(config.FD_RESERVE, soft // 8)  # a driver may run under a small limit
    if sock is not None:
        # Descriptors are allocated lowest first: every one below this is open, so
        # accepted connections can never hold the last ones.
        fd = sock.fileno()
        if fd >= soft - reserve:
            return f"file descriptor {fd} is in the last {reserve} of {soft}"
    cap = max(1, min(config.MAX_PENDING_HANDSHAKES, (soft - reserve) // 2))
    if len(handshaking) >= cap:
        drop = next(iter(handshaking.values()))
        drop(f"evicted: {len(handshaking)} handshakes in progress (at most {cap})", "evicted")
    return None
