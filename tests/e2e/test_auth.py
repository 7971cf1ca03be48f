"""Cluster token authentication and protocol versions in the handshake.

A peer with another cluster's token, with no token, or speaking another protocol
version is refused: the daemon logs the reason and the peer raises it.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import port_of, wait_for_condition

import aioray as ray
from aioray._private.node import node
from aioray._private.rpc import rpc
from aioray._private.wire import auth, protocol
from aioray.api import gcs_call

REPO = Path(__file__).resolve().parents[2]
GET_TIMEOUT = 30


# ------------------------------------------------------------------------------- unit


def test_check_accepts_the_right_proof_and_names_what_is_wrong() -> None:
    token, challenge = auth.generate_token(), auth.new_challenge()
    assert auth.check(token, challenge, auth.proof(token, challenge)) is None
    wrong = auth.check(token, challenge, auth.proof(auth.generate_token(), challenge))
    assert wrong is not None and "another cluster's token" in wrong
    missing = auth.check(token, challenge, None)
    assert missing is not None and "no cluster token" in missing and auth.TOKEN_ENV in missing
    # A proof for another challenge (a replayed hello) is refused too.
    replay = auth.check(token, challenge, auth.proof(token, auth.new_challenge()))
    assert replay is not None
    assert auth.check(None, challenge, None) is None  # a server without a token: auth off


def test_token_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("from-file\n")
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(path))
    assert auth.token_from_env() == "from-file"
    monkeypatch.setenv(auth.TOKEN_ENV, "from-env")
    assert auth.token_from_env() == "from-env"  # the variable wins, as in Ray
    monkeypatch.delenv(auth.TOKEN_ENV)
    path.write_text("")
    with pytest.raises(auth.AuthenticationError, match="is empty"):
        auth.token_from_env()
    written = auth.write_token_file(str(tmp_path), "secret")
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert auth.read_token_file(str(tmp_path)) == "secret"


# ------------------------------------------------------------------ against a cluster


def _connect(address: tuple[str, int], token: str | None, **hello: Any) -> Any:
    """Open (and close) one connection with ``token`` as this process's token."""
    saved = auth.cluster_token()

    async def go() -> Any:
        conn, answer = await rpc.connect(*address, hello={"role": "client", **hello}, timeout=5)
        conn.close()
        return answer

    auth.set_token(token)
    try:
        return asyncio.run(go())
    finally:
        auth.set_token(saved)


def _log(session_dir: str, name: str) -> str:
    path = os.path.join(session_dir, "logs", name)
    return open(path).read() if os.path.exists(path) else ""


def _ports(ctx: Any, actor: Any) -> dict[str, tuple[str, int]]:
    info = ctx.address_info
    ray.get(actor.ready.remote(), timeout=GET_TIMEOUT)
    [worker_addr] = [a["addr"] for a in gcs_call("list_actors") if a["state"] == "ALIVE"]
    return {
        "gcs": node.split_address(info["gcs_address"]),
        "raylet": node.split_address(info["raylet_address"]),
        # A worker's server is also where it serves the objects it owns to borrowers.
        "worker": (worker_addr[0], worker_addr[1]),
    }


@ray.remote
class Probe:
    def ready(self) -> bool:
        return True


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_every_daemon_port_refuses_another_clusters_token(ray_start: Any) -> None:
    session = ray_start.address_info["session_dir"]
    probe = Probe.remote()  # its worker's port is checked too
    ports = _ports(ray_start, probe)
    good = auth.cluster_token()
    assert good is not None  # init() generated one for its local cluster
    for name, address in ports.items():
        with pytest.raises(auth.AuthenticationError, match="another cluster's token"):
            _connect(address, auth.generate_token())
        with pytest.raises(auth.AuthenticationError, match="no cluster token"):
            _connect(address, None)
        assert _connect(address, good) is not None, name
    # The GCS and raylet logged why they hung up.
    wait_for_condition(lambda: "another cluster's token" in _log(session, "gcs.log"))
    wait_for_condition(lambda: "no cluster token" in _log(session, "raylet.log"))
    # ... and still serve the cluster.
    assert ray.get(ray.put("still here"), timeout=GET_TIMEOUT) == "still here"


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_another_protocol_version_is_refused_on_both_sides(ray_start: Any) -> None:
    session = ray_start.address_info["session_dir"]
    gcs = node.split_address(ray_start.address_info["gcs_address"])
    newer = protocol.PROTOCOL_VERSION + 1
    with pytest.raises(ConnectionError, match=f"protocol version {newer}"):
        _connect(gcs, auth.cluster_token(), version=newer)
    wait_for_condition(lambda: f"protocol version {newer}" in _log(session, "gcs.log"))


def test_a_driver_with_the_wrong_token_gets_a_clear_error(
    ray_start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = ray_start.address_info["gcs_address"]
    # A second driver process, given another cluster's token.
    env = {**os.environ, auth.TOKEN_ENV: auth.generate_token()}
    code = f"import aioray; aioray.init(address={address!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert "AuthenticationError" in proc.stderr and address in proc.stderr
    assert "does not match this cluster's" in proc.stderr


def test_a_node_with_the_wrong_token_cannot_join(ray_start: Any, tmp_path: Path) -> None:
    address = ray_start.address_info["gcs_address"]
    env = {**os.environ, auth.TOKEN_ENV: auth.generate_token()}
    args = [sys.executable, "-m", "aioray.cli", "start", "--address", address, "--num-cpus", "1"]
    proc = subprocess.run(
        args,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert f"cannot join the cluster at {address}" in proc.stderr
    assert "does not match this cluster's" in proc.stderr
    assert len(ray.nodes()) == 1
    assert port_of(address)  # the cluster is untouched


def test_auth_mode_disabled_needs_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.MODE_ENV, "disabled")
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    ctx = ray.init(num_cpus=1)
    try:
        assert auth.cluster_token() is None
        gcs = node.split_address(ctx.address_info["gcs_address"])
        assert _connect(gcs, None) is not None
        assert ray.get(ray.put(1), timeout=GET_TIMEOUT) == 1
    finally:
        ray.shutdown()


def test_a_process_of_the_same_user_finds_a_local_clusters_token(ray_start: Any) -> None:
    """Like Ray's local token file: the head's session directory keeps it (mode 0600)."""
    address = ray_start.address_info["gcs_address"]
    env = {k: v for k, v in os.environ.items() if k not in (auth.TOKEN_ENV, "RAY_AUTH_TOKEN")}
    code = (
        "import aioray as ray\n"
        f"ray.init(address={address!r})\n"
        "print(ray.get(ray.put('joined')))\n"
        "ray.shutdown()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "joined"
    session = ray_start.address_info["session_dir"]
    mode = os.stat(os.path.join(session, auth.TOKEN_FILE)).st_mode
    assert stat.S_IMODE(mode) == 0o600
