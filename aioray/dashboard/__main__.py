"""``python -m aioray.dashboard``: the dashboard process, started by the head's launcher."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from aioray._private.rpc import loop as _loop
from aioray.dashboard.head import Dashboard


def main() -> None:
    p = argparse.ArgumentParser(prog="aioray.dashboard")
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--gcs-address", required=True)
    p.add_argument("--session-dir", required=True)
    p.add_argument("--lifeline-fd", type=int, default=None)
    a = p.parse_args()
    logging.basicConfig(
        filename=os.path.join(a.session_dir, "logs", "dashboard.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sock = socket.socket(fileno=a.listen_fd)
    _loop.run(Dashboard(a.gcs_address, a.session_dir).serve(sock, a.lifeline_fd))


if __name__ == "__main__":
    main()
