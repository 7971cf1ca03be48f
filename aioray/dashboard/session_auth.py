"""Browser sessions and request-origin checks for the dashboard.

Programs send the cluster token (``Authorization: Bearer``). Browsers log in once on
``/login``: the token is exchanged for a random session id in an HttpOnly,
SameSite=Strict cookie (scripts cannot read it, other sites cannot send it). A
state-changing request (POST, PUT, DELETE) that carries an ``Origin`` must come from
the dashboard's own origin, and one authenticated by the cookie must carry it.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from aiohttp import web

from aioray._private.rpc.http_service import Handler, HttpService

COOKIE = "aioray_session"
LOGIN_PATHS = ("/", "/login", "/api/login")
UNSAFE = ("POST", "PUT", "DELETE", "PATCH")
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>aioray · log in</title>
<style>body{font-family:system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;
padding-top:12vh}form{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;
width:26em}input{width:100%;padding:.5em;margin:.6em 0;box-sizing:border-box}
button{padding:.5em 1.2em}.err{color:#b00020}</style></head><body>
<form method="post" action="/api/login"><h2>aioray dashboard</h2>
<p>Paste the cluster token (<code>$AIORAY_TOKEN</code>, or the session's
<code>token</code> file).</p>{error}<input type="password" name="token" autofocus
placeholder="cluster token"><button type="submit">Log in</button></form></body></html>"""


class Sessions:
    """Logged-in browser sessions (in memory: a restart logs everyone out)."""

    def __init__(self, service: HttpService) -> None:
        self.service = service
        self.ids: set[str] = set()
        service.public.update(LOGIN_PATHS)
        service.add_authenticator(self.has_session)
        service.app.middlewares.append(self.check_origin)

    def __repr__(self) -> str:
        return f"<Sessions {len(self.ids)}>"

    def has_session(self, request: web.Request) -> bool:
        sid = request.cookies.get(COOKIE, "")
        return any(hmac.compare_digest(sid, known) for known in self.ids)

    @web.middleware
    async def check_origin(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in UNSAFE:
            origin = request.headers.get("Origin")
            by_cookie = "Authorization" not in request.headers
            if origin is not None and origin not in _own_origins(request):
                return _forbidden(f"Origin {origin} may not change this cluster's state")
            if origin is None and by_cookie and request.path != "/api/login":
                return _forbidden("a browser request that changes state must send Origin")
        return await handler(request)

    async def login_page(self, request: web.Request) -> web.Response:
        failed = "<p class=err>Wrong token.</p>" if "failed" in request.query else ""
        return web.Response(text=LOGIN_PAGE.replace("{error}", failed), content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        form: Any = await request.post()
        token = str(form.get("token", "")).strip()
        expected = self.service.token or ""
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise web.HTTPSeeOther("/login?failed=1")
        sid = os.urandom(32).hex()
        self.ids.add(sid)
        response = web.HTTPSeeOther("/#/overview")
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        self.ids.discard(request.cookies.get(COOKIE, ""))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/login", self.login_page),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
        ]


def _own_origins(request: web.Request) -> set[str]:
    host = request.headers.get("Host", "")
    return {f"http://{host}", f"https://{host}"}


def _forbidden(msg: str) -> web.Response:
    return web.json_response({"result": False, "msg": f"Forbidden: {msg}"}, status=403)
