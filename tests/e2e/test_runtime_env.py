"""runtime_env end to end on a 2-node cluster: working_dir, py_modules, pip, env_vars, failures.

No network: pip installs a wheel built here, offline (``--no-index --find-links``).
The module's single pip env is built once and shared by the tests that use it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray import api
from aioray._private.node import runtime_env_packaging
from aioray._private.owner import worker_context
from aioray.exceptions import RuntimeEnvSetupError
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CLUSTER_NODES = [{"num_cpus": 2}, {"num_cpus": 2}]
NO_SUCH_PACKAGE = "aioray-no-such-package-xyz==9.9"


FAST = {
    "AIORAY_RUNTIME_ENV_RETRY_DELAY_S": "0.1",  # retries 0.1 s apart, not 1 s
    "AIORAY_RUNTIME_ENV_PACKAGE_GRACE_S": "0.2",  # a job's packages go 0.2 s after it
}


@pytest.fixture(scope="module", autouse=True)
def _fast_settings() -> Iterator[None]:
    """Set before the cluster starts: its daemons read them."""
    saved = {k: os.environ.get(k) for k in FAST}
    os.environ.update(FAST)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def job(cluster: Any, env: dict[str, Any]) -> Iterator[None]:
    """Run as a new driver (job) with this runtime env, then reconnect without one."""
    ray.shutdown()
    ray.init(address=cluster.address, runtime_env=env)
    try:
        yield
    finally:
        ray.shutdown()
        cluster.connect()


def node_ids(cluster: Any) -> list[str]:
    return [n.node_id for n in cluster.list_all_nodes()]


def on(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def raylet_state(node: Any) -> dict[str, Any]:
    cw = api.ensure_connected()

    async def ask() -> dict[str, Any]:
        conn = await cw.connect_peer(node.node_ip_address, node.node_manager_port)
        state: dict[str, Any] = await conn.call("get_state")
        return state

    return cw.run_sync(ask(), timeout=20)  # type: ignore[no-any-return]


def build_wheel(name: str, version: str, files: dict[str, str], out: Path) -> Path:
    """A pure-Python wheel of ``files`` (a wheel is a zip with a .dist-info)."""
    info = f"{name}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    entries[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for path, text in entries.items():
        digest = hashlib.sha256(text.encode()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={b64},{len(text.encode())}")
    entries[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in entries.items():
            z.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def pip_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    wheels = tmp_path_factory.mktemp("wheels")
    build_wheel("rtetinypkg", "1.0", {"rtetinypkg/__init__.py": "ANSWER = 'tiny-1.0'\n"}, wheels)
    options = ["--no-index", "--find-links", str(wheels)]
    return {"pip": {"packages": ["rtetinypkg==1.0"], "pip_install_options": options}}


def uploaded_working_dir(tmp_path: Path, name: str, text: str) -> str:
    root = tmp_path / name
    root.mkdir()
    (root / f"{name}.py").write_text(text)
    uri: str = runtime_env_packaging.upload_env({"working_dir": str(root)}, api.gcs_call)[
        "working_dir"
    ]
    return uri


def test_working_dir_reaches_tasks_and_actors_on_both_nodes(
    ray_cluster: Any, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "rte_userlib.py").write_text("VALUE = 'from-working-dir'\n")
    (project / "data.txt").write_text("payload")
    with job(ray_cluster, {"working_dir": str(project)}):

        @ray.remote
        def probe() -> tuple[str, str, str, str]:
            import rte_userlib

            cwd = os.path.basename(os.getcwd())
            with open("data.txt") as f:
                data = f.read()
            return rte_userlib.VALUE, cwd, data, ray.get_runtime_context().get_node_id()

        @ray.remote
        class Probe:
            def read(self) -> tuple[str, str, str, str]:
                import rte_userlib

                cwd = os.path.basename(os.getcwd())
                return rte_userlib.VALUE, cwd, "", ray.get_runtime_context().get_node_id()

        for node in node_ids(ray_cluster):
            value, cwd, data, where = ray.get(probe.options(scheduling_strategy=on(node)).remote())
            assert (value, data, where) == ("from-working-dir", "payload", node)
            assert cwd.startswith("_aioray_pkg_")
            actor = Probe.options(scheduling_strategy=on(node)).remote()
            value, actor_cwd, _, where = ray.get(actor.read.remote())
            assert (value, actor_cwd, where) == ("from-working-dir", cwd, node)


DRIVER = """
import os, sys
import aioray as ray
import rte_tasks  # from the driver's directory: its remote functions pickle by reference

ray.init(address=sys.argv[1], runtime_env={"working_dir": "."})
nodes = sys.argv[2:]
on = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
refs = [rte_tasks.where.options(scheduling_strategy=on(n, soft=False)).remote() for n in nodes]
actors = [rte_tasks.Where.options(scheduling_strategy=on(n, soft=False)).remote() for n in nodes]
print(sorted(ray.get(refs)) == sorted(ray.get([a.where.remote() for a in actors])) == sorted(nodes))
"""

TASKS = """
import os
import aioray as ray
import rte_helpers  # a module the remote functions use: workers import it by name

@ray.remote
def where():
    assert os.path.exists("rte_tasks.py")  # cwd: the working_dir
    return rte_helpers.node_id()

@ray.remote
class Where:
    def where(self):
        return where.remote() and ray.get_runtime_context().get_node_id()
"""


def test_a_driver_scripts_modules_reach_both_nodes(ray_cluster: Any, tmp_path: Path) -> None:
    """Ray's main use: functions defined in the driver's own modules, pickled by reference."""
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "rte_tasks.py").write_text(TASKS)
    (tmp_path / "rte_helpers.py").write_text(
        "import aioray as ray\n\n\ndef node_id():\n"
        "    return ray.get_runtime_context().get_node_id()\n"
    )
    proc = subprocess.run(
        [sys.executable, "driver.py", ray_cluster.address, *node_ids(ray_cluster)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip().splitlines()[-1:] == ["True"], proc.stdout + proc.stderr


def test_eager_install_prepares_every_node_at_job_start(ray_cluster: Any, tmp_path: Path) -> None:
    project = tmp_path / "eager"
    project.mkdir()
    (project / "eager_marker.py").write_text("X = 1\n")
    with job(ray_cluster, {"working_dir": str(project)}):
        uri = worker_context.job_runtime_env["working_dir"]
        for node in ray_cluster.list_all_nodes():  # no task ran: prepared because eager
            wait_for_condition(
                lambda node=node: any(
                    uri.split("//")[1].split(".")[0] in p
                    for p in raylet_state(node)["runtime_env"]["pieces"]
                ),
                timeout=30,
                message=f"{uri} never prepared on {node}",
            )


def test_py_modules_of_every_kind_and_a_zip_working_dir(ray_cluster: Any, tmp_path: Path) -> None:
    package = tmp_path / "rte_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("def hello() -> str:\n    return 'hello from rte_pkg'\n")
    (tmp_path / "rte_single.py").write_text("NAME = 'single'\n")
    wheel = build_wheel("rtewheel", "1.0", {"rtewheel/__init__.py": "NAME = 'wheel'\n"}, tmp_path)
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("rte_zipped.py", "NAME = 'zipped'\n")
    env = {
        "working_dir": str(archive),
        "py_modules": [str(package), str(tmp_path / "rte_single.py"), str(wheel)],
    }
    with job(ray_cluster, env):

        @ray.remote
        def use() -> tuple[str, ...]:
            import rte_single
            import rte_zipped
            import rtewheel
            from rte_pkg import sub

            return sub.hello(), rte_single.NAME, rtewheel.NAME, rte_zipped.NAME

        nodes = node_ids(ray_cluster)
        refs = [use.options(scheduling_strategy=on(n)).remote() for n in nodes]
        expected = ("hello from rte_pkg", "single", "wheel", "zipped")
        assert ray.get(refs) == [expected] * len(nodes)


def test_task_env_vars_override_the_jobs_and_children_inherit(ray_cluster: Any) -> None:
    with job(ray_cluster, {"env_vars": {"RTE_A": "job", "RTE_B": "job"}}):

        @ray.remote
        def read() -> tuple[str | None, ...]:
            return tuple(os.environ.get(k) for k in ("RTE_A", "RTE_B", "RTE_C"))

        @ray.remote
        def parent() -> tuple[str | None, ...]:
            return ray.get(read.remote())  # type: ignore[no-any-return]

        assert ray.get(read.remote()) == ("job", "job", None)
        task_env = {"env_vars": {"RTE_B": "task", "RTE_C": "task"}}
        assert ray.get(read.options(runtime_env=task_env).remote()) == ("job", "task", "task")
        assert ray.get(parent.options(runtime_env=task_env).remote()) == ("job", "task", "task")

        @ray.remote
        def context_env() -> dict[str, Any]:
            return ray.get_runtime_context().runtime_env  # type: ignore[no-any-return]

        seen = ray.get(context_env.options(runtime_env=task_env).remote())
        assert seen == {"env_vars": {"RTE_A": "job", "RTE_B": "task", "RTE_C": "task"}}
        assert type(seen).__name__ == "RuntimeEnv"


def test_pip_installs_a_wheel_offline_in_its_own_env(
    ray_cluster: Any, pip_env: dict[str, Any]
) -> None:
    head = node_ids(ray_cluster)[0]

    @ray.remote
    def use() -> tuple[str, str]:
        import rtetinypkg

        return rtetinypkg.ANSWER, sys.prefix

    @ray.remote
    def plain() -> bool:
        try:
            import rtetinypkg  # noqa: F401
        except ImportError:
            return False
        return True

    answer, prefix = ray.get(
        use.options(runtime_env=pip_env, scheduling_strategy=on(head)).remote(), timeout=120
    )
    assert answer == "tiny-1.0" and prefix != sys.prefix and "venvs" in prefix
    assert not ray.get(plain.options(scheduling_strategy=on(head)).remote())


def test_uv_field_installs_with_uv_or_falls_back_to_pip(
    ray_cluster: Any, pip_env: dict[str, Any]
) -> None:
    head = node_ids(ray_cluster)[0]
    spec = pip_env["pip"]
    uv_env = {
        "uv": {"packages": spec["packages"], "uv_pip_install_options": spec["pip_install_options"]}
    }

    @ray.remote
    def use() -> str:
        import rtetinypkg

        return rtetinypkg.ANSWER  # type: ignore[no-any-return]

    ref = use.options(runtime_env=uv_env, scheduling_strategy=on(head)).remote()
    assert ray.get(ref, timeout=120) == "tiny-1.0"


def test_workers_of_two_envs_are_never_mixed(ray_cluster: Any, pip_env: dict[str, Any]) -> None:
    head = node_ids(ray_cluster)[0]

    @ray.remote
    def who() -> tuple[int, str | None, str]:
        return os.getpid(), os.environ.get("RTE_ENV"), sys.prefix

    envs: list[dict[str, Any] | None] = [
        {"env_vars": {"RTE_ENV": "a"}},
        {"env_vars": {"RTE_ENV": "b"}},
        None,
        pip_env,
    ]
    refs = [
        who.options(runtime_env=envs[i % 4], scheduling_strategy=on(head)).remote()
        for i in range(40)
    ]
    seen: dict[int, set[tuple[str | None, str]]] = {}
    for pid, var, prefix in ray.get(refs, timeout=120):
        seen.setdefault(pid, set()).add((var, prefix))
    assert all(len(kinds) == 1 for kinds in seen.values()), seen
    assert len(set().union(*seen.values())) == 4


def test_failing_requirement_raises_setup_error_prepared_once(
    ray_cluster: Any, pip_env: dict[str, Any]
) -> None:
    head_node = ray_cluster.list_all_nodes()[0]
    head = head_node.node_id
    bad = {"pip": {"packages": [NO_SUCH_PACKAGE], "pip_install_options": ["--no-index"]}}
    before = raylet_state(head_node)["runtime_env"]

    @ray.remote
    def f() -> int:
        return 1

    @ray.remote
    class A:
        def ping(self) -> int:
            return 1

    for _ in range(2):  # the second round meets the remembered failure
        refs = [
            f.options(runtime_env=bad, scheduling_strategy=on(head)).remote() for _ in range(10)
        ]
        for ref in refs:
            with pytest.raises(RuntimeEnvSetupError, match="No matching distribution"):
                ray.get(ref, timeout=120)
    after = raylet_state(head_node)["runtime_env"]
    assert after["setups"] - before["setups"] == 1
    assert after["tool_runs"] - before["tool_runs"] == 3  # Ray's 3 attempts, not one per task
    actor = A.options(runtime_env=bad, scheduling_strategy=on(head)).remote()
    with pytest.raises(RuntimeEnvSetupError, match="No matching distribution"):
        ray.get(actor.ping.remote(), timeout=60)
    (info,) = [a for a in api.gcs_call("list_actors") if a["aid"] == actor._actor_id]
    assert info["state"] == "DEAD" and "runtime env could not be set up" in info["death"]
    # The node keeps serving other envs.
    assert ray.get(f.options(scheduling_strategy=on(head)).remote(), timeout=60) == 1


def test_twenty_concurrent_first_uses_prepare_each_node_once(
    ray_cluster: Any, tmp_path: Path
) -> None:
    uri = uploaded_working_dir(tmp_path, "rte_twenty", "N = 20\n")
    nodes = ray_cluster.list_all_nodes()
    before = [raylet_state(n)["runtime_env"]["setups"] for n in nodes]

    @ray.remote
    def use() -> int:
        import rte_twenty

        return rte_twenty.N  # type: ignore[no-any-return]

    env = {"working_dir": uri}
    refs = [
        use.options(runtime_env=env, scheduling_strategy=on(nodes[i % 2].node_id)).remote()
        for i in range(20)
    ]
    assert ray.get(refs, timeout=60) == [20] * 20
    after = [raylet_state(n)["runtime_env"]["setups"] for n in nodes]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1]


def test_cached_env_deleted_when_unused_past_the_budget(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIORAY_RUNTIME_ENV_CACHE_BYTES", "0")  # this node keeps nothing unused
    monkeypatch.setenv("AIORAY_RUNTIME_ENV_WORKER_IDLE_S", "0.2")
    node = ray_cluster.add_node(num_cpus=1)
    try:

        @ray.remote
        def where() -> str:
            return os.getcwd()

        @ray.remote
        class User:
            def where(self) -> str:
                return os.getcwd()

        # An actor's env is released when the actor goes; a task's when its idle worker exits.
        for kind in ("actor", "task"):
            uri = uploaded_working_dir(tmp_path, f"rte_gc_{kind}", "X = 1\n")
            opts = {"runtime_env": {"working_dir": uri}, "scheduling_strategy": on(node.node_id)}
            if kind == "actor":
                actor = User.options(**opts).remote()
                path = ray.get(actor.where.remote(), timeout=60)
                assert os.path.isdir(path)
                ray.kill(actor)
            else:
                path = ray.get(where.options(**opts).remote(), timeout=60)
            assert path.endswith(uri.split("//")[1].removesuffix(".zip"))
            wait_for_condition(lambda path=path: not os.path.exists(path), timeout=30)

        # An idle worker that owns an object someone holds is kept (not ended as idle).
        @ray.remote
        def owner() -> list[Any]:
            return [ray.put("owned by the worker")]

        opts = {
            "runtime_env": {"env_vars": {"RTE_OWNER": "1"}},
            "scheduling_strategy": on(node.node_id),
        }
        (inner,) = ray.get(owner.options(**opts).remote(), timeout=60)
        wait_for_condition(lambda: raylet_state(node)["idle_workers"]["kept"] >= 1, timeout=30)
        assert ray.get(inner, timeout=30) == "owned by the worker"
    finally:
        ray_cluster.remove_node(node)


def test_a_jobs_packages_are_deleted_from_the_gcs_when_it_ends(
    ray_cluster: Any, tmp_path: Path
) -> None:
    project, module = tmp_path / "project", tmp_path / "rte_kept"
    for root in (project, module):
        root.mkdir()
        (root / "__init__.py").write_text("X = 1\n")
    other = uploaded_working_dir(tmp_path, "rte_other", "X = 1\n")  # not a job's: kept

    @ray.remote
    class Holder:
        def ping(self) -> int:
            return 1

    def stored(uri: str) -> bool:
        key = [runtime_env_packaging.KV_NAMESPACE, uri.encode()]
        return api.gcs_call("kv_get", key) is not None

    with job(ray_cluster, {"working_dir": str(project), "py_modules": [str(module)]}):
        job_dir, (job_module,) = (
            worker_context.job_runtime_env["working_dir"],
            worker_context.job_runtime_env["py_modules"],
        )
        assert stored(job_dir) and stored(job_module)
        # A detached actor outlives the job, in an env of its own dir and the job's module.
        holder = Holder.options(
            lifetime="detached",
            name="rte_holder",
            namespace="rte",
            runtime_env={"working_dir": other},
        ).remote()
        ray.get(holder.ping.remote())
    try:
        wait_for_condition(lambda: not stored(job_dir), timeout=30)
        assert stored(job_module) and stored(other)
    finally:
        ray.kill(ray.get_actor("rte_holder", namespace="rte"))
