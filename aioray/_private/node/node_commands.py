"""``aioray serve-node | start | stop | status``: run, start, stop and inspect nodes.

``serve-node`` runs one node in the foreground: the raylet (and the GCS with
``--head``) as child processes tied to it by the lifeline pipe, logging to
stderr. SIGTERM or SIGINT stops the node cleanly (workers stopped, shared memory
freed, exit code 0); a daemon that dies on its own ends it with exit code 1, so
a container or a systemd unit restarts it. ``start`` does the same in the
background and records the node for ``stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from aioray._private.node import node
from aioray._private.node.autoscaler_status import format_status
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray._private.wire import auth, config

DASHBOARD = "aioray.dashboard"  # the head's web service, a daemon of its session


def add_node_options(p: argparse.ArgumentParser, *, foreground: bool) -> None:
    p.add_argument("--head", action="store_true", help="start the GCS here (a new cluster)")
    p.add_argument("--address", help="GCS address host:port of the cluster to join")
    p.add_argument("--port", type=int, default=6379, help="GCS port (with --head)")
    p.add_argument("--node-ip-address", default="127.0.0.1", help="address this node binds to")
    p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs (default: all)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs (default: 0)")
    p.add_argument("--resources", default="{}", help="custom resources as JSON, e.g. '{\"x\": 2}'")
    p.add_argument("--object-store-memory", type=int, default=None, help="bytes of shared memory")
    p.add_argument(
        "--object-spilling-directory",
        default=None,
        help="where objects spill when the store is full (default: the session dir)",
    )
    p.add_argument("--system-config", default=None, help="_system_config as JSON")
    p.add_argument("--labels", default="{}", help="node labels as JSON")
    p.add_argument(
        "--metrics-export-port",
        type=int,
        default=0,
        help="port of the node's Prometheus endpoint /metrics (default: a free port; "
        "every node's address is in the session's prom_metrics_service_discovery.json)",
    )
    p.add_argument(
        "--token",
        help=f"the cluster token (default: ${auth.TOKEN_ENV}; a head generates one; "
        "prefer the environment: a command line is visible to every user)",
    )
    p.add_argument(
        "--autoscaling-config",
        help="with --head: run the autoscaler with this cluster config (JSON, or YAML "
        "with PyYAML installed)",
    )
    p.add_argument(
        "--include-dashboard",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="serve the dashboard on the head (default: true)",
    )
    p.add_argument("--dashboard-host", default="127.0.0.1", help="the dashboard's address")
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=node.DASHBOARD_PORT,
        help="the dashboard's port (default 8265; the next free one if taken)",
    )
    p.add_argument(
        "--block",
        action="store_true",
        help="run in the foreground (serve-node)" if not foreground else "(always: foreground)",
    )
    noop = p.add_argument_group(
        "accepted for compatibility with ray start, no effect in aioray",
    )
    for flag in NOOP_VALUE_FLAGS:
        noop.add_argument(flag, default=None, metavar="X", help=argparse.SUPPRESS)
    for flag in NOOP_SWITCHES:
        noop.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    noop.description = "  " + " ".join([*NOOP_VALUE_FLAGS, *NOOP_SWITCHES])


# Ray's ``ray start`` flags that mean nothing here: accepted, so Ray's scripts, Helm
# charts and systemd units start aioray unchanged.
NOOP_VALUE_FLAGS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--dashboard-grpc-port",
    "--ray-client-server-port",
    "--runtime-env-agent-port",
    "--temp-dir",
    "--storage",
    "--min-worker-port",
    "--max-worker-port",
    "--worker-port-list",
    "--node-manager-port",
    "--object-manager-port",
    "--redis-password",
    "--redis-shard-ports",
    "--memory",
    "--plasma-directory",
    "--log-style",
    "--log-color",
    "--plasma-store-socket-name",
    "--raylet-socket-name",
    "--tracing-startup-hook",
    "--node-name",
)
NOOP_SWITCHES = (
    "--disable-usage-stats",
    "--enable-usage-stats",
    "--no-monitor",
    "--include-log-monitor",
    "--verbose",
    "-v",
)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(option: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"aioray: {option} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"aioray: {option} must be a JSON object")
    return value


def _start_node(a: argparse.Namespace, *, detached: bool) -> tuple[node.LocalNode, str | None]:
    """Check the arguments, find the cluster and its token, start the daemons."""
    if a.head == bool(a.address):
        raise SystemExit("aioray: give --head to start a cluster or --address to join one")
    resources = _json_object("--resources", a.resources)
    labels = _json_object("--labels", a.labels)
    system_config = _json_object("--system-config", a.system_config or "{}")
    token = a.token
    gcs_address = None
    if a.address:
        try:
            gcs_address = node.resolve_address(a.address)
        except (ValueError, ConnectionError) as e:
            raise SystemExit(f"aioray: {e}") from None
        token = token or node.token_for(gcs_address)
        if token is not None:
            auth.set_token(token)
        _check_gcs(gcs_address)
    try:
        n = _launch(a, resources, labels, system_config, gcs_address, token, detached)
    except ValueError as e:  # e.g. a public dashboard without authentication
        raise SystemExit(f"aioray: {e}") from None
    except OSError as e:  # the port is taken, or the address is not this machine's
        where = e.filename or (f"{a.node_ip_address}:{a.port}" if a.head else a.node_ip_address)
        raise SystemExit(f"aioray: cannot listen on {where}: {e.strerror or e}") from None
    auth.set_token(n.token)
    try:
        _wait_for_node(n, config.DAEMON_START_TIMEOUT_S)
    except BaseException:
        n.stop()
        raise
    return n, n.token


def _launch(
    a: argparse.Namespace,
    resources: dict[str, Any],
    labels: dict[str, Any],
    system_config: dict[str, Any],
    gcs_address: str | None,
    token: str | None,
    detached: bool,
) -> node.LocalNode:
    return node.LocalNode.start(
        num_cpus=a.num_cpus,
        num_gpus=a.num_gpus,
        resources=resources,
        object_store_memory=a.object_store_memory,
        object_spilling_directory=a.object_spilling_directory,
        system_config=system_config,
        node_ip=a.node_ip_address,
        head=a.head,
        gcs_address=gcs_address,
        gcs_port=a.port if a.head else 0,
        detached=detached,
        labels=labels,
        token=token,
        log_to_stderr=not detached,
        metrics_export_port=a.metrics_export_port,
        autoscaling_config=a.autoscaling_config,
        include_dashboard=a.head and a.include_dashboard,
        dashboard_host=a.dashboard_host,
        dashboard_port=a.dashboard_port,
    )


def cmd_start(a: argparse.Namespace) -> int:
    if a.block:
        return cmd_serve_node(a)
    n, token = _start_node(a, detached=True)
    info = {
        "gcs_address": n.gcs_address,
        "gcs_pid": n.pids[0],
        "pids": n.pids,
        "session_dir": n.session_dir,
        "session_id": n.session_id,
    }
    os.makedirs(config.SESSION_ROOT, exist_ok=True)
    records = _read_started()
    records.append(info)
    with open(_started_file(), "w") as f:
        json.dump(records, f)
    if a.head:
        node.write_cluster_file({**info, "token": token})
    print(f"aioray node started; GCS at {n.gcs_address}")
    print(f"Prometheus metrics at http://{n.raylet_address[0]}:{n.metrics_export_port}/metrics")
    if n.dashboard_url:
        print(f"Dashboard at http://{n.dashboard_url}")
    print(f"Connect with: aioray.init(address='{n.gcs_address}')  (or address='auto' here)")
    if a.head and token:
        print(f"Cluster token: in {os.path.join(n.session_dir, auth.TOKEN_FILE)}")
        print(f"  join from another machine with {auth.TOKEN_ENV}=<token> aioray start --address")
    print("Stop with: aioray stop")
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def cmd_serve_node(a: argparse.Namespace) -> int:
    """Run the node in the foreground until SIGTERM/SIGINT, or until a daemon dies."""
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    n: node.LocalNode | None = None
    code = 0
    try:
        n, token = _start_node(a, detached=False)
        if a.head:  # address="auto" and `aioray status` find it, as after `aioray start`
            node.write_cluster_file(_cluster_record(n, token))
        print(
            f"aioray node serving: GCS {n.gcs_address}, raylet "
            f"{n.raylet_address[0]}:{n.raylet_address[1]}, metrics port "
            f"{n.metrics_export_port}, session {n.session_dir}"
            + (f", dashboard http://{n.dashboard_url}" if n.dashboard_url else ""),
            file=sys.stderr,
            flush=True,
        )
        pid = _wait_any_child()
        name = {p.pid: _name(p) for p in n.procs}.get(pid, f"pid {pid}")
        print(f"aioray serve-node: {name} exited; stopping the node", file=sys.stderr, flush=True)
        code = 1
    except _Stop:
        code = 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if n is not None:
            if a.head and node.read_cluster_file().get("gcs_address") == n.gcs_address:
                node.remove_cluster_file()
            n.stop()
    return code


def _cluster_record(n: node.LocalNode, token: str | None) -> dict[str, Any]:
    return {
        "gcs_address": n.gcs_address,
        "gcs_pid": n.pids[0],
        "pids": n.pids,
        "session_dir": n.session_dir,
        "session_id": n.session_id,
        "token": token,
    }


def _name(proc: subprocess.Popen[bytes]) -> str:
    """The daemon a child runs: ``aioray.daemons.gcs`` or ``aioray.daemons.raylet``."""
    return str(list(proc.args)[2])  # type: ignore[arg-type]


def _wait_any_child() -> int:
    """Block until a child process exits (without reaping it); its pid."""
    while True:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if info is not None:
            return info.si_pid


def _started_file() -> str:
    return os.path.join(config.SESSION_ROOT, "started_nodes.json")


def _read_started() -> list[dict[str, Any]]:
    try:
        with open(_started_file()) as f:
            return list(json.load(f))
    except (FileNotFoundError, ValueError):
        return []


def gcs_call(address: str, method: str, timeout: float | None = None, body: Any = None) -> Any:
    """One request to the GCS at ``address`` on a connection of its own; the reply's body."""

    async def call() -> Any:
        conn, _ = await rpc.connect(
            *node.split_address(address),
            hello={"role": "client"},
            timeout=timeout or config.CONNECT_TIMEOUT_S,
        )
        try:
            return await conn.call(method, body)
        finally:
            conn.close()

    return _loop.run(call())


def _check_gcs(address: str) -> None:
    try:
        gcs_call(address, "get_nodes")
    except ConnectionError as e:
        raise SystemExit(f"aioray: cannot join the cluster at {address}: {e}") from None


def _wait_for_node(n: node.LocalNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        dead = [p for p in n.procs if p.poll() is not None]
        if dead:
            raise SystemExit(
                f"aioray: {_name(dead[0])} exited with code {dead[0].returncode} while "
                f"starting; see {os.path.join(n.session_dir, 'logs')}"
            )
        try:
            for info in gcs_call(n.gcs_address, "get_nodes"):
                address = (info["NodeManagerAddress"], info["NodeManagerPort"])
                if info["Alive"] and address == n.raylet_address:
                    return
        except ConnectionError as e:
            why = f" ({e})"
        time.sleep(0.05)  # polling daemons that are still starting
    raise SystemExit(f"aioray: the node did not register with {n.gcs_address} in {timeout}s{why}")


def _module_and_session(cmdline: list[str]) -> tuple[str, str] | None:
    """(``aioray.daemons.X`` or the dashboard, its ``--session-dir``) of an aioray
    process, else None."""
    try:
        module = cmdline[cmdline.index("-m") + 1]
        session = cmdline[cmdline.index("--session-dir") + 1]
    except (ValueError, IndexError):
        return None
    if not (module.startswith("aioray.daemons.") or module == DASHBOARD) or not session:
        return None
    return module, os.path.realpath(session)


def session_processes(session_dirs: set[str]) -> list[tuple[psutil.Process, str]]:
    """Every process of these sessions (daemons, fork servers, workers) and its module.

    Found by the ``--session-dir`` on its command line rather than by recorded pids:
    a GCS restarted by hand (docs/deploy.md) carries its session too, and a worker
    whose raylet was killed is still found.
    """
    wanted = {os.path.realpath(d) for d in session_dirs}
    found = []
    for p in psutil.process_iter(["cmdline"]):
        which = _module_and_session(p.info["cmdline"] or [])
        if which is not None and which[1] in wanted and p.pid != os.getpid():
            found.append((p, which[0]))
    return found


def cmd_stop(a: argparse.Namespace) -> int:
    records = _read_started()
    sessions = {r["session_dir"] for r in records if r.get("session_dir")}
    found = session_processes(sessions)
    # Raylets first (each stops its fork server and workers), then the GCS.
    daemons = [p for p, m in found if m == "aioray.daemons.raylet"]
    daemons += [p for p, m in found if m in ("aioray.daemons.gcs", DASHBOARD)]
    procs = []
    for p in daemons:
        try:
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    # What a raylet that could not stop cleanly left: its fork server and workers.
    for p, _ in session_processes(sessions):
        try:
            p.kill()
        except psutil.Error:
            continue
    for path in (_started_file(), node.CLUSTER_FILE):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    print(f"Stopped {len(procs)} aioray daemon process(es).")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    try:
        address = node.find_gcs_address(a.address)
        auth.set_token(a.token or node.token_for(address))
        nodes = gcs_call(address, "get_nodes")
        print(format_status(gcs_call(address, "get_autoscaler_status")))
        print()
    except (ValueError, ConnectionError) as e:
        print(f"aioray status: {e}", file=sys.stderr)
        return 1
    alive = [n for n in nodes if n["Alive"]]
    print(f"Cluster at {address}: {len(alive)} alive node(s), {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["Alive"] else "DEAD"
        head = " (head)" if n.get("IsHead") else ""
        print(
            f"  node {n['NodeID']}  {n['NodeManagerAddress']}:{n['NodeManagerPort']}  {state}{head}"
        )
        for key in sorted(n["Resources"]):
            if key.startswith("node:"):
                continue
            total, free = n["Resources"][key], n["Available"].get(key, 0.0)
            fmt = _fmt_bytes if "memory" in key else _fmt
            used = f"{fmt(total - free)}/{fmt(total)} used" if n["Alive"] else fmt(total)
            print(f"    {key}: {used}")
        if n.get("Labels"):
            print(f"    labels: {json.dumps(n['Labels'])}")
    return 0


def _fmt_bytes(x: float) -> str:
    """A byte count as Ray's status shows one: 7.06GiB, 512.00MiB, 0B."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}B"


def _fmt(x: float) -> str:
    if x >= 1024**3:
        return f"{x / 1024**3:.2f}GiB"
    return f"{x:g}"
