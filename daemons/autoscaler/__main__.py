"""``python -m aioray.daemons.autoscaler``: the autoscaler of one cluster, on its head.

Started by ``aioray start --head --autoscaling-config FILE`` (and ``serve-node``,
and ``cluster_utils.AutoscalingCluster``) with the head's lifeline: it stops with
the head, and stops the nodes it launched (``local``) as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aioray.daemons._common import install_signal_handlers, setup_logging, watch_lifeline
from aioray.daemons.autoscaler import config as autoscaling_config
from aioray.daemons.autoscaler.local_provider import LocalNodeProvider
from aioray.daemons.autoscaler.monitor import JOIN_TIMEOUT_S, UPDATE_S, Monitor
from aioray.daemons.autoscaler.node_provider import NodeProvider, ProviderError

from aioray._private.node.node import split_address
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray._private.wire import auth, config

logger = logging.getLogger(__name__)


def make_provider(
    c: autoscaling_config.AutoscalingConfig, gcs_address: str, head_ip: str, log_dir: str
) -> NodeProvider:
    if c.provider["type"] == "kubernetes":
        from aioray.daemons.autoscaler.kubernetes_provider import KubernetesNodeProvider

        return KubernetesNodeProvider(c.provider, c.cluster_name)
    return LocalNodeProvider(gcs_address, c.cluster_name, head_ip, log_dir)


async def serve(a: argparse.Namespace, c: autoscaling_config.AutoscalingConfig) -> None:
    stopped = asyncio.Event()
    watch_lifeline(a.lifeline_fd, stopped.set)
    install_signal_handlers(stopped.set)
    logs = f"{a.session_dir}/logs" if a.session_dir else ""
    provider = make_provider(c, a.gcs_address, a.head_ip, logs)
    monitor = Monitor(c, provider, None, a.update_s, a.join_timeout_s)
    gcs, _ = await rpc.connect(
        *split_address(a.gcs_address),
        handlers={"demand_changed": monitor.handle_demand_changed},
        hello={"role": "autoscaler"},
        timeout=config.CONNECT_TIMEOUT_S,
        name="gcs",
    )
    gcs.on_close.append(lambda _: stopped.set())  # the cluster is gone
    monitor.gcs = gcs
    await gcs.call("watch_demand")
    logger.info("autoscaler started: %s, types %s", c.provider["type"], ", ".join(c.worker_types))
    try:
        await monitor.run(stopped)
    finally:
        gcs.close()
        logger.info("autoscaler stopped")


def main() -> None:
    p = argparse.ArgumentParser(prog="aioray.daemons.autoscaler")
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--head-ip", default="127.0.0.1")
    p.add_argument("--session-dir", default="")
    p.add_argument("--lifeline-fd", type=int)
    p.add_argument("--update-s", type=float, default=UPDATE_S)
    p.add_argument("--join-timeout-s", type=float, default=JOIN_TIMEOUT_S)
    a = p.parse_args()
    setup_logging(a.session_dir, "autoscaler")
    try:
        c = autoscaling_config.load(a.config)
    except autoscaling_config.ConfigError as e:
        print(f"aioray autoscaler: {e}", file=sys.stderr)
        sys.exit(2)
    auth.set_token(auth.token_from_env())
    try:
        _loop.run(serve(a, c))
    except ProviderError as e:  # e.g. kubernetes outside a pod, with no kubeconfig
        print(f"aioray autoscaler: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
