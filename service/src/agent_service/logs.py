"""Logging setup: one JSON object per line (or a console format for humans)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from agent_service.config import LogFormat

# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines with extra fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and not k.startswith("_")
        )
        return f"{line} {extras}" if extras else line


class ShutdownBudgetIsAWarning(logging.Filter):
    """uvicorn logs the end of its graceful-shutdown budget as an error; here it is expected.

    The requests it cancels are answered 503 `shutting-down` and logged as warnings by the
    request shell, so the line that announces them is a warning too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("Cancel %s running"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_SHUTDOWN_FILTER = ShutdownBudgetIsAWarning()


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Route every logger (ours, uvicorn's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # Whatever configured these before (uvicorn's own dictConfig, an embedding host), they
        # now follow the root logger: its handler, its format and its level.
        uv_logger = logging.getLogger(name)
        uv_logger.handlers.clear()
        uv_logger.setLevel(logging.NOTSET)
        uv_logger.propagate = True
        uv_logger.disabled = False
    logging.getLogger("uvicorn.error").addFilter(_SHUTDOWN_FILTER)  # a set: added once
    # Our request log replaces uvicorn's access log.
    logging.getLogger("uvicorn.access").disabled = True
