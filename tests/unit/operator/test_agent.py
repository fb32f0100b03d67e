"""spec.agent: the system prompt as a mounted file, the tools and the context window.

The chart builds the same (tests/chart/test_parity.py); the CRD refuses what validate() refuses.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest
import yaml

from agent_operator import contract
from agent_operator.builders import (
    CONFIG_CHECKSUM_ANNOTATION,
    TEMPLATE_HASH_ANNOTATION,
    Owner,
    build_configmap,
    pod_template,
)
from agent_operator.reconcile import reconcile
from agent_operator.spec import (
    RESERVED_ENV,
    SERVICE_BOUNDS,
    SERVICE_CHOICES,
    SERVICE_MAX_LENGTHS,
    Agent,
    ConfigMapKeyRef,
    parse_spec,
    validate,
)
from tests.unit.operator.test_reconcile import FakeKube
from tests.unit.operator.test_rollback import _finish, _pod

CRD = Path(__file__).resolve().parents[3] / "manifests" / "crds" / "agentdeployments.yaml"
OWNER = Owner(name="demo", namespace="ns", uid="u-1")
PROMPT = "You are Acme's support agent.\nInternal: refunds over 100 EUR go to tier 2.\n"
PROMPT_FILE = f"{contract.SYSTEM_PROMPT_DIR}/{contract.SYSTEM_PROMPT['file']['path']}"


def _spec(**agent: object) -> dict[str, object]:
    return {"image": "agent:1", "agent": agent}


def _crd_agent_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["agent"]  # type: ignore[no-any-return]


def test_an_unset_agent_leaves_the_services_defaults() -> None:
    spec = parse_spec({"image": "agent:1"})
    assert spec.agent == Agent()
    data = build_configmap(OWNER, spec)["data"]
    assert not {"AGENT_TOOLS", "AGENT_CONTEXT_MAX_MESSAGES", "AGENT_CONTEXT_MAX_TOKENS"} & set(data)
    template = pod_template(OWNER, spec)["spec"]
    assert all(v["name"] != contract.SYSTEM_PROMPT["volume"] for v in template["volumes"])


def test_the_spec_is_read_with_every_field() -> None:
    spec = parse_spec(
        _spec(
            systemPromptConfigMapRef={"name": "prompts"},
            tools=["clock"],
            context={"maxMessages": 6, "maxTokens": 9000},
        )
    )
    assert spec.agent == Agent(
        system_prompt_config_map_ref=ConfigMapKeyRef("prompts", contract.SYSTEM_PROMPT_KEY),
        tools=("clock",),
        context_max_messages=6,
        context_max_tokens=9000,
    )


def test_the_prompt_is_binary_data_of_the_configmap_mounted_as_the_prompt_file() -> None:
    spec = parse_spec(_spec(systemPrompt=PROMPT))
    configmap = build_configmap(OWNER, spec)
    stored = configmap["binaryData"][contract.SYSTEM_PROMPT_KEY]
    assert base64.b64decode(stored).decode() == PROMPT
    # Not in `data`: envFrom would make it a variable (and exec fails past 128 KiB).
    assert not any("tier 2" in value for value in configmap["data"].values())
    template = pod_template(OWNER, spec)["spec"]
    container = template["containers"][0]
    assert {"name": "AGENT_SYSTEM_PROMPT_FILE", "value": PROMPT_FILE} in container["env"]
    assert {
        "name": "system-prompt",
        "mountPath": contract.SYSTEM_PROMPT_DIR,
        "readOnly": True,
    } in container["volumeMounts"]
    (volume,) = [v for v in template["volumes"] if v["name"] == "system-prompt"]
    assert volume["configMap"] == {
        "name": configmap["metadata"]["name"],
        "defaultMode": 0o444,
        "items": [{"key": contract.SYSTEM_PROMPT_KEY, "path": "system-prompt"}],
    }


def test_a_prompt_in_the_users_configmap_is_mounted_from_it() -> None:
    spec = parse_spec(_spec(systemPromptConfigMapRef={"name": "prompts", "key": "v2"}))
    assert "binaryData" not in build_configmap(OWNER, spec)
    (volume,) = [
        v for v in pod_template(OWNER, spec)["spec"]["volumes"] if v["name"] == "system-prompt"
    ]
    assert volume["configMap"]["name"] == "prompts"
    assert volume["configMap"]["items"] == [{"key": "v2", "path": "system-prompt"}]


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ({"tools": ["word_count", "clock"]}, {"AGENT_TOOLS": "word_count,clock"}),
        ({"tools": []}, {"AGENT_TOOLS": "none"}),
        (
            {"context": {"maxMessages": 12, "maxTokens": 2000}},
            {"AGENT_CONTEXT_MAX_MESSAGES": "12", "AGENT_CONTEXT_MAX_TOKENS": "2000"},
        ),
    ],
    ids=["some-tools", "no-tools", "window"],
)
def test_tools_and_the_window_become_the_services_variables(
    agent: dict[str, object], expected: dict[str, str]
) -> None:
    data = build_configmap(OWNER, parse_spec(_spec(**agent)))["data"]
    assert {k: data[k] for k in expected} == expected


@pytest.mark.parametrize(
    "change",
    [
        {"systemPrompt": "Be thorough."},
        {"systemPromptConfigMapRef": {"name": "prompts"}},
        {"systemPrompt": "Be brief.", "tools": []},
        {"systemPrompt": "Be brief.", "context": {"maxTokens": 500}},
    ],
    ids=["prompt", "prompt-source", "tools", "window"],
)
def test_any_change_of_the_agent_is_a_new_revision_that_rolls_out(change: dict) -> None:
    before = pod_template(OWNER, parse_spec(_spec(systemPrompt="Be brief.")))["metadata"]
    after = pod_template(OWNER, parse_spec(_spec(**change)))["metadata"]
    for key in (CONFIG_CHECKSUM_ANNOTATION, TEMPLATE_HASH_ANNOTATION):
        assert before["annotations"][key] != after["annotations"][key]


def _resource(generation: int, prompt: str, status: dict) -> dict:
    return {
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": generation},
        "spec": {"image": "agent:1", "agent": {"systemPrompt": prompt}},
        "status": status,
    }


def _served_prompt(fake: FakeKube) -> str:
    configmap = fake.objects[("configmaps", "ns", "demo-config")]
    return base64.b64decode(configmap["binaryData"][contract.SYSTEM_PROMPT_KEY]).decode()


def test_a_prompt_whose_pods_fail_the_gate_is_rolled_back_to_the_last_good_one() -> None:
    fake = FakeKube()
    status = reconcile(fake, _resource(1, "Be brief.", {}), full=True).status
    _finish(fake)
    status = reconcile(fake, _resource(1, "Be brief.", status), full=False).status
    assert status["lastGood"]["spec"]["agent"] == {"systemPrompt": "Be brief."}

    status = reconcile(fake, _resource(2, "Answer in riddles.", status), full=True).status
    assert _served_prompt(fake) == "Answer in riddles."
    template = fake.objects[("deployments", "ns", "demo")]["spec"]["template"]
    revision = template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    fake.pods = [_pod(revision, gate=("False", "prompt 1 ('hi'): reply does not contain 'hi'"))]
    fake.objects[("deployments", "ns", "demo")]["status"]["updatedReplicas"] = 0

    outcome = reconcile(fake, _resource(2, "Answer in riddles.", copy.deepcopy(status)), full=False)
    assert _served_prompt(fake) == "Be brief."
    assert [n.reason for n in outcome.notices] == ["RolledBack"]
    assert outcome.status["history"][0]["reason"] == "GateFailed"


@pytest.mark.parametrize(
    ("agent", "problem"),
    [
        (
            {"systemPrompt": "Be brief.", "systemPromptConfigMapRef": {"name": "p"}},
            "spec.agent: set systemPrompt or systemPromptConfigMapRef, not both",
        ),
        ({"systemPrompt": " \n"}, "spec.agent.systemPrompt must not be empty"),
        ({"systemPrompt": "x" * 131_073}, "spec.agent.systemPrompt must be at most 131072"),
        (
            {"tools": ["clock", "shell"]},
            "spec.agent.tools: unknown 'shell' (valid: calculator, word_count, clock)",
        ),
        ({"tools": ["clock", "clock"]}, "spec.agent.tools names a tool twice"),
        ({"context": {"maxMessages": 1}}, "spec.agent.context.maxMessages must be between 2"),
        ({"context": {"maxTokens": 0}}, "spec.agent.context.maxTokens must be between 1"),
        ({"systemPromptConfigMapRef": {"name": "Bad_Name"}}, "must be a ConfigMap's name"),
        (
            {"systemPromptConfigMapRef": {"name": "p", "key": "a/b"}},
            "systemPromptConfigMapRef.key must be a ConfigMap key",
        ),
    ],
)
def test_each_agent_rule_reports_a_clear_problem(agent: dict, problem: str) -> None:
    problems = validate(parse_spec(_spec(**agent)))
    assert any(problem in p for p in problems), problems


def test_the_prompt_may_not_come_in_through_env_beside_its_file() -> None:
    assert {"AGENT_SYSTEM_PROMPT", "AGENT_SYSTEM_PROMPT_FILE"} <= set(RESERVED_ENV)
    spec = parse_spec({"image": "agent:1", "env": [{"name": "AGENT_SYSTEM_PROMPT", "value": "x"}]})
    assert "spec.env may not set AGENT_SYSTEM_PROMPT: the operator sets it" in validate(spec)


def test_the_crds_agent_schema_says_what_the_operator_checks() -> None:
    agent = _crd_agent_schema()
    rules = "\n".join(r["rule"] for r in agent["x-kubernetes-validations"])
    assert "!(has(self.systemPrompt) && has(self.systemPromptConfigMapRef))" in rules
    props = agent["properties"]
    assert tuple(props["tools"]["items"]["enum"]) == SERVICE_CHOICES["agent.tools"]
    assert props["tools"]["x-kubernetes-list-type"] == "set"  # no tool twice
    assert props["systemPrompt"]["maxLength"] == SERVICE_MAX_LENGTHS["agent.systemPrompt"]
    window = props["context"]["properties"]
    for name in ("maxMessages", "maxTokens"):
        low, high = SERVICE_BOUNDS[f"agent.context.{name}"]
        assert (window[name]["minimum"], window[name]["maximum"]) == (low, high)
        assert "default" not in window[name]  # unset: the service's default
    assert props["systemPromptConfigMapRef"]["properties"]["key"]["default"] == (
        contract.SYSTEM_PROMPT_KEY
    )
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    env_rules = "\n".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "'AGENT_SYSTEM_PROMPT', 'AGENT_SYSTEM_PROMPT_FILE'" in env_rules
