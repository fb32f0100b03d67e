"""The operator installed for one namespace only (manifests/operator/namespaced), run with its
own ServiceAccount's token: it serves that namespace, meets its peers in a KopfPeering there,
and has no right to read anything elsewhere."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.conftest import KWOK_PLACEMENT, ROOT, Cluster, create_namespace, wait_until
from tests.e2e.test_operator_reconcile import (
    CHILDREN,
    OPERATOR_SA,
    OperatorProcess,
    apply_agent,
    kget,
    service_account_kubeconfig,
    wait_state,
)

NAMESPACED = ROOT / "manifests" / "operator" / "namespaced"
IDENTITY = f"team-operator-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def team(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A team namespace with the namespaced install applied (its operator Deployment at 0
    replicas: the operator runs here as a local process with the same ServiceAccount)."""
    cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))  # the cluster admin's
    cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage",
        "--timeout=60s",
    )  # fmt: skip
    name = f"e2e-team-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, name, KWOK_PLACEMENT)
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(NAMESPACED, overlay)}]\nnamespace: {name}\n"
    )
    rendered = cluster.kubectl_run(
        "kustomize", str(overlay), "--load-restrictor", "LoadRestrictionsNone"
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 0
        if doc["kind"] == "KopfPeering":
            peering = doc
    docs.remove(peering)  # the operator creates it: its Role allows that, and it must
    cluster.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, team: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(cluster, workdir / "kubeconfig", namespace=team)
    process = OperatorProcess(
        cluster,
        kubeconfig,
        workdir / "operator.log",
        AGENT_OPERATOR_NAMESPACES=team,
        AGENT_OPERATOR_PEERING="namespaced",
        POD_ID=IDENTITY,  # its peering identity, as in a pod
    )
    try:
        process.wait_alive()
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.output()[-3000:]


def _can(cluster: Cluster, team: str, verb: str, *what: str) -> bool:
    who = f"--as=system:serviceaccount:{team}:{OPERATOR_SA}"
    result = cluster.kubectl_run("auth", "can-i", verb, *what, who, check=False)
    return result.stdout.strip() == "yes"


def test_an_agentdeployment_in_its_namespace_becomes_ready_with_its_children(
    cluster: Cluster, team: str, operator: OperatorProcess
) -> None:
    apply_agent(cluster, team, "agent", replicas=2)
    obj = wait_state(cluster, operator, team, "agent")
    assert obj["status"]["readyReplicas"] == 2
    for kind in CHILDREN:
        child = "agent-config" if kind == "configmap" else "agent"
        assert kget(cluster, team, kind, child) is not None, kind


def test_it_meets_its_peers_in_a_kopfpeering_in_its_namespace_it_created(
    cluster: Cluster, team: str, operator: OperatorProcess
) -> None:
    wait_until(
        lambda: IDENTITY in ((kget(cluster, team, "kopfpeering", "moorage-operator") or {})
                             .get("status") or {}),
        "the operator's entry in the KopfPeering of its namespace",
        timeout=60,
    )  # fmt: skip
    assert "KopfPeering 'moorage-operator' in namespace" in operator.output()
    cluster_peering = cluster.kubectl_run(
        "get", "clusterkopfpeering", "moorage-operator", "-o", "json", check=False
    )
    assert IDENTITY not in cluster_peering.stdout


def test_its_service_account_can_do_nothing_outside_its_namespace(
    cluster: Cluster, team: str, namespace: str, operator: OperatorProcess
) -> None:
    assert _can(cluster, team, "list", "agentdeployments.moorage.dev", "-n", team)
    assert _can(cluster, team, "patch", "deployments.apps", "-n", team)
    for what in (
        ("list", "agentdeployments.moorage.dev", "-n", namespace),
        ("list", "agentdeployments.moorage.dev", "--all-namespaces"),
        ("get", "secrets", "-n", namespace),
        ("create", "deployments.apps", "-n", namespace),
        ("list", "clusterkopfpeerings.kopf.dev"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ):
        assert not _can(cluster, team, *what), what


def test_an_agentdeployment_in_another_namespace_is_not_its_business(
    cluster: Cluster, team: str, namespace: str, operator: OperatorProcess
) -> None:
    apply_agent(cluster, namespace, "elsewhere")
    # Then a change at home, handled after the other object existed.
    apply_agent(cluster, team, "later")
    wait_state(cluster, operator, team, "later")
    other = kget(cluster, namespace, "agentdeployment", "elsewhere")
    assert "status" not in other
    assert not [k for k in other["metadata"].get("annotations", {}) if "moorage.dev/" in k]
    assert kget(cluster, namespace, "deployment", "elsewhere") is None
    # It never tried: no request of it was refused.
    assert "forbidden" not in operator.output().lower()
