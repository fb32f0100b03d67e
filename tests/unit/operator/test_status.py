"""Status computed from the spec and the Deployment."""

from __future__ import annotations

from agent_operator.spec import parse_spec
from agent_operator.status import Problem, compute_status, merge_conditions, recent_images

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def deployment(
    replicas=2, ready=2, updated=2, available=2, generation=3, observed=3, spec_replicas=2
):
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": spec_replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


def status(dep, problem=None, previous=None, now=NOW, **raw):
    return compute_status(
        name="demo",
        spec=parse_spec({"image": "agent:2", "replicas": 2, **raw}),
        generation=7,
        deployment=dep,
        previous=previous or {},
        problem=problem,
        now=now,
    )


def conditions(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_a_rolled_out_deployment_is_ready():
    st = status(deployment())
    assert st["state"] == "Ready"
    assert conditions(st) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert st["observedGeneration"] == 7
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (2, 2, 2)
    assert st["selector"] == "app.kubernetes.io/name=agent,app.kubernetes.io/instance=demo"


def test_a_rollout_in_flight_is_progressing_not_ready():
    st = status(deployment(replicas=3, ready=2, updated=1))
    assert st["state"] == "Progressing"
    assert conditions(st)["Progressing"] == ("True", "RollingOut")
    assert conditions(st)["Ready"] == ("False", "ReplicasNotReady")


def test_a_deployment_controller_lagging_behind_is_not_ready():
    assert status(deployment(generation=4, observed=3))["state"] == "Progressing"


def test_no_deployment_yet_is_progressing():
    st = status(None)
    assert conditions(st)["Progressing"] == ("True", "Creating")
    assert st["replicas"] == 0


def test_a_problem_makes_it_degraded_with_the_reason_and_message():
    st = status(deployment(), problem=Problem("SecretNotFound", "Secret team/llm does not exist"))
    assert st["state"] == "Degraded"
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "SecretNotFound"
    assert "team/llm" in degraded["message"]
    assert conditions(st)["Ready"] == ("False", "SecretNotFound")


def test_a_stuck_rollout_is_degraded():
    dep = deployment(updated=1)
    dep["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    assert conditions(status(dep))["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_with_autoscaling_desired_comes_from_the_deployment():
    st = status(
        deployment(spec_replicas=4, replicas=4, ready=4, updated=4, available=4),
        autoscaling={"enabled": True},
    )
    assert st["desiredReplicas"] == 4
    assert st["state"] == "Ready"


def test_transition_time_is_kept_while_a_condition_holds():
    first = status(deployment())
    again = status(deployment(), previous=first, now=LATER)
    assert [c["lastTransitionTime"] for c in again["conditions"]] == [NOW, NOW, NOW]
    flipped = status(deployment(ready=1), previous=first, now=LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times["Ready"] == LATER
    assert times["Degraded"] == NOW


def test_recent_images_put_the_newest_first_once_and_cap_the_list():
    assert recent_images(["a:1"], "a:2") == ["a:2", "a:1"]
    assert recent_images(["a:2", "a:1"], "a:1") == ["a:1", "a:2"]
    assert recent_images([f"a:{i}" for i in range(9)], "b") == ["b", "a:0", "a:1", "a:2", "a:3"]


def test_status_records_the_image_only_when_it_was_applied():
    previous = {"recentImages": ["agent:1"]}
    assert status(deployment(), previous=previous)["recentImages"] == ["agent:2", "agent:1"]
    blocked = status(deployment(), previous=previous, problem=Problem("SecretNotFound", "x"))
    assert blocked["recentImages"] == ["agent:1"]


def test_merge_conditions_stamps_new_conditions_with_now():
    merged = merge_conditions([{"type": "Ready", "status": "True"}], [], NOW)
    assert merged == [{"type": "Ready", "status": "True", "lastTransitionTime": NOW}]
