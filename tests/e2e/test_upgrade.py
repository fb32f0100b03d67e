"""Upgrading from the previous release (hack/release/previous.env), as a user would: its CRD,
operator and chart, taken from git, installed first; then this tree's. Existing resources keep
reconciling and can still be changed and deleted; the chart's `helm upgrade` keeps serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.conftest import ROOT, Cluster, wait_until
from tests.e2e.realnode import (
    SERVICE_REPO,
    Load,
    get_json,
    helm,
    host_redis,
    image_values,
    pods,
    post_json,
    service_url,
)
from tests.e2e.test_operator_reconcile import (
    CHILDREN,
    IMAGE_V2,
    OperatorProcess,
    image_of,
    install_operator_manifests,
    kget,
    service_account_kubeconfig,
    settled,
    wait_state,
)
from tests.e2e.test_real_node import NEXT_TAG, node_images

__all__ = ["node_images"]  # a fixture: the service image under a second tag, in the node

CRD = "agentdeployments.moorage.dev"
RELEASE_ENV = ROOT / "hack" / "release" / "previous.env"


def _previous() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in RELEASE_ENV.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k: v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree, from git (the commit is in main's history)."""
    commit = _previous()["PREVIOUS_COMMIT"]
    present = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], check=False
    )
    require(present.returncode == 0, f"the previous release's commit {commit} (a full clone)")
    tree = tmp_path_factory.mktemp("previous")
    archive = tree / "tree.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit],
        check=True,
        timeout=120,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    return tree


def _start_operator(cluster: Cluster, root: Path, workdir: Path) -> OperatorProcess:
    install_operator_manifests(cluster, root)
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = service_account_kubeconfig(cluster, workdir / "kubeconfig")
    # The first run of the previous tree's operator syncs its own environment (from the cache).
    process = OperatorProcess(cluster, kubeconfig, workdir / "operator.log", root=root)
    process.wait_alive(timeout=240)
    return process


def _apply(cluster: Cluster, namespace: str, version: str, name: str, **spec: Any) -> None:
    manifest = {
        "apiVersion": f"moorage.dev/{version}",
        "kind": "AgentDeployment",
        "metadata": {"name": name},
        "spec": {"image": "localhost/moorage/agent-service:dev", **spec},
    }
    cluster.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def _resource_versions(cluster: Cluster, namespace: str) -> dict[str, str]:
    listed = kget(cluster, namespace, "agentdeployments.v1beta1.moorage.dev")
    return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in listed["items"]}


def _crd_migrate(cluster: Cluster) -> str:
    result = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "crd-migrate"],
        env={**cluster.env, "KUBECTL": str(cluster.kubectl)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def previous_crd(cluster: Cluster, previous: Path) -> Iterator[None]:
    """The previous release's CRD alone (removing ours removes every AgentDeployment: the
    modules that need some create their own); ours is back afterwards, whatever happened."""
    cluster.kubectl_run("delete", "crd", CRD, "--ignore-not-found", "--wait=true")
    cluster.kubectl_run("apply", "-k", str(previous / "manifests" / "crds"))
    cluster.kubectl_run("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    _forget_discovery(cluster)
    try:
        yield
    finally:
        cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))


def _forget_discovery(cluster: Cluster) -> None:
    """Drop kubectl's cached API discovery: going back to a CRD without v1beta1 (only a test
    does that) leaves a cache that still prefers v1beta1, and every get would be a 404."""
    cache = Path(
        cluster.env.get("KUBECACHEDIR")
        or Path(cluster.env.get("HOME", Path.home())) / ".kube" / "cache"
    )
    shutil.rmtree(cache / "discovery", ignore_errors=True)


@pytest.mark.timeout(900)
def test_resources_of_the_previous_release_keep_reconciling_and_can_be_changed_and_deleted(
    cluster: Cluster,
    namespace: str,
    previous: Path,
    previous_crd: None,
    tmp_path: Path,
) -> None:
    # The previous release: its CRD (v1alpha1 only) and its operator.
    old = _start_operator(cluster, previous, tmp_path / "old")
    try:
        _apply(cluster, namespace, "v1alpha1", "plain", replicas=2)
        _apply(cluster, namespace, "v1alpha1", "tuned", env=[{"name": "X_MODE", "value": "a"}])
        for name in ("plain", "tuned"):
            wait_state(cluster, old, namespace, name)
    finally:
        assert old.stop() == 0, old.output()[-3000:]

    # Upgrade the CRD: both versions served, v1beta1 stored; the old objects are still
    # stored as v1alpha1 until migrated. A rewrite changes each (its resourceVersion moves);
    # a second pass finds nothing left to rewrite.
    cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))
    cluster.kubectl_run("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    crd = json.loads(cluster.kubectl_run("get", "crd", CRD, "-o", "json").stdout)
    assert crd["status"]["storedVersions"] == ["v1alpha1", "v1beta1"]
    before = _resource_versions(cluster, namespace)
    assert "2 AgentDeployment(s) stored as v1beta1" in _crd_migrate(cluster)
    migrated = _resource_versions(cluster, namespace)
    assert all(migrated[n] != before[n] for n in before), (before, migrated)
    _crd_migrate(cluster)
    assert _resource_versions(cluster, namespace) == migrated
    crd = json.loads(cluster.kubectl_run("get", "crd", CRD, "-o", "json").stdout)
    assert crd["status"]["storedVersions"] == ["v1beta1"]

    # Either version reads the same objects; v1alpha1 says it is deprecated.
    for version in ("v1alpha1", "v1beta1"):
        got = cluster.kubectl_run("get", f"agentdeployments.{version}.moorage.dev", "-n",
                                  namespace, "-o", "name")  # fmt: skip
        assert sorted(got.stdout.split()) == [
            f"agentdeployment.moorage.dev/{n}" for n in ("plain", "tuned")
        ]
        assert ("deprecated" in got.stderr) == (version == "v1alpha1"), got.stderr

    # This release's operator takes over: the objects settle again, then changes through
    # either version roll out, and deletion cascades.
    new = _start_operator(cluster, ROOT, tmp_path / "new")
    try:
        for name in ("plain", "tuned"):
            wait_state(cluster, new, namespace, name)
        cluster.kubectl_run(
            "patch", "-n", namespace, "agentdeployments.v1beta1.moorage.dev", "plain",
            "--type=merge", "-p", json.dumps({"spec": {"image": IMAGE_V2}}),
        )  # fmt: skip
        cluster.kubectl_run(
            "patch", "-n", namespace, "agentdeployments.v1alpha1.moorage.dev", "tuned",
            "--type=merge", "-p", json.dumps({"spec": {"env": [{"name": "X_MODE", "value": "b"}]}}),
        )  # fmt: skip
        wait_until(lambda: settled(cluster, namespace, "plain"), "plain settled after its patch")
        wait_until(lambda: settled(cluster, namespace, "tuned"), "tuned settled after its patch")
        assert image_of(kget(cluster, namespace, "deployment", "plain")) == IMAGE_V2
        tuned = kget(cluster, namespace, "deployment", "tuned")
        env = tuned["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "X_MODE", "value": "b"} in env

        cluster.kubectl_run(
            "delete", "-n", namespace, "agentdeployments.v1alpha1.moorage.dev", "tuned",
            "--timeout=60s",
        )  # fmt: skip
        cluster.kubectl_run("delete", "-n", namespace, "agentdeployment", "plain", "--timeout=60s")
        assert kget(cluster, namespace, "agentdeployments")["items"] == []
        for kind in CHILDREN:
            wait_until(
                lambda k=kind: not kget(cluster, namespace, k, "-l",
                                        "app.kubernetes.io/managed-by=moorage-operator")["items"],
                f"every {kind} garbage-collected",
                timeout=60,
            )  # fmt: skip
        assert "Traceback" not in new.output(), new.output()[-3000:]
    finally:
        assert new.stop() == 0, new.output()[-3000:]


@pytest.mark.timeout(900)
def test_helm_upgrade_from_the_previous_chart_serves_every_request(
    cluster: Cluster, real_namespace: str, previous: Path, node_images: None
) -> None:
    release = f"agent-{uuid.uuid4().hex[:4]}"  # contains the chart's name: the Service's name
    old_chart = previous / "charts" / "agent"
    with host_redis(cluster) as redis:
        values = [
            "--set", "replicaCount=2",
            "--set", f"session.url={redis.url}",
            "--set", "extraEnv.AGENT_ECHO_LATENCY_MS=500",
            "--set", "termination.drainDelaySeconds=3",
        ]  # fmt: skip
        helm(cluster, "install", release, str(old_chart), "-n", real_namespace, *values,
             *image_values(), "--wait", "--timeout", "180s")  # fmt: skip
        url = service_url(cluster, real_namespace, release)
        status, first = post_json(f"{url}/v1/chat", {"message": "remember the word keel"})
        assert status == 200, first
        old_pods = {
            p["metadata"]["name"]
            for p in pods(cluster, real_namespace, f"app.kubernetes.io/instance={release}")
        }
        with Load(url, loops=3) as load:
            wait_until(lambda: load.count() > 3, "turns served before the upgrade")
            # The new chart with the release's new image, as an upgrade ships them: every pod
            # is replaced while the turns go on.
            helm(cluster, "upgrade", release, str(ROOT / "charts" / "agent"), "-n",
                 real_namespace, *values, *image_values(NEXT_TAG), "--wait",
                 "--timeout", "240s")  # fmt: skip
            served = load.count()
            wait_until(lambda: load.count() > served + 3, "turns served after the upgrade")
        assert load.failures == [], load.failures[:5]

        history = json.loads(helm(cluster, "history", release, "-n", real_namespace,
                                  "-o", "json").stdout)  # fmt: skip
        charts = [h["chart"] for h in history]
        versions = [_chart_version(c) for c in (old_chart, ROOT / "charts" / "agent")]
        assert charts == [f"agent-{v}" for v in versions]
        assert versions[0] != versions[1], "bump charts/agent/Chart.yaml's version"
        new_pods = pods(cluster, real_namespace, f"app.kubernetes.io/instance={release}")
        assert not old_pods & {p["metadata"]["name"] for p in new_pods}, "no pod was replaced"
        assert {p["spec"]["containers"][0]["image"] for p in new_pods} == {
            f"{SERVICE_REPO}:{NEXT_TAG}"
        }
        status, kept = get_json(f"{url}/v1/sessions/{first['session_id']}")
        assert status == 200
        assert kept["messages"][0]["content"] == "remember the word keel"
        helm(cluster, "uninstall", release, "-n", real_namespace, "--wait")


def _chart_version(chart: Path) -> str:
    for line in (chart / "Chart.yaml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no version in {chart}/Chart.yaml")
