"""e2e tier: a real Kubernetes control plane (kwokctl, binary runtime), its real node and the tools.

Two kinds of namespace: `namespace` places its pods on the kwok nodes (fake: nothing runs, for
tests about objects and scale), `real_namespace` on the real node, where the project's images run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = ROOT / "hack" / "cluster" / "cluster.sh"
# Set this to run the tier against an existing cluster instead of starting one.
KUBECONFIG_ENV = "MOORAGE_E2E_KUBECONFIG"
TOOLS = (
    "kubectl", "helm", "helm3", "kind", "skaffold", "kwokctl", "kube-apiserver", "etcd",
    "kubelet", "kube-proxy", "coredns", "metrics-server", "crictl",
)  # fmt: skip
# The namespace annotations that send its pods to the kwok nodes and tolerate their taint
# (hack/cluster/nodes.yaml), for the PodNodeSelector and PodTolerationRestriction admission
# plugins: one copy, shared by the e2e tests and the operator benchmark.
KWOK_PLACEMENT: dict[str, str] = json.loads(
    (ROOT / "hack" / "cluster" / "kwok-placement.json").read_text()
)
REAL_PLACEMENT = {"scheduler.alpha.kubernetes.io/node-selector": "type=real"}
_TAG = os.environ.get("IMAGE_TAG", "dev")
NODE_IMAGES = (
    f"{os.environ.get('SERVICE_IMAGE', 'localhost/moorage/agent-service')}:{_TAG}",
    f"{os.environ.get('OPERATOR_IMAGE', 'localhost/moorage/agent-operator')}:{_TAG}",
    os.environ.get("REDIS_IMAGE", "localhost/moorage/redis:7-bookworm"),
)


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message carries kubectl's stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(result.returncode, result.args, result.stdout, result.stderr)

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr.strip()}"


@dataclass(frozen=True)
class Cluster:
    """A running cluster and the pinned tools that talk to it."""

    kubeconfig: Path
    kubectl: Path
    helm: Path
    helm3: Path
    kind: Path
    skaffold: Path
    bin_dir: Path
    env: dict[str, str] = field(repr=False)

    def kubectl_run(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run our kubectl against this cluster, output captured as text.

        With `check`, a failure raises with kubectl's stderr in the message, so a red test says
        what the API server answered.
        """
        result = subprocess.run(
            [str(self.kubectl), *args],
            env=self.env,
            input=input,
            text=True,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 120.0, interval: float = 1.0
) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def load_image(image: str) -> None:
    """Import an image from buildah's storage into the real node (a no-op when already there)."""
    loaded = subprocess.run(
        [str(CLUSTER_SH), "node", "load", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    require(loaded.returncode == 0, f"{image} loaded into the node (make image): {loaded.stderr}")


def _paths() -> tuple[Path, Path]:
    """The shared bin dir and the kubeconfig path of the cluster that cluster.sh manages."""
    out = subprocess.run(
        [str(CLUSTER_SH), "paths"], text=True, capture_output=True, check=True
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    return Path(values["bin_dir"]), Path(values["kubeconfig"])


def _api_ready(kubectl: Path, kubeconfig: Path) -> bool:
    """Whether the API server behind the kubeconfig answers /readyz."""
    if not kubeconfig.is_file():
        return False
    probe = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A usable Kubernetes v1.36.3 cluster for the whole session, as a frozen `Cluster`.

    Attributes: `kubeconfig`, `kubectl`, `helm` (v4), `helm3`, `kind`, `skaffold`, `bin_dir`
    (all `Path`s; `bin_dir` holds every tool, so `helm` there is v4) and `env` (os.environ with
    KUBECONFIG set and `bin_dir` first on PATH: pass it to subprocesses). `kubectl_run(*args,
    check=True, input=None)` runs kubectl and returns the text `CompletedProcess`.

    With MOORAGE_E2E_KUBECONFIG set, that cluster is used and left alone. Otherwise the local
    kwokctl cluster (`make cluster-up`) is reused if it runs, or started and deleted at session
    end. The tools come from `make cluster-tools` (run by `make test`); never the system kubectl.
    """
    bin_dir, local_kubeconfig = _paths()
    missing = [tool for tool in TOOLS if not (bin_dir / tool).exists()]
    require(not missing, f"{', '.join(missing)} in {bin_dir} (make cluster-tools)")

    kubectl = bin_dir / "kubectl"
    given = os.environ.get(KUBECONFIG_ENV)
    started = False
    if given:
        kubeconfig = Path(given)
        require(_api_ready(kubectl, kubeconfig), f"a reachable cluster at {KUBECONFIG_ENV}={given}")
    else:
        kubeconfig = local_kubeconfig
        if not _api_ready(kubectl, kubeconfig):
            log.info("starting the local cluster")
            subprocess.run([str(CLUSTER_SH), "up"], check=True, timeout=540)
            started = True

    if not given:
        # The real node cannot pull: the images `make image` built are imported into it.
        for image in NODE_IMAGES:
            load_image(image)

    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    try:
        yield Cluster(
            kubeconfig=kubeconfig,
            kubectl=kubectl,
            helm=bin_dir / "helm",
            helm3=bin_dir / "helm3",
            kind=bin_dir / "kind",
            skaffold=bin_dir / "skaffold",
            bin_dir=bin_dir,
            env=env,
        )
    finally:
        if started:
            subprocess.run([str(CLUSTER_SH), "down"], check=True, timeout=300)


def create_namespace(cluster: Cluster, name: str, annotations: dict[str, str]) -> None:
    """Create a namespace with these annotations and wait for its default ServiceAccount."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": annotations},
    }
    cluster.kubectl_run("create", "-f", "-", input=json.dumps(manifest))
    # Pods are refused until kube-controller-manager has made the namespace's ServiceAccount.
    cluster.kubectl_run(
        "wait",
        "--for=create",
        "serviceaccount/default",
        "-n",
        name,
        "--timeout=60s",
    )


def _namespace(
    cluster: Cluster, request: pytest.FixtureRequest, annotations: dict[str, str]
) -> Iterator[str]:
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40]
    stem = stem.strip("-")
    name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, name, annotations)
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose pods go to the kwok nodes (fake); deleted afterwards."""
    yield from _namespace(cluster, request, KWOK_PLACEMENT)


@pytest.fixture
def real_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose pods really run, on the real node; deleted afterwards."""
    yield from _namespace(cluster, request, REAL_PLACEMENT)
