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
