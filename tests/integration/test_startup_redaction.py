"""The startup line shows the effective configuration with no credential of any URL in it."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.conftest import free_port
from tests.integration.conftest import SECRET, Redis, Service


def _startup_config(service: Service) -> dict[str, str]:
    for line in service.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "config" in record:
            return dict(record["config"])
    raise AssertionError(f"no startup line with the configuration:\n{service.output()}")


def _use_the_store_and_stop(service: Service) -> None:
    # Ready means the store answered PING, which a Redis with requirepass refuses without auth.
    service.wait_ready()
    lookup = httpx.get(f"{service.url}/v1/sessions/never-created", timeout=10)
    assert lookup.status_code == 404, lookup.text
    service.terminate()
    assert service.wait_exit() == 0, service.output()


def test_a_password_in_the_session_url_query_reaches_redis_but_no_log(
    redis_server: Redis, start_service
) -> None:
    # redis-py takes `?password=` from the query; the store must really use it (ready + a turn).
    session_url = f"redis://127.0.0.1:{redis_server.port}/0?password={SECRET}"
    base_url = f"https://user:{SECRET}@llm.invalid/v1?api-version=1&api_key={SECRET}"
    service = start_service(AGENT_SESSION_URL=session_url, AGENT_MODEL_BASE_URL=base_url)
    _use_the_store_and_stop(service)
    config = _startup_config(service)
    assert config["session_url"] == f"redis://127.0.0.1:{redis_server.port}/0?password=***"
    assert config["model_base_url"] == "https://***@llm.invalid/v1?api-version=1&api_key=***"
    assert SECRET not in service.output()


def test_a_percent_encoded_password_with_url_delimiters_is_used_and_never_shown(
    redis_binary: str, tmp_path: Path, start_service
) -> None:
    password = f"{SECRET}/#?@:x"
    redis = Redis(redis_binary, free_port(), tmp_path, password=password)
    redis.start()
    try:
        encoded = quote(password, safe="")
        service = start_service(AGENT_SESSION_URL=f"redis://:{encoded}@127.0.0.1:{redis.port}/0")
        _use_the_store_and_stop(service)
    finally:
        redis.stop()
    assert _startup_config(service)["session_url"] == f"redis://***@127.0.0.1:{redis.port}/0"
    assert SECRET not in service.output()
    assert encoded not in service.output()
