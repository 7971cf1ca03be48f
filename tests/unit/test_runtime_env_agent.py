"""Unit tests of the node's runtime-env agent: once per env, concurrency, failures, cache.

The agent runs on a plain event loop with an in-memory GCS (no daemons)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from aioray.daemons.raylet import runtime_env_agent
from aioray.daemons.raylet.runtime_env_agent import RuntimeEnvAgent, SetupFailed

from aioray._private.core import runtime_env
from aioray._private.node import runtime_env_packaging


class FakeGcs:
    """kv_put/kv_get in memory; downloads of a package's header counted, optionally held."""

    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.header_reads: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.reading: dict[str, asyncio.Event] = {}

    def put(self, method: str, body: Any) -> Any:
        assert method in ("kv_put", "kv_get")
        if method == "kv_put":
            self.kv[body[1]] = body[2]
            return True
        return self.kv.get(body[1])

    async def call(self, method: str, body: Any) -> Any:
        key = bytes(body[1]).decode()
        if "#" not in key:
            self.header_reads[key] = self.header_reads.get(key, 0) + 1
            self.reading.setdefault(key, asyncio.Event()).set()
            if self.gate is not None:
                await self.gate.wait()
        return self.put(method, body)


def upload_dir(gcs: FakeGcs, root: Path, text: str) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mod.py").write_text(text)
    return runtime_env_packaging.upload_env({"working_dir": str(root)}, gcs.put)


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_env_agent, "RETRY_DELAY_S", 0.0)


async def test_concurrent_first_uses_prepare_once(tmp_path: Path) -> None:
    gcs = FakeGcs()
    env = upload_dir(gcs, tmp_path / "wd", "X = 1\n")
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call)
    key = runtime_env.env_key(env)
    prepared = await asyncio.gather(*(agent.prepare(env, key) for _ in range(20)))
    assert gcs.header_reads == {env["working_dir"]: 1} and agent.setups == 1
    assert len({id(p) for p in prepared}) == 1
    assert prepared[0].cwd == prepared[0].paths[0]
    assert (Path(prepared[0].cwd) / "mod.py").read_text() == "X = 1\n"
    assert agent.pieces[env["working_dir"]].refs == 20


async def test_different_envs_prepare_concurrently(tmp_path: Path) -> None:
    gcs = FakeGcs()
    env_a = upload_dir(gcs, tmp_path / "a", "A = 1\n")
    env_b = upload_dir(gcs, tmp_path / "b", "B = 1\n")
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call)
    gcs.gate = asyncio.Event()  # both downloads are held: each must start before either ends
    a = asyncio.ensure_future(agent.prepare(env_a, runtime_env.env_key(env_a)))
    b = asyncio.ensure_future(agent.prepare(env_b, runtime_env.env_key(env_b)))
    for env in (env_a, env_b):
        await asyncio.wait_for(
            gcs.reading.setdefault(env["working_dir"], asyncio.Event()).wait(), 5
        )
    gcs.gate.set()
    await asyncio.wait_for(asyncio.gather(a, b), 10)
    assert agent.setups == 2


async def test_failure_is_retried_then_remembered(tmp_path: Path, no_retry_delay: None) -> None:
    gcs = FakeGcs()
    env = {"working_dir": "gcs://_aioray_pkg_never_uploaded.zip"}
    key = runtime_env.env_key(env)
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call)
    with pytest.raises(SetupFailed, match="not in the GCS"):
        await agent.prepare(env, key)
    assert gcs.header_reads[env["working_dir"]] == runtime_env_agent.RETRIES
    results = await asyncio.gather(
        *(agent.prepare(env, key) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, SetupFailed) for r in results)
    assert gcs.header_reads[env["working_dir"]] == runtime_env_agent.RETRIES  # not tried again
    assert agent.failure(key) is not None and agent.setups == 1


async def test_failure_is_forgotten_after_a_while(
    tmp_path: Path, no_retry_delay: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gcs = FakeGcs()
    env = {"working_dir": "gcs://_aioray_pkg_never_uploaded.zip"}
    key = runtime_env.env_key(env)
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call)
    with pytest.raises(SetupFailed):
        await agent.prepare(env, key)
    monkeypatch.setattr(runtime_env_agent, "BAD_ENV_TTL_S", -1.0)
    assert agent.failure(key) is None


async def test_setup_timeout_is_not_retried(tmp_path: Path, no_retry_delay: None) -> None:
    gcs = FakeGcs()
    env = upload_dir(gcs, tmp_path / "wd", "X = 1\n")
    env["config"] = {"setup_timeout_seconds": 1, "eager_install": True}
    gcs.gate = asyncio.Event()  # never set: the download hangs
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call)
    with pytest.raises(SetupFailed, match="setup_timeout_seconds=1"):
        await agent.prepare(env, runtime_env.env_key(env))
    assert gcs.header_reads[env["working_dir"]] == 1


async def test_unused_pieces_deleted_past_the_budget(tmp_path: Path) -> None:
    gcs = FakeGcs()
    env = upload_dir(gcs, tmp_path / "wd", "X = 1\n")
    key = runtime_env.env_key(env)
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call, budget=0)
    one = await agent.prepare(env, key)
    await agent.prepare(env, key)
    agent.release(key)
    assert os.path.isdir(one.cwd)  # still used by one worker
    agent.release(key)
    assert not os.path.exists(one.cwd) and key not in agent.envs and not agent.pieces
    again = await agent.prepare(env, key)  # rebuilt on next use
    assert os.path.isdir(again.cwd) and agent.setups == 2


async def test_unused_pieces_kept_within_the_budget(tmp_path: Path) -> None:
    gcs = FakeGcs()
    env = upload_dir(gcs, tmp_path / "wd", "X = 1\n")
    key = runtime_env.env_key(env)
    agent = RuntimeEnvAgent(str(tmp_path / "cache"), gcs.call, budget=1 << 30)
    prepared = await agent.prepare(env, key)
    agent.release(key)
    assert os.path.isdir(prepared.cwd) and await agent.prepare(env, key) is prepared
    assert agent.setups == 1
