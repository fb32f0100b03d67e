"""Rollout judgement and automatic rollback: pure decisions, then reconcile with a fake client."""

from __future__ import annotations

import copy

from agent_operator.builders import GATE_CONDITION, TEMPLATE_HASH_ANNOTATION
from agent_operator.reconcile import reconcile
from agent_operator.rollback import Failure, decide, pod_failure, rollout_failure
from agent_operator.spec import parse_spec
from tests.unit.operator.test_reconcile import FakeKube

NOW = "2026-01-01T00:00:00Z"


def _pod(revision="r2", *, gate=None, waiting=None, restarts=0, last=None, name="demo-x"):
    conditions = []
    if gate is not None:
        conditions.append({"type": GATE_CONDITION, "status": gate[0], "message": gate[1]})
    container = {"name": "agent", "restartCount": restarts, "state": {}}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting, "message": "it failed"}}
    if last:
        container["lastState"] = {"terminated": last}
    return {
        "metadata": {"name": name, "annotations": {TEMPLATE_HASH_ANNOTATION: revision}},
        "status": {"conditions": conditions, "containerStatuses": [container]},
    }


def test_a_pod_that_failed_the_gate_fails_with_the_gates_words():
    failure = pod_failure(_pod(gate=("False", "prompt 1 ('hi'): reply 'x' does not contain 'hi'")))
    assert failure is not None
    assert failure.reason == "GateFailed"
    assert "demo-x" in failure.message
    assert "does not contain 'hi'" in failure.message


def test_a_crash_loop_says_the_exit_code_and_the_last_output():
    last = {"exitCode": 2, "reason": "Error", "message": "invalid configuration:\n AGENT_X bad"}
    failure = pod_failure(_pod(waiting="CrashLoopBackOff", restarts=1, last=last))
    assert failure is not None
    assert failure.reason == "CrashLoop"
    assert "exited with code 2 (Error)" in failure.message
    assert "invalid configuration: AGENT_X bad" in failure.message


def test_repeated_restarts_count_as_a_crash_loop_before_the_back_off_shows():
    assert pod_failure(_pod(restarts=2, last={"exitCode": 3})) is not None
    assert pod_failure(_pod(restarts=1, last={"exitCode": 3})) is None


def test_an_image_that_cannot_be_had_fails():
    failure = pod_failure(_pod(waiting="ErrImageNeverPull"))
    assert failure is not None
    assert failure.reason == "ImageUnavailable"


def test_a_healthy_or_waiting_pod_has_not_failed():
    assert pod_failure(_pod()) is None
    assert pod_failure(_pod(gate=("True", "passed"))) is None
    assert pod_failure(_pod(waiting="ContainerCreating")) is None


def test_only_pods_of_the_revision_being_rolled_out_are_judged():
    old_broken = _pod("r1", waiting="CrashLoopBackOff")
    assert rollout_failure(None, [old_broken, _pod("r2")], "r2") is None
    assert rollout_failure(None, [old_broken], "r1") is not None


def test_a_progress_deadline_at_the_revision_fails_the_rollout():
    deployment = {
        "spec": {"template": {"metadata": {"annotations": {TEMPLATE_HASH_ANNOTATION: "r2"}}}},
        "status": {"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                   "message": "ReplicaSet demo-2 has timed out progressing."}]},
    }  # fmt: skip
    failure = rollout_failure(deployment, [], "r2")
    assert failure is not None
    assert failure.reason == "ProgressDeadlineExceeded"
    assert "timed out" in failure.message
    assert rollout_failure(deployment, [], "r3") is None


GOOD = {"revision": "r1", "image": "agent:1", "generation": 1, "spec": {"image": "agent:1"}}


def _decide(raw, *, previous=None, complete=False, failure=None, generation=2, revision="r2"):
    return decide(
        spec=parse_spec(raw), raw_spec=raw, revision=revision, generation=generation,
        previous=previous if previous is not None else {"lastGood": GOOD},
        complete=complete, failure=failure, now=NOW,
    )  # fmt: skip


CRASH = Failure("CrashLoop", "pod demo-x: container agent exited with code 3")


def test_a_completed_rollout_becomes_the_last_good_one():
    decision = _decide({"image": "agent:2"}, complete=True)
    assert decision.last_good == {
        "revision": "r2", "image": "agent:2", "generation": 2, "spec": {"image": "agent:2"}
    }  # fmt: skip
    assert decision.history[0]["outcome"] == "Complete"
    assert decision.degraded is None


def test_a_failed_rollout_is_reverted_to_the_last_good_spec_with_the_current_scale():
    decision = _decide({"image": "agent:2", "replicas": 3}, failure=CRASH)
    assert decision.reverted_now
    assert decision.spec.image == "agent:1"
    assert decision.spec.replicas == 3
    assert decision.degraded is not None
    assert decision.degraded.reason == "RolledBack"
    assert decision.event is not None
    assert decision.event.reason == "RolledBack"
    assert "from agent:2 to agent:1" in decision.event.message
    assert "exited with code 3" in decision.event.message
    entry = decision.history[0]
    assert (entry["image"], entry["outcome"], entry["reason"]) == (
        "agent:2",
        "RolledBack",
        "CrashLoop",
    )


def test_a_rolled_back_generation_is_held_and_announced_once():
    first = _decide({"image": "agent:2"}, failure=CRASH)
    status = {"lastGood": first.last_good, "history": first.history}
    again = _decide({"image": "agent:2"}, previous=status)
    assert again.spec.image == "agent:1"
    assert again.event is None
    assert not again.reverted_now
    assert again.degraded is not None
    assert again.degraded.reason == "RolledBack"


def test_a_new_generation_of_the_spec_tries_again():
    first = _decide({"image": "agent:2"}, failure=CRASH)
    status = {"lastGood": first.last_good, "history": first.history}
    retry = _decide({"image": "agent:2"}, previous=status, generation=3)
    assert retry.spec.image == "agent:2"
    assert retry.degraded is None
    assert retry.history[0]["outcome"] == "Progressing"


def test_without_auto_rollback_a_failure_is_reported_not_reverted():
    raw = {"image": "agent:2", "rollout": {"autoRollback": False}}
    decision = _decide(raw, failure=CRASH)
    assert decision.spec.image == "agent:2"
    assert not decision.reverted_now
    assert decision.degraded is not None
    assert decision.degraded.reason == "CrashLoop"
    assert "autoRollback is off" in decision.degraded.message
    status = {"lastGood": GOOD, "history": decision.history}
    assert _decide(raw, previous=status, failure=CRASH).event is None  # said once


def test_a_first_rollout_that_fails_has_nothing_to_revert_to():
    decision = _decide({"image": "agent:2"}, previous={}, failure=CRASH)
    assert not decision.reverted_now
    assert decision.degraded is not None
    assert "no earlier revision completed a rollout" in decision.degraded.message


def test_history_marks_an_overtaken_rollout_superseded_and_stays_short():
    history = [{"revision": f"r{i}", "outcome": "Complete"} for i in range(9, 3, -1)]
    history[0]["outcome"] = "Progressing"
    decision = _decide({"image": "agent:2"}, previous={"lastGood": GOOD, "history": history})
    assert [e["revision"] for e in decision.history] == ["r2", "r9", "r8", "r7", "r6"]
    assert decision.history[1]["outcome"] == "Superseded"


# The same, through reconcile and an in-memory API.


def _agent(image, generation, status):
    return {
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": {"image": image},
        "status": status,
    }


def _finish(fake):
    """The Deployment controller: every replica updated and available."""
    dep = fake.objects[("deployments", "ns", "demo")]
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                     "readyReplicas": 1, "availableReplicas": 1}  # fmt: skip


def _image(fake):
    return fake.objects[("deployments", "ns", "demo")]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]


def test_reconcile_rolls_a_crash_looping_image_back_and_holds_it():
    fake = FakeKube()
    status = reconcile(fake, _agent("agent:1", 1, {}), full=True).status
    _finish(fake)
    status = reconcile(fake, _agent("agent:1", 1, status), full=False).status
    assert status["lastGood"]["image"] == "agent:1"

    status = reconcile(fake, _agent("agent:2", 2, status), full=True).status
    assert _image(fake) == "agent:2"
    template = fake.objects[("deployments", "ns", "demo")]["spec"]["template"]
    revision = template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    fake.pods = [_pod(revision, waiting="CrashLoopBackOff", restarts=2, last={"exitCode": 3})]
    fake.objects[("deployments", "ns", "demo")]["status"]["updatedReplicas"] = 0

    outcome = reconcile(fake, _agent("agent:2", 2, status), full=False)
    assert _image(fake) == "agent:1"
    reasons = [n.reason for n in outcome.notices]
    assert reasons == ["RolledBack"]  # and no "RollbackReverted" drift notice
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert outcome.status["state"] == "Degraded"
    assert outcome.status["history"][0]["outcome"] == "RolledBack"

    # A resync or a restart (a full pass) keeps the last good image: no retry, no new Event.
    held = copy.deepcopy(outcome.status)
    again = reconcile(fake, _agent("agent:2", 2, held), full=True)
    assert _image(fake) == "agent:1"
    assert "RolledBack" not in [n.reason for n in again.notices]
    # A spec change (a new generation) tries the spec again (the bad pods are gone by now).
    fake.pods = []
    reconcile(fake, _agent("agent:2", 3, again.status), full=True)
    assert _image(fake) == "agent:2"
