"""Shared fixtures for the end-to-end suite: clusters, and a leak check on every test.

Every test is wrapped by ``_leak_check``: afterwards no aioray daemon or worker
process started during the test may survive, and no ``/dev/shm/aioray_*`` segment
may be left behind. Clusters come from ``ray_start`` (one per test) or
``ray_shared`` (one per module, for the many small API tests).
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

# Every cluster this test run starts keeps its session under a root of its own, so
# the leak check below only ever sees (and kills) this run's processes and segments,
# never those of another test run or of a user's cluster on the same machine.
SESSION_ROOT = tempfile.mkdtemp(prefix="aioray-test-")
os.environ["AIORAY_SESSION_ROOT"] = SESSION_ROOT
atexit.register(shutil.rmtree, SESSION_ROOT, True)

from helpers import wait_for_condition, wait_for_file  # noqa: E402, F401  (tests import them here)

import aioray as ray  # noqa: E402  (after the session root is set)

DAEMON_MARK = "aioray.daemons"
DASHBOARD_MARK = "aioray.dashboard"  # the head's web service is a daemon too
SHM_DIR = "/dev/shm"
SHM_PREFIX = "aioray_"
LEAK_DEADLINE_S = 10.0
DEFAULT_INIT_KWARGS: dict[str, Any] = {"num_cpus": 2}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection imported (every module, function and class of the suite) to
    the collector's permanent generation: each test's leak check runs ``gc.collect``,
    which then walks only what tests made since, not ~100,000 objects that live as long
    as the run anyway (20 ms more per test otherwise)."""
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- helpers


def store_on_core_loop(cw: Any, oids: list[bytes], timeout: float = 20.0) -> None:
    """Store ``("value of", oid)`` for each of ``oids`` (pending owned objects), for
    real, on the core loop; return once it is stored."""
    import asyncio

    from aioray._private.core.memory_store import StoredObject
    from aioray._private.wire.serialization import serialize

    async def put() -> None:
        for oid in oids:
            cw.memory_store.put(oid, StoredObject(serialize(("value of", oid)).data))

    asyncio.run_coroutine_threadsafe(put(), cw.loop).result(timeout)


def pending_owned_refs(cw: Any, n: int) -> list[ray.ObjectRef]:
    """Refs to objects this driver owns and has not stored yet (as a task's results)."""
    from aioray._private.wire import ids

    refs = []
    for _ in range(n):
        oid = ids.object_id(cw.ids.task_id(cw.job_id), 0)
        cw.owned.add(oid)
        refs.append(ray.ObjectRef(oid))
    return refs


def local_segment(oid: bytes) -> str:
    """This driver's node's /dev/shm segment path for object ``oid``."""
    from aioray._private.owner import worker_context
    from aioray._private.wire import object_store

    cw = worker_context.core_worker
    assert cw is not None
    return object_store.segment_path(cw.session_id, oid, cw.node_id)


def aioray_processes() -> dict[tuple[int, float], str]:
    """Live (non-zombie) processes whose command line mentions aioray.daemons (or the dashboard).

    Keyed by (pid, create_time) so a recycled pid is never mistaken for an old one.
    Command lines are read from /proc first and psutil asked only about this run's
    processes: the check runs twice per test, and psutil's full scan costs 5 ms.
    """
    root = SESSION_ROOT.encode()
    found: dict[tuple[int, float], str] = {}
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if root not in raw:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if DAEMON_MARK not in cmdline and DASHBOARD_MARK not in cmdline:
            continue
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found[(pid, proc.create_time())] = cmdline
        except psutil.Error:
            continue
    return found


def shm_entries() -> set[str]:
    """Names of this run's aioray shared-memory segments currently in /dev/shm."""
    ours = {name.rsplit("_", 1)[-1] for name in os.listdir(SESSION_ROOT)}
    try:
        return {
            name
            for name in os.listdir(SHM_DIR)
            if name.startswith(SHM_PREFIX) and name[len(SHM_PREFIX) :].split("_")[0] in ours
        }
    except FileNotFoundError:
        return set()


def _ours(pid: int | None) -> bool:
    """Whether ``pid`` is this run's: this process, one it started, or a daemon of one of
    this run's sessions (its command line names SESSION_ROOT)."""
    if pid is None:  # another user's process
        return False
    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        return SESSION_ROOT in " ".join(proc.cmdline()) or any(
            parent.pid == os.getpid() for parent in proc.parents()
        )
    except psutil.Error:
        return False


def _listeners() -> set[tuple[int, int]]:
    """(port, pid) of the TCP sockets this run's processes listen on. Other test runs
    and users' clusters on the same machine are not ours, even on the same port: a
    dashboard falls forward from 8265, so another run's next cluster takes 8265 as soon
    as one of ours frees it."""
    found = {
        (conn.laddr.port, conn.pid)
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid is not None
    }
    ours = {pid for pid in {pid for _, pid in found} if _ours(pid)}
    return {(port, pid) for port, pid in found if pid in ours}


def listening_ports() -> set[int]:
    """TCP ports this run's processes are listening on."""
    return {port for port, _ in _listeners()}


def port_of(address: str) -> int:
    """Port of a "host:port" address."""
    return int(address.rsplit(":", 1)[1])


def listener_pids(port: int) -> set[int]:
    """Pids of this run's processes listening on ``port``."""
    return {pid for listening, pid in _listeners() if listening == port}


def cluster_ports(ctx: Any) -> dict[str, int]:
    info = ctx.address_info
    ports = {
        "gcs": port_of(info["gcs_address"]),
        "raylet": port_of(info["raylet_address"]),
    }
    if info.get("metrics_export_port"):  # the node's Prometheus endpoint
        ports["metrics"] = info["metrics_export_port"]
    if getattr(ctx, "dashboard_url", None):  # the head's dashboard
        ports["dashboard"] = port_of(ctx.dashboard_url)
    return ports


def wait_ports_closed(ports: dict[str, int], timeout: float = 5.0) -> None:
    """Assert that none of ``ports`` is listening any more (bounded wait)."""

    def still_open() -> dict[str, tuple[int, set[int]]]:
        listeners = _listeners()
        return {
            name: (port, {pid for listening, pid in listeners if listening == port})
            for name, port in ports.items()
            if port in {listening for listening, _ in listeners}
        }

    wait_for_condition(
        lambda: not still_open(),
        timeout,
        message=lambda: f"ports still listening after shutdown (port, pids): {still_open()}",
    )


def _kill_quietly(pids: list[int]) -> None:
    """Kill processes the suite itself caused (leaked), so one leak fails one test."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


# ------------------------------------------------------------------- shared cluster


@dataclass
class SharedCluster:
    """A module-scoped cluster; its processes are not leaks while it is up."""

    ctx: Any
    root_pids: set[int]
    markers: tuple[str, ...]
    processes_before: dict[tuple[int, float], str]
    shm_before: set[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def owns(self, pid: int, cmdline: str) -> bool:
        markers = self.markers
        more = self.extra.get("markers")  # a cluster that adds nodes later names them here
        if more is not None:
            markers = markers + tuple(more())
        if pid in self.root_pids or any(marker in cmdline for marker in markers):
            return True
        try:
            proc = psutil.Process(pid)
            return any(parent.pid in self.root_pids for parent in proc.parents())
        except psutil.Error:
            return False


_SHARED: list[SharedCluster] = []


def _active_shared() -> SharedCluster | None:
    return _SHARED[-1] if _SHARED else None


# ---------------------------------------------------------------------- leak check


def _new_processes(
    before: dict[tuple[int, float], str], shared: SharedCluster | None
) -> dict[tuple[int, float], str]:
    now = aioray_processes()
    return {
        key: cmd
        for key, cmd in now.items()
        if key not in before and not (shared is not None and shared.owns(key[0], cmd))
    }


def assert_no_leaks(
    processes_before: dict[tuple[int, float], str],
    shm_before: set[str],
    shared: SharedCluster | None,
    what: str,
) -> None:
    """Wait (bounded) for new processes and shm segments to go; fail naming them."""
    gc.collect()
    problems: list[str] = []
    try:
        wait_for_condition(
            lambda: not _new_processes(processes_before, shared), LEAK_DEADLINE_S, interval=0.05
        )
    except AssertionError:
        leaked = _new_processes(processes_before, shared)
        if leaked:
            lines = [f"  pid={pid}: {cmd}" for (pid, _), cmd in leaked.items()]
            problems.append(f"{what} leaked aioray processes:\n" + "\n".join(lines))
            _kill_quietly([pid for pid, _ in leaked])
    if shared is None:
        try:
            wait_for_condition(lambda: not (shm_entries() - shm_before), LEAK_DEADLINE_S)
        except AssertionError:
            left = sorted(shm_entries() - shm_before)
            if left:
                problems.append(f"{what} left shared-memory segments in {SHM_DIR}: {left}")
                for name in left:
                    try:
                        os.unlink(os.path.join(SHM_DIR, name))
                    except OSError:
                        pass
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    processes_before = aioray_processes()
    shm_before = shm_entries()
    yield
    shared = _active_shared()
    if shared is None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.node.nodeid} left aioray initialized", pytrace=False)
    if shared is not None and not ray.is_initialized():
        pytest.fail(f"{request.node.nodeid} shut down the module's shared cluster", pytrace=False)
    assert_no_leaks(processes_before, shm_before, shared, request.node.nodeid)


# ------------------------------------------------------------------------ clusters


def _init_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    params = getattr(request, "param", None) or {}
    return {**DEFAULT_INIT_KWARGS, **params}


def _shutdown_and_check_ports(ctx: Any) -> None:
    ports = cluster_ports(ctx)
    ray.shutdown()
    assert not ray.is_initialized()
    wait_ports_closed(ports)


@pytest.fixture
def ray_start(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh cluster for one test: ray.init(num_cpus=2, **request.param)."""
    if _active_shared() is not None:
        pytest.fail(
            "ray_start used while this module's ray_shared cluster is up; "
            "place ray_start tests before the ray_shared ones",
            pytrace=False,
        )
    ctx = ray.init(**_init_kwargs(request))
    try:
        yield ctx
    finally:
        _shutdown_and_check_ports(ctx)


@pytest.fixture(scope="module")
def ray_shared(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One cluster for a whole module.

    Init kwargs come from the module's ``RAY_SHARED_INIT_KWARGS`` (default num_cpus=2).
    Its processes (including workers it starts later) are not reported as per-test
    leaks; when the module ends it must shut down cleanly like any other cluster.
    """
    if ray.is_initialized():
        pytest.fail("ray_shared: aioray is already initialized", pytrace=False)
    processes_before = aioray_processes()
    shm_before = shm_entries()
    kwargs = getattr(request.module, "RAY_SHARED_INIT_KWARGS", DEFAULT_INIT_KWARGS)
    ctx = ray.init(**kwargs)
    info = ctx.address_info
    ports = cluster_ports(ctx)
    roots = set().union(*(listener_pids(port) for port in ports.values()))
    roots.discard(os.getpid())
    markers = tuple(
        str(marker)
        for marker in (info.get("session_dir"), info["gcs_address"], info["raylet_address"])
        if marker
    )
    shared = SharedCluster(ctx, roots, markers, processes_before, shm_before)
    _SHARED.append(shared)
    try:
        yield ctx
    finally:
        _SHARED.remove(shared)
        if ray.is_initialized():
            _shutdown_and_check_ports(ctx)
        assert_no_leaks(
            processes_before, shm_before, None, f"module {request.module.__name__} (ray_shared)"
        )


# ------------------------------------------------------------------ multi-node clusters

CLUSTER_NODES_DEFAULT: list[dict[str, Any]] = [{"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}]


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One multi-node ``Cluster`` for a whole module, with this process connected as driver.

    Nodes come from the module's ``CLUSTER_NODES`` (the first is the head; default:
    three nodes of 1 CPU). Tests may add and remove nodes; the processes of every
    node the cluster ever started are the cluster's, not per-test leaks.
    """
    from aioray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("ray_cluster: aioray is already initialized", pytrace=False)
    processes_before = aioray_processes()
    shm_before = shm_entries()
    specs = getattr(request.module, "CLUSTER_NODES", CLUSTER_NODES_DEFAULT)
    cluster = Cluster(initialize_head=True, head_node_args=specs[0])
    try:
        for spec in specs[1:]:
            cluster.add_node(**spec)
        cluster.wait_for_nodes()
        ctx = cluster.connect()
    except BaseException:
        cluster.shutdown()
        raise
    shared = SharedCluster(ctx, set(), (), processes_before, shm_before)
    shared.extra["markers"] = lambda: [n.session_dir for n in cluster.started_nodes]
    _SHARED.append(shared)
    try:
        yield cluster
    finally:
        _SHARED.remove(shared)
        cluster.shutdown()
        assert_no_leaks(
            processes_before, shm_before, None, f"module {request.module.__name__} (ray_cluster)"
        )
