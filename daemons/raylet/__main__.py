"""``python -m aioray.daemons.raylet``: run one node's raylet in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import psutil
from aioray.daemons._common import raise_fd_limit, setup_logging
from aioray.daemons.raylet.server import Raylet
from aioray.daemons.raylet.store_service import spill_config_from

from aioray._private.node.node import split_address
from aioray._private.rpc import loop as _loop
from aioray._private.wire import config


def main() -> None:
    p = argparse.ArgumentParser(prog="aioray.daemons.raylet")
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--node-ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--listen-fd", type=int)
    p.add_argument("--lifeline-fd", type=int)
    p.add_argument("--session-dir", default="")
    p.add_argument("--num-cpus", type=float, default=1)
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--resources", default="{}")
    p.add_argument("--object-store-memory", type=int, default=0)
    p.add_argument("--object-spilling-directory", default="")
    p.add_argument("--system-config", default="{}")
    p.add_argument("--memory", type=float, default=0)
    p.add_argument("--labels", default="{}")
    p.add_argument("--head", action="store_true")
    p.add_argument("--metrics-export-port", type=int, default=0)
    p.add_argument("--metrics-listen-fd", type=int)
    p.add_argument("--forkserver-fd", type=int, help="a fork server's control channel")
    a = p.parse_args()
    setup_logging(a.session_dir, "raylet")
    raise_fd_limit()
    # Ray's default "memory" resource: what is free now, less the object store.
    memory = a.memory or max(0.0, psutil.virtual_memory().available * 0.7 - a.object_store_memory)
    resources = {"CPU": a.num_cpus, "GPU": a.num_gpus, "memory": memory, **json.loads(a.resources)}
    resources[f"node:{a.node_ip}"] = 1.0
    if a.head:
        resources["node:__internal_head__"] = 1.0
    raylet = Raylet(
        node_ip=a.node_ip,
        gcs_address=split_address(a.gcs_address),
        resources=resources,
        object_store_memory=a.object_store_memory,
        session_dir=a.session_dir,
        head=a.head,
        labels=json.loads(a.labels),
        prestart=config.PRESTART_WORKERS,
        spill=spill_config_from(a.object_spilling_directory, json.loads(a.system_config)),
        metrics_export_port=a.metrics_export_port,
    )
    try:
        _loop.run(
            raylet.run(a.listen_fd, a.port, a.lifeline_fd, a.metrics_listen_fd, a.forkserver_fd)
        )
    except ConnectionError as e:  # the GCS is unreachable or refused us: say why, briefly
        logging.getLogger("aioray.raylet").error("cannot join the cluster: %s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
