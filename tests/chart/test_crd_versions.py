"""The CRD serves v1beta1 (stored) and the previous release's v1alpha1 with one schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from agent_operator.spec import GROUP, RESERVED_ENV, VERSION

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "agentdeployments.yaml"


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    return crd


def test_v1beta1_is_the_one_stored_version_and_the_operators() -> None:
    versions = {v["name"]: v for v in _crd()["spec"]["versions"]}
    assert sorted(versions) == ["v1alpha1", "v1beta1"]
    assert [name for name, v in versions.items() if v["storage"]] == ["v1beta1"]
    assert all(v["served"] for v in versions.values())
    assert VERSION == "v1beta1"
    assert _crd()["spec"]["group"] == GROUP


def test_v1alpha1_is_served_deprecated_with_a_warning_naming_v1beta1() -> None:
    old = next(v for v in _crd()["spec"]["versions"] if v["name"] == "v1alpha1")
    assert old["deprecated"] is True
    assert "moorage.dev/v1beta1" in old["deprecationWarning"]


def test_both_versions_share_schema_subresources_and_columns_so_none_conversion_is_lossless() -> (
    None
):
    # conversion: None rewrites apiVersion alone; it round-trips every field only while the
    # schemas are identical (a field missing from one would be pruned on a write through it).
    crd = _crd()
    assert crd["spec"]["conversion"] == {"strategy": "None"}
    new, old = (
        next(v for v in crd["spec"]["versions"] if v["name"] == name)
        for name in ("v1beta1", "v1alpha1")
    )
    for key in ("schema", "subresources", "additionalPrinterColumns"):
        assert old[key] == new[key], key


def test_the_crd_refuses_in_env_exactly_the_variables_the_operator_reserves() -> None:
    """`kubectl apply` refuses what the operator would refuse later as an Invalid condition."""
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    (rule,) = [v["rule"] for v in schema["x-kubernetes-validations"] if "self.env.all" in v["rule"]]
    assert sorted(re.findall(r"'(AGENT_[A-Z_]+)'", rule)) == sorted(RESERVED_ENV)
