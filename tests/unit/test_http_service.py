"""The HTTP layer (_private/rpc/http_service.py): token auth, hostile requests, and
the text format renderer.

Real aiohttp servers on loopback; no cluster.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_text import ExpositionError, parse

from aioray._private.rpc.http_service import HEALTH_PATH, HttpService
from aioray._private.wire.prometheus import Exposition

TOKEN = "s3cret-token"


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug in a handler")


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


@pytest.fixture
async def service() -> AsyncIterator[HttpService]:
    svc = HttpService(token=TOKEN)
    svc.add_routes([web.get("/hello", _hello), web.get("/boom", _boom), web.post("/echo", _echo)])
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def _url(svc: HttpService, path: str) -> str:
    return f"http://{svc.host}:{svc.port}{path}"


async def _status(svc: HttpService, path: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(_url(svc, path), **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_binds_to_loopback_by_default(service: HttpService) -> None:
    assert service.host == "127.0.0.1"


async def test_every_route_needs_the_token_but_the_health_check(service: HttpService) -> None:
    assert await _status(service, HEALTH_PATH) == (200, "success")
    status, text = await _status(service, "/hello")
    assert status == 401 and "no cluster token" in text and "Authorization: Bearer" in text
    status, text = await _status(service, "/hello", headers={"Authorization": "Bearer nope"})
    assert status == 401 and "a wrong cluster token" in text
    assert (await _status(service, "/hello", headers={"Authorization": TOKEN}))[0] == 401
    assert await _status(service, "/hello", headers=BEARER) == (200, "hello")
    # An unknown path says nothing without the token, 404 with it.
    assert (await _status(service, "/../etc/passwd"))[0] == 401
    assert (await _status(service, "/nowhere", headers=BEARER))[0] == 404


async def test_hostile_requests_get_4xx_and_the_service_survives(service: HttpService) -> None:
    reader, writer = await asyncio.open_connection(service.host, service.port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.split()[1] == b"400"
    writer.close()
    reader, writer = await asyncio.open_connection(service.host, service.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 10)).split()[1] == b"400"
    writer.close()
    async with aiohttp.ClientSession() as s:
        async with s.post(_url(service, "/echo"), data=b"x" * (2 << 20), headers=BEARER) as r:
            assert r.status == 413
        async with s.get(_url(service, "/boom"), headers=BEARER) as r:
            assert r.status == 500
    assert await _status(service, "/hello", headers=BEARER) == (200, "hello")


async def test_another_authenticator_can_let_a_request_in() -> None:
    svc = HttpService(token=TOKEN)
    svc.add_routes([web.get("/hello", _hello)])
    svc.add_authenticator(lambda request: request.cookies.get("session") == "ok")
    await svc.start()
    try:
        assert (await _status(svc, "/hello", cookies={"session": "ok"}))[0] == 200
        assert (await _status(svc, "/hello", cookies={"session": "no"}))[0] == 401
    finally:
        await svc.stop()


def test_exposition_renders_the_format_and_escapes() -> None:
    out = Exposition()
    out.family("ray_c_total", "counter", 'help with \\ and\nnewline and "quotes"')
    out.sample("ray_c_total", [("k", 'a"b\\c\nd')], 3)
    out.gauge("ray_g", "g", [([], math.inf), ([("x", "1")], -1.5)])
    out.gauge("ray_empty", "no samples: no family", [])
    out.family("ray_h", "histogram", "h")
    out.histogram("ray_h", [("k", "v")], [1.0, 2.5], [1, 0, 2], 7.5, 3)
    text = out.text()
    assert "ray_empty" not in text
    assert 'ray_h_bucket{k="v",le="2.5"} 1.0' in text
    assert 'ray_h_bucket{k="v",le="+Inf"} 3.0' in text
    types, samples = parse(text)
    assert types == {"ray_c_total": "counter", "ray_g": "gauge", "ray_h": "histogram"}
    assert samples[("ray_c_total", (("k", 'a"b\\c\nd'),))] == 3.0
    assert samples[("ray_g", ())] == math.inf


def test_the_test_parser_is_strict() -> None:
    with pytest.raises(ExpositionError, match="outside its family"):
        parse("# HELP a x\n# TYPE a gauge\nb 1\n")
    with pytest.raises(ExpositionError, match="not HELP, TYPE or a sample"):
        parse('# TYPE a gauge\na{k="unterminated} 1\n')
    with pytest.raises(ExpositionError, match="_count differs"):
        parse('# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n')
