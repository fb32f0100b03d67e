"""The dependency every route shares: the lifespan's state, as one `Annotated` alias."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request

from agent_service.agent import Agent
from agent_service.config import Settings
from agent_service.lifecycle import Lifecycle
from agent_service.metrics import Metrics
from agent_service.store import SessionStore


class AppState(TypedDict):
    """What the lifespan hands to every request (in `scope["state"]`)."""

    settings: Settings
    store: SessionStore
    agent: Agent
    lifecycle: Lifecycle
    metrics: Metrics


async def app_state(request: Request) -> AppState:
    """The lifespan's clients and settings.

    One dependency rather than one per client: FastAPI's cost per resolved dependency is
    larger than a chat turn's own work per dependency (make bench, docs/benchmarks.md), and
    `async def` because FastAPI runs a plain `def` dependency in a worker thread.
    """
    return cast(AppState, request.scope["state"])


StateDep = Annotated[AppState, Depends(app_state)]
