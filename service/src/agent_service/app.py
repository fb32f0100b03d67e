"""The app factory: settings in, a FastAPI app whose lifespan owns every long-lived client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from agent_service import __version__
from agent_service.agent import Agent
from agent_service.auth import ApiKeys, warn_if_open
from agent_service.budgets import BudgetPolicy, open_budgets, warn_if_ineffective
from agent_service.config import Settings
from agent_service.deps import AppState
from agent_service.errors import install_error_handlers
from agent_service.lifecycle import Lifecycle, drain_on_sigterm, warm_up, watch_store
from agent_service.metrics import CountTurnsInFlight, Metrics
from agent_service.middleware import ShellMiddleware
from agent_service.ownership import open_owners
from agent_service.providers import open_model
from agent_service.routes import chat, health, sessions
from agent_service.store import StoreHealth, TlsFiles, open_store
from agent_service.tools import BUILTIN_TOOLS
from agent_service.tracing import fastapi_telemetry, start_tracing, stop_tracing
from agent_service.usage import UsageMeter


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> FastAPI:
    """Build the service; tests may pass a `lifecycle` to drive readiness themselves."""
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[AppState]:
        health = StoreHealth(on_change=lambda up: metrics.store_up.set(1 if up else 0))
        store = open_store(
            settings.session_url.get_secret_value(),
            settings.session_ttl_s,
            max_messages=settings.max_history_messages,
            timeout_s=settings.store_timeout_s,
            health=health,
            tls=TlsFiles(
                settings.session_ca_file, settings.session_cert_file, settings.session_key_file
            ),
            wait_replicas=settings.session_wait_replicas,
            wait_timeout_s=settings.session_replica_timeout_s,
            queue_timeout_s=settings.request_timeout_s,
        )
        model = open_model(settings)
        agent = Agent(
            model,
            {name: BUILTIN_TOOLS[name] for name in settings.tools},
            settings.max_steps,
            settings.model_timeout_s,
            metrics,
            settings.model,
            system_prompt=settings.system_prompt,
            context_max_tokens=settings.context_max_tokens,
        )
        budget_policy = BudgetPolicy(
            settings.budget_session_tokens,
            settings.budget_client_daily_tokens,
            settings.budget_turn_tokens,
            settings.session_ttl_s,
        )
        warn_if_open(settings.api_keys_file, settings.host)
        warn_if_ineffective(budget_policy, settings.api_keys_file)
        tracer_provider = start_tracing()

        async def check_store() -> None:
            await warm_up(store, lifecycle)
            await watch_store(store)

        # Warm up in the background so /healthz answers from the first moment; then keep the
        # store's health current for /readyz and the gauge.
        warming = asyncio.create_task(check_store())
        uninstall_drain = drain_on_sigterm(lifecycle, settings.drain_delay_s)
        try:
            yield AppState(
                settings=settings,
                store=store,
                agent=agent,
                lifecycle=lifecycle,
                metrics=metrics,
                api_keys=ApiKeys(settings.api_keys_file) if settings.api_keys_file else None,
                owners=open_owners(store, settings.session_ttl_s),
                budgets=open_budgets(store, settings.request_timeout_s),
                budget_policy=budget_policy,
                usage=UsageMeter(metrics, settings.model_prices),
            )
        finally:
            uninstall_drain()
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            await model.aclose()
            await store.aclose()
            stop_tracing(tracer_provider)
            metrics.close()

    app = FastAPI(
        title="Moorage agent service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=fastapi_telemetry(),
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(sessions.router)
    app.add_middleware(ShellMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(CountTurnsInFlight, metrics=metrics)  # outermost: added last
    return app
