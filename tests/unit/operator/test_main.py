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

    def create(name: str) -> bool:
        if state["create"] != 201:
            raise ApiException(status=state["create"], reason="Forbidden")
        state["created"].append(name)  # type: ignore[attr-defined]
        return True

    monkeypatch.setattr(kube, "peering_served", lambda: state["served"])
    monkeypatch.setattr(kube, "get_peering", lambda name: {"x": 1} if state["exists"] else None)
    monkeypatch.setattr(kube, "create_peering", create)
    return state


def test_an_existing_peering_object_is_used_as_is(api: dict[str, object]) -> None:
    api["exists"] = True
    assert entry.ensure_peering()
    assert api["created"] == []


def test_a_missing_peering_object_is_created(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert entry.ensure_peering()
    assert api["created"] == ["moorage-operator"]
    assert "ClusterKopfPeering 'moorage-operator' was missing; created it" in caplog.text


def test_without_rights_to_create_it_the_error_names_the_object_and_the_fix(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    api["create"] = 403
    assert not entry.ensure_peering()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert "ClusterKopfPeering 'moorage-operator' does not exist" in message
    assert "kubectl apply -f manifests/operator/peering.yaml" in message


def test_without_the_peering_crd_the_error_says_to_install_the_crds(
    api: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    api["served"] = False
    assert not entry.ensure_peering()
    assert "kubectl apply -k manifests/crds" in caplog.text
    assert api["created"] == []


def test_main_exits_2_before_starting_kopf_when_peering_is_impossible(
    api: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    api["served"] = False
    monkeypatch.setattr(entry.kopf, "run", lambda **_: pytest.fail("kopf started"))
    monkeypatch.setattr(entry.kopf, "configure", lambda **_: None)
    assert entry.main(["--liveness", ""]) == 2


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
