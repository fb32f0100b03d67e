"""Helpers around the API calls: telling a deleted namespace from a real failure."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from agent_operator import kube


def _api_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


def test_a_namespace_being_deleted_is_not_a_failure_to_retry() -> None:
    terminating = 'services "a" is forbidden: unable to create new content in namespace n '
    terminating += "because it is being terminated"
    assert kube.namespace_gone(_api_error(403, terminating))
    assert kube.namespace_gone(_api_error(404, 'namespaces "n" not found'))
    assert not kube.namespace_gone(_api_error(403, 'services "a" is forbidden: RBAC'))
    assert not kube.namespace_gone(_api_error(404, 'services "a" not found'))
