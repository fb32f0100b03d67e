"""chart tier: the chart rendered by the pinned helm, checked statically and against the service."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "agent"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
CACHE_DIR = Path(os.environ.get("CACHE_DIR", Path.home() / ".cache" / "moorage"))

Render = Callable[..., list[dict[str, Any]]]


def pinned_tool(tool: str, binary: str) -> Path:
    """Path of a Go tool built by `make tool-<tool>` (hack/tools/<tool>/build.env pins it)."""
    env = (ROOT / "hack" / "tools" / tool / "build.env").read_text()
    version = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in env.splitlines()
        if line.startswith("VERSION=")
    )
    return CACHE_DIR / "bin" / f"{tool}-{version}" / binary


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory (files outside it allowed), parsed."""
    kubectl = pinned_tool("kubernetes", "kubectl")
    require(kubectl.is_file(), f"kubectl at {kubectl} (make tool-kubernetes)")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(directory), "--load-restrictor", "LoadRestrictionsNone"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm v4 binary (`make tool-helm4`), never whatever is on PATH."""
    path = pinned_tool("helm4", "helm")
    require(path.is_file(), f"helm at {path} (make tool-helm4)")
    return path


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with the chart tier's isolated config dirs, output as text."""
    env = dict(os.environ)
    # Keep helm away from the user's repositories and plugins.
    for var, sub in (("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache")):
        env[var] = str(CACHE_DIR / "helm-chart-tier" / sub)
    env["HELM_DATA_HOME"] = str(CACHE_DIR / "helm-chart-tier" / "data")
    return subprocess.run(
        [str(helm), *args], env=env, text=True, capture_output=True, check=check, timeout=120
    )


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """Render the chart (`helm template`) with values files and --set pairs; parsed documents."""

    def _render(*values: Path, release: str = "agent", **sets: Any) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", "moorage"]
        for path in values:
            args += ["-f", str(path)]
        for key, value in sets.items():
            args += ["--set-json", f"{key.replace('__', '.')}={json.dumps(value)}"]
        out = run_helm(helm, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of a kind (and name, if given)."""
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {len(hits)}"
    return hits[0]


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent container of the rendered Deployment."""
    deployment = find(docs, "Deployment", "agent")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "agent")


def kubernetes_validate(obj: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict of one object (written to a file under tmp_path)."""
    path = tmp_path / f"{obj['kind'].lower()}.yaml"
    path.write_text(yaml.safe_dump(obj))
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def load_schema_generator() -> ModuleType:
    """hack/schema/generate.py (`make schemas`) as a module."""
    spec = importlib.util.spec_from_file_location(
        "schema_generate", ROOT / "hack" / "schema" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module
