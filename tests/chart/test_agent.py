"""agent.*: the system prompt as a mounted file, the tools and the context window.

What the rendered container runs with is tests/chart/test_contract.py's (the real service
started as rendered); the operator's equal output is tests/chart/test_parity.py's.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, Render, agent_container, find, kubernetes_validate, run_helm

CONTRACT = yaml.safe_load((CHART / "files" / "pod-contract.yaml").read_text())["systemPrompt"]
PROMPT_FILE = f"{CONTRACT['dir']}/{CONTRACT['file']['path']}"
# The longest prompt the service takes (131072 characters): more than one environment value may
# hold (128 KiB with its name), so only a file can bring it.
LONG_PROMPT = "Answer as Acme's support agent. " * 4096


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "ConfigMap", "agent")


def _prompt_parts(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the system prompt adds to the pod: its variable, its volume, its mount."""
    pod = find(docs, "Deployment", "agent")["spec"]["template"]["spec"]
    container = agent_container(docs)
    return {
        "env": [e for e in container.get("env", []) if e["name"] == CONTRACT["file"]["env"]],
        "volumes": [v for v in pod["volumes"] if v["name"] == CONTRACT["volume"]],
        "mounts": [m for m in container["volumeMounts"] if m["name"] == CONTRACT["volume"]],
    }


def _checksum(docs: list[dict[str, Any]]) -> str:
    template = find(docs, "Deployment", "agent")["spec"]["template"]
    return str(template["metadata"]["annotations"]["checksum/config"])


def test_by_default_the_service_keeps_its_own_prompt_tools_and_window(render: Render) -> None:
    docs = render()
    data = _config(docs)["data"]
    assert not {"AGENT_TOOLS", "AGENT_CONTEXT_MAX_MESSAGES", "AGENT_CONTEXT_MAX_TOKENS"} & set(data)
    assert "binaryData" not in _config(docs)
    assert _prompt_parts(docs) == {"env": [], "volumes": [], "mounts": []}


def test_a_long_prompt_is_in_the_configmaps_binary_data_and_mounted_as_a_file(
    render: Render, tmp_path: Path
) -> None:
    values = tmp_path / "long-prompt-values.yaml"  # a command line could not hold it either
    values.write_text(yaml.safe_dump({"agent": {"systemPrompt": LONG_PROMPT}}))
    docs = render(values)
    config = _config(docs)
    assert base64.b64decode(config["binaryData"][CONTRACT["configMapKey"]]).decode() == LONG_PROMPT
    # Not in `data`: envFrom would make it a variable, and exec fails past 128 KiB.
    assert not any(LONG_PROMPT in value for value in config["data"].values())
    assert _prompt_parts(docs) == {
        "env": [{"name": "AGENT_SYSTEM_PROMPT_FILE", "value": PROMPT_FILE}],
        "volumes": [
            {
                "name": CONTRACT["volume"],
                "configMap": {
                    "name": "agent",
                    "defaultMode": CONTRACT["defaultMode"],
                    "items": [{"key": CONTRACT["configMapKey"], "path": CONTRACT["file"]["path"]}],
                },
            }
        ],
        "mounts": [{"name": CONTRACT["volume"], "mountPath": CONTRACT["dir"], "readOnly": True}],
    }
    for obj in (config, find(docs, "Deployment", "agent")):
        result = kubernetes_validate(obj, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_prompt_rolls_the_pods(render: Render) -> None:
    first = _checksum(render(agent={"systemPrompt": "Be brief."}))
    assert first != _checksum(render(agent={"systemPrompt": "Be thorough."}))
    assert first != _checksum(render())


def test_a_prompt_in_a_configmap_of_ones_own_is_mounted_from_it(render: Render) -> None:
    docs = render(agent={"systemPromptConfigMap": {"name": "prompts", "key": "support-v2"}})
    (volume,) = _prompt_parts(docs)["volumes"]
    assert volume["configMap"]["name"] == "prompts"
    assert volume["configMap"]["items"] == [{"key": "support-v2", "path": CONTRACT["file"]["path"]}]
    assert _prompt_parts(docs)["env"] == [
        {"name": "AGENT_SYSTEM_PROMPT_FILE", "value": PROMPT_FILE}
    ]
    assert "binaryData" not in _config(docs)


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ({"tools": ["word_count", "clock"]}, {"AGENT_TOOLS": "word_count,clock"}),
        ({"tools": []}, {"AGENT_TOOLS": "none"}),
        (
            {"context": {"maxMessages": 12, "maxTokens": 2000000}},
            {"AGENT_CONTEXT_MAX_MESSAGES": "12", "AGENT_CONTEXT_MAX_TOKENS": "2000000"},
        ),
    ],
    ids=["some-tools", "no-tools", "window"],
)
def test_tools_and_the_window_become_the_services_variables(
    render: Render, agent: dict[str, Any], expected: dict[str, str]
) -> None:
    data = _config(render(agent=agent))["data"]
    assert {k: data[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"agent": {"systemPrompt": "Be brief.", "systemPromptConfigMap": {"name": "p"}}},
            "agent: set systemPrompt or systemPromptConfigMap.name, not both",
        ),
        ({"agent": {"systemPrompt": " \n\t"}}, "agent.systemPrompt must not be only whitespace"),
        (
            {"extraEnv": {"AGENT_SYSTEM_PROMPT": "Be brief."}},
            "extraEnv may not set AGENT_SYSTEM_PROMPT: use agent.systemPrompt",
        ),
        ({"agent": {"tools": ["clock", "shell"]}}, "at '/agent/tools/1'"),
        ({"agent": {"context": {"maxMessages": 1}}}, "at '/agent/context/maxMessages'"),
        ({"agent": {"systemPromptConfigMap": {"name": "Prompts"}}}, "systemPromptConfigMap/name"),
    ],
    ids=[
        "both-prompts",
        "blank-prompt",
        "prompt-in-extra-env",
        "unknown-tool",
        "tiny-window",
        "bad-name",
    ],
)
def test_what_the_service_would_refuse_fails_the_render(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = run_helm(helm, "template", "agent", str(CHART), "-f", str(path), check=False)
    assert out.returncode != 0
    assert message in out.stderr
