"""Bring an AgentDeployment's children in line with its spec, and report what happened."""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from agent_operator import kube
from agent_operator.builders import (
    DEPLOYMENT,
    MANAGER,
    ChildKind,
    Owner,
    build_children,
)
from agent_operator.drift import drifted_fields
from agent_operator.spec import AgentSpec, InvalidSpecError, parse_spec, validate
from agent_operator.status import Problem, compute_status

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IMAGE_PATH = ".spec.template.spec.containers[0].image"
SECRET_REASONS = ("SecretNotFound", "SecretKeyNotFound")

# One reconciliation per AgentDeployment at a time: spec handlers and child watches
# run in kopf's thread pool and would otherwise interleave applies of the same children.
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def lock_for(namespace: str, name: str) -> threading.Lock:
    """The lock serialising work on one AgentDeployment."""
    with _locks_guard:
        return _locks[(namespace, name)]


@dataclass
class Notice:
    """An Event to post on the AgentDeployment (kept out of the pure logic)."""

    warning: bool
    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconciliation did: its Events, its problem (if any) and the new status."""

    notices: list[Notice] = field(default_factory=list)
    problem: Problem | None = None
    status: Obj | None = None
    retry: bool = False


def now_iso() -> str:
    """The current time as Kubernetes writes it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_of(body: Mapping[str, Any]) -> Owner:
    """The Owner handle of an AgentDeployment body."""
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def degraded_reason(status: Mapping[str, Any]) -> str | None:
    """The reason of a true Degraded condition, else None."""
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Degraded" and cond.get("status") == "True":
            return str(cond.get("reason"))
    return None


def check_spec(raw: Mapping[str, Any]) -> tuple[AgentSpec | None, Problem | None]:
    """Parse and validate; an invalid spec becomes an InvalidSpec problem."""
    try:
        spec = parse_spec(raw)
    except InvalidSpecError as exc:
        return None, Problem("InvalidSpec", str(exc))
    problems = validate(spec)
    if problems:
        return spec, Problem("InvalidSpec", "; ".join(problems))
    return spec, None


def check_secrets(namespace: str, spec: AgentSpec) -> Problem | None:
    """A problem naming the first referenced Secret or key that does not exist."""
    for ref in spec.secret_refs():
        keys = kube.secret_keys(namespace, ref.name)
        if keys is None:
            return Problem(
                "SecretNotFound",
                f"Secret {namespace}/{ref.name} does not exist; create it (with key "
                f"{ref.key!r}) and the operator continues on its own",
            )
        if ref.key not in keys:
            return Problem(
                "SecretKeyNotFound",
                f"Secret {namespace}/{ref.name} has no key {ref.key!r}; "
                f"it has {sorted(keys) or 'no keys'}",
            )
    return None


def _hand_replicas_to_hpa(live: Obj) -> None:
    """Before we stop applying replicas, pin them under another manager so they stay put."""
    if not kube.owns_field(live, MANAGER, "spec", "replicas"):
        return
    meta = live["metadata"]
    kube.apply(
        DEPLOYMENT,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": live.get("spec", {}).get("replicas", 1)},
        },
        manager=kube.HANDOFF_MANAGER,
    )


def _apply_child(kind: ChildKind, desired: Obj, spec: AgentSpec, live: Obj | None) -> Obj:
    if kind is DEPLOYMENT and spec.autoscaling.enabled and live is not None:
        _hand_replicas_to_hpa(live)
    return kube.apply(kind, desired)


def _drift_notice(
    kind: ChildKind, name: str, paths: list[str], status: Mapping[str, Any]
) -> Notice:
    if kind is DEPLOYMENT and IMAGE_PATH in paths:
        previous = ", ".join(status.get("recentImages") or ()) or "none recorded"
        return Notice(
            True,
            "RollbackReverted",
            f"Deployment/{name} was rolled back outside the spec (e.g. kubectl rollout undo); "
            f"restored spec.image. To roll back, set spec.image to a previous image "
            f"(recent images: {previous}).",
        )
    shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
    return Notice(
        False, "DriftRestored", f"{kind.kind}/{name} was edited by hand; restored {shown}"
    )


def advisories(spec: AgentSpec, replicas_changed: bool) -> list[Notice]:
    """Warnings about a valid spec that will not do what its author may expect."""
    notices = []
    if spec.autoscaling.enabled and replicas_changed:
        notices.append(
            Notice(
                True,
                "ReplicasIgnored",
                "spec.replicas changed but autoscaling is on: the HPA sets the pod count "
                f"(between {spec.autoscaling.min_replicas} and {spec.autoscaling.max_replicas})",
            )
        )
    many = spec.autoscaling.enabled or spec.replicas > 1
    memory = spec.session.url_secret_ref is None and (spec.session.url or "memory://").startswith(
        "memory://"
    )
    if many and memory:
        notices.append(
            Notice(
                True,
                "SessionsNotShared",
                "more than one replica with memory:// sessions: each pod keeps its own, so a "
                "conversation breaks when requests move between pods; set session.url or "
                "session.urlSecretRef to a Redis",
            )
        )
    return notices


def reconcile(
    body: Mapping[str, Any],
    *,
    full: bool,
    live_child: tuple[ChildKind, Obj | None] | None = None,
    replicas_changed: bool = False,
) -> Outcome:
    """Apply the children and compute the status.

    full=True (create/update/resume): apply every child from the spec.
    full=False (child watch): compare live children with the spec and restore only
    those that drifted or vanished; `live_child` passes the object a watch event carried.
    """
    owner = owner_of(body)
    generation = int(body["metadata"].get("generation", 1))
    previous: Mapping[str, Any] = body.get("status") or {}
    outcome = Outcome()
    spec, problem = check_spec(body.get("spec") or {})
    if spec is None or problem is not None:
        outcome.problem = problem
        if full:
            outcome.notices.append(Notice(True, "InvalidSpec", problem.message if problem else ""))
        if spec is not None:
            outcome.status = _status(owner, spec, generation, previous, problem)
        return outcome
    problem = check_secrets(owner.namespace, spec)
    if problem is not None:
        outcome.problem = problem
        outcome.retry = True
        if degraded_reason(previous) != problem.reason:  # once, not on every retry
            outcome.notices.append(Notice(True, problem.reason, problem.message))
        outcome.status = _status(owner, spec, generation, previous, problem)
        return outcome

    if full:
        outcome.notices.extend(advisories(spec, replicas_changed))
    deployment: Obj | None = None
    for kind, name, desired in build_children(owner, spec):
        if live_child is not None and live_child[0] is not kind:
            continue
        try:
            deployment = (
                _sync_child(kind, name, desired, spec, full, live_child, previous, outcome, owner)
                or deployment
            )
        except ApiException as exc:
            if exc.status in (400, 422):
                outcome.problem = Problem(
                    "InvalidSpec",
                    f"the API server rejected {kind.kind}/{name}: {kube.error_message(exc)}",
                )
                outcome.notices.append(Notice(True, "InvalidSpec", outcome.problem.message))
                break
            raise
    if deployment is None and outcome.problem is None:
        deployment = kube.get(DEPLOYMENT, owner.namespace, owner.name)
    outcome.status = _status(owner, spec, generation, previous, outcome.problem, deployment)
    return outcome


def _sync_child(
    kind: ChildKind,
    name: str,
    desired: Obj | None,
    spec: AgentSpec,
    full: bool,
    live_child: tuple[ChildKind, Obj | None] | None,
    previous: Mapping[str, Any],
    outcome: Outcome,
    owner: Owner,
) -> Obj | None:
    """Apply, restore or delete one child; returns the live Deployment when it is one."""
    if live_child is not None:
        live = live_child[1]
    elif full and desired is not None and kind is not DEPLOYMENT:
        live = None  # not needed: apply is idempotent and nothing here depends on it
    else:
        live = kube.get(kind, owner.namespace, name)
    if desired is None:
        if (live is not None or full) and kube.delete(kind, owner.namespace, name):
            outcome.notices.append(
                Notice(False, "Deleted", f"deleted {kind.kind}/{name}: no longer in the spec")
            )
        return None
    if full:
        result = _apply_child(kind, desired, spec, live)
        return result if kind is DEPLOYMENT else None
    if live_child is not None and (live is None or drifted_fields(desired, live)):
        # The event may predate our own last apply: judge drift on the object as it is now.
        live = kube.get(kind, owner.namespace, name)
    if live is None:
        result = _apply_child(kind, desired, spec, live)
        outcome.notices.append(
            Notice(True, "ChildRecreated", f"{kind.kind}/{name} was deleted; recreated it")
        )
        return result if kind is DEPLOYMENT else None
    paths = drifted_fields(desired, live)
    if paths:
        result = _apply_child(kind, desired, spec, live)
        outcome.notices.append(_drift_notice(kind, name, paths, previous))
        return result if kind is DEPLOYMENT else None
    return live if kind is DEPLOYMENT else None


def _status(
    owner: Owner,
    spec: AgentSpec,
    generation: int,
    previous: Mapping[str, Any],
    problem: Problem | None,
    deployment: Obj | None = None,
) -> Obj:
    if deployment is None and problem is not None:
        deployment = kube.get(DEPLOYMENT, owner.namespace, owner.name)
    return compute_status(
        name=owner.name,
        spec=spec,
        generation=generation,
        deployment=deployment,
        previous=previous,
        problem=problem,
        now=now_iso(),
    )


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (avoids no-op status writes)."""
    return {k: v for k, v in old.items() if k in new} != dict(new)
