"""session.tls: the store's CA bundle and client certificate, mounted like the operator does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_operator.builders import Owner, build_deployment
from agent_operator.spec import parse_spec
from tests.chart.conftest import CHART, Render, agent_container, find, run_helm

TLS_VARIABLES = ("AGENT_SESSION_CA_FILE", "AGENT_SESSION_CERT_FILE", "AGENT_SESSION_KEY_FILE")


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment", "agent")["spec"]["template"]["spec"]


def _tls_parts(pod: dict[str, Any]) -> dict[str, Any]:
    """What session.tls adds to a pod: its variables, its volume, its mount."""
    container = pod["containers"][0]
    return {
        "env": [e for e in container.get("env", []) if e["name"] in TLS_VARIABLES],
        "volumes": [v for v in pod["volumes"] if v["name"] == "session-tls"],
        "mounts": [m for m in container["volumeMounts"] if m["name"] == "session-tls"],
    }


def _operator_pod(tls: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(
        {
            "image": "moorage/agent:1.0",
            "session": {"urlSecretRef": {"name": "creds", "key": "session-url"}, "tls": tls},
        }
    )
    owner = Owner(name="agent", namespace="moorage", uid="0")
    return build_deployment(owner, spec)["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("values", "tls"),
    [
        ({"caSecret": "redis-ca"}, {"caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}),
        (
            {"caSecret": "redis-ca", "caKey": "bundle.pem", "clientCertSecret": "agent-client"},
            {
                "caSecretRef": {"name": "redis-ca", "key": "bundle.pem"},
                "clientCertSecretRef": {"name": "agent-client"},
            },
        ),
        ({"clientCertSecret": "agent-client"}, {"clientCertSecretRef": {"name": "agent-client"}}),
    ],
    ids=["ca", "ca-and-client-cert", "client-cert"],
)
def test_the_chart_mounts_the_tls_files_where_the_operator_does(
    render: Render, values: dict[str, Any], tls: dict[str, Any]
) -> None:
    docs = render(
        **{"existingSecret.name": "creds", "existingSecret.sessionUrlKey": "session-url"},
        **{f"session.tls.{key}": value for key, value in values.items()},
    )
    chart = _tls_parts(_pod(docs))
    assert chart == _tls_parts(_operator_pod(tls))
    assert chart["mounts"] == [
        {"name": "session-tls", "mountPath": "/etc/moorage/session-tls", "readOnly": True}
    ]
    env = {e["name"]: e["value"] for e in chart["env"]}
    if "caSecret" in values:
        assert env["AGENT_SESSION_CA_FILE"] == "/etc/moorage/session-tls/ca.crt"
    if "clientCertSecret" in values:
        assert env["AGENT_SESSION_CERT_FILE"] == "/etc/moorage/session-tls/tls.crt"
        assert env["AGENT_SESSION_KEY_FILE"] == "/etc/moorage/session-tls/tls.key"
    # Files, never values: nothing of a certificate or key reaches the environment.
    assert all("valueFrom" not in e for e in agent_container(docs)["env"])


def test_without_session_tls_nothing_is_mounted(render: Render) -> None:
    parts = _tls_parts(_pod(render(**{"session.url": "rediss://cache:6380/0"})))
    assert parts == {"env": [], "volumes": [], "mounts": []}


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "session.url=redis://cache:6379/0"],
        ["--set", "redis.enabled=true"],
        [],  # memory://
        ["--set", "existingSecret.name=creds", "--set", "existingSecret.sessionUrlKey="],
    ],
    ids=["redis-url", "dev-redis", "memory", "secret-without-url"],
)
def test_tls_files_without_a_tls_url_fail_the_render(helm: Path, args: list[str]) -> None:
    result = run_helm(
        helm,
        "template", "agent", str(CHART), "--set", "session.tls.caSecret=redis-ca", *args,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "session.tls applies only to a rediss" in result.stderr, result.stderr


def test_a_tls_url_in_the_charts_own_secret_renders(helm: Path) -> None:
    url = r"rediss+sentinel://:pw@s1:26379\,s2:26379/sessions"  # helm's --set escapes commas
    result = run_helm(
        helm,
        "template", "agent", str(CHART),
        "--set-string", f"session.url={url}",
        "--set", "session.tls.caSecret=redis-ca",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
