"""Starting and finding a node's daemons (GCS, raylet) as real processes.

``LocalNode.start`` binds the listening sockets itself and hands them to the
children (``pass_fds``), so the daemons start in parallel with no port race and
clients can connect at once (the kernel queues connections until the daemon
accepts). The raylet's fork server starts beside them too, on a socketpair the
raylet adopts, rather than after the raylet's own imports. A daemon started by
``init()`` holds the read end of a "lifeline" pipe whose write end only the driver
has: when the driver exits for any reason the pipe closes and the daemons shut
down, so nothing outlives its driver.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import psutil

from aioray._private.wire import auth, config, object_store

CLUSTER_FILE = os.path.join(config.SESSION_ROOT, "aioray_current_cluster")
GCS_ADDRESS_FILE = "gcs_address"  # in a head's session directory
DASHBOARD_URL_FILE = "dashboard_url"  # in a head's session directory, once it serves
# The GCS allocates and frees large blocks as its task table's hash tables grow and turn
# over. glibc raises its mmap threshold each time it frees a mapped block; blocks of
# that size then come from the heap, whose freed pages stay with the process: an hour's
# soak saw the GCS's RSS step up 10 MiB that way, for good. A fixed threshold (setting
# it turns the raising off) keeps large blocks mapped, given back to the OS when freed.
# A value already in the environment wins.
DAEMON_ENV = {"gcs": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}}
DASHBOARD_PORT = 8265  # Ray's default


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Invalid address {address!r}: expected 'host:port'.")
    return host, int(port)


def resolve_address(address: str) -> str:
    """Turn "auto" into the address of the cluster started on this machine."""
    if address != "auto":
        split_address(address)
        return address
    info = read_cluster_file()
    if not info:
        raise ConnectionError(
            "Could not find any running aioray instance. Start one with 'aioray start --head'."
        ) from None
    if not psutil.pid_exists(info.get("gcs_pid", -1)):
        raise ConnectionError(f"The aioray cluster at {info['gcs_address']} is not running.")
    return str(info["gcs_address"])


# The variables that name the cluster to join when no address is given: aioray's
# first, then Ray's (a submitted job's entrypoint has both).
ADDRESS_ENV = ("AIORAY_ADDRESS", "RAY_ADDRESS")


def address_from_env(address: str | None) -> str | None:
    """The address a caller means, read as Ray reads it: the one given, unless it is
    None or "auto"; then ``AIORAY_ADDRESS``, else ``RAY_ADDRESS``; else as given."""
    if address not in (None, "", "auto"):
        return address
    for name in ADDRESS_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return address


def find_gcs_address(address: str | None) -> str:
    """The GCS "host:port" of the cluster ``address`` names, for tools that join none
    (``aioray status``, the State API): the address given, else the environment's
    (``address_from_env``), else this machine's cluster ("auto"). A dashboard's
    ``http://host:port`` names its cluster's GCS when that head runs on this machine."""
    address = address_from_env(address) or "auto"
    if "://" not in address:
        return resolve_address(address)
    hostport = address.split("://", 1)[1].rstrip("/")
    for path in _session_dirs():
        if _read(os.path.join(path, DASHBOARD_URL_FILE)) == hostport:
            gcs = _read(os.path.join(path, GCS_ADDRESS_FILE))
            if gcs:
                return gcs
    raise ValueError(
        f"address {address!r} names a dashboard that is not on this machine; give the "
        f"cluster's GCS address (host:port, as printed by 'aioray start --head') or 'auto'."
    )


# Tokens of the head nodes this process started (LocalNode, cluster_utils.Cluster).
_started_tokens: dict[str, str] = {}


def token_for(gcs_address: str) -> str | None:
    """The token to join the cluster at ``gcs_address``: the environment's, else that
    of a head this process started there, else the one ``aioray start --head`` left in
    this machine's cluster file for that address."""
    token = auth.token_from_env()
    if token is not None or not auth.enabled():
        return token
    if gcs_address in _started_tokens:
        return _started_tokens[gcs_address]
    info = read_cluster_file()
    if info.get("gcs_address") == gcs_address:
        return info.get("token")
    return _session_token(gcs_address)


def _session_token(gcs_address: str) -> str | None:
    """The token of a head started on this machine (by ``init()`` too) at that address:
    its session directory records the address and keeps the token, readable by the
    user who started it only (as Ray's local clusters keep theirs in a file)."""
    try:
        sessions = sorted(
            (e for e in os.scandir(config.SESSION_ROOT) if e.name.startswith("session_")),
            key=lambda e: e.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return None
    for entry in sessions:
        try:
            with open(os.path.join(entry.path, GCS_ADDRESS_FILE)) as f:
                if f.read().strip() != gcs_address:
                    continue
        except OSError:
            continue
        token = auth.read_token_file(entry.path)
        if token is not None:
            return token
    return None


def read_cluster_file() -> dict[str, Any]:
    try:
        with open(CLUSTER_FILE) as f:
            return dict(json.load(f))
    except (FileNotFoundError, ValueError):
        return {}


def remove_cluster_file() -> None:
    try:
        os.unlink(CLUSTER_FILE)
    except FileNotFoundError:
        pass


def write_cluster_file(info: dict[str, Any]) -> None:
    """The head's address, pids and token, for ``address="auto"`` (owner-only: a secret)."""
    os.makedirs(os.path.dirname(CLUSTER_FILE), exist_ok=True)
    fd = os.open(CLUSTER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)


def find_local_raylet(gcs_address: str, node_ip: str) -> tuple[str, int]:
    """Ask the GCS which raylet runs on this host."""
    from aioray._private.rpc import loop as _loop
    from aioray._private.rpc import rpc

    async def query() -> list[dict[str, Any]]:
        conn, _ = await rpc.connect(
            *split_address(gcs_address), hello={"role": "client"}, timeout=config.CONNECT_TIMEOUT_S
        )
        try:
            return list(await conn.call("get_nodes"))
        finally:
            conn.close()

    deadline = time.monotonic() + config.CONNECT_TIMEOUT_S
    while True:
        try:
            nodes: list[dict[str, Any]] = _loop.run(query())  # type: ignore[assignment]
        except ConnectionError as e:  # keep the class: AuthenticationError says why
            raise type(e)(
                f"Could not connect to the aioray cluster at {gcs_address}: {e}"
            ) from None
        alive = [n for n in nodes if n["Alive"]]
        for n in alive:
            if n["NodeManagerAddress"] == node_ip:
                return n["NodeManagerAddress"], n["NodeManagerPort"]
        if alive:
            return alive[0]["NodeManagerAddress"], alive[0]["NodeManagerPort"]
        if time.monotonic() >= deadline:
            raise ConnectionError(f"The cluster at {gcs_address} has no alive node.")
        time.sleep(0.05)  # a node that is starting registers within moments


def _listen(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((ip, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, e.strerror, f"{ip}:{port}") from None  # which port: filename
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _listen_from(host: str, port: int, tries: int = 100) -> socket.socket:
    """Listen on ``port``, or on the next free port after it (Ray's dashboard does too)."""
    for candidate in range(port, port + tries) if port else [0]:
        try:
            return _listen(host, candidate)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    return _listen(host, 0)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def find_dashboard(address: str | None) -> tuple[str, str | None]:
    """The dashboard's ``http://host:port`` and the cluster token to use with it.

    ``address``: ``http(s)://host:port`` or ``host:port`` of a dashboard, or None/"auto"
    for this machine's cluster (``aioray start --head``, else the newest ``init()``
    session). The token: the environment's, else the session's that serves ``address``."""
    sessions = _session_dirs()
    if address in (None, "", "auto"):
        info = read_cluster_file()
        ordered = [info["session_dir"]] if info.get("session_dir") else []
        for path in ordered + sessions:
            url = _read(os.path.join(path, DASHBOARD_URL_FILE))
            if url:
                return "http://" + url, auth.token_from_env() or auth.read_token_file(path)
        raise ConnectionError(
            "Could not find a dashboard on this machine: give its address "
            "(http://host:8265) or start a cluster with 'aioray start --head'."
        )
    url = address if "://" in address else "http://" + address
    hostport = url.split("://", 1)[1].rstrip("/")
    token = auth.token_from_env()
    if token is None:
        for path in sessions:
            if _read(os.path.join(path, DASHBOARD_URL_FILE)) == hostport:
                token = auth.read_token_file(path)
                break
    return url.rstrip("/"), token


def local_dashboard_of(gcs_address: str) -> str | None:
    """The ``http://host:port`` of the dashboard of the cluster whose GCS is at
    ``gcs_address``, when that head runs on this machine; else None."""
    for path in _session_dirs():
        if _read(os.path.join(path, GCS_ADDRESS_FILE)) == gcs_address:
            url = _read(os.path.join(path, DASHBOARD_URL_FILE))
            return "http://" + url if url else None
    return None


def is_local_dashboard(hostport: str) -> bool:
    """Whether a head on this machine serves its dashboard at ``hostport``."""
    return any(_read(os.path.join(p, DASHBOARD_URL_FILE)) == hostport for p in _session_dirs())


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _session_dirs() -> list[str]:
    """This machine's session directories, newest first."""
    try:
        entries = [e for e in os.scandir(config.SESSION_ROOT) if e.name.startswith("session_")]
    except OSError:
        return []
    return [e.path for e in sorted(entries, key=lambda e: e.stat().st_mtime, reverse=True)]


def new_session_dir() -> tuple[str, str]:
    session_id = os.urandom(4).hex()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = os.path.join(config.SESSION_ROOT, f"session_{stamp}_{os.getpid()}_{session_id}")
    os.makedirs(os.path.join(path, "logs"), exist_ok=True)
    return session_id, path


def default_object_store_memory() -> int:
    total = psutil.virtual_memory().total
    want = int(total * 0.3)
    try:
        st = os.statvfs(object_store.shm_dir())
        want = min(want, int(st.f_bavail * st.f_frsize * 0.95))
    except OSError:
        pass
    return max(want, 64 * 1024 * 1024)


class LocalNode:
    """The daemon processes of one node started from this machine."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gcs_address = ""
        self.raylet_address: tuple[str, int] = ("", 0)
        self.metrics_export_port = 0  # the raylet's Prometheus endpoint
        self.session_dir = ""
        self.session_id = ""
        self.token: str | None = None
        self._lifeline_w: int | None = None
        self._env: dict[str, str] = {}
        self.dashboard_url: str | None = None  # host:port, as Ray's

    @classmethod
    def start(
        cls,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        object_store_memory: int | None = None,
        object_spilling_directory: str | None = None,
        system_config: dict[str, Any] | None = None,
        node_ip: str = "127.0.0.1",
        head: bool = True,
        gcs_address: str | None = None,
        gcs_port: int = 0,
        raylet_port: int = 0,
        detached: bool = False,
        labels: dict[str, str] | None = None,
        token: str | None = None,
        log_to_stderr: bool = False,
        metrics_export_port: int = 0,
        autoscaling_config: str | None = None,
        include_dashboard: bool = False,
        dashboard_host: str = "127.0.0.1",
        dashboard_port: int = DASHBOARD_PORT,
    ) -> LocalNode:
        """Start the node's daemons (the GCS too with ``head``).

        ``token``: the cluster token; a head without one uses the environment's or
        generates one. ``log_to_stderr``: the daemons log to this process's stderr
        (``aioray serve-node``) as well as to the session's log files.
        ``metrics_export_port``: where the node serves Prometheus metrics (0: a free port).
        ``autoscaling_config``: a head also runs the autoscaler with this config file
        (``aioray.daemons.autoscaler``), tied to the node's life like the other daemons.
        ``include_dashboard`` (head only): serve the dashboard on ``dashboard_host``, at
        ``dashboard_port`` or the next free port; the GCS holds the port and starts the
        dashboard on its first connection (``daemons/gcs/dashboard_process.py``).
        """
        config.memory_monitor_settings()  # a bad setting fails here, not in the raylet
        if head and include_dashboard and not _is_loopback(dashboard_host) and not auth.enabled():
            raise ValueError(
                f"Refusing to serve the dashboard on {dashboard_host} with authentication "
                "disabled (AIORAY_AUTH_MODE=disabled): anyone who can reach it could run "
                "commands on this cluster. Bind it to 127.0.0.1, or enable authentication."
            )
        self = cls()
        self.session_id, self.session_dir = new_session_dir()
        if head:
            self.token = token or auth.token_from_env()
            if self.token is None and auth.enabled():
                self.token = auth.generate_token()
        else:
            self.token = token or (token_for(gcs_address) if gcs_address else None)
        self._env = dict(os.environ)
        self._env.update(config.system_config_env(system_config or {}))
        if self.token is not None and auth.enabled():
            self._env[auth.TOKEN_ENV] = self.token
            auth.write_token_file(self.session_dir, self.token)
        if log_to_stderr:
            self._env["AIORAY_LOG_TO_STDERR"] = "1"
        logs = os.path.join(self.session_dir, "logs")
        fds: list[int] = []
        socks = []
        lifeline_r = None
        if not detached:
            lifeline_r, self._lifeline_w = os.pipe()
            fds.append(lifeline_r)
        common = ["--session-dir", self.session_dir]
        if lifeline_r is not None:
            common += ["--lifeline-fd", str(lifeline_r)]
        try:
            if head:
                gsock = _listen(node_ip, gcs_port)
                socks.append(gsock)
                self.gcs_address = f"{node_ip}:{gsock.getsockname()[1]}"
                if self.token is not None:
                    _started_tokens[self.gcs_address] = self.token
                with open(os.path.join(self.session_dir, GCS_ADDRESS_FILE), "w") as f:
                    f.write(self.gcs_address)
                gcs_args = [*common, "--listen-fd", str(gsock.fileno())]
                gcs_args += ["--session-id", self.session_id]
                gcs_fds = [*fds, gsock.fileno()]
                if include_dashboard:  # the GCS starts it when its port is first connected to
                    dsock = self._dashboard_socket(dashboard_host, dashboard_port)
                    socks.append(dsock)
                    gcs_args += ["--dashboard-fd", str(dsock.fileno())]
                    gcs_fds.append(dsock.fileno())
                self._spawn("gcs", gcs_args, gcs_fds, logs, detached)
            else:
                assert gcs_address is not None
                self.gcs_address = gcs_address
            rsock = _listen(node_ip, raylet_port)
            socks.append(rsock)
            self.raylet_address = (node_ip, rsock.getsockname()[1])
            msock = _listen(node_ip, metrics_export_port)
            socks.append(msock)
            self.metrics_export_port = msock.getsockname()[1]
            args = [
                *common,
                "--listen-fd",
                str(rsock.fileno()),
                "--gcs-address",
                self.gcs_address,
                "--node-ip",
                node_ip,
                "--num-cpus",
                str(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
                "--num-gpus",
                str(num_gpus or 0),
                "--resources",
                json.dumps(resources or {}),
                "--object-store-memory",
                str(object_store_memory or default_object_store_memory()),
                "--labels",
                json.dumps(labels or {}),
                "--metrics-listen-fd",
                str(msock.fileno()),
                "--metrics-export-port",
                str(self.metrics_export_port),
            ]
            # The fork server starts beside the raylet rather than after its imports: the
            # first task waits for a worker, which waits for the fork server's imports.
            ours, theirs = socket.socketpair()
            socks += [ours, theirs]
            args += ["--forkserver-fd", str(ours.fileno())]
            if object_spilling_directory:
                args += ["--object-spilling-directory", object_spilling_directory]
            if system_config:
                args += ["--system-config", json.dumps(system_config)]
            if head:
                args.append("--head")
            raylet_fds = [*fds, rsock.fileno(), msock.fileno(), ours.fileno()]
            self._spawn("raylet", args, raylet_fds, logs, detached)
            # (after the raylet: a node serving in the foreground names the first of its
            # children to exit, and the fork server exits when its raylet does)
            fork_args = ["--control-fd", str(theirs.fileno()), "--session-dir", self.session_dir]
            self._spawn("forkserver", fork_args, [theirs.fileno()], logs, detached)
            if head and autoscaling_config:
                autoscaler = ["--gcs-address", self.gcs_address, "--head-ip", node_ip]
                autoscaler += ["--config", os.path.abspath(autoscaling_config)]
                self._spawn("autoscaler", [*common, *autoscaler], fds, logs, detached)
        except BaseException:
            self.stop()
            raise
        finally:
            for s in socks:
                s.close()
            if lifeline_r is not None:
                os.close(lifeline_r)
        return self

    def _dashboard_socket(self, host: str, port: int) -> socket.socket:
        """The dashboard's listening socket (``port`` or the next free one); its URL is
        known, and written to the session, before any process serves it."""
        sock = _listen_from(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        self.dashboard_url = f"{bound_host}:{bound_port}"
        with open(os.path.join(self.session_dir, DASHBOARD_URL_FILE), "w") as f:
            f.write(self.dashboard_url)
        return sock

    def _spawn(self, name: str, args: list[str], fds: list[int], logs: str, detached: bool) -> None:
        cmd = [sys.executable, "-m", f"aioray.daemons.{name}", *args]
        out: Any = None
        if detached:
            out = open(os.path.join(logs, f"{name}.out"), "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd,
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**DAEMON_ENV.get(name, {}), **self._env},
            # Their own session: a Ctrl-C in the driver's terminal interrupts the driver,
            # not the cluster (the lifeline still ties them to the driver's life).
            start_new_session=True,
        )
        if out is not None:
            out.close()
        self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, timeout: float = 10.0) -> None:
        """Close the lifeline, wait for the daemons to exit, kill what remains, sweep shm."""
        # Its address is no longer its: the OS may give its port to another cluster's GCS
        # next, and a join or a tool must not send that one this head's token.
        if self.token is not None and _started_tokens.get(self.gcs_address) == self.token:
            del _started_tokens[self.gcs_address]
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None
        else:
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        for path in object_store.list_segments(self.session_id):
            object_store.delete_segment(path)
        # Spill files in the session dir (the default spill directory) if the raylet
        # could not delete them itself.
        shutil.rmtree(os.path.join(self.session_dir, "spill"), ignore_errors=True)
