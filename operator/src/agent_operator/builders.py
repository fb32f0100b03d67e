"""Pure builders of the children of an AgentDeployment (plain dicts, no API calls)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent_operator import contract
from agent_operator.spec import (
    GROUP,
    KIND,
    TURNS_IN_FLIGHT,
    VERSION,
    AgentSpec,
    ConfigMapKeyRef,
    SecretKeyRef,
)

MANAGER = "moorage-operator"
APP_NAME = "agent"
CONTAINER_PORT = contract.PORT
CONFIG_CHECKSUM_ANNOTATION = "moorage.dev/config-checksum"
# A digest of the pod template itself: which revision a pod belongs to (rollout decisions).
TEMPLATE_HASH_ANNOTATION = "moorage.dev/template-hash"
# The pod readiness gate a new pod must pass (the smoke evaluation of spec.rollout.gate).
GATE_CONDITION = "moorage.dev/gate-passed"
# The gate's prompts travel with the pod template, so each pod is judged by its own revision's
# gate (after a rollback too), and a new gate applies to new pods.
GATE_ANNOTATION = "moorage.dev/gate"
SECRETS_DIR = contract.SECRETS_DIR
# The session store's CA bundle and client certificate (the chart's session.tls), as files.
SESSION_TLS_DIR = contract.SESSION_TLS_DIR
TMP_VOLUME, SECRETS_VOLUME, SESSION_TLS_VOLUME, SYSTEM_PROMPT_VOLUME = contract.VOLUMES
SYSTEM_PROMPT_DIR = contract.SYSTEM_PROMPT_DIR
GRACE_MARGIN_SECONDS = contract.GRACE_MARGIN_SECONDS
RUN_AS_ID = contract.RUN_AS_USER
SECRET_MODE = int(contract.SECRETS["defaultMode"])

Obj = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The AgentDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Obj:
        """The controller ownerReference every child carries (so deletion cascades)."""
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(name: str) -> dict[str, str]:
    """The labels that select the pods; the same pair as the chart's agent.selectorLabels."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    """The pod selector in label-selector syntax, for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    """Labels on every child; managed-by lets the operator watch only its own children."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/part-of": "moorage",
        "app.kubernetes.io/managed-by": MANAGER,
    }


def _metadata(owner: Owner, name: str | None = None) -> Obj:
    return {
        "name": name or owner.name,
        "namespace": owner.namespace,
        "labels": common_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }


def config_name(owner: Owner) -> str:
    """Name of the ConfigMap holding the non-secret AGENT_* settings."""
    return f"{owner.name}-config"


def config_data(spec: AgentSpec) -> dict[str, str]:
    """The non-secret part of the agent's environment contract (the chart's ConfigMap keys)."""
    data = {
        "AGENT_MODEL": spec.model.name,
        "AGENT_MAX_STEPS": str(spec.model.max_steps),
        "AGENT_MODEL_TIMEOUT_S": str(spec.model.timeout_seconds),
        "AGENT_REQUEST_TIMEOUT_S": str(spec.model.request_timeout_seconds),
        "AGENT_SESSION_TTL_S": str(spec.session.ttl_seconds),
        "AGENT_HOST": "0.0.0.0",  # noqa: S104 - the kubelet and the Service reach the pod IP
        "AGENT_PORT": str(CONTAINER_PORT),
        "AGENT_WORKERS": "1",
        "AGENT_LOG_LEVEL": spec.log_level,
        "AGENT_LOG_FORMAT": "json",
        # The preStop sleep is the drain, so the service's own drain delay is 0 (as in the chart).
        "AGENT_DRAIN_DELAY_S": "0",
        "AGENT_SHUTDOWN_TIMEOUT_S": str(spec.termination.shutdown_timeout_seconds),
        "AGENT_MAX_BODY_BYTES": str(contract.HTTP_LIMITS["maxBodyBytes"]),
        "AGENT_MAX_MESSAGE_CHARS": str(contract.HTTP_LIMITS["maxMessageChars"]),
    }
    clients = spec.clients
    if clients.session_budget_tokens:
        data["AGENT_BUDGET_SESSION_TOKENS"] = str(clients.session_budget_tokens)
    if clients.client_daily_budget_tokens:
        data["AGENT_BUDGET_CLIENT_DAILY_TOKENS"] = str(clients.client_daily_budget_tokens)
    data["AGENT_BUDGET_TURN_TOKENS"] = str(clients.turn_reserve_tokens)
    if spec.model.base_url:
        data["AGENT_MODEL_BASE_URL"] = spec.model.base_url
    if spec.session.url_secret_ref is None:
        data["AGENT_SESSION_URL"] = spec.session.url or "memory://"
    agent = spec.agent
    if agent.tools is not None:
        data["AGENT_TOOLS"] = ",".join(agent.tools) or "none"
    if agent.context_max_messages is not None:
        data["AGENT_CONTEXT_MAX_MESSAGES"] = str(agent.context_max_messages)
    if agent.context_max_tokens is not None:
        data["AGENT_CONTEXT_MAX_TOKENS"] = str(agent.context_max_tokens)
    return data


def config_files(spec: AgentSpec) -> dict[str, str]:
    """The ConfigMap's binaryData: the system prompt, out of envFrom's reach (pod contract)."""
    if spec.agent.system_prompt is None:
        return {}
    prompt = base64.b64encode(spec.agent.system_prompt.encode()).decode()
    return {contract.SYSTEM_PROMPT_KEY: prompt}


def config_checksum(spec: AgentSpec) -> str:
    """A digest of everything in the pod's config, so a config change rolls the pods."""
    refs = [(r.name, r.key) for r in spec.secret_refs()]
    payload = json.dumps(
        {"data": config_data(spec), "files": config_files(spec), "secrets": refs}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def build_configmap(owner: Owner, spec: AgentSpec) -> Obj:
    """The ConfigMap the pods read their AGENT_* settings (and the system prompt) from."""
    configmap: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_name(owner)),
        "data": config_data(spec),
    }
    files = config_files(spec)
    if files:
        configmap["binaryData"] = files
    return configmap


def grace_period_seconds(spec: AgentSpec) -> int:
    """Pod grace period: the preStop drain, then the shutdown timeout, then a margin."""
    term = spec.termination
    return term.drain_delay_seconds + term.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS


def _secret_files(spec: AgentSpec) -> list[tuple[SecretKeyRef, str, str]]:
    """(reference, file name, AGENT_*_FILE variable) of each mounted secret, chart order."""
    refs = (
        ("sessionUrl", spec.session.url_secret_ref),
        ("modelApiKey", spec.model_api_key_secret_ref),
        # In a volume, not a subPath: the kubelet swaps in a rotated Secret, the service rereads.
        ("apiKeys", spec.clients.api_keys_secret_ref),
    )
    return [(ref, *contract.secret_file(name)) for name, ref in refs if ref is not None]


def _secrets_volume(files: list[tuple[SecretKeyRef, str, str]]) -> Obj:
    """One volume with every secret file, laid out as the chart lays it out.

    The session URL and model key are a plain secret volume when one Secret holds them; the
    clients' keys (a rotation needs no new pods) are always a projected source of their own.
    """
    config: dict[str, list[Obj]] = {}
    clients: list[Obj] = []
    _, api_keys_variable = contract.secret_file("apiKeys")
    for ref, path, variable in files:
        item = {"key": ref.key, "path": path}
        if variable == api_keys_variable:
            clients.append({"secret": {"name": ref.name, "items": [item]}})
        else:
            config.setdefault(ref.name, []).append(item)
    if len(config) == 1 and not clients:
        ((name, items),) = config.items()
        return {
            "name": SECRETS_VOLUME,
            "secret": {"secretName": name, "defaultMode": SECRET_MODE, "items": items},
        }
    sources = [{"secret": {"name": name, "items": items}} for name, items in config.items()]
    return {
        "name": SECRETS_VOLUME,
        "projected": {"defaultMode": SECRET_MODE, "sources": [*sources, *clients]},
    }


def _session_tls(spec: AgentSpec) -> tuple[list[Obj], Obj | None]:
    """The AGENT_SESSION_*_FILE variables and the volume of a rediss… store's TLS files."""
    tls = spec.session.tls
    env: list[Obj] = []
    sources: list[Obj] = []
    if tls.ca_secret_ref is not None:
        path, variable = contract.session_tls_file("ca")
        env.append({"name": variable, "value": f"{SESSION_TLS_DIR}/{path}"})
        items = [{"key": tls.ca_secret_ref.key, "path": path}]
        sources.append({"secret": {"name": tls.ca_secret_ref.name, "items": items}})
    if tls.client_cert_secret is not None:
        items = []
        # The keys of a kubernetes.io/tls Secret.
        for name, key in (("cert", "tls.crt"), ("key", "tls.key")):
            path, variable = contract.session_tls_file(name)
            env.append({"name": variable, "value": f"{SESSION_TLS_DIR}/{path}"})
            items.append({"key": key, "path": path})
        sources.append({"secret": {"name": tls.client_cert_secret, "items": items}})
    if not sources:
        return env, None
    return env, {
        "name": SESSION_TLS_VOLUME,
        "projected": {"defaultMode": SECRET_MODE, "sources": sources},
    }


def _system_prompt(owner: Owner, spec: AgentSpec) -> tuple[list[Obj], Obj | None]:
    """AGENT_SYSTEM_PROMPT_FILE and the volume of the prompt: the spec's, from the resource's
    own ConfigMap, or the user's ConfigMap's."""
    agent = spec.agent
    ref = agent.system_prompt_config_map_ref
    if agent.system_prompt is not None:
        ref = ConfigMapKeyRef(config_name(owner), contract.SYSTEM_PROMPT_KEY)
    if ref is None:
        return [], None
    file = contract.SYSTEM_PROMPT["file"]
    env = [{"name": file["env"], "value": f"{SYSTEM_PROMPT_DIR}/{file['path']}"}]
    return env, {
        "name": SYSTEM_PROMPT_VOLUME,
        "configMap": {
            "name": ref.name,
            "defaultMode": int(contract.SYSTEM_PROMPT["defaultMode"]),
            "items": [{"key": ref.key, "path": file["path"]}],
        },
    }


def _topology_spread(name: str, spec: AgentSpec) -> list[Obj]:
    """The spec's constraints (an item without a labelSelector counts this resource's pods), or
    by default a soft spread over zones and nodes, as the chart's topologySpread does."""
    given = spec.pod.topology_spread_constraints
    if given is not None:
        built = copy.deepcopy(list(given))
        for item in built:
            if not item.get("labelSelector"):
                item["labelSelector"] = {"matchLabels": selector_labels(name)}
        return built
    return [
        {
            "topologyKey": key,
            "maxSkew": 1,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)},
            # Spread each rollout's pods on their own, not old and new together.
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def pod_template(owner: Owner, spec: AgentSpec) -> Obj:
    """The agent's pod template: the chart's probes, hardening, grace and AGENT_* contract."""
    files = _secret_files(spec)
    env: list[Obj] = [
        {"name": variable, "value": f"{SECRETS_DIR}/{path}"} for _, path, variable in files
    ]
    tls_env, tls_volume = _session_tls(spec)
    env.extend(tls_env)
    prompt_env, prompt_volume = _system_prompt(owner, spec)
    env.extend(prompt_env)
    env.extend(dict(item) for item in spec.env)
    tmp = contract.TMP
    volumes: list[Obj] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": tmp["sizeLimit"]}}]
    volume_mounts: list[Obj] = [{"name": TMP_VOLUME, "mountPath": tmp["mountPath"]}]
    if files:
        volumes.append(_secrets_volume(files))
        volume_mounts.append({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True})
    if tls_volume is not None:
        volumes.append(tls_volume)
        volume_mounts.append(
            {"name": SESSION_TLS_VOLUME, "mountPath": SESSION_TLS_DIR, "readOnly": True}
        )
    if prompt_volume is not None:
        volumes.append(prompt_volume)
        volume_mounts.append(
            {"name": SYSTEM_PROMPT_VOLUME, "mountPath": SYSTEM_PROMPT_DIR, "readOnly": True}
        )
    # The spec's own volumes after the contract's (validate() keeps them apart).
    volumes.extend(copy.deepcopy(list(spec.pod.volumes)))
    volume_mounts.extend(copy.deepcopy(list(spec.pod.volume_mounts)))
    container: Obj = {
        "name": contract.CONTAINER["name"],
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": list(contract.CONTAINER["command"]),
        "ports": [{"name": contract.PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": config_name(owner)}}],
        # A container that exits at start leaves its last output in its status, so the
        # rollback Event can say why (a setting the service refused, say).
        "terminationMessagePolicy": contract.CONTAINER["terminationMessagePolicy"],
    }
    if env:
        container["env"] = env
    container.update(
        {
            "startupProbe": contract.probe("startup"),
            "livenessProbe": contract.probe("liveness"),
            "readinessProbe": contract.probe("readiness"),
            # Keep serving while endpoints and proxies stop routing here; SIGTERM follows.
            "lifecycle": {"preStop": {"sleep": {"seconds": spec.termination.drain_delay_seconds}}},
            "resources": {k: dict(v) for k, v in spec.resources.items()},
            "securityContext": copy.deepcopy(contract.CONTRACT["containerSecurityContext"]),
            "volumeMounts": volume_mounts,
        }
    )
    pod = spec.pod
    template: Obj = {
        "metadata": {
            # The spec's labels and annotations never take the operator's keys (validate()).
            "labels": {**pod.labels, **common_labels(owner.name)},
            "annotations": {**pod.annotations, CONFIG_CHECKSUM_ANNOTATION: config_checksum(spec)},
        },
        "spec": {
            "serviceAccountName": service_account_name(owner, spec),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                **copy.deepcopy(contract.CONTRACT["podSecurityContext"]),
                "runAsUser": RUN_AS_ID,
                "runAsGroup": RUN_AS_ID,
                "fsGroup": RUN_AS_ID,
            },
            "terminationGracePeriodSeconds": grace_period_seconds(spec),
            "containers": [container],
            "volumes": volumes,
        },
    }
    _place(template["spec"], owner, spec)
    if spec.rollout.gate:
        # Ready only once the operator has run the smoke prompts against this very pod.
        template["spec"]["readinessGates"] = [{"conditionType": GATE_CONDITION}]
        template["metadata"]["annotations"][GATE_ANNOTATION] = gate_json(spec)
    template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = template_hash(template)
    return template


def _place(pod_spec: Obj, owner: Owner, spec: AgentSpec) -> None:
    """Where the pods may run and what they pull with: the spec's fields, only when given."""
    pod = spec.pod
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pod.image_pull_secrets]
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    spread = _topology_spread(owner.name, spec)
    if spread:
        pod_spec["topologySpreadConstraints"] = spread
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.affinity:
        pod_spec["affinity"] = copy.deepcopy(pod.affinity)
    if pod.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(list(pod.tolerations))


def service_account_name(owner: Owner, spec: AgentSpec) -> str:
    """The pods' ServiceAccount: the spec's, or the operator's own named like the resource."""
    return spec.pod.service_account_name or owner.name


def build_service_account(owner: Owner, spec: AgentSpec) -> Obj | None:
    """The pods' own ServiceAccount (as the chart creates one), or None when the spec names one.

    A spec naming the resource's own name gets this one too: deleting it would delete the
    ServiceAccount the pods run under.
    """
    if service_account_name(owner, spec) != owner.name:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner),
        # The agent never calls the Kubernetes API, so no token is mounted into its pods.
        "automountServiceAccountToken": False,
    }


def gate_json(spec: AgentSpec) -> str:
    """spec.rollout.gate's prompts as compact JSON (the CRD's field names)."""
    prompts = []
    for prompt in spec.rollout.gate:
        item: Obj = {"message": prompt.message, "maxLatencyMs": prompt.max_latency_ms}
        if prompt.contains is not None:
            item["contains"] = prompt.contains
        if prompt.matches is not None:
            item["matches"] = prompt.matches
        prompts.append(item)
    return json.dumps(prompts, separators=(",", ":"), sort_keys=True)


def template_hash(template: Obj) -> str:
    """A short digest of a pod template (its own hash annotation left out)."""
    annotations = {
        k: v
        for k, v in template["metadata"].get("annotations", {}).items()
        if k != TEMPLATE_HASH_ANNOTATION
    }
    body = {**template, "metadata": {**template["metadata"], "annotations": annotations}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def build_deployment(owner: Owner, spec: AgentSpec) -> Obj:
    """The Deployment; `replicas` is left out while autoscaling is on (the HPA owns it)."""
    deployment_spec: Obj = {
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "selector": {"matchLabels": selector_labels(owner.name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "template": pod_template(owner, spec),
    }
    if not spec.autoscaling.enabled:
        deployment_spec = {"replicas": spec.replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner),
        "spec": deployment_spec,
    }


def build_service(owner: Owner, spec: AgentSpec) -> Obj:
    """A ClusterIP Service in front of the ready pods."""
    metadata = _metadata(owner)
    # The spec's labels never take the operator's keys (validate()).
    metadata["labels"] = {**spec.service.labels, **metadata["labels"]}
    if spec.service.annotations:
        metadata["annotations"] = dict(spec.service.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_hpa(owner: Owner, spec: AgentSpec) -> Obj | None:
    """An autoscaling/v2 HPA on CPU or on turns in flight per pod, or None when autoscaling is off.

    The same object as the chart's templates/hpa.yaml for the same settings (a parity test).
    """
    auto = spec.autoscaling
    if not auto.enabled:
        return None
    metric: Obj
    if auto.metric == "inflight":
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": TURNS_IN_FLIGHT},
                "target": {
                    "type": "AverageValue",
                    "averageValue": str(auto.target_turns_in_flight_per_pod),
                },
            },
        }
    else:
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": auto.target_cpu_utilization_percentage,
                },
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [metric],
            # Long turns: add pods at once, remove them slowly and one at a time (each drains).
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": auto.scale_up_stabilization_seconds,
                    "selectPolicy": "Max",
                    "policies": [
                        {
                            "type": "Pods",
                            "value": auto.scale_up_pods,
                            "periodSeconds": auto.scale_up_period_seconds,
                        },
                        {
                            "type": "Percent",
                            "value": auto.scale_up_percent,
                            "periodSeconds": auto.scale_up_period_seconds,
                        },
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": auto.scale_down_stabilization_seconds,
                    "selectPolicy": "Min",
                    "policies": [
                        {
                            "type": "Pods",
                            "value": auto.scale_down_pods,
                            "periodSeconds": auto.scale_down_period_seconds,
                        }
                    ],
                },
            },
        },
    }


def build_pdb(owner: Owner, spec: AgentSpec) -> Obj | None:
    """A policy/v1 PodDisruptionBudget, or None when disabled (default: maxUnavailable 1)."""
    budget = spec.disruption_budget
    if not budget.enabled:
        return None
    pdb_spec: Obj = {"selector": {"matchLabels": selector_labels(owner.name)}}
    if budget.min_available is not None:
        pdb_spec["minAvailable"] = budget.min_available
    else:
        pdb_spec["maxUnavailable"] = (
            budget.max_unavailable if budget.max_unavailable is not None else 1
        )
    # Pods that are not ready protect nothing; do not let them block node drains.
    pdb_spec["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner),
        "spec": pdb_spec,
    }


@dataclass(frozen=True)
class ChildKind:
    """Where a kind of child lives in the API."""

    api_version: str
    kind: str
    plural: str


CONFIGMAP = ChildKind("v1", "ConfigMap", "configmaps")
DEPLOYMENT = ChildKind("apps/v1", "Deployment", "deployments")
SERVICE = ChildKind("v1", "Service", "services")
HPA = ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
SERVICE_ACCOUNT = ChildKind("v1", "ServiceAccount", "serviceaccounts")
CHILD_KINDS = (CONFIGMAP, SERVICE_ACCOUNT, DEPLOYMENT, SERVICE, HPA, PDB)


def build_children(owner: Owner, spec: AgentSpec) -> list[tuple[ChildKind, str, Obj | None]]:
    """Every child in apply order (config and ServiceAccount first, so new pods find them);
    None means delete."""
    return [
        (CONFIGMAP, config_name(owner), build_configmap(owner, spec)),
        (SERVICE_ACCOUNT, owner.name, build_service_account(owner, spec)),
        (DEPLOYMENT, owner.name, build_deployment(owner, spec)),
        (SERVICE, owner.name, build_service(owner, spec)),
        (HPA, owner.name, build_hpa(owner, spec)),
        (PDB, owner.name, build_pdb(owner, spec)),
    ]
