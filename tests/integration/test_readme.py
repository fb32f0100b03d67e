"""The README's first screen and the service section's commands, run as a user would."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import httpx
import redis

from tests.conftest import free_port
from tests.integration.conftest import Redis, service_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(text: str) -> list[str]:
    return [b.replace("\\\n", " ") for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL)]


def _section(name: str) -> str:
    return README.split(f"<!-- section: {name} -->")[1].split(f"<!-- /section: {name} -->")[0]


def _make_run(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["make", "-C", str(ROOT), "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def test_the_first_screen_shows_make_run_and_make_test() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make run" in first_screen
    assert "make test" in first_screen


def test_make_run_serves_the_readme_chat_example(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(AGENT_PORT=str(port), AGENT_DRAIN_DELAY_S="0")
    proc = _make_run(env, tmp_path / "make-run.log")
    try:
        wait_until(lambda: _ready(port), 120, "`make run` to serve")
        curl = next(
            line for b in _blocks(README[:2000]) for line in b.splitlines() if "curl" in line
        )
        command = curl.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True)
        reply = json.loads(result.stdout)
        assert reply["reply"] == "echo: hello"
        assert reply["session_id"]
    finally:
        _stop(proc)


def test_the_service_sections_redis_example_keeps_sessions_in_redis(
    tmp_path: Path, redis_server: Redis
) -> None:
    (command,) = [b for b in _blocks(_section("service")) if "make run" in b]
    # The example's Redis and model API are the user's; ours are a local Redis and `echo`.
    command = command.replace("redis://127.0.0.1:6379/0", redis_server.url)
    words = shlex.split(command)
    assignments = [w for w in words if "=" in w and w.startswith("AGENT_")]
    assert words[len(assignments) :] == ["make", "run"]
    overrides = dict(a.split("=", 1) for a in assignments)
    overrides.update(AGENT_MODEL="echo", AGENT_MODEL_API_KEY_FILE="")
    port = free_port()
    env = service_env(AGENT_PORT=str(port), AGENT_DRAIN_DELAY_S="0", **overrides)
    env.pop("AGENT_MODEL_API_KEY_FILE")
    proc = _make_run(env, tmp_path / "make-run-redis.log")
    try:
        wait_until(lambda: _ready(port), 120, "`make run` with Redis to be ready")
        httpx.post(
            f"http://127.0.0.1:{port}/v1/chat", json={"session_id": "readme", "message": "hi"}
        )
        stored = redis.Redis(port=redis_server.port, password=redis_server.password)
        assert stored.llen("moorage:session:readme") == 2
    finally:
        _stop(proc)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.HTTPError:
        return False
