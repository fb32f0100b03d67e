"""charts/agent on a real control plane, with helm v4 and v3: install → upgrade → undo → rollback.

The namespace enforces the restricted Pod Security Standard, so every pod the chart makes is
admitted only if it is hardened. kwok's fake nodes run no containers: readiness here is the
kubelet stand-in's, so these tests prove what the API server, admission and the controllers do
with the chart, not the service's own probes (tests/chart/test_contract.py covers those).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agent"
PRODUCTION = CHART / "ci" / "production-values.yaml"
POOL_NODE = "kwok-node-0"  # a kwok node, labelled pool=agents for placement-values.yaml
RELEASE = "agent"
IMAGE = "localhost/moorage/agent-service"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"


class Helm:
    """One helm binary against one namespace, with config dirs kept out of the home."""

    def __init__(
        self, major: str, binary: Path, cluster: Cluster, namespace: str, home: Path
    ) -> None:
        self.major = major
        self.binary = binary
        self.namespace = namespace
        self.env = dict(cluster.env)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            self.env[var] = str(home / var.lower())

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args, "--namespace", self.namespace],
            env=self.env,
            text=True,
            capture_output=True,
            check=False,
            timeout=300,
        )
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result


def restricted_helm(major: str, cluster: Cluster, namespace: str, home: Path) -> Helm:
    """helm `major` on a namespace that now enforces the restricted Pod Security Standard."""
    cluster.kubectl_run(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    binary = cluster.helm if major == "v4" else cluster.helm3
    helm = Helm(major, binary, cluster, namespace, home)
    assert helm("version", "--short").stdout.startswith(major)
    return helm


@pytest.fixture(params=["v4", "v3"])
def helm(request: pytest.FixtureRequest, cluster: Cluster, namespace: str, tmp_path: Path) -> Helm:
    """helm v4 or v3 on a namespace that enforces the restricted Pod Security Standard."""
    return restricted_helm(request.param, cluster, namespace, tmp_path)


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    """`kubectl get -o json` parsed."""
    return json.loads(cluster.kubectl_run("get", *what, "-n", namespace, "-o", "json").stdout)


def deployment_image(cluster: Cluster, namespace: str) -> str:
    """Image of the agent container in the Deployment's pod template."""
    spec = get(cluster, namespace, "deployment", RELEASE)["spec"]["template"]["spec"]
    return str(next(c["image"] for c in spec["containers"] if c["name"] == "agent"))


def rollout(cluster: Cluster, namespace: str) -> None:
    """Wait for the Deployment's rollout to finish."""
    cluster.kubectl_run(
        "rollout", "status", f"deployment/{RELEASE}", "-n", namespace, "--timeout=180s"
    )


def install_args(tag: str, *extra: str) -> list[str]:
    """Values of the production scenario with a given image tag."""
    return [
        "-f", str(PRODUCTION),
        "--set", f"image.repository={IMAGE}",
        "--set", f"image.tag={tag}",
        *extra,
    ]  # fmt: skip


def test_chart_installs_hardened_upgrades_undoes_rolls_back_tests_and_uninstalls(
    cluster: Cluster, namespace: str, helm: Helm
) -> None:
    helm("install", RELEASE, str(CHART), *install_args("v1"), "--wait", "--timeout", "180s")

    # Pods admitted under the restricted standard and Ready; the HPA holds them at minReplicas.
    def two_ready() -> bool:
        status = get(cluster, namespace, "deployment", RELEASE).get("status", {})
        return status.get("readyReplicas") == 2

    wait_until(two_ready, "the HPA to bring the Deployment to minReplicas=2 Ready pods")
    pods = get(cluster, namespace, "pods", "-l", SELECTOR)["items"]
    assert len(pods) == 2
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"

    # The Service's endpoints hold both pods.
    def endpoints_filled() -> bool:
        slices = get(
            cluster, namespace, "endpointslices", "-l", f"kubernetes.io/service-name={RELEASE}"
        )["items"]
        ready = [
            e
            for s in slices
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
        ]
        return len(ready) == 2

    wait_until(endpoints_filled, "the Service's EndpointSlices to list both Ready pods")

    hpa = get(cluster, namespace, "hpa", RELEASE)
    assert hpa["spec"]["scaleTargetRef"]["name"] == RELEASE
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    wait_until(
        lambda: get(cluster, namespace, "pdb", RELEASE).get("status", {}).get("expectedPods") == 2,
        "the PodDisruptionBudget to count both pods",
    )
    assert get(cluster, namespace, "networkpolicy", RELEASE)["spec"]["policyTypes"] == [
        "Ingress",
        "Egress",
    ]

    # helm upgrade with a new image tag → a new ReplicaSet running it.
    helm("upgrade", RELEASE, str(CHART), *install_args("v2"), "--wait", "--timeout", "180s")
    rollout(cluster, namespace)
    assert deployment_image(cluster, namespace) == f"{IMAGE}:v2"
    replicasets = get(cluster, namespace, "replicasets", "-l", SELECTOR)["items"]
    images = sorted(r["spec"]["template"]["spec"]["containers"][0]["image"] for r in replicasets)
    assert images == [f"{IMAGE}:v1", f"{IMAGE}:v2"]

    # kubectl rollout undo → the previous image is back.
    cluster.kubectl_run("rollout", "undo", f"deployment/{RELEASE}", "-n", namespace)
    rollout(cluster, namespace)
    assert deployment_image(cluster, namespace) == f"{IMAGE}:v1"

    # helm v4 applies server-side: the undo made kubectl the image field's manager, so helm
    # must be told to take it back (the README says so); helm v3's three-way merge just does.
    take_back = ["--force-conflicts"] if helm.major == "v4" else []
    if take_back:
        refused = helm("upgrade", RELEASE, str(CHART), *install_args("v2"), check=False)
        assert refused.returncode != 0
        assert 'conflict with "kubectl"' in refused.stderr
    helm(
        "upgrade", RELEASE, str(CHART), *install_args("v2", "--set", "model.maxSteps=4"), *take_back
    )
    rollout(cluster, namespace)
    assert get(cluster, namespace, "configmap", RELEASE)["data"]["AGENT_MAX_STEPS"] == "4"
    # helm rollback → revision 1's release again, recorded as a new revision.
    helm("rollback", RELEASE, "1", "--wait", "--timeout", "180s")
    rollout(cluster, namespace)
    assert deployment_image(cluster, namespace) == f"{IMAGE}:v1"
    assert get(cluster, namespace, "configmap", RELEASE)["data"]["AGENT_MAX_STEPS"] == "8"
    history = json.loads(helm("history", RELEASE, "-o", "json").stdout)
    assert [h["revision"] for h in history] == ([1, 2, 3, 4, 5] if take_back else [1, 2, 3, 4])
    assert history[-1]["description"] == "Rollback to 1"

    # helm test: its hook Job (and pod) is admitted under the restricted standard and passes.
    tested = helm("test", RELEASE, "--timeout", "120s", check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert f"{RELEASE}-test-readyz" in tested.stdout

    # helm uninstall leaves nothing of the release behind.
    helm("uninstall", RELEASE, "--wait", "--timeout", "120s")

    def nothing_left() -> bool:
        leftover = cluster.kubectl_run(
            "get",
            "all,configmaps,secrets,serviceaccounts,pdb,hpa,networkpolicies,ingresses,jobs",
            "-n", namespace, "-l", SELECTOR, "-o", "name",
        ).stdout.split()  # fmt: skip
        releases = cluster.kubectl_run(
            "get", "secrets", "-n", namespace, "-l", f"owner=helm,name={RELEASE}", "-o", "name"
        ).stdout.split()
        return not leftover and not releases

    wait_until(nothing_left, "every object of the release to be gone")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--set-string", "replicaCount=three"], "replicaCount", id="string-replicas"
        ),
        pytest.param(
            ["--set", "autoscaling.minReplica=2"], "additional properties 'minReplica'",
            id="unknown-key",
        ),
        pytest.param(
            ["-f", str(PRODUCTION), "--set", "autoscaling.minReplicas=7"],
            "autoscaling.minReplicas (7) must not exceed autoscaling.maxReplicas (6)",
            id="min-above-max",
        ),
    ],
)  # fmt: skip
def test_bad_values_fail_the_install_with_the_schemas_message(
    cluster: Cluster, namespace: str, helm: Helm, args: list[str], message: str
) -> None:
    result = helm("install", RELEASE, str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not helm("list", "-q").stdout.strip()
    assert not cluster.kubectl_run(
        "get", "all", "-n", namespace, "-l", SELECTOR, "-o", "name"
    ).stdout.strip()


@contextlib.contextmanager
def _placement_objects(cluster: Cluster, namespace: str) -> Iterator[None]:
    """What placement-values.yaml names and a platform team provides: a node of the `agents`
    pool (a kwok node, labelled meanwhile), the priority class, the ServiceAccount, the pull
    secret and the prompts ConfigMap."""
    cluster.kubectl_run("label", "node", POOL_NODE, "pool=agents", "--overwrite")
    try:
        cluster.kubectl_run("apply", "-f", "-", input=json.dumps({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "agents-high"}, "value": 1000,
        }))  # fmt: skip
        cluster.kubectl_run("create", "serviceaccount", "agent-identity", "-n", namespace)
        cluster.kubectl_run(
            "create", "secret", "docker-registry", "registry-credentials", "-n", namespace,
            "--docker-server=registry.invalid", "--docker-username=u", "--docker-password=p",
        )  # fmt: skip
        cluster.kubectl_run(
            "create", "configmap", "agent-prompts", "-n", namespace, "--from-literal=a.txt=hi"
        )
        yield
    finally:
        cluster.kubectl_run("label", "node", POOL_NODE, "pool-", check=False)
        cluster.kubectl_run("delete", "priorityclass", "agents-high", check=False)


@pytest.mark.parametrize(
    "scenario", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda p: p.stem
)
def test_every_ci_scenario_installs_under_the_restricted_standard(
    cluster: Cluster, namespace: str, tmp_path: Path, scenario: Path
) -> None:
    helm = restricted_helm("v4", cluster, namespace, tmp_path)
    objects = (
        _placement_objects(cluster, namespace)
        if "placement" in scenario.name
        else contextlib.nullcontext()
    )
    if "existing-secret" in scenario.name:
        cluster.kubectl_run(
            "create", "secret", "generic", "agent-credentials", "-n", namespace,
            "--from-literal=redis-url=redis://r:6379/0", "--from-literal=openai-api-key=sk-x",
        )  # fmt: skip
    with objects:
        helm("install", RELEASE, str(CHART), "-f", str(scenario), "--wait", "--timeout", "180s")

        def all_ready() -> bool:
            deployments = get(cluster, namespace, "deployments", "-l", SELECTOR)["items"]
            return bool(deployments) and all(
                d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"]
                for d in deployments
            )

        wait_until(all_ready, f"every Deployment of {scenario.name} to be Ready")
        helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
