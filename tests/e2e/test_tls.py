"""Mutual TLS (``AIORAY_USE_TLS=1`` / ``RAY_USE_TLS=1``): a 2-node cluster over TLS, and
peers without a valid certificate refused, with the reason on both sides.

Certificates are made per module with the ``openssl`` command line: a CA, a
member certificate it signs, and an outsider's CA and certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import port_of, wait_for_condition

import aioray as ray
from aioray._private.owner import worker_context
from aioray._private.rpc import rpc, tls
from aioray.cluster_utils import Cluster

GET_TIMEOUT = 60
REQ = ("req", "-newkey", "rsa:2048", "-nodes")
SIGN = ("x509", "-req", "-CAcreateserial", "-days", "2")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    key, crt = str(d / f"{name}.key"), str(d / f"{name}.crt")
    openssl(*REQ, "-x509", "-days", "2", "-subj", f"/CN={name}", "-keyout", key, "-out", crt)


def make_cert(d: Path, name: str, ca: str) -> None:
    key, csr, crt = (str(d / f"{name}.{ext}") for ext in ("key", "csr", "crt"))
    openssl(*REQ, "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    ca_crt, ca_key = str(d / f"{ca}.crt"), str(d / f"{ca}.key")
    openssl(*SIGN, "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-out", crt)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_cert(d, "member", "ca")
    make_ca(d, "other-ca")
    make_cert(d, "outsider", "other-ca")
    return d


def tls_env(
    d: Path, cert: str = "member", ca: str = "ca", prefix: str = "AIORAY"
) -> dict[str, str]:
    return {
        f"{prefix}_USE_TLS": "1",
        f"{prefix}_TLS_SERVER_CERT": str(d / f"{cert}.crt"),
        f"{prefix}_TLS_SERVER_KEY": str(d / f"{cert}.key"),
        f"{prefix}_TLS_CA_CERT": str(d / f"{ca}.crt"),
    }


CLUSTER_NODES = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}]


@pytest.fixture(scope="module", autouse=True)
def _tls_on(certs: Path) -> Iterator[None]:
    """Every daemon and this driver on TLS, before the module's ``ray_cluster`` starts
    (Ray's variable names: the AIORAY_ ones are exercised by the last tests)."""
    saved = dict(os.environ)
    os.environ.update(tls_env(certs, prefix="RAY"))
    tls.reset()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        tls.reset()


@ray.remote
def node_of(_: Any = None) -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(resources={"far": 1})
def far_sum(a: np.ndarray) -> tuple[str, int]:
    return ray.get_runtime_context().get_node_id(), int(a.sum())


@ray.remote(resources={"far": 1})
def far_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@ray.remote(resources={"far": 0.5})
class FarCounter:
    def __init__(self) -> None:
        self.n = 0

    def port(self) -> int:
        from aioray._private.owner import worker_context

        cw = worker_context.core_worker
        assert cw is not None
        return int(cw.address[1])

    def incr(self) -> tuple[str, int]:
        self.n += 1
        return ray.get_runtime_context().get_node_id(), self.n


def test_a_two_node_cluster_runs_tasks_actors_and_objects_over_tls(ray_cluster: Cluster) -> None:
    head, far = (n.node_id for n in ray_cluster.list_all_nodes())
    assert ray.get(node_of.remote(), timeout=GET_TIMEOUT) == head
    big = np.arange(1_000_000, dtype=np.int64)  # 8 MB: shared memory, pulled by the far node
    assert ray.get(far_sum.remote(ray.put(big)), timeout=GET_TIMEOUT) == (far, int(big.sum()))
    got = ray.get(far_array.remote(2_000_000), timeout=GET_TIMEOUT)  # pulled to the head
    assert got.shape == (2_000_000,) and int(got[-1]) == 1_999_999
    counter = FarCounter.remote()  # type: ignore[attr-defined]
    assert ray.get([counter.incr.remote() for _ in range(3)], timeout=GET_TIMEOUT) == [
        (far, 1),
        (far, 2),
        (far, 3),
    ]


def gcs_log(cluster: Cluster) -> str:
    return Path(cluster.head_node.session_dir, "logs", "gcs.log").read_text()


def test_every_port_speaks_only_tls_and_logs_a_plaintext_peer(ray_cluster: Cluster) -> None:
    counter = FarCounter.remote()  # type: ignore[attr-defined]
    ports = {
        "gcs": port_of(ray_cluster.address),
        "driver": worker_context.core_worker.address[1],  # type: ignore[union-attr]
        "worker": ray.get(counter.port.remote(), timeout=GET_TIMEOUT),
    }
    for node in ray_cluster.list_all_nodes():
        ports[f"raylet {node.node_ip_address}"] = port_of(node.raylet_address)
    for name, port in ports.items():
        host = "127.0.0.2" if name == "worker" else "127.0.0.1"
        if name.startswith("raylet "):
            host = name.split()[1]
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"\x00" * 64)  # not a TLS ClientHello
            s.settimeout(10)
            got = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(4096):
                    got += chunk
        assert b"challenge" not in got, f"{name} spoke in the clear"  # no frame in the clear
    wait_for_condition(
        lambda: "TLS handshake failed" in gcs_log(ray_cluster),
        20,
        message=lambda: gcs_log(ray_cluster)[-2000:],
    )


def first_bytes_with(ctx: ssl.SSLContext, port: int) -> bytes:
    """What the server sends first over TLS made with ``ctx`` (b"" if it closes)."""

    async def go() -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10
        )
        try:  # TLS 1.3: the server's verdict on our certificate comes with the first read
            return await asyncio.wait_for(reader.read(4096), 10)
        finally:
            writer.close()

    try:
        return asyncio.run(go())
    except (ssl.SSLError, ConnectionError):
        return b""


def test_a_client_without_a_certificate_is_refused_on_both_sides(
    ray_cluster: Cluster, certs: Path
) -> None:
    port = port_of(ray_cluster.address)
    member = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    member.load_verify_locations(certs / "ca.crt")
    member.check_hostname = False
    member.load_cert_chain(certs / "member.crt", certs / "member.key")
    assert b"challenge" in first_bytes_with(member, port)  # a member gets the challenge
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(certs / "ca.crt")  # trusts the cluster, presents nothing
    anonymous.check_hostname = False
    assert first_bytes_with(anonymous, port) == b""
    wait_for_condition(
        lambda: "PEER_DID_NOT_RETURN_A_CERTIFICATE" in gcs_log(ray_cluster),
        20,
        message=lambda: gcs_log(ray_cluster)[-2000:],
    )


def test_a_member_of_another_ca_is_refused_with_the_reason(
    ray_cluster: Cluster,
    certs: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in tls_env(certs, cert="outsider", ca="other-ca").items():
        monkeypatch.setenv(name, value)
    host, port = ray_cluster.address.rsplit(":", 1)

    async def go() -> None:
        await rpc.connect(host, int(port), hello={"role": "client"}, timeout=10)

    with pytest.raises(
        ConnectionError, match=r"TLS handshake with .* failed: .*certificate verify failed"
    ):
        asyncio.run(go())
    assert "certificate verify failed" in caplog.text  # the client logs its side too
    wait_for_condition(
        lambda: (
            "refused a connection from" in gcs_log(ray_cluster)
            and "TLS handshake failed" in gcs_log(ray_cluster)
        ),
        20,
    )


def test_tls_without_its_certificates_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIORAY_USE_TLS", "1")
    for names in (tls.CERT_ENV, tls.KEY_ENV, tls.CA_ENV):
        for name in names:
            monkeypatch.delenv(name, raising=False)
    tls.reset()
    with pytest.raises(tls.TLSConfigError, match="AIORAY_TLS_SERVER_CERT, AIORAY_TLS_SERVER_KEY"):
        tls.client_context()


def test_a_refused_tls_peer_leaves_nothing_behind_in_the_server() -> None:
    class Echo:
        def handle_echo(self, conn: rpc.Connection, body: Any, _: Any) -> Any:
            return body

    async def go() -> None:
        server = rpc.Server(rpc.handlers_of(Echo()))
        await server.start()
        try:
            for _ in range(5):
                _, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(b"\x00" * 64)  # not TLS
                writer.close()
            for _ in range(500):  # bounded: the refusals are processed within moments
                if not server.connections and not server._tls_listener.handshaking:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.01)
            assert not server.connections
            conn, _ = await rpc.connect(server.host, server.port, timeout=10)
            assert await conn.call("echo", "over tls") == "over tls"
            conn.close()
        finally:
            await server.stop()

    asyncio.run(go())


def test_silent_sockets_cost_a_few_kib_before_tls(ray_cluster: Cluster) -> None:
    import psutil
    from conftest import listener_pids

    port = port_of(ray_cluster.address)
    gcs = psutil.Process(next(iter(listener_pids(port) - {os.getpid()})))

    def established() -> int:
        return sum(1 for c in gcs.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED)

    before, uss = established(), gcs.memory_full_info().uss
    n = 300
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    try:
        wait_for_condition(lambda: established() >= before + n, 20)
        per_connection = (gcs.memory_full_info().uss - uss) / n
        assert per_connection < 16 * 1024, f"{per_connection:.0f} B per silent connection"
    finally:
        for s in socks:
            s.close()


def test_tls_handshakes_in_progress_are_capped_by_evicting_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aioray._private.wire import config

    monkeypatch.setattr(config, "MAX_PENDING_HANDSHAKES", 2)
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", 60.0)  # eviction, not the timeout

    class Echo:
        def handle_echo(self, conn: rpc.Connection, body: Any, _: Any) -> Any:
            return body

    async def go() -> None:
        server = rpc.Server(rpc.handlers_of(Echo()))
        await server.start()
        try:
            oldest, w1 = await asyncio.open_connection(server.host, server.port)
            _, w2 = await asyncio.open_connection(server.host, server.port)
            conn, _ = await rpc.connect(server.host, server.port, timeout=10)  # evicts one
            assert await conn.call("echo", "through") == "through"
            assert await asyncio.wait_for(oldest.read(), 10) == b""  # closed: it waited longest
            conn.close()
            w1.close()
            w2.close()
        finally:
            await server.stop()

    asyncio.run(go())
