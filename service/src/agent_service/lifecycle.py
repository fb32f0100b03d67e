"""The readiness state of one process: starting → ready → draining."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType
from typing import Any

from agent_service.store import SessionStore, StoreUnavailable

log = logging.getLogger(__name__)

_WARMUP_FIRST_DELAY_S = 0.1
_WARMUP_MAX_DELAY_S = 2.0
PING_TIMEOUT_S = 1.0
WATCH_INTERVAL_S = 1.0


class Phase(StrEnum):
    """Where the process is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass
class Lifecycle:
    """Shared by the server (which drains it on SIGTERM) and the app (which reports it)."""

    phase: Phase = Phase.STARTING

    def mark_ready(self) -> None:
        """Warm-up finished; a drain already under way is not undone."""
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def begin_drain(self) -> None:
        """Readiness fails from now on; requests are still served."""
        self.phase = Phase.DRAINING


async def warm_up(store: SessionStore, lifecycle: Lifecycle) -> None:
    """Ping the store until it answers (capped backoff, each attempt bounded), then mark ready."""
    delay = _WARMUP_FIRST_DELAY_S
    attempt = 0
    while lifecycle.phase is Phase.STARTING:
        attempt += 1
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await store.ping()
        except (StoreUnavailable, TimeoutError) as err:
            log.warning(
                "session store not answering yet",
                extra={
                    "attempt": attempt,
                    "error": str(err) or type(err).__name__,
                    "retry_in_s": delay,
                },
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WARMUP_MAX_DELAY_S)
            continue
        lifecycle.mark_ready()
        log.info("ready", extra={"attempts": attempt})


async def watch_store(store: SessionStore, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Ping the store now and then, so its health (readiness body, gauge) stays current.

    Requests update it too; this covers the quiet times, e.g. noticing that the store is back.
    Each ping is bounded by the store's own call timeout.
    """
    while True:
        with contextlib.suppress(StoreUnavailable):
            await store.ping()
        await asyncio.sleep(interval_s)


def drain_on_sigterm(lifecycle: Lifecycle, delay_s: float) -> Callable[[], None]:
    """Make SIGTERM fail readiness at once and reach the server's own handler only after a delay.

    Installed from the lifespan, so it wraps whichever server runs the app (uvicorn's handler
    is in place by then), in every worker process. Returns a function that uninstalls it.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach only the main thread (e.g. not under TestClient)
    stop_serving = signal.getsignal(signal.SIGTERM)
    if not callable(stop_serving):
        return lambda: None  # no server handler to hand over to: keep the default behaviour
    loop = asyncio.get_running_loop()

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if lifecycle.phase is Phase.DRAINING or delay_s <= 0:
            lifecycle.begin_drain()
            stop_serving(sig, frame)  # a second SIGTERM cuts the drain short
            return
        lifecycle.begin_drain()
        log.info("draining: readiness fails, requests are still served", extra={"delay_s": delay_s})
        loop.call_soon_threadsafe(loop.call_later, delay_s, _hand_over, stop_serving, sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return functools.partial(signal.signal, signal.SIGTERM, stop_serving)  # type: ignore[return-value]


def _hand_over(stop_serving: Callable[[int, FrameType | None], Any], sig: int, frame: Any) -> None:
    log.info("drain delay over: closing the listener, finishing in-flight requests")
    stop_serving(sig, frame)
