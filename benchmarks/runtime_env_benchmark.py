"""runtime_env costs (issue #18's performance targets), on a local Cluster with no network.

1. A task in an already-prepared working_dir env vs one in no env: sequential round
   trips and a batch of 1,000, rounds alternated (target: within 10%).
2. First use of a 10 MiB working_dir on a fresh node: a node is added, then one task
   in the env is timed from submission to result (download from the GCS, extract,
   fork a worker); a first no-env task on another fresh node is the baseline
   (target: under 1 s).
3. A cached pip env reused by new workers: actors created one after the other (each
   a new worker) in a prepared pip env vs in no env (target: under 50 ms per worker).

Run: ``python benchmarks/runtime_env_benchmark.py [--quick]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aioray as ray
from aioray import api
from aioray._private.node import runtime_env_packaging
from aioray.cluster_utils import Cluster
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def raylet_state(node: Any) -> dict[str, Any]:
    cw = api.ensure_connected()

    async def ask() -> dict[str, Any]:
        conn = await cw.connect_peer(node.node_ip_address, node.node_manager_port)
        state: dict[str, Any] = await conn.call("get_state")
        return state

    return cw.run_sync(ask(), timeout=20)  # type: ignore[no-any-return]


def upload(root: Path) -> str:
    uri: str = runtime_env_packaging.upload_env({"working_dir": str(root)}, api.gcs_call)[
        "working_dir"
    ]
    return uri


def tiny_wheel(out: Path) -> None:
    """A pure-Python wheel, built by hand (a zip with a .dist-info): pip installs it offline."""
    name, info = "rtebench", "rtebench-1.0.dist-info"
    entries = {
        "rtebench/__init__.py": "X = 1\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: rtebench\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{p},sha256="
        + base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=").decode()
        + f",{len(t)}"
        for p, t in entries.items()
    ]
    entries[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(out / f"{name}-1.0-py3-none-any.whl", "w") as z:
        for p, t in entries.items():
            z.writestr(p, t)


def bench_prepared_working_dir(tmp: Path, node: str, rounds: int, n: int) -> None:
    (tmp / "wd").mkdir()
    (tmp / "wd" / "benchmod.py").write_text("X = 1\n")
    env = {"working_dir": upload(tmp / "wd")}

    @ray.remote
    def f() -> int:
        return 1

    plain = f.options(scheduling_strategy=on(node))
    in_env = f.options(runtime_env=env, scheduling_strategy=on(node))
    ray.get([plain.remote() for _ in range(200)] + [in_env.remote() for _ in range(200)])

    def sync(remote: Any) -> float:
        t = time.perf_counter()
        for _ in range(n):
            ray.get(remote.remote())
        return (time.perf_counter() - t) / n * 1e6

    def batch(remote: Any) -> float:
        t = time.perf_counter()
        ray.get([remote.remote() for _ in range(1000)])
        return 1000 / (time.perf_counter() - t)

    for label, measure, unit in (("sync round trip", sync, "us"), ("batch of 1000", batch, "/s")):
        got: dict[str, list[float]] = {"none": [], "env": []}
        for r in range(rounds):
            order = [("none", plain), ("env", in_env)]
            for key, remote in order if r % 2 == 0 else order[::-1]:
                got[key].append(measure(remote))
        none, env_ = statistics.median(got["none"]), statistics.median(got["env"])
        print(
            f"1. {label}: no env {none:.0f} {unit}, prepared working_dir {env_:.0f} {unit} "
            f"(env/none {env_ / none:.3f}; {rounds} rounds, medians)"
        )
        rows = " ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(got["none"], got["env"], strict=True))
        print(f"   rounds (none/env): {rows}")


def bench_first_use(cluster: Cluster, tmp: Path, reps: int) -> None:
    root = tmp / "big"
    root.mkdir()
    for i in range(10):
        (root / f"blob{i}.bin").write_bytes(os.urandom(1 << 20))
    (root / "bigmod.py").write_text("X = 1\n")
    t = time.perf_counter()
    env = {"working_dir": upload(root)}
    print(
        f"2. upload of the 10 MiB working_dir (zip + hash + put, driver side): "
        f"{time.perf_counter() - t:.2f} s"
    )

    @ray.remote
    def f() -> int:
        import bigmod

        return bigmod.X  # type: ignore[no-any-return]

    @ray.remote
    def g() -> int:
        return 1

    for rep in range(reps):
        timings = []
        for with_env in (False, True):
            node = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            opts: dict[str, Any] = {"scheduling_strategy": on(node.node_id)}
            remote = f.options(runtime_env=env, **opts) if with_env else g.options(**opts)
            t = time.perf_counter()
            ray.get(remote.remote())
            timings.append(time.perf_counter() - t)
            setup = raylet_state(node)["runtime_env"]["last_setup_s"]
            cluster.remove_node(node)
        print(
            f"2. first task on a fresh node (rep {rep + 1}): no env {timings[0]:.3f} s, "
            f"10 MiB working_dir {timings[1]:.3f} s (difference {timings[1] - timings[0]:.3f} s; "
            f"the node's env setup, download + extract: {setup:.3f} s)"
        )


def bench_pip_workers(tmp: Path, node: str, k: int) -> None:
    wheels = tmp / "wheels"
    wheels.mkdir()
    tiny_wheel(wheels)
    env = {
        "pip": {
            "packages": ["rtebench==1.0"],
            "pip_install_options": ["--no-index", "--find-links", str(wheels)],
        }
    }

    @ray.remote
    class A:
        def ping(self) -> int:
            return 1

    t = time.perf_counter()
    ray.get(A.options(runtime_env=env, scheduling_strategy=on(node)).remote().ping.remote())
    print(
        f"3. first pip env use on the node (venv + pip + fork server): "
        f"{time.perf_counter() - t:.2f} s"
    )

    def per_actor(make: Callable[[], Any]) -> float:
        times = []
        for _ in range(k):
            t = time.perf_counter()
            actor = make()
            ray.get(actor.ping.remote())
            times.append(time.perf_counter() - t)
            ray.kill(actor)
        return statistics.median(times) * 1e3

    plain = per_actor(lambda: A.options(scheduling_strategy=on(node)).remote())
    pip = per_actor(lambda: A.options(runtime_env=env, scheduling_strategy=on(node)).remote())
    print(
        f"3. new worker (actor created + first call), median of {k}: no env {plain:.1f} ms, "
        f"cached pip env {pip:.1f} ms (difference {pip - plain:+.1f} ms)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    a = p.parse_args(argv)
    rounds, n, reps, k = (2, 50, 1, 3) if a.quick else (6, 500, 2, 10)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        cluster.connect()
        head = cluster.list_all_nodes()[0].node_id
        with tempfile.TemporaryDirectory() as tmp:
            bench_prepared_working_dir(Path(tmp), head, rounds, n)
            bench_first_use(cluster, Path(tmp), reps)
            bench_pip_workers(Path(tmp), head, k)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
