"""The ``local`` provider: worker nodes as ``aioray serve-node`` processes on this machine.

Each node gets its own loopback address (127.0.0.2, .3, ..., as ``cluster_utils``
does), so node ids, addresses and spillback behave as on separate machines; the
node's resources are its type's (``CPU``, ``GPU`` and custom ones), and
``node_config`` may give ``object_store_memory`` (bytes). The processes are this
autoscaler's children: each gets SIGTERM when the autoscaler dies (Linux parent
death signal), and ``close`` stops them all, so no node outlives the cluster.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from aioray.daemons.autoscaler.config import NodeType
from aioray.daemons.autoscaler.node_provider import (
    RUNNING,
    TAG_CLUSTER,
    TAG_NODE_TYPE,
    NodeProvider,
    ProviderError,
    ProviderNode,
)

logger = logging.getLogger(__name__)

DEFAULT_OBJECT_STORE_MEMORY = 100 * 1024 * 1024
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class LocalNodeProvider(NodeProvider):
    def __init__(
        self, gcs_address: str, cluster_name: str, head_ip: str = "127.0.0.1", log_dir: str = ""
    ) -> None:
        self.gcs_address = gcs_address
        self.cluster_name = cluster_name
        self.head_ip = head_ip
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], ProviderNode]] = {}
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        return f"<LocalNodeProvider nodes={len(self.procs)}>"

    def _free_ip(self) -> str:
        used = {node.ip for _, node in self.procs.values()} | {self.head_ip}
        for n in range(2, 255):
            ip = f"127.0.0.{n}"
            if ip not in used:
                return ip
        raise ProviderError("no free loopback address left (127.0.0.2-254 are all in use)")

    async def create_node(self, node_type: NodeType, count: int) -> list[str]:
        return [self._spawn(node_type) for _ in range(count)]

    def _spawn(self, t: NodeType) -> str:
        node_id = f"local-{next(self._seq)}"
        ip = self._free_ip()
        res = dict(t.resources)
        cpus, gpus = res.pop("CPU", 0.0), res.pop("GPU", 0.0)
        store = int(t.node_config.get("object_store_memory", DEFAULT_OBJECT_STORE_MEMORY))
        cmd = [
            sys.executable,
            "-m",
            "aioray.cli",
            "serve-node",
            "--address",
            self.gcs_address,
            "--node-ip-address",
            ip,
            "--num-cpus",
            str(cpus),
            "--num-gpus",
            str(gpus),
            "--resources",
            json.dumps(res),
            "--object-store-memory",
            str(store),
        ]
        out: Any = subprocess.DEVNULL
        if self.log_dir:
            path = os.path.join(self.log_dir, f"autoscaler-{node_id}.log")
            out = open(path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        except OSError as e:
            raise ProviderError(f"cannot start serve-node: {e}") from None
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        tags = {TAG_CLUSTER: self.cluster_name, TAG_NODE_TYPE: t.name}
        self.procs[node_id] = (proc, ProviderNode(node_id, t.name, ip, RUNNING, tags))
        logger.info("launched %s (%s) at %s, pid %d", node_id, t.name, ip, proc.pid)
        return node_id

    async def terminate_node(self, node_id: str) -> None:
        entry = self.procs.pop(node_id, None)
        if entry is None:
            return
        proc = entry[0]
        logger.info("terminating %s (pid %d)", node_id, proc.pid)
        await asyncio.get_running_loop().run_in_executor(None, _stop, [proc])

    async def non_terminated_nodes(self) -> list[ProviderNode]:
        for node_id, (proc, _) in list(self.procs.items()):
            if proc.poll() is not None:  # it exited on its own: gone
                logger.warning("%s exited with code %s", node_id, proc.returncode)
                del self.procs[node_id]
        return [node for _, node in self.procs.values()]

    async def close(self) -> None:
        procs = [p for p, _ in self.procs.values()]
        self.procs.clear()
        _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (serve-node stops its node cleanly), wait, SIGKILL what remains."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
