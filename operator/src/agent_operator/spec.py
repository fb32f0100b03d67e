"""The AgentDeployment spec as typed values, with the CRD's defaults and rules mirrored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "moorage.dev"
VERSION = "v1alpha1"
PLURAL = "agentdeployments"
KIND = "AgentDeployment"

# The same grammar as the CRD's CEL rule (RE2-compatible), so both reject the same strings.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
IMAGE_PATTERN = (
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_IMAGE_RE = re.compile(IMAGE_PATTERN)
MODEL_PATTERN = r"^(echo|openai:[A-Za-z0-9._:/-]+)$"
_MODEL_RE = re.compile(MODEL_PATTERN)
SESSION_URL_PATTERN = r"^(memory://.*|rediss?://.+)$"
_SESSION_URL_RE = re.compile(SESSION_URL_PATTERN)

# Variables the operator sets itself; extra env may not override them (the pod would lie).
RESERVED_ENV = (
    "AGENT_HOST",
    "AGENT_PORT",
    "AGENT_MODEL_API_KEY",
    "AGENT_MODEL_API_KEY_FILE",
    "AGENT_SESSION_URL",
    "AGENT_SESSION_URL_FILE",
    "AGENT_DRAIN_DELAY_S",
    "AGENT_SHUTDOWN_TIMEOUT_S",
)

IntOrStr = int | str


class InvalidSpecError(ValueError):
    """The spec breaks a rule the operator cannot honour."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SecretKeyRef:
    """A key inside a Secret in the resource's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class Autoscaling:
    """HPA settings; when enabled the operator leaves Deployment replicas to the HPA."""

    enabled: bool = False
    min_replicas: int = 2
    max_replicas: int = 10
    target_cpu_utilization_percentage: int = 70


@dataclass(frozen=True)
class Model:
    """Model settings handed to the agent as AGENT_* variables."""

    name: str = "echo"
    base_url: str | None = None
    max_steps: int = 8
    timeout_seconds: int = 15
    request_timeout_seconds: int = 30


@dataclass(frozen=True)
class Session:
    """Where the agent keeps session history."""

    url: str | None = None
    url_secret_ref: SecretKeyRef | None = None
    ttl_seconds: int = 86400


@dataclass(frozen=True)
class Rollout:
    """RollingUpdate settings of the Deployment."""

    max_surge: IntOrStr = 1
    max_unavailable: IntOrStr = 0


@dataclass(frozen=True)
class DisruptionBudget:
    """PodDisruptionBudget settings; exactly one of the two bounds ends up in the PDB."""

    enabled: bool = True
    min_available: IntOrStr | None = None
    max_unavailable: IntOrStr | None = None


@dataclass(frozen=True)
class Termination:
    """Graceful stop: preStop drain, then the agent's shutdown timeout (as the chart does)."""

    drain_delay_seconds: int = 5
    shutdown_timeout_seconds: int = 25


def _default_resources() -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


@dataclass(frozen=True)
class AgentSpec:
    """A parsed AgentDeployment spec with every default filled in."""

    image: str
    replicas: int = 1
    image_pull_policy: str = "IfNotPresent"
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    model: Model = field(default_factory=Model)
    model_api_key_secret_ref: SecretKeyRef | None = None
    session: Session = field(default_factory=Session)
    resources: dict[str, dict[str, str]] = field(default_factory=_default_resources)
    env: tuple[dict[str, Any], ...] = ()
    rollout: Rollout = field(default_factory=Rollout)
    disruption_budget: DisruptionBudget = field(default_factory=DisruptionBudget)
    termination: Termination = field(default_factory=Termination)
    service_port: int = 80
    log_level: str = "info"

    def secret_refs(self) -> list[SecretKeyRef]:
        """Every Secret key the pods need, in a stable order."""
        refs = [self.model_api_key_secret_ref, self.session.url_secret_ref]
        return [ref for ref in refs if ref is not None]


def _ref(raw: Any) -> SecretKeyRef | None:
    if not isinstance(raw, Mapping):
        return None
    return SecretKeyRef(name=str(raw.get("name", "")), key=str(raw.get("key", "")))


def _int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError([f"{key} must be an integer, got {value!r}"])
    return value


def parse_spec(raw: Mapping[str, Any]) -> AgentSpec:
    """Build an AgentSpec from the resource's spec, applying the CRD's defaults."""
    auto = raw.get("autoscaling") or {}
    model = raw.get("model") or {}
    session = raw.get("session") or {}
    rollout = raw.get("rollout") or {}
    pdb = raw.get("disruptionBudget") or {}
    termination = raw.get("termination") or {}
    service = raw.get("service") or {}
    resources = raw.get("resources")
    return AgentSpec(
        image=str(raw.get("image", "")),
        replicas=_int(raw, "replicas", 1),
        image_pull_policy=str(raw.get("imagePullPolicy", "IfNotPresent")),
        autoscaling=Autoscaling(
            enabled=bool(auto.get("enabled", False)),
            min_replicas=_int(auto, "minReplicas", 2),
            max_replicas=_int(auto, "maxReplicas", 10),
            target_cpu_utilization_percentage=_int(auto, "targetCPUUtilizationPercentage", 70),
        ),
        model=Model(
            name=str(model.get("name", "echo")),
            base_url=model.get("baseUrl"),
            max_steps=_int(model, "maxSteps", 8),
            timeout_seconds=_int(model, "timeoutSeconds", 15),
            request_timeout_seconds=_int(model, "requestTimeoutSeconds", 30),
        ),
        model_api_key_secret_ref=_ref(raw.get("modelApiKeySecretRef")),
        session=Session(
            url=session.get("url"),
            url_secret_ref=_ref(session.get("urlSecretRef")),
            ttl_seconds=_int(session, "ttlSeconds", 86400),
        ),
        resources=(
            {k: {rk: str(rv) for rk, rv in v.items()} for k, v in resources.items()}
            if isinstance(resources, Mapping)
            else _default_resources()
        ),
        env=tuple(dict(item) for item in raw.get("env") or ()),
        rollout=Rollout(
            max_surge=rollout.get("maxSurge", 1),
            max_unavailable=rollout.get("maxUnavailable", 0),
        ),
        disruption_budget=DisruptionBudget(
            enabled=bool(pdb.get("enabled", True)),
            min_available=pdb.get("minAvailable"),
            max_unavailable=pdb.get("maxUnavailable"),
        ),
        termination=Termination(
            drain_delay_seconds=_int(termination, "drainDelaySeconds", 5),
            shutdown_timeout_seconds=_int(termination, "shutdownTimeoutSeconds", 25),
        ),
        service_port=_int(service, "port", 80),
        log_level=str(raw.get("logLevel", "info")),
    )


def _is_zero(value: IntOrStr) -> bool:
    return str(value) in {"0", "0%"}


def validate(spec: AgentSpec) -> list[str]:
    """Every rule of the CRD that the operator relies on, as messages (empty when valid).

    The API server enforces the same rules; this is the defence for a CRD installed
    without them (an older revision) and the source of the Degraded condition's message.
    """
    problems: list[str] = []
    if not spec.image:
        problems.append("spec.image is required")
    elif not _IMAGE_RE.match(spec.image):
        problems.append(f"spec.image {spec.image!r} is not a valid image reference")
    if spec.replicas < 0:
        problems.append("spec.replicas must be 0 or more")
    auto = spec.autoscaling
    if auto.min_replicas < 1:
        problems.append("spec.autoscaling.minReplicas must be 1 or more")
    if auto.min_replicas > auto.max_replicas:
        problems.append("spec.autoscaling.minReplicas must be less than or equal to maxReplicas")
    if not _MODEL_RE.match(spec.model.name):
        problems.append("spec.model.name must be 'echo' or 'openai:<model>'")
    for label, ref in (
        ("spec.modelApiKeySecretRef", spec.model_api_key_secret_ref),
        ("spec.session.urlSecretRef", spec.session.url_secret_ref),
    ):
        if ref is not None and (not ref.name or not ref.key):
            problems.append(f"{label} must name a Secret and a key in it")
    if spec.session.url is not None and spec.session.url_secret_ref is not None:
        problems.append("spec.session: set url or urlSecretRef, not both")
    if spec.session.url is not None and not _SESSION_URL_RE.match(spec.session.url):
        problems.append("spec.session.url must start with redis://, rediss:// or memory://")
    if _is_zero(spec.rollout.max_surge) and _is_zero(spec.rollout.max_unavailable):
        problems.append("spec.rollout: maxSurge and maxUnavailable cannot both be 0")
    pdb = spec.disruption_budget
    if pdb.min_available is not None and pdb.max_unavailable is not None:
        problems.append("spec.disruptionBudget: set minAvailable or maxUnavailable, not both")
    for item in spec.env:
        if str(item.get("name", "")) in RESERVED_ENV:
            problems.append(f"spec.env may not set {item.get('name')}: the operator sets it")
    return problems
