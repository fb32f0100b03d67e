"""One pod contract (charts/agent/files/pod-contract.yaml), read by the chart and the operator.

The chart's templates read it with `.Files.Get`; the operator ships a byte-equal copy as package
data; values.yaml and the CRD carry its defaults. `make schemas` writes the copies (their
staleness is tests/chart/test_schemas.py's); these tests show each reader really reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator import contract as operator_contract
from agent_operator.builders import Owner, build_deployment
from agent_operator.spec import parse_spec
from tests.chart.conftest import (
    CHART,
    ROOT,
    agent_container,
    find,
    load_schema_generator,
    run_helm,
)

CONTRACT_FILE = CHART / "files" / "pod-contract.yaml"
CRD = ROOT / "manifests" / "crds" / "agentdeployments.yaml"


generate = load_schema_generator()


def _contract() -> dict[str, Any]:
    return yaml.safe_load(CONTRACT_FILE.read_text())  # type: ignore[no-any-return]


def _chart_copy(tmp_path: Path, contract: str) -> Path:
    chart = tmp_path / "agent"
    shutil.copytree(CHART, chart)
    (chart / "files" / "pod-contract.yaml").write_text(contract)
    return chart


def _render(helm: Path, chart: Path, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "agent", str(chart), "--namespace", "moorage"]
    for item in sets:
        args += ["--set", item]
    out = run_helm(helm, *args)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_the_operator_reads_the_same_bytes_as_the_chart() -> None:
    packaged = Path(operator_contract.__file__).with_name("pod-contract.yaml")
    assert packaged.read_bytes() == CONTRACT_FILE.read_bytes(), "stale copy: run `make schemas`"
    assert _contract() == operator_contract.CONTRACT


def test_the_chart_builds_the_pod_from_the_contract_file(helm: Path, tmp_path: Path) -> None:
    changed = _contract()
    changed["probes"]["readiness"]["path"] = "/ready-elsewhere"
    changed["container"]["port"]["name"] = "web"
    changed["secrets"]["dir"] = "/run/agent-secrets"
    changed["secrets"]["files"]["sessionUrl"]["env"] = "AGENT_SESSION_URL_PATH"
    changed["containerSecurityContext"]["readOnlyRootFilesystem"] = False
    changed["tmp"]["sizeLimit"] = "32Mi"
    chart = _chart_copy(tmp_path, yaml.safe_dump(changed))
    docs = _render(helm, chart, "session.url=redis://cache:6379/0")
    container = agent_container(docs)
    pod = find(docs, "Deployment", "agent")["spec"]["template"]["spec"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready-elsewhere", "port": "web"}
    assert container["ports"][0]["name"] == "web"
    assert {"name": "AGENT_SESSION_URL_PATH", "value": "/run/agent-secrets/session-url"} in (
        container["env"]
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    assert pod["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "32Mi"}}


def test_the_operator_builds_the_pod_from_the_contract() -> None:
    c = _contract()
    spec = parse_spec({"image": "agent:1", "session": {"urlSecretRef": {"name": "s", "key": "u"}}})
    pod = build_deployment(Owner("demo", "ns", "u-1"), spec)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for name in ("startup", "liveness", "readiness"):
        probe = dict(c["probes"][name])
        path = probe.pop("path")
        assert container[f"{name}Probe"] == {
            "httpGet": {"path": path, "port": c["container"]["port"]["name"]},
            **probe,
        }
    assert container["securityContext"] == c["containerSecurityContext"]
    assert pod["securityContext"]["runAsUser"] == c["runAsUser"]
    term = c["termination"]
    grace = term["drainDelaySeconds"] + term["shutdownTimeoutSeconds"] + term["graceMarginSeconds"]
    assert pod["terminationGracePeriodSeconds"] == grace
    secrets = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert secrets["secret"]["defaultMode"] == c["secrets"]["defaultMode"] == 0o440
    assert spec.resources == c["resources"]


def test_the_secret_files_mode_renders_as_the_octal_kubernetes_documents(helm: Path) -> None:
    out = run_helm(
        helm, "template", "agent", str(CHART), "--set", "session.url=redis://cache:6379/0"
    )
    assert "defaultMode: 0440" in out.stdout


def test_an_unreadable_contract_stops_the_render_naming_the_file(
    helm: Path, tmp_path: Path
) -> None:
    chart = _chart_copy(tmp_path, "probes: [unclosed\n")
    out = run_helm(helm, "template", "agent", str(chart), check=False)
    assert out.returncode != 0
    assert "files/pod-contract.yaml is not valid YAML" in out.stderr


def test_values_and_crd_defaults_are_the_contracts() -> None:
    c = _contract()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, probe in c["probes"].items():
        assert values["probes"][name] == {k: v for k, v in probe.items() if k != "path"}
    assert values["termination"]["marginSeconds"] == c["termination"]["graceMarginSeconds"]
    assert values["runAsUser"] == c["runAsUser"]
    assert values["resources"] == c["resources"]
    assert values["server"]["port"] == c["container"]["port"]["number"]
    assert values["server"]["maxBodyBytes"] == c["http"]["maxBodyBytes"]
    assert {k: values["autoscaling"][k] for k in c["autoscaling"]} == c["autoscaling"]
    spec = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    props = spec["properties"]["spec"]["properties"]
    auto = props["autoscaling"]["properties"]
    assert {k: auto[k]["default"] for k in c["autoscaling"]} == c["autoscaling"]
    assert props["resources"]["default"] == c["resources"]
    drain = props["termination"]["properties"]["drainDelaySeconds"]["default"]
    assert drain == c["termination"]["drainDelaySeconds"]


def test_the_generator_edits_values_in_place_and_refuses_a_changed_shape() -> None:
    text = "# why\nresources:\n  requests:\n    cpu: 100m  # kept\n    memory: 1Gi\n"
    root = yaml.compose(text)
    wanted = {"resources": generate.Exactly({"requests": {"cpu": "150m", "memory": "1Gi"}})}
    edited = generate._apply(text, generate._value_edits(root, wanted, "values"))
    assert edited == text.replace("100m", "150m")
    grown = {"resources": generate.Exactly({"requests": {"cpu": "1", "memory": "1Gi"}, "x": {}})}
    with pytest.raises(SystemExit, match=r"missing \['x'\]"):
        generate._value_edits(root, grown, "values")
