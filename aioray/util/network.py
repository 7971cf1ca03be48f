"""``get_node_ip_address``: the address other nodes reach this one at."""

from __future__ import annotations

import socket

from aioray._private.owner import worker_context


def get_node_ip_address(address: str = "8.8.8.8:53") -> str:
    """This node's IP: the one its raylet serves on when connected, else the address
    the kernel would route to ``address`` from (no packet is sent)."""
    cw = worker_context.core_worker
    if cw is not None:
        return cw.node_ip
    host, _, port = address.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, int(port)))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"
