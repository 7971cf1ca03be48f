"""The ``kubernetes`` provider: worker nodes as pods, through the Kubernetes REST API.

A node type's ``node_config`` is its pod manifest (``metadata`` and ``spec``; the
container runs ``aioray serve-node --address <head service>:6379``). Each pod is
created from it with ``generateName: <cluster>-<type>-`` and the labels
``aioray.io/cluster`` and ``aioray.io/node-type``; the pods are listed by the
cluster label, a Pending pod counts as launching, a pod being deleted or finished
as gone. The provider's own keys:

- ``namespace`` (default: the service account's namespace, else ``default``);
- in a pod: the service-account token and CA under
  ``/var/run/secrets/kubernetes.io/serviceaccount`` and ``$KUBERNETES_SERVICE_HOST``;
- else ``kubeconfig`` (a path; its current context's server, CA and token), or
  ``api_server`` with ``token_file`` and ``ca_file``.

An API error (403 Forbidden from RBAC, 409 AlreadyExists, quota, a timeout)
becomes a ProviderError carrying the Status object's reason and message.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import ssl
import tempfile
from typing import Any

import aiohttp
from aioray.daemons.autoscaler.config import NodeType
from aioray.daemons.autoscaler.node_provider import (
    LAUNCHING,
    RUNNING,
    TAG_CLUSTER,
    TAG_NODE_TYPE,
    NodeProvider,
    ProviderError,
    ProviderNode,
)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REQUEST_TIMEOUT_S = 10.0


class KubernetesNodeProvider(NodeProvider):
    def __init__(self, provider: dict[str, Any], cluster_name: str) -> None:
        self.cluster_name = cluster_name
        self.server, self.token_file, self.token, ca = _connection(provider)
        self.namespace = str(provider.get("namespace") or _sa_namespace() or "default")
        self.ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        if self.server.startswith("http://"):
            self.ssl = False
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<KubernetesNodeProvider {self.server} ns={self.namespace}>"

    # -- the interface ----------------------------------------------------------------------
    async def create_node(self, node_type: NodeType, count: int) -> list[str]:
        names = []
        for _ in range(count):
            pod = await self._request("POST", self._pods(), self._manifest(node_type))
            names.append(str(pod["metadata"]["name"]))
        return names

    async def terminate_node(self, node_id: str) -> None:
        try:
            await self._request("DELETE", f"{self._pods()}/{node_id}")
        except _NotFound:
            pass  # already gone

    async def non_terminated_nodes(self) -> list[ProviderNode]:
        selector = f"{TAG_CLUSTER}={self.cluster_name}"
        reply = await self._request("GET", self._pods(), params={"labelSelector": selector})
        nodes = []
        for pod in reply.get("items", []):
            meta, status = pod.get("metadata", {}), pod.get("status", {})
            phase = status.get("phase", "Pending")
            if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                continue
            labels = meta.get("labels", {})
            state = LAUNCHING if phase == "Pending" else RUNNING
            ip = status.get("podIP", "") if phase == "Running" else ""
            node = ProviderNode(meta["name"], labels.get(TAG_NODE_TYPE, ""), ip, state, labels)
            nodes.append(node)
        return nodes

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests -----------------------------------------------------------------------------
    def _pods(self) -> str:
        return f"{self.server}/api/v1/namespaces/{self.namespace}/pods"

    def _manifest(self, t: NodeType) -> dict[str, Any]:
        pod = copy.deepcopy(t.node_config)
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        meta = pod.setdefault("metadata", {})
        if "name" not in meta:
            meta.setdefault("generateName", f"{self.cluster_name}-{t.name}-".lower())
        meta.setdefault("labels", {}).update(
            {TAG_CLUSTER: self.cluster_name, TAG_NODE_TYPE: t.name}
        )
        return dict(pod)

    async def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.request(
                method, url, json=body, params=params, headers=headers, ssl=self.ssl
            ) as resp:
                text = await resp.text()
                status = resp.status
        except asyncio.TimeoutError:
            raise ProviderError(f"{method} {url}: no answer in {REQUEST_TIMEOUT_S:g}s") from None
        except aiohttp.ClientError as e:
            raise ProviderError(f"{method} {url}: {e}") from None
        data = _json(text)
        if status == 404 and method == "DELETE":
            raise _NotFound()
        if status >= 300:
            raise ProviderError(_status_message(status, data, text))
        return data

    def _token(self) -> str:
        if self.token_file:  # re-read: service-account tokens are rotated
            try:
                with open(self.token_file) as f:
                    return f.read().strip()
            except OSError as e:
                raise ProviderError(f"cannot read the token {self.token_file}: {e}") from None
        return self.token


class _NotFound(Exception):
    pass


def _json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _status_message(code: int, data: dict[str, Any], text: str) -> str:
    """A Kubernetes Status object's reason and message (e.g. ``403 Forbidden: ...``)."""
    reason = data.get("reason") or "Error"
    message = data.get("message") or text.strip()[:200] or "no message"
    return f"Kubernetes API {code} {reason}: {message}"


def _sa_namespace() -> str:
    try:
        with open(os.path.join(SA_DIR, "namespace")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _connection(p: dict[str, Any]) -> tuple[str, str, str, str]:
    """(server, token file, token, CA file) from the provider config or the pod."""
    if p.get("api_server"):
        return str(p["api_server"]).rstrip("/"), p.get("token_file", ""), "", p.get("ca_file", "")
    if p.get("kubeconfig"):
        return _from_kubeconfig(str(p["kubeconfig"]))
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    if not host:
        raise ProviderError(
            "provider: not in a Kubernetes pod ($KUBERNETES_SERVICE_HOST is unset): "
            "give provider.kubeconfig or provider.api_server"
        )
    server = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
    return server, os.path.join(SA_DIR, "token"), "", os.path.join(SA_DIR, "ca.crt")


def _from_kubeconfig(path: str) -> tuple[str, str, str, str]:
    from aioray.daemons.autoscaler.config import ConfigError, load_mapping

    try:
        kc = load_mapping(path)
    except ConfigError as e:
        raise ProviderError(f"provider.kubeconfig: {e}") from None
    try:
        ctx_name = kc["current-context"]
        ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in kc.get("users", []) if u["name"] == ctx.get("user"))
    except (KeyError, StopIteration, TypeError) as e:
        raise ProviderError(
            f"provider.kubeconfig {path}: no usable current context ({e})"
        ) from None
    ca = cluster.get("certificate-authority", "")
    if cluster.get("certificate-authority-data"):
        with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as f:
            f.write(base64.b64decode(cluster["certificate-authority-data"]))
            ca = f.name
    return str(cluster["server"]).rstrip("/"), user.get("tokenFile", ""), user.get("token", ""), ca
