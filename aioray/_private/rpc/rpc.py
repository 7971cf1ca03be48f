"""Connections and RPC over TCP: connecting to a server, and serving (``Server``).

Floor 2 (sockets): the public face of the RPC layer, over ``connection`` (one
``Connection``: framing, dispatch, replies) and ``handshake`` (admission, the hello),
whose names it re-exports. ``connect`` opens a connection and proves the cluster
token; a ``Server`` listens (plain TCP, or TLS through ``tls_listener``) and gives
each connection it accepts the same table of handlers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aioray._private.rpc import tls
from aioray._private.rpc.answer import Answer as Answer
from aioray._private.rpc.connection import HELLO_BUFFER_BYTES as HELLO_BUFFER_BYTES
from aioray._private.rpc.connection import RECEIVE_BUFFER_BYTES as RECEIVE_BUFFER_BYTES
from aioray._private.rpc.connection import Connection as Connection
from aioray._private.rpc.connection import ConnectionLost as ConnectionLost
from aioray._private.rpc.connection import Handler as Handler
from aioray._private.rpc.connection import Reply as Reply
from aioray._private.rpc.connection import RpcError as RpcError
from aioray._private.rpc.connection import async_table as async_table
from aioray._private.rpc.connection import flush_peer_warnings
from aioray._private.rpc.connection import handlers_of as handlers_of
from aioray._private.rpc.connection import peer_warnings as peer_warnings
from aioray._private.rpc.handshake import HelloCheck as HelloCheck
from aioray._private.rpc.handshake import admission, max_handshakes
from aioray._private.rpc.handshake import handshaking as _handshaking  # noqa: F401 (tests)
from aioray._private.rpc.tls_listener import TLSListener
from aioray._private.wire import auth, config, protocol
from aioray._private.wire.schema import Hello

logger = logging.getLogger(__name__)  # the same logger as connection's

HANDSHAKE_TIMEOUT_S = config.HANDSHAKE_TIMEOUT_S


def _refused(peer: object, reason: str) -> None:
    due = peer_warnings.warning("refused", "refused a connection from %s: %s", peer, reason)
    if due is not None:
        loop = asyncio.get_running_loop()
        loop.call_later(due, flush_peer_warnings, loop)


async def connect(
    host: str,
    port: int,
    handlers: dict[str, Handler] | None = None,
    hello: Hello | None = None,
    *,
    timeout: float = 10.0,
    name: str = "",
    token: str | None = None,
) -> tuple[Connection, Any]:
    """Open a connection and perform the handshake; return it with the server's answer.

    ``token``: the cluster token to prove (default: this process's, ``auth``)."""
    loop = asyncio.get_running_loop()
    ctx = tls.client_context()
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(handlers, name=name), host, port, ssl=ctx),
            timeout,
        )
    except ssl.SSLError as e:
        logger.warning("TLS handshake with %s:%d failed: %s", host, port, e)
        raise ConnectionError(f"TLS handshake with {host}:{port} failed: {e}") from None
    except (OSError, asyncio.TimeoutError) as e:
        raise ConnectionError(f"cannot connect to {host}:{port}: {e or 'timed out'}") from None
    body: Hello = {"version": protocol.PROTOCOL_VERSION, **(hello or {})}
    try:
        token = token or auth.cluster_token()
        if token is not None:
            # The challenge is already on its way: this waits for it, not a round trip.
            body["auth"] = auth.proof(token, await asyncio.wait_for(conn.challenge, timeout))
        answer = await asyncio.wait_for(conn.call("hello", body), timeout)
    except RpcError as e:
        conn.close()
        cls = (
            auth.AuthenticationError if e.remote_type == "AuthenticationError" else ConnectionError
        )
        raise cls(f"{host}:{port} refused the handshake: {e.remote_message}") from None
    except (ConnectionError, asyncio.TimeoutError) as e:
        conn.close()
        raise ConnectionError(f"handshake with {host}:{port} failed: {e}") from None
    return conn, answer


class Server:
    """A listening socket whose connections dispatch to a table of handlers."""

    def __init__(
        self,
        handlers: dict[str, Handler],
        hello_check: HelloCheck | None = None,
        on_connect: Callable[[Connection], None] | None = None,
    ) -> None:
        self._handlers = handlers
        self._hello_check = hello_check
        self._on_connect = on_connect
        self._is_async = async_table(handlers)
        self._server: asyncio.AbstractServer | None = None
        self._tls_listener: TLSListener | None = None
        self.connections: set[Connection] = set()
        self.host = ""
        self.port = 0

    def _make(self) -> Connection:
        conn = Connection(
            self._handlers,
            server_side=True,
            hello_check=self._hello_check,
            is_async=self._is_async,
            hello_timeout=HANDSHAKE_TIMEOUT_S,
        )
        self.connections.add(conn)
        conn.on_close.append(self.connections.discard)
        if self._on_connect:
            self._on_connect(conn)
        return conn

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        ctx = tls.server_context()  # read once: TLS is on for the server's lifetime
        if ctx is not None:
            if sock is None:
                sock = socket.create_server((host, port), reuse_port=False)
            self._tls_listener = TLSListener(
                sock, ctx, self._make, admission, _refused, max_handshakes, HANDSHAKE_TIMEOUT_S
            )
            self._tls_listener.start()
            name = sock.getsockname()
        elif sock is not None:
            self._server = await loop.create_server(self._make, sock=sock)
            name = self._server.sockets[0].getsockname()
        elif _is_ip(host):
            # Bound here: the loop would resolve the address on a thread pool (uvloop starts
            # four threads for it, each with its own malloc arena: ~3 MiB per worker).
            sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
            self._server = await loop.create_server(self._make, sock=sock)
            name = self._server.sockets[0].getsockname()
        else:
            self._server = await loop.create_server(self._make, host, port, reuse_address=True)
            name = self._server.sockets[0].getsockname()
        self.host, self.port = name[0], name[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._tls_listener is not None:
            await self._tls_listener.stop()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


async def gather_settled(aws: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await everything; return results or exceptions, never raise."""
    return list(await asyncio.gather(*aws, return_exceptions=True))
