"""skaffold.yaml: valid against skaffold's own schema, and understood by the pinned skaffold."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.chart.conftest import ROOT, find, pinned_tool
from tests.conftest import require

SKAFFOLD_YAML = ROOT / "skaffold.yaml"
SERVICE = "localhost/moorage/agent-service"
OPERATOR = "localhost/moorage/agent-operator"


def skaffold_version() -> str:
    """The skaffold version hack/tools/skaffold pins."""
    return pinned_tool("skaffold", "skaffold").parent.name.removeprefix("skaffold-")


@pytest.fixture(scope="session")
def skaffold() -> Path:
    """The pinned skaffold binary (`make tool-skaffold`)."""
    path = pinned_tool("skaffold", "skaffold")
    require(path.is_file(), f"skaffold at {path} (make tool-skaffold)")
    return path


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    """The JSON schemas shipped in the pinned skaffold module's source (Go module cache)."""
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False
    ).stdout.strip()
    path = (
        Path(modcache or Path.home() / "go" / "pkg" / "mod")
        / "github.com"
        / "!google!container!tools"
        / f"skaffold/v2@{skaffold_version()}"
        / "docs-v2/content/en/schemas"
    )
    require(path.is_dir(), f"skaffold module source at {path} (make tool-skaffold)")
    return path


def skaffold_env() -> dict[str, str]:
    """Keep skaffold's global config, update checks and metrics out of the user's home."""
    env = dict(os.environ)
    env["SKAFFOLD_UPDATE_CHECK"] = "false"
    env["SKAFFOLD_INTERACTIVE"] = "false"
    env["SKAFFOLD_COLLECT_METRICS"] = "false"
    # skaffold v2.16 asks `helm version --client`, which only helm v3 answers.
    helm = pinned_tool("helm3", "helm")
    require(helm.is_file(), f"helm v3 at {helm} (make tool-helm3)")
    env["PATH"] = f"{helm.parent}{os.pathsep}{env['PATH']}"
    return env


def test_skaffold_yaml_uses_the_newest_schema_the_pinned_skaffold_ships(
    schemas_dir: Path,
) -> None:
    def key(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in p.stem.removeprefix("v").replace("beta", ".").split("."))

    newest = max(schemas_dir.glob("v4beta*.json"), key=key).stem
    config = yaml.safe_load(SKAFFOLD_YAML.read_text())
    assert config["apiVersion"] == f"skaffold/{newest}"


def test_skaffold_yaml_validates_against_skaffolds_json_schema(schemas_dir: Path) -> None:
    config = yaml.safe_load(SKAFFOLD_YAML.read_text())
    version = config["apiVersion"].split("/")[1]
    schema = json.loads((schemas_dir / f"{version}.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors(config))
    # The schema is closed: a misspelt key fails it.
    config["deploy"]["helm"]["releases"][0]["chartPth"] = "charts/agent"
    assert list(validator.iter_errors(config))


def test_skaffold_yaml_builds_both_dockerfile_targets() -> None:
    artifacts = yaml.safe_load(SKAFFOLD_YAML.read_text())["build"]["artifacts"]
    assert {(a["image"], a["docker"]["target"]) for a in artifacts} == {
        (SERVICE, "service"),
        (OPERATOR, "operator"),
    }


def test_skaffold_diagnose_reads_the_config(skaffold: Path) -> None:
    result = subprocess.run(
        [str(skaffold), "diagnose", "--filename", str(SKAFFOLD_YAML), "--yaml-only"],
        cwd=ROOT,
        env=skaffold_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["deploy"]["helm"]["releases"][0]["chartPath"] == str(ROOT / "charts/agent")


@pytest.mark.parametrize("profile", [None, "kind"])
def test_skaffold_render_passes_the_built_image_into_the_chart(
    skaffold: Path, profile: str | None
) -> None:
    tag = "0123abcd"
    args = [
        str(skaffold), "render", "--offline=true", "--digest-source=tag",
        "--filename", str(SKAFFOLD_YAML),
        "--images", f"{SERVICE}:{tag},{OPERATOR}:{tag}",
    ]  # fmt: skip
    if profile:
        args += ["--profile", profile]
    result = subprocess.run(
        args, cwd=ROOT, env=skaffold_env(), capture_output=True, text=True, check=False,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    agent = find(docs, "Deployment", "agent")
    images = [c["image"] for c in agent["spec"]["template"]["spec"]["containers"]]
    assert images == [f"{SERVICE}:{tag}"]
    operator = [
        c["image"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "agent"
        for c in d["spec"]["template"]["spec"]["containers"]
        if "operator" in c["image"]
    ]
    assert operator == [f"{OPERATOR}:{tag}"]
    if profile == "kind":
        assert agent["spec"]["replicas"] == 2
        assert find(docs, "Deployment", "agent-redis")


def readme_skaffold_commands() -> list[list[str]]:
    """The commands of the README's skaffold section, as argv lists."""
    text = (ROOT / "README.md").read_text()
    body = text.split("<!-- section: skaffold -->")[1].split("<!-- /section: skaffold -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.DOTALL)
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines() if line.strip()]
    return [shlex.split(line) for line in lines]


def test_readme_skaffold_commands_run_or_at_least_parse(skaffold: Path) -> None:
    kind = pinned_tool("kind", "kind")
    require(kind.is_file(), f"kind at {kind} (make tool-kind)")
    binaries = {"skaffold": str(skaffold), "kind": str(kind)}
    commands = readme_skaffold_commands()
    assert [c[:2] for c in commands] == [
        ["kind", "create"],
        ["skaffold", "dev"],
        ["skaffold", "diagnose"],
        ["skaffold", "render"],
    ]
    for argv in commands:
        full = [binaries[argv[0]], *argv[1:]]
        # No container runtime here: `kind create` and `skaffold dev` get their flags checked
        # (cobra rejects unknown ones even with --help); the rest run for real.
        if argv[:2] in (["kind", "create"], ["skaffold", "dev"]):
            full.append("--help")
        result = subprocess.run(
            full, cwd=ROOT, env=skaffold_env(), capture_output=True, text=True, check=False,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stderr}"
