"""spec.session.tls: the session store's CA bundle and client certificate, mounted as files."""

from __future__ import annotations

import kubernetes_validate
import pytest

from agent_operator.builders import Owner, build_children, build_deployment, config_checksum
from agent_operator.spec import RESERVED_ENV, SecretKeyRef, parse_spec, validate

OWNER = Owner(name="demo", namespace="team-a", uid="1234-abcd")
URL_REF = {"urlSecretRef": {"name": "redis", "key": "url"}}


def spec(**session):
    return parse_spec({"image": "moorage/agent:1.0", "session": session})


def _pod(built):
    return build_deployment(OWNER, built)["spec"]["template"]["spec"]


def test_a_ca_bundle_is_a_file_named_by_agent_session_ca_file():
    pod = _pod(spec(**URL_REF, tls={"caSecretRef": {"name": "redis-ca", "key": "bundle.pem"}}))
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AGENT_SESSION_CA_FILE"] == "/etc/moorage/session-tls/ca.crt"
    assert "AGENT_SESSION_CERT_FILE" not in env
    volume = next(v for v in pod["volumes"] if v["name"] == "session-tls")
    assert volume["projected"] == {
        "defaultMode": 0o440,
        "sources": [
            {"secret": {"name": "redis-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}
        ],
    }
    assert {
        "name": "session-tls",
        "mountPath": "/etc/moorage/session-tls",
        "readOnly": True,
    } in container["volumeMounts"]


def test_a_client_certificate_comes_from_a_tls_secret_beside_the_ca():
    built = spec(
        **URL_REF,
        tls={
            "caSecretRef": {"name": "redis-ca", "key": "ca.crt"},
            "clientCertSecretRef": {"name": "agent-client"},
        },
    )
    pod = _pod(built)
    env = [e["name"] for e in pod["containers"][0]["env"]]
    # After the secrets volume's variables, before any extra env (the chart's order too).
    assert env == [
        "AGENT_SESSION_URL_FILE",
        "AGENT_SESSION_CA_FILE",
        "AGENT_SESSION_CERT_FILE",
        "AGENT_SESSION_KEY_FILE",
    ]
    volume = next(v for v in pod["volumes"] if v["name"] == "session-tls")
    assert volume["projected"]["sources"][1] == {
        "secret": {
            "name": "agent-client",
            "items": [
                {"key": "tls.crt", "path": "tls.crt"},
                {"key": "tls.key", "path": "tls.key"},
            ],
        }
    }
    # The operator checks every key exists before it builds pods that would wait for it.
    assert built.secret_refs()[-3:] == [
        SecretKeyRef("redis-ca", "ca.crt"),
        SecretKeyRef("agent-client", "tls.crt"),
        SecretKeyRef("agent-client", "tls.key"),
    ]
    assert config_checksum(built) != config_checksum(spec(**URL_REF))
    for _, _, obj in build_children(OWNER, built):
        if obj is not None:  # None: a child this spec does not have (the HPA)
            kubernetes_validate.validate(obj, "1.35", strict=True)


def test_without_tls_there_is_no_tls_volume_or_variable():
    pod = _pod(spec(**URL_REF))
    assert all(v["name"] != "session-tls" for v in pod["volumes"])
    assert all(not e["name"].startswith("AGENT_SESSION_C") for e in pod["containers"][0]["env"])


@pytest.mark.parametrize(
    "session",
    [
        {"url": "redis://cache:6379/0"},
        {"url": "redis+sentinel://s1,s2/sessions"},
        {},  # memory://
    ],
)
def test_tls_files_with_a_plain_text_url_are_an_invalid_spec(session):
    problems = validate(spec(**session, tls={"caSecretRef": {"name": "ca", "key": "ca.crt"}}))
    assert any("spec.session.tls applies only to a rediss" in p for p in problems), problems


@pytest.mark.parametrize(
    "session",
    [
        {"url": "rediss://cache:6380/0"},
        {"url": "rediss+cluster://n1:7000,n2:7000"},
        URL_REF,  # the operator cannot read the URL: the service checks it at start
    ],
)
def test_tls_files_with_a_tls_url_are_valid(session):
    assert validate(spec(**session, tls={"clientCertSecretRef": {"name": "client"}})) == []


def test_a_ca_reference_needs_a_key_and_the_tls_variables_are_the_operators():
    problems = validate(spec(**URL_REF, tls={"caSecretRef": {"name": "ca"}}))
    assert problems == ["spec.session.tls.caSecretRef must name a Secret and a key in it"]
    assert {"AGENT_SESSION_CA_FILE", "AGENT_SESSION_CERT_FILE", "AGENT_SESSION_KEY_FILE"} <= set(
        RESERVED_ENV
    )
