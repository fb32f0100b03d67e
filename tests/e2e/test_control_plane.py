"""The local control plane behaves like a real cluster: API, controllers, admission, helm."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, wait_until

KUBE_VERSION = "v1.36.3"


def _json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl_run(*args, "-o", "json").stdout)


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def _ready(obj: dict[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_server_and_kubectl_report_the_pinned_kubernetes_version(cluster: Cluster) -> None:
    version = _json(cluster, "version")
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBE_VERSION
    raw = json.loads(cluster.kubectl_run("get", "--raw", "/version").stdout)
    assert (raw["major"], raw["minor"]) == ("1", "36")


def test_every_node_is_ready_and_there_are_at_least_two(cluster: Cluster) -> None:
    nodes = _json(cluster, "get", "nodes")["items"]
    assert len(nodes) >= 2
    assert [n["metadata"]["name"] for n in nodes if not _ready(n)] == []


def test_control_plane_components_report_healthy(cluster: Cluster) -> None:
    readyz = cluster.kubectl_run("get", "--raw", "/readyz?verbose").stdout
    assert "readyz check passed" in readyz
    # Leases show the controller manager and scheduler are running and elected.
    leases = _json(cluster, "get", "leases", "-n", "kube-system")["items"]
    holders = {lease["metadata"]["name"] for lease in leases}
    assert {"kube-controller-manager", "kube-scheduler"} <= holders


def _deployment(image: str) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }


def _rollout(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl_run("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s")


def _image(cluster: Cluster, namespace: str) -> str:
    deployment = _json(cluster, "get", "deployment", "web", "-n", namespace)
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_deployment_becomes_ready_on_kwok_nodes(cluster: Cluster, namespace: str) -> None:
    _apply(cluster, namespace, _deployment("example.invalid/web:1"))
    _rollout(cluster, namespace)
    deployment = _json(cluster, "get", "deployment", "web", "-n", namespace)
    assert deployment["status"]["readyReplicas"] == 2
    pods = _json(cluster, "get", "pods", "-n", namespace, "-l", "app=web")["items"]
    kwok_nodes = {
        n["metadata"]["name"]
        for n in _json(cluster, "get", "nodes")["items"]
        if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"
    }
    assert len(pods) == 2
    assert all(_ready(p) and p["spec"]["nodeName"] in kwok_nodes for p in pods)


def test_image_change_rolls_out_a_new_replicaset_and_undo_restores_the_first_image(
    cluster: Cluster, namespace: str
) -> None:
    _apply(cluster, namespace, _deployment("example.invalid/web:1"))
    _rollout(cluster, namespace)
    cluster.kubectl_run(
        "set", "image", "deployment/web", "web=example.invalid/web:2", "-n", namespace
    )
    _rollout(cluster, namespace)
    replicasets = _json(cluster, "get", "replicasets", "-n", namespace, "-l", "app=web")
    images = sorted(
        rs["spec"]["template"]["spec"]["containers"][0]["image"] for rs in replicasets["items"]
    )
    assert images == ["example.invalid/web:1", "example.invalid/web:2"]
    assert _image(cluster, namespace) == "example.invalid/web:2"

    cluster.kubectl_run("rollout", "undo", "deployment/web", "-n", namespace)
    _rollout(cluster, namespace)
    assert _image(cluster, namespace) == "example.invalid/web:1"

    def only_first_image_pods() -> bool:
        pods = _json(cluster, "get", "pods", "-n", namespace, "-l", "app=web")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        images = {p["spec"]["containers"][0]["image"] for p in live}
        return len(live) == 2 and images == {"example.invalid/web:1"}

    wait_until(only_first_image_pods, "two pods of the first image after the undo")


def _pod(name: str, security: dict[str, Any], pod_security: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": pod_security,
            "containers": [
                {"name": "app", "image": "example.invalid/app:1", "securityContext": security}
            ],
        },
    }


def test_restricted_namespace_rejects_a_privileged_pod_and_admits_a_compliant_one(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl_run(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    privileged = _pod("privileged", {"privileged": True}, {})
    rejected = cluster.kubectl_run(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(privileged), check=False
    )
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted' in rejected.stderr
    assert "must not set securityContext.privileged=true" in rejected.stderr

    compliant = _pod(
        "compliant",
        {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
    )
    _apply(cluster, namespace, compliant)
    cluster.kubectl_run(
        "wait", "--for=condition=Ready", "pod/compliant", "-n", namespace, "--timeout=120s"
    )


CRD_GROUP = "e2e.moorage.dev"


@pytest.fixture
def widget_crd(cluster: Cluster) -> Any:
    """A cluster-wide CRD with a CEL rule (min <= max), removed afterwards."""
    name = f"widgets.{CRD_GROUP}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": CRD_GROUP,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.min <= self.max",
                                            "message": "min must not exceed max",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(crd))
    cluster.kubectl_run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    yield name
    cluster.kubectl_run("delete", "crd", name, "--wait=false", check=False)


def _widget(name: str, low: int, high: int) -> str:
    return json.dumps(
        {
            "apiVersion": f"{CRD_GROUP}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"min": low, "max": high},
        }
    )


def test_crd_cel_rule_rejects_an_invalid_object_with_its_message(
    cluster: Cluster, namespace: str, widget_crd: str
) -> None:
    bad = cluster.kubectl_run(
        "apply", "-n", namespace, "-f", "-", input=_widget("bad", 5, 1), check=False
    )
    assert bad.returncode != 0
    assert "min must not exceed max" in bad.stderr
    cluster.kubectl_run("apply", "-n", namespace, "-f", "-", input=_widget("good", 1, 5))
    assert _json(cluster, "get", "widgets", "good", "-n", namespace)["spec"]["max"] == 5


def test_deleting_an_owner_garbage_collects_its_owned_configmap(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl_run("create", "configmap", "owner", "-n", namespace)
    owner = _json(cluster, "get", "configmap", "owner", "-n", namespace)
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
        "data": {"key": "value"},
    }
    _apply(cluster, namespace, owned)
    cluster.kubectl_run("delete", "configmap", "owner", "-n", namespace, "--cascade=background")

    def owned_gone() -> bool:
        probe = cluster.kubectl_run(
            "get", "configmap", "owned", "-n", namespace, "--ignore-not-found", "-o", "name"
        )
        return probe.stdout.strip() == ""

    wait_until(owned_gone, "the garbage collector to delete the owned ConfigMap")


def _tiny_chart(root: Path) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    # kubeVersion makes helm check the server's reported version, which our ldflags set.
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.36.0-0 <1.37.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    return chart


@pytest.mark.parametrize("helm_major", ["v4", "v3"])
def test_helm_installs_upgrades_rolls_back_and_uninstalls_a_chart(
    cluster: Cluster, namespace: str, tmp_path: Path, helm_major: str
) -> None:
    helm = cluster.helm if helm_major == "v4" else cluster.helm3
    env = dict(cluster.env)
    # Keep helm's repository cache and config out of the user's home.
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp_path / var.lower())
    chart = _tiny_chart(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm), *args, "-n", namespace],
            env=env,
            text=True,
            capture_output=True,
            check=True,
            timeout=120,
        )

    def greeting() -> str:
        cm = _json(cluster, "get", "configmap", "demo-settings", "-n", namespace)
        return str(cm["data"]["greeting"])

    version = subprocess.run(
        [str(helm), "version", "--short"], env=env, text=True, capture_output=True, check=True
    )
    assert version.stdout.startswith(helm_major)

    run("install", "demo", str(chart))
    assert greeting() == "hello"
    run("upgrade", "demo", str(chart), "--set", "greeting=bonjour")
    assert greeting() == "bonjour"
    run("rollback", "demo", "1")
    assert greeting() == "hello"
    history = json.loads(run("history", "demo", "-o", "json").stdout)
    assert [entry["revision"] for entry in history] == [1, 2, 3]
    run("uninstall", "demo")
    absent = cluster.kubectl_run(
        "get", "configmap", "demo-settings", "-n", namespace, "--ignore-not-found", "-o", "name"
    )
    assert absent.stdout.strip() == ""
