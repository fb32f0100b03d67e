"""Settings: defaults per the design, secrets from files, redaction, and every problem named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent_service.config import (
    DEFAULT_SYSTEM_PROMPT,
    MAX_SYSTEM_PROMPT_CHARS,
    ConfigError,
    LogFormat,
    load_settings,
    redact_url,
    unknown_variables,
)


def test_defaults_follow_the_design_table() -> None:
    settings = load_settings()
    assert settings.model == "echo"
    assert settings.max_steps == 8
    assert settings.session_url.get_secret_value() == "memory://"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert (settings.log_level, settings.log_format) == ("info", LogFormat.JSON)
    assert settings.drain_delay_s <= settings.shutdown_timeout_s


def test_an_api_key_file_is_read_and_its_trailing_newline_dropped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = tmp_path / "api-key"
    key.write_text("sk-from-file\n")
    monkeypatch.setenv("AGENT_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("AGENT_MODEL_API_KEY_FILE", str(key))
    settings = load_settings()
    assert settings.model_api_key is not None
    assert settings.model_api_key.get_secret_value() == "sk-from-file"


def test_a_session_url_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = tmp_path / "url"
    url.write_text("redis://:pw@cache:6379/0\n")
    monkeypatch.setenv("AGENT_SESSION_URL_FILE", str(url))
    assert load_settings().session_url.get_secret_value() == "redis://:pw@cache:6379/0"


def test_the_redacted_view_shows_secrets_only_as_set_or_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("AGENT_MODEL_API_KEY", "sk-very-secret")
    monkeypatch.setenv("AGENT_SESSION_URL", "redis://user:hunter2@cache:6379/0")
    shown = load_settings().redacted()
    assert shown["model_api_key"] == "set"
    assert shown["session_url"] == "redis://***@cache:6379/0"
    assert "sk-very-secret" not in repr(shown)
    assert "hunter2" not in repr(shown)


SECRET = "hunter2-0b7e"

REDACTIONS = [
    pytest.param(
        f"redis://cache:6379/0?password={SECRET}",
        "redis://cache:6379/0?password=***",
        id="password-query-param",
    ),
    pytest.param(
        f"rediss://cache:6380/0?ssl_cert_reqs=none&Pass%77ord={SECRET}",
        "rediss://cache:6380/0?ssl_cert_reqs=none&Pass%77ord=***",
        id="percent-encoded-param-name",
    ),
    pytest.param(f"redis://default:{SECRET}@cache/0", "redis://***@cache/0", id="userinfo"),
    pytest.param(f"redis://{SECRET}@cache/0", "redis://***@cache/0", id="user-only-token"),
    pytest.param(f"redis://:a@{SECRET}@cache:1/0", "redis://***@cache:1/0", id="unencoded-at"),
    pytest.param(f"redis://:pa/{SECRET}@cache:6379/0", "redis://***", id="unencoded-slash"),
    pytest.param(f"redis://:pa#{SECRET}@cache:6379/0", "redis://***", id="unencoded-hash"),
    pytest.param(f"redis://:pa?{SECRET}@cache:6379/0", "redis://***", id="unencoded-question"),
    pytest.param(
        f"redis+sentinel://u:{SECRET}@s1:26379,s2:26379/primary/0",
        "redis+sentinel://***@s1:26379,s2:26379/primary/0",
        id="sentinel-hosts",
    ),
    pytest.param(
        f"https://u:{SECRET}@llm.example/v1?api-version=2024-06-01&api_key={SECRET}",
        "https://***@llm.example/v1?api-version=2024-06-01&api_key=***",
        id="base-url-userinfo-and-key",
    ),
    pytest.param(
        f"https://llm.example/v1?a=1;token={SECRET}&sig={SECRET}#{SECRET}",
        "https://llm.example/v1?a=1;token=***&sig=***#***",
        id="semicolon-signature-fragment",
    ),
    pytest.param(f"not a url {SECRET}", "***", id="unparseable"),
    pytest.param("memory://", "memory://", id="nothing-to-hide"),
]


@pytest.mark.parametrize(("url", "shown"), REDACTIONS)
def test_redact_url_masks_every_form_of_credential(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_the_startup_view_redacts_the_session_url_query_and_the_model_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_SESSION_URL", f"redis://cache:6379/0?password={SECRET}")
    monkeypatch.setenv("AGENT_MODEL_BASE_URL", f"https://u:{SECRET}@llm.example/v1?key={SECRET}")
    shown = load_settings().redacted()
    assert shown["session_url"] == "redis://cache:6379/0?password=***"
    assert shown["model_base_url"] == "https://***@llm.example/v1?key=***"
    assert SECRET not in repr(shown)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("AGENT_SESSION_URL", "redis://cache:6379x/0"),
        ("AGENT_SESSION_URL", "redis://cache:99999/0"),
        ("AGENT_SESSION_URL", "redis://cache:0/0"),
        ("AGENT_SESSION_URL", f"redis://:pa/{SECRET}@cache:6379/0"),
        ("AGENT_SESSION_URL", f"redis://:pa?{SECRET}@cache:6379/0"),
        ("AGENT_MODEL_BASE_URL", "https://llm.example:99999/v1"),
        ("AGENT_MODEL_BASE_URL", f"https://u:pa/{SECRET}@llm.example/v1"),
    ],
)
def test_a_url_a_client_would_misparse_is_a_named_configuration_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert [p.split(":")[0] for p in caught.value.problems] == [variable]
    assert SECRET not in str(caught.value)


def test_a_percent_encoded_password_and_an_ipv6_host_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_SESSION_URL", "redis://:pa%2Fss%23w%3Frd@[::1]:6379/0")
    assert load_settings().redacted()["session_url"] == "redis://***@[::1]:6379/0"


def test_every_problem_is_reported_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_MAX_STEPS", "lots")
    monkeypatch.setenv("AGENT_LOG_FORMAT", "yaml")
    monkeypatch.setenv("AGENT_SESSION_URL", "memcached://cache")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    named = " ".join(caught.value.problems)
    for variable in ("AGENT_MAX_STEPS", "AGENT_LOG_FORMAT", "AGENT_SESSION_URL"):
        assert variable in named


def test_inconsistent_values_are_named_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("AGENT_DRAIN_DELAY_S", "60")
    monkeypatch.setenv("AGENT_SHUTDOWN_TIMEOUT_S", "30")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    named = " ".join(caught.value.problems)
    assert "AGENT_MODEL_API_KEY" in named
    assert "AGENT_DRAIN_DELAY_S" in named


def test_unknown_agent_variables_are_reported_but_service_links_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_MAX_STPES", "3")
    monkeypatch.setenv("AGENT_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("AGENT_PORT_8080_TCP", "tcp://10.0.0.1:8080")
    assert unknown_variables() == ["AGENT_MAX_STPES"]


# --- the agent's behaviour: system prompt, tools, context window --------------------------------

PROMPT = "You are Moorage's support agent. Internal: escalate refunds over 100 EUR to tier 2."


def test_the_system_prompt_defaults_to_the_built_in_one_with_every_tool() -> None:
    settings = load_settings()
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.tools == ("calculator", "word_count", "clock")
    assert (settings.context_max_messages, settings.context_max_tokens) == (40, None)


def test_a_system_prompt_file_is_read_without_its_surrounding_whitespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(f"\n{PROMPT}\nSecond line.\n\n")
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT_FILE", str(prompt))
    assert load_settings().system_prompt == f"{PROMPT}\nSecond line."


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "is not a readable file"),
        (b" \n\t\n", "the file is empty"),
        (b"\xff\xfe prompt", "not UTF-8 text"),
        (b"x" * (MAX_SYSTEM_PROMPT_CHARS + 1), "too large (131073 characters"),
        (b"x" * (4 * MAX_SYSTEM_PROMPT_CHARS + 1), "too large (over 131072 characters)"),
    ],
    ids=["missing", "empty", "not-utf8", "too-many-characters", "too-many-bytes"],
)
def test_a_bad_system_prompt_file_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None, problem: str
) -> None:
    prompt = tmp_path / "prompt.txt"
    if content is not None:
        prompt.write_bytes(content)
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT_FILE", str(prompt))
    with pytest.raises(ConfigError) as err:
        load_settings()
    (line,) = err.value.problems
    assert line.startswith("AGENT_SYSTEM_PROMPT_FILE: ")
    assert problem in line


@pytest.mark.parametrize(
    ("value", "problem"),
    [(" \n ", "must not be empty"), ("x" * (MAX_SYSTEM_PROMPT_CHARS + 1), "at most 131072")],
    ids=["blank", "too-long"],
)
def test_a_bad_system_prompt_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    (line,) = err.value.problems
    assert line.startswith("AGENT_SYSTEM_PROMPT: ")
    assert problem in line
    assert "xxxx" not in line


def test_a_prompt_in_both_the_variable_and_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT", "Be brief.")
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT_FILE", str(prompt))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.problems == [
        "AGENT_SYSTEM_PROMPT: set only one of AGENT_SYSTEM_PROMPT and AGENT_SYSTEM_PROMPT_FILE"
    ]


def test_the_startup_view_shows_the_prompt_only_by_length_and_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_SYSTEM_PROMPT", PROMPT)
    shown = load_settings().redacted()
    digest = hashlib.sha256(PROMPT.encode()).hexdigest()[:12]
    assert shown["system_prompt"] == {"chars": len(PROMPT), "sha256": digest, "default": False}
    assert "escalate" not in json.dumps(shown, default=str)


@pytest.mark.parametrize(
    ("value", "tools"),
    [
        ("clock", ("clock",)),
        (" Calculator , clock,", ("calculator", "clock")),
        ("clock,clock", ("clock",)),
        ("none", ()),
        ("NONE", ()),
    ],
)
def test_tools_are_a_comma_separated_list_or_none(
    monkeypatch: pytest.MonkeyPatch, value: str, tools: tuple[str, ...]
) -> None:
    monkeypatch.setenv("AGENT_TOOLS", value)
    assert load_settings().tools == tools


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("clock,shell,fetch", "unknown tool 'shell', 'fetch'"),
        ("", "names no tool"),
        (" , ", "names no tool"),
        ("none,clock", "`none` cannot be combined with tool names"),
    ],
    ids=["unknown", "empty", "only-commas", "none-and-a-tool"],
)
def test_a_bad_tool_list_is_refused_naming_the_valid_tools(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("AGENT_TOOLS", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    (line,) = err.value.problems
    assert line.startswith("AGENT_TOOLS: ")
    assert problem in line
    if problem.startswith(("unknown", "names")):
        assert "valid: calculator, word_count, clock, or `none` for no tool" in line


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"AGENT_CONTEXT_MAX_MESSAGES": "1"},
            "AGENT_CONTEXT_MAX_MESSAGES: Input should be greater",
        ),
        ({"AGENT_CONTEXT_MAX_TOKENS": "0"}, "AGENT_CONTEXT_MAX_TOKENS: Input should be greater"),
        ({"AGENT_CONTEXT_MAX_TOKENS": "many"}, "AGENT_CONTEXT_MAX_TOKENS: Input should be a valid"),
        (
            {"AGENT_CONTEXT_MAX_MESSAGES": "200", "AGENT_MAX_HISTORY_MESSAGES": "100"},
            "AGENT_CONTEXT_MAX_MESSAGES: must not exceed AGENT_MAX_HISTORY_MESSAGES (200 > 100)",
        ),
    ],
)
def test_a_bad_context_window_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(line.startswith(problem) for line in err.value.problems), err.value.problems


def test_the_context_window_is_read_from_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_CONTEXT_MAX_MESSAGES", "6")
    monkeypatch.setenv("AGENT_CONTEXT_MAX_TOKENS", "2000")
    settings = load_settings()
    assert (settings.context_max_messages, settings.context_max_tokens) == (6, 2000)
    assert settings.deprecations == []


def test_the_v0_1_name_of_the_message_window_still_works_and_is_reported_deprecated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_CONTEXT_MESSAGES", "6")
    settings = load_settings()
    assert settings.context_max_messages == 6
    assert settings.deprecations == ["AGENT_CONTEXT_MESSAGES: renamed AGENT_CONTEXT_MAX_MESSAGES"]
    assert "context_messages" not in settings.redacted()
    assert "AGENT_CONTEXT_MESSAGES" not in unknown_variables()


def test_both_names_of_the_message_window_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_CONTEXT_MESSAGES", "6")
    monkeypatch.setenv("AGENT_CONTEXT_MAX_MESSAGES", "6")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.problems == [
        "AGENT_CONTEXT_MESSAGES: set only AGENT_CONTEXT_MAX_MESSAGES (its new name)"
    ]
