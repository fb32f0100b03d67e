"""Liveness, readiness and metrics: the questions the platform asks."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agent_service.deps import LifecycleDep, MetricsDep, StoreDep
from agent_service.lifecycle import PING_TIMEOUT_S, Phase
from agent_service.schemas import Health
from agent_service.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> JSONResponse:
    """Liveness: the process serves. Touches nothing downstream."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(lifecycle: LifecycleDep, store: StoreDep, metrics: MetricsDep) -> JSONResponse:
    """Readiness: warm, not draining, and the session store answers."""
    if lifecycle.phase is not Phase.READY:
        return _not_ready(lifecycle.phase.value)
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await store.ping()
    except (StoreUnavailable, TimeoutError):
        metrics.store_errors.labels("ping").inc()
        return _not_ready("store-unavailable")
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "not-ready", "reason": reason}, status_code=503)
