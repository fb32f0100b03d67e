"""The CRD, the chart schema and the operator take their bounds from the service's settings.

`make schemas` (hack/schema/generate.py) writes them; these tests fail when a committed copy is
stale, when a bound differs from what the service accepts, or when the chart passes a bounded
setting to the service that the generator does not map.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator.spec import SESSION_URL_PATTERN
from agent_service.config import Settings, _check_session_url
from tests.chart.conftest import CHART, ROOT, load_schema_generator, run_helm

GENERATOR = ROOT / "hack" / "schema" / "generate.py"
CRD = ROOT / "manifests" / "crds" / "agentdeployments.yaml"


generate = load_schema_generator()


def _service_limits(setting: str) -> dict[str, Any]:
    """ge/gt/le/lt, max_length and choices (of the value, or of each item of a tuple) of a
    settings field, read independently of the generator."""
    info = Settings.model_fields[setting]
    limits = {
        key: getattr(item, key)
        for item in info.metadata
        for key in ("ge", "gt", "le", "lt", "max_length")
        if getattr(item, key, None) is not None
    }
    annotation = info.annotation
    if typing.get_origin(annotation) is tuple:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        limits["choices"] = [str(a) for a in typing.get_args(annotation)]
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        limits["choices"] = [str(m.value) for m in annotation]
    return limits


def _crd_properties() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]  # type: ignore[no-any-return]


def _at(properties: dict[str, Any], path: str) -> dict[str, Any]:
    """The property at a dotted path; `x[]` is the items of list x."""
    *parents, leaf = path.split(".")
    node = properties
    for part in parents:
        node = node[part]["properties"]
    prop = node[leaf.removesuffix("[]")]
    return prop["items"] if leaf.endswith("[]") else prop  # type: ignore[no-any-return]


def _accepted_range(prop: dict[str, Any]) -> tuple[float, float, bool]:
    """(low, high, low-is-exclusive) of a JSON-schema property."""
    if "exclusiveMinimum" in prop:
        return prop["exclusiveMinimum"], prop["maximum"], True
    return prop["minimum"], prop["maximum"], False


def _assert_same_bounds(prop: dict[str, Any], limits: dict[str, Any], where: str) -> None:
    if "choices" in limits:
        assert prop["enum"] == limits["choices"], where
        return
    if "max_length" in limits:
        assert prop["maxLength"] == limits["max_length"], where
        return
    low, high, exclusive = _accepted_range(prop)
    integer = "integer" in prop["type"]  # "integer", or ["integer", "null"] for an optional one
    if "ge" in limits:
        assert (low, exclusive) == (limits["ge"], False), where
    elif integer:  # gt on an integer property: the smallest integer above it
        assert (low, exclusive) == (math.floor(limits["gt"]) + 1, False), where
    else:
        assert (low, exclusive) == (limits["gt"], True), where
    assert high == limits["le"], where


def test_the_committed_files_equal_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for relative, _ in generate.RENDERERS:
        fresh = (tmp_path / relative).read_text()
        assert fresh == (ROOT / relative).read_text(), f"{relative} is stale: run `make schemas`"


@pytest.mark.parametrize(
    "mapping", [m for m in generate.MAPPINGS if m.crd], ids=lambda m: m.setting
)
def test_each_crd_bound_equals_the_services(mapping: Any) -> None:
    prop = _at(_crd_properties(), mapping.crd)
    _assert_same_bounds(prop, _service_limits(mapping.setting), f"CRD spec.{mapping.crd}")


@pytest.mark.parametrize(
    "mapping", [m for m in generate.MAPPINGS if m.chart], ids=lambda m: m.setting
)
def test_each_chart_bound_equals_the_services(mapping: Any) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    prop = _at(schema["properties"], mapping.chart)
    limits = _service_limits(mapping.setting)
    if mapping.chart_minimum is not None:
        # A deliberate, documented tightening: never below what the service accepts.
        minimum, why = mapping.chart_minimum
        assert why
        assert prop["minimum"] == minimum >= limits.get("ge", limits.get("gt", -math.inf))
        limits = {**limits, "ge": minimum}
        limits.pop("gt", None)
    _assert_same_bounds(prop, limits, f"values {mapping.chart}")


def _chart_env_values() -> dict[str, str]:
    """AGENT_* variable -> values path, for each `AGENT_X: {{ .Values.path ...` of the chart."""
    template = (CHART / "templates" / "configmap.yaml").read_text()
    found = re.findall(r"^\s*(AGENT_[A-Z_]+): \{\{ \.Values\.([A-Za-z.]+)", template, re.M)
    return dict(found)


def test_every_bounded_setting_the_chart_passes_is_generated() -> None:
    mapped = {(m.setting, m.chart.removesuffix("[]")) for m in generate.MAPPINGS if m.chart}
    passed = _chart_env_values()
    assert "AGENT_MAX_STEPS" in passed  # the scan sees the template's shape
    missing = [
        f"{variable} <- values.{path}"
        for variable, path in passed.items()
        for setting in [variable.removeprefix("AGENT_").lower()]
        if _service_limits(setting) and (setting, path) not in mapped
    ]
    assert not missing, f"add to hack/schema/generate.py MAPPINGS: {missing}"


def test_integer_and_number_properties_get_the_right_keywords() -> None:
    c = generate.Constraint(gt=0, le=3600)
    assert generate.schema_keys(c, "integer") == {"minimum": 1, "maximum": 3600}
    assert generate.schema_keys(c, "number") == {"exclusiveMinimum": 0, "maximum": 3600}
    assert generate.schema_keys(generate.Constraint(ge=2, lt=10.5), "integer") == {
        "minimum": 2,
        "maximum": 10,
    }


def test_the_crd_is_rewritten_in_place_keeping_comments_and_layout() -> None:
    text = CRD.read_text()
    stale = text.replace(
        "maxSteps: {type: integer, minimum: 1, maximum: 64,",
        "maxSteps: {type: integer, maximum: 100,",
    )
    assert stale != text
    assert generate.render_crd(stale) == text


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "redis://cache",
        "redis://cache:6379/0",
        "rediss://default:pw@cache.example:6380/1?ssl_cert_reqs=none",
        "redis://:p@ss@cache:1/0",
        "redis://:pa%2Fss@[::1]:65535/0",
        "redis://cache:/0",
        "redis://cache:6379x/0",
        "redis://cache:99999/0",
        "redis://cache:65536",
        "redis://cache:0/0",
        "redis://u:pa/ss@cache:6379/0",
        "redis://u:pa#ss@cache:6379/0",
        "redis://u:pa?ss@cache:6379/0",
        "redis://",
        "redis:///0",
        "http://cache:6379",
        # DESIGN.md's sentinel and cluster forms: when the service learns them, so must the CRD.
        "redis+sentinel://:pw@s1:26379,s2:26379/primary/0",
        "rediss+cluster://h1:7000,h2:7001",
        "rediss+sentinel://[::1]:26379,s2/primary?sentinel_password=pw",
        "redis+sentinel://s1:26379,s2:26379",
        "redis+sentinel://s1:26379/primary/x",
        "redis+cluster://h1:7000,h2:7001/1",
        "redis+cluster://h1:7000,h2:99999",
    ],
)
def test_the_crd_session_url_pattern_accepts_what_the_service_accepts(url: str) -> None:
    try:
        _check_session_url(url)
        service_accepts = True
    except ValueError:
        service_accepts = False
    assert bool(re.match(SESSION_URL_PATTERN, url)) == service_accepts


# --- the chart, rendered: the service's limits are the chart's limits -------------------------


def _bad_value(mapping: Any) -> tuple[str, float] | None:
    limits = _service_limits(mapping.setting)
    return (mapping.chart, limits["le"] + 1) if "le" in limits else None


@pytest.mark.parametrize(
    "mapping", [m for m in generate.MAPPINGS if m.chart and _bad_value(m)], ids=lambda m: m.setting
)
def test_helm_refuses_one_above_the_services_maximum_and_takes_the_maximum(
    helm: Path, mapping: Any
) -> None:
    path, too_big = _bad_value(mapping)  # type: ignore[misc]
    limit = _service_limits(mapping.setting)["le"]
    # Other rules stay satisfied: the model call within the turn, the turn within the shutdown
    # timeout, a shared store for workers.
    extra = ["--set", "session.url=redis://cache:6379/0"]
    if path == "model.timeoutSeconds":
        extra += ["--set", f"server.requestTimeoutSeconds={limit}"]
    if path in ("model.timeoutSeconds", "server.requestTimeoutSeconds"):
        extra += ["--set", f"termination.shutdownTimeoutSeconds={limit}"]
    ok = run_helm(helm, "template", "agent", str(CHART), "--set", f"{path}={limit}", *extra)
    assert ok.returncode == 0
    refused = run_helm(
        helm, "template", "agent", str(CHART), "--set", f"{path}={too_big}", *extra, check=False
    )
    assert refused.returncode != 0
    assert f"at '/{path.replace('.', '/')}'" in refused.stderr, refused.stderr


def test_helm_refuses_a_system_prompt_one_character_over_the_services_maximum(
    helm: Path, tmp_path: Path
) -> None:
    limit = _service_limits("system_prompt")["max_length"]
    values = tmp_path / "prompt-values.yaml"
    values.write_text(yaml.safe_dump({"agent": {"systemPrompt": "x" * limit}}))
    assert run_helm(helm, "template", "agent", str(CHART), "-f", str(values)).returncode == 0
    values.write_text(yaml.safe_dump({"agent": {"systemPrompt": "x" * (limit + 1)}}))
    refused = run_helm(helm, "template", "agent", str(CHART), "-f", str(values), check=False)
    assert refused.returncode != 0
    assert "at '/agent/systemPrompt'" in refused.stderr


@pytest.mark.parametrize(
    "tools", [["clock", "shell"], ["clock", "clock"]], ids=["unknown", "twice"]
)
def test_helm_refuses_a_tool_the_service_does_not_know_or_named_twice(
    helm: Path, tmp_path: Path, tools: list[str]
) -> None:
    values = tmp_path / "tools-values.yaml"
    values.write_text(yaml.safe_dump({"agent": {"tools": tools}}))
    refused = run_helm(helm, "template", "agent", str(CHART), "-f", str(values), check=False)
    assert refused.returncode != 0
    assert "at '/agent/tools" in refused.stderr
