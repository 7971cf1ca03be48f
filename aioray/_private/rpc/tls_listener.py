"""A listening socket whose connections are admitted, then wrapped in TLS: ``rpc.Server``
uses it when TLS is on (``tls``).

Floor 2 (sockets). Connections are accepted as plain TCP, so the admission rules
(the fd reserve, the cap on handshakes in progress) apply before TLS costs any
memory, and TLS state is made only once the peer has sent something (a silent
socket costs ~2 KiB, a TLS handshake ~50 KiB). The handshake runs with a timeout
(from the accept on), and a peer that fails it (no
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
        self.handshaking: dict[asyncio.Task[None], None] = {}  # oldest first
        self._accepting: asyncio.Task[None] | None = None
        self._stopping = False

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
            if reason is not None:
                self.refused(peer, reason)
                sock.close()
                continue
            if len(self.handshaking) >= self.max_handshakes():
                # As before a hello: the one that has waited longest makes room.
                next(iter(self.handshaking)).cancel()
            task = loop.create_task(self._handshake(sock, peer))
            self.handshaking[task] = None
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.handshaking.pop(task, None)

    async def _handshake(self, sock: socket.socket, peer: object) -> None:
        loop = asyncio.get_running_loop()
        protocol = self.factory()
        try:
            # TLS state costs ~50 KiB: a peer that has sent nothing yet does not get it.
            deadline = loop.time() + self.timeout
            await asyncio.wait_for(_readable(loop, sock), self.timeout)
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self.ctx,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()),
            )
        except asyncio.CancelledError:
            why = f"evicted: {len(self.handshaking)} TLS handshakes in progress"
        except (OSError, asyncio.TimeoutError, ssl.SSLError, ConnectionError) as e:
            why = f"TLS handshake failed: {e or type(e).__name__}"
        else:
            return
        if not self._stopping:
            self.refused(peer, why)
        sock.close()
        protocol.connection_lost(None)  # never connected: let its owner forget it

    async def stop(self) -> None:
        self._stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for task in list(self.handshaking):
            task.cancel()
        self.listener.close()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until ``sock`` has data (or was closed by its peer)."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
