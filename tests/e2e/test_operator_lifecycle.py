"""Operator lifecycle: namespaced operation, peering (one active instance), resume."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, KubectlError, wait_until
from tests.e2e.test_operator_reconcile import (
    OperatorProcess,
    agent,
    apply_agent,
    deployment,
    install_operator_manifests,
    service_account_kubeconfig,
    wait_state,
)

# Long enough for an active operator to have created the children of a new resource.
GRACE_SECONDS = 8


@pytest.fixture
def kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """The operator ServiceAccount's kubeconfig, after installing the manifests."""
    install_operator_manifests(cluster)
    return service_account_kubeconfig(cluster, tmp_path / "kubeconfig")


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    """A second namespace, deleted afterwards."""
    name = f"e2e-other-{uuid.uuid4().hex[:6]}"
    cluster.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def _start(cluster: Cluster, kubeconfig: Path, log: Path, **env: str) -> OperatorProcess:
    process = OperatorProcess(cluster, kubeconfig, log, **env)
    process.wait_alive()
    return process


def test_a_namespaced_operator_serves_only_its_namespaces(
    cluster: Cluster, kubeconfig: Path, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    op = _start(cluster, kubeconfig, tmp_path / "op.log", AGENT_OPERATOR_NAMESPACES=namespace)
    try:
        apply_agent(cluster, other_namespace, "ignored")
        apply_agent(cluster, namespace, "served")
        wait_state(cluster, op, namespace, "served")
        time.sleep(GRACE_SECONDS)
        assert "status" not in agent(cluster, other_namespace, "ignored")
        assert deployment(cluster, other_namespace, "ignored") is None
    finally:
        assert op.stop() == 0


def test_a_second_instance_pauses_both_until_it_leaves(
    cluster: Cluster, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    first = _start(cluster, kubeconfig, tmp_path / "first.log")
    second = None
    try:
        second = _start(cluster, kubeconfig, tmp_path / "second.log")
        wait_until(
            lambda: "Pausing all operators" in first.output(),
            "the first instance pausing for the second",
            timeout=60,
        )
        apply_agent(cluster, namespace, "contested")
        time.sleep(GRACE_SECONDS)
        assert deployment(cluster, namespace, "contested") is None
        assert second.stop() == 0
        wait_until(
            lambda: "Resuming operations" in first.output(), "the first instance resuming", 60
        )
        wait_state(cluster, first, namespace, "contested")
    finally:
        if second is not None:
            second.stop()
        assert first.stop() == 0


def test_changes_made_while_the_operator_was_down_are_corrected_when_it_starts(
    cluster: Cluster, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    op = _start(cluster, kubeconfig, tmp_path / "before.log")
    try:
        apply_agent(cluster, namespace, "resumed")
        wait_state(cluster, op, namespace, "resumed")
    finally:
        assert op.stop() == 0
    cluster.kubectl_run("delete", "-n", namespace, "deployment/resumed", "--wait=true")
    cluster.kubectl_run("scale", "-n", namespace, "agentdeployment/resumed", "--replicas=2")
    op = _start(cluster, kubeconfig, tmp_path / "after.log")
    try:
        obj = wait_state(cluster, op, namespace, "resumed")
        dep = deployment(cluster, namespace, "resumed")
        assert dep is not None
        assert dep["spec"]["replicas"] == 2
        assert obj["status"]["readyReplicas"] == 2
    finally:
        assert op.stop() == 0
    # With no operator running, deleting the resource does not wait for one (no finalizer).
    cluster.kubectl_run(
        "delete", "-n", namespace, "agentdeployment/resumed", "--wait=true", "--timeout=60s"
    )


def test_a_missing_peering_object_is_created_and_the_operator_serves(
    cluster: Cluster, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    # kopf alone would wait for it forever, silently, with every resource unserved. (The
    # kubeconfig fixture already removed it; make sure, whatever that fixture does.)
    cluster.kubectl_run(
        "delete", "clusterkopfpeering", "moorage-operator", "--ignore-not-found", "--wait=true"
    )
    with pytest.raises(KubectlError):
        cluster.kubectl_run("get", "clusterkopfpeering", "moorage-operator")
    op = _start(cluster, kubeconfig, tmp_path / "op.log")
    try:
        apply_agent(cluster, namespace, "peerless")
        wait_state(cluster, op, namespace, "peerless")
        assert "ClusterKopfPeering 'moorage-operator' was missing; created it" in op.output()
    finally:
        assert op.stop() == 0
    cluster.kubectl_run("get", "clusterkopfpeering", "moorage-operator")
