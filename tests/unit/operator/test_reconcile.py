"""Pure parts of reconciliation: spec checks, event wording, when resyncs stand aside."""

from __future__ import annotations

from agent_operator.__main__ import parse_args
from agent_operator.builders import CONFIGMAP, DEPLOYMENT
from agent_operator.handlers import _owner_name, _settled
from agent_operator.reconcile import IMAGE_PATH, _drift_notice, check_spec, status_changed


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
                {"apiVersion": "moorage.dev/v1alpha1", "kind": "AgentDeployment", "name": "demo"},
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
