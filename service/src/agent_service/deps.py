"""Shared dependencies of the routes, as `Annotated` aliases over the lifespan state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from agent_service.agent import Agent
from agent_service.config import Settings
from agent_service.lifecycle import Lifecycle
from agent_service.metrics import Metrics
from agent_service.store import SessionStore


def _state(name: str) -> Callable[[Request], Any]:
    """A dependency returning one entry of the lifespan state (see `app.AppState`)."""

    # `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread, and
    # those thread hops cost more CPU per request than the rest of the shell (make bench).
    async def get(request: Request) -> Any:
        return getattr(request.state, name)

    get.__name__ = f"state_{name}"
    return get


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
StoreDep = Annotated[SessionStore, Depends(_state("store"))]
AgentDep = Annotated[Agent, Depends(_state("agent"))]
LifecycleDep = Annotated[Lifecycle, Depends(_state("lifecycle"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
