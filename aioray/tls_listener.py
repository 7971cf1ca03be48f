"""A listening socket whose connections are admitted, then wrapped in TLS: ``rpc.Server``
uses it when TLS is on (``tls``).

Floor 2 (sockets). Connections are accepted as plain TCP, so the admission rules
(the fd reserve, the cap on handshakes in progress) apply before TLS costs any
memory; the TLS handshake then runs with a timeout, and a peer that fails it (no
certificate, one the cluster's CA did not sign, plain TCP) is refused with the
reason logged here, as the client logs its side (``rpc.connect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

Admit = Callable[[socket.socket], "str | None"]
Refused = Callable[[object, str], None]


class TLSListener:
    """Accepts on ``listener``; each admitted socket gets a TLS handshake, then a
    protocol from ``factory`` (whose ``connection_made`` sees the TLS transport)."""

    def __init__(
        self,
        listener: socket.socket,
        ctx: ssl.SSLContext,
        factory: Callable[[], asyncio.BaseProtocol],
        admit: Admit,
        refused: Refused,
        max_handshakes: Callable[[], int],
        timeout: float,
    ) -> None:
        self.listener = listener
        self.ctx = ctx
        self.factory = factory
        self.admit = admit
        self.refused = refused
        self.max_handshakes = max_handshakes
        self.timeout = timeout
        self.handshaking: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.listener.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self.listener)
            except OSError as e:  # EMFILE and the like: let descriptors come back first
                self.refused(None, f"accept failed: {e}")
                await asyncio.sleep(0.1)
                continue
            reason = self.admit(sock)
            if reason is None and len(self.handshaking) >= self.max_handshakes():
                reason = f"{len(self.handshaking)} TLS handshakes already in progress"
            if reason is not None:
                self.refused(peer, reason)
                sock.close()
                continue
            task = loop.create_task(self._handshake(sock, peer))
            self.handshaking.add(task)
            task.add_done_callback(self.handshaking.discard)

    async def _handshake(self, sock: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        protocol = self.factory()
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self.ctx, ssl_handshake_timeout=self.timeout
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError, ConnectionError) as e:
            self.refused(peer, f"TLS handshake failed: {e or type(e).__name__}")
            sock.close()
            protocol.connection_lost(None)  # never connected: let its owner forget it

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for task in list(self.handshaking):
            task.cancel()
        self.listener.close()
