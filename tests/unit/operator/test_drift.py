"""Drift detection compares what was applied with what is live."""

from __future__ import annotations

from agent_operator.drift import drifted_fields


def test_fields_the_server_added_are_not_drift():
    want = {"spec": {"replicas": 2, "template": {"metadata": {"labels": {"a": "b"}}}}}
    have = {
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}},
        }
    }
    assert drifted_fields(want, have) == []


def test_a_changed_scalar_is_reported_with_its_path():
    want = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "a:1"}]}}}}
    have = {"spec": {"replicas": 5, "template": {"spec": {"containers": [{"image": "a:0"}]}}}}
    assert drifted_fields(want, have) == [
        ".spec.replicas",
        ".spec.template.spec.containers[0].image",
    ]


def test_canonicalised_quantities_are_not_drift():
    want = {"resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}
    have = {"resources": {"requests": {"cpu": "500m", "memory": "1024Mi"}}}
    assert drifted_fields(want, have) == []


def test_a_removed_field_or_list_item_is_drift():
    assert drifted_fields({"a": {"b": 1}}, {"a": {}}) == [".a.b"]
    assert drifted_fields({"l": [1, 2]}, {"l": [1]}) == [".l"]


def test_a_percentage_is_compared_as_text():
    assert drifted_fields({"m": "25%"}, {"m": "50%"}) == [".m"]
    assert drifted_fields({"m": "25%"}, {"m": "25%"}) == []
