"""Judge a rollout and revert a failed one to the last revision that completed (pure).

A revision is one pod template (its `moorage.dev/template-hash`). A rollout of the spec's
revision fails when one of its pods fails the smoke gate, crash-loops or cannot get its image,
or when the Deployment exceeds its progress deadline. With `spec.rollout.autoRollback` the
children are then built from the last spec that completed a rollout (`status.lastGood`), while
the user's spec stays as written; that generation is not retried until the spec changes.
`status.history` keeps the last revisions with their outcome.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_operator.builders import GATE_CONDITION, TEMPLATE_HASH_ANNOTATION
from agent_operator.gate import gate_status
from agent_operator.spec import AgentSpec, InvalidSpecError, parse_spec
from agent_operator.status import Problem

log = logging.getLogger(__name__)

Obj = dict[str, Any]
HISTORY_LIMIT = 5
# A new pod whose container has restarted this often (or is in CrashLoopBackOff) has failed.
CRASH_RESTARTS = 2
IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
FAILED_OUTCOMES = ("RolledBack", "Failed")


@dataclass(frozen=True)
class Failure:
    """Why a rollout failed, as the Event and the status say it."""

    reason: str
    message: str


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return str(value) if value is not None else None


def revision_of_pod(pod: Mapping[str, Any]) -> str | None:
    """The revision (template hash) a pod was made from."""
    return _annotation(pod, TEMPLATE_HASH_ANNOTATION)


def revision_of_deployment(deployment: Mapping[str, Any]) -> str | None:
    """The revision the Deployment's template is at."""
    template = (deployment.get("spec") or {}).get("template") or {}
    return _annotation(template, TEMPLATE_HASH_ANNOTATION)


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _last_words(text: str, limit: int = 300) -> str:
    """The end of a termination message (the last log lines), on one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "…" + flat[-limit:]


def pod_failure(pod: Mapping[str, Any]) -> Failure | None:
    """Why this pod cannot become a serving pod of its revision, or None."""
    name = (pod.get("metadata") or {}).get("name", "?")
    if gate_status(pod) == "False":
        said = _condition(pod, GATE_CONDITION).get("message", "")
        return Failure("GateFailed", f"pod {name} failed the smoke gate: {said}")
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_REASONS:
            return Failure(
                "ImageUnavailable",
                f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "),
            )
        restarts = int(status.get("restartCount", 0))
        if waiting.get("reason") == "CrashLoopBackOff" or restarts >= CRASH_RESTARTS:
            last = (status.get("lastState") or {}).get("terminated") or {}
            why = f"exited with code {last.get('exitCode', '?')} ({last.get('reason', 'unknown')})"
            words = _last_words(str(last.get("message") or ""))
            return Failure(
                "CrashLoop",
                f"pod {name}: container {status.get('name')} {why}, restarted {restarts} "
                f"time(s)" + (f"; its last output: {words}" if words else ""),
            )
    return None


def rollout_failure(
    deployment: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], revision: str
) -> Failure | None:
    """Why the rollout of `revision` failed, or None while it may still succeed."""
    for pod in pods:
        if revision_of_pod(pod) != revision or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        failure = pod_failure(pod)
        if failure is not None:
            return failure
    if deployment is not None and revision_of_deployment(deployment) == revision:
        progressing = _condition(deployment, "Progressing")
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return Failure(
                "ProgressDeadlineExceeded",
                f"the Deployment made no progress within its deadline: "
                f"{progressing.get('message', '')}".rstrip(": "),
            )
    return None


@dataclass
class Decision:
    """What this reconciliation builds, and what the status and Events say about the rollout."""

    spec: AgentSpec  # the spec the children are built from (the last good one when rolled back)
    history: list[Obj]
    last_good: Obj | None
    degraded: Problem | None = None
    event: Failure | None = None  # a Warning to post now (a rollback or a failure, once)
    reverted_now: bool = False  # a rollback decided in this pass: apply every child


def good_spec(last_good: Mapping[str, Any] | None, current: AgentSpec) -> AgentSpec | None:
    """The last good spec with the current scale (replicas and autoscaling are not a version)."""
    if not last_good or not isinstance(last_good.get("spec"), Mapping):
        return None
    try:
        good = parse_spec(last_good["spec"])
    except InvalidSpecError as exc:
        log.warning("status.lastGood.spec no longer parses (%s); cannot roll back", exc)
        return None
    return dataclasses.replace(good, replicas=current.replicas, autoscaling=current.autoscaling)


def _entry(history: Sequence[Mapping[str, Any]], revision: str) -> Obj | None:
    return next((dict(e) for e in history if e.get("revision") == revision), None)


def _record(history: Sequence[Mapping[str, Any]], entry: Obj) -> list[Obj]:
    """`entry` first; an older revision still Progressing became Superseded; capped."""
    rest = []
    for old in history:
        if old.get("revision") == entry["revision"]:
            continue
        if old.get("outcome") == "Progressing":
            old = {**old, "outcome": "Superseded"}
        rest.append(dict(old))
    return [entry, *rest][:HISTORY_LIMIT]


def held(previous: Mapping[str, Any], revision: str, generation: int) -> bool:
    """Whether `revision` was rolled back at this very generation (so it is not retried)."""
    entry = _entry(previous.get("history") or (), revision)
    return bool(
        entry and entry.get("outcome") == "RolledBack" and entry.get("generation") == generation
    )


def decide(
    *,
    spec: AgentSpec,
    raw_spec: Mapping[str, Any],
    revision: str,
    generation: int,
    previous: Mapping[str, Any],
    complete: bool,
    failure: Failure | None,
    now: str,
) -> Decision:
    """The rollout's bookkeeping for the spec's `revision` at `generation`.

    `complete`: the Deployment runs `revision` on every desired replica, all available.
    `failure`: why its rollout failed (rollout_failure), if it did.
    """
    history = [dict(e) for e in previous.get("history") or ()]
    last_good = dict(previous["lastGood"]) if previous.get("lastGood") else None
    entry = _entry(history, revision)
    good = good_spec(last_good, spec)

    def entry_now(outcome: str, reason: str = "", message: str = "") -> Obj:
        same = entry is not None and entry.get("outcome") == outcome
        return {
            "revision": revision,
            "image": spec.image,
            "generation": generation,
            "outcome": outcome,
            "reason": reason,
            "message": message,
            "time": entry.get("time", now) if same and entry else now,
        }

    # Rolled back at this generation: hold the last good revision until the spec changes.
    if entry is not None and held(previous, revision, generation) and good is not None:
        problem = Problem("RolledBack", str(entry.get("message", "")))
        return Decision(good, history, last_good, degraded=problem)

    if last_good is not None and last_good.get("revision") == revision:
        failure = None  # proven good already: a later crash is not a failed rollout
    if complete:
        new = entry_now("Complete")
        good_now = {"revision": revision, "image": spec.image, "generation": generation,
                    "spec": dict(raw_spec)}  # fmt: skip
        return Decision(spec, _record(history, new), good_now)

    if failure is not None:
        can_revert = (
            spec.rollout.auto_rollback
            and good is not None
            and last_good is not None
            and last_good.get("revision") != revision
        )
        if can_revert and last_good is not None and good is not None:
            message = (
                f"rolled back from {spec.image} to {last_good.get('image')}: {failure.message}. "
                "The spec stays as written; this generation is not retried until the spec changes"
            )
            new = entry_now("RolledBack", failure.reason, message)
            return Decision(
                good,
                _record(history, new),
                last_good,
                degraded=Problem("RolledBack", message),
                event=Failure("RolledBack", message),
                reverted_now=True,
            )
        why = (
            "autoRollback is off"
            if not spec.rollout.auto_rollback
            else "no earlier revision completed a rollout"
        )
        message = f"the rollout of {spec.image} failed: {failure.message} (not rolled back: {why})"
        announced = entry is not None and entry.get("outcome") == "Failed"
        new = entry_now("Failed", failure.reason, message)
        return Decision(
            spec,
            _record(history, new),
            last_good,
            degraded=Problem(failure.reason, message),
            event=None if announced else Failure(failure.reason, message),
        )

    if (
        entry is not None
        and entry.get("outcome") == "Failed"
        and entry.get("generation") == (generation)
    ):
        # Failed and not reverted: stays Degraded until it completes after all or the spec changes.
        problem = Problem(str(entry.get("reason") or "RolloutFailed"), str(entry.get("message")))
        return Decision(spec, history, last_good, degraded=problem)
    if entry is not None and entry.get("outcome") in ("Progressing", "Complete"):
        # Complete but not (or no longer) at full strength: not a new rollout, keep the record.
        return Decision(spec, history, last_good)
    return Decision(spec, _record(history, entry_now("Progressing")), last_good)
