"""Liveness, readiness and metrics: the questions the platform asks."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agent_service.deps import StateDep
from agent_service.lifecycle import PING_TIMEOUT_S, Phase
from agent_service.schemas import Health
from agent_service.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> JSONResponse:
    """Liveness: the process serves. Touches nothing downstream."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(state: StateDep) -> JSONResponse:
    """Readiness: warm and not draining; with AGENT_READINESS_STORE=always, the store answers.

    After warm-up a store outage does not fail readiness by default: the store is shared by
    every replica, so failing it would take every replica out of the Service at once and turn
    clear 503 `store-unavailable` answers into connection errors. The body says `"store"`.
    """
    lifecycle, store = state["lifecycle"], state["store"]
    if lifecycle.phase is not Phase.READY:
        return _not_ready(lifecycle.phase.value, store.health.up)
    if state["settings"].readiness_store == "always":
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await store.ping()
        except (StoreUnavailable, TimeoutError):
            store.health.saw(False)
            state["metrics"].store_errors.labels("ping").inc()
            return _not_ready("store-unavailable", False)
    return JSONResponse({"status": "ready", "store": _store_state(store.health.up)})


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    return Response(state["metrics"].render(), media_type=CONTENT_TYPE_LATEST)


def _store_state(up: bool) -> str:
    return "up" if up else "down"


def _not_ready(reason: str, store_up: bool) -> JSONResponse:
    body = {"status": "not-ready", "reason": reason, "store": _store_state(store_up)}
    return JSONResponse(body, status_code=503)
