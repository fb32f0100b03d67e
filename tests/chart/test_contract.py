"""The chart and the service agree: the rendered container, run as rendered, serves its probes.

The container's command, environment (ConfigMap + env, secrets as files), port and probe paths
are taken from `helm template` and the real service is started exactly so, as a local process
against a real redis-server. Only the bind address is moved to loopback. Any name the two sides
disagree on (a variable, a path, the port, the console script) makes these tests fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART, Render, agent_container, find
from tests.conftest import free_port, require_binary

REDIS_PASSWORD = "contract-pw-4d1e"


@dataclass
class Rendered:
    """What the chart tells the kubelet to run, resolved to a local process."""

    argv: list[str]
    env: dict[str, str]
    port: int
    liveness_path: str
    readiness_path: str
    startup_path: str


def resolve(docs: list[dict[str, Any]], secret_root: Path) -> Rendered:
    """Turn the rendered Deployment into argv, env and probe targets of a local process."""
    container = agent_container(docs)
    pod = find(docs, "Deployment", "agent")["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        # As the kubelet does: every key of `data` (binaryData is not imported).
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    # Secret and ConfigMap volumes become files under secret_root, at the same relative paths.
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    relocate: dict[str, str] = {}
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            secret = find(docs, "Secret", volume["secret"]["secretName"])
            files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            items = volume["secret"]["items"]
        elif "configMap" in volume:
            config = find(docs, "ConfigMap", volume["configMap"]["name"])
            files = {k: v.encode() for k, v in (config.get("data") or {}).items()}
            binary = config.get("binaryData") or {}
            files.update({k: base64.b64decode(v) for k, v in binary.items()})
            items = volume["configMap"]["items"]
        else:
            continue
        target = secret_root / volume["name"]
        target.mkdir(parents=True)
        for item in items:
            (target / item["path"]).write_bytes(files[item["key"]])
        relocate[mounts[volume["name"]]] = str(target)
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: secrets must arrive as files, not valueFrom"
        value = var["value"]
        for mount_path, local in relocate.items():
            if value.startswith(mount_path + "/"):
                value = local + value[len(mount_path) :]
        env[var["name"]] = value
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe(name: str) -> str:
        get = container[name]["httpGet"]
        port = get["port"]
        assert ports.get(port, port) == ports["http"], f"{name} probes another port"
        return str(get["path"])

    command = [*container.get("command", []), *container.get("args", [])]
    binary = Path(sys.executable).parent / command[0]
    assert binary.is_file(), f"the chart runs `{command[0]}`, which the service does not install"
    return Rendered(
        argv=[str(binary), *command[1:]],
        env=env,
        port=ports["http"],
        liveness_path=probe("livenessProbe"),
        readiness_path=probe("readinessProbe"),
        startup_path=probe("startupProbe"),
    )


@pytest.fixture
def redis_port() -> int:
    """A free port where redis-server will be started later in the test."""
    return free_port()


@pytest.fixture
def start_redis(redis_port: int, tmp_path: Path) -> Iterator[Any]:
    """A function that starts a real redis-server on `redis_port`; stopped (by pid) at the end."""
    binary = require_binary("redis-server")
    procs: list[subprocess.Popen[bytes]] = []

    argv = [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)]

    def _start() -> None:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield _start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def start_service(rendered: Rendered, log: Path) -> subprocess.Popen[bytes]:
    """Start the service with exactly the rendered env; only the bind address becomes loopback."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AGENT_")}
    env.update(rendered.env)
    assert env["AGENT_HOST"] == "0.0.0.0"  # what the pod gets; tests bind loopback only
    env["AGENT_HOST"] = "127.0.0.1"
    with log.open("wb") as out:
        return subprocess.Popen(rendered.argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as the kubelet would, then wait for the exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def first_answer(client: httpx.Client, url: str, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Status of the first answer the process gives at url (polling until it listens)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return client.get(url).status_code
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"nothing answered at {url}:\n{log.read_text()}")


def poll_status(client: httpx.Client, url: str, want: int, log: Path) -> httpx.Response:
    """Poll url until it answers `want`; fail with the service log otherwise."""
    deadline = time.monotonic() + 30
    response = client.get(url)
    while response.status_code != want and time.monotonic() < deadline:
        time.sleep(0.2)
        response = client.get(url)
    assert response.status_code == want, log.read_text()
    return response


def unknown_variable_warnings(log: Path) -> list[str]:
    """AGENT_* names the service said it ignores (its warning for typos)."""
    names: list[str] = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "unknown" in str(record.get("message", record.get("msg", ""))).lower():
            names += record.get("variables", [])
    return names


def test_rendered_container_serves_liveness_at_once_and_readiness_after_the_store(
    render: Render, redis_port: int, start_redis: Any, tmp_path: Path
) -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"
    docs = render(
        session={"url": url}, model={"apiKey": "sk-contract"}, server={"port": free_port()}
    )
    rendered = resolve(docs, tmp_path / "secrets")
    assert rendered.env.keys() >= {"AGENT_SESSION_URL_FILE", "AGENT_MODEL_API_KEY_FILE"}
    log = tmp_path / "service.log"
    proc = start_service(rendered, log)
    base = f"http://127.0.0.1:{rendered.port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            assert first_answer(client, rendered.liveness_path, proc, log) == 200
            assert client.get(rendered.startup_path).status_code == 200
            not_ready = client.get(rendered.readiness_path)
            assert not_ready.status_code == 503, log.read_text()
            assert not_ready.json()["reason"] in {"starting", "store-unavailable"}

            start_redis()
            ready = poll_status(client, rendered.readiness_path, 200, log)
            assert ready.json()["status"] == "ready"
            # The store behind readiness is the one from the Secret: a turn lands in it.
            turn = client.post("/v1/chat", json={"message": "hello"})
            assert turn.status_code == 200, turn.text
            assert client.get(f"/v1/sessions/{turn.json()['session_id']}").status_code == 200
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()
    assert unknown_variable_warnings(log) == []
    assert REDIS_PASSWORD not in log.read_text()
    assert "sk-contract" not in log.read_text()


@pytest.mark.parametrize(
    "scenario", ["minimal-values.yaml", "in-chart-redis-values.yaml"], ids=lambda s: s[:-12]
)
def test_every_variable_the_chart_sets_is_one_the_service_knows(
    render: Render, tmp_path: Path, scenario: str
) -> None:
    docs = render(CHART / "ci" / scenario, server={"port": free_port()})
    rendered = resolve(docs, tmp_path / "secrets")
    # The in-chart Redis is not here: point its name at a closed loopback port (no lookup leaves
    # the machine); the service still starts and reports on its settings.
    url_file = rendered.env.get("AGENT_SESSION_URL_FILE")
    if url_file:
        path = Path(url_file)
        path.write_text(path.read_text().replace("agent-redis:6379", f"127.0.0.1:{free_port()}"))
        assert "127.0.0.1" in path.read_text()
    log = tmp_path / "service.log"
    proc = start_service(rendered, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{rendered.port}", timeout=5) as client:
            assert first_answer(client, rendered.liveness_path, proc, log) == 200
    finally:
        stop(proc)
    assert unknown_variable_warnings(log) == []


def test_a_misspelt_variable_in_the_chart_would_be_caught(render: Render, tmp_path: Path) -> None:
    docs = render(extraEnv={"AGENT_MAX_STEP": "3"}, server={"port": free_port()})
    rendered = resolve(docs, tmp_path / "secrets")
    log = tmp_path / "service.log"
    proc = start_service(rendered, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{rendered.port}", timeout=5) as client:
            first_answer(client, rendered.liveness_path, proc, log)
    finally:
        stop(proc)
    assert unknown_variable_warnings(log) == ["AGENT_MAX_STEP"]


def _startup_config(log: Path) -> dict[str, Any]:
    for line in log.read_text().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if "config" in record:
            return dict(record["config"])
    raise AssertionError(f"no startup line:\n{log.read_text()}")


def test_the_rendered_prompt_tools_and_window_are_what_the_service_runs_with(
    render: Render, tmp_path: Path
) -> None:
    # The longest prompt the service takes, more than an environment value can hold.
    head = "You are Acme's agent.\nInternal: refunds over 100 EUR go to tier 2."
    prompt = head + "\n" + "x" * (131_072 - len(head) - 1)
    values = tmp_path / "agent-values.yaml"
    agent = {"systemPrompt": prompt, "tools": ["clock"], "context": {"maxMessages": 6}}
    values.write_text(yaml.safe_dump({"agent": agent}))
    docs = render(values, server={"port": free_port()})
    rendered = resolve(docs, tmp_path / "files")
    assert "AGENT_SYSTEM_PROMPT" not in rendered.env  # only its file, never a variable
    assert not any(prompt.strip() in value for value in rendered.env.values())
    log = tmp_path / "service.log"
    proc = start_service(rendered, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{rendered.port}", timeout=5) as client:
            assert first_answer(client, rendered.liveness_path, proc, log) == 200
            poll_status(client, rendered.readiness_path, 200, log)
            turn = client.post("/v1/chat", json={"message": "calc 6*7"}).json()
    finally:
        stop(proc)
    config = _startup_config(log)
    digest = hashlib.sha256(prompt.strip().encode()).hexdigest()[:12]
    assert config["system_prompt"] == {
        "chars": len(prompt.strip()),
        "sha256": digest,
        "default": False,
    }
    assert (config["tools"], config["context_max_messages"]) == (["clock"], 6)
    assert turn["tool_calls"][0]["result"] == "error: unknown tool 'calculator'"
    assert "tier 2" not in log.read_text()
    assert unknown_variable_warnings(log) == []
