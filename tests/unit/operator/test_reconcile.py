"""Pure parts of reconciliation: spec checks, event wording, when resyncs stand aside."""

from __future__ import annotations

import copy

from agent_operator.__main__ import parse_args
from agent_operator.builders import CONFIGMAP, DEPLOYMENT, PDB, SERVICE
from agent_operator.handlers import _owner_name, _settled
from agent_operator.reconcile import (
    IMAGE_PATH,
    Step,
    _drift_notice,
    check_spec,
    plan_child,
    reconcile,
    status_changed,
)


def test_a_valid_spec_has_no_problem():
    spec, problem = check_spec({"image": "agent:1"})
    assert spec is not None
    assert problem is None


def test_an_invalid_spec_is_an_invalid_spec_problem_listing_every_rule():
    _, problem = check_spec({"image": "agent:1", "replicas": -2, "model": {"name": "x"}})
    assert problem is not None
    assert problem.reason == "InvalidSpec"
    assert "replicas" in problem.message
    assert "model.name" in problem.message


def test_an_unparseable_spec_is_an_invalid_spec_problem():
    spec, problem = check_spec({"image": "agent:1", "replicas": "three"})
    assert spec is None
    assert problem is not None
    assert problem.reason == "InvalidSpec"


def test_a_reverted_image_tells_the_user_to_roll_back_through_the_spec():
    notice = _drift_notice(
        DEPLOYMENT, "demo", [IMAGE_PATH], {"recentImages": ["agent:2", "agent:1"]}
    )
    assert notice.warning
    assert notice.reason == "RollbackReverted"
    assert "set spec.image" in notice.message
    assert "agent:2, agent:1" in notice.message


def test_other_drift_names_the_fields_restored():
    notice = _drift_notice(CONFIGMAP, "demo-config", [".data.AGENT_MODEL"], {})
    assert not notice.warning
    assert notice.reason == "DriftRestored"
    assert ".data.AGENT_MODEL" in notice.message


def test_status_writes_are_skipped_when_nothing_changed():
    old = {"state": "Ready", "replicas": 1, "extra": "kept"}
    assert not status_changed(old, {"state": "Ready", "replicas": 1})
    assert status_changed(old, {"state": "Ready", "replicas": 2})


def _body(generation, observed, degraded_reason=None):
    conditions = []
    if degraded_reason:
        conditions.append({"type": "Degraded", "status": "True", "reason": degraded_reason})
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "conditions": conditions},
    }


def test_resyncs_wait_until_a_spec_handler_has_observed_the_generation():
    assert not _settled(_body(3, 2))
    assert _settled(_body(3, 3))


def test_resyncs_leave_an_invalid_spec_alone_but_retry_a_missing_secret():
    assert not _settled(_body(3, 3, "InvalidSpec"))
    assert _settled(_body(3, 3, "SecretNotFound"))


def test_children_are_traced_to_their_agentdeployment_by_owner_reference():
    child = {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"},
                {"apiVersion": "moorage.dev/v1beta1", "kind": "AgentDeployment", "name": "demo"},
            ]
        }
    }
    assert _owner_name(child) == "demo"
    assert _owner_name({"metadata": {}}) is None


def test_operator_options_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENT_OPERATOR_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("AGENT_OPERATOR_LIVENESS", "")
    args = parse_args([])
    assert args.namespaces == "team-a,team-b"
    assert args.liveness == ""
    assert parse_args(["--namespaces", "x"]).namespaces == "x"


def test_scaling_the_resource_while_autoscaling_is_on_is_called_out():
    from agent_operator.reconcile import advisories
    from agent_operator.spec import parse_spec

    auto = parse_spec(
        {"image": "a", "autoscaling": {"enabled": True}, "session": {"url": "redis://r"}}
    )
    assert [n.reason for n in advisories(auto, replicas_changed=True)] == ["ReplicasIgnored"]
    assert advisories(auto, replicas_changed=False) == []


def test_more_than_one_replica_with_in_memory_sessions_is_called_out():
    from agent_operator.reconcile import advisories
    from agent_operator.spec import parse_spec

    assert advisories(parse_spec({"image": "a", "replicas": 1}), False) == []
    (notice,) = advisories(parse_spec({"image": "a", "replicas": 2}), False)
    assert notice.reason == "SessionsNotShared"
    assert notice.warning
    shared = {"image": "a", "replicas": 2, "session": {"urlSecretRef": {"name": "s", "key": "u"}}}
    assert advisories(parse_spec(shared), False) == []


# reconcile's decisions, against an in-memory fake of its client protocol.


class FakeKube:
    """In-memory children keyed by (plural, namespace, name); records every write."""

    def __init__(self, secrets: dict[str, set[str]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.secrets = secrets or {}
        self.refuse: dict[str, int] = {}
        self.pods: list[dict] = []
        self.reads: list[tuple[str, str, str]] = []

    def apply(self, kind, obj, manager="moorage-operator"):
        meta = obj["metadata"]
        if kind.plural in self.refuse:
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=self.refuse[kind.plural], reason="Invalid")
        key = (kind.plural, meta["namespace"], meta["name"])
        self.writes.append(("apply:" + manager, kind.plural, meta["name"]))
        live = copy.deepcopy(self.objects.get(key) or {})
        merged = _merge(live, copy.deepcopy(dict(obj)))
        if manager == "moorage-operator" and "replicas" in obj.get("spec", {}):
            merged["metadata"]["managedFields"] = [
                {"manager": manager, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            ]
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def get(self, kind, namespace, name):
        self.reads.append(("get", kind.plural, name))
        found = self.objects.get((kind.plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def delete(self, kind, namespace, name):
        self.writes.append(("delete", kind.plural, name))
        return self.objects.pop((kind.plural, namespace, name), None) is not None

    def secret_keys(self, namespace, name):
        return self.secrets.get(name)

    def list_pods(self, namespace, selector):
        self.reads.append(("list", "pods", selector))
        return copy.deepcopy(self.pods)


def _merge(live: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(live.get(key), dict):
            live[key] = _merge(live[key], value)
        else:
            live[key] = value
    return live


def _agent(spec=None, status=None, generation=1):
    return {
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": {"image": "agent:1", **(spec or {})},
        "status": status or {},
    }


def _reasons(outcome):
    return [n.reason for n in outcome.notices]


def test_a_full_pass_creates_every_child_but_no_hpa_while_autoscaling_is_off():
    fake = FakeKube()
    outcome = reconcile(fake, _agent(), full=True)
    assert {key[0] for key in fake.objects} == {
        "configmaps",
        "serviceaccounts",
        "deployments",
        "services",
        "poddisruptionbudgets",
    }
    assert outcome.problem is None
    assert outcome.status["observedGeneration"] == 1
    assert outcome.status["recentImages"] == ["agent:1"]


def test_a_drift_pass_writes_nothing_when_the_children_match():
    fake = FakeKube()
    reconcile(fake, _agent(), full=True)
    fake.writes.clear()
    outcome = reconcile(fake, _agent(), full=False)
    assert fake.writes == []
    assert outcome.notices == []


def test_a_drift_pass_restores_a_hand_edited_field_and_says_which():
    fake = FakeKube()
    reconcile(fake, _agent({"replicas": 2}), full=True)
    fake.objects[("deployments", "ns", "demo")]["spec"]["replicas"] = 5
    fake.writes.clear()
    outcome = reconcile(fake, _agent({"replicas": 2}), full=False)
    assert fake.writes == [("apply:moorage-operator", "deployments", "demo")]
    assert fake.objects[("deployments", "ns", "demo")]["spec"]["replicas"] == 2
    assert _reasons(outcome) == ["DriftRestored"]
    assert ".spec.replicas" in outcome.notices[0].message


def test_a_stale_watch_event_is_judged_on_the_live_object():
    fake = FakeKube()
    reconcile(fake, _agent(), full=True)
    stale = fake.get(DEPLOYMENT, "ns", "demo")
    stale["spec"]["replicas"] = 9  # what the event carried; the live object is fine again
    fake.writes.clear()
    outcome = reconcile(fake, _agent(), full=False, live_children={DEPLOYMENT: stale})
    assert fake.writes == []
    assert outcome.notices == []


def test_a_deleted_child_is_recreated_with_an_event():
    fake = FakeKube()
    reconcile(fake, _agent(), full=True)
    del fake.objects[("services", "ns", "demo")]
    outcome = reconcile(fake, _agent(), full=False, live_children={SERVICE: None})
    assert ("services", "ns", "demo") in fake.objects
    assert _reasons(outcome) == ["ChildRecreated"]


def test_a_missing_secret_applies_nothing_and_asks_for_a_retry_once():
    fake = FakeKube()
    spec = {"session": {"urlSecretRef": {"name": "store", "key": "url"}}}
    outcome = reconcile(fake, _agent(spec), full=True)
    assert fake.objects == {}
    assert outcome.retry
    assert outcome.problem.reason == "SecretNotFound"
    assert _reasons(outcome) == ["SecretNotFound"]
    again = reconcile(fake, _agent(spec, status=outcome.status), full=False)
    assert again.notices == []  # said once, not on every retry
    fake.secrets["store"] = {"url"}
    assert reconcile(fake, _agent(spec), full=True).problem is None


def test_turning_autoscaling_on_hands_replicas_over_before_dropping_them():
    fake = FakeKube()
    reconcile(fake, _agent({"replicas": 3}), full=True)
    fake.writes.clear()
    auto = {"replicas": 3, "autoscaling": {"enabled": True}, "session": {"url": "redis://r"}}
    reconcile(fake, _agent(auto), full=True)
    handoff = ("apply:moorage-operator-handoff", "deployments", "demo")
    ours = ("apply:moorage-operator", "deployments", "demo")
    assert fake.writes.index(handoff) < fake.writes.index(ours)
    assert ("horizontalpodautoscalers", "ns", "demo") in fake.objects


def test_turning_autoscaling_off_deletes_the_hpa_with_an_event():
    fake = FakeKube()
    auto = {"autoscaling": {"enabled": True}, "session": {"url": "redis://r"}}
    reconcile(fake, _agent(auto), full=True)
    outcome = reconcile(fake, _agent({"session": {"url": "redis://r"}}), full=True)
    assert ("horizontalpodautoscalers", "ns", "demo") not in fake.objects
    assert "Deleted" in _reasons(outcome)


def test_a_child_the_api_server_refuses_is_an_invalid_spec_problem_not_an_error():
    fake = FakeKube()
    fake.refuse["deployments"] = 422
    outcome = reconcile(fake, _agent(), full=True)
    assert outcome.problem.reason == "InvalidSpec"
    assert "Deployment/demo" in outcome.problem.message
    assert not outcome.retry


def test_the_plan_for_a_child_is_a_pure_decision():
    desired = {"spec": {"replicas": 2}}
    assert plan_child(SERVICE, "demo", None, None, full=False, status={}).action == "keep"
    assert plan_child(SERVICE, "demo", None, {"x": 1}, full=False, status={}).action == "delete"
    assert plan_child(SERVICE, "demo", desired, None, full=True, status={}) == Step("apply")
    recreate = plan_child(SERVICE, "demo", desired, None, full=False, status={})
    assert (recreate.action, recreate.notice.reason) == ("apply", "ChildRecreated")
    assert plan_child(SERVICE, "demo", desired, desired, full=False, status={}) == Step("keep")


def _complete(deployment):
    generation = deployment["metadata"].setdefault("generation", 1)
    deployment["status"] = {
        "observedGeneration": generation,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
    }
    return deployment


def test_a_child_event_that_matches_the_spec_reads_and_writes_nothing_else():
    fake = FakeKube()
    created = reconcile(fake, _agent(), full=True)
    events = {kind: fake.get(kind, "ns", name) for kind, name in ((SERVICE, "demo"), (PDB, "demo"))}
    fake.reads.clear()
    fake.writes.clear()
    outcome = reconcile(fake, _agent(status=created.status), full=False, live_children=events)
    assert fake.reads == []
    assert fake.writes == []
    assert outcome.status is None  # the status follows the Deployment's own events
    assert outcome.notices == []


def test_a_child_event_that_drifted_is_restored_and_the_status_recomputed():
    fake = FakeKube()
    created = reconcile(fake, _agent(), full=True)
    fake.objects[("services", "ns", "demo")]["spec"]["ports"] = []
    edited = fake.get(SERVICE, "ns", "demo")
    fake.writes.clear()
    outcome = reconcile(
        fake, _agent(status=created.status), full=False, live_children={SERVICE: edited}
    )
    assert fake.writes == [("apply:moorage-operator", "services", "demo")]
    assert _reasons(outcome) == ["DriftRestored"]
    assert outcome.status is not None


def test_a_deployment_event_at_the_specs_revision_is_judged_without_reading_it_again():
    fake = FakeKube()
    created = reconcile(fake, _agent(), full=True)
    event = _complete(fake.get(DEPLOYMENT, "ns", "demo"))
    fake.reads.clear()
    outcome = reconcile(
        fake, _agent(status=created.status), full=False, live_children={DEPLOYMENT: event}
    )
    assert fake.reads == []
    assert outcome.status["state"] == "Ready"
    assert outcome.status["lastGood"]["generation"] == 1


def test_a_deployment_event_at_another_revision_is_judged_on_the_live_object():
    fake = FakeKube()
    created = reconcile(fake, _agent(), full=True)
    event = fake.get(DEPLOYMENT, "ns", "demo")
    event["spec"]["template"]["metadata"]["annotations"]["moorage.dev/template-hash"] = "old"
    _complete(fake.objects[("deployments", "ns", "demo")])
    fake.reads.clear()
    outcome = reconcile(
        fake, _agent(status=created.status), full=False, live_children={DEPLOYMENT: event}
    )
    assert ("get", "deployments", "demo") in fake.reads
    assert outcome.status["state"] == "Ready"
