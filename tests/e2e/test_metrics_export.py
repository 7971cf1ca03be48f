"""Each node's Prometheus endpoint: system and user metrics, auth, discovery (real daemons)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import wait_for_condition
from prometheus_text import parse, values

import aioray as ray
from aioray._private.wire import auth
from aioray.util.metrics import Counter, Gauge, Histogram

CLUSTER_NODES = [{"num_cpus": 1}, {"num_cpus": 1}]
SD_FILE = "prom_metrics_service_discovery.json"


def scrape(port: int, token: str | None = None, ip: str = "127.0.0.1") -> str:
    headers = {"Authorization": f"Bearer {token or auth.cluster_token()}"}
    req = urllib.request.Request(f"http://{ip}:{port}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(r.read().decode())


@ray.remote
def record(x: float) -> float:
    Counter("test_requests", "requests served", ("route",)).inc(2, tags={"route": "/a"})
    h = Histogram("test_latency_s", "latency", [0.1, 1.0], ("route",))
    h.set_default_tags({"route": "/a"}).observe(x)
    return x


@ray.remote
class Recorder:
    def __init__(self) -> None:
        self.gauge = Gauge("test_queue_depth", "items queued", ("queue",))

    def set(self, v: float) -> None:
        self.gauge.set(v, tags={"queue": 'q"1'})


def test_scrape_has_system_and_user_metrics(ray_start: Any) -> None:
    port = ray_start.address_info["metrics_export_port"]
    assert port and ray.nodes()[0]["MetricsExportPort"] == port
    assert ray.get([record.remote(x) for x in (0.05, 0.5, 5.0)]) == [0.05, 0.5, 5.0]
    r = Recorder.remote()  # type: ignore[call-arg]
    ray.get(r.set.remote(3))
    Counter("test_driver_events").inc()  # the driver's own metrics too

    def scraped() -> Any:
        _, samples = parse(scrape(port))
        ready = values(samples, "ray_test_queue_depth") and values(
            samples, "ray_test_driver_events_total"
        )
        return samples if ready and values(samples, "ray_test_latency_s_count") == [3.0] else None

    samples = wait_for_condition(scraped, 20, message="user metrics never reached the scrape")
    assert values(samples, "ray_test_requests_total", route="/a") == [6.0]
    assert values(samples, "ray_test_requests", route="/a") == [6.0]  # Ray's gauge twin
    assert values(samples, "ray_test_latency_s_bucket", route="/a", le="0.1") == [1.0]
    assert values(samples, "ray_test_latency_s_bucket", route="/a", le="1.0") == [2.0]
    assert values(samples, "ray_test_latency_s_sum", route="/a") == [5.55]
    assert values(samples, "ray_test_queue_depth", queue='q"1') == [3.0]
    job = ray.get_runtime_context().get_job_id()
    assert values(samples, "ray_tasks", State="FINISHED", Name="record", JobId=job) == [3.0]
    assert values(samples, "ray_actors", State="ALIVE", Name="Recorder", JobId=job) == [1.0]
    assert values(samples, "ray_resources", Name="CPU", State="AVAILABLE") == [2.0]
    assert values(samples, "ray_resources", Name="CPU", State="USED") == [0.0]
    assert values(samples, "ray_cluster_active_nodes", node_type="head") == [1.0]
    assert values(samples, "ray_running_jobs") == [1.0]
    assert values(samples, "ray_object_store_memory", Location="MMAP_SHM")
    assert values(samples, "ray_node_mem_total")[0] > values(samples, "ray_node_mem_used")[0] > 0
    assert 0 <= values(samples, "ray_node_cpu_utilization")[0] <= 100
    for component in ("raylet", "gcs", "core_worker"):
        assert values(samples, "ray_component_uss_bytes", Component=component)[0] > 0


def test_the_raylet_loads_aiohttp_on_the_first_scrape(ray_start: Any) -> None:
    """The endpoint's socket is bound at init, but the raylet imports aiohttp (~8 MiB,
    ~0.1 s of CPU) only once a scrape connects: a node nobody scrapes never carries it."""
    from conftest import listener_pids, port_of

    (raylet,) = listener_pids(port_of(ray_start.address_info["raylet_address"]))

    def has_aiohttp() -> bool:
        with open(f"/proc/{raylet}/maps") as f:
            return "/aiohttp/" in f.read()  # its compiled modules, once imported

    assert ray.get(record.remote(1.0)) == 1.0  # the node is up and has run a task
    assert not has_aiohttp()
    assert "ray_" in scrape(ray_start.address_info["metrics_export_port"])
    assert has_aiohttp()


def test_scrape_without_the_token_is_refused(ray_start: Any) -> None:
    port = ray_start.address_info["metrics_export_port"]
    for token in (None, "wrong"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a huge header
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert sock.recv(100).split()[1] == b"400"
    parse(scrape(port))  # the node still serves


@ray.remote
def fails() -> None:
    raise ValueError("no")


@ray.remote
class Exits:
    def count_and_exit(self) -> None:
        Counter("test_last_words").inc(5)
        ray.actor.exit_actor()


def test_failed_tasks_and_an_exiting_actors_last_points_are_counted(ray_start: Any) -> None:
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(fails.remote())
    a = Exits.remote()  # type: ignore[call-arg]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.count_and_exit.remote())  # it exits at once: its reporter flushes first
    port = ray_start.address_info["metrics_export_port"]

    def counted() -> bool:
        samples = parse(scrape(port))[1]
        failed = values(samples, "ray_tasks", State="FAILED", Name="fails")
        return failed == [1.0] and values(samples, "ray_test_last_words_total") == [5.0]

    wait_for_condition(counted, 20)


@ray.remote(num_cpus=0)
class Signal:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def wait(self) -> None:
        await self.event.wait()

    async def send(self) -> None:
        self.event.set()


@ray.remote
def blocks(signal: Any) -> int:
    ray.get(signal.wait.remote())
    return 1


def test_a_task_blocked_in_get_is_counted_in_rays_state_until_it_resumes(ray_start: Any) -> None:
    port = ray_start.address_info["metrics_export_port"]

    def shows(**counts: float) -> bool:
        samples = parse(scrape(port))[1]
        return all(
            values(samples, "ray_tasks", State=state, Name="blocks") == [n]
            for state, n in counts.items()
        )

    signal = Signal.remote()  # type: ignore[call-arg]
    ref = blocks.remote(signal)
    wait_for_condition(lambda: shows(RUNNING_IN_RAY_GET=1.0, RUNNING=0.0), 20)
    ray.get(signal.send.remote())
    assert ray.get(ref, timeout=30) == 1
    wait_for_condition(lambda: shows(RUNNING_IN_RAY_GET=0.0, FINISHED=1.0), 20)


def test_bad_metrics_export_port_is_refused() -> None:
    with pytest.raises(TypeError, match="_metrics_export_port must be an int"):
        ray.init(_metrics_export_port="8080")
    with pytest.raises(ValueError, match="_metrics_export_port must be a port number"):
        ray.init(_metrics_export_port=70000)


def _sd_targets(session_dir: str) -> list[str]:
    try:
        with open(os.path.join(session_dir, SD_FILE)) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return []
    assert content[0]["labels"] == {"job": "ray"}
    return sorted(content[0]["targets"])


def test_every_node_exports_and_is_discovered(ray_cluster: Any) -> None:
    head, worker = ray_cluster.head_node, ray_cluster.worker_nodes[0]
    nodes = {n["NodeManagerAddress"]: n for n in ray.nodes() if n["Alive"]}
    expected = []
    for cn in (head, worker):
        assert nodes[cn.node_ip_address]["MetricsExportPort"] == cn.metrics_export_port
        expected.append(f"{cn.node_ip_address}:{cn.metrics_export_port}")
    wait_for_condition(lambda: _sd_targets(head.session_dir) == sorted(expected), 10)
    # Also where Ray keeps it, the session root (the latest head's: not compared here,
    # as other clusters on this machine may have written it since).
    assert os.path.exists(os.path.join(os.path.dirname(head.session_dir), SD_FILE))
    # The worker node exports its own node; the cluster's figures come from the head, once.
    _, samples = parse(scrape(worker.metrics_export_port, ip=worker.node_ip_address))
    assert values(samples, "ray_resources", Name="CPU", State="AVAILABLE") == [1.0]
    assert not values(samples, "ray_cluster_active_nodes")
    _, samples = parse(scrape(head.metrics_export_port, ip=head.node_ip_address))
    assert values(samples, "ray_cluster_active_nodes", node_type="worker") == [1.0]
    # A node that joins or leaves changes the discovery file.
    third = ray_cluster.add_node(num_cpus=1)
    new = f"{third.node_ip_address}:{third.metrics_export_port}"
    wait_for_condition(lambda: new in _sd_targets(head.session_dir), 10)
    ray_cluster.remove_node(third)
    wait_for_condition(lambda: _sd_targets(head.session_dir) == sorted(expected), 20)


def test_a_scrape_is_fast(ray_cluster: Any) -> None:
    """Render time inside the raylet is what the loop pays; wall time includes HTTP."""
    head = ray_cluster.head_node
    scrape(head.metrics_export_port, ip=head.node_ip_address)  # the first one samples
    start = time.perf_counter()
    for _ in range(5):
        scrape(head.metrics_export_port, ip=head.node_ip_address)
    per_scrape = (time.perf_counter() - start) / 5
    assert per_scrape < 0.5, per_scrape  # generous: a loaded 2-core machine (50 ms measured)
