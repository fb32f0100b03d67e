"""The README's helm section, run verbatim (namespace aside) against the control plane."""

from __future__ import annotations

import re
import shlex
import subprocess
import uuid
from pathlib import Path

from tests.e2e.conftest import KWOK_PLACEMENT, Cluster

ROOT = Path(__file__).resolve().parents[2]


def readme_commands(section: str) -> list[str]:
    """The shell commands of a README section's ```sh blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"<!-- section: {section} -->")[1].split(f"<!-- /section: {section} -->")[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.DOTALL):
        joined = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()]
    return commands


def test_readme_helm_section_runs_as_written(cluster: Cluster, tmp_path: Path) -> None:
    commands = readme_commands("helm")
    assert any(c.startswith("helm install") for c in commands)
    assert any("rollout undo" in c for c in commands)
    namespace = f"readme-{uuid.uuid4().hex[:6]}"
    env = dict(cluster.env)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp_path / var.lower())
    try:
        for command in commands:
            argv = [namespace if word == "agents" else word for word in shlex.split(command)]
            if argv[:2] == ["helm", "install"]:
                # The README's image and Redis are the user's (a registry, a Redis Service), so
                # its pods go to the kwok nodes; test_real_node.py runs the chart for real.
                cluster.kubectl_run(
                    "annotate", "namespace", namespace,
                    *(f"{key}={value}" for key, value in KWOK_PLACEMENT.items()),
                )  # fmt: skip
                # The namespace's default ServiceAccount must exist before pods are admitted.
                subprocess.run(
                    ["kubectl", "wait", "--for=create", "serviceaccount/default", "-n",
                     namespace, "--timeout=60s"],
                    env=env, check=True, capture_output=True, timeout=90,
                )  # fmt: skip
            result = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if argv[:2] == ["helm", "history"]:
                assert "Rollback to 1" in result.stdout
        deployment = cluster.kubectl_run("get", "deployment", "agent", "-n", namespace)
        assert deployment.returncode == 0  # from `kubectl apply -k manifests/agent`
    finally:
        cluster.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)
