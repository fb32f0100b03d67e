"""The rendered chart: valid for every supported Kubernetes version, hardened, draining, scaling."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    SCENARIOS,
    Render,
    agent_container,
    find,
    kubernetes_validate,
    pinned_tool,
    run_helm,
)
from tests.conftest import require

KUBERNETES_VERSIONS = [f"1.{minor}.0" for minor in range(30, 38)]
# Kinds of CRDs that kubernetes-validate has no schema for.
CRD_KINDS = {"ServiceMonitor"}


def test_every_ci_scenario_is_present() -> None:
    names = {p.name for p in SCENARIOS}
    assert {
        "minimal-values.yaml",
        "production-values.yaml",
        "existing-secret-values.yaml",
        "in-chart-redis-values.yaml",
    } <= names


@pytest.mark.parametrize("major", ["helm4", "helm3"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_helm_lint_strict_passes(helm: Path, scenario: Path, major: str) -> None:
    binary = helm if major == "helm4" else pinned_tool("helm3", "helm")
    require(binary.is_file(), f"{binary} (make tool-{major})")
    result = run_helm(binary, "lint", "--strict", str(CHART), "-f", str(scenario), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_scenario_validates_strictly_against_kubernetes(
    render: Render, tmp_path: Path, version: str
) -> None:
    files = []
    for scenario in SCENARIOS:
        docs = [d for d in render(scenario) if d["kind"] not in CRD_KINDS]
        path = tmp_path / f"{scenario.stem}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        files.append(str(path))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            version,
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout


def test_helm_test_hook_is_rendered_and_validates(render: Render, tmp_path: Path) -> None:
    hook = find(render(), "Job", "agent-test-readyz")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    result = kubernetes_validate(hook, tmp_path)
    assert result.returncode == 0, result.stdout


def test_selector_labels_are_exactly_name_and_instance(render: Render) -> None:
    deployment = find(render(), "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "agent",
        "app.kubernetes.io/instance": "agent",
    }
    service = find(render(), "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_dev_redis_pods_are_not_selected_by_the_agent_service(render: Render) -> None:
    docs = render(CHART / "ci" / "in-chart-redis-values.yaml")
    selector = find(docs, "Service", "agent")["spec"]["selector"]
    redis_labels = find(docs, "Deployment", "agent-redis")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= redis_labels.items()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_pods_meet_the_restricted_pod_security_standard(render: Render, scenario: Path) -> None:
    docs = render(scenario)
    templates = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    templates += [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Job"]
    assert templates
    for pod in templates:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int)
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "resources" in container


def test_read_only_root_gets_a_writable_tmp(render: Render) -> None:
    docs = render()
    container = agent_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {
        v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_grace_period_covers_prestop_drain_and_shutdown_timeout_with_margin(
    render: Render,
) -> None:
    docs = render(
        termination={"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 20, "marginSeconds": 4},
        server__requestTimeoutSeconds=20,
    )
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container = agent_container(docs)
    config = find(docs, "ConfigMap", "agent")["data"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 7
    assert config["AGENT_SHUTDOWN_TIMEOUT_S"] == "20"
    # The preStop sleep is the drain; the service must not wait a second time after SIGTERM.
    assert config["AGENT_DRAIN_DELAY_S"] == "0"
    assert pod["terminationGracePeriodSeconds"] == 7 + 20 + 4


def test_rollout_keeps_full_capacity_and_history(render: Render) -> None:
    spec = find(render(), "Deployment")["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["revisionHistoryLimit"] >= 2


def test_probes_split_liveness_and_readiness(render: Render) -> None:
    container = agent_container(render())
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_deployment_leaves_replicas_to_the_hpa_when_autoscaling(render: Render) -> None:
    docs = render(CHART / "ci" / "production-values.yaml")
    assert "replicas" not in find(docs, "Deployment")["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == find(docs, "Deployment")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert find(render(), "Deployment")["spec"]["replicas"] == 1


def test_pdb_uses_max_unavailable_so_it_fits_any_hpa_replica_count(render: Render) -> None:
    pdb = find(render(CHART / "ci" / "production-values.yaml"), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_a_config_change_changes_the_pod_template_checksum(render: Render) -> None:
    def checksums(**sets: Any) -> dict[str, str]:
        annotations = find(render(**sets), "Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums()
    assert set(base) == {"checksum/config", "checksum/secret"}
    assert checksums(model__maxSteps=3)["checksum/config"] != base["checksum/config"]
    assert (
        checksums(model__apiKey="k2")["checksum/secret"]
        != checksums(model__apiKey="k1")["checksum/secret"]
    )


def test_secrets_reach_the_process_as_files_never_as_env_values(render: Render) -> None:
    docs = render(CHART / "ci" / "production-values.yaml")
    secret = find(docs, "Secret")
    values = {base64.b64decode(v).decode() for v in secret["data"].values()}
    assert "sk-ci-not-a-real-key" in values
    container = agent_container(docs)
    env = {e["name"]: e for e in container["env"]}
    assert set(env) == {"AGENT_SESSION_URL_FILE", "AGENT_MODEL_API_KEY_FILE"}
    config = find(docs, "ConfigMap", "agent")["data"]
    rendered_plain = yaml.safe_dump([container, config])
    for value in values:
        assert value not in rendered_plain
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")
    for var in env.values():
        assert var["value"].startswith(mount["mountPath"] + "/")


def test_existing_secret_replaces_the_charts_secret(render: Render) -> None:
    docs = render(CHART / "ci" / "existing-secret-values.yaml")
    assert not [d for d in docs if d["kind"] == "Secret"]
    volume = next(
        v
        for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "secrets"
    )
    assert volume["secret"]["secretName"] == "agent-credentials"
    assert {i["key"] for i in volume["secret"]["items"]} == {"redis-url", "openai-api-key"}


def test_service_account_mounts_no_token(render: Render) -> None:
    assert find(render(), "ServiceAccount")["automountServiceAccountToken"] is False


def test_network_policy_admits_only_the_http_port(render: Render) -> None:
    policy = find(render(CHART / "ci" / "production-values.yaml"), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_service_monitor_scrapes_metrics_when_enabled(render: Render) -> None:
    monitor = find(render(serviceMonitor={"enabled": True}), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
    }
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]


def test_topology_spread_covers_zones_and_nodes(render: Render) -> None:
    constraints = find(render(), "Deployment")["spec"]["template"]["spec"][
        "topologySpreadConstraints"
    ]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_image_digest_wins_over_tag(render: Render) -> None:
    digest = "sha256:" + "a" * 64
    image = agent_container(render(image={"repository": "r/agent", "tag": "1.2", "digest": digest}))
    assert image["image"] == f"r/agent@{digest}"
    assert agent_container(render(image={"repository": "r/agent", "tag": "1.2"}))["image"] == (
        "r/agent:1.2"
    )


def test_every_values_key_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")
    inside_resources: int | None = None
    missing = []
    for number, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        if inside_resources is not None and indent > inside_resources:
            continue  # Kubernetes' own resources shape (requests/limits) is not ours to document.
        inside_resources = indent if match.group(2) == "resources" else None
        if not lines[number - 1].lstrip().startswith("#"):
            missing.append(f"{number + 1}: {line.strip()}")
    assert not missing, "values without a comment line above them:\n" + "\n".join(missing)
