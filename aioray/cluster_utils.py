"""A multi-node cluster on one machine, for tests (Ray's ``ray.cluster_utils.Cluster``).

Every node is a real raylet process (with its own fork server and workers) bound
to its own loopback address: the head on 127.0.0.1 (with the GCS), then
127.0.0.2, 127.0.0.3, ... So node ids, addresses, spillback and node failure are
as real as on separate machines. Each node's daemons hold a lifeline pipe to
this process, so nothing outlives it. ``remove_node(allow_graceful=False)``
SIGKILLs the raylet, its fork server and its workers at once, which is what a
machine that loses power looks like to the rest of the cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil

from aioray._private.node import node
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc

# Ray's cluster_utils defaults: small nodes, so a test cluster stays cheap.
DEFAULT_NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0}
DEFAULT_OBJECT_STORE_MEMORY = 150 * 1024 * 1024
NODE_ARGS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "object_store_memory",
    "labels",
    "node_ip_address",
    "metrics_export_port",
    "include_dashboard",  # the head's (default off, as Ray's cluster_utils)
    "dashboard_host",
    "dashboard_port",
}
# Ray options accepted for compatibility that have no meaning here.
IGNORED_NODE_ARGS = {
    "_system_config",
    "min_worker_port",
    "max_worker_port",
    "redis_port",
    "namespace",
    "enable_object_reconstruction",
    "memory",
}


class ClusterNode:
    """One node of a ``Cluster``: its daemons and its identity (Ray's ``Node``)."""

    def __init__(self, local: node.LocalNode, head: bool, ip: str, args: dict[str, Any]) -> None:
        self._local = local
        self.head = head
        self.node_ip_address = ip
        self.node_manager_port = local.raylet_address[1]
        self.gcs_address = local.gcs_address
        self.session_dir = local.session_dir
        self.metrics_export_port = local.metrics_export_port
        self.resources_args = args
        self.node_id = ""  # hex, known once the node registered with the GCS
        self.dead = False

    def __repr__(self) -> str:
        state = "dead" if self.dead else "alive"
        return (
            f"<ClusterNode {self.node_id[:8] or '?'} {self.raylet_address} "
            f"{'head ' if self.head else ''}{state}>"
        )

    @property
    def dashboard_url(self) -> str | None:
        """The head's dashboard, ``host:port`` (started with ``include_dashboard=True``)."""
        return self._local.dashboard_url

    @property
    def address(self) -> str:
        """The cluster's address (the GCS), as on Ray's Node."""
        return self.gcs_address

    @property
    def unique_id(self) -> str:
        """The node id in hexadecimal (Ray's ``node.unique_id``)."""
        return self.node_id

    @property
    def raylet_address(self) -> str:
        """``ip:port`` of the node's raylet."""
        return f"{self.node_ip_address}:{self.node_manager_port}"

    @property
    def pids(self) -> list[int]:
        """The node's daemons (GCS on the head, raylet), not its workers."""
        return self._local.pids

    def all_processes(self) -> list[int]:
        """Pids of every process of this node: daemons, fork server, workers."""
        pids: list[int] = []
        for pid in self._local.pids:
            try:
                proc = psutil.Process(pid)
                pids.append(pid)
                pids.extend(child.pid for child in proc.children(recursive=True))
            except psutil.Error:
                continue
        return pids

    def any_processes_alive(self) -> bool:
        """True while any of the node's daemons is still running."""
        return any(_alive(pid) for pid in self.all_processes())

    def kill_all_processes(self, allow_graceful: bool = True, timeout: float = 10.0) -> None:
        """Stop the node: gracefully (the raylet stops its workers) or by SIGKILL."""
        if self.dead:
            return
        self.dead = True
        if not allow_graceful:
            # The workers are the fork server's children: collect them before the kill
            # orphans them, then kill everything at once, as a power cut would.
            pids = self.all_processes()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_gone(pids, timeout)
        self._local.stop(timeout)


class Cluster:
    """Start a head node and add or remove nodes on loopback addresses.

    ``Cluster(initialize_head=True, head_node_args={"num_cpus": 1})`` starts the
    head; ``add_node(num_cpus=1, resources={"a": 1})`` adds a node;
    ``aioray.init(address=cluster.address)`` (or ``connect()``) attaches a driver.
    """

    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict[str, Any] | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        if connect and not initialize_head:
            raise ValueError("Cluster(connect=True) requires initialize_head=True.")
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self.started_nodes: list[ClusterNode] = []  # every node ever started, removed or not
        self._next_ip = 1
        self._connected = False
        self._gcs_address = ""
        self._env: dict[str, str] = {}  # daemons' config, from the head's _system_config
        if shutdown_at_exit:
            atexit.register(self.shutdown)
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()

    def __repr__(self) -> str:
        return f"<Cluster {self.address or 'no head'} nodes={len(self.list_all_nodes())}>"

    @property
    def address(self) -> str:
        """The GCS address ("host:port") to pass to ``aioray.init(address=...)``."""
        return self._gcs_address

    @property
    def gcs_address(self) -> str:
        """``ip:port`` of the head node's GCS: pass it to ``aioray.init(address=...)``."""
        return self._gcs_address

    def connect(self, namespace: str | None = None) -> Any:
        """Connect this process as a driver to the cluster (``aioray.init``)."""
        import aioray

        if self.head_node is None:
            raise RuntimeError("The cluster has no head node to connect to.")
        ctx = aioray.init(address=self.address, namespace=namespace)
        self._connected = True
        return ctx

    def list_all_nodes(self) -> list[ClusterNode]:
        """The head (first) and the worker nodes started and not removed."""
        head = [self.head_node] if self.head_node is not None else []
        return head + list(self.worker_nodes)

    # -- adding and removing nodes -----------------------------------------------------
    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start a node (the head if there is none yet) on the next loopback address."""
        unknown = set(node_args) - NODE_ARGS - IGNORED_NODE_ARGS
        if unknown:
            raise TypeError(f"add_node() got unexpected argument(s): {', '.join(sorted(unknown))}")
        args = {**DEFAULT_NODE_ARGS, **{k: v for k, v in node_args.items() if k in NODE_ARGS}}
        ip = args.pop("node_ip_address", None) or self._new_ip()
        head = self.head_node is None
        if head:
            self._env = system_config_env(node_args.get("_system_config") or {})
        with _environ(self._env):
            local = self._start(args, ip, head)
        new = ClusterNode(local, head, ip, args)
        self.started_nodes.append(new)
        if head:
            self.head_node = new
            self._gcs_address = local.gcs_address
        else:
            self.worker_nodes.append(new)
        if wait:
            self._wait_registered([new], config_timeout())
        return new

    def _start(self, args: dict[str, Any], ip: str, head: bool) -> node.LocalNode:
        return node.LocalNode.start(
            num_cpus=args.get("num_cpus"),
            num_gpus=args.get("num_gpus"),
            resources=args.get("resources"),
            object_store_memory=args.get("object_store_memory") or DEFAULT_OBJECT_STORE_MEMORY,
            labels=args.get("labels"),
            node_ip=ip,
            head=head,
            gcs_address=None if head else self._gcs_address,
            metrics_export_port=args.get("metrics_export_port") or 0,
            include_dashboard=head and bool(args.get("include_dashboard")),
            dashboard_host=args.get("dashboard_host") or "127.0.0.1",
            dashboard_port=args.get("dashboard_port", node.DASHBOARD_PORT),
        )

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node. ``allow_graceful=False`` SIGKILLs its raylet and workers."""
        if node is self.head_node:
            if self._connected:
                self._disconnect()
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)
        else:
            raise ValueError(f"{node!r} is not a node of this cluster.")
        node.kill_all_processes(allow_graceful=allow_graceful)

    def _new_ip(self) -> str:
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        return ip

    # -- waiting -------------------------------------------------------------------------
    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Wait until the GCS sees every node started here alive, and no other alive node."""
        self._wait_registered(self.list_all_nodes(), timeout, exact=True)

    def _wait_registered(
        self, wanted: list[ClusterNode], timeout: float, exact: bool = False
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = {
                (n["NodeManagerAddress"], n["NodeManagerPort"]): n["NodeID"]
                for n in self._gcs_nodes()
                if n["Alive"]
            }
            for cn in wanted:
                found = alive.get((cn.node_ip_address, cn.node_manager_port))
                if found:
                    cn.node_id = found
            missing = [cn for cn in wanted if not cn.node_id]
            extra = len(alive) - len(self.list_all_nodes()) if exact else 0
            if not missing and extra <= 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Timed out after {timeout}s waiting for nodes to register: "
                    f"{missing or f'{extra} removed node(s) still alive'}"
                )
            time.sleep(0.02)

    def _gcs_nodes(self) -> list[dict[str, Any]]:
        if not self._gcs_address:
            return []

        async def query() -> list[dict[str, Any]]:
            conn, _ = await rpc.connect(
                *node.split_address(self._gcs_address),
                hello={"role": "client"},
                timeout=5,
                token=node.token_for(self._gcs_address),
            )
            try:
                return list(await conn.call("get_nodes"))
            finally:
                conn.close()

        return _loop.run(query())  # type: ignore[return-value]

    # -- shutdown ------------------------------------------------------------------------
    def _disconnect(self) -> None:
        import aioray

        if aioray.is_initialized():
            aioray.shutdown()
        self._connected = False

    def shutdown(self) -> None:
        """Disconnect the driver if it was connected here, then stop every node."""
        if self._connected:
            self._disconnect()
        for n in reversed(self.worker_nodes):
            n.kill_all_processes()
        self.worker_nodes = []
        if self.head_node is not None:
            self.head_node.kill_all_processes()
            self.head_node = None
        atexit.unregister(self.shutdown)


class _AutoscalingHead(Cluster):
    """A Cluster whose head also runs the autoscaler with ``config_path``."""

    def __init__(self, config_path: str) -> None:
        super().__init__(shutdown_at_exit=False)
        self._config_path = config_path

    def _start(self, args: dict[str, Any], ip: str, head: bool) -> node.LocalNode:
        return node.LocalNode.start(
            num_cpus=args.get("num_cpus"),
            num_gpus=args.get("num_gpus"),
            resources=args.get("resources"),
            object_store_memory=args.get("object_store_memory") or DEFAULT_OBJECT_STORE_MEMORY,
            node_ip=ip,
            head=True,
            autoscaling_config=self._config_path,
        )


class AutoscalingCluster:
    """A head node with the autoscaler and the ``local`` provider (Ray's
    ``cluster_utils.AutoscalingCluster``): worker nodes are launched on loopback
    addresses as the demand needs them, and stopped when idle or at ``shutdown``.

    ``AutoscalingCluster(head_resources={"CPU": 0}, worker_node_types={"cpu2":
    {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 3}},
    idle_timeout_minutes=0.1)``; other keyword arguments are config keys.
    """

    def __init__(
        self,
        head_resources: dict[str, float],
        worker_node_types: dict[str, dict[str, Any]],
        autoscaler_v2: bool = False,
        **config_kwargs: Any,
    ) -> None:
        self.config: dict[str, Any] = {
            "cluster_name": "autoscaling-cluster",
            "provider": {"type": "local"},
            "head_node_type": "ray.head.default",
            "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
            "available_node_types": {
                "ray.head.default": {"resources": head_resources, "max_workers": 0},
                **worker_node_types,
            },
            **config_kwargs,
        }
        self._head_resources = dict(head_resources)
        self._cluster: Cluster | None = None
        self._path = ""

    @property
    def address(self) -> str:
        """The GCS address to pass to ``ray.init``; ``""`` before ``start()``."""
        return self._cluster.address if self._cluster is not None else ""

    @property
    def head_node(self) -> ClusterNode | None:
        """The head node of the underlying cluster, or None before ``start()``."""
        return self._cluster.head_node if self._cluster is not None else None

    def start(self, _system_config: dict[str, Any] | None = None) -> None:
        """Start the head and its autoscaler (a bad config raises ConfigError here)."""
        import json
        import tempfile

        from aioray.daemons.autoscaler.config import parse

        parse(self.config)
        fd, self._path = tempfile.mkstemp(prefix="aioray-autoscaling-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config, f)
        res = dict(self._head_resources)
        self._cluster = _AutoscalingHead(self._path)
        atexit.register(self.shutdown)
        self._cluster.add_node(
            num_cpus=res.pop("CPU", 0),
            num_gpus=res.pop("GPU", 0),
            resources=res,
            _system_config=_system_config,
        )

    def shutdown(self) -> None:
        """Stop the head, its autoscaler and every node it launched."""
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        if self._path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = ""
        atexit.unregister(self.shutdown)


# Ray's failure-detection settings, in the head's _system_config, as aioray config.
def system_config_env(system_config: dict[str, Any]) -> dict[str, str]:
    """Environment for the daemons from Ray's ``_system_config`` keys we honour."""
    from aioray._private.wire import config

    env = config.system_config_env(system_config)
    period_ms = system_config.get("health_check_period_ms")
    threshold = system_config.get("health_check_failure_threshold")
    if period_ms is not None:
        env["AIORAY_NODE_HEARTBEAT_S"] = str(period_ms / 1000)
        # Dead after `threshold` missed checks (Ray's default threshold: 5).
        env["AIORAY_NODE_TIMEOUT_S"] = str(period_ms * (threshold or 5) / 1000)
    return env


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """Set variables for the children started inside (they inherit the environment)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def config_timeout() -> float:
    """Seconds to wait for a node's daemons to start (AIORAY_DAEMON_START_TIMEOUT_S)."""
    from aioray._private.wire import config

    return config.DAEMON_START_TIMEOUT_S


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)  # another process's children: no event tells us they are gone
