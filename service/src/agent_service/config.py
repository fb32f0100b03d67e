"""Settings of the agent service, read once from `AGENT_*` environment variables."""

from __future__ import annotations

import hashlib
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote_plus, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_service.auth import read_keys
from agent_service.store import parse_session_url
from agent_service.tools import BUILTIN_TOOLS, ToolName

ENV_PREFIX = "AGENT_"
SESSION_SCHEMES = (
    "redis",
    "rediss",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
    "memory",
)
# Kubernetes injects `<SERVICE>_PORT=tcp://…` style variables for every Service in the
# namespace unless `enableServiceLinks: false`; they are not ours and must not trip us.
_SERVICE_LINK_SUFFIXES = ("_SERVICE_HOST", "_SERVICE_PORT", "_PORT_")

PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Use the tools when they help."
# In characters, from the variable or the file alike. At most 4 bytes each, so a prompt this
# long fits a ConfigMap (1 MiB) however it is written; the CRD and the chart get the same bound.
MAX_SYSTEM_PROMPT_CHARS = 131_072
NO_TOOLS = "none"  # AGENT_TOOLS=none: the model is offered no tool

REDACTED = "***"
_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
# A query parameter is a credential when its decoded, lower-cased name contains one of these
# (redis-py reads `?password=`; model APIs take `?api_key=`, `?key=`, `?sig=`, `?token=`...).
_SECRET_PARAM_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "sig", "cred")
# Settings shown only as set/unset in the startup line, whatever their type.
_SECRET_FIELD_RE = re.compile(r"(^|_)(key|keys|password|token|secret)$")


class LogFormat(StrEnum):
    """How log records are written."""

    JSON = "json"
    CONSOLE = "console"


class ModelPrice(BaseModel):
    """What a model costs, in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class Settings(BaseSettings):
    """Everything the service reads from its environment; validated once at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    model: str = "echo"
    model_base_url: str = "https://api.openai.com/v1"
    model_api_key: SecretStr | None = None
    model_api_key_file: Path | None = None
    max_steps: int = Field(8, ge=1, le=64)
    model_timeout_s: PositiveSeconds = 15.0
    # Retries of one model call, within AGENT_MODEL_TIMEOUT_S (see providers.RetryPolicy).
    model_retries: int = Field(3, ge=0, le=10)
    request_timeout_s: PositiveSeconds = 30.0
    echo_latency_ms: int = Field(0, ge=0, le=60_000)

    # The agent's behaviour (README "The agent: prompt, tools, context"). The prompt's text is
    # never logged: it can hold internal instructions (see `prompt_facts`).
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, max_length=MAX_SYSTEM_PROMPT_CHARS)
    system_prompt_file: Path | None = None
    # Comma-separated names, or `none`; NoDecode: a list from a plain string, not from JSON.
    tools: Annotated[tuple[ToolName, ...], NoDecode] = get_args(ToolName)
    # The window of stored history a turn sends to the model; the stored history is not cut.
    context_max_messages: int = Field(40, ge=2, le=1000)
    # Bound of that history's token estimate (agent_service.usage.estimate_tokens); unset: none.
    context_max_tokens: int | None = Field(None, ge=1, le=10_000_000)
    # The name of context_max_messages in v0.1.0, still read (with a warning at start).
    context_messages: int | None = Field(None, ge=2, le=1000)

    session_url: SecretStr = SecretStr("memory://")
    session_url_file: Path | None = None
    session_ttl_s: int = Field(86_400, ge=60, le=90 * 86_400)
    # A turn stores two messages; older ones are trimmed in the same atomic write.
    max_history_messages: int = Field(1000, ge=2, le=100_000, multiple_of=2)
    # Bound of one store call (and so of a session read); within a turn, the turn's remaining
    # AGENT_REQUEST_TIMEOUT_S caps it too.
    store_timeout_s: float = Field(1.0, gt=0, le=30)
    readiness_store: Literal["warmup", "always"] = "warmup"
    # Session store TLS and durability (README "Session stores"). TLS files apply to rediss…
    # URLs only; without a CA file the system's CA bundle is trusted.
    session_ca_file: Path | None = None
    session_cert_file: Path | None = None
    session_key_file: Path | None = None
    # Acknowledge a turn only once this many replicas have it (Redis WAIT). Unset: 1 with
    # Sentinel or Cluster (an acknowledged turn survives the loss of its master), 0 with one
    # Redis (which has no replica to wait for).
    session_min_replicas: int | None = Field(None, ge=0, le=16)
    # Bound of that wait, within AGENT_STORE_TIMEOUT_S; fewer replicas by then: 503.
    session_replica_timeout_s: float = Field(0.25, gt=0, le=30)

    # Clients: `client-name:key` lines (a mounted Secret); unset = no client authentication.
    api_keys_file: Path | None = None
    # Token budgets (input + output), enforced across replicas in the store: per session, per
    # client per UTC day. A turn reserves `budget_turn_tokens` before its first model call and
    # settles what it used after; see agent_service.budgets.
    budget_session_tokens: int | None = Field(None, ge=1)
    budget_client_daily_tokens: int | None = Field(None, ge=1)
    budget_turn_tokens: int = Field(4096, ge=1, le=10_000_000)
    # Optional price table for cost figures: {"<model>": {"input": $/1M, "output": $/1M}}.
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: LogFormat = LogFormat.JSON

    drain_delay_s: float = Field(5.0, ge=0, le=600)
    shutdown_timeout_s: PositiveSeconds = 25.0
    max_body_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    max_message_chars: int = Field(8000, ge=1, le=1_000_000)
    # Bounds of what a client sends before the app sees a request (see agent_service.protocol).
    max_header_bytes: int = Field(16_384, ge=1024, le=1024 * 1024)
    max_headers: int = Field(100, ge=10, le=10_000)
    header_timeout_s: PositiveSeconds = 10.0
    body_timeout_s: PositiveSeconds = 30.0

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("system_prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        # Surrounding whitespace (a YAML block's last newline) is not part of an instruction.
        if not value.strip():
            raise ValueError("must not be empty (unset it for the default prompt)")
        return value.strip()

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        valid = f"valid: {', '.join(BUILTIN_TOOLS)}, or `{NO_TOOLS}` for no tool"
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
        if not names:
            # An empty variable is more often an unfilled template than a wish for no tools.
            raise ValueError(f"names no tool ({valid})")
        if names == [NO_TOOLS]:
            return ()
        if NO_TOOLS in names:
            raise ValueError(f"`{NO_TOOLS}` cannot be combined with tool names")
        unknown = [name for name in names if name not in BUILTIN_TOOLS]
        if unknown:
            listed = ", ".join(repr(name) for name in unknown)
            raise ValueError(f"unknown tool {listed} ({valid})")
        return tuple(dict.fromkeys(names))

    @field_validator("system_prompt_file")
    @classmethod
    def _usable_prompt_file(cls, value: Path | None) -> Path | None:
        # Checked here, beside the other fields, so that its problem is named with theirs;
        # `_agent_problems` reads it again when every field is valid.
        if value is not None:
            _read_prompt(value)
        return value

    @field_validator("model_api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable (e.g. an unfilled secret template) means "no key", not a blank key.
        return None if value == "" else value

    @field_validator("model")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        provider, _, name = value.partition(":")
        if value == "echo" or (provider == "openai" and name.strip()):
            return value
        raise ValueError("must be `echo` or `openai:<model>`")

    @field_validator("model_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        _check_authority(value, multi_host=False)
        return value.rstrip("/")

    @field_validator("session_url")
    @classmethod
    def _session_scheme(cls, value: SecretStr) -> SecretStr:
        _check_session_url(value.get_secret_value())
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _usable_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_keys(value)  # KeysFileError is a ValueError naming the line, never a key
        return value

    @field_validator(
        "model_api_key_file",
        "session_url_file",
        "session_ca_file",
        "session_cert_file",
        "session_key_file",
    )
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Resolve `*_FILE` secrets and reject combinations that cannot work together."""
        problems: list[str] = []
        if self.model_api_key_file is not None:
            if self.model_api_key is not None:
                problems.append(_conflict("model_api_key"))
            else:
                key = _read_secret(self.model_api_key_file)
                object.__setattr__(self, "model_api_key", SecretStr(key) if key else None)
        if self.session_url_file is not None:
            if "session_url" in self.model_fields_set:
                problems.append(_conflict("session_url"))
            else:
                url = _read_secret(self.session_url_file)
                try:
                    _check_session_url(url)
                except ValueError as err:
                    problems.append(f"{env_name('session_url_file')}: file content {err}")
                object.__setattr__(self, "session_url", SecretStr(url))
        problems.extend(self._session_store_problems())
        problems.extend(self._agent_problems())
        if self.model.startswith("openai:") and self.model_api_key is None:
            problems.append(
                f"{env_name('model_api_key')}: required by {env_name('model')}={self.model} "
                f"(or set {env_name('model_api_key_file')})"
            )
        if self.drain_delay_s > self.shutdown_timeout_s:
            problems.append(
                f"{env_name('drain_delay_s')}: must not exceed {env_name('shutdown_timeout_s')} "
                f"({self.drain_delay_s} > {self.shutdown_timeout_s})"
            )
        if self.model_timeout_s > self.request_timeout_s:
            problems.append(
                f"{env_name('model_timeout_s')}: must not exceed {env_name('request_timeout_s')} "
                f"({self.model_timeout_s} > {self.request_timeout_s})"
            )
        if self.context_max_messages > self.max_history_messages:
            window = "context_max_messages" if self.context_messages is None else "context_messages"
            problems.append(
                f"{env_name(window)}: must not exceed {env_name('max_history_messages')} "
                f"({self.context_max_messages} > {self.max_history_messages})"
            )
        for budget in ("budget_session_tokens", "budget_client_daily_tokens"):
            limit = getattr(self, budget)
            if limit is not None and self.budget_turn_tokens > limit:
                problems.append(
                    f"{env_name('budget_turn_tokens')}: must not exceed {env_name(budget)} "
                    f"({self.budget_turn_tokens} > {limit}): no turn could ever run"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def session_scheme(self) -> str:
        """Scheme of the session store URL, e.g. `redis`, `rediss+sentinel` or `memory`."""
        return urlsplit(self.session_url.get_secret_value()).scheme

    @property
    def session_wait_replicas(self) -> int:
        """Replicas that must have a turn before it is acknowledged (see session_min_replicas)."""
        if self.session_min_replicas is not None:
            return self.session_min_replicas
        return 1 if "+" in self.session_scheme else 0

    @property
    def deprecations(self) -> list[str]:
        """Variables set by a name that still works but will go: what to use instead."""
        if self.context_messages is None:
            return []
        return [f"{env_name('context_messages')}: renamed {env_name('context_max_messages')}"]

    def _agent_problems(self) -> list[str]:
        """Read the prompt file; fold the old name of the context window into the new one."""
        problems: list[str] = []
        if self.system_prompt_file is not None:
            if "system_prompt" in self.model_fields_set:
                problems.append(_conflict("system_prompt"))
            else:
                try:
                    object.__setattr__(self, "system_prompt", _read_prompt(self.system_prompt_file))
                except ValueError as err:
                    problems.append(f"{env_name('system_prompt_file')}: {err}")
        if self.context_messages is not None:
            if "context_max_messages" in self.model_fields_set:
                problems.append(
                    f"{env_name('context_messages')}: set only {env_name('context_max_messages')}"
                    " (its new name)"
                )
            else:
                object.__setattr__(self, "context_max_messages", self.context_messages)
        return problems

    def _session_store_problems(self) -> list[str]:
        problems: list[str] = []
        tls_files = ("session_ca_file", "session_cert_file", "session_key_file")
        if not self.session_scheme.startswith("rediss"):
            problems.extend(
                f"{env_name(name)}: applies only to a rediss… {env_name('session_url')}"
                for name in tls_files
                if getattr(self, name) is not None
            )
        if (self.session_cert_file is None) != (self.session_key_file is None):
            problems.append(
                f"{env_name('session_cert_file')}: set together with "
                f"{env_name('session_key_file')} (a client certificate needs its key)"
            )
        if self.session_scheme == "memory" and self.session_wait_replicas:
            problems.append(
                f"{env_name('session_min_replicas')}: memory:// has no replicas to wait for"
            )
        if self.session_wait_replicas and self.session_replica_timeout_s >= self.store_timeout_s:
            problems.append(
                f"{env_name('session_replica_timeout_s')}: must be below "
                f"{env_name('store_timeout_s')} ({self.session_replica_timeout_s} >= "
                f"{self.store_timeout_s}), which bounds the write and the wait together"
            )
        return problems

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for the startup log: secrets only as set/unset.

        URLs (any `*_url` setting) are shown with their credentials masked by `redact_url`,
        the system prompt only by its length and digest.
        """
        shown: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if name == "context_messages":
                continue  # folded into context_max_messages; `deprecations` names it
            if name == "system_prompt":
                shown[name] = prompt_facts(self.system_prompt)
            elif name.endswith("_url") and isinstance(plain, str):
                shown[name] = redact_url(plain)
            elif (
                isinstance(value, SecretStr)
                or "SecretStr" in str(info.annotation)
                or _SECRET_FIELD_RE.search(name)
            ):
                shown[name] = "set" if value is not None else "unset"
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown


class ConfigError(Exception):
    """The environment does not describe a configuration the service can run with."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings() -> Settings:
    """Read and validate the settings; raise ConfigError naming every bad variable."""
    try:
        return Settings()
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def unknown_variables() -> list[str]:
    """`AGENT_*` variables that match no setting (likely typos)."""
    known = {env_name(f) for f in Settings.model_fields}
    return sorted(k for k in os.environ if _is_ours(k) and k.upper() not in known)


def _is_ours(key: str) -> bool:
    upper = key.upper()
    if not upper.startswith(ENV_PREFIX):
        return False
    return not any(suffix in upper for suffix in _SERVICE_LINK_SUFFIXES)


def _describe(err: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in err.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if field:
            problems.append(f"{env_name(field)}: {message}")
        else:
            problems.extend(part.strip() for part in message.split("; "))
    return problems


def _conflict(field: str) -> str:
    return f"{env_name(field)}: set only one of {env_name(field)} and {env_name(field + '_file')}"


def prompt_facts(prompt: str) -> dict[str, Any]:
    """What the logs show of a system prompt: enough to tell two apart, never its text."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return {"chars": len(prompt), "sha256": digest, "default": prompt == DEFAULT_SYSTEM_PROMPT}


def _read_prompt(path: Path) -> str:
    """The system prompt in a file (a mounted ConfigMap), checked like AGENT_SYSTEM_PROMPT."""
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    try:
        # Refused before reading when even 4-byte characters could not fit.
        if path.stat().st_size > 4 * MAX_SYSTEM_PROMPT_CHARS:
            raise ValueError(f"the file is too large (over {MAX_SYSTEM_PROMPT_CHARS} characters)")
        prompt = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror})") from None
    if not prompt:
        raise ValueError("the file is empty")
    if len(prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise ValueError(
            f"the file is too large ({len(prompt)} characters, at most {MAX_SYSTEM_PROMPT_CHARS})"
        )
    return prompt


def _read_secret(path: Path) -> str:
    # Mounted Kubernetes secrets often end with a newline that is not part of the value.
    return path.read_text(encoding="utf-8").strip()


def _check_session_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in SESSION_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, redis[s]+sentinel://, redis[s]+cluster:// "
            "or memory:// URL"
        )
    if parts.scheme != "memory":
        # `redis+sentinel://h1:p1,h2:p2/...` and `redis+cluster://` list several hosts.
        _check_authority(url, multi_host="+" in parts.scheme)
        parse_session_url(url)


def _authority_end(rest: str) -> int:
    """Index in `rest` (the URL after `scheme://`) where the authority ends."""
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends, default=len(rest))


def _check_authority(url: str, *, multi_host: bool) -> None:
    """Reject what a client library would misparse or fail on; never quote the value."""
    match = _URL_RE.match(url)
    if match is None:
        raise ValueError("must be a URL of the form scheme://host[:port]/...")
    rest = match["rest"]
    end = _authority_end(rest)
    if "@" in rest[end:]:
        raise ValueError(
            "has an '@' after a '/', '?' or '#': percent-encode those characters in the user "
            "name or password ('/' as %2F, '?' as %3F, '#' as %23, '@' as %40)"
        )
    hosts = rest[:end].rpartition("@")[2]
    for host in hosts.split(",") if multi_host else [hosts]:
        parts = urlsplit(f"//{host}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname:
            raise ValueError("must name a host")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("has an invalid port: it must be a number from 1 to 65535")


def redact_url(url: str) -> str:
    """`url` with its credentials masked, for logs; only its scheme when it is ambiguous.

    Masks the whole userinfo (a user name can be a token too), the value of every
    credential-like query parameter, and any fragment. When an '@' follows the authority
    (an unencoded '/', '?' or '#' in a password) no part of the URL can be trusted to be
    non-secret, so only `scheme://***` is shown.
    """
    match = _URL_RE.match(url)
    if match is None:
        return REDACTED
    scheme, rest = match["scheme"], match["rest"]
    end = _authority_end(rest)
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        return f"{scheme}://{REDACTED}"
    _, at, hosts = authority.rpartition("@")
    before_fragment, hash_mark, _ = tail.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    shown = f"{scheme}://{REDACTED + '@' if at else ''}{hosts}{path}"
    if question_mark:
        shown += "?" + _redact_query(query)
    if hash_mark:
        shown += "#" + REDACTED
    return shown


def _redact_query(query: str) -> str:
    pieces = re.split(r"([&;])", query)
    for i, piece in enumerate(pieces):
        name, equals, _ = piece.partition("=")
        decoded = unquote_plus(name).lower()
        if equals and any(word in decoded for word in _SECRET_PARAM_WORDS):
            pieces[i] = f"{name}={REDACTED}"
    return "".join(pieces)
