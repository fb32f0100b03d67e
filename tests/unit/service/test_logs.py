"""Log formats: one JSON object per line, or a console line, with the extra fields in both."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agent_service.config import LogFormat
from agent_service.logs import configure_logging

_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(x.handlers[:], x.level, x.propagate, x.disabled) for x in loggers]
    yield
    for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def test_json_format_writes_one_object_per_line_with_extra_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", LogFormat.JSON)
    logging.getLogger("agent_service.request").info("request", extra={"status": 200, "path": "/x"})
    logging.getLogger("agent_service").debug("hidden at info")
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "agent_service.request"
    assert entry["msg"] == "request"
    assert (entry["status"], entry["path"]) == (200, "/x")


def test_console_format_appends_extra_fields_as_key_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("debug", LogFormat.CONSOLE)
    logging.getLogger("agent_service").debug("draining", extra={"delay_s": 5.0})
    (line,) = capsys.readouterr().err.splitlines()
    assert "DEBUG" in line
    assert line.endswith("agent_service: draining delay_s=5.0")


def test_uvicorns_access_log_is_replaced_by_ours(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", LogFormat.JSON)
    logging.getLogger("uvicorn.access").info("GET / 200")
    logging.getLogger("uvicorn.error").info("Started server process")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["Started server process"]


def test_uvicorn_loggers_follow_the_root_level_whatever_set_them_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An in-process uvicorn.Config(log_level="warning") leaves this behind; CI once ran such a
    # server earlier in the same process and uvicorn's startup lines vanished.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn").disabled = True
    configure_logging("info", LogFormat.JSON)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(x)["msg"] for x in lines] == ["Application startup complete."]


def test_uvicorns_end_of_shutdown_budget_line_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The cancelled requests are answered 503 shutting-down; the line announcing it is expected.
    configure_logging("info", LogFormat.JSON)
    logging.getLogger("uvicorn.error").error(
        "Cancel %s running task(s), timeout graceful shutdown exceeded", 1
    )
    logging.getLogger("uvicorn.error").error("Exception in ASGI application")
    levels = [json.loads(x)["level"] for x in capsys.readouterr().err.splitlines()]
    assert levels == ["warning", "error"]
