"""The chart on the real node: probes, drain, rollouts and hardening, shown with running containers.

On kwok nodes `helm install --wait` succeeds whatever the image does; here the kubelet runs the
image, executes the probes, sends preStop and SIGTERM, and applies the limits.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, load_image, wait_until
from tests.e2e.realnode import (
    CHART,
    IMAGE_TAG,
    SERVICE_REPO,
    Load,
    container_pid,
    get_json,
    helm,
    host_redis,
    image_values,
    pods,
    post_json,
    probe_counts,
    ready,
    service_url,
    stream_turn,
    wait_rollout,
)

RELEASE = "agent"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
# A second tag of the same build: a new image reference, so the Deployment rolls.
NEXT_TAG = f"{IMAGE_TAG}-next"
SECRET = "sk-real-node-test-0d9f3b7c"
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "localhost/moorage/redis:7-bookworm")


@pytest.fixture(scope="module")
def node_images() -> None:
    """The service image in the node under two tags (buildah tag, then import)."""
    load_image(f"{SERVICE_REPO}:{IMAGE_TAG}")
    from tests.image.conftest import buildah

    buildah("tag", f"{SERVICE_REPO}:{IMAGE_TAG}", f"{SERVICE_REPO}:{NEXT_TAG}")
    load_image(f"{SERVICE_REPO}:{NEXT_TAG}")


def _install(cluster: Cluster, namespace: str, *values: str, timeout: str = "180s") -> None:
    helm(
        cluster, "install", RELEASE, str(CHART), "-n", namespace, *image_values(), *values,
        "--wait", "--timeout", timeout,
    )  # fmt: skip


def test_helm_install_wait_is_ready_because_the_kubelets_probes_passed(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    _install(cluster, real_namespace)
    (pod,) = pods(cluster, real_namespace, SELECTOR)
    status = pod["status"]["containerStatuses"][0]
    # The container really runs: containerd's id, a start time, and our own log line.
    assert status["containerID"].startswith("containerd://")
    assert status["ready"]
    assert status["started"]
    assert "running" in status["state"]
    assert status["restartCount"] == 0
    logs = cluster.kubectl_run("logs", "-n", real_namespace, pod["metadata"]["name"]).stdout
    assert '"msg":"ready"' in logs.replace(" ", "")
    # Readiness came from the kubelet's httpGet probes on /readyz, counted by the kubelet.
    assert probe_counts(cluster, pod["metadata"]["name"], "Readiness").get("successful", 0) >= 1


def test_helm_install_wait_fails_when_readiness_never_passes(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    # A store that refuses connections: the service stays `starting`, so /readyz answers 503.
    result = helm(
        cluster, "install", RELEASE, str(CHART), "-n", real_namespace, *image_values(),
        "--set", "session.url=redis://127.0.0.1:1/0", "--wait", "--timeout", "45s",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    (pod,) = pods(cluster, real_namespace, SELECTOR)
    status = pod["status"]["containerStatuses"][0]
    assert "running" in status["state"]
    assert not status["ready"]
    assert probe_counts(cluster, pod["metadata"]["name"], "Readiness").get("failed", 0) >= 1


def test_helm_install_wait_fails_when_the_process_exits(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    # A configuration the service refuses (the chart passes extraEnv through unchecked): the
    # process exits 2 at start, every time.
    result = helm(
        cluster, "install", RELEASE, str(CHART), "-n", real_namespace, *image_values(),
        "--set", "extraEnv.AGENT_CONTEXT_MESSAGES=1", "--wait", "--timeout", "45s", check=False,
    )  # fmt: skip
    assert result.returncode != 0

    def exited_with_2() -> bool:
        (pod,) = pods(cluster, real_namespace, SELECTOR)
        status = pod["status"]["containerStatuses"][0]
        last = status.get("lastState", {}).get("terminated") or status["state"].get("terminated")
        return bool(last) and last["exitCode"] == 2

    wait_until(exited_with_2, "the container to exit 2 (configuration refused)", timeout=90)


@pytest.fixture
def release_with_redis(
    cluster: Cluster, real_namespace: str, node_images: None
) -> Iterator[tuple[str, str]]:
    """Two replicas sharing a Redis on the host, with a slow echo model; (namespace, url)."""
    with host_redis(cluster) as redis:
        _install(
            cluster, real_namespace,
            "--set", "replicaCount=2",
            "--set", f"session.url={redis.url}",
            "--set", f"model.apiKey={SECRET}",
            "--set", "extraEnv.AGENT_ECHO_LATENCY_MS=1500",
            "--set", "termination.drainDelaySeconds=3",
        )  # fmt: skip
        yield real_namespace, service_url(cluster, real_namespace, RELEASE)


def test_no_request_fails_across_upgrade_restart_undo_and_pod_deletion(
    cluster: Cluster, release_with_redis: tuple[str, str]
) -> None:
    namespace, url = release_with_redis
    deployment = RELEASE
    status, first = post_json(f"{url}/v1/chat", {"message": "remember the word anchor"})
    assert status == 200, first
    session = first["session_id"]

    def upgrade() -> None:
        helm(
            cluster, "upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values",
            *image_values(NEXT_TAG), "--wait", "--timeout", "240s",
        )  # fmt: skip

    def restart() -> None:
        cluster.kubectl_run("rollout", "restart", f"deployment/{deployment}", "-n", namespace)
        wait_rollout(cluster, namespace, deployment)

    def undo() -> None:
        cluster.kubectl_run("rollout", "undo", f"deployment/{deployment}", "-n", namespace)
        wait_rollout(cluster, namespace, deployment)

    def delete_pod() -> None:
        victim = pods(cluster, namespace, "app.kubernetes.io/name=agent")[0]["metadata"]["name"]
        cluster.kubectl_run("delete", "pod", victim, "-n", namespace, "--wait=true")
        wait_rollout(cluster, namespace, deployment)

    actions = {"helm upgrade": upgrade, "rollout restart": restart, "rollout undo": undo,
               "delete pod": delete_pod}  # fmt: skip
    with Load(url, loops=3) as load, ThreadPoolExecutor(max_workers=1) as streams:
        for name, action in actions.items():
            before = load.count()
            # A streamed turn in flight while the action replaces the pods.
            stream = streams.submit(stream_turn, url, f"stream across {name}")
            action()
            assert stream.result(timeout=120)[-1] == "reply", name
            wait_until(lambda b=before: load.count() > b + 3, f"turns served after {name}")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0

    # Every pod was replaced at least once; the conversation kept its history in Redis.
    status, history = get_json(f"{url}/v1/sessions/{session}")
    assert status == 200
    assert history["messages"][0]["content"] == "remember the word anchor"
    images = {p["spec"]["containers"][0]["image"] for p in pods(cluster, namespace, SELECTOR)}
    # The undo went back one revision: from the restart to the upgrade's image.
    assert images == {f"{SERVICE_REPO}:{NEXT_TAG}"}


def test_the_running_pod_is_hardened(cluster: Cluster, release_with_redis: tuple[str, str]) -> None:
    namespace, _ = release_with_redis
    # Restricted Pod Security admits the chart's pods (warn mode lists violations, if any).
    result = cluster.kubectl_run(
        "label", "--dry-run=server", "--overwrite", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    )  # fmt: skip
    assert "violate" not in result.stderr, result.stderr
    pod = pods(cluster, namespace, SELECTOR)[0]
    name = pod["metadata"]["name"]

    def exec_(*command: str, check: bool = True) -> str:
        run = cluster.kubectl_run("exec", "-n", namespace, name, "-c", "agent", "--", *command,
                                  check=check)  # fmt: skip
        return run.stdout + run.stderr

    assert exec_("id", "-u").strip() == "10001"
    denied = cluster.kubectl_run(
        "exec", "-n", namespace, name, "-c", "agent", "--", "touch", "/written", check=False
    )
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    assert exec_("cat", "/etc/moorage/secrets/model-api-key") == SECRET
    env = exec_("env")
    assert "AGENT_MODEL_API_KEY_FILE=/etc/moorage/secrets/model-api-key" in env
    assert SECRET not in env  # read from the mounted file, never an environment variable
    logs = cluster.kubectl_run("logs", "-n", namespace, name, "-c", "agent").stdout
    assert logs
    assert SECRET not in logs
    limit = exec_("cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    assert int(limit) == 256 * 1024 * 1024


def test_a_wedged_process_is_restarted_and_a_store_outage_restarts_nothing(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    with host_redis(cluster) as redis:
        _install(
            cluster, real_namespace,
            "--set", f"session.url={redis.url}",
            "--set", "probes.liveness.periodSeconds=2",
            "--set", "probes.liveness.failureThreshold=2",
        )  # fmt: skip
        (pod,) = pods(cluster, real_namespace, SELECTOR)
        name = pod["metadata"]["name"]

        # The store goes away: liveness keeps passing (it touches no downstream), no restart.
        redis.stop()
        start = probe_counts(cluster, name, "Liveness").get("successful", 0)
        wait_until(
            lambda: probe_counts(cluster, name, "Liveness").get("successful", 0) >= start + 4,
            "four liveness probes during the store outage",
            timeout=60,
        )
        (pod,) = pods(cluster, real_namespace, SELECTOR)
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        redis.start()

        # SIGSTOP the service's main process: liveness fails and the kubelet restarts it.
        os.kill(container_pid(cluster, pod), signal.SIGSTOP)

        def restarted() -> bool:
            (p,) = pods(cluster, real_namespace, SELECTOR)
            return int(p["status"]["containerStatuses"][0]["restartCount"]) >= 1

        wait_until(restarted, "the kubelet to restart the wedged container", timeout=90)
        assert probe_counts(cluster, name, "Liveness").get("failed", 0) >= 2
        wait_until(
            lambda: all(ready(p) for p in pods(cluster, real_namespace, SELECTOR)),
            "the restarted pod to be Ready again",
            timeout=90,
        )
        events = cluster.kubectl_run(
            "get", "events", "-n", real_namespace, "-o", "json",
            "--field-selector", f"involvedObject.name={name}",
        ).stdout  # fmt: skip
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        assert "Unhealthy" in reasons
        assert "Killing" in reasons


def _agent_pods_ready_with(cluster: Cluster, namespace: str, image: str, count: int) -> bool:
    live = [
        p for p in pods(cluster, namespace, "app.kubernetes.io/name=agent")
        if not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    return len(live) == count and all(
        ready(p)
        and p["spec"]["containers"][0]["image"] == image
        and p["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
        for p in live
    )


@pytest.fixture
def in_cluster_operator(cluster: Cluster, node_images: None) -> Iterator[str]:
    """The operator from its own image, in moorage-system, with its ServiceAccount and RBAC."""
    from tests.e2e.conftest import ROOT

    cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))
    cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage",
        "--timeout=60s",
    )  # fmt: skip
    # The operator creates its peering object at start if missing, so a first apply can lose the
    # race for it (AlreadyExists); the second apply adopts it.
    if cluster.kubectl_run(
        "apply", "-k", str(ROOT / "manifests" / "operator"), check=False
    ).returncode:
        cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "operator"))
    ns = "moorage-system"
    cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=1")
    wait_rollout(cluster, ns, "moorage-operator")
    try:
        yield ns
    finally:
        # Later tests run their own operators on this machine; this one steps aside.
        cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=0")


def test_the_in_cluster_operator_runs_real_pods_and_reverts_a_rollout_undo(
    cluster: Cluster, real_namespace: str, in_cluster_operator: str
) -> None:
    (operator,) = [
        p for p in pods(cluster, in_cluster_operator, "app.kubernetes.io/name=moorage-operator")
        if not p["metadata"].get("deletionTimestamp")
    ]  # fmt: skip
    assert operator["spec"]["nodeName"] == "moorage-node"
    assert ready(operator)
    assert operator["spec"]["serviceAccountName"] == "moorage-operator"
    first, second = f"{SERVICE_REPO}:{IMAGE_TAG}", f"{SERVICE_REPO}:{NEXT_TAG}"
    with host_redis(cluster) as redis:
        resource = {
            "apiVersion": "moorage.dev/v1beta1",
            "kind": "AgentDeployment",
            "metadata": {"name": "agent", "namespace": real_namespace},
            "spec": {"image": first, "replicas": 1, "model": {"name": "echo"},
                     "session": {"url": redis.url}},
        }  # fmt: skip
        cluster.kubectl_run("apply", "-f", "-", input=json.dumps(resource))
        wait_until(
            lambda: _agent_pods_ready_with(cluster, real_namespace, first, 1),
            "one real pod of the AgentDeployment",
            timeout=120,
        )
        cluster.kubectl_run("scale", "agentdeployment/agent", "-n", real_namespace, "--replicas=2")
        wait_until(
            lambda: _agent_pods_ready_with(cluster, real_namespace, first, 2),
            "two real pods after kubectl scale",
            timeout=120,
        )
        for image in (second, first):  # an image change rolls out; reverting the spec rolls back
            patch = json.dumps({"spec": {"image": image}})
            cluster.kubectl_run(
                "patch", "agentdeployment/agent", "-n", real_namespace, "--type=merge", "-p", patch
            )
            wait_until(
                lambda i=image: _agent_pods_ready_with(cluster, real_namespace, i, 2),
                f"two real pods of {image}",
                timeout=180,
            )
        # A `kubectl rollout undo` goes back to the second image; the operator restores the spec's.
        cluster.kubectl_run("rollout", "undo", "deployment/agent", "-n", real_namespace)

        def undone_and_reverted() -> bool:
            deployment = json.loads(
                cluster.kubectl_run(
                    "get", "deployment", "agent", "-n", real_namespace, "-o", "json"
                ).stdout
            )
            # Revisions: first, second, first again, the undo's second, the operator's first.
            revision = int(
                deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            )
            return revision >= 5 and _agent_pods_ready_with(cluster, real_namespace, first, 2)

        wait_until(undone_and_reverted, "the operator to revert the rollout undo", timeout=180)
        events = cluster.kubectl_run(
            "get", "events", "-n", real_namespace, "-o", "json",
            "--field-selector", "involvedObject.kind=AgentDeployment",
        ).stdout  # fmt: skip
        assert "RollbackReverted" in {e["reason"] for e in json.loads(events)["items"]}
        logs = cluster.kubectl_run(
            "logs", "-n", in_cluster_operator, operator["metadata"]["name"]
        ).stdout
        assert real_namespace in logs
        cluster.kubectl_run("delete", "agentdeployment/agent", "-n", real_namespace, "--wait=true")


def test_a_conversation_survives_a_full_rollout_with_the_charts_own_redis(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    _install(
        cluster, real_namespace,
        "--set", "replicaCount=2",
        "--set", "redis.enabled=true",
        "--set", f"redis.image={REDIS_IMAGE}",
        "--set", "termination.drainDelaySeconds=2",
    )  # fmt: skip
    url = service_url(cluster, real_namespace, RELEASE)
    status, first = post_json(f"{url}/v1/chat", {"message": "remember the word harbour"})
    assert status == 200, first
    session = first["session_id"]
    before = {p["metadata"]["name"] for p in pods(cluster, real_namespace, SELECTOR)}
    with Load(url, loops=2) as load:
        cluster.kubectl_run("rollout", "restart", "deployment/agent", "-n", real_namespace)
        wait_rollout(cluster, real_namespace, "agent")
    assert load.failures == [], load.failures[:5]
    after = {
        p["metadata"]["name"]
        for p in pods(cluster, real_namespace, "app.kubernetes.io/name=agent")
        if not p["metadata"].get("deletionTimestamp")
    }
    assert not before & after  # every agent pod was replaced
    status, answer = post_json(f"{url}/v1/chat", {"session_id": session, "message": "and now?"})
    assert status == 200, answer
    status, history = get_json(f"{url}/v1/sessions/{session}")
    assert status == 200
    contents = [m["content"] for m in history["messages"]]
    assert contents[0] == "remember the word harbour"
    assert contents[-2] == "and now?"


def test_the_cpu_hpa_scales_up_under_load_and_back_down_without_failing_a_request(
    cluster: Cluster, real_namespace: str, node_images: None
) -> None:
    with host_redis(cluster) as redis:
        _install(
            cluster, real_namespace,
            "--set", "autoscaling.enabled=true",
            "--set", "autoscaling.minReplicas=1",
            "--set", "autoscaling.maxReplicas=3",
            "--set", "autoscaling.targetCPUUtilizationPercentage=30",
            "--set", "autoscaling.scaleDownStabilizationSeconds=0",
            "--set", f"session.url={redis.url}",
            "--set", "termination.drainDelaySeconds=3",
        )  # fmt: skip
        url = service_url(cluster, real_namespace, RELEASE)

        def hpa() -> dict[str, Any]:
            raw = cluster.kubectl_run("get", "hpa", RELEASE, "-n", real_namespace, "-o", "json")
            return dict(json.loads(raw.stdout))

        def replicas() -> int:
            return int(hpa().get("status", {}).get("desiredReplicas", 0))

        # metrics-server reports the real pod's CPU (from the kubelet's cgroups).
        wait_until(
            lambda: hpa().get("status", {}).get("currentMetrics") is not None,
            "the HPA to read CPU from metrics-server",
            timeout=120,
        )
        with Load(url, loops=6) as load:
            wait_until(lambda: replicas() >= 2, "the HPA to add a replica under load", timeout=240)
            wait_rollout(cluster, real_namespace, RELEASE)
        assert load.failures == [], load.failures[:5]
        # Load gone (one slow client stays): back to one replica, and the drain drops nothing.
        with Load(url, loops=1, pause=1.0) as light:
            wait_until(lambda: replicas() == 1, "the HPA to scale back to 1", timeout=300)
            wait_until(
                lambda: len(pods(cluster, real_namespace, SELECTOR)) == 1,
                "the removed pods to be gone",
                timeout=120,
            )
        assert light.failures == [], light.failures[:5]
        assert load.ok > 0
        assert light.ok > 0
