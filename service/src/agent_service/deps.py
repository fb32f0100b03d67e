"""Shared dependencies of the routes, as `Annotated` aliases over the lifespan state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent_service.agent import Agent
from agent_service.config import Settings
from agent_service.lifecycle import Lifecycle
from agent_service.metrics import Metrics
from agent_service.store import SessionStore

# The providers are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, and five thread hops per request cost more CPU than the rest of the shell together.


async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def _store(request: Request) -> SessionStore:
    store: SessionStore = request.state.store
    return store


async def _agent(request: Request) -> Agent:
    agent: Agent = request.state.agent
    return agent


async def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.state.lifecycle
    return lifecycle


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[SessionStore, Depends(_store)]
AgentDep = Annotated[Agent, Depends(_agent)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
