"""``python -m aioray.daemons.gcs``: run the GCS in the foreground."""

from __future__ import annotations

import argparse

from aioray.daemons._common import raise_fd_limit, setup_logging
from aioray.daemons.gcs.server import GcsServer

from aioray._private.rpc import loop as _loop
from aioray._private.wire import auth


def main() -> None:
    p = argparse.ArgumentParser(prog="aioray.daemons.gcs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--listen-fd", type=int)
    p.add_argument("--lifeline-fd", type=int)
    p.add_argument("--session-dir", default="")
    p.add_argument("--session-id", default="")
    p.add_argument("--dashboard-fd", type=int, help="the dashboard's socket: started on use")
    a = p.parse_args()
    setup_logging(a.session_dir, "gcs")
    raise_fd_limit()
    # The token: the environment's, else the one kept in the session directory (a
    # GCS restarted by hand with the same --session-dir), else a new one stored there.
    token = auth.token_from_env() or (
        auth.read_token_file(a.session_dir) if a.session_dir else None
    )
    if token is None and auth.enabled():
        token = auth.generate_token()
        if a.session_dir:
            auth.write_token_file(a.session_dir, token)
    auth.set_token(token)
    server = GcsServer(a.session_dir, a.session_id)
    _loop.run(server.run(a.host, a.port, a.listen_fd, a.lifeline_fd, a.dashboard_fd))


if __name__ == "__main__":
    main()
