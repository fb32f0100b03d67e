"""The AgentDeployment spec as typed values, with the CRD's defaults and rules mirrored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent_operator import contract

GROUP = "moorage.dev"
VERSION = "v1beta1"
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
# What an HPA may scale on: CPU utilisation, or turns in flight per pod (agent_turns_in_flight).
AUTOSCALING_METRICS = ("cpu", "inflight")
# The service's gauge (agent_service.metrics.TURNS_IN_FLIGHT), as prometheus-adapter serves it.
TURNS_IN_FLIGHT = "agent_turns_in_flight"
# What the service accepts (agent_service.config): a host, a port from 1 to 65535 if any, and no
# '@' after the host part (an unencoded '/', '?' or '#' in a password, which clients misparse).
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_HOST = r"(?:[^/?#@:\[\]]+|\[[0-9A-Fa-f:.]+\])"
# Sentinel and Cluster URLs list several hosts, separated by commas.
_HOSTS = rf"(?:[^/?#@:\[\],]+|\[[0-9A-Fa-f:.]+\])(?::{_PORT}?)?"
_HOSTS = rf"{_HOSTS}(?:,{_HOSTS})*"
SESSION_URL_PATTERN = (
    rf"^(?:memory://.*|rediss?://(?:[^/?#]*@)?{_HOST}(?::{_PORT}?)?(?:[/?#][^@]*)?"
    rf"|rediss?\+sentinel://(?:[^/?#]*@)?{_HOSTS}/[^/?#@]+(?:/[0-9]*)?/?(?:[?#][^@]*)?"
    rf"|rediss?\+cluster://(?:[^/?#]*@)?{_HOSTS}/?(?:#[^@]*)?)$"
)
SESSION_URL_MESSAGE = (
    "session.url must start with redis://, rediss://, redis[s]+sentinel://, "
    "redis[s]+cluster:// or memory://, name its hosts (and a Sentinel its master), have "
    "a port from 1 to 65535 if any, and percent-encode '/', '?' and '#' in a password"
)
_SESSION_URL_RE = re.compile(SESSION_URL_PATTERN)
# A user name, password or token in spec.session.url would sit in the ConfigMap and the object,
# readable by anyone who may read those: such a URL belongs in a Secret (urlSecretRef).
SESSION_URL_CREDENTIALS_PATTERN = (
    r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@"
    r"|[?&;][^=&;]*(?i:pass|pwd|secret|token|key|auth|sig|cred)[^=&;]*="
)
_SESSION_URL_CREDENTIALS_RE = re.compile(SESSION_URL_CREDENTIALS_PATTERN)
SESSION_URL_CREDENTIALS_MESSAGE = (
    "session.url must not carry a user name, password or token (it would be readable in the "
    "ConfigMap): put the URL in a Secret and set session.urlSecretRef"
)

# Variables the operator sets itself; extra env may not override them (the pod would lie).
RESERVED_ENV = (
    "AGENT_HOST",
    "AGENT_PORT",
    "AGENT_MODEL_API_KEY",
    "AGENT_MODEL_API_KEY_FILE",
    "AGENT_SESSION_URL",
    "AGENT_SESSION_URL_FILE",
    "AGENT_SESSION_CA_FILE",
    "AGENT_SESSION_CERT_FILE",
    "AGENT_SESSION_KEY_FILE",
    "AGENT_DRAIN_DELAY_S",
    "AGENT_SHUTDOWN_TIMEOUT_S",
    # The prompt's one way in is spec.agent: a variable beside its file stops the service.
    "AGENT_SYSTEM_PROMPT",
    "AGENT_SYSTEM_PROMPT_FILE",
)

IntOrStr = int | str
Obj = dict[str, Any]

# Labels the operator puts on its pods and Service (the first two select the pods) and the one
# the Deployment controller adds: spec.pod.labels and spec.service.labels may not set them.
RESERVED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "pod-template-hash",
)
# The operator's own label and annotation keys (config checksum, template hash, gate) live here.
RESERVED_PREFIX = f"{GROUP}/"
# Kubernetes' grammars (apimachinery validation), so a bad key is refused here, by name.
_NAME_PART = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$"
LABEL_VALUE_PATTERN = rf"^(?:{_NAME_PART})?$"
_DNS_SUBDOMAIN_RE = re.compile(DNS_SUBDOMAIN_PATTERN)
_DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN)
_LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
_QUALIFIED_NAME_RE = re.compile(rf"^(?:{DNS_SUBDOMAIN_PATTERN[1:-1]}/)?{_NAME_PART}$")
# Absolute, no empty segment, no trailing slash: so "under /tmp" is a plain prefix test.
MOUNT_PATH_PATTERN = r"^(?:/[^/]+)+$"
_MOUNT_PATH_RE = re.compile(MOUNT_PATH_PATTERN)
# A ConfigMap's key (apimachinery IsConfigMapKey).
_CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")

# The agent service's own bounds of the settings these spec fields become (AGENT_* variables),
# so a spec the service would refuse is Degraded here rather than a crash-looping pod.
# BEGIN GENERATED by `make schemas` from agent_service.config; do not edit by hand.
SERVICE_BOUNDS: dict[str, tuple[int, int]] = {
    "model.maxSteps": (1, 64),
    "model.timeoutSeconds": (1, 3600),
    "model.requestTimeoutSeconds": (1, 3600),
    "session.ttlSeconds": (60, 7776000),
    "termination.shutdownTimeoutSeconds": (1, 3600),
    "clients.turnReserveTokens": (1, 10000000),
    "agent.context.maxMessages": (2, 1000),
    "agent.context.maxTokens": (1, 10000000),
}
SERVICE_CHOICES: dict[str, tuple[str, ...]] = {
    "logLevel": ("debug", "info", "warning", "error"),
    "agent.tools": ("calculator", "word_count", "clock"),
}
SERVICE_MAX_LENGTHS: dict[str, int] = {
    "agent.systemPrompt": 131072,
}
# END GENERATED


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


_AUTO = contract.AUTOSCALING
_TERMINATION = contract.TERMINATION


@dataclass(frozen=True)
class Autoscaling:
    """HPA settings; when enabled the operator leaves Deployment replicas to the HPA."""

    enabled: bool = False
    metric: str = "cpu"  # or "inflight": agent_turns_in_flight per pod, via prometheus-adapter
    # The numbers' defaults are the pod contract's (the chart's values.yaml has the same).
    min_replicas: int = int(_AUTO["minReplicas"])
    max_replicas: int = int(_AUTO["maxReplicas"])
    target_cpu_utilization_percentage: int = int(_AUTO["targetCPUUtilizationPercentage"])
    target_turns_in_flight_per_pod: int = int(_AUTO["targetTurnsInFlightPerPod"])
    # HPA behavior for long turns: add pods at once, remove them slowly, one at a time.
    scale_up_stabilization_seconds: int = int(_AUTO["scaleUpStabilizationSeconds"])
    scale_up_pods: int = int(_AUTO["scaleUpPods"])
    scale_up_percent: int = int(_AUTO["scaleUpPercent"])
    scale_up_period_seconds: int = int(_AUTO["scaleUpPeriodSeconds"])
    scale_down_stabilization_seconds: int = int(_AUTO["scaleDownStabilizationSeconds"])
    scale_down_pods: int = int(_AUTO["scaleDownPods"])
    scale_down_period_seconds: int = int(_AUTO["scaleDownPeriodSeconds"])


@dataclass(frozen=True)
class Model:
    """Model settings handed to the agent as AGENT_* variables."""

    name: str = "echo"
    base_url: str | None = None
    max_steps: int = 8
    timeout_seconds: int = 15
    request_timeout_seconds: int = 30


@dataclass(frozen=True)
class SessionTls:
    """Files for a rediss… session URL: the CA bundle and a client certificate, from Secrets."""

    ca_secret_ref: SecretKeyRef | None = None
    # A kubernetes.io/tls Secret: its tls.crt and tls.key keys.
    client_cert_secret: str | None = None

    def refs(self) -> list[SecretKeyRef]:
        """The Secret keys these files come from."""
        refs = [] if self.ca_secret_ref is None else [self.ca_secret_ref]
        if self.client_cert_secret is not None:
            refs += [SecretKeyRef(self.client_cert_secret, k) for k in ("tls.crt", "tls.key")]
        return refs


@dataclass(frozen=True)
class Session:
    """Where the agent keeps session history."""

    url: str | None = None
    url_secret_ref: SecretKeyRef | None = None
    ttl_seconds: int = 86400
    tls: SessionTls = field(default_factory=SessionTls)


@dataclass(frozen=True)
class Clients:
    """Client API keys and token budgets (0: no budget)."""

    api_keys_secret_ref: SecretKeyRef | None = None
    session_budget_tokens: int = 0
    client_daily_budget_tokens: int = 0
    turn_reserve_tokens: int = 4096


@dataclass(frozen=True)
class GatePrompt:
    """One smoke prompt: the new pod's answer must contain and/or match, within a latency."""

    message: str
    contains: str | None = None
    matches: str | None = None
    max_latency_ms: int = 5000


@dataclass(frozen=True)
class Rollout:
    """RollingUpdate settings of the Deployment, its smoke gate and automatic rollback."""

    max_surge: IntOrStr = 1
    max_unavailable: IntOrStr = 0
    progress_deadline_seconds: int = 600
    auto_rollback: bool = True
    gate: tuple[GatePrompt, ...] = ()


@dataclass(frozen=True)
class DisruptionBudget:
    """PodDisruptionBudget settings; exactly one of the two bounds ends up in the PDB."""

    enabled: bool = True
    min_available: IntOrStr | None = None
    max_unavailable: IntOrStr | None = None


@dataclass(frozen=True)
class Termination:
    """Graceful stop: preStop drain, then the agent's shutdown timeout (as the chart does)."""

    drain_delay_seconds: int = int(_TERMINATION["drainDelaySeconds"])
    # At least model.requestTimeoutSeconds: a pod removed mid-turn lets the turn finish.
    shutdown_timeout_seconds: int = int(_TERMINATION["shutdownTimeoutSeconds"])


@dataclass(frozen=True)
class Pod:
    """Where the pods run and how they are identified: PodSpec fields, passed through as given.

    The chart's values of the same meaning: nodeSelector, tolerations, affinity,
    topologySpread, priorityClassName, imagePullSecrets, serviceAccount, podAnnotations,
    podLabels, extraVolumes and extraVolumeMounts.
    """

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()
    affinity: Obj = field(default_factory=dict)
    # None: the contract's spread over zones and nodes (the chart's default); (): none at all.
    topology_spread_constraints: tuple[Obj, ...] | None = None
    priority_class_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    # None: a ServiceAccount the operator creates, named like the resource (the chart's default).
    service_account_name: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    volumes: tuple[Obj, ...] = ()
    volume_mounts: tuple[Obj, ...] = ()


@dataclass(frozen=True)
class ConfigMapKeyRef:
    """A key inside a ConfigMap in the resource's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class Agent:
    """What the agent is told and may do (the chart's agent.* values).

    `tools` None offers every tool (the service's default), () none. The context window's
    bounds are left to the service's defaults while None.
    """

    system_prompt: str | None = None
    system_prompt_config_map_ref: ConfigMapKeyRef | None = None
    tools: tuple[str, ...] | None = None
    context_max_messages: int | None = None
    context_max_tokens: int | None = None


@dataclass(frozen=True)
class Service:
    """The Service in front of the pods."""

    port: int = 80
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


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
    clients: Clients = field(default_factory=Clients)
    resources: dict[str, dict[str, str]] = field(default_factory=contract.resources)
    env: tuple[dict[str, Any], ...] = ()
    rollout: Rollout = field(default_factory=Rollout)
    disruption_budget: DisruptionBudget = field(default_factory=DisruptionBudget)
    termination: Termination = field(default_factory=Termination)
    service: Service = field(default_factory=Service)
    pod: Pod = field(default_factory=Pod)
    agent: Agent = field(default_factory=Agent)
    log_level: str = "info"

    def secret_refs(self) -> list[SecretKeyRef]:
        """Every Secret key the pods need, in a stable order."""
        refs = [
            self.model_api_key_secret_ref,
            self.session.url_secret_ref,
            self.clients.api_keys_secret_ref,
        ]
        return [ref for ref in refs if ref is not None] + self.session.tls.refs()


def _ref(raw: Any) -> SecretKeyRef | None:
    if not isinstance(raw, Mapping):
        return None
    return SecretKeyRef(name=str(raw.get("name", "")), key=str(raw.get("key", "")))


def _int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError([f"{key} must be an integer, got {value!r}"])
    return value


def _prompt(raw: Any) -> GatePrompt:
    if not isinstance(raw, Mapping):
        raise InvalidSpecError([f"rollout.gate.prompts items must be objects, got {raw!r}"])
    contains, matches = raw.get("contains"), raw.get("matches")
    return GatePrompt(
        message=str(raw.get("message", "")),
        contains=None if contains is None else str(contains),
        matches=None if matches is None else str(matches),
        max_latency_ms=_int(raw, "maxLatencyMs", 5000),
    )


def _pruned(value: Any) -> Any:
    """A deep copy without nulls: the API server drops them from the child, which would then
    look drifted on every pass."""
    if isinstance(value, Mapping):
        return {str(k): _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_pruned(v) for v in value if v is not None]
    return value


def _object(raw: Mapping[str, Any], key: str, where: str) -> Obj:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpecError([f"spec.{where}.{key} must be an object"])
    return dict(_pruned(value))


def _strings(raw: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = _object(raw, key, where)
    for name, item in value.items():
        if not isinstance(item, str):
            raise InvalidSpecError([f"spec.{where}.{key}[{name!r}] must be a string"])
    return value


def _objects(raw: Mapping[str, Any], key: str, where: str) -> tuple[Obj, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InvalidSpecError([f"spec.{where}.{key} must be a list of objects"])
    return tuple(dict(_pruned(item)) for item in value)


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(value)


def _pod(raw: Mapping[str, Any]) -> Pod:
    spread = raw.get("topologySpreadConstraints")
    return Pod(
        node_selector=_strings(raw, "nodeSelector", "pod"),
        tolerations=_objects(raw, "tolerations", "pod"),
        affinity=_object(raw, "affinity", "pod"),
        topology_spread_constraints=(
            None if spread is None else _objects(raw, "topologySpreadConstraints", "pod")
        ),
        priority_class_name=_optional_str(raw, "priorityClassName"),
        image_pull_secrets=tuple(
            str(item.get("name", "")) for item in _objects(raw, "imagePullSecrets", "pod")
        ),
        service_account_name=_optional_str(raw, "serviceAccountName"),
        annotations=_strings(raw, "annotations", "pod"),
        labels=_strings(raw, "labels", "pod"),
        volumes=_objects(raw, "volumes", "pod"),
        volume_mounts=_objects(raw, "volumeMounts", "pod"),
    )


def _optional_int(raw: Mapping[str, Any], key: str) -> int | None:
    return None if raw.get(key) is None else _int(raw, key, 0)


def _agent(raw: Mapping[str, Any]) -> Agent:
    context = raw.get("context") or {}
    ref = raw.get("systemPromptConfigMapRef")
    tools = raw.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidSpecError(["spec.agent.tools must be a list of tool names"])
    return Agent(
        system_prompt=_optional_str(raw, "systemPrompt"),
        system_prompt_config_map_ref=(
            ConfigMapKeyRef(
                str(ref.get("name", "")), str(ref.get("key", contract.SYSTEM_PROMPT_KEY))
            )
            if isinstance(ref, Mapping)
            else None
        ),
        tools=None if tools is None else tuple(str(name) for name in tools),
        context_max_messages=_optional_int(context, "maxMessages"),
        context_max_tokens=_optional_int(context, "maxTokens"),
    )


def parse_spec(raw: Mapping[str, Any]) -> AgentSpec:
    """Build an AgentSpec from the resource's spec, applying the CRD's defaults."""
    auto = raw.get("autoscaling") or {}
    model = raw.get("model") or {}
    session = raw.get("session") or {}
    session_tls = session.get("tls") or {}
    client_cert = session_tls.get("clientCertSecretRef")
    clients = raw.get("clients") or {}
    rollout = raw.get("rollout") or {}
    pdb = raw.get("disruptionBudget") or {}
    termination = raw.get("termination") or {}
    service = raw.get("service") or {}
    resources = raw.get("resources")
    # Defaults of the fields the pod contract fixes, from the dataclasses that read it.
    a, t = Autoscaling(), Termination()
    return AgentSpec(
        image=str(raw.get("image", "")),
        replicas=_int(raw, "replicas", 1),
        image_pull_policy=str(raw.get("imagePullPolicy", "IfNotPresent")),
        autoscaling=Autoscaling(
            enabled=bool(auto.get("enabled", False)),
            metric=str(auto.get("metric", "cpu")),
            min_replicas=_int(auto, "minReplicas", a.min_replicas),
            max_replicas=_int(auto, "maxReplicas", a.max_replicas),
            target_cpu_utilization_percentage=_int(
                auto, "targetCPUUtilizationPercentage", a.target_cpu_utilization_percentage
            ),
            target_turns_in_flight_per_pod=_int(
                auto, "targetTurnsInFlightPerPod", a.target_turns_in_flight_per_pod
            ),
            scale_up_stabilization_seconds=_int(
                auto, "scaleUpStabilizationSeconds", a.scale_up_stabilization_seconds
            ),
            scale_up_pods=_int(auto, "scaleUpPods", a.scale_up_pods),
            scale_up_percent=_int(auto, "scaleUpPercent", a.scale_up_percent),
            scale_up_period_seconds=_int(auto, "scaleUpPeriodSeconds", a.scale_up_period_seconds),
            scale_down_stabilization_seconds=_int(
                auto, "scaleDownStabilizationSeconds", a.scale_down_stabilization_seconds
            ),
            scale_down_pods=_int(auto, "scaleDownPods", a.scale_down_pods),
            scale_down_period_seconds=_int(
                auto, "scaleDownPeriodSeconds", a.scale_down_period_seconds
            ),
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
            tls=SessionTls(
                ca_secret_ref=_ref(session_tls.get("caSecretRef")),
                client_cert_secret=(
                    str(client_cert.get("name", "")) if isinstance(client_cert, Mapping) else None
                ),
            ),
        ),
        clients=Clients(
            api_keys_secret_ref=_ref(clients.get("apiKeysSecretRef")),
            session_budget_tokens=_int(clients, "sessionBudgetTokens", 0),
            client_daily_budget_tokens=_int(clients, "clientDailyBudgetTokens", 0),
            turn_reserve_tokens=_int(clients, "turnReserveTokens", 4096),
        ),
        resources=(
            {k: {rk: str(rv) for rk, rv in v.items()} for k, v in resources.items()}
            if isinstance(resources, Mapping)
            else contract.resources()
        ),
        env=tuple(dict(item) for item in raw.get("env") or ()),
        rollout=Rollout(
            max_surge=rollout.get("maxSurge", 1),
            max_unavailable=rollout.get("maxUnavailable", 0),
            progress_deadline_seconds=_int(rollout, "progressDeadlineSeconds", 600),
            auto_rollback=bool(rollout.get("autoRollback", True)),
            gate=tuple(_prompt(item) for item in (rollout.get("gate") or {}).get("prompts") or ()),
        ),
        disruption_budget=DisruptionBudget(
            enabled=bool(pdb.get("enabled", True)),
            min_available=pdb.get("minAvailable"),
            max_unavailable=pdb.get("maxUnavailable"),
        ),
        termination=Termination(
            drain_delay_seconds=_int(termination, "drainDelaySeconds", t.drain_delay_seconds),
            shutdown_timeout_seconds=_int(
                termination, "shutdownTimeoutSeconds", t.shutdown_timeout_seconds
            ),
        ),
        service=Service(
            port=_int(service, "port", 80),
            annotations=_strings(service, "annotations", "service"),
            labels=_strings(service, "labels", "service"),
        ),
        pod=_pod(raw.get("pod") or {}),
        agent=_agent(raw.get("agent") or {}),
        log_level=str(raw.get("logLevel", "info")),
    )


def _bounded_values(spec: AgentSpec) -> dict[str, int | None]:
    """The spec fields SERVICE_BOUNDS covers, by their path under spec (None: unset)."""
    return {
        "agent.context.maxMessages": spec.agent.context_max_messages,
        "agent.context.maxTokens": spec.agent.context_max_tokens,
        "model.maxSteps": spec.model.max_steps,
        "model.timeoutSeconds": spec.model.timeout_seconds,
        "model.requestTimeoutSeconds": spec.model.request_timeout_seconds,
        "session.ttlSeconds": spec.session.ttl_seconds,
        "termination.shutdownTimeoutSeconds": spec.termination.shutdown_timeout_seconds,
        "clients.turnReserveTokens": spec.clients.turn_reserve_tokens,
    }


# Bounds of the gate, the same in the CRD: a gate is a smoke test, not an evaluation suite.
GATE_MAX_PROMPTS = 10
GATE_MAX_LATENCY_MS = 60000


def _gate_problems(rollout: Rollout) -> list[str]:
    problems = []
    if not 10 <= rollout.progress_deadline_seconds <= 3600:
        problems.append("spec.rollout.progressDeadlineSeconds must be between 10 and 3600")
    if len(rollout.gate) > GATE_MAX_PROMPTS:
        problems.append(f"spec.rollout.gate.prompts may have at most {GATE_MAX_PROMPTS} items")
    for index, prompt in enumerate(rollout.gate):
        where = f"spec.rollout.gate.prompts[{index}]"
        if not prompt.message:
            problems.append(f"{where}.message is required")
        if prompt.contains is None and prompt.matches is None:
            problems.append(f"{where}: set contains or matches (what the answer must hold)")
        if prompt.matches is not None:
            try:
                re.compile(prompt.matches)
            except re.error as exc:
                problems.append(f"{where}.matches is not a valid regular expression: {exc}")
        if not 100 <= prompt.max_latency_ms <= GATE_MAX_LATENCY_MS:
            problems.append(f"{where}.maxLatencyMs must be between 100 and {GATE_MAX_LATENCY_MS}")
    return problems


def _metadata_problems(
    where: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> list[str]:
    """Labels and annotations a user adds: well-formed, and none of the operator's own keys."""
    problems = []
    for kind, keys in (("labels", labels), ("annotations", annotations)):
        for key in keys:
            if key.startswith(RESERVED_PREFIX) or (kind == "labels" and key in RESERVED_LABELS):
                problems.append(
                    f"spec.{where}.{kind} may not set {key}: the operator sets it "
                    f"({', '.join(RESERVED_LABELS[:2])} select the pods; {RESERVED_PREFIX}* "
                    "keys are the operator's own)"
                )
            elif len(key) > 317 or not _QUALIFIED_NAME_RE.match(key):
                problems.append(
                    f"spec.{where}.{kind} key {key!r} is not a valid Kubernetes key "
                    "([prefix/]name, name at most 63 characters)"
                )
    for key, value in labels.items():
        if not _LABEL_VALUE_RE.match(value):
            problems.append(
                f"spec.{where}.labels[{key!r}] must be a label value: at most 63 characters, "
                "alphanumeric at both ends, '-', '_' and '.' between"
            )
    return problems


def _name_problems(pod: Pod) -> list[str]:
    problems = []
    for label, name in (
        ("serviceAccountName", pod.service_account_name),
        ("priorityClassName", pod.priority_class_name),
        *((f"imagePullSecrets[{i}].name", n) for i, n in enumerate(pod.image_pull_secrets)),
    ):
        if name is not None and (len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name)):
            problems.append(f"spec.pod.{label} must be a DNS subdomain name, got {name!r}")
    for key, value in pod.node_selector.items():
        if not _QUALIFIED_NAME_RE.match(key) or not _LABEL_VALUE_RE.match(value):
            problems.append(f"spec.pod.nodeSelector[{key!r}] is not a valid node label")
    return problems


def _toleration_problems(tolerations: tuple[Obj, ...]) -> list[str]:
    problems = []
    for index, item in enumerate(tolerations):
        where = f"spec.pod.tolerations[{index}]"
        operator = item.get("operator", "Equal")
        if operator not in TOLERATION_OPERATORS:
            problems.append(f"{where}.operator must be Exists or Equal")
        if item.get("effect", "") not in TOLERATION_EFFECTS:
            problems.append(f"{where}.effect must be NoSchedule, PreferNoSchedule or NoExecute")
        if operator == "Exists" and item.get("value"):
            problems.append(f"{where}: operator Exists takes no value")
        if not item.get("key") and operator != "Exists":
            problems.append(f"{where}: a toleration without a key needs operator Exists")
        if "tolerationSeconds" in item and item.get("effect") != "NoExecute":
            problems.append(f"{where}.tolerationSeconds applies only to effect NoExecute")
    return problems


def _spread_problems(constraints: tuple[Obj, ...] | None) -> list[str]:
    problems = []
    seen = set()
    for index, item in enumerate(constraints or ()):
        where = f"spec.pod.topologySpreadConstraints[{index}]"
        skew, key, when = (
            item.get("maxSkew"),
            item.get("topologyKey"),
            item.get("whenUnsatisfiable"),
        )
        if isinstance(skew, bool) or not isinstance(skew, int) or skew < 1:
            problems.append(f"{where}.maxSkew must be an integer of 1 or more")
        if not isinstance(key, str) or not key:
            problems.append(f"{where}.topologyKey is required (e.g. topology.kubernetes.io/zone)")
        if when not in WHEN_UNSATISFIABLE:
            problems.append(f"{where}.whenUnsatisfiable must be DoNotSchedule or ScheduleAnyway")
        if "minDomains" in item and when != "DoNotSchedule":
            problems.append(f"{where}.minDomains applies only to whenUnsatisfiable DoNotSchedule")
        if (key, when) in seen:
            problems.append(f"{where} repeats topologyKey {key} with whenUnsatisfiable {when}")
        seen.add((key, when))
    return problems


def _reserved_mount(path: str) -> str | None:
    """The contract's mount path that `path` is, or is above or under, if any."""
    for reserved in contract.MOUNT_PATHS:
        if path == reserved or path.startswith(f"{reserved}/") or reserved.startswith(f"{path}/"):
            return reserved
    return None


def _volume_problems(pod: Pod) -> list[str]:
    problems = []
    names: list[str] = []
    for index, volume in enumerate(pod.volumes):
        name = volume.get("name")
        where = f"spec.pod.volumes[{index}]"
        if not isinstance(name, str) or not _DNS_LABEL_RE.match(name):
            problems.append(
                f"{where}.name must be a DNS label (lower case, at most 63), got {name!r}"
            )
        elif name in contract.VOLUMES:
            problems.append(
                f"{where}.name may not be {name}: the pod contract's own volumes are "
                f"{', '.join(contract.VOLUMES)}"
            )
        elif name in names:
            problems.append(f"{where}.name {name} is used twice")
        if isinstance(name, str):
            names.append(name)
    paths: list[str] = []
    for index, mount in enumerate(pod.volume_mounts):
        where = f"spec.pod.volumeMounts[{index}]"
        name, path = mount.get("name"), mount.get("mountPath")
        if name not in names or name in contract.VOLUMES:
            problems.append(f"{where}.name must be one of spec.pod.volumes, got {name!r}")
        if not isinstance(path, str) or not _MOUNT_PATH_RE.match(path):
            problems.append(
                f"{where}.mountPath must be an absolute path without a trailing '/', got {path!r}"
            )
            continue
        if {".", ".."} & set(path.split("/")):
            problems.append(f"{where}.mountPath may not contain . or .. segments")
        reserved = _reserved_mount(path)
        if reserved is not None:
            problems.append(
                f"{where}.mountPath {path} collides with the pod contract's mount {reserved} "
                f"(contract mounts: {', '.join(contract.MOUNT_PATHS)}; not at, above or under them)"
            )
        if path in paths:
            problems.append(f"{where}.mountPath {path} is used twice")
        paths.append(path)
        if "subPath" in mount and "subPathExpr" in mount:
            problems.append(f"{where}: set subPath or subPathExpr, not both")
    return problems


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
    if auto.metric not in AUTOSCALING_METRICS:
        problems.append("spec.autoscaling.metric must be 'cpu' or 'inflight'")
    if spec.termination.shutdown_timeout_seconds < spec.model.request_timeout_seconds:
        problems.append(
            "spec.termination.shutdownTimeoutSeconds must be at least "
            "model.requestTimeoutSeconds: a turn still running when its pod is removed "
            "(scale-down, rollout) would be cut"
        )
    if not _MODEL_RE.match(spec.model.name):
        problems.append("spec.model.name must be 'echo' or 'openai:<model>'")
    values = _bounded_values(spec)
    for path, (low, high) in SERVICE_BOUNDS.items():
        value = values[path]
        if value is not None and not low <= value <= high:
            problems.append(f"spec.{path} must be between {low} and {high}")
    if spec.model.timeout_seconds > spec.model.request_timeout_seconds:
        problems.append(
            "spec.model.timeoutSeconds must be less than or equal to model.requestTimeoutSeconds"
        )
    if spec.model.name.startswith("openai:") and spec.model_api_key_secret_ref is None:
        problems.append(
            "spec.modelApiKeySecretRef is required when spec.model.name is openai:<model>"
        )
    for label, ref in (
        ("spec.modelApiKeySecretRef", spec.model_api_key_secret_ref),
        ("spec.session.urlSecretRef", spec.session.url_secret_ref),
        ("spec.clients.apiKeysSecretRef", spec.clients.api_keys_secret_ref),
        ("spec.session.tls.caSecretRef", spec.session.tls.ca_secret_ref),
    ):
        if ref is not None and (not ref.name or not ref.key):
            problems.append(f"{label} must name a Secret and a key in it")
    if spec.session.tls.client_cert_secret == "":
        problems.append("spec.session.tls.clientCertSecretRef must name a Secret")
    # A URL from a Secret is the service's to check (at start, naming the setting).
    plain_url = not (spec.session.url or "").startswith("rediss")
    if spec.session.tls.refs() and spec.session.url_secret_ref is None and plain_url:
        problems.append(
            "spec.session.tls applies only to a rediss… session URL "
            "(set session.url or session.urlSecretRef to one)"
        )
    for label, budget in (
        ("sessionBudgetTokens", spec.clients.session_budget_tokens),
        ("clientDailyBudgetTokens", spec.clients.client_daily_budget_tokens),
    ):
        if budget and spec.clients.turn_reserve_tokens > budget:
            problems.append(
                f"spec.clients.turnReserveTokens must not exceed clients.{label}: "
                "no turn could ever run"
            )
    if spec.session.url is not None and spec.session.url_secret_ref is not None:
        problems.append("spec.session: set url or urlSecretRef, not both")
    if spec.session.url is not None and not _SESSION_URL_RE.match(spec.session.url):
        problems.append(f"spec.{SESSION_URL_MESSAGE}")
    if spec.session.url is not None and _SESSION_URL_CREDENTIALS_RE.search(spec.session.url):
        problems.append(f"spec.{SESSION_URL_CREDENTIALS_MESSAGE}")
    if _is_zero(spec.rollout.max_surge) and _is_zero(spec.rollout.max_unavailable):
        problems.append("spec.rollout: maxSurge and maxUnavailable cannot both be 0")
    problems.extend(_gate_problems(spec.rollout))
    pdb = spec.disruption_budget
    if pdb.min_available is not None and pdb.max_unavailable is not None:
        problems.append("spec.disruptionBudget: set minAvailable or maxUnavailable, not both")
    for item in spec.env:
        if str(item.get("name", "")) in RESERVED_ENV:
            problems.append(f"spec.env may not set {item.get('name')}: the operator sets it")
    problems.extend(_metadata_problems("pod", spec.pod.labels, spec.pod.annotations))
    problems.extend(_metadata_problems("service", spec.service.labels, spec.service.annotations))
    problems.extend(_name_problems(spec.pod))
    problems.extend(_toleration_problems(spec.pod.tolerations))
    problems.extend(_spread_problems(spec.pod.topology_spread_constraints))
    problems.extend(_volume_problems(spec.pod))
    problems.extend(_agent_problems(spec))
    return problems


def _agent_problems(spec: AgentSpec) -> list[str]:
    agent = spec.agent
    problems = []
    for path, choices in SERVICE_CHOICES.items():
        picked = {"logLevel": (spec.log_level,), "agent.tools": agent.tools or ()}[path]
        unknown = [value for value in picked if value not in choices]
        if unknown:
            problems.append(
                f"spec.{path}: unknown {', '.join(map(repr, unknown))} "
                f"(valid: {', '.join(choices)})"
            )
    if agent.tools is not None and len(set(agent.tools)) != len(agent.tools):
        problems.append("spec.agent.tools names a tool twice")
    prompt = agent.system_prompt
    if prompt is not None and agent.system_prompt_config_map_ref is not None:
        problems.append("spec.agent: set systemPrompt or systemPromptConfigMapRef, not both")
    if prompt is not None and not prompt.strip():
        problems.append("spec.agent.systemPrompt must not be empty (unset it for the default)")
    limit = SERVICE_MAX_LENGTHS["agent.systemPrompt"]
    if prompt is not None and len(prompt) > limit:
        problems.append(f"spec.agent.systemPrompt must be at most {limit} characters")
    ref = agent.system_prompt_config_map_ref
    if ref is not None and (len(ref.name) > 253 or not _DNS_SUBDOMAIN_RE.match(ref.name)):
        problems.append(
            f"spec.agent.systemPromptConfigMapRef.name must be a ConfigMap's name, got {ref.name!r}"
        )
    if ref is not None and not _CONFIG_KEY_RE.match(ref.key):
        problems.append(
            f"spec.agent.systemPromptConfigMapRef.key must be a ConfigMap key, got {ref.key!r}"
        )
    return problems
