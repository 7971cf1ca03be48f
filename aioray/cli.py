"""The ``aioray`` command: run, start, stop and inspect nodes (``node_commands``); logs;
the state CLI (``state_cli``: list, get, summary, timeline); the microbenchmark."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time

from aioray import __version__, job_cli, state_cli
from aioray._private.node import node, node_commands


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aioray", description="aioray cluster commands")
    p.add_argument("--version", action="version", version=f"aioray, version {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a node's daemons in the background")
    node_commands.add_node_options(start, foreground=False)
    serve = sub.add_parser(
        "serve-node", help="run a node in the foreground (containers, systemd, Kubernetes)"
    )
    node_commands.add_node_options(serve, foreground=True)
    sub.add_parser("stop", help="stop the daemons started on this machine by 'aioray start'")
    status = sub.add_parser("status", help="nodes, their resources and state")
    status.add_argument("--address", default=None, help=state_cli.ADDRESS_HELP)
    status.add_argument("--token", help="the cluster token (default: as for start)")
    memory = sub.add_parser("memory", help="object references across the cluster (like ray memory)")
    memory.add_argument("--address", default=None, help=state_cli.ADDRESS_HELP)
    logs = sub.add_parser("logs", help="list a session's log files, or print and follow one")
    logs.add_argument("name", nargs="?", help="a file name, or a worker's pid (its .out and .err)")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines to print (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until Ctrl-C")
    logs.add_argument(
        "--session-dir",
        help="the session (default: the running cluster's, from 'aioray start' or "
        "'serve-node --head'; else the latest)",
    )
    state_cli.add_log_options(logs)
    state_cli.add_commands(sub)
    job_cli.add_parser(sub)
    sub.add_parser(
        "microbenchmark",
        help="run benchmarks/microbenchmark.py (options after it go to the benchmark)",
        add_help=False,
    )
    return p


def memory_summary(address: str | None = None) -> str:
    """The ``aioray memory`` report, from this driver (joining ``address`` if not connected)."""
    from aioray import api
    from aioray._private.owner.memory_report import cluster_summary, format_report

    joined = False
    if not api.is_initialized():
        api.init(address=address or "auto", log_to_driver=False)
        joined = True
    try:
        cw = api.ensure_connected()
        nodes = cw.run_sync(cluster_summary(cw), timeout=30)
        return format_report(nodes, skip_pid=os.getpid() if joined else None)
    finally:
        if joined:
            api.shutdown()


def cmd_memory(a: argparse.Namespace) -> int:
    from aioray._private.wire import auth

    try:
        address = node.find_gcs_address(a.address)
        auth.set_token(node.token_for(address))
        print(memory_summary(address))
    except ConnectionError as e:
        print(f"aioray memory: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_logs(a: argparse.Namespace) -> int:
    if state_cli.wants_state_logs(a):  # Ray's selectors: ask the cluster, any node
        return state_cli.cmd_state_logs(a)
    session = a.session_dir or cluster_session() or latest_session()
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


def cluster_session() -> str | None:
    """The session directory of the cluster ``address="auto"`` finds, if it is running."""
    info = node.read_cluster_file()
    session = info.get("session_dir")
    if not session or not os.path.isdir(session):
        return None
    try:
        node.resolve_address("auto")  # (checks that its GCS still runs)
    except ConnectionError:
        return None
    return str(session)


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


def _check_autoscaling_config(a: argparse.Namespace) -> None:
    """A bad config fails here, naming the key, before any daemon starts."""
    from aioray.daemons.autoscaler.config import ConfigError, load

    if not a.head:
        raise SystemExit("aioray: --autoscaling-config runs the autoscaler on the head: add --head")
    try:
        load(a.autoscaling_config)
    except ConfigError as e:
        raise SystemExit(f"aioray: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["microbenchmark"]:  # every later option belongs to the benchmark
        return cmd_microbenchmark(argv[1:])
    a = _parser().parse_args(argv)
    if getattr(a, "autoscaling_config", None):
        _check_autoscaling_config(a)
    commands = {
        "start": node_commands.cmd_start,
        "serve-node": node_commands.cmd_serve_node,
        "stop": node_commands.cmd_stop,
        "status": node_commands.cmd_status,
        "logs": cmd_logs,
        "memory": cmd_memory,
        "list": state_cli.cmd_list,
        "get": state_cli.cmd_get,
        "summary": state_cli.cmd_summary,
        "timeline": state_cli.cmd_timeline,
        "job": job_cli.cmd_job,
    }
    return commands[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
