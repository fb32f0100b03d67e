"""Status of an AgentDeployment, computed from its spec and its Deployment (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_operator.builders import selector_string
from agent_operator.spec import AgentSpec

RECENT_IMAGES = 5

Obj = dict[str, Any]


@dataclass(frozen=True)
class Problem:
    """Why the operator could not make the children match the spec."""

    reason: str
    message: str


def _condition(type_: str, status: bool, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(new: Sequence[Obj], old: Sequence[Mapping[str, Any]], now: str) -> list[Obj]:
    """Stamp lastTransitionTime, keeping the old one where a condition's status did not flip."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        unchanged = before is not None and before.get("status") == cond["status"]
        stamp = before.get("lastTransitionTime") if unchanged and before else None
        merged.append({**cond, "lastTransitionTime": stamp or now})
    return merged


def recent_images(previous: Sequence[str], image: str) -> list[str]:
    """The newest image first, each once, at most RECENT_IMAGES long."""
    return [image, *[i for i in previous if i != image]][:RECENT_IMAGES]


def _deployment_condition(deployment: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in deployment.get("status", {}).get("conditions") or ():
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def desired_replicas(spec: AgentSpec, deployment: Mapping[str, Any] | None) -> int:
    """spec.replicas, or the HPA's choice (the Deployment's replicas) while autoscaling."""
    if spec.autoscaling.enabled:
        dep_spec: Mapping[str, Any] = (deployment or {}).get("spec") or {}
        return int(dep_spec.get("replicas", spec.autoscaling.min_replicas))
    return spec.replicas


def rollout_complete(deployment: Mapping[str, Any] | None, desired: int) -> bool:
    """The Deployment controller saw the latest template and every desired pod runs it."""
    if deployment is None:
        return False
    dep_status: Mapping[str, Any] = deployment.get("status") or {}
    dep_generation = int(deployment.get("metadata", {}).get("generation", 0))
    return (
        int(dep_status.get("observedGeneration", 0)) >= dep_generation
        and int(dep_status.get("updatedReplicas", 0)) >= desired
        and int(dep_status.get("replicas", 0)) <= int(dep_status.get("updatedReplicas", 0))
        and int(dep_status.get("availableReplicas", 0)) >= desired
    )


def compute_status(
    *,
    name: str,
    spec: AgentSpec,
    generation: int,
    deployment: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
    problem: Problem | None,
    now: str,
) -> Obj:
    """The full status block: counts, selector, conditions, state and recent images."""
    dep_status: Mapping[str, Any] = (deployment or {}).get("status") or {}
    desired = desired_replicas(spec, deployment)
    replicas = int(dep_status.get("replicas", 0))
    ready = int(dep_status.get("readyReplicas", 0))
    updated = int(dep_status.get("updatedReplicas", 0))
    available = int(dep_status.get("availableReplicas", 0))
    rolled_out = rollout_complete(deployment, desired)
    all_ready = rolled_out and ready >= desired
    stuck = _deployment_condition(deployment or {}, "Progressing").get("reason") == (
        "ProgressDeadlineExceeded"
    )

    if problem is not None:
        degraded = _condition("Degraded", True, problem.reason, problem.message, generation)
    elif stuck:
        degraded = _condition(
            "Degraded",
            True,
            "ProgressDeadlineExceeded",
            "the Deployment's rollout exceeded its progress deadline; check the pods' events",
            generation,
        )
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", generation)

    counts = f"{ready}/{desired} replicas ready, {updated} updated"
    if problem is not None:
        progressing = _condition("Progressing", False, problem.reason, problem.message, generation)
    elif deployment is None:
        progressing = _condition(
            "Progressing", True, "Creating", "creating the Deployment", generation
        )
    elif not rolled_out:
        progressing = _condition("Progressing", True, "RollingOut", counts, generation)
    else:
        progressing = _condition("Progressing", False, "RolloutComplete", counts, generation)

    if all_ready and problem is None:
        ready_cond = _condition("Ready", True, "AllReplicasReady", counts, generation)
    elif problem is not None:
        ready_cond = _condition("Ready", False, problem.reason, problem.message, generation)
    else:
        ready_cond = _condition("Ready", False, "ReplicasNotReady", counts, generation)

    if degraded["status"] == "True":
        state = "Degraded"
    elif ready_cond["status"] == "True":
        state = "Ready"
    else:
        state = "Progressing"

    images = list(previous.get("recentImages") or ())
    if problem is None:
        images = recent_images(images, spec.image)
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "desiredReplicas": desired,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "selector": selector_string(name),
        "state": state,
        "conditions": merge_conditions(
            [ready_cond, progressing, degraded], previous.get("conditions") or (), now
        ),
        "recentImages": images,
    }
