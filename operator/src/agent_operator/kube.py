"""The few Kubernetes API calls the operator makes (server-side apply, delete, get, status)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import kubernetes
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from agent_operator.builders import MANAGER, ChildKind
from agent_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# A separate manager that only ever holds spec.replicas while ownership passes to the HPA.
HANDOFF_MANAGER = f"{MANAGER}-handoff"


@lru_cache(maxsize=1)
def api_client() -> ApiClient:
    """One shared client: in-cluster credentials in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


def _path(kind: ChildKind, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if kind.api_version == "v1" else f"/apis/{kind.api_version}"
    path = f"{base}/namespaces/{namespace}/{kind.plural}"
    return f"{path}/{name}" if name else path


def _call(
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: str | Mapping[str, Any] | None = None,
    content_type: str = "application/json",
) -> Obj:
    client = api_client()
    params = client.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(*params)
    response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=response)
    data = json.loads(response.data or b"{}")
    return data if isinstance(data, dict) else {}


def apply(kind: ChildKind, obj: Mapping[str, Any], manager: str = MANAGER) -> Obj:
    """Server-side apply `obj` as our field manager, taking over conflicting fields."""
    meta = obj["metadata"]
    return _call(
        "PATCH",
        _path(kind, meta["namespace"], meta["name"]),
        query=[("fieldManager", manager), ("force", "true")],
        body=json.dumps(obj),
        content_type="application/apply-patch+yaml",
    )


def get(kind: ChildKind, namespace: str, name: str) -> Obj | None:
    """The live object, or None when it does not exist."""
    try:
        return _call("GET", _path(kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete(kind: ChildKind, namespace: str, name: str) -> bool:
    """Delete a child; True when something was deleted."""
    try:
        _call("DELETE", _path(kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def secret_keys(namespace: str, name: str) -> set[str] | None:
    """Key names of a Secret (values are never returned or logged), or None if it is absent."""
    try:
        data = _call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return set((data.get("data") or {}).keys()) | set((data.get("stringData") or {}).keys())


def secret_value(namespace: str, name: str, key: str) -> str | None:
    """One decoded value of a Secret (for the smoke gate's client key; never logged)."""
    try:
        data = _call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    value = (data.get("data") or {}).get(key)
    return None if value is None else base64.b64decode(value).decode(errors="replace")


def list_pods(namespace: str, selector: str) -> list[Obj]:
    """The pods in `namespace` matching a label selector."""
    found = _call(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
    )
    return [dict(item) for item in found.get("items") or ()]


def patch_pod_condition(namespace: str, name: str, condition: Mapping[str, Any]) -> None:
    """Set one condition of a pod's status (a readiness gate's), leaving the others alone."""
    # Strategic merge: conditions merge by type, so the kubelet's own are untouched.
    _call(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        body={"status": {"conditions": [dict(condition)]}},
        content_type="application/strategic-merge-patch+json",
    )


def _agent_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def get_agent(namespace: str, name: str) -> Obj | None:
    """The AgentDeployment, or None when it is gone."""
    try:
        return _call("GET", _agent_path(namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_agent_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Replace the status block through the status subresource."""
    # A dict: the client serialises JSON bodies itself (a str would be encoded twice).
    body = {"status": dict(status)}
    _call(
        "PATCH",
        f"{_agent_path(namespace, name)}/status",
        body=body,
        content_type="application/merge-patch+json",
    )


def peering_kind(namespace: str | None = None) -> str:
    """The kind of kopf's peering object: one for the cluster, or one per watched namespace."""
    return "ClusterKopfPeering" if namespace is None else "KopfPeering"


def _peering_path(namespace: str | None) -> str:
    if namespace is None:
        return "/apis/kopf.dev/v1/clusterkopfpeerings"
    return f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"


def peering_served(namespace: str | None = None) -> bool:
    """Whether the API server serves the peering kind (its CRD is installed)."""
    plural = "clusterkopfpeerings" if namespace is None else "kopfpeerings"
    try:
        resources = _call("GET", "/apis/kopf.dev/v1").get("resources") or ()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in resources)


def get_peering(name: str, namespace: str | None = None) -> Obj | None:
    """The peering object `name` (in `namespace`, else the cluster's), or None when missing."""
    try:
        return _call("GET", f"{_peering_path(namespace)}/{name}")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create_peering(name: str, namespace: str | None = None) -> bool:
    """Create an empty peering object; False when someone else created it first."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    body = {"apiVersion": "kopf.dev/v1", "kind": peering_kind(namespace), "metadata": metadata}
    try:
        _call("POST", _peering_path(namespace), body=body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def list_agent_keys(namespaces: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(namespace, name) of every AgentDeployment in `namespaces` (all when empty), paged."""
    base = f"/apis/{GROUP}/{VERSION}"
    paths = [f"{base}/namespaces/{ns}/{PLURAL}" for ns in namespaces] or [f"{base}/{PLURAL}"]
    keys: list[tuple[str, str]] = []
    for path in paths:
        token = ""
        while True:
            query = [("limit", "500")] + ([("continue", token)] if token else [])
            page = _call("GET", path, query=query)
            keys.extend(
                (item["metadata"]["namespace"], item["metadata"]["name"])
                for item in page.get("items") or ()
            )
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
    return keys


def owns_field(obj: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether `manager` owns the field at `path` (e.g. "spec", "replicas") under any operation."""
    for entry in obj.get("metadata", {}).get("managedFields") or ():
        if entry.get("manager") != manager:
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


def namespace_gone(exc: ApiException) -> bool:
    """Whether a request failed because its namespace is being deleted or is gone."""
    message = error_message(exc)
    if exc.status == 403:
        return "because it is being terminated" in message
    return exc.status == 404 and message.startswith("namespaces ")


def error_message(exc: ApiException) -> str:
    """The API server's message from an error response, else its reason."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or exc)
