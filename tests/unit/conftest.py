"""Unit tier: the service app in-process (TestClient runs its lifespan), no network."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from agent_service.app import create_app
from agent_service.config import Settings
from agent_service.lifecycle import Lifecycle


@pytest.fixture(autouse=True)
def clean_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come only from what a test sets, never from the developer's shell."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("AGENT_"):
            monkeypatch.delenv(key)


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient over an app built from the given settings, once ready."""
    clients: list[TestClient] = []

    def make(
        lifecycle: Lifecycle | None = None, wait_ready: bool = True, **settings: object
    ) -> TestClient:
        app = create_app(Settings(**settings), lifecycle)  # type: ignore[arg-type]
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if wait_ready:
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "app never became ready"
                time.sleep(0.01)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
