"""What mutual TLS costs per RPC round trip: CPU time, plain against TLS, alternated.

Both ends of a loopback connection run in this process (uvloop), so the CPU time
(``time.process_time``) covers the owner's and the worker's side of a task-sized
request/response pair and hardly depends on the machine's load, unlike the wall
clock. Certificates are made in a temporary directory with the ``openssl`` CLI.

    python benchmarks/tls_rpc_cost.py [--calls 20000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

import uvloop

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer

BODY = {"tid": os.urandom(24), "fid": os.urandom(20), "name": "f", "nret": 1, "a": 1, "d": []}
IN_FLIGHT = 64


class Echo:
    def handle_echo(self, conn: rpc.Connection, body: Any, buffers: list[Buffer]) -> Any:
        return rpc.Reply(body, buffers)


def make_certs(d: str) -> dict[str, str]:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    req = ("req", "-newkey", "rsa:2048", "-nodes")
    openssl(*req, "-x509", "-days", "1", "-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.crt")
    openssl(*req, "-subj", "/CN=node", "-keyout", "node.key", "-out", "node.csr")
    openssl(
        *("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "1", "-out", "node.crt"),
    )
    return {
        "AIORAY_USE_TLS": "1",
        "AIORAY_TLS_SERVER_CERT": os.path.join(d, "node.crt"),
        "AIORAY_TLS_SERVER_KEY": os.path.join(d, "node.key"),
        "AIORAY_TLS_CA_CERT": os.path.join(d, "ca.crt"),
    }


async def cpu_per_call(calls: int) -> float:
    """Microseconds of CPU per request/response pair, on a fresh server and connection."""
    server = rpc.Server(rpc.handlers_of(Echo()))
    await server.start()
    conn, _ = await rpc.connect(server.host, server.port)
    buf = os.urandom(100)

    async def lane(n: int) -> None:
        for _ in range(n):
            await conn.call_full("echo", BODY, [buf])

    await lane(500)  # warm-up
    per_lane = calls // IN_FLIGHT
    start = time.process_time()
    await asyncio.gather(*[lane(per_lane) for _ in range(IN_FLIGHT)])
    cpu = time.process_time() - start
    conn.close()
    await server.stop()
    return cpu / (per_lane * IN_FLIGHT) * 1e6


async def run(calls: int, rounds: int, tls_env: dict[str, str]) -> dict[bool, list[float]]:
    results: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            for name, value in tls_env.items():
                if on:
                    os.environ[name] = value
                else:
                    os.environ.pop(name, None)
            results[on].append(await cpu_per_call(calls))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    os.environ["AIORAY_AUTH_MODE"] = "disabled"  # the token check is per connection anyway
    with tempfile.TemporaryDirectory() as d:
        results = uvloop.run(run(a.calls, a.rounds, make_certs(d)))
    for on, xs in results.items():
        runs = ", ".join(f"{x:.1f}" for x in xs)
        print(
            f"TLS {'on ' if on else 'off'}: {statistics.mean(xs):.1f} +- "
            f"{statistics.stdev(xs):.1f} us CPU per call ({runs})"
        )


if __name__ == "__main__":
    main()
