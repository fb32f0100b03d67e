"""Autoscaling on turns in flight, on the real node: the signal that moves when a slow model does.

A slow echo model (2 s per call) under a rising, bounded load of concurrent turns through the
Service: an `inflight` HPA (agent_turns_in_flight per pod, from Prometheus through
prometheus-adapter, both started here as host processes by hack/autoscale/autoscale.sh) adds
pods up to its maximum, while a `cpu` HPA over the same load, side by side, reads a low CPU and
keeps its minimum. When the load falls, both go back to the minimum; scale-down drains pods
whose turns and streams finish. The same through an AgentDeployment and the in-cluster operator.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import (
    REAL_PLACEMENT,
    ROOT,
    Cluster,
    create_namespace,
    load_image,
    wait_until,
)
from tests.e2e.realnode import (
    CHART,
    IMAGE_TAG,
    OPERATOR_REPO,
    SERVICE_REPO,
    PodStreams,
    RampLoad,
    ScaleWatch,
    custom_metrics,
    helm,
    host_redis,
    image_values,
    pods,
    service_url,
    wait_rollout,
)

RELEASE = "agent"
MAX = 4
PER_POD = 2  # target turns in flight per pod
LOOPS = MAX * PER_POD  # the load's bound: enough turns in flight for MAX pods
MODEL_MS = 2000
DRAIN_S = 3
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
# Short windows so the test sees a whole cycle in minutes; the chart's defaults are slower.
HPA_VALUES = {
    "autoscaling.enabled": "true",
    "autoscaling.minReplicas": "1",
    "autoscaling.maxReplicas": str(MAX),
    "autoscaling.targetTurnsInFlightPerPod": str(PER_POD),
    "autoscaling.scaleUpStabilizationSeconds": "0",
    "autoscaling.scaleUpPods": str(MAX),
    "autoscaling.scaleUpPeriodSeconds": "15",
    "autoscaling.scaleDownStabilizationSeconds": "15",
    "autoscaling.scaleDownPods": str(MAX),
    "autoscaling.scaleDownPeriodSeconds": "15",
    "termination.drainDelaySeconds": str(DRAIN_S),
    "extraEnv.AGENT_ECHO_LATENCY_MS": str(MODEL_MS),
}


@pytest.fixture(scope="module")
def metrics_api(cluster: Cluster) -> Iterator[None]:
    """custom.metrics.k8s.io for this module, and the images of this build in the node."""
    load_image(f"{SERVICE_REPO}:{IMAGE_TAG}")
    load_image(f"{OPERATOR_REPO}:{IMAGE_TAG}")
    with custom_metrics(cluster):
        yield


@pytest.fixture
def two_namespaces(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """Two fresh namespaces on the real node: one for each HPA metric."""
    suffix = uuid.uuid4().hex[:6]
    names = (f"e2e-inflight-{suffix}", f"e2e-cpu-{suffix}")
    for name in names:
        create_namespace(cluster, name, REAL_PLACEMENT)
    try:
        yield names
    finally:
        for name in names:
            cluster.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def _install(cluster: Cluster, namespace: str, metric: str, redis_url: str) -> None:
    values = {**HPA_VALUES, "autoscaling.metric": metric, "session.url": redis_url}
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    helm(
        cluster, "install", RELEASE, str(CHART), "-n", namespace, *image_values(), *sets,
        "--wait", "--timeout", "180s",
    )  # fmt: skip


def _scaled_back(cluster: Cluster, watch: ScaleWatch, namespace: str) -> None:
    wait_until(
        lambda: (watch.last() or watch.look()).desired == 1, "the HPA to scale back to 1", 150
    )
    wait_until(
        lambda: len(pods(cluster, namespace, SELECTOR)) == 1,
        "the removed pods to be gone",
        timeout=120,
    )


def _reads_its_metric(watch: ScaleWatch) -> bool:
    sample = watch.last()
    return sample is not None and sample.metric != ""


def test_inflight_scales_out_where_cpu_does_not_and_scale_down_cuts_no_turn(
    cluster: Cluster, metrics_api: None, two_namespaces: tuple[str, str]
) -> None:
    inflight_ns, cpu_ns = two_namespaces
    with host_redis(cluster) as redis, ThreadPoolExecutor(2) as pool:
        installs = [
            pool.submit(_install, cluster, ns, metric, redis.url)
            for ns, metric in ((inflight_ns, "inflight"), (cpu_ns, "cpu"))
        ]
        for install in installs:
            install.result()
        hpa = json.loads(
            cluster.kubectl_run("get", "hpa", RELEASE, "-n", inflight_ns, "-o", "json").stdout
        )
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "agent_turns_in_flight"
        urls = [service_url(cluster, ns, RELEASE) for ns in two_namespaces]
        with (
            ScaleWatch(cluster, inflight_ns, RELEASE) as inflight,
            ScaleWatch(cluster, cpu_ns, RELEASE) as cpu,
        ):
            # Both HPAs read their metric before the load starts: the adapter serves the gauge
            # from Prometheus, metrics-server the CPU.
            for watch in (inflight, cpu):
                wait_until(
                    functools.partial(_reads_its_metric, watch),
                    f"{watch.namespace}'s HPA to read its metric",
                    timeout=120,
                )
            with RampLoad(urls[0], LOOPS) as busy, RampLoad(urls[1], LOOPS) as busy_cpu:
                wait_until(
                    lambda: (inflight.last() or inflight.look()).ready >= MAX,
                    f"the inflight HPA to scale to {MAX} Ready pods",
                    timeout=200,
                )
                # The same load, the same time, on the cpu release: no pod added.
                most_desired, most_ready = cpu.most(busy_cpu.started)
                readings = cpu.metrics(busy_cpu.started)
                assert readings, "the cpu HPA had no CPU reading during the load"
                assert (most_desired, most_ready) == (1, 1), readings
                assert busy_cpu.ok(streamed=True) > 0
            # The load falls to one stream per pod, sent to each pod's own address: the HPA
            # halves the pods, then again, and each removed pod is removed mid-stream. Back at
            # one pod, every stream ended with its reply, across its pod's SIGTERM too.
            with PodStreams(cluster, inflight_ns, SELECTOR, DRAIN_S) as streams:
                _scaled_back(cluster, inflight, inflight_ns)
            assert streams.failures == [], streams.failures[:5]
            assert len(streams.deletions) == MAX - 1, streams.deletions
            for pod in streams.deletions:
                assert streams.served_across_sigterm(pod), (pod, streams.turns.get(pod))
        for load in (busy, busy_cpu):
            assert load.failures() == [], load.failures()[:5]
            assert load.ok(streamed=True) > 0
            assert load.ok(streamed=False) > 0


@pytest.fixture
def in_cluster_operator(cluster: Cluster, metrics_api: None) -> Iterator[str]:
    """The operator of this build, in moorage-system, with its ServiceAccount and RBAC."""
    cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))
    cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage",
        "--timeout=60s",
    )  # fmt: skip
    # The operator creates its peering object at start if missing, so a first apply can lose the
    # race for it (AlreadyExists); the second apply adopts it.
    operator = ROOT / "manifests" / "operator"
    if cluster.kubectl_run("apply", "-k", str(operator), check=False).returncode:
        cluster.kubectl_run("apply", "-k", str(operator))
    ns = "moorage-system"
    cluster.kubectl_run(
        "set", "image", "deployment/moorage-operator", "-n", ns,
        f"operator={OPERATOR_REPO}:{IMAGE_TAG}",
    )  # fmt: skip
    cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=1")
    wait_rollout(cluster, ns, "moorage-operator")
    try:
        yield ns
    finally:
        # Other tests run their own operators on this machine; this one steps aside.
        cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=0")


def test_an_agentdeployment_scales_on_turns_in_flight_through_the_operator(
    cluster: Cluster, real_namespace: str, in_cluster_operator: str
) -> None:
    maximum = 3
    with host_redis(cluster) as redis:
        resource: dict[str, Any] = {
            "apiVersion": "moorage.dev/v1beta1",
            "kind": "AgentDeployment",
            "metadata": {"name": RELEASE, "namespace": real_namespace},
            "spec": {
                "image": f"{SERVICE_REPO}:{IMAGE_TAG}",
                "imagePullPolicy": "Never",
                "model": {"name": "echo"},
                "session": {"url": redis.url},
                "env": [{"name": "AGENT_ECHO_LATENCY_MS", "value": str(MODEL_MS)}],
                "termination": {"drainDelaySeconds": 3},
                "autoscaling": {
                    "enabled": True, "metric": "inflight", "minReplicas": 1,
                    "maxReplicas": maximum, "targetTurnsInFlightPerPod": PER_POD,
                    "scaleUpStabilizationSeconds": 0, "scaleUpPods": maximum,
                    "scaleUpPeriodSeconds": 15, "scaleDownStabilizationSeconds": 15,
                    "scaleDownPods": maximum, "scaleDownPeriodSeconds": 15,
                },
            },
        }  # fmt: skip
        cluster.kubectl_run("apply", "-f", "-", input=json.dumps(resource))
        wait_until(
            lambda: cluster.kubectl_run(
                "get", "hpa", RELEASE, "-n", real_namespace, check=False
            ).returncode == 0,
            "the operator's HPA",
            timeout=120,
        )  # fmt: skip
        wait_rollout(cluster, real_namespace, RELEASE)
        url = service_url(cluster, real_namespace, RELEASE)
        with ScaleWatch(cluster, real_namespace, RELEASE) as watch:
            wait_until(lambda: _reads_its_metric(watch), "the HPA to read turns in flight", 120)
            assert "turns/pod" in (watch.last() or watch.look()).metric
            with RampLoad(url, maximum * PER_POD) as load:
                wait_until(
                    lambda: (watch.last() or watch.look()).ready >= maximum,
                    f"the operator's HPA to scale to {maximum} Ready pods",
                    timeout=200,
                )
            # The operator leaves replicas to the HPA: it owns no part of the count.
            deployment = json.loads(
                cluster.kubectl_run(
                    "get", "deployment", RELEASE, "-n", real_namespace, "-o", "json",
                    "--show-managed-fields",
                ).stdout
            )  # fmt: skip
            owners = {
                entry["manager"]
                for entry in deployment["metadata"]["managedFields"]
                if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
            }
            assert "moorage-operator" not in owners, owners
            with RampLoad(url, 2) as tail:
                _scaled_back(cluster, watch, real_namespace)
        for turns in (load, tail):
            assert turns.failures() == [], turns.failures()[:5]
            assert turns.ok(streamed=True) > 0
            assert turns.ok(streamed=False) > 0
        cluster.kubectl_run("delete", "agentdeployment", RELEASE, "-n", real_namespace)
