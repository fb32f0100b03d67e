"""Chart values for clients: the API keys Secret mounted as a reloadable file, budgets as env."""

from __future__ import annotations

from tests.chart.conftest import Render, agent_container, find


def _pod(docs):  # type: ignore[no-untyped-def]
    return find(docs, "Deployment", "agent")["spec"]["template"]


def test_the_api_keys_secret_is_a_file_beside_the_other_secrets_and_rolls_no_pods(
    render: Render,
) -> None:
    plain = render()
    docs = render(**{"clients.apiKeysSecret": "agent-clients", "session.url": "redis://r:6379"})
    env = {e["name"]: e.get("value") for e in agent_container(docs)["env"]}
    assert env["AGENT_API_KEYS_FILE"] == "/etc/moorage/secrets/api-keys"
    volume = next(v for v in _pod(docs)["spec"]["volumes"] if v["name"] == "secrets")
    sources = volume["projected"]["sources"]
    assert sources[-1]["secret"] == {
        "name": "agent-clients",
        "items": [{"key": "api-keys", "path": "api-keys"}],
    }
    assert sources[0]["secret"]["items"] == [{"key": "session-url", "path": "session-url"}]
    mounts = agent_container(docs)["volumeMounts"]
    assert not any("subPath" in m for m in mounts)  # a subPath mount never sees an update
    # Only the chart's own secret is in the checksum: rotating clients' keys rolls no pods.
    alone = render(**{"clients.apiKeysSecret": "agent-clients"})
    annotations = _pod(alone)["metadata"]["annotations"]
    assert (
        annotations["checksum/secret"] == _pod(plain)["metadata"]["annotations"]["checksum/secret"]
    )
    assert [
        s["secret"]["name"]
        for s in next(v for v in _pod(alone)["spec"]["volumes"] if v["name"] == "secrets")[
            "projected"
        ]["sources"]
    ] == ["agent-clients"]


def test_without_api_keys_the_chart_mounts_no_keys_file(render: Render) -> None:
    env = agent_container(render()).get("env", [])
    assert "AGENT_API_KEYS_FILE" not in {e["name"] for e in env}


def test_budgets_reach_the_config_only_when_set(render: Render) -> None:
    default = find(render(), "ConfigMap", "agent")["data"]
    assert default["AGENT_BUDGET_TURN_TOKENS"] == "4096"
    assert "AGENT_BUDGET_SESSION_TOKENS" not in default
    assert "AGENT_BUDGET_CLIENT_DAILY_TOKENS" not in default
    data = find(
        render(
            **{
                "clients.sessionBudgetTokens": 20000,
                "clients.clientDailyBudgetTokens": 1000000,
                "clients.turnReserveTokens": 2000,
            }
        ),
        "ConfigMap",
        "agent",
    )["data"]
    assert data["AGENT_BUDGET_SESSION_TOKENS"] == "20000"
    assert data["AGENT_BUDGET_CLIENT_DAILY_TOKENS"] == "1000000"
    assert data["AGENT_BUDGET_TURN_TOKENS"] == "2000"
