"""e2e tier: a real Kubernetes control plane (kwokctl, binary runtime) and the Go-built tools."""

from __future__ import annotations

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
TOOLS = ("kubectl", "helm", "helm3", "kind", "skaffold", "kwokctl", "kube-apiserver", "etcd")


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


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (name returned) whose default ServiceAccount exists; deleted afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40]
    stem = stem.strip("-")
    name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl_run("create", "namespace", name)
    # Pods are refused until kube-controller-manager has made the namespace's ServiceAccount.
    cluster.kubectl_run(
        "wait",
        "--for=create",
        "serviceaccount/default",
        "-n",
        name,
        "--timeout=60s",
    )
    try:
        yield name
    finally:
        cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)
