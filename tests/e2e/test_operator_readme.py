"""The README's operator section, run verbatim against the local cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Cluster, wait_until
from tests.e2e.test_operator_reconcile import uv_binary

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("<!-- section: operator -->")[1].split("<!-- /section: operator -->")[0]
BLOCKS = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.DOTALL)
INLINE = re.findall(r"`(kubectl [^`]+)`", SECTION)


def _env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("AGENT_")}
    env["PATH"] = f"{Path(uv_binary()).parent}{os.pathsep}{env['PATH']}"
    return env


def _bash(cluster: Cluster, script: str) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=_env(cluster),
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def readme_operator(cluster: Cluster, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The README's `uv run` block, running in the background (loopback liveness port)."""
    (run_block,) = [b for b in BLOCKS if "agent-operator" in b]
    env = _env(cluster)
    env["AGENT_OPERATOR_LIVENESS"] = f"http://127.0.0.1:{free_port()}/healthz"
    with (tmp_path / "operator.log").open("w") as log:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {run_block.strip()}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        cluster.kubectl_run(
            "delete", "agentdeployment", "agent-sample", "-n", "default", "--wait=true", check=False
        )


def test_the_operator_sections_commands_install_and_scale_the_sample(
    cluster: Cluster, readme_operator: subprocess.Popen[bytes]
) -> None:
    (install_block,) = [b for b in BLOCKS if "kubectl apply -k" in b]
    out = _bash(cluster, install_block)
    # "with the in-cluster operator scaled to 0": on the real node it runs, and two instances of
    # the same priority both pause (kopf peering).
    cluster.kubectl_run(
        "scale", "deployment/moorage-operator", "-n", "moorage-system", "--replicas=0"
    )
    # The `kubectl get agentdep` table.
    assert out.count("agent-sample") >= 1
    assert "IMAGE" in out

    def ready_with_three() -> bool:
        raw = cluster.kubectl_run("get", "agentdep", "agent-sample", "-o", "json").stdout
        status = json.loads(raw).get("status", {})
        return status.get("state") == "Ready" and status.get("readyReplicas") == 3

    wait_until(ready_with_three, "agent-sample Ready with 3 replicas", timeout=120)
    assert readme_operator.poll() is None
    (describe,) = [c for c in INLINE if c.startswith("kubectl describe")]
    described = _bash(cluster, describe)
    assert "Events:" in described
    assert "Ready" in described
