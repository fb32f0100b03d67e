"""The dependency every route shares: the lifespan's state, as one `Annotated` alias."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request

from agent_service.agent import Agent
from agent_service.auth import ApiKeys
from agent_service.budgets import BudgetPolicy, Budgets
from agent_service.config import Settings
from agent_service.errors import ApiError
from agent_service.lifecycle import Lifecycle
from agent_service.metrics import Metrics
from agent_service.ownership import Owners
from agent_service.store import SessionStore
from agent_service.usage import UsageMeter

CLIENT = "client"  # the authenticated client's name, in `scope["state"]` (logs, metrics)


class AppState(TypedDict):
    """What the lifespan hands to every request (in `scope["state"]`)."""

    settings: Settings
    store: SessionStore
    agent: Agent
    lifecycle: Lifecycle
    metrics: Metrics
    api_keys: ApiKeys | None
    owners: Owners
    budgets: Budgets
    budget_policy: BudgetPolicy
    usage: UsageMeter


def app_state(request: Request) -> AppState:
    """The lifespan's clients and settings: what the turn routes read directly."""
    return cast(AppState, request.scope["state"])


async def _app_state(request: Request) -> AppState:
    # `async def`: FastAPI runs a plain `def` dependency in a worker thread.
    return app_state(request)


# One dependency rather than one per client: FastAPI's cost per resolved dependency is larger
# than a chat turn's own work per dependency (make bench, docs/benchmarks.md).
StateDep = Annotated[AppState, Depends(_app_state)]


async def authenticate(request: Request) -> None:
    """With AGENT_API_KEYS_FILE set, a request needs `Authorization: Bearer <key>`: 401 if not.

    A dependency of every `/v1` router (see `routes`), so no API route can go without it. The
    client's name (never its key) is kept in the request state for the routes and the log.
    """
    state = request.scope["state"]
    keys: ApiKeys | None = state["api_keys"]
    if keys is None:
        return
    client = keys.identify(request.headers.get("authorization"))
    if client is None:
        state["metrics"].auth_failures.inc()
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
            {"WWW-Authenticate": 'Bearer realm="agent"'},
        )
    state[CLIENT] = client


def client_of(request: Request) -> str | None:
    """The authenticated client of the request; None while client authentication is off."""
    return cast(str | None, request.scope["state"].get(CLIENT))
