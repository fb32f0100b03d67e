"""The API server enforces the CRD's schema and rules; RBAC grants the operator what it needs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.test_operator_reconcile import (
    OPERATOR_NS,
    OPERATOR_SA,
    install_operator_manifests,
)

AS_OPERATOR = f"--as=system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    """The CRDs and the operator's RBAC, installed from manifests/operator."""
    install_operator_manifests(cluster)
    return cluster


def _dry_run(cluster: Cluster, namespace: str, spec: Any, **meta: Any) -> tuple[int, str]:
    manifest = {
        "apiVersion": "moorage.dev/v1beta1",
        "kind": "AgentDeployment",
        "metadata": {"name": "candidate", **meta},
        "spec": spec,
    }
    result = cluster.kubectl_run(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-",
        input=json.dumps(manifest), check=False,
    )  # fmt: skip
    return result.returncode, result.stderr


def test_a_minimal_valid_object_is_accepted_with_defaults(installed: Cluster, namespace: str):
    result = installed.kubectl_run(
        "apply", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
        input=json.dumps({
            "apiVersion": "moorage.dev/v1beta1",
            "kind": "AgentDeployment",
            "metadata": {"name": "ok"},
            "spec": {"image": "registry.example.com:5000/team/agent:1.0"},
        }),
    )  # fmt: skip
    spec = json.loads(result.stdout)["spec"]
    assert spec["replicas"] == 1
    assert spec["autoscaling"] == {
        "enabled": False,
        "minReplicas": 2,
        "maxReplicas": 10,
        "metric": "cpu",
        "targetCPUUtilizationPercentage": 70,
        "targetTurnsInFlightPerPod": 20,
        # Fast up, slow and bounded down: a long turn outlives a short dip in load.
        "scaleUpStabilizationSeconds": 0,
        "scaleUpPods": 4,
        "scaleUpPercent": 100,
        "scaleUpPeriodSeconds": 15,
        "scaleDownStabilizationSeconds": 300,
        "scaleDownPods": 1,
        "scaleDownPeriodSeconds": 60,
    }
    assert spec["rollout"] == {
        "maxSurge": 1,
        "maxUnavailable": 0,
        "autoRollback": True,
        "progressDeadlineSeconds": 600,
    }
    assert spec["termination"] == {"drainDelaySeconds": 5, "shutdownTimeoutSeconds": 30}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"image": "a:1", "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
        ),
        ({"image": "a:1", "replicas": -1}, "should be greater than or equal to 0"),
        ({"replicas": 1}, "spec.image: Required value"),
        ({"image": "a:1", "imagee": "typo"}, 'unknown field "spec.imagee"'),
        ({"image": "Not A/Valid:Image!"}, "image must be a valid image reference"),
        (
            {"image": "a:1", "modelApiKeySecretRef": {"name": "llm"}},
            "modelApiKeySecretRef must name a key of the Secret",
        ),
        (
            {
                "image": "a:1",
                "session": {"url": "redis://r", "urlSecretRef": {"name": "s", "key": "u"}},
            },
            "session: set url or urlSecretRef, not both",
        ),
        ({"image": "a:1", "session": {"url": "http://r"}}, "session.url must start with redis://"),
        (
            {"image": "a:1", "model": {"name": "gpt"}},
            "model.name must be 'echo' or 'openai:<model>'",
        ),
        (
            {"image": "a:1", "rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
            "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
        ),
        (
            {"image": "a:1", "disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
            "disruptionBudget: set minAvailable or maxUnavailable, not both",
        ),
        (
            {"image": "a:1", "env": [{"name": "AGENT_PORT", "value": "1"}]},
            "env may not set AGENT_HOST, AGENT_PORT",
        ),
        (
            {
                "image": "a:1",
                "model": {"requestTimeoutSeconds": 60},
                "termination": {"shutdownTimeoutSeconds": 59},
            },
            "shutdownTimeoutSeconds must be at least model.requestTimeoutSeconds",
        ),
        ({"image": "a:1", "logLevel": "loud"}, 'Unsupported value: "loud"'),
        ({"image": "a:1", "model": {"baseUrl": "ftp://x"}}, "model.baseUrl must be an http"),
        # Bounds generated from the service's settings (make schemas): AGENT_MAX_STEPS <= 64.
        (
            {"image": "a:1", "model": {"maxSteps": 65}},
            "spec.model.maxSteps: Invalid value: 65: spec.model.maxSteps in body should be "
            "less than or equal to 64",
        ),
        (
            {"image": "a:1", "session": {"ttlSeconds": 7776001}},
            "should be less than or equal to 7776000",
        ),
        (
            {"image": "a:1", "model": {"timeoutSeconds": 31}},
            "model.timeoutSeconds must be less than or equal to model.requestTimeoutSeconds",
        ),
        (
            {"image": "a:1", "model": {"timeoutSeconds": 20, "requestTimeoutSeconds": 10}},
            "model.timeoutSeconds must be less than or equal to model.requestTimeoutSeconds",
        ),
        (
            {"image": "a:1", "model": {"name": "openai:gpt-4o-mini"}},
            "modelApiKeySecretRef is required when model.name is openai:<model>",
        ),
        (
            {"image": "a:1", "session": {"url": "redis://cache:6379x/0"}},
            "have a port from 1 to 65535 if any",
        ),
        (
            {"image": "a:1", "session": {"url": "redis://cache:99999/0"}},
            "have a port from 1 to 65535 if any",
        ),
        # Pod overrides (spec.pod) may not unsettle what the operator relies on.
        (
            {"image": "a:1", "pod": {"labels": {"app.kubernetes.io/instance": "other"}}},
            "labels may not set app.kubernetes.io/name, app.kubernetes.io/instance",
        ),
        (
            {"image": "a:1", "pod": {"annotations": {"moorage.dev/gate": "x"}}},
            "annotations may not use the moorage.dev/ prefix",
        ),
        (
            {"image": "a:1", "pod": {"volumes": [{"name": "tmp", "emptyDir": {}}]}},
            "session-tls and system-prompt are the pod contract's own volumes",
        ),
        (
            {
                "image": "a:1",
                "pod": {
                    "volumes": [{"name": "extra", "emptyDir": {}}],
                    "volumeMounts": [{"name": "extra", "mountPath": "/etc/moorage"}],
                },
            },
            "mountPath may not be /tmp, /etc/moorage/secrets, /etc/moorage/session-tls or "
            "/etc/moorage/agent, nor above or under them",
        ),
        (
            {"image": "a:1", "pod": {"volumeMounts": [{"name": "nope", "mountPath": "/data"}]}},
            "each name must be a volume of pod.volumes",
        ),
        (
            {
                "image": "a:1",
                "pod": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            },
            "operator Exists takes no value",
        ),
        (
            {"image": "a:1", "pod": {"serviceAccountName": "candidate"}},
            "serviceAccountName may not be the resource's own name",
        ),
    ],
)
def test_invalid_objects_are_rejected_with_the_rules_message(
    installed: Cluster, namespace: str, spec: dict[str, Any], message: str
):
    code, stderr = _dry_run(installed, namespace, spec)
    assert code != 0
    assert message in stderr, stderr


@pytest.mark.parametrize(
    "spec",
    [
        {
            "image": "a:1",
            "model": {"name": "openai:gpt-4o-mini", "timeoutSeconds": 30, "maxSteps": 64},
            "modelApiKeySecretRef": {"name": "llm", "key": "api-key"},
        },
        {
            "image": "a:1",
            "model": {"timeoutSeconds": 3600, "requestTimeoutSeconds": 3600},
            "termination": {"shutdownTimeoutSeconds": 3600},
        },
    ],
    ids=["openai-with-key-at-the-limits", "equal-timeouts-at-the-service-maximum"],
)
def test_what_the_service_accepts_the_crd_accepts(installed: Cluster, namespace: str, spec):
    code, stderr = _dry_run(installed, namespace, spec)
    assert code == 0, stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:e2e-Pw-51c@cache:6379/0",
        "rediss://cache:6380/0?password=e2e-Pw-51c",
        "redis://u:pa/e2e-Pw-51c@cache:6379/0",
    ],
    ids=["userinfo", "password-query", "unencoded-slash"],
)
def test_a_session_url_with_credentials_is_refused_without_echoing_them(
    installed: Cluster, namespace: str, url: str
):
    code, stderr = _dry_run(installed, namespace, {"image": "a:1", "session": {"url": url}})
    assert code != 0
    assert "session.url must" in stderr, stderr
    assert "e2e-Pw-51c" not in stderr


def test_scaling_below_zero_through_the_scale_subresource_is_rejected(
    installed: Cluster, namespace: str
):
    installed.kubectl_run(
        "apply", "-n", namespace, "-f", "-",
        input=json.dumps({
            "apiVersion": "moorage.dev/v1beta1",
            "kind": "AgentDeployment",
            "metadata": {"name": "scalable"},
            "spec": {"image": "a:1"},
        }),
    )  # fmt: skip
    result = installed.kubectl_run(
        "scale", "-n", namespace, "agentdeployment/scalable", "--replicas=-1", check=False
    )
    assert result.returncode != 0


def _can_i(cluster: Cluster, *args: str) -> bool:
    result = cluster.kubectl_run("auth", "can-i", AS_OPERATOR, *args, check=False)
    return result.stdout.strip() == "yes"


@pytest.mark.parametrize(
    "args",
    [
        ("watch", "agentdeployments.moorage.dev", "--all-namespaces"),
        ("patch", "agentdeployments.moorage.dev", "-n", "team-a"),
        ("patch", "agentdeployments.moorage.dev", "--subresource=status", "-n", "team-a"),
        ("update", "agentdeployments.moorage.dev", "--subresource=finalizers", "-n", "team-a"),
        ("create", "deployments.apps", "-n", "team-a"),
        ("patch", "deployments.apps", "-n", "team-a"),
        ("delete", "horizontalpodautoscalers.autoscaling", "-n", "team-a"),
        ("watch", "poddisruptionbudgets.policy", "--all-namespaces"),
        ("patch", "services", "-n", "team-a"),
        ("patch", "configmaps", "-n", "team-a"),
        ("patch", "serviceaccounts", "-n", "team-a"),
        ("delete", "serviceaccounts", "-n", "team-a"),
        ("create", "events", "-n", "team-a"),
        ("get", "secrets", "-n", "team-a"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ],
)
def test_the_operator_service_account_may_do_what_it_needs(installed: Cluster, args):
    assert _can_i(installed, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("list", "secrets", "--all-namespaces"),
        ("watch", "secrets", "--all-namespaces"),
        ("list", "secrets", "-n", "team-a"),
        ("create", "secrets", "-n", "team-a"),
        ("update", "agentdeployments.moorage.dev", "-n", "team-a"),
        ("delete", "agentdeployments.moorage.dev", "-n", "team-a"),
        ("create", "pods", "-n", "team-a"),
        ("delete", "pods", "-n", "team-a"),
        ("create", "pods/exec", "-n", "team-a"),
        # (not "serviceaccounts/token": can-i reads that as a ServiceAccount named token)
        ("create", "serviceaccounts", "--subresource=token", "-n", "team-a"),
        ("create", "rolebindings.rbac.authorization.k8s.io", "-n", "team-a"),
        ("patch", "nodes"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("*", "*"),
    ],
)
def test_the_operator_service_account_is_denied_what_it_does_not_need(installed: Cluster, args):
    assert not _can_i(installed, *args)


def test_the_operator_pod_passes_the_restricted_pod_security_standard(installed: Cluster):
    deployment = json.loads(
        installed.kubectl_run(
            "get", "-n", OPERATOR_NS, "deployment/moorage-operator", "-o", "json"
        ).stdout
    )
    template = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] in (0, 1)  # the e2e fixture scales the kwok copy to 0
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    port = next(p for p in container["ports"] if p["name"] == "liveness")
    assert env["AGENT_OPERATOR_LIVENESS"].endswith(f":{port['containerPort']}/healthz")
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "liveness",
        "scheme": "HTTP",
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pss-probe", "namespace": OPERATOR_NS},
        "spec": template["spec"],
    }
    # The namespace enforces `restricted`: admission refuses a non-compliant pod outright.
    result = installed.kubectl_run(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "violate" not in result.stderr
