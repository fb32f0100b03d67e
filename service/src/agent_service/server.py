"""Run the app under uvicorn with the settings' bind address, workers and shutdown budget."""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from agent_service.app import create_app
from agent_service.config import Settings
from agent_service.logs import configure_logging
from agent_service.metrics import MULTIPROC_DIR_ENV
from agent_service.protocol import BoundedHttpToolsProtocol, HttpLimits, ServerConfig

GC_GEN0_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


class Server(uvicorn.Server):
    """uvicorn's server, except that a drained stop exits 0 instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def build_app(settings: Settings) -> FastAPI:
    """The app of one worker process; spawned workers set up their own logging first."""
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    settle_gc()
    return app


def settle_gc() -> None:
    """Keep the garbage collector off the start-up heap and out of the request path.

    FastAPI, pydantic and their schemas leave a large heap that lives as long as the process.
    Objects of in-flight requests outlive the default gen-0 threshold (700 allocations, less than
    one chat turn) and are promoted, so full collections ran every second, each walking that
    whole heap: 400-600 ms of pauses per 8 s of load, up to 290 ms at once (make bench p99).
    Freezing the start-up heap takes it out of every collection, and a higher threshold stops
    promoting short-lived request objects; the cyclic garbage this lets wait is a few MiB at most.
    """
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM has drained the app (see `lifecycle.drain_on_sigterm`) or SIGINT."""
    config = ServerConfig(
        # A factory bound to the settings: each worker process builds its own app from it.
        functools.partial(build_app, settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        http_limits=HttpLimits(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
        ),
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        # A spawned worker imports the whole stack before it can answer the supervisor's ping;
        # on a busy node that exceeds uvicorn's 5 s default and workers get killed in a loop.
        timeout_worker_healthcheck=30,
    )
    if settings.workers == 1:
        Server(config).run()
        return
    # The supervisor forwards SIGTERM to every worker, each drains itself, then it exits 0.
    with tempfile.TemporaryDirectory(prefix="agent-metrics-") as metrics_dir:
        # Workers inherit this and share their metrics through files in it (under /tmp).
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir
        Multiprocess(config, sockets=[config.bind_socket()]).run()
