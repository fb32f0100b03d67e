"""Bring an AgentDeployment's children in line with its spec, and report what happened."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kubernetes.client.exceptions import ApiException

from agent_operator import kube
from agent_operator.builders import (
    DEPLOYMENT,
    MANAGER,
    TEMPLATE_HASH_ANNOTATION,
    ChildKind,
    Owner,
    build_children,
    pod_template,
    selector_string,
)
from agent_operator.drift import drifted_fields
from agent_operator.rollback import (
    Decision,
    decide,
    good_spec,
    held,
    revision_of_deployment,
    rollout_failure,
)
from agent_operator.spec import AgentSpec, InvalidSpecError, parse_spec, validate
from agent_operator.status import (
    Problem,
    compute_status,
    desired_replicas,
    rollout_complete,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IMAGE_PATH = ".spec.template.spec.containers[0].image"
SECRET_REASONS = ("SecretNotFound", "SecretKeyNotFound")


class Client(Protocol):
    """The API calls reconciliation makes (`agent_operator.kube` in production, fakes in tests)."""

    def apply(self, kind: ChildKind, obj: Mapping[str, Any], manager: str = ...) -> Obj:
        """Server-side apply as `manager`, forcing conflicts."""
        ...

    def get(self, kind: ChildKind, namespace: str, name: str) -> Obj | None:
        """The live child, or None."""
        ...

    def delete(self, kind: ChildKind, namespace: str, name: str) -> bool:
        """Delete a child; True when something was deleted."""
        ...

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """Key names of a Secret, or None when it does not exist."""
        ...

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        """The pods matching a label selector."""
        ...


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


def check_secrets(client: Client, namespace: str, spec: AgentSpec) -> Problem | None:
    """A problem naming the first referenced Secret or key that does not exist."""
    for ref in spec.secret_refs():
        keys = client.secret_keys(namespace, ref.name)
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


def _hand_replicas_to_hpa(client: Client, live: Obj) -> None:
    """Before we stop applying replicas, pin them under another manager so they stay put."""
    if not kube.owns_field(live, MANAGER, "spec", "replicas"):
        return
    meta = live["metadata"]
    client.apply(
        DEPLOYMENT,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": live.get("spec", {}).get("replicas", 1)},
        },
        manager=kube.HANDOFF_MANAGER,
    )


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
    client: Client,
    body: Mapping[str, Any],
    *,
    full: bool,
    live_children: Mapping[ChildKind, Obj | None] | None = None,
    replicas_changed: bool = False,
) -> Outcome:
    """Apply the children and compute the status.

    full=True (create/update/resume): apply every child from the spec.
    full=False (child watch, resync): compare live children with the spec and restore only
    those that drifted or vanished. `live_children` limits the pass to the children whose
    watch events arrived, with the bodies they carried (None: deleted); without it every child
    is read.
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
            outcome.status = _status(client, owner, spec, generation, previous, problem)
        return outcome
    problem = check_secrets(client, owner.namespace, spec)
    if problem is not None:
        outcome.problem = problem
        outcome.retry = True
        if degraded_reason(previous) != problem.reason:  # once, not on every retry
            outcome.notices.append(Notice(True, problem.reason, problem.message))
        outcome.status = _status(client, owner, spec, generation, previous, problem)
        return outcome

    if (
        not full
        and live_children is not None
        and DEPLOYMENT not in live_children
        and children_in_line(client, owner, standing_spec(owner, spec, generation, previous),
                             live_children)
    ):  # fmt: skip
        # Nothing the status or the rollout depends on changed (the Deployment's own events
        # carry those), and nothing drifted: no further reads, no writes.
        return outcome

    seen = (live_children or {}).get(DEPLOYMENT)
    decision, known = assess_rollout(
        client, owner, spec, body.get("spec") or {}, generation, previous, seen
    )
    if decision.event is not None:
        outcome.notices.append(Notice(True, decision.event.reason, decision.event.message))
    if decision.reverted_now:
        full, live_children = True, None  # every child back to the last good spec
    if full:
        outcome.notices.extend(advisories(spec, replicas_changed))
    deployment: Obj | None = None
    for kind, name, desired in build_children(owner, decision.spec):
        if live_children is not None and kind not in live_children:
            continue
        if kind is DEPLOYMENT and (full or live_children is None):
            live = known  # assess_rollout has just read it
        else:
            live = observe_child(client, kind, owner.namespace, name, desired, full, live_children)
        step = plan_child(kind, name, desired, live, full=full, status=previous)
        try:
            result = _carry_out(
                client, kind, owner.namespace, name, desired, live, decision.spec, step
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
        if result.notice is not None:
            outcome.notices.append(result.notice)
        if kind is DEPLOYMENT:
            deployment = result.live
    if deployment is None and outcome.problem is None:
        # Not touched by this pass: as assess_rollout read it (or as its latest event said).
        deployment = known
    outcome.status = _status(
        client,
        owner,
        decision.spec,
        generation,
        previous,
        outcome.problem or decision.degraded,
        deployment,
    )
    outcome.status["history"] = decision.history
    if decision.last_good is not None:
        outcome.status["lastGood"] = decision.last_good
    return outcome


def revision_of(owner: Owner, spec: AgentSpec) -> str:
    """The revision (pod template hash) a spec makes."""
    return str(pod_template(owner, spec)["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION])


def standing_spec(
    owner: Owner, spec: AgentSpec, generation: int, previous: Mapping[str, Any]
) -> AgentSpec:
    """The spec the children are built from when no rollout is judged anew: the last good one
    while this generation is held rolled back (as `decide` holds it), else the spec."""
    if held(previous, revision_of(owner, spec), generation):
        return good_spec(previous.get("lastGood"), spec) or spec
    return spec


def children_in_line(
    client: Client, owner: Owner, spec: AgentSpec, live_children: Mapping[ChildKind, Obj | None]
) -> bool:
    """Whether each of `live_children` is as `spec` wants it (read again only when the event's
    body differs: it may predate our own last apply)."""
    for kind, name, desired in build_children(owner, spec):
        if kind not in live_children:
            continue
        live = observe_child(client, kind, owner.namespace, name, desired, False, live_children)
        if plan_child(kind, name, desired, live, full=False, status={}).action != "keep":
            return False
    return True


def assess_rollout(
    client: Client,
    owner: Owner,
    spec: AgentSpec,
    raw_spec: Mapping[str, Any],
    generation: int,
    previous: Mapping[str, Any],
    seen: Obj | None = None,
) -> tuple[Decision, Obj | None]:
    """Read what the rollout of the spec's revision needs judging on, and decide; also the
    Deployment it judged. `seen`: the Deployment as its latest watch event carried it, used
    when it is at the spec's revision (a newer state has an event of its own still to come)."""
    revision = revision_of(owner, spec)
    if seen is not None and revision_of_deployment(seen) == revision:
        deployment: Obj | None = seen
    else:
        deployment = client.get(DEPLOYMENT, owner.namespace, owner.name)
    at_revision = deployment is not None and revision_of_deployment(deployment) == revision
    complete = at_revision and rollout_complete(deployment, desired_replicas(spec, deployment))
    proven = (previous.get("lastGood") or {}).get("revision") == revision
    failure = None
    if deployment is not None and not (complete or proven or held(previous, revision, generation)):
        pods = client.list_pods(owner.namespace, selector_string(owner.name))
        failure = rollout_failure(deployment, pods, revision)
    decision = decide(
        spec=spec,
        raw_spec=raw_spec,
        revision=revision,
        generation=generation,
        previous=previous,
        complete=complete,
        failure=failure,
        now=now_iso(),
    )
    return decision, deployment


def observe_child(
    client: Client,
    kind: ChildKind,
    namespace: str,
    name: str,
    desired: Obj | None,
    full: bool,
    live_children: Mapping[ChildKind, Obj | None] | None,
) -> Obj | None:
    """The live child as far as the decision needs it (reads only when it matters)."""
    if live_children is not None and kind in live_children:
        live = live_children[kind]
        if desired is not None and (live is None or drifted_fields(desired, live)):
            # The event may predate our own last apply: judge drift on the object as it is now.
            return client.get(kind, namespace, name)
        return live
    if full and desired is not None and kind is not DEPLOYMENT:
        return None  # not needed: apply is idempotent and nothing here depends on it
    return client.get(kind, namespace, name)


@dataclass(frozen=True)
class Step:
    """What to do with one child, and the Event that says so (pure decision)."""

    action: Literal["apply", "delete", "keep"]
    notice: Notice | None = None


def plan_child(
    kind: ChildKind,
    name: str,
    desired: Obj | None,
    live: Obj | None,
    *,
    full: bool,
    status: Mapping[str, Any],
) -> Step:
    """Decide: apply (every child on a full pass; a missing or drifted one otherwise), delete
    (a child the spec no longer has), or keep."""
    if desired is None:
        return Step("delete") if live is not None or full else Step("keep")
    if full:
        return Step("apply")
    if live is None:
        return Step(
            "apply", Notice(True, "ChildRecreated", f"{kind.kind}/{name} was deleted; recreated it")
        )
    paths = drifted_fields(desired, live)
    if paths:
        return Step("apply", _drift_notice(kind, name, paths, status))
    return Step("keep")


@dataclass(frozen=True)
class Done:
    """What carrying out a step left: the live object (if known) and the Event to post."""

    live: Obj | None
    notice: Notice | None


def _carry_out(
    client: Client,
    kind: ChildKind,
    namespace: str,
    name: str,
    desired: Obj | None,
    live: Obj | None,
    spec: AgentSpec,
    step: Step,
) -> Done:
    if step.action == "delete":
        if client.delete(kind, namespace, name):
            message = f"deleted {kind.kind}/{name}: no longer in the spec"
            return Done(None, Notice(False, "Deleted", message))
        return Done(None, None)
    if step.action == "apply" and desired is not None:
        if kind is DEPLOYMENT and spec.autoscaling.enabled and live is not None:
            _hand_replicas_to_hpa(client, live)
        return Done(client.apply(kind, desired), step.notice)
    return Done(live, None)


def _status(
    client: Client,
    owner: Owner,
    spec: AgentSpec,
    generation: int,
    previous: Mapping[str, Any],
    problem: Problem | None,
    deployment: Obj | None = None,
) -> Obj:
    if deployment is None and problem is not None:
        deployment = client.get(DEPLOYMENT, owner.namespace, owner.name)
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
