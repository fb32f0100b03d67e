"""kopf handlers: the AgentDeployment itself, and watches on its owned children."""

from __future__ import annotations

import contextvars
import datetime
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from agent_operator import kube
from agent_operator.builders import CHILD_KINDS, CONTAINER_PORT, MANAGER, ChildKind
from agent_operator.gate import (
    GateRunner,
    Verdict,
    api_keys_secret,
    ask,
    first_client_key,
    forget,
    needs_gate,
    pod_url,
    prompts_of,
    run_gate,
)
from agent_operator.gate import condition as gate_condition
from agent_operator.reconcile import (
    SECRET_REASONS,
    Notice,
    Outcome,
    degraded_reason,
    now_iso,
    reconcile,
    status_changed,
)
from agent_operator.rollback import pod_failure
from agent_operator.spec import GROUP, KIND, PLURAL, VERSION
from agent_operator.workqueue import Full, KeyedQueue, Pending, Resyncer

log = logging.getLogger(__name__)

# A missing Secret is re-checked this often (no watch on Secrets: least privilege).
SECRET_RETRY_SECONDS = float(os.environ.get("AGENT_OPERATOR_SECRET_RETRY_SECONDS", "10"))
# Transient API failures are retried after this long.
API_RETRY_SECONDS = 5.0
# Every AgentDeployment's children are compared with its spec this often, so a change no event
# reported (or one lost to a watch outage) is corrected within a period; 0 turns it off.
RESYNC_SECONDS = float(os.environ.get("AGENT_OPERATOR_RESYNC_SECONDS", "300"))
# Pods gated at once (each run is bounded by its prompts' latency limits).
GATE_WORKERS = int(os.environ.get("AGENT_OPERATOR_GATE_WORKERS", "4"))
Key = tuple[str, str]
MANAGED_BY = f"app.kubernetes.io/managed-by={MANAGER}"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations, watch only our children, post only warnings."""
    # The status schema is closed, so kopf's progress must not live in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.reporting_component = MANAGER
    # Our own Events are posted explicitly (kopf.event/warn); kopf's per-handler chatter only
    # when it matters. NB: kopf.info obeys this level, hence kopf.event for Normal events.
    settings.posting.level = logging.WARNING
    settings.peering.name = MANAGER
    # One ClusterKopfPeering by default, also for an instance limited to some namespaces, so it
    # and a cluster-wide one see each other. An operator with namespaced RBAC only
    # (manifests/operator/namespaced) meets its peers in a KopfPeering in each namespace.
    settings.peering.clusterwide = memo.get("peering", "cluster") != "namespaced"
    # Namespaced RBAC only: no listing of CRDs and namespaces cluster-wide (kopf would retry
    # each refused list for a minute before serving). The CRD and the namespaces are fixed.
    settings.scanning.disabled = memo.get("peering") == "namespaced"
    for kind in CHILD_KINDS:
        group, _sep, version = kind.api_version.rpartition("/")
        settings.watching.label_selectors[(group, version, kind.plural)] = MANAGED_BY
    settings.watching.label_selectors[("", "v1", "pods")] = MANAGED_BY
    # Handlers block on HTTP calls, not CPU: threads are cheap and keep the queue moving.
    settings.execution.max_workers = int(os.environ.get("AGENT_OPERATOR_WORKERS", "16"))


def _post(body: Mapping[str, Any], outcome: Outcome) -> None:
    target = kopf.Body(cast(kopf.RawBody, dict(body)))
    for notice in outcome.notices:
        kopf.event(
            target,
            type="Warning" if notice.warning else "Normal",
            reason=notice.reason,
            message=notice.message,
        )


def _write_status(body: Mapping[str, Any], outcome: Outcome) -> None:
    if outcome.status is None:
        return
    if status_changed(body.get("status") or {}, outcome.status):
        meta = body["metadata"]
        kube.patch_agent_status(meta["namespace"], meta["name"], outcome.status)


def _reconcile_spec(body: kopf.Body, what: str, replicas_changed: bool = False) -> None:
    """Shared body of create/update/resume: apply all children, then raise for kopf's retries."""
    meta = body["metadata"]
    RESYNC.adopt_context(contextvars.copy_context())
    with QUEUE.exclusive((meta["namespace"], meta["name"])):
        try:
            outcome = reconcile(kube, body, full=True, replicas_changed=replicas_changed)
            _write_status(body, outcome)
        except ApiException as exc:
            raise kopf.TemporaryError(
                f"API call failed: {kube.error_message(exc)}", delay=API_RETRY_SECONDS
            ) from exc
    _post(body, outcome)
    if outcome.problem is not None:
        if outcome.retry:
            raise kopf.TemporaryError(outcome.problem.message, delay=SECRET_RETRY_SECONDS)
        raise kopf.PermanentError(outcome.problem.message)
    image = (body.get("spec") or {}).get("image")
    kopf.event(
        body,
        type="Normal",
        reason=what,
        message=f"applied generation {meta.get('generation')} (image {image})",
    )


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(body: kopf.Body, **_: Any) -> None:
    """A new AgentDeployment: create its children."""
    _reconcile_spec(body, "Created")


@kopf.on.update(GROUP, VERSION, PLURAL)
def on_update(body: kopf.Body, diff: kopf.Diff, **_: Any) -> None:
    """A spec change: apply it (a new image rolls out; reverting the spec rolls back)."""
    replicas_changed = any(tuple(change[1]) == ("spec", "replicas") for change in diff)
    _reconcile_spec(body, "Updated", replicas_changed)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(body: kopf.Body, **_: Any) -> None:
    """Operator restart: re-apply, so changes made while it was down are corrected."""
    _reconcile_spec(body, "Resumed")


def _settled(body: Mapping[str, Any]) -> bool:
    """False while a spec handler still owns this generation (it retries on its own)."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    degraded: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or () if c.get("type") == "Degraded"), {}
    )
    return not (degraded.get("status") == "True" and degraded.get("reason") == "InvalidSpec")


def _repair(key: Key) -> None:
    """One drift-repair pass over an AgentDeployment's children (the queue's pass): over the
    children whose events arrived since the last pass, or over every child when a full pass
    was asked for (PENDING)."""
    namespace, name = key
    seen = PENDING.take(key)
    if seen is None:
        return  # an earlier pass took what this one was added for
    try:
        body = kube.get_agent(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp") or not _settled(body):
            return
        was = degraded_reason(body.get("status") or {})
        # Waiting for a Secret, the children may never have been made: apply them all (a drift
        # pass would report each one as "deleted by hand").
        waiting = was in SECRET_REASONS
        live = None if waiting or isinstance(seen, Full) else seen
        outcome = reconcile(kube, body, full=waiting, live_children=live)
        if was in SECRET_REASONS and outcome.problem is None:
            outcome.notices.append(
                Notice(False, "Recovered", "the referenced Secret is there now; children applied")
            )
        _write_status(body, outcome)
    except ApiException as exc:
        if kube.namespace_gone(exc):
            return  # its namespace is being deleted: nothing left to repair
        log.warning(
            "repairing %s/%s failed: %s; retrying in %ss",
            namespace,
            name,
            kube.error_message(exc),
            API_RETRY_SECONDS,
        )
        RESYNC.later(key, API_RETRY_SECONDS)  # as a full pass (what this one took is in it)
        return
    _post(body, outcome)
    if outcome.retry:
        # No watch on Secrets (least privilege), so poll for the missing one; kopf's own
        # TemporaryError retry covers the spec handlers, this covers drift repair.
        RESYNC.later(key, SECRET_RETRY_SECONDS)


def _all_keys() -> list[Key]:
    return kube.list_agent_keys(_scope.namespaces)


def _peering_allows() -> bool:
    """Act only while kopf would: no other live peer with our priority or a higher one."""
    identity = _scope.identity
    if identity is None:
        return True  # no peering (standalone)
    now = datetime.datetime.now(datetime.UTC)
    return all(
        peering_allows(kube.get_peering(MANAGER, scope), identity, _scope.priority, now)
        for scope in _scope.peering_scopes
    )


def peering_allows(
    peering: Mapping[str, Any] | None, identity: str, priority: int, now: datetime.datetime
) -> bool:
    """kopf's pause rule: another live peer with a priority >= ours pauses us."""
    if peering is None:
        return False
    for peer, info in (peering.get("status") or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.datetime.fromisoformat(str(info["lastseen"]))
            lifetime = float(info.get("lifetime", 60))
        except (KeyError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        alive = seen + datetime.timedelta(seconds=lifetime) > now  # kopf: dead at deadline
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True


@dataclass
class _Scope:
    """What the resync needs to know about this instance (set at startup)."""

    namespaces: Sequence[str] = ()
    identity: str | None = None
    priority: int = 0
    # Where the peering objects are: None for the ClusterKopfPeering, else namespaces
    # (the same list the entry point waited for at start).
    peering_scopes: Sequence[str | None] = (None,)


_scope = _Scope()
# One mechanism for "a change while busy": spec handlers hold a key exclusively, child events
# and resyncs add it (processed now, or once more by whoever holds it).
QUEUE: KeyedQueue[Key] = KeyedQueue(_repair)
# What each key's next pass looks at: the children whose events arrived, or everything.
PENDING: Pending[Key, ChildKind, Any] = Pending()
RESYNC: Resyncer[Key] = Resyncer(
    QUEUE,
    list_keys=_all_keys,
    interval=RESYNC_SECONDS,
    active=_peering_allows,
    mark=PENDING.want_full,
)


@kopf.on.startup()
def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Start the periodic resync (our own thread: a kopf timer would add a finalizer that
    blocks the deletion of every AgentDeployment while no operator runs)."""
    _scope.namespaces = tuple(memo.get("namespaces") or ())
    _scope.identity = memo.get("identity")
    _scope.priority = int(memo.get("priority") or 0)
    _scope.peering_scopes = tuple(memo.get("peering_scopes") or (None,))
    RESYNC.start()


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    """Stop the resync thread after its current pass, and the gate runs."""
    RESYNC.stop()
    GATES.shutdown()


GATES = GateRunner(GATE_WORKERS)


def _client_headers(pod: Mapping[str, Any]) -> dict[str, str]:
    """A pod that requires API keys is asked as the first client of its keys file."""
    source = api_keys_secret(pod)
    if source is None:
        return {}
    keys_file = kube.secret_value(pod["metadata"]["namespace"], *source)
    key = first_client_key(keys_file or "")
    # Without a usable key the prompts go unauthenticated and the verdict says HTTP 401.
    return {"Authorization": f"Bearer {key}"} if key else {}


def _gate(pod: Mapping[str, Any]) -> None:
    """Run a pod's smoke gate and record the verdict as its readiness-gate condition."""
    meta = pod["metadata"]
    prompts = prompts_of(pod)
    if prompts:
        headers = _client_headers(pod)
        verdict = run_gate(
            pod_url(pod, CONTAINER_PORT),
            prompts,
            send=functools.partial(ask, headers=headers),
            cleanup=functools.partial(forget, headers=headers),
        )
    else:  # an unreadable annotation must not hold the pod back forever
        verdict = Verdict(True, "no gate prompts on this pod's template", 0.0)
    try:
        kube.patch_pod_condition(
            meta["namespace"], meta["name"], gate_condition(verdict, now_iso())
        )
    except ApiException as exc:
        if exc.status != 404:  # a pod deleted meanwhile needs no verdict
            raise
    log.info(
        "gate %s for pod %s/%s: %s",
        "passed" if verdict.passed else "FAILED",
        meta["namespace"],
        meta["name"],
        verdict.message,
        extra={"gate_seconds": round(verdict.seconds, 3)},
    )


@kopf.on.event("", "v1", "pods", id="watch-pods", labels={"app.kubernetes.io/managed-by": MANAGER})
def on_pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A pod of an AgentDeployment: gate it once its containers are ready; when it has failed
    (gate, crash loop, image), let its AgentDeployment's rollout judge act."""
    if event.get("type") == "DELETED":
        return
    meta = body["metadata"]
    owner = (meta.get("labels") or {}).get("app.kubernetes.io/instance")
    if not owner:
        return
    if needs_gate(body):
        pod = dict(body)
        GATES.submit(str(meta["uid"]), lambda: _gate(pod))
    elif pod_failure(body) is not None:
        RESYNC.adopt_context(contextvars.copy_context())
        key = (str(meta["namespace"]), str(owner))
        PENDING.want_full(key)  # judge the rollout on every pod
        QUEUE.add(key)


def _owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in child.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


def _on_child(kind: ChildKind, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    # Initial listings (type None) are reconciled too: after a watch reconnects they are how
    # changes made while it was down reach us.
    owner = _owner_name(body)
    if owner is None:
        return
    RESYNC.adopt_context(contextvars.copy_context())
    key = (body["metadata"]["namespace"], owner)
    PENDING.note(key, kind, None if event.get("type") == "DELETED" else dict(body))
    # Never parks a kopf worker: if the key is busy, its holder repairs it once more after,
    # over every child noted meanwhile.
    QUEUE.add(key)


def _watch(kind: ChildKind) -> None:
    group, _, version = kind.api_version.rpartition("/")

    @kopf.on.event(
        group,
        version,
        kind.plural,
        id=f"watch-{kind.plural}",
        labels={"app.kubernetes.io/managed-by": MANAGER},
    )
    def on_child_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        """A change to an owned child: restore it if it drifted, refresh the status."""
        _on_child(kind, event, body)


for _kind in CHILD_KINDS:
    _watch(_kind)
