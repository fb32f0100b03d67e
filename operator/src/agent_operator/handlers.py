"""kopf handlers: the AgentDeployment itself, and watches on its owned children."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from agent_operator import kube
from agent_operator.builders import CHILD_KINDS, MANAGER, ChildKind
from agent_operator.reconcile import (
    SECRET_REASONS,
    Notice,
    Outcome,
    degraded_reason,
    lock_for,
    reconcile,
    status_changed,
)
from agent_operator.spec import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

# A missing Secret is re-checked this often (no watch on Secrets: least privilege).
SECRET_RETRY_SECONDS = float(os.environ.get("AGENT_OPERATOR_SECRET_RETRY_SECONDS", "10"))
# Transient API failures are retried after this long.
API_RETRY_SECONDS = 5.0
MANAGED_BY = f"app.kubernetes.io/managed-by={MANAGER}"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
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
    # One ClusterKopfPeering for every mode, so a namespaced instance and a cluster-wide one
    # also see each other (kopf would otherwise expect a KopfPeering in each namespace).
    settings.peering.clusterwide = True
    for kind in CHILD_KINDS:
        group, _sep, version = kind.api_version.rpartition("/")
        settings.watching.label_selectors[(group, version, kind.plural)] = MANAGED_BY
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
    with lock_for(meta["namespace"], meta["name"]):
        try:
            outcome = reconcile(body, full=True, replicas_changed=replicas_changed)
            _write_status(body, outcome)
        except ApiException as exc:
            raise kopf.TemporaryError(
                f"API call failed: {kube.error_message(exc)}", delay=API_RETRY_SECONDS
            ) from exc
    _post(body, outcome)
    follow_up(meta["namespace"], meta["name"])
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


# Resources whose drift repair waits for a missing Secret, each with its pending retry.
_retries: dict[tuple[str, str], threading.Timer] = {}
_retries_guard = threading.Lock()


def _retry_later(namespace: str, name: str) -> None:
    """Re-run the drift repair after SECRET_RETRY_SECONDS (once per resource at a time)."""

    def fire() -> None:
        with _retries_guard:
            _retries.pop((namespace, name), None)
        try:
            _resync(namespace, name, None, full=True)
        except Exception:  # a background thread: log it (as JSON) and try again later
            log.exception("retrying %s/%s failed", namespace, name)
            _retry_later(namespace, name)

    with _retries_guard:
        if (namespace, name) in _retries:
            return
        # kopf's event poster is found through context variables: carry them to the thread.
        timer = threading.Timer(SECRET_RETRY_SECONDS, contextvars.copy_context().run, [fire])
        timer.daemon = True
        _retries[(namespace, name)] = timer
        timer.start()


def _resync_locked(
    namespace: str, name: str, live_child: tuple[ChildKind, Any] | None, full: bool
) -> tuple[Mapping[str, Any], Outcome] | None:
    """One repair pass; the caller holds the resource's lock."""
    body = kube.get_agent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp") or not _settled(body):
        return None
    outcome = reconcile(body, full=full, live_child=live_child)
    was = degraded_reason(body.get("status") or {})
    if was in SECRET_REASONS and outcome.problem is None:
        outcome.notices.append(
            Notice(False, "Recovered", "the referenced Secret is there now; children applied")
        )
    _write_status(body, outcome)
    return body, outcome


def _after(namespace: str, name: str, done: tuple[Mapping[str, Any], Outcome] | None) -> None:
    """Post a pass's Events (outside the lock) and poll for a missing Secret if needed."""
    if done is None:
        return
    body, outcome = done
    _post(body, outcome)
    if outcome.retry:
        # No watch on Secrets (least privilege), so poll for the missing one; kopf's own
        # TemporaryError retry covers the spec handlers, this covers drift repair.
        _retry_later(namespace, name)


def _resync(
    namespace: str, name: str, live_child: tuple[ChildKind, Any] | None, full: bool = False
) -> None:
    """A repair pass that waits for the resource's lock (timers, not kopf's workers)."""
    with lock_for(namespace, name):
        done = _resync_locked(namespace, name, live_child, full)
    _after(namespace, name, done)
    follow_up(namespace, name)


# Resources that saw child events while their lock was held; the holder repairs them after.
_dirty: set[tuple[str, str]] = set()
_dirty_guard = threading.Lock()


def _resync_or_defer(namespace: str, name: str, live_child: tuple[ChildKind, Any] | None) -> None:
    """Repair now, or leave it to whoever holds the lock (never park a kopf worker on it)."""
    if _try_resync(namespace, name, live_child):
        follow_up(namespace, name)


def follow_up(namespace: str, name: str) -> None:
    """Run the repair passes deferred while the lock was held, until none is left."""
    key = (namespace, name)
    while True:
        with _dirty_guard:
            if key not in _dirty:
                return
            _dirty.discard(key)
        if not _try_resync(namespace, name, None):
            return  # the current holder follows up instead


def _try_resync(namespace: str, name: str, live_child: tuple[ChildKind, Any] | None) -> bool:
    """One repair pass if the lock is free; else mark the resource dirty for the holder (False)."""
    lock = lock_for(namespace, name)
    if not lock.acquire(blocking=False):
        with _dirty_guard:
            _dirty.add((namespace, name))
        return False
    try:
        done = _resync_locked(namespace, name, live_child, full=False)
    finally:
        lock.release()
    _after(namespace, name, done)
    return True


def _owner_name(child: Mapping[str, Any]) -> str | None:
    for ref in child.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


def _on_child(kind: ChildKind, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    # Initial listings (type None) are reconciled too: after a watch reconnects they are how
    # changes made while it was down reach us. There is deliberately no kopf timer: timers put
    # a finalizer on every AgentDeployment, which would block deletion while the operator is down.
    owner = _owner_name(body)
    if owner is None:
        return
    live = None if event.get("type") == "DELETED" else dict(body)
    _resync_or_defer(body["metadata"]["namespace"], owner, (kind, live))


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
