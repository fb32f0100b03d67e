"""Log formats: one JSON object per line, or a console line, with the extra fields in both."""

from __future__ import annotations

import json
import logging

import pytest

from agent_service.config import LogFormat
from agent_service.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = False


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
