"""GCS persistence: a GCS killed with SIGKILL and restarted on the same port and session
directory recovers its durable tables; raylets and drivers reconnect on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import listening_ports, port_of, wait_for_condition, wait_ports_closed
from helpers import reap
from prometheus_text import parse, values

import aioray as ray
from aioray._private.node import node
from aioray._private.wire import auth
from aioray.experimental import internal_kv

GET_TIMEOUT = 30


@ray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()


@ray.remote
def plus_one(x: int) -> int:
    return x + 1


class Head:
    """A head node started without a driver, and the GCS processes it has had."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **node_args: Any) -> None:
        monkeypatch.setenv(auth.TOKEN_ENV, auth.generate_token())
        self.node = node.LocalNode.start(num_cpus=2, head=True, **node_args)
        self.gcs = self.node.procs[0]
        self.extra: list[subprocess.Popen[bytes]] = []
        auth.set_token(self.node.token)
        node.find_local_raylet(self.address, "127.0.0.1")  # waits until it registered

    @property
    def address(self) -> str:
        return self.node.gcs_address

    @property
    def raylet(self) -> subprocess.Popen[bytes]:
        return next(p for p in self.node.procs if "aioray.daemons.raylet" in str(p.args))

    def kill_gcs(self) -> None:
        self.gcs.send_signal(signal.SIGKILL)
        self.gcs.wait(10)

    def restart_gcs(self, env: dict[str, str] | None = None) -> None:
        """``python -m aioray.daemons.gcs`` on the same port and session directory."""
        host, port = node.split_address(self.address)
        cmd = [sys.executable, "-m", "aioray.daemons.gcs", "--host", host, "--port", str(port)]
        cmd += ["--session-dir", self.node.session_dir]
        self.gcs = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.extra.append(self.gcs)

    def stop(self) -> None:
        ports = {"gcs": port_of(self.address), "raylet": self.node.raylet_address[1]}
        if self.node.dashboard_url:
            ports["dashboard"] = port_of(self.node.dashboard_url)
        self.node.stop()  # the raylet (lifeline), its workers and segments
        for proc in self.extra:
            proc.terminate()
            proc.wait(10)
        wait_ports_closed(ports)
        auth.reset()


@pytest.fixture
def head(monkeypatch: pytest.MonkeyPatch) -> Iterator[Head]:
    h = Head(monkeypatch)
    try:
        yield h
    finally:
        ray.shutdown()
        h.stop()


def _alive_nodes() -> int:
    return sum(n["Alive"] for n in ray.nodes())


def test_detached_actor_kv_and_tasks_survive_a_gcs_kill(head: Head) -> None:
    ray.init(address=head.address)
    keeper = Counter.options(name="keeper", namespace="ops", lifetime="detached").remote()
    assert ray.get(keeper.incr.remote(), timeout=GET_TIMEOUT) == 1
    actor_pid = ray.get(keeper.pid.remote(), timeout=GET_TIMEOUT)
    internal_kv._internal_kv_put(b"model", b"v7", namespace="cfg")
    internal_kv._internal_kv_put("deleted", "x")
    internal_kv._internal_kv_del("deleted")

    head.kill_gcs()
    assert port_of(head.address) not in listening_ports()
    # Meanwhile the raylet keeps serving: tasks run, and actors answer calls directly.
    assert ray.get(plus_one.remote(1), timeout=GET_TIMEOUT) == 2
    assert ray.get(keeper.incr.remote(), timeout=GET_TIMEOUT) == 2
    # Without the token in its environment: the restarted GCS reads the session's copy.
    env = {k: v for k, v in os.environ.items() if k != auth.TOKEN_ENV}
    head.restart_gcs(env)

    # The raylet re-registers its node by itself; the driver reconnects on its next call.
    wait_for_condition(lambda: _alive_nodes() == 1, timeout=20, message="raylet never rejoined")
    again = ray.get_actor("keeper", namespace="ops")
    assert ray.get(again.incr.remote(), timeout=GET_TIMEOUT) == 3  # same worker, same state
    assert ray.get(again.pid.remote(), timeout=GET_TIMEOUT) == actor_pid
    assert ray.get(keeper.incr.remote(), timeout=GET_TIMEOUT) == 4  # the old handle works too
    assert internal_kv._internal_kv_get(b"model", namespace="cfg") == b"v7"
    assert internal_kv._internal_kv_get("deleted") is None
    assert ray.get(plus_one.remote(41), timeout=GET_TIMEOUT) == 42
    assert "keeper" in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    # New actors and jobs after the restart get fresh ids (the job counter was restored).
    fresh = Counter.remote()
    assert ray.get(fresh.incr.remote(), timeout=GET_TIMEOUT) == 1
    ray.kill(again)  # and the restarted GCS can still kill it
    wait_for_condition(lambda: _gone(actor_pid), timeout=10, message="the actor survived kill")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_running_job_is_still_counted_after_a_gcs_restart(head: Head) -> None:
    def running_jobs() -> list[float]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{head.node.metrics_export_port}/metrics",
            headers={"Authorization": f"Bearer {auth.cluster_token()}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return values(parse(r.read().decode())[1], "ray_running_jobs")

    ray.init(address=head.address)
    wait_for_condition(lambda: running_jobs() == [1.0], timeout=20)
    head.kill_gcs()
    head.restart_gcs()
    wait_for_condition(lambda: _alive_nodes() == 1, timeout=20, message="raylet never rejoined")
    wait_for_condition(lambda: running_jobs() == [1.0], timeout=20)  # the driver said so


def test_actor_that_died_while_the_gcs_was_down_is_restarted(head: Head) -> None:
    ray.init(address=head.address)
    phoenix = Counter.options(name="phoenix", lifetime="detached", max_restarts=1).remote()
    pid = ray.get(phoenix.pid.remote(), timeout=GET_TIMEOUT)
    head.kill_gcs()
    os.kill(pid, signal.SIGKILL)  # the raylet cannot tell the GCS: it keeps the notice
    head.restart_gcs()
    again = ray.get_actor("phoenix")

    def restarted() -> bool:
        try:
            return ray.get(again.pid.remote(), timeout=GET_TIMEOUT) != pid
        except ray.exceptions.RayActorError:
            return False

    wait_for_condition(restarted, timeout=20, message="the actor was not restarted")
    ray.kill(again)


def test_raylet_gives_up_after_the_reconnect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIORAY_GCS_RECONNECT_TIMEOUT_S", "1")
    h = Head(monkeypatch)
    try:
        raylet = h.raylet
        h.kill_gcs()
        raylet.wait(15)  # it stopped by itself, cleanly
        assert raylet.returncode == 0
    finally:
        h.stop()


def test_a_saved_node_that_never_comes_back_is_declared_dead(head: Head) -> None:
    """The restarted GCS lists the saved node as alive at once; if its raylet does not
    register again within the reconnect period, the node is dead, and a raylet that
    wakes up after that is refused and stops (a dead node never comes back)."""
    ray.init(address=head.address)
    [before] = ray.nodes()
    raylet = head.raylet
    raylet.send_signal(signal.SIGSTOP)
    try:
        head.kill_gcs()
        head.restart_gcs({**os.environ, "AIORAY_GCS_RECONNECT_TIMEOUT_S": "2"})
        [saved] = ray.nodes()
        assert saved["NodeID"] == before["NodeID"] and saved["Alive"]
        wait_for_condition(lambda: not ray.nodes()[0]["Alive"], timeout=20)
        assert "did not reconnect" in ray.nodes()[0]["DeathReasonMessage"]
    finally:
        raylet.send_signal(signal.SIGCONT)
    raylet.wait(20)
    assert "refused this node" in _raylet_log(head)


def _raylet_log(head: Head) -> str:
    with open(os.path.join(head.node.session_dir, "logs", "raylet.log")) as f:
        return f.read()


def _gcs_log(head: Head) -> str:
    with open(os.path.join(head.node.session_dir, "logs", "gcs.log")) as f:
        return f.read()


ORPHAN_DRIVER = """
import sys, time
import aioray as ray

@ray.remote
class Orphan:
    def ping(self):
        return 1

ray.init(address=sys.argv[1])
a = Orphan.options(name="orphan", namespace="t").remote()
ray.get(a.ping.remote())
print("ready", flush=True)
time.sleep(600)
"""


def test_owners_that_come_back_keep_their_actors_and_the_others_lose_them(
    head: Head,
) -> None:
    ray.init(address=head.address)
    mine = Counter.remote()  # not detached: it lives as long as this driver
    assert ray.get(mine.incr.remote(), timeout=GET_TIMEOUT) == 1
    other = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_DRIVER, head.address],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        head.kill_gcs()
        other.kill()  # its owner dies while the GCS is down: nobody tells the GCS
        other.wait(10)
    finally:
        reap(other)
    head.restart_gcs({**os.environ, "AIORAY_GCS_RECONNECT_TIMEOUT_S": "2"})
    assert ray.get(mine.incr.remote(), timeout=GET_TIMEOUT) == 2
    wait_for_condition(lambda: "reconnect period over" in _gcs_log(head), timeout=20)

    def orphan_gone() -> bool:
        try:
            ray.get_actor("orphan", namespace="t")
        except ValueError:
            return True
        return False

    wait_for_condition(orphan_gone, timeout=10, message="the orphaned actor still lives")
    assert ray.get(mine.incr.remote(), timeout=GET_TIMEOUT) == 3  # its owner came back


def test_a_detached_placement_group_survives_a_gcs_kill(head: Head) -> None:
    ray.init(address=head.address)
    pg = ray.util.placement_group([{"CPU": 1}], strategy="PACK", name="kept", lifetime="detached")
    assert pg.wait(20)
    head.kill_gcs()
    head.restart_gcs()
    wait_for_condition(lambda: _alive_nodes() == 1, timeout=20, message="raylet never rejoined")
    again = ray.util.get_placement_group("kept")
    assert again.id == pg.id and again.wait(20)
    table = ray.util.placement_group_table(again)
    assert table["state"] == "CREATED", table
    strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(again, 0)
    task = plus_one.options(num_cpus=1, scheduling_strategy=strategy)
    assert ray.get(task.remote(1), timeout=GET_TIMEOUT) == 2
    ray.util.remove_placement_group(again)


def test_job_records_survive_a_gcs_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioray.job_submission import JobStatus, JobSubmissionClient

    h = Head(monkeypatch, include_dashboard=True)
    try:
        client = JobSubmissionClient(f"http://{h.node.dashboard_url}")
        sid = client.submit_job(entrypoint="echo kept")
        wait_for_condition(lambda: client.get_job_status(sid).is_terminal(), timeout=60)
        h.kill_gcs()
        h.restart_gcs()

        def still_there() -> bool:
            try:
                return client.get_job_status(sid) == JobStatus.SUCCEEDED
            except RuntimeError:  # 500 while the dashboard's driver reconnects
                return False

        wait_for_condition(still_there, timeout=60)
        assert client.get_job_logs(sid) == "kept\n"
    finally:
        h.stop()
