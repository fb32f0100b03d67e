"""`helm test`'s smoke Job: rendered from tests.prompts, and its script run against a real service.

The script the Job's pod runs (`python3 -c …` in the agent image) is taken from the rendered
manifest and run here with this checkout's Python against an `agent-service` process on a free
port, with the environment the Job gives it: what passes and fails in the cluster passes and
fails here. tests/e2e/test_rollout_gate.py runs the hook itself with `helm test` on the real node.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.chart.conftest import Render, find, kubernetes_validate, run_helm
from tests.conftest import free_port

SMOKE_JOB = "agent-test-smoke"
CLIENT_KEY = "smoke-client-key-5b0e7c19d2"


def smoke_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Job", SMOKE_JOB)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def job_env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(job)["env"]}


@contextlib.contextmanager
def service(tmp_path: Path, **overrides: str) -> Iterator[str]:
    """An `agent-service` process (echo model) on a free port; its base URL. Killed by pid."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "OTEL_"))} | {
        "AGENT_HOST": "127.0.0.1",
        "AGENT_PORT": str(port),
        **overrides,
    }
    log = tmp_path / f"service-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent_service"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"service not ready:\n{log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run_smoke(job: dict[str, Any], url: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """The Job's command, as its pod runs it, against `url` instead of the Service's name."""
    command = container(job)["command"]
    assert command[:2] == ["python3", "-c"]
    env = {"PATH": os.environ["PATH"], **job_env(job), "SMOKE_URL": url, **extra_env}
    return subprocess.run(
        [sys.executable, "-c", command[2]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_default_smoke_prompt_passes_against_the_echo_model(
    render: Render, tmp_path: Path
) -> None:
    job = smoke_job(render())
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert job_env(job)["SMOKE_URL"] == "http://agent:80"
    assert json.loads(job_env(job)["SMOKE_PROMPTS"]) == {
        "calc": {"message": "calc 6*7", "contains": "42", "maxLatencyMs": 5000}
    }
    with service(tmp_path) as url:
        result = run_smoke(job, url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("calc: passed (")


def test_a_wrong_answer_fails_the_smoke_job_naming_the_prompt_and_why(
    render: Render, tmp_path: Path
) -> None:
    job = smoke_job(
        render(
            tests__prompts__calc__contains="43",
            tests__prompts__ping={"message": "ping", "matches": "^echo: ping$"},
            tests__prompts__slow={"message": "slow one", "contains": "slow", "maxLatencyMs": 300},
        )
    )
    with service(tmp_path, AGENT_ECHO_LATENCY_MS="600") as url:
        result = run_smoke(job, url)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("calc: reply 'calc: 42' does not contain '43'")
    assert lines[1].startswith("ping: passed")
    # The latency bound holds as the gate's does: an answer later than maxLatencyMs fails.
    assert lines[2].startswith("slow: HTTP 0: TimeoutError: timed out")


def test_with_client_api_keys_the_prompts_go_as_the_first_client(
    render: Render, tmp_path: Path
) -> None:
    job = smoke_job(render(clients__apiKeysSecret="agent-clients"))
    spec = job["spec"]["template"]["spec"]
    (volume,) = spec["volumes"]
    assert volume["secret"] == {
        "secretName": "agent-clients",
        "items": [{"key": "api-keys", "path": "api-keys"}],
    }
    keys_file = job_env(job)["SMOKE_KEYS_FILE"]
    (mount,) = container(job)["volumeMounts"]
    assert keys_file == f"{mount['mountPath']}/api-keys"
    assert mount["readOnly"] is True

    keys = tmp_path / "api-keys"
    keys.write_text(f"# smoke\nsmoke:{CLIENT_KEY}\nother:another-key-2c81d9e4a7\n")
    with service(tmp_path, AGENT_API_KEYS_FILE=str(keys)) as url:
        result = run_smoke(job, url, SMOKE_KEYS_FILE=str(keys))
        refused = run_smoke(smoke_job(render()), url)  # the same prompt without a key
    assert result.returncode == 0, result.stdout + result.stderr
    assert refused.returncode == 1
    assert refused.stdout.startswith("calc: HTTP 401")
    assert CLIENT_KEY not in result.stdout + result.stderr + refused.stdout + refused.stderr


def test_without_prompts_there_is_no_smoke_job(render: Render) -> None:
    docs = render(tests__prompts__calc=None)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Job"] == ["agent-test-readyz"]


def test_a_prompt_without_an_expectation_fails_the_render(helm: Path) -> None:
    result = run_helm(
        helm, "template", "agent", str(Path(__file__).resolve().parents[2] / "charts" / "agent"),
        "--set", "tests.prompts.x.message=hi", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "/tests/prompts/x" in result.stderr


def test_the_smoke_job_validates_and_is_hardened(render: Render, tmp_path: Path) -> None:
    job = smoke_job(render(clients__apiKeysSecret="agent-clients"))
    result = kubernetes_validate(job, tmp_path)
    assert result.returncode == 0, result.stdout
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
    # A wrong answer is final (the script retries only transport errors and 5xx itself).
    assert job["spec"]["backoffLimit"] == 0
