"""A fake Kubernetes API server for the provider's tests (aiohttp, loopback): only the
pod routes the provider uses (list by label selector, create, delete), with the JSON
shapes of the real API: Pod objects, PodList, and Status objects for 401, 403, 404
and 409 (AlreadyExists)."""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

TOKEN = "fake-service-account-token"


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Any:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }
    return web.json_response(body, status=code)


class FakeKubernetes:
    """Pods in memory; ``forbid_create`` answers creation with RBAC's 403."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.forbid_create = False
        self.requests: list[tuple[str, str]] = []
        self._uid = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        base = "/api/v1/namespaces/{ns}/pods"
        app.router.add_get(base, self.list_pods)
        app.router.add_post(base, self.create_pod)
        app.router.add_delete(base + "/{name}", self.delete_pod)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _denied(self, request: web.Request) -> Any:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status(401, "Unauthorized", "Unauthorized")
        return None

    async def list_pods(self, request: web.Request) -> Any:
        denied = self._denied(request)
        if denied is not None:
            return denied
        ns = request.match_info["ns"]
        want = dict(
            part.split("=", 1) for part in request.query.get("labelSelector", "").split(",") if part
        )
        items = [
            pod
            for (pns, _), pod in self.pods.items()
            if pns == ns and all(pod["metadata"]["labels"].get(k) == v for k, v in want.items())
        ]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            }
        )

    async def create_pod(self, request: web.Request) -> Any:
        denied = self._denied(request)
        if denied is not None:
            return denied
        ns = request.match_info["ns"]
        if self.forbid_create:
            return status(
                403,
                "Forbidden",
                f'pods is forbidden: User "system:serviceaccount:{ns}:aioray-head" cannot '
                f'create resource "pods" in API group "" in the namespace "{ns}"',
                {"kind": "pods"},
            )
        pod = await request.json()
        meta = pod.setdefault("metadata", {})
        uid = next(self._uid)
        name = meta.get("name") or f"{meta['generateName']}{uid:05x}"
        if (ns, name) in self.pods:
            return status(
                409,
                "AlreadyExists",
                f'pods "{name}" already exists',
                {"name": name, "kind": "pods"},
            )
        meta.update(
            name=name,
            namespace=ns,
            uid=f"uid-{uid}",
            resourceVersion=str(uid),
            creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        self.pods[(ns, name)] = pod
        return web.json_response(pod, status=201)

    async def delete_pod(self, request: web.Request) -> Any:
        denied = self._denied(request)
        if denied is not None:
            return denied
        key = (request.match_info["ns"], request.match_info["name"])
        pod = self.pods.get(key)
        if pod is None:
            return status(404, "NotFound", f'pods "{key[1]}" not found', {"name": key[1]})
        # Graceful deletion: the pod stays listed, terminating, until its grace period ends.
        pod["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        return web.json_response(pod)

    def run_pod(self, name: str, ip: str, ns: str = "aioray") -> None:
        """The kubelet started the pod: Running, with an IP."""
        self.pods[(ns, name)]["status"] = {"phase": "Running", "podIP": ip}
