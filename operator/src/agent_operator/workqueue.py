"""One coalescing, keyed work queue: at most one worker per key, and no change lost while busy.

The semantics are controller-runtime's workqueue (dirty/processing): a key added while it is
being processed is processed once more afterwards, however often it was added meanwhile. The
thread that adds an idle key processes it itself (kopf's worker threads, or the resync thread),
so there is no second pool of workers to size. `Resyncer` feeds the same queue from one
background thread: delayed retries of single keys, and a bounded periodic pass over every key.
`Pending` says what a key's next pass must look at, so a burst of child events costs one pass
over those children rather than a read of every child per event.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=Hashable)
V = TypeVar("V")


class KeyedQueue(Generic[K]):
    """Serialise work per key and coalesce what arrives while a key is being processed."""

    def __init__(self, process: Callable[[K], None]) -> None:
        # `process` is the pass run for a key that was added while busy (the "dirty" pass).
        self._process = process
        self._guard = threading.Condition()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()

    def add(self, key: K, work: Callable[[], None] | None = None) -> bool:
        """Run `work` (default: the queue's pass) for `key` now, or mark it dirty if it is busy.

        Returns whether this thread did the work; when it did not, the busy thread processes
        the key once more before it lets go of it.
        """
        with self._guard:
            if key in self._processing:
                self._dirty.add(key)
                return False
            self._processing.add(key)
        self._run_then_release(key, work or (lambda: self._process(key)))
        return True

    @contextlib.contextmanager
    def exclusive(self, key: K) -> Iterator[None]:
        """Wait until `key` is idle and hold it (a spec handler, whose errors go to kopf)."""
        with self._guard:
            while key in self._processing:
                self._guard.wait()
            self._processing.add(key)
        with self._releasing(key):
            yield

    def busy(self) -> set[K]:
        """The keys being processed now (for tests and debugging)."""
        with self._guard:
            return set(self._processing)

    def _run_then_release(self, key: K, work: Callable[[], None]) -> None:
        with self._releasing(key):
            work()

    @contextlib.contextmanager
    def _releasing(self, key: K) -> Iterator[None]:
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: K) -> None:
        # The dirty check and the release are one atomic step under the guard: a key marked
        # dirty after the check finds it idle and is processed by whoever marked it.
        while True:
            with self._guard:
                if key not in self._dirty:
                    self._processing.discard(key)
                    self._guard.notify_all()
                    return
                self._dirty.discard(key)
            try:
                self._process(key)
            except Exception:  # the pass reports and retries on its own; never leak the key
                log.exception("processing %s failed", key)


class Full:
    """The marker of a pass that must read every child (see `Pending`)."""


FULL = Full()


class Pending(Generic[K, S, V]):
    """What a key's next pass must look at: the latest body of each part (child kind) whose
    event arrived since its last pass, or FULL when someone asked for a pass over everything
    (a resync, a retry, a failing pod). A pass takes it at its start, so what arrives while it
    runs is left for the pass after (the queue's dirty pass)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[K, dict[S, V] | Full] = {}

    def note(self, key: K, part: S, body: V) -> None:
        """`part` of `key` changed and now looks like `body` (the latest one wins)."""
        with self._lock:
            parts = self._pending.setdefault(key, {})
            if not isinstance(parts, Full):
                parts[part] = body

    def want_full(self, key: K) -> None:
        """The next pass over `key` reads everything."""
        with self._lock:
            self._pending[key] = FULL

    def take(self, key: K) -> dict[S, V] | Full | None:
        """What the pass over `key` starting now must look at; None: nothing (an earlier pass
        took it already)."""
        with self._lock:
            return self._pending.pop(key, None)


class Resyncer(Generic[K]):
    """One background thread adding keys to a queue: retries when due, all keys periodically."""

    def __init__(
        self,
        queue: KeyedQueue[K],
        *,
        list_keys: Callable[[], Iterable[K]],
        interval: float,
        active: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        mark: Callable[[K], None] | None = None,
    ) -> None:
        # interval <= 0 turns the periodic pass off (retries still run). `mark` is called with
        # each key before it is added (to ask for a full pass: Pending.want_full).
        self._queue = queue
        self._mark = mark
        self._list_keys = list_keys
        self._interval = interval
        self._active = active
        self._clock = clock
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, K]] = []
        self._pending: set[K] = set()
        self._seq = 0
        self._next_tick = clock() + interval if interval > 0 else float("inf")
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._context: contextvars.Context | None = None

    def later(self, key: K, delay: float) -> None:
        """Add `key` to the queue after `delay` seconds (once, however often it is asked)."""
        with self._wake:
            if key in self._pending:
                return
            self._pending.add(key)
            self._seq += 1
            heapq.heappush(self._due, (self._clock() + delay, self._seq, key))
            self._wake.notify_all()

    def adopt_context(self, context: contextvars.Context) -> None:
        """Run later passes in a copy of `context` (kopf's Event poster is found through it)."""
        with self._wake:
            if self._context is None:
                self._context = context

    def start(self) -> None:
        """Start the thread (once: a second call while it runs does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._wake:
            self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after the pass it is in, if any."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _next_batch(self) -> tuple[list[K], bool] | None:
        """Wait for due retries or the periodic tick; None once stopped."""
        with self._wake:
            while not self._stopped:
                now = self._clock()
                due = []
                while self._due and self._due[0][0] <= now:
                    key = heapq.heappop(self._due)[2]
                    self._pending.discard(key)
                    due.append(key)
                tick = now >= self._next_tick
                if due or tick:
                    return due, tick
                deadline = min(self._next_tick, self._due[0][0] if self._due else float("inf"))
                self._wake.wait(timeout=None if deadline == float("inf") else deadline - now)
            return None

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            due, tick = batch
            with self._wake:
                context = self._context
            if context is not None:
                context.copy().run(self._work, due, tick)
            else:
                self._work(due, tick)

    def _work(self, due: list[K], tick: bool) -> None:
        try:
            if not self._active():
                # Paused (another operator instance is active): look again later.
                for key in due:
                    self.later(key, max(self._interval, 1.0) if self._interval > 0 else 10.0)
                return
            keys = list(due)
            if tick:
                keys.extend(k for k in self._list_keys() if k not in due)
            # One key at a time in this one thread: a resync never adds more than one pass to
            # the load, and a large fleet stretches the period instead of the API server.
            for key in keys:
                try:
                    if self._mark is not None:
                        self._mark(key)
                    self._queue.add(key)
                except Exception:  # one key's failure must not starve the others
                    log.exception("resyncing %s failed", key)
        except Exception:
            log.exception("periodic resync failed; trying again at the next tick")
        finally:
            if tick:
                with self._wake:
                    self._next_tick = self._clock() + self._interval
