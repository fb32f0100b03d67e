"""Settings: defaults per the design, secrets from files, redaction, and every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_service.config import ConfigError, LogFormat, load_settings, unknown_variables


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
    assert shown["session_url"] == "redis://user:***@cache:6379/0"
    assert "sk-very-secret" not in repr(shown)
    assert "hunter2" not in repr(shown)


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
