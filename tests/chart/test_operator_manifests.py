"""The operator's two installs: cluster-wide (manifests/operator) and one namespace only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import ROOT, kustomize

OPERATOR = ROOT / "manifests" / "operator"
NAMESPACED = OPERATOR / "namespaced"
CLUSTER_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "CustomResourceDefinition",
    "Namespace",
}


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return list(next(d for d in docs if d["kind"] == kind)["rules"])


@pytest.fixture(scope="module")
def cluster_wide() -> list[dict[str, Any]]:
    return kustomize(OPERATOR)


def test_the_namespaced_install_into_any_namespace_has_nothing_cluster_wide(
    tmp_path: Path,
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(NAMESPACED, overlay)}]\nnamespace: team-a\n"
    )
    docs = kustomize(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "KopfPeering"}
    assert not kinds & CLUSTER_KINDS
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "moorage-operator", "namespace": "team-a"}
    ]
    assert binding["roleRef"]["kind"] == "Role"


def test_the_namespaced_operator_watches_its_own_namespace_and_peers_there() -> None:
    deployment = next(d for d in kustomize(NAMESPACED) if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENT_OPERATOR_NAMESPACES"] == {
        "name": "AGENT_OPERATOR_NAMESPACES",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    assert env["AGENT_OPERATOR_PEERING"]["value"] == "namespaced"


def test_the_role_is_the_cluster_roles_namespaced_rules_with_kopfpeering(
    cluster_wide: list[dict[str, Any]],
) -> None:
    # One set of rights in two shapes: a rule added to one and not the other would fail only
    # in the install that lacks it.
    expected = []
    for rule in _rules(cluster_wide, "ClusterRole"):
        if rule["apiGroups"] == ["apiextensions.k8s.io"]:
            continue  # cluster-scoped; kopf finds the kind through discovery
        if rule["resources"] == ["clusterkopfpeerings"]:
            rule = {**rule, "resources": ["kopfpeerings"]}
        expected.append(rule)
    assert _rules(kustomize(NAMESPACED), "Role") == expected


def test_both_installs_run_the_same_operator_pod(cluster_wide: list[dict[str, Any]]) -> None:
    def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
        spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        container = dict(spec["containers"][0])
        container.pop("env")
        return {**spec, "containers": [container]}

    assert pod(kustomize(NAMESPACED)) == pod(cluster_wide)
