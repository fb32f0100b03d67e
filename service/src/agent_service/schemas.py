"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
# Visible ASCII, as an HTTP header value without spaces: a UUID, a hash, a client's own id.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"
HISTORY_PAGE_DEFAULT = 100
HISTORY_PAGE_MAX = 1000


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


class UsageOut(BaseModel):
    """Tokens a turn used (all its model calls), and their cost when a price is configured."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = Field(None, description="Only for models in AGENT_MODEL_PRICES.")


class ChatResponse(BaseModel):
    """The agent's answer to one turn."""

    session_id: str
    reply: str
    steps: int
    stop_reason: Literal["complete", "max_steps"]
    tool_calls: list[ToolCallOut]
    # A default for answers stored before usage was recorded (Idempotency-Key replays).
    usage: UsageOut = Field(default_factory=UsageOut)
    request_id: str


class MessageOut(BaseModel):
    """One stored message."""

    role: Literal["user", "assistant"]
    content: str
    ts: float
    steps: int | None = None
    usage: UsageOut | None = Field(None, description="Assistant messages: the turn's usage.")
    seq: int = Field(description="Position in the session, from 0; trimmed ones are not reused.")


class SessionOut(BaseModel):
    """A session's stored history, oldest first."""

    session_id: str
    messages: list[MessageOut]
    next_before: int | None = Field(
        None, description="Pass as `before` for the previous (older) page; absent on the first."
    )
    usage: UsageOut | None = Field(
        None, description="Tokens of all the session's turns (trimmed ones included)."
    )


class Health(BaseModel):
    """Liveness and readiness answers."""

    status: Literal["ok", "ready", "not-ready"]
    reason: Literal["starting", "draining", "store-unavailable"] | None = None
    store: Literal["up", "down"] | None = Field(
        None, description="Readiness only: whether the session store answers."
    )
