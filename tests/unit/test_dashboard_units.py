"""The dashboard's pure parts and its browser sessions, without a cluster: submit
request checks, State API filters and limits, log confinement, login and Origin."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict

import aioray._private.core.state_schema as schema
from aioray._private.node import runtime_env_packaging as packaging
from aioray._private.rpc.http_service import HttpService
from aioray.dashboard import log_routes, state_routes
from aioray.dashboard.session_auth import COOKIE, Sessions
from aioray.job_submission.models import JobDetails, JobStatus, check_submit_request

TOKEN = "unit-token"


def test_submit_request_names_the_bad_field() -> None:
    ok = check_submit_request({"entrypoint": "echo", "runtime_env": {"env_vars": {"A": "1"}}})
    assert ok["entrypoint"] == "echo" and ok["submission_id"] is None
    uri = "gcs://_aioray_pkg_" + "0" * 32 + ".zip"
    env = {"working_dir": uri, "py_modules": [uri], "pip": ["requests"]}
    ok = check_submit_request({"entrypoint": "echo", "runtime_env": env})
    assert ok["runtime_env"]["working_dir"] == uri  # normalized: pip in its canonical form
    assert ok["runtime_env"]["pip"]["packages"] == ["requests"]
    bad = [
        ([], "JSON object"),
        ({}, "'entrypoint'"),
        ({"entrypoint": "  "}, "'entrypoint'"),
        ({"entrypoint": "x", "submission_id": "a/b"}, "'submission_id'"),
        ({"entrypoint": "x", "entrypoint_num_gpus": -1}, "'entrypoint_num_gpus'"),
        ({"entrypoint": "x", "entrypoint_memory": True}, "'entrypoint_memory'"),
        ({"entrypoint": "x", "entrypoint_resources": {"a": "b"}}, "'entrypoint_resources'"),
        ({"entrypoint": "x", "runtime_env": {"conda": "x"}}, "'conda' is not supported"),
        ({"entrypoint": "x", "runtime_env": {"working_dir": "."}}, "uploaded package URI"),
        ({"entrypoint": "x", "runtime_env": {"py_modules": ["/tmp"]}}, "uploaded package URI"),
        ({"entrypoint": "x", "runtime_env": {"pip": 1}}, "'runtime_env': .*pip"),
        ({"entrypoint": "x", "runtime_env": {"env_vars": {"A": 1}}}, r"\['env_vars'\] must be"),
    ]
    for body, field in bad:
        with pytest.raises(ValueError, match=field):
            check_submit_request(body)


def test_job_details_round_trip_with_rays_fields() -> None:
    d = JobDetails(entrypoint="x", submission_id="s", status=JobStatus.RUNNING)
    data = d.to_json()
    assert data["status"] == "RUNNING" and data["type"] == "SUBMISSION"
    assert JobDetails.from_json({**data, "unknown_field": 1}) == d
    assert JobStatus.STOPPED.is_terminal() and not JobStatus.PENDING.is_terminal()


def test_filter_query_parsing() -> None:
    q = MultiDict([("filter_keys", "state"), ("filter_predicates", "="), ("filter_values", "x")])
    assert state_routes.parse_filters(q) == [("state", "=", "x")]
    tilde = [("filter_keys", "state"), ("filter_predicates", "~"), ("filter_values", "x")]
    with pytest.raises(ValueError, match="Unsupported filter predicate '~'"):
        schema.check_query("tasks", state_routes.parse_filters(MultiDict(tilde)), 10)
    with pytest.raises(ValueError, match="given together"):
        state_routes.parse_filters(MultiDict([("filter_keys", "a")]))


def test_package_routes_accept_only_package_names() -> None:
    name = "_aioray_pkg_" + "ab" * 16 + ".zip"
    assert packaging.package_uri("gcs", name) == "gcs://" + name
    for protocol, bad in (("s3", name), ("gcs", "../token"), ("gcs", name + "/x"), ("gcs", "x")):
        with pytest.raises(ValueError, match="is not a package URI"):
            packaging.package_uri(protocol, bad)
    data = b"z" * (packaging.CHUNK_BYTES + 1)
    entries = packaging.package_entries("gcs://" + name, data)
    assert [k for k, _ in entries] == [f"gcs://{name}#0".encode(), f"gcs://{name}#1".encode(),
                                       f"gcs://{name}".encode()]  # the header last  # fmt: skip
    assert b"".join(v for _, v in entries[:-1]) == data


def test_log_paths_stay_inside(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "gcs.log").write_text("x")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", logs / "link.log")
    assert log_routes.inside(str(logs), "gcs.log") == str(logs / "gcs.log")
    for evil in ("../secret", "/etc/passwd", "link.log", "", ".", "missing.log"):
        assert log_routes.inside(str(logs), evil) is None, evil


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def service() -> AsyncIterator[HttpService]:
    svc = HttpService(token=TOKEN)
    sessions = Sessions(svc)
    svc.add_routes(sessions.routes())
    svc.add_routes([web.get("/hello", _hello), web.post("/change", _hello)])
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def test_login_cookie_and_origin(service: HttpService) -> None:
    base = f"http://{service.host}:{service.port}"
    own = {"Origin": base}
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(base + "/hello") as r:
            assert r.status == 401
        async with s.post(base + "/api/login", data={"token": "wrong"}, headers=own) as r:
            assert r.url.path == "/login" and "Wrong token." in await r.text()
        async with s.post(
            base + "/api/login", data={"token": TOKEN}, headers=own, allow_redirects=False
        ) as r:
            assert r.status == 303
            cookie = r.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with s.get(base + "/hello") as r:
            assert r.status == 200
        async with s.post(base + "/change", headers=own) as r:
            assert r.status == 200
        async with s.post(base + "/change") as r:  # a cookie without Origin
            assert r.status == 403
        async with s.post(base + "/change", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
    bearer = {"Authorization": f"Bearer {TOKEN}"}  # programs: the bearer token, no Origin
    async with aiohttp.ClientSession() as s, s.post(base + "/change", headers=bearer) as r:
        assert r.status == 200
