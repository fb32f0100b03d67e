"""manifests/agent is the chart's default render, kept equal to it, and builds with kustomize."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import yaml

from tests.chart.conftest import ROOT, Render, kustomize

MANIFESTS = ROOT / "manifests" / "agent"


def test_committed_manifests_equal_a_fresh_render(helm: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "agent"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "manifests", f"MANIFESTS_DIR={fresh}"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    compared = filecmp.dircmp(MANIFESTS, fresh)
    assert not compared.left_only, f"stale files: {compared.left_only} (run `make manifests`)"
    assert not compared.right_only, f"missing files: {compared.right_only} (run `make manifests`)"
    _, mismatch, errors = filecmp.cmpfiles(MANIFESTS, fresh, compared.common_files, shallow=False)
    assert not mismatch, f"out of date: {mismatch} (run `make manifests`)"
    assert not errors


def test_manifests_hold_what_the_chart_renders_by_default(render: Render) -> None:
    chart = {(d["kind"], d["metadata"]["name"]) for d in render() if d["kind"] != "Job"}
    plain = {
        (d["kind"], d["metadata"]["name"])
        for f in MANIFESTS.glob("*.yaml")
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    }
    assert plain == chart
    assert ("Deployment", "agent") in plain


def test_kustomize_builds_the_manifests_into_any_namespace(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(MANIFESTS, overlay)}]\nnamespace: agents\n"
    )
    docs = kustomize(overlay)
    assert len(docs) == len(list(MANIFESTS.glob("*.yaml"))) - 1
    assert {d["metadata"]["namespace"] for d in docs} == {"agents"}
