"""``HttpService``: the one aiohttp application a process serves, and its security.

Floor 2 (transport). Each feature brings a route table (a list of ``web.RouteDef``,
e.g. ``metrics_export.routes``; the dashboard adds its own) to the same application.
Every route needs the cluster token (``Authorization: Bearer <token>``, compared in
constant time), except the health check and paths a feature declares public; a
feature may add another way in (``add_authenticator``: the dashboard's session
cookie). The service binds to loopback unless given another host or a socket.
Hostile input gets a 4xx and the daemon carries on: no token 401, unknown path 404,
an over-long request line or header 400 (aiohttp's parser, limits below), a body over
``MAX_BODY_BYTES`` 413; a handler's own exception is logged and answered 500.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from aioray._private.wire import auth

logger = logging.getLogger(__name__)

HEALTH_PATH = "/api/healthz"
MAX_LINE_BYTES = 8190  # the request line and each header line
MAX_HEADER_BYTES = 8190  # one header field
MAX_BODY_BYTES = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Authenticator = Callable[[web.Request], bool]


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class HttpService:
    """One process's HTTP server: feature routes behind the cluster token."""

    def __init__(self, token: str | None = None, public: Iterable[str] = ()) -> None:
        # Authentication is off only when the cluster's is (AIORAY_AUTH_MODE=disabled).
        self.token = token if token is not None else auth.cluster_token()
        self.public = {HEALTH_PATH, *public}
        self.authenticators: list[Authenticator] = []
        self.app = web.Application(
            middlewares=[self._errors, self._authenticate], client_max_size=MAX_BODY_BYTES
        )
        self.app.router.add_get(HEALTH_PATH, _healthz)
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    def __repr__(self) -> str:
        return f"<HttpService {self.host}:{self.port} routes={len(self.app.router.routes())}>"

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Add a feature's route table (before ``start``)."""
        self.app.add_routes(list(routes))

    def add_authenticator(self, check: Authenticator) -> None:
        """Another way to be let in (checked after the bearer token)."""
        self.authenticators.append(check)

    async def start(
        self, sock: socket.socket | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Serve on ``sock`` (a bound socket, e.g. passed by the node), else on host:port."""
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        await runner.setup()
        self._runner = runner
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.setblocking(False)
        site = web.SockSite(runner, sock)
        await site.start()
        self.host, self.port = sock.getsockname()[:2]

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def allowed(self, request: web.Request) -> bool:
        if self.token is None or request.path in self.public:
            return True
        given = bearer_token(request)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        return any(check(request) for check in self.authenticators)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Before routing's answer too: without the token, every path is a 401 (no probing).
        if not self.allowed(request):
            why = "a wrong cluster token" if bearer_token(request) else "no cluster token"
            return web.json_response(
                {
                    "result": False,
                    "msg": f"Unauthorized: {why}. Send 'Authorization: Bearer <token>' with "
                    f"the cluster's token (${auth.TOKEN_ENV}, or the session's "
                    f"{auth.TOKEN_FILE} file).",
                },
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="aioray"'},
            )
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return web.json_response({"result": False, "msg": "internal error"}, status=500)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="success")
