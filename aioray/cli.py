"""The ``aioray`` command: start, stop and inspect a node; run the microbenchmark."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import time
from typing import Any

import psutil

from aioray import _loop, node, rpc


def _add_node_options(p: argparse.ArgumentParser) -> None:
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aioray", description="aioray cluster commands")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a node's daemons in the background")
    start.add_argument("--head", action="store_true", help="start the GCS here (a new cluster)")
    start.add_argument("--address", help="GCS address host:port of the cluster to join")
    start.add_argument("--port", type=int, default=6379, help="GCS port (with --head)")
    _add_node_options(start)
    sub.add_parser("stop", help="stop the daemons started on this machine by 'aioray start'")
    status = sub.add_parser("status", help="nodes, their resources and state")
    status.add_argument("--address", default="auto")
    memory = sub.add_parser("memory", help="object references across the cluster (like ray memory)")
    memory.add_argument("--address", default="auto")
    logs = sub.add_parser("logs", help="list a session's log files, or print and follow one")
    logs.add_argument("name", nargs="?", help="a file name, or a worker's pid (its .out and .err)")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines to print (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until Ctrl-C")
    logs.add_argument("--session-dir", help="the session (default: the latest)")
    sub.add_parser(
        "microbenchmark",
        help="run benchmarks/microbenchmark.py (options after it go to the benchmark)",
        add_help=False,
    )
    return p


def _json_object_arg(flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"aioray: {flag} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"aioray: {flag} must be a JSON object")
    return value


def _resources_arg(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"aioray: --resources is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit("aioray: --resources must be a JSON object")
    return value


def cmd_start(a: argparse.Namespace) -> int:
    if not a.head and not a.address:
        print(
            "aioray start: give --head to start a cluster or --address to join one", file=sys.stderr
        )
        return 2
    gcs_address = None
    if a.address:
        gcs_address = node.resolve_address(a.address)
        _wait_for_gcs(gcs_address, 5.0)
    n = node.LocalNode.start(
        num_cpus=a.num_cpus,
        num_gpus=a.num_gpus,
        resources=_resources_arg(a.resources),
        object_store_memory=a.object_store_memory,
        object_spilling_directory=a.object_spilling_directory,
        system_config=_json_object_arg("--system-config", a.system_config or "{}"),
        node_ip=a.node_ip_address,
        head=a.head,
        gcs_address=gcs_address,
        gcs_port=a.port if a.head else 0,
        detached=True,
        labels=json.loads(a.labels),
    )
    _wait_for_node(n.gcs_address, n.raylet_address, 30.0)
    info = {
        "gcs_address": n.gcs_address,
        "gcs_pid": n.pids[0],
        "pids": n.pids,
        "session_dir": n.session_dir,
        "session_id": n.session_id,
    }
    os.makedirs(node.config.SESSION_ROOT, exist_ok=True)
    records = _read_started()
    records.append(info)
    with open(_started_file(), "w") as f:
        json.dump(records, f)
    if a.head:
        with open(node.CLUSTER_FILE, "w") as f:
            json.dump(info, f)
    print(f"aioray node started; GCS at {n.gcs_address}")
    print(f"Connect with: aioray.init(address='{n.gcs_address}')  (or address='auto' here)")
    print("Stop with: aioray stop")
    return 0


def _started_file() -> str:
    return os.path.join(node.config.SESSION_ROOT, "started_nodes.json")


def _read_started() -> list[dict[str, Any]]:
    try:
        with open(_started_file()) as f:
            return list(json.load(f))
    except (FileNotFoundError, ValueError):
        return []


def _gcs_call(address: str, method: str, timeout: float = 5.0) -> Any:
    async def call() -> Any:
        conn, _ = await rpc.connect(
            *node.split_address(address), hello={"role": "client"}, timeout=timeout
        )
        try:
            return await conn.call(method)
        finally:
            conn.close()

    return _loop.run(call())


def _wait_for_gcs(address: str, timeout: float) -> None:
    try:
        _gcs_call(address, "get_nodes", timeout)
    except ConnectionError as e:
        raise SystemExit(f"aioray: no cluster reachable at {address}: {e}") from None


def _wait_for_node(gcs_address: str, raylet: tuple[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for n in _gcs_call(gcs_address, "get_nodes"):
                if n["Alive"] and (n["NodeManagerAddress"], n["NodeManagerPort"]) == raylet:
                    return
        except ConnectionError:
            pass
        time.sleep(0.05)  # polling a daemon that is still starting
    raise SystemExit(f"aioray: the node did not register with {gcs_address} within {timeout}s")


def cmd_stop(a: argparse.Namespace) -> int:
    records = _read_started()
    pids = [pid for r in records for pid in r["pids"]]
    procs = []
    for pid in reversed(pids):  # raylets first, then the GCS
        try:
            p = psutil.Process(pid)
            if "aioray.daemons" in " ".join(p.cmdline()):
                p.send_signal(signal.SIGTERM)
                procs.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
    for path in (_started_file(), node.CLUSTER_FILE):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    print(f"Stopped {len(procs)} aioray daemon process(es).")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    try:
        address = node.resolve_address(a.address)
        nodes = _gcs_call(address, "get_nodes")
    except ConnectionError as e:
        print(f"aioray status: {e}", file=sys.stderr)
        return 1
    alive = [n for n in nodes if n["Alive"]]
    print(f"Cluster at {address}: {len(alive)} alive node(s), {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["Alive"] else "DEAD"
        print(f"  node {n['NodeID']}  {n['NodeManagerAddress']}:{n['NodeManagerPort']}  {state}")
        for key in sorted(n["Resources"]):
            if key.startswith("node:"):
                continue
            total, free = n["Resources"][key], n["Available"].get(key, 0.0)
            print(f"    {key}: {_fmt(total - free)}/{_fmt(total)} used")
    return 0


def cmd_memory(a: argparse.Namespace) -> int:
    from aioray import memory_report

    try:
        address = node.resolve_address(a.address)
        print(memory_report.memory_summary(address))
    except ConnectionError as e:
        print(f"aioray memory: {e}", file=sys.stderr)
        return 1
    return 0


def _fmt(x: float) -> str:
    if x >= 1024**3:
        return f"{x / 1024**3:.2f}GiB"
    return f"{x:g}"


def cmd_logs(a: argparse.Namespace) -> int:
    session = a.session_dir or latest_session()
    if session is None:
        print(f"aioray logs: no session under {node.config.SESSION_ROOT}", file=sys.stderr)
        return 1
    logs = os.path.join(session, "logs")
    try:
        names = sorted(os.listdir(logs))
    except OSError as e:
        print(f"aioray logs: {e}", file=sys.stderr)
        return 1
    if a.name is None:
        print(f"Log files of {session}:")
        for name in names:
            print(f"  {name:<28} {_fmt_size(os.path.getsize(os.path.join(logs, name)))}")
        return 0
    chosen = _match_logs(a.name, names)
    if not chosen:
        print(f"aioray logs: no log file {a.name!r} in {logs}", file=sys.stderr)
        return 1
    paths = [os.path.join(logs, name) for name in chosen]
    for path in paths:
        if len(paths) > 1:
            print(f"==> {os.path.basename(path)} <==")
        sys.stdout.write("".join(tail_lines(path, a.lines)))
    sys.stdout.flush()
    if a.follow:
        _follow(paths)
    return 0


def latest_session(root: str | None = None) -> str | None:
    """The most recently started session directory under ``root`` (SESSION_ROOT)."""
    root = root or node.config.SESSION_ROOT
    try:
        dirs = [e for e in os.scandir(root) if e.is_dir() and e.name.startswith("session_")]
    except OSError:
        return None
    # Names begin with the start time to the second; ctime orders a second's sessions.
    newest = max(
        dirs,
        key=lambda e: (e.name[: len("session_YYYY-mm-dd_HH-MM-SS")], e.stat().st_ctime),
        default=None,
    )
    return None if newest is None else newest.path


def _match_logs(name: str, names: list[str]) -> list[str]:
    """An exact file name; else files of that stem (``raylet``, ``worker-12``, ``12``)."""
    if name in names:
        return [name]
    stem = f"worker-{name}" if name.isdigit() else name
    return [n for n in names if n.rsplit(".", 1)[0] == stem]


def tail_lines(path: str, n: int) -> list[str]:
    """The last ``n`` lines of ``path``, read backwards from the end in blocks."""
    if n <= 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        while end > 0 and data.count(b"\n") <= n:
            start = max(0, end - 65536)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    return lines[-n:]


def _follow(paths: list[str]) -> None:
    offsets = {path: os.path.getsize(path) for path in paths}
    last = paths[-1]
    try:
        while True:
            for path in paths:
                try:
                    size = os.path.getsize(path)
                except OSError:
                    continue
                if size < offsets[path]:  # truncated: start over
                    offsets[path] = 0
                if size == offsets[path]:
                    continue
                with open(path, "rb") as f:
                    f.seek(offsets[path])
                    data = f.read(size - offsets[path])
                offsets[path] = size
                if len(paths) > 1 and path != last:
                    print(f"\n==> {os.path.basename(path)} <==")
                    last = path
                sys.stdout.flush()
                sys.stdout.buffer.write(data)  # bytes: a character split across reads stays whole
                sys.stdout.buffer.flush()
            time.sleep(0.2)  # polling files, as tail -f does
    except KeyboardInterrupt:
        pass


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def cmd_microbenchmark(args: list[str]) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "benchmarks", "microbenchmark.py")
    if not os.path.exists(script):
        print(
            "aioray microbenchmark: benchmarks/microbenchmark.py not found "
            "(it ships with the source tree)",
            file=sys.stderr,
        )
        return 1
    module = runpy.run_path(script, run_name="aioray_microbenchmark")
    return int(module["main"](args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["microbenchmark"]:  # every later option belongs to the benchmark
        return cmd_microbenchmark(argv[1:])
    a = _parser().parse_args(argv)
    commands = {
        "start": cmd_start,
        "stop": cmd_stop,
        "status": cmd_status,
        "logs": cmd_logs,
        "memory": cmd_memory,
    }
    return commands[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
