"""The smoke gate: run spec.rollout.gate's prompts against one new pod, and set its condition.

A pod whose template carries the readiness gate `moorage.dev/gate-passed` is Ready only once
that condition is True. Its containers become ready first (the service's own /readyz); then the
operator sends each prompt to that pod's own IP (never the Service, which would answer from the
old pods) and writes the verdict. A pod that fails never gets traffic, so a rolling update with
maxUnavailable 0 stops with the old pods serving, and the rollout judge (rollback.py) reverts it.

Runs are bounded: each prompt by its latency bound, each pod by the sum, and at most
`GateRunner.workers` pods at once, in threads of their own (never a kopf worker or the queue).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent_operator import contract
from agent_operator.builders import GATE_ANNOTATION, GATE_CONDITION
from agent_operator.spec import GatePrompt, InvalidSpecError, parse_spec

log = logging.getLogger(__name__)

# A transport error or a slow answer is tried once more (a fresh process's first request can be
# slow); a wrong answer is not (the echo model, and a regression, are deterministic).
ATTEMPTS = 2
RETRY_PAUSE_SECONDS = 1.0
CLEANUP_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Answer:
    """What one prompt got back: HTTP status, the reply text (or an error) and the latency."""

    status: int
    reply: str
    session_id: str | None
    seconds: float


@dataclass(frozen=True)
class Verdict:
    """The gate's result for one pod."""

    passed: bool
    message: str
    seconds: float


def judge(prompt: GatePrompt, answer: Answer) -> str | None:
    """Why the answer fails the prompt, or None when it passes (pure)."""
    if answer.status != 200:
        return f"answered HTTP {answer.status}: {answer.reply[:200]}"
    if answer.seconds * 1000 > prompt.max_latency_ms:
        return f"took {answer.seconds * 1000:.0f} ms, over maxLatencyMs {prompt.max_latency_ms}"
    if prompt.contains is not None and prompt.contains not in answer.reply:
        return f"reply {answer.reply[:200]!r} does not contain {prompt.contains!r}"
    if prompt.matches is not None and re.search(prompt.matches, answer.reply) is None:
        return f"reply {answer.reply[:200]!r} does not match {prompt.matches!r}"
    return None


def _retryable(prompt: GatePrompt, answer: Answer) -> bool:
    return (
        answer.status == 0
        or answer.status >= 500
        or (answer.status == 200 and answer.seconds * 1000 > prompt.max_latency_ms)
    )


def ask(
    base_url: str,
    prompt: GatePrompt,
    clock: Callable[[], float] = time.monotonic,
    *,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """POST the prompt to /v1/chat, bounded by its latency limit; errors become status 0."""
    # base_url is always http://<pod IP>:<port> (pod_url), never a user-given scheme.
    request = urllib.request.Request(  # noqa: S310
        f"{base_url}/v1/chat",
        data=json.dumps({"message": prompt.message}).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    timeout = prompt.max_latency_ms / 1000
    started = clock()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: Any = json.loads(response.read() or b"{}")
            status = int(response.status)
    except urllib.error.HTTPError as err:
        text = err.read(512).decode(errors="replace")
        return Answer(err.code, text, None, clock() - started)
    except (OSError, ValueError) as err:  # refused, reset, timed out, not JSON
        return Answer(0, f"{type(err).__name__}: {err}", None, clock() - started)
    seconds = clock() - started
    if not isinstance(body, Mapping):
        return Answer(0, "the reply is not a JSON object", None, seconds)
    session = body.get("session_id")
    return Answer(status, str(body.get("reply", "")), str(session) if session else None, seconds)


def forget(base_url: str, session_id: str, *, headers: Mapping[str, str] | None = None) -> None:
    """Delete the session a prompt made, so gate runs leave nothing in the store."""
    url = f"{base_url}/v1/sessions/{session_id}"
    request = urllib.request.Request(url, headers=dict(headers or {}), method="DELETE")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=CLEANUP_TIMEOUT_SECONDS):  # noqa: S310
            pass
    except OSError as err:
        log.debug("could not delete gate session %s: %s", session_id, err)


def run_gate(
    base_url: str,
    prompts: Sequence[GatePrompt],
    *,
    send: Callable[[str, GatePrompt], Answer] = ask,
    cleanup: Callable[[str, str], None] = forget,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Verdict:
    """Every prompt in order; the first failure ends the run."""
    started = clock()
    for index, prompt in enumerate(prompts):
        for attempt in range(1, ATTEMPTS + 1):
            answer = send(base_url, prompt)
            if answer.session_id:
                cleanup(base_url, answer.session_id)
            problem = judge(prompt, answer)
            if problem is None or attempt == ATTEMPTS or not _retryable(prompt, answer):
                break
            sleep(RETRY_PAUSE_SECONDS)
        if problem is not None:
            return Verdict(False, f"prompt {index + 1} ({prompt.message[:60]!r}): {problem}",
                           clock() - started)  # fmt: skip
    seconds = clock() - started
    return Verdict(True, f"{len(prompts)} prompt(s) passed in {seconds:.2f}s", seconds)


def _condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def has_gate(pod: Mapping[str, Any]) -> bool:
    """Whether the pod carries our readiness gate."""
    gates = (pod.get("spec") or {}).get("readinessGates") or ()
    return any(g.get("conditionType") == GATE_CONDITION for g in gates)


def gate_status(pod: Mapping[str, Any]) -> str | None:
    """ "True"/"False" once the gate has judged this pod, else None."""
    status = _condition(pod, GATE_CONDITION).get("status")
    return str(status) if status in ("True", "False") else None


def needs_gate(pod: Mapping[str, Any]) -> bool:
    """A gated pod, not judged yet, whose containers are ready and which has an IP (pure)."""
    status = pod.get("status") or {}
    return (
        has_gate(pod)
        and gate_status(pod) is None
        and not pod.get("metadata", {}).get("deletionTimestamp")
        and status.get("phase") == "Running"
        and bool(status.get("podIP"))
        and _condition(pod, "ContainersReady").get("status") == "True"
    )


def prompts_of(pod: Mapping[str, Any]) -> tuple[GatePrompt, ...]:
    """The gate prompts a pod's template carried (its revision's gate)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(GATE_ANNOTATION)
    try:
        prompts = json.loads(raw) if raw else []
        return parse_spec({"rollout": {"gate": {"prompts": prompts}}}).rollout.gate
    except (ValueError, InvalidSpecError):
        return ()


def api_keys_secret(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Secret, key) of the clients' API keys file the pod mounts, when it requires API keys."""
    path, _ = contract.secret_file("apiKeys")
    for volume in (pod.get("spec") or {}).get("volumes") or ():
        for source in (volume.get("projected") or {}).get("sources") or ():
            secret = source.get("secret") or {}
            for item in secret.get("items") or ():
                if item.get("path") == path:
                    return str(secret.get("name")), str(item.get("key"))
    return None


def first_client_key(keys_file: str) -> str | None:
    """The key of the first `client-name:key` line of an API keys file (the service's format)."""
    for raw in keys_file.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key = line.partition(":")[2].strip()
            return key or None
    return None


def pod_url(pod: Mapping[str, Any], port: int) -> str:
    """http://<pod IP>:<port>, IPv6 in brackets."""
    ip = str((pod.get("status") or {}).get("podIP", ""))
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def condition(verdict: Verdict, now: str) -> dict[str, Any]:
    """The pod condition that records a verdict."""
    return {
        "type": GATE_CONDITION,
        "status": "True" if verdict.passed else "False",
        "reason": "GatePassed" if verdict.passed else "GateFailed",
        "message": verdict.message,
        "lastTransitionTime": now,
    }


class GateRunner:
    """A bounded pool of gate runs, at most one per pod at a time."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._running: set[str] = set()
        self._guard = threading.Lock()

    def submit(self, uid: str, work: Callable[[], None]) -> bool:
        """Run `work` for pod `uid` in the pool; False when that pod's run is already queued."""
        with self._guard:
            if uid in self._running:
                return False
            self._running.add(uid)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gate")
            pool = self._pool
        pool.submit(self._run, uid, work)
        return True

    def _run(self, uid: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # one pod's failure must not stop the pool; the next event retries
            log.exception("the gate run of pod %s failed", uid)
        finally:
            with self._guard:
                self._running.discard(uid)

    def running(self) -> set[str]:
        """Pods whose run is queued or in progress (tests, debugging)."""
        with self._guard:
            return set(self._running)

    def shutdown(self) -> None:
        """Let running gates finish; drop queued ones (the pods' next events bring them back)."""
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
