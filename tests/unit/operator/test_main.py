"""Start-up: the peering object kopf needs is there, or the operator says what is missing."""

from __future__ import annotations

import datetime
import logging

import pytest
from kubernetes.client.exceptions import ApiException

from agent_operator import __main__ as entry
from agent_operator import kube
from agent_operator.handlers import peering_allows

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Fakes of the peering calls; `state` says what the cluster has."""
    state: dict[str, object] = {"served": True, "exists": False, "create": 201, "created": []}

    def create(name: str, namespace: str | None = None) -> bool:
        if state["create"] != 201:
            raise ApiException(status=state["create"], reason="Forbidden")
        state["created"].append(name if namespace is None else f"{namespace}/{name}")  # type: ignore[attr-defined]
        return True

    monkeypatch.setattr(kube, "peering_served", lambda namespace=None: state["served"])
    monkeypatch.setattr(
        kube, "get_peering", lambda name, namespace=None: {"x": 1} if state["exists"] else None
    )
    monkeypatch.setattr(kube, "create_peering", create)
    return state


def test_an_existing_peering_object_is_used_as_is(api: dict[str, object]) -> None:
    api["exists"] = True
    assert entry.peering_problem() is None
    assert api["created"] == []


def test_a_missing_peering_object_is_created(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert entry.peering_problem() is None
    assert api["created"] == ["moorage-operator"]
    assert "ClusterKopfPeering 'moorage-operator' was missing; created it" in caplog.text


def test_without_rights_to_create_it_the_problem_names_the_object_and_the_fix(
    api: dict[str, object],
) -> None:
    api["create"] = 403
    problem = entry.peering_problem()
    assert problem is not None
    assert "ClusterKopfPeering 'moorage-operator' does not exist" in problem
    assert "kubectl apply -f manifests/operator/peering.yaml" in problem


def test_without_the_peering_crd_the_problem_says_to_install_the_crds(
    api: dict[str, object],
) -> None:
    api["served"] = False
    problem = entry.peering_problem()
    assert problem is not None
    assert "kubectl apply -k manifests/crds" in problem
    assert api["created"] == []


def test_start_up_says_at_once_what_is_missing_and_goes_on_once_it_is_fixed(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    api["served"] = False
    clock = {"now": 0.0}
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock["now"] += seconds
        if len(polls) == 20:  # 40 s later the CRDs are installed
            api["served"] = True

    with caplog.at_level(logging.INFO):
        entry.wait_for_peering(poll=2.0, repeat=30.0, sleep=sleep, clock=lambda: clock["now"])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    # Said on the first attempt, repeated after 30 s, not on every poll.
    assert len(errors) == 2
    assert "kubectl apply -k manifests/crds" in errors[0]
    assert api["created"] == ["moorage-operator"]
    assert "are there now; starting" in caplog.text


def test_a_namespaced_instance_creates_a_kopfpeering_in_each_namespace(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        entry.wait_for_peering(["team-a", "team-b"], sleep=lambda _s: None)
    assert api["created"] == ["team-a/moorage-operator", "team-b/moorage-operator"]
    assert "KopfPeering 'moorage-operator' in namespace 'team-a' was missing" in caplog.text


def test_a_namespaced_instance_without_rights_names_the_namespaced_fix(
    api: dict[str, object],
) -> None:
    api["create"] = 403
    problem = entry.peering_problem("team-a")
    assert problem is not None
    assert "KopfPeering 'moorage-operator' in namespace 'team-a' does not exist" in problem
    assert "manifests/operator/namespaced/peering.yaml in namespace team-a" in problem


def test_namespaced_peering_without_namespaces_exits_2_naming_both_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kube, "api_client", lambda: None)
    monkeypatch.setenv("AGENT_OPERATOR_PEERING", "namespaced")
    monkeypatch.delenv("AGENT_OPERATOR_NAMESPACES", raising=False)
    with caplog.at_level(logging.ERROR):
        assert entry.main([]) == 2
    assert "AGENT_OPERATOR_PEERING=namespaced needs AGENT_OPERATOR_NAMESPACES" in caplog.text


def _peer(priority: int, seconds_ago: int, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_the_resync_acts_alone_or_beside_lower_priorities_and_dead_peers() -> None:
    me = {"me": _peer(0, 1)}
    assert peering_allows({"status": me}, "me", 0, NOW)
    assert peering_allows({"status": {**me, "low": _peer(-1, 1)}}, "me", 0, NOW)
    assert peering_allows({"status": {**me, "dead": _peer(0, 120)}}, "me", 0, NOW)


def test_the_resync_pauses_beside_an_equal_or_higher_priority_or_without_peering() -> None:
    me = {"me": _peer(0, 1)}
    assert not peering_allows({"status": {**me, "twin": _peer(0, 1)}}, "me", 0, NOW)
    assert not peering_allows({"status": {**me, "debug": _peer(100, 1)}}, "me", 0, NOW)
    assert not peering_allows(None, "me", 0, NOW)


def test_without_credentials_it_exits_2_before_starting_kopf(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(entry.kopf, "configure", lambda **_: None)
    monkeypatch.setattr(entry.kopf, "run", lambda **_: pytest.fail("kopf started"))
    kube.api_client.cache_clear()
    try:
        assert entry.main(["--liveness", ""]) == 2
    finally:
        kube.api_client.cache_clear()
    assert "no Kubernetes credentials" in caplog.text
