"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]


class ChatRequest(BaseModel):
    """One user turn; a new session is minted when `session_id` is absent."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId | None = Field(None, description="Letters, digits, `_` and `-`; ≤128.")
    message: Annotated[str, StringConstraints(min_length=1)]


class ToolCallOut(BaseModel):
    """A tool the agent used during the turn."""

    name: str
    arguments: dict[str, Any]
    result: str


class ChatResponse(BaseModel):
    """The agent's answer to one turn."""

    session_id: str
    reply: str
    steps: int
    stop_reason: Literal["complete", "max_steps"]
    tool_calls: list[ToolCallOut]
    request_id: str


class MessageOut(BaseModel):
    """One stored message."""

    role: Literal["user", "assistant"]
    content: str
    ts: float
    steps: int | None = None


class SessionOut(BaseModel):
    """A session's stored history, oldest first."""

    session_id: str
    messages: list[MessageOut]


class Health(BaseModel):
    """Liveness and readiness answers."""

    status: Literal["ok", "ready", "not-ready"]
    reason: Literal["starting", "draining", "store-unavailable"] | None = None
