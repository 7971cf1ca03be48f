"""The kubernetes provider against a fake API server, and the autoscaler's loop driving
it: pods made from the type's template, deleted when idle, API errors surfaced."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioray.daemons.autoscaler.kubernetes_provider import KubernetesNodeProvider
from aioray.daemons.autoscaler.monitor import Monitor
from aioray.daemons.autoscaler.node_provider import LAUNCHING, RUNNING, ProviderError
from autoscaler_fakes import make_config
from fake_kubernetes import TOKEN, FakeKubernetes

TEMPLATE = {
    "metadata": {"labels": {"app": "aioray-worker"}},
    "spec": {
        "serviceAccountName": "aioray-worker",
        "containers": [
            {
                "name": "aioray",
                "image": "aioray:latest",
                "command": ["aioray", "serve-node", "--address", "aioray-head:6379"],
                "resources": {"limits": {"cpu": "2"}},
            }
        ],
    },
}
TYPES = {"cpu2": {"resources": {"CPU": 2}, "max_workers": 3, "node_config": TEMPLATE}}


@pytest.fixture
async def k8s(tmp_path: Path) -> AsyncIterator[tuple[FakeKubernetes, KubernetesNodeProvider]]:
    fake = FakeKubernetes()
    url = await fake.start()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    conf = {
        "type": "kubernetes",
        "api_server": url,
        "token_file": str(token),
        "namespace": "aioray",
    }
    provider = KubernetesNodeProvider(conf, "demo")
    yield fake, provider
    await provider.close()
    await fake.stop()


async def test_pods_are_made_from_the_template_labelled_and_listed(k8s: Any) -> None:
    fake, provider = k8s
    config = make_config(TYPES)
    names = await provider.create_node(config.node_types["cpu2"], 2)
    assert len(names) == 2 and all(n.startswith("demo-cpu2-") for n in names)
    pod = fake.pods[("aioray", names[0])]
    assert pod["spec"] == TEMPLATE["spec"]
    assert pod["metadata"]["labels"] == {
        "app": "aioray-worker",
        "aioray.io/cluster": "demo",
        "aioray.io/node-type": "cpu2",
    }
    assert TEMPLATE["metadata"]["labels"] == {"app": "aioray-worker"}  # template untouched
    nodes = await provider.non_terminated_nodes()
    assert {(n.node_id, n.node_type, n.state, n.ip) for n in nodes} == {
        (names[0], "cpu2", LAUNCHING, ""),
        (names[1], "cpu2", LAUNCHING, ""),
    }  # Pending pods are launching
    fake.run_pod(names[0], "10.0.0.7")
    running = {n.node_id: n for n in await provider.non_terminated_nodes()}
    assert (running[names[0]].state, running[names[0]].ip) == (RUNNING, "10.0.0.7")
    assert ("GET", "/api/v1/namespaces/aioray/pods?labelSelector=aioray.io/cluster%3Ddemo") in (
        fake.requests
    )


async def test_terminated_pods_are_gone_and_deleting_twice_is_fine(k8s: Any) -> None:
    fake, provider = k8s
    (name,) = await provider.create_node(make_config(TYPES).node_types["cpu2"], 1)
    await provider.terminate_node(name)
    assert "deletionTimestamp" in fake.pods[("aioray", name)]["metadata"]  # terminating
    assert await provider.non_terminated_nodes() == []
    del fake.pods[("aioray", name)]
    await provider.terminate_node(name)  # 404: already gone


async def test_api_errors_carry_the_status_reason(k8s: Any, tmp_path: Path) -> None:
    fake, provider = k8s
    t = make_config(TYPES).node_types["cpu2"]
    fake.forbid_create = True
    with pytest.raises(ProviderError, match=r'403 Forbidden: pods is forbidden: User "system:'):
        await provider.create_node(t, 1)
    fake.forbid_create = False
    named = make_config(
        {
            "w": {
                "resources": {"CPU": 1},
                "max_workers": 2,
                "node_config": {"metadata": {"name": "x"}},
            }
        }
    ).node_types["w"]
    await provider.create_node(named, 1)
    with pytest.raises(ProviderError, match=r'409 AlreadyExists: pods "x" already exists'):
        await provider.create_node(named, 1)
    (tmp_path / "token").write_text("stale")
    with pytest.raises(ProviderError, match="401 Unauthorized"):
        await provider.non_terminated_nodes()


async def test_an_unreachable_api_server_is_a_provider_error() -> None:
    conf = {"type": "kubernetes", "api_server": "http://127.0.0.1:9", "namespace": "x"}
    provider = KubernetesNodeProvider(conf, "demo")
    with pytest.raises(ProviderError, match=r"127\.0\.0\.1:9"):
        await provider.non_terminated_nodes()
    await provider.close()


def test_outside_a_pod_without_kubeconfig_says_what_to_give(monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ProviderError, match=r"give provider\.kubeconfig or provider\.api_server"):
        KubernetesNodeProvider({"type": "kubernetes"}, "demo")


def test_kubeconfig_current_context_is_used(tmp_path: Path) -> None:
    kc = tmp_path / "config"
    kc.write_text(
        "apiVersion: v1\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://10.1.2.3:6443'}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    provider = KubernetesNodeProvider({"type": "kubernetes", "kubeconfig": str(kc)}, "demo")
    assert (provider.server, provider.token) == ("https://10.1.2.3:6443", "abc")


class FakeGcs:
    """The autoscaler's GCS connection: a demand snapshot in, the state out."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {
            "nodes": [head_node()],
            "shapes": [],
            "placement_groups": [],
            "requests": [],
        }
        self.states: list[dict[str, Any]] = []

    async def call(self, method: str, body: Any = None) -> Any:
        assert method == "get_demand"
        return self.snapshot

    def notify(self, method: str, body: Any) -> None:
        assert method == "report_autoscaler_state"
        self.states.append(body)


def head_node() -> dict[str, Any]:
    res = {"CPU": 0.0}
    return {"node_id": "h" * 32, "ip": "10.0.0.1", "total": res, "available": res,
            "is_head": True, "idle": True, "labels": {}}  # fmt: skip


def joined(ip: str, idle: bool) -> dict[str, Any]:
    return {"node_id": ip.replace(".", "") * 4, "ip": ip, "total": {"CPU": 2.0},
            "available": {"CPU": 2.0 if idle else 0.0}, "is_head": False, "idle": idle,
            "labels": {}}  # fmt: skip


async def test_loop_launches_pods_for_demand_and_deletes_them_when_idle(k8s: Any) -> None:
    fake, provider = k8s
    gcs = FakeGcs()
    monitor = Monitor(make_config(TYPES, idle_timeout_minutes=0), provider, gcs)
    gcs.snapshot["shapes"] = [[{"CPU": 1.0}, 3]]
    plan = await monitor.update()
    assert plan.launch == {"cpu2": 2} and len(fake.pods) == 2
    assert len(gcs.states[-1]["pending"]) == 2
    await monitor.update()  # Pending pods count as launching: nothing more
    assert len(fake.pods) == 2
    for i, (_, name) in enumerate(sorted(fake.pods)):
        fake.run_pod(name, f"10.0.0.{i + 2}")
    gcs.snapshot["shapes"] = []
    gcs.snapshot["nodes"] = [head_node(), joined("10.0.0.2", True), joined("10.0.0.3", False)]
    plan = await monitor.update()  # idle_timeout 0: the idle one goes at once
    assert len(plan.terminate) == 1
    alive = [p for p in fake.pods.values() if "deletionTimestamp" not in p["metadata"]]
    assert [p["status"]["podIP"] for p in alive] == ["10.0.0.3"]
    assert gcs.states[-1]["pending"] == []


async def test_loop_surfaces_forbidden_and_backs_off(k8s: Any) -> None:
    fake, provider = k8s
    gcs = FakeGcs()
    monitor = Monitor(make_config(TYPES), provider, gcs)
    fake.forbid_create = True
    gcs.snapshot["shapes"] = [[{"CPU": 1.0}, 1]]
    await monitor.update()
    failures = gcs.states[-1]["failures"]
    assert len(failures) == 1 and failures[0][0] == "cpu2" and "403 Forbidden" in failures[0][1]
    posts = sum(m == "POST" for m, _ in fake.requests)
    await monitor.update()  # within the back-off: no new attempt
    assert sum(m == "POST" for m, _ in fake.requests) == posts
    fake.forbid_create = False
    monitor.backoff.clear()  # the back-off has passed
    await monitor.update()
    assert len(fake.pods) == 1


async def test_a_pod_that_never_joins_is_deleted_after_the_timeout(k8s: Any) -> None:
    fake, provider = k8s
    gcs = FakeGcs()
    monitor = Monitor(make_config(TYPES), provider, gcs, join_timeout_s=0)
    gcs.snapshot["shapes"] = [[{"CPU": 1.0}, 1]]
    await monitor.update()  # launched
    (name,) = [n for _, n in fake.pods]
    gcs.snapshot["shapes"] = []
    await monitor.update()  # never joined within 0 s: deleted, counted as a failure
    assert "deletionTimestamp" in fake.pods[("aioray", name)]["metadata"]
    assert "did not join the cluster within 0s" in gcs.states[-1]["failures"][-1][1]


async def test_a_failing_pod_list_is_surfaced_and_changes_nothing(k8s: Any, tmp_path: Path) -> None:
    fake, provider = k8s
    gcs = FakeGcs()
    monitor = Monitor(make_config(TYPES), provider, gcs)
    gcs.snapshot["shapes"] = [[{"CPU": 1.0}, 1]]
    (tmp_path / "token").write_text("revoked")
    plan = await monitor.update()  # no exception: the loop goes on
    assert plan.launch == {} and fake.pods == {}
    assert "listing nodes: Kubernetes API 401 Unauthorized" in gcs.states[-1]["failures"][-1][1]
