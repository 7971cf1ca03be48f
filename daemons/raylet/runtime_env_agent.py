"""The node's runtime-env agent: prepares each env once, shares and deletes its pieces.

An env (keyed by its canonical text, runtime_env.env_key) is made of *pieces*: one
extracted directory per package URI and one virtualenv per set of requirements and
interpreter. Both live under this node's cache directory, so the nodes of a
``cluster_utils.Cluster`` never share one.

1. ``prepare(env)`` returns a ``PreparedEnv`` (the python to run, sys.path entries,
   cwd, variables) and takes a reference on its pieces for one worker. The first call
   for an env builds it under that env's lock; concurrent calls wait for it; other
   envs build at the same time. Each piece has a lock too: two envs sharing a
   working_dir extract it once.
2. A failed build is retried (``RETRIES`` times, ``RETRY_DELAY_S`` apart, as Ray),
   then remembered as bad for ``BAD_ENV_TTL_S``: every lease for it fails at once with
   the same message, so a thousand tasks do not run pip a thousand times.
3. ``release(key)`` drops a worker's reference. Unreferenced pieces stay cached (the
   next worker of that env starts at once) until the cache is over ``budget`` bytes;
   then the least recently used unreferenced ones are deleted, and the envs made of
   them forgotten (``on_venv_deleted`` stops the fork server of a deleted venv).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aioray.daemons.raylet import runtime_env_setup as setup

from aioray._private.core import runtime_env
from aioray._private.node import runtime_env_packaging
from aioray._private.wire import config

logger = logging.getLogger(__name__)

RETRIES = 3
RETRY_DELAY_S = config.env_float("RUNTIME_ENV_RETRY_DELAY_S", 1.0)
BAD_ENV_TTL_S = config.env_float("RUNTIME_ENV_BAD_TTL_S", 60.0)
CACHE_BUDGET_BYTES = int(config.env_float("RUNTIME_ENV_CACHE_BYTES", 10 * 1024**3))


class SetupFailed(Exception):
    """The env cannot be prepared on this node (the message is for the user)."""


class PreparedEnv:
    """What a worker of one env needs: its interpreter, paths, cwd and variables."""

    __slots__ = ("cwd", "env_vars", "key", "paths", "pieces", "python")

    def __init__(self, key: str, pieces: list[str]) -> None:
        self.key = key
        self.pieces = pieces
        self.python = ""  # "": the raylet's own interpreter (the default fork server)
        self.cwd = ""
        self.paths: list[str] = []
        self.env_vars: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<PreparedEnv python={self.python or 'default'} cwd={self.cwd} paths={self.paths}>"


class Piece:
    __slots__ = ("last_used", "path", "refs", "size")

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.refs = 0
        self.last_used = time.monotonic()


def setup_failed_reply(message: str) -> dict[str, Any]:
    """The answer to a lease request whose env cannot be set up (the owner raises
    RuntimeEnvSetupError; the GCS marks an actor DEAD with it)."""
    return {"error": message, "runtime_env_setup_failed": True, "unschedulable": True}


class RuntimeEnvAgent:
    @classmethod
    def for_node(
        cls, session_dir: str, node_id: bytes, gcs_call: Callable[[str, Any], Awaitable[Any]]
    ) -> RuntimeEnvAgent:
        """A node's agent: its own cache directory, even beside other nodes' (one host)."""
        root = session_dir or tempfile.gettempdir()
        return cls(os.path.join(root, "runtime_resources", f"node_{node_id.hex()[:12]}"), gcs_call)

    def __init__(
        self,
        cache_dir: str,
        gcs_call: Callable[[str, Any], Awaitable[Any]],
        budget: int = CACHE_BUDGET_BYTES,
    ) -> None:
        self.cache_dir = cache_dir
        self.gcs_call = gcs_call
        self.budget = budget
        self.envs: dict[str, PreparedEnv] = {}
        self.pieces: dict[str, Piece] = {}
        self.bad: dict[str, tuple[str, float]] = {}  # env key -> (message, when)
        self.on_venv_deleted: Callable[[str], None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.setups = 0  # envs built (successfully or not), attempts not counted
        self.tool_runs = 0  # pip/uv invocations
        self.last_setup_s = 0.0  # how long the last successful build took

    def __repr__(self) -> str:
        return (
            f"<RuntimeEnvAgent envs={len(self.envs)} pieces={len(self.pieces)} bad={len(self.bad)}>"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "envs": len(self.envs),
            "setups": self.setups,
            "tool_runs": self.tool_runs,
            "last_setup_s": self.last_setup_s,
            "bad": len(self.bad),
            "cache_dir": self.cache_dir,
            "pieces": {p.path: [p.refs, p.size] for p in self.pieces.values()},
        }

    def failure(self, key: str) -> str | None:
        """The message of a recent failure to prepare this env, if any."""
        bad = self.bad.get(key)
        if bad is None:
            return None
        if time.monotonic() - bad[1] > BAD_ENV_TTL_S:
            del self.bad[key]
            return None
        return bad[0]

    # -- 1. prepare ---------------------------------------------------------------------------
    async def prepare(self, env: dict[str, Any], key: str) -> PreparedEnv:
        """The env ready on this node, with one reference taken; SetupFailed if it cannot be."""
        prepared = self.envs.get(key)
        if prepared is None:
            async with self._lock(key):
                prepared = self.envs.get(key)
                if prepared is None:
                    bad = self.failure(key)
                    if bad is not None:
                        raise SetupFailed(bad)
                    prepared = await self._build_with_retries(env, key)
                    self.envs[key] = prepared
        for name in prepared.pieces:
            self.pieces[name].refs += 1
        return prepared

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _build_with_retries(self, env: dict[str, Any], key: str) -> PreparedEnv:
        self.setups += 1
        timeout = (env.get("config") or {}).get(
            "setup_timeout_seconds", runtime_env.DEFAULT_SETUP_TIMEOUT_S
        )
        message = ""
        start = time.monotonic()
        for attempt in range(RETRIES):
            try:
                built = await asyncio.wait_for(
                    self._build(env, key), None if timeout < 0 else timeout
                )
                self.last_setup_s = time.monotonic() - start
                return built
            except asyncio.TimeoutError:
                message = f"the setup did not finish within setup_timeout_seconds={timeout}"
                break  # another try would take as long
            except (setup.SetupError, LookupError, OSError, ConnectionError) as e:
                message = str(e)
                logger.warning("runtime env setup failed (attempt %d): %s", attempt + 1, e)
            if attempt + 1 < RETRIES:
                await asyncio.sleep(RETRY_DELAY_S)
        self.bad[key] = (message, time.monotonic())
        raise SetupFailed(message)

    async def _build(self, env: dict[str, Any], key: str) -> PreparedEnv:
        pieces: list[str] = []
        prepared = PreparedEnv(key, pieces)
        working_dir = env.get("working_dir")
        if working_dir:
            prepared.cwd = await self._package(working_dir)
            pieces.append(working_dir)
            prepared.paths.append(prepared.cwd)
        for uri in env.get("py_modules") or ():
            prepared.paths.append(await self._package(uri))
            pieces.append(uri)
        tool = "uv" if env.get("uv") else "pip" if env.get("pip") else ""
        if tool:
            name, prepared.python = await self._venv(tool, env[tool])
            pieces.append(name)
        prepared.env_vars = dict(env.get("env_vars") or {})
        return prepared

    async def _package(self, uri: str) -> str:
        """The extracted directory of a package, downloaded from the GCS once."""
        async with self._lock(uri):
            piece = self.pieces.get(uri)
            if piece is not None:
                return piece.path
            name = uri[len(runtime_env.URI_SCHEME) :].rsplit(".", 1)[0]
            path = os.path.join(self.cache_dir, "packages", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.isdir(path):
                data = await runtime_env_packaging.read_package(uri, self.gcs_call)
                await asyncio.to_thread(setup.extract, data, path)
            self.pieces[uri] = Piece(path, await asyncio.to_thread(setup.dir_size, path))
            return path

    async def _venv(self, tool: str, spec: dict[str, Any]) -> tuple[str, str]:
        """(piece name, python) of a virtualenv with these requirements over this interpreter."""
        digest = hashlib.sha256(
            json.dumps([tool, spec, sys.executable], sort_keys=True).encode()
        ).hexdigest()[:24]
        name = f"venv:{digest}"
        async with self._lock(name):
            path = os.path.join(self.cache_dir, "venvs", digest)
            piece = self.pieces.get(name)
            if piece is None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self.tool_runs += 1
                await setup.build_venv(path, tool, spec, None)
                piece = self.pieces[name] = Piece(
                    path, await asyncio.to_thread(setup.dir_size, path)
                )
            return name, os.path.join(path, "bin", "python")

    # -- 3. release and delete ------------------------------------------------------------------
    def release(self, key: str) -> None:
        prepared = self.envs.get(key)
        if prepared is None:
            return
        now = time.monotonic()
        for name in prepared.pieces:
            piece = self.pieces.get(name)
            if piece is not None:
                piece.refs = max(0, piece.refs - 1)
                piece.last_used = now
        self.collect()

    def collect(self) -> None:
        """Delete unreferenced pieces, least recently used first, while over the budget."""
        total = sum(p.size for p in self.pieces.values())
        if total <= self.budget:
            return
        unused = sorted((p.last_used, name) for name, p in self.pieces.items() if p.refs == 0)
        for _, name in unused:
            if total <= self.budget:
                break
            piece = self.pieces.pop(name)
            total -= piece.size
            self._delete(name, piece)

    def _delete(self, name: str, piece: Piece) -> None:
        for key in [k for k, e in self.envs.items() if name in e.pieces]:
            del self.envs[key]
        if name.startswith("venv:") and self.on_venv_deleted is not None:
            self.on_venv_deleted(os.path.join(piece.path, "bin", "python"))
        # Renamed at once (a new build may reuse the path), removed in the background.
        doomed = f"{piece.path}.deleting-{os.urandom(4).hex()}"
        try:
            os.rename(piece.path, doomed)
        except OSError as e:
            logger.warning("cannot delete runtime env piece %s: %s", piece.path, e)
            return
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, doomed, True)
        logger.info("deleted runtime env piece %s (%d bytes)", name, piece.size)
