"""Turns under load across a store failover, and the checks every failover test makes.

The load runs against real service processes; the failover (killing a Redis master) is the
caller's. Every turn has a unique message, so the stored histories show which turns survived.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent_service.schemas import HISTORY_PAGE_MAX
from tests.integration.conftest import SECRET

# Turns that must succeed before the master is killed (the load is in full swing), and after
# it (on the sessions the kill hit) before the load stops; the load never runs longer than this.
OK_BEFORE_KILL = 100
OK_AFTER_KILL = 60
LOAD_BOUND_S = 90.0


def redis_process(
    binary: str, port: int, workdir: Path, *extra: str, host: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    """A redis-server on `host` (loopback unless told) with the test password (also for its
    replication link)."""
    workdir.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", host,
            "--save", "",
            "--appendonly", "no",
            "--requirepass", SECRET,
            "--masterauth", SECRET,
            "--dir", str(workdir),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


# A turn is two store calls of at most AGENT_STORE_TIMEOUT_S each; far above that is a hang.
CLIENT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Turn:
    """One request of the load and how it ended."""

    session_id: str
    message: str
    status: int
    error: str | None
    started: float
    ended: float


@dataclass
class Load:
    """Turns over `sessions` spread over `urls`, until `stop()` says so."""

    urls: list[str]
    sessions: list[str]
    concurrency: int = 8
    turns: list[Turn] = field(default_factory=list)

    async def run(self, stop: Callable[[Load], bool]) -> None:
        """Drive turns from `concurrency` workers until `stop(self)` is true."""
        counter = itertools.count()
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:

            async def worker(offset: int) -> None:
                while not stop(self):
                    n = next(counter)
                    session_id = self.sessions[(n + offset) % len(self.sessions)]
                    await self._turn(client, self.urls[n % len(self.urls)], session_id, n)

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    async def _turn(self, client: httpx.AsyncClient, url: str, session_id: str, n: int) -> None:
        message = f"turn {n} of {session_id}"
        started = time.monotonic()
        try:
            response = await client.post(
                url + "/v1/chat", json={"session_id": session_id, "message": message}
            )
        except httpx.HTTPError as err:
            self.turns.append(Turn(session_id, message, 0, repr(err), started, time.monotonic()))
            return
        error = None if response.status_code == 200 else response.json().get("error")
        self.turns.append(
            Turn(session_id, message, response.status_code, error, started, time.monotonic())
        )
        # Not too hot: two CPU cores run the store, the services and this load.
        await asyncio.sleep(0.01)

    def ok(self) -> list[Turn]:
        return [t for t in self.turns if t.status == 200]

    def ok_since(self, moment: float) -> list[Turn]:
        return [t for t in self.ok() if t.started >= moment]


def kill_under_load(
    load: Load, kill: Callable[[], None], affected: Collection[str] | None = None
) -> float:
    """Run `load`, call `kill` once it is in full swing; the moment of the kill.

    The load stops once OK_AFTER_KILL turns of the `affected` sessions (default: all) that
    started after the kill succeeded, or LOAD_BOUND_S after the kill.
    """
    killed_at: list[float] = []

    def stop(load: Load) -> bool:
        if not killed_at:
            if len(load.ok()) >= OK_BEFORE_KILL:
                kill()
                killed_at.append(time.monotonic())
            return False
        recovered = recovered_turns(load, killed_at[0], affected)
        return len(recovered) >= OK_AFTER_KILL or time.monotonic() - killed_at[0] > LOAD_BOUND_S

    asyncio.run(load.run(stop))
    assert killed_at, f"the load never reached {OK_BEFORE_KILL} turns answered 200"
    return killed_at[0]


def recovered_turns(
    load: Load, killed_at: float, affected: Collection[str] | None = None
) -> list[Turn]:
    """Turns of the `affected` sessions (default: all) started after the kill that got 200."""
    return [t for t in load.ok_since(killed_at) if affected is None or t.session_id in affected]


@dataclass(frozen=True)
class FailoverFigures:
    """What a failover test measured (reported, never asserted against a time)."""

    acknowledged: int
    unavailable: int
    kill_to_first_200_s: float

    def line(self) -> str:
        return (
            f"{self.acknowledged} acknowledged turns, all stored; {self.unavailable} answered "
            f"503; master killed -> first 200 in {self.kill_to_first_200_s:.2f} s"
        )


def assert_failover_lost_nothing(
    load: Load,
    killed_at: float,
    history_url: str,
    services: Collection[subprocess.Popen[bytes]],
    affected: Collection[str] | None = None,
) -> FailoverFigures:
    """The checks of every failover test; `affected`: the sessions the kill hit (default all).

    Every turn answered 200 or 503 `store-unavailable`; a request met the failover; turns of
    the affected sessions succeed again; every 200 is in its session's stored history; and
    no service process restarted.
    """
    unavailable = assert_only_200_or_store_unavailable(load)
    recovered = recovered_turns(load, killed_at, affected)
    assert recovered, "no turn of the sessions the kill hit succeeded after the failover"
    assert any(t.ended >= killed_at for t in unavailable), "no request met the failover"
    acknowledged, missing = missing_acknowledged_turns(history_url, load)
    assert not missing, f"{len(missing)} of {acknowledged} acknowledged turns lost: {missing[:5]}"
    assert all(proc.poll() is None for proc in services), "a service restarted"
    return FailoverFigures(
        acknowledged, len(unavailable), min(t.ended for t in recovered) - killed_at
    )


def assert_only_200_or_store_unavailable(load: Load) -> list[Turn]:
    """Every turn answered 200 or 503 `store-unavailable` (never 500, never a hang)."""
    expected = {(200, None), (503, "store-unavailable")}
    bad = [t for t in load.turns if (t.status, t.error) not in expected]
    assert not bad, f"{len(bad)} turns ended otherwise, e.g. {bad[:5]}"
    return [t for t in load.turns if t.status == 503]


def missing_acknowledged_turns(url: str, load: Load) -> tuple[int, list[Turn]]:
    """(turns answered 200, those whose message is not in their session's stored history)."""
    stored: dict[str, set[str]] = {}
    with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
        for session_id in {t.session_id for t in load.ok()}:
            response = client.get(
                f"{url}/v1/sessions/{session_id}", params={"limit": HISTORY_PAGE_MAX}
            )
            assert response.status_code == 200, response.text
            stored[session_id] = {
                m["content"] for m in response.json()["messages"] if m["role"] == "user"
            }
    ok = load.ok()
    return len(ok), [t for t in ok if t.message not in stored[t.session_id]]


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Show a measurement in the test run's output (measured, never asserted)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{request.node.name}: {line}")
