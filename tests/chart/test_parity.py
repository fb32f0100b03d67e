"""The operator's children equal the chart's objects for equivalent inputs, over many of them.

Each axis below lists options; an option is a pair of fragments that mean the same thing to the
chart (values) and to the operator (an AgentDeployment spec). A seeded generator combines them
into cases that cover every option at least once and then many random mixtures, skipping the
combinations the chart refuses. For each case the chart is rendered with `helm template` and the
operator's children are built with `build_children(parse_spec(spec))`; the pod template, the
agent's environment, the Deployment's rollout settings, the Service, the PDB and the HPA must be
equal. What only one side can express (the operator's plain `session.url`, `minAvailable`,
`valueFrom` env and smoke gate; the chart's memory HPA metric, grace margin, spread skew of the
default pair and ServiceAccount annotations) is not generated. The pod's placement and identity
(spec.pod: node selector, tolerations, affinity, spread, priority, pull secrets, ServiceAccount,
labels, annotations, extra volumes and mounts), the Service's labels and annotations and the
agent's prompt, tools and context window (agent.*, whose prompt lives in the ConfigMap's
binaryData) are axes too, and what both refuse (the chart's and operator's own keys, the
contract's volumes and mounts, two prompt sources) is checked on both sides at the end.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator.builders import Owner, build_children
from agent_operator.spec import parse_spec, validate
from tests.chart.conftest import CHART, run_helm

NAME = "parity-agent"  # holds the chart's name, so the chart's fullname is the release name
NAMESPACE = "moorage"
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
REPOSITORY = "registry.example.com/team/agent"
DIGEST = "sha256:" + "ab" * 32
OPENAI = "openai:gpt-4o-mini"
CHART_URL = "redis://cache.example:6379/0"
CHART_TLS_URL = "rediss+sentinel://s1:26379,s2:26379/main"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pair:
    """The same setting as chart values and as AgentDeployment spec fragments."""

    values: Obj
    spec: Obj
    shares_sessions: bool = False  # the session store is not one process's memory
    may_use_tls: bool = False  # the session URL is rediss… or unknown (in a Secret you manage)


def _same(fragment: Obj) -> Pair:
    """A setting spelled the same way in the values and in the spec."""
    return Pair(fragment, copy.deepcopy(fragment))


def _chart_secret(key: str) -> Obj:
    """The chart's own Secret (named like the release), as a secret reference."""
    return {"name": NAME, "key": key}


# The same placement in both: top-level values in the chart, spec.pod in the operator.
POOL: Obj = {
    "nodeSelector": {"pool": "agents"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"},
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 30,
        },
    ],
    "priorityClassName": "agents-high",
}


AFFINITY: Obj = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                    ]
                }
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": NAME}},
                },
            }
        ]
    },
}
SPREAD: Obj = {
    "maxSkew": 1,
    "topologyKey": "kubernetes.io/hostname",
    "whenUnsatisfiable": "DoNotSchedule",
}
SPREAD_OWN: list[Obj] = [
    {
        "maxSkew": 2,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "minDomains": 3,
        "labelSelector": {"matchLabels": {"app.kubernetes.io/part-of": "moorage"}},
        "matchLabelKeys": ["pod-template-hash"],
        "nodeTaintsPolicy": "Honor",
    },
    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
]
PROMPTS_VOLUME: Obj = {"name": "prompts", "configMap": {"name": "agent-prompts"}}
PROMPTS_MOUNT: Obj = {"name": "prompts", "mountPath": "/etc/moorage/prompts", "readOnly": True}
CACHE_VOLUMES: list[Obj] = [
    {"name": "cache", "emptyDir": {"sizeLimit": "256Mi"}},
    {"name": "corp-ca", "secret": {"secretName": "corp-ca", "defaultMode": 292}},
]
CACHE_MOUNTS: list[Obj] = [
    {"name": "cache", "mountPath": "/var/cache/agent"},
    {"name": "corp-ca", "mountPath": "/etc/ssl/corp/ca.crt", "subPath": "ca.crt", "readOnly": True},
]

AXES: dict[str, dict[str, Pair]] = {
    "image": {
        "chart-default": Pair({}, {"image": f"moorage/agent-service:{APP_VERSION}"}),
        "tag": Pair(
            {"image": {"repository": REPOSITORY, "tag": "1.2.3"}},
            {"image": f"{REPOSITORY}:1.2.3"},
        ),
        "digest-always": Pair(
            {"image": {"repository": REPOSITORY, "digest": DIGEST, "pullPolicy": "Always"}},
            {"image": f"{REPOSITORY}@{DIGEST}", "imagePullPolicy": "Always"},
        ),
    },
    "replicas": {
        "one": Pair({}, {}),
        "three": Pair({"replicaCount": 3}, {"replicas": 3}),
        "zero": Pair({"replicaCount": 0}, {"replicas": 0}),
    },
    "autoscaling": {
        "off": Pair({}, {}),
        "cpu-defaults": Pair(
            {"autoscaling": {"enabled": True}}, {"autoscaling": {"enabled": True}}
        ),
        "cpu-tuned": _same(
            {
                "autoscaling": {
                    "enabled": True,
                    "minReplicas": 3,
                    "maxReplicas": 7,
                    "targetCPUUtilizationPercentage": 55,
                }
            }
        ),
        "inflight-defaults": _same({"autoscaling": {"enabled": True, "metric": "inflight"}}),
        # Every behavior setting away from its default.
        "inflight-tuned": _same(
            {
                "autoscaling": {
                    "enabled": True,
                    "metric": "inflight",
                    "minReplicas": 1,
                    "maxReplicas": 5,
                    "targetTurnsInFlightPerPod": 7,
                    "scaleUpStabilizationSeconds": 10,
                    "scaleUpPods": 3,
                    "scaleUpPercent": 50,
                    "scaleUpPeriodSeconds": 20,
                    "scaleDownStabilizationSeconds": 120,
                    "scaleDownPods": 2,
                    "scaleDownPeriodSeconds": 30,
                }
            }
        ),
    },
    # Where the session URL and the model's key come from. The chart keeps a session.url in a
    # Secret of its own (named like the release) under fixed keys; the operator reads Secrets
    # by reference, so the equivalent spec names that Secret and key.
    "secrets": {
        "memory-echo": Pair({}, {}),
        "chart-url": Pair(
            {"session": {"url": CHART_URL}},
            {"session": {"urlSecretRef": _chart_secret("session-url")}},
            shares_sessions=True,
        ),
        "chart-url-openai": Pair(
            {"session": {"url": CHART_URL}, "model": {"name": OPENAI, "apiKey": "sk-parity"}},
            {
                "session": {"urlSecretRef": _chart_secret("session-url")},
                "model": {"name": OPENAI},
                "modelApiKeySecretRef": _chart_secret("model-api-key"),
            },
            shares_sessions=True,
        ),
        "chart-openai-memory": Pair(
            {"model": {"name": OPENAI, "apiKey": "sk-parity"}},
            {"model": {"name": OPENAI}, "modelApiKeySecretRef": _chart_secret("model-api-key")},
        ),
        "in-chart-redis": Pair(
            {"redis": {"enabled": True}},
            {"session": {"urlSecretRef": _chart_secret("session-url")}},
            shares_sessions=True,
        ),
        "existing-url": Pair(
            {"existingSecret": {"name": "agent-secrets", "sessionUrlKey": "redis-url"}},
            {"session": {"urlSecretRef": {"name": "agent-secrets", "key": "redis-url"}}},
            shares_sessions=True,
            may_use_tls=True,
        ),
        "existing-url-openai": Pair(
            {
                "existingSecret": {
                    "name": "agent-secrets",
                    "sessionUrlKey": "redis-url",
                    "modelApiKeyKey": "api-key",
                },
                "model": {"name": OPENAI},
            },
            {
                "session": {"urlSecretRef": {"name": "agent-secrets", "key": "redis-url"}},
                "model": {"name": OPENAI},
                "modelApiKeySecretRef": {"name": "agent-secrets", "key": "api-key"},
            },
            shares_sessions=True,
            may_use_tls=True,
        ),
        "chart-rediss": Pair(
            {"session": {"url": CHART_TLS_URL}},
            {"session": {"urlSecretRef": _chart_secret("session-url")}},
            shares_sessions=True,
            may_use_tls=True,
        ),
        "existing-openai-memory": Pair(
            {
                "existingSecret": {
                    "name": "agent-secrets",
                    "sessionUrlKey": "",
                    "modelApiKeyKey": "api-key",
                },
                "model": {"name": OPENAI},
            },
            {
                "model": {"name": OPENAI},
                "modelApiKeySecretRef": {"name": "agent-secrets", "key": "api-key"},
            },
        ),
    },
    # The session store's CA bundle and client certificate (rediss… URLs only).
    "session-tls": {
        "none": Pair({}, {}),
        "ca": Pair(
            {"session": {"tls": {"caSecret": "redis-ca"}}},
            {"session": {"tls": {"caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}}},
        ),
        "ca-own-key-and-client": Pair(
            {
                "session": {
                    "tls": {
                        "caSecret": "redis-ca",
                        "caKey": "bundle.pem",
                        "clientCertSecret": "agent-client",
                    }
                }
            },
            {
                "session": {
                    "tls": {
                        "caSecretRef": {"name": "redis-ca", "key": "bundle.pem"},
                        "clientCertSecretRef": {"name": "agent-client"},
                    }
                }
            },
        ),
        "client-only": Pair(
            {"session": {"tls": {"clientCertSecret": "agent-client"}}},
            {"session": {"tls": {"clientCertSecretRef": {"name": "agent-client"}}}},
        ),
    },
    "clients": {
        "open": Pair({}, {}),
        "keys": Pair(
            {"clients": {"apiKeysSecret": "client-keys"}},
            {"clients": {"apiKeysSecretRef": {"name": "client-keys", "key": "api-keys"}}},
        ),
        "keys-own-key": Pair(
            {"clients": {"apiKeysSecret": "client-keys", "apiKeysKey": "lines"}},
            {"clients": {"apiKeysSecretRef": {"name": "client-keys", "key": "lines"}}},
        ),
        # A Secret that may also be existingSecret: the clients' keys stay a source of their own.
        "keys-in-existing-secret": Pair(
            {"clients": {"apiKeysSecret": "agent-secrets"}},
            {"clients": {"apiKeysSecretRef": {"name": "agent-secrets", "key": "api-keys"}}},
        ),
        "budgets": _same(
            {
                "clients": {
                    "sessionBudgetTokens": 100000,
                    "clientDailyBudgetTokens": 2000000,
                    "turnReserveTokens": 2048,
                }
            }
        ),
        "keys-and-budget": Pair(
            {"clients": {"apiKeysSecret": "client-keys", "clientDailyBudgetTokens": 5000000}},
            {
                "clients": {
                    "apiKeysSecretRef": {"name": "client-keys", "key": "api-keys"},
                    "clientDailyBudgetTokens": 5000000,
                }
            },
        ),
    },
    "model": {
        "defaults": Pair({}, {}),
        "tuned": Pair(
            {
                "model": {"maxSteps": 4, "timeoutSeconds": 20, "baseUrl": "http://llm:8000/v1"},
                "server": {"logLevel": "warning"},
                "session": {"ttlSeconds": 3600},
            },
            {
                "model": {"maxSteps": 4, "timeoutSeconds": 20, "baseUrl": "http://llm:8000/v1"},
                "logLevel": "warning",
                "session": {"ttlSeconds": 3600},
            },
        ),
        "debug": Pair(
            {"model": {"maxSteps": 16}, "server": {"logLevel": "debug"}},
            {"model": {"maxSteps": 16}, "logLevel": "debug"},
        ),
    },
    "resources": {
        "defaults": Pair({}, {}),
        "larger": _same(
            {
                "resources": {
                    "requests": {"cpu": "250m", "memory": "192Mi"},
                    "limits": {"memory": "384Mi"},
                }
            }
        ),
        "cpu-limit": _same(
            {
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"cpu": "2", "memory": "2Gi"},
                }
            }
        ),
    },
    # The turn's budget moves with the shutdown timeout, which must cover it.
    "termination": {
        "defaults": Pair({}, {}),
        "longer": Pair(
            {
                "termination": {"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 40},
                "server": {"requestTimeoutSeconds": 40},
            },
            {
                "termination": {"drainDelaySeconds": 7, "shutdownTimeoutSeconds": 40},
                "model": {"requestTimeoutSeconds": 40},
            },
        ),
        "drain-one": Pair(
            {
                "termination": {"drainDelaySeconds": 1, "shutdownTimeoutSeconds": 60},
                "server": {"requestTimeoutSeconds": 45},
            },
            {
                "termination": {"drainDelaySeconds": 1, "shutdownTimeoutSeconds": 60},
                "model": {"requestTimeoutSeconds": 45},
            },
        ),
        "short": Pair(
            {
                "termination": {"drainDelaySeconds": 3, "shutdownTimeoutSeconds": 20},
                "server": {"requestTimeoutSeconds": 20},
            },
            {
                "termination": {"drainDelaySeconds": 3, "shutdownTimeoutSeconds": 20},
                "model": {"requestTimeoutSeconds": 20},
            },
        ),
    },
    "rollout": {
        "defaults": Pair({}, {}),
        "surge-two": Pair(
            {"strategy": {"maxSurge": 2, "maxUnavailable": 1}},
            {"rollout": {"maxSurge": 2, "maxUnavailable": 1}},
        ),
        "percent": Pair(
            {"strategy": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            {"rollout": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        ),
        "no-surge": Pair(
            {"strategy": {"maxSurge": 0, "maxUnavailable": 1}},
            {"rollout": {"maxSurge": 0, "maxUnavailable": 1}},
        ),
    },
    "disruption": {
        "defaults": Pair({}, {}),
        "off": Pair(
            {"podDisruptionBudget": {"enabled": False}}, {"disruptionBudget": {"enabled": False}}
        ),
        "two": Pair(
            {"podDisruptionBudget": {"maxUnavailable": 2}},
            {"disruptionBudget": {"maxUnavailable": 2}},
        ),
        "percent": Pair(
            {"podDisruptionBudget": {"maxUnavailable": "50%"}},
            {"disruptionBudget": {"maxUnavailable": "50%"}},
        ),
    },
    "env": {
        "none": Pair({}, {}),
        "echo-latency": Pair(
            {"extraEnv": {"AGENT_ECHO_LATENCY_MS": "5"}},
            {"env": [{"name": "AGENT_ECHO_LATENCY_MS", "value": "5"}]},
        ),
        "otel": Pair(
            {
                "extraEnv": {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
                    "OTEL_SERVICE_NAME": "agent",
                }
            },
            {
                "env": [
                    {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel:4317"},
                    {"name": "OTEL_SERVICE_NAME", "value": "agent"},
                ]
            },
        ),
    },
    "service": {
        "defaults": Pair({}, {}),
        "port-8081": Pair({"service": {"port": 8081}}, {"service": {"port": 8081}}),
        "labelled": _same(
            {
                "service": {
                    "annotations": {"lb.example.com/internal": "true"},
                    "labels": {"tier": "web", "example.com/team": "ml"},
                }
            }
        ),
    },
    # Where the pods may run and what they pull with (the spec's pod.*; top-level values).
    "placement": {
        "anywhere": Pair({}, {}),
        "pool": Pair(POOL, {"pod": POOL}),
        "affinity": Pair({"affinity": AFFINITY}, {"pod": {"affinity": AFFINITY}}),
        "pull-secrets": Pair(
            {"imagePullSecrets": ["registry", "mirror"]},
            {"pod": {"imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}]}},
        ),
    },
    "spread": {
        "zones-and-nodes": Pair({}, {}),
        "none": Pair(
            {"topologySpread": {"enabled": False}}, {"pod": {"topologySpreadConstraints": []}}
        ),
        # No labelSelector: both count this resource's pods.
        "hard-per-node": Pair(
            {"topologySpread": {"constraints": [SPREAD]}},
            {"pod": {"topologySpreadConstraints": [SPREAD]}},
        ),
        "own-selector": Pair(
            {"topologySpread": {"constraints": SPREAD_OWN}},
            {"pod": {"topologySpreadConstraints": SPREAD_OWN}},
        ),
    },
    # The pods' ServiceAccount and their extra labels and annotations.
    "identity": {
        "own-account": Pair({}, {}),
        "named-account": Pair(
            {"serviceAccount": {"create": False, "name": "agent-identity"}},
            {"pod": {"serviceAccountName": "agent-identity"}},
        ),
        "default-account": Pair(
            {"serviceAccount": {"create": False}}, {"pod": {"serviceAccountName": "default"}}
        ),
        "labelled": Pair(
            {
                "podLabels": {"team": "ml", "app.kubernetes.io/component": "agent"},
                "podAnnotations": {"sidecar.example.com/inject": "false"},
            },
            {
                "pod": {
                    "labels": {"team": "ml", "app.kubernetes.io/component": "agent"},
                    "annotations": {"sidecar.example.com/inject": "false"},
                }
            },
        ),
    },
    "volumes": {
        "contract-only": Pair({}, {}),
        "prompts": Pair(
            {"extraVolumes": [PROMPTS_VOLUME], "extraVolumeMounts": [PROMPTS_MOUNT]},
            {"pod": {"volumes": [PROMPTS_VOLUME], "volumeMounts": [PROMPTS_MOUNT]}},
        ),
        "cache-and-ca": Pair(
            {"extraVolumes": CACHE_VOLUMES, "extraVolumeMounts": CACHE_MOUNTS},
            {"pod": {"volumes": CACHE_VOLUMES, "volumeMounts": CACHE_MOUNTS}},
        ),
    },
    # The prompt is spelled the same; the chart's systemPromptConfigMap is the spec's ...Ref.
    "agent": {
        "service-defaults": Pair({}, {}),
        "prompt-tools-window": _same(
            {
                "agent": {
                    "systemPrompt": "You are Acme's support agent.\nBe brief: ünïcode too.\n",
                    "tools": ["clock", "calculator"],
                    "context": {"maxMessages": 12, "maxTokens": 6000},
                }
            }
        ),
        "own-configmap-no-tools": Pair(
            {
                "agent": {
                    "systemPromptConfigMap": {"name": "prompts", "key": "support"},
                    "tools": [],
                }
            },
            {
                "agent": {
                    "systemPromptConfigMapRef": {"name": "prompts", "key": "support"},
                    "tools": [],
                }
            },
        ),
        "messages-only": _same({"agent": {"context": {"maxMessages": 2}}}),
    },
}

Choice = tuple[tuple[str, str], ...]  # (axis, option) for every axis, in AXES order


def _pairs(choice: Choice) -> Iterator[Pair]:
    return (AXES[axis][option] for axis, option in choice)


def _accepted(choice: Choice) -> bool:
    """Whether the chart renders this combination: it refuses in-memory sessions when several
    pods would serve, and TLS files for a plain-text session URL."""
    picked = dict(choice)
    secrets = AXES["secrets"][picked["secrets"]]
    several = picked["replicas"] == "three" or picked["autoscaling"] != "off"
    if several and not secrets.shares_sessions:
        return False
    return picked["session-tls"] == "none" or secrets.may_use_tls


def generate_cases(count: int = 40, seed: int = 14) -> list[Choice]:
    """Cases covering every option of every axis, then random ones up to `count`."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    pool: list[Choice] = []
    while len(pool) < 20 * count:
        choice = tuple((axis, rng.choice(list(options))) for axis, options in AXES.items())
        if _accepted(choice) and choice not in pool:
            pool.append(choice)
    uncovered = {(axis, option) for axis, options in AXES.items() for option in options}
    cases: list[Choice] = []
    while uncovered:  # greedy cover: the case that covers most of what is still uncovered
        best = max(pool, key=lambda c: len(uncovered.intersection(c)))
        if not uncovered.intersection(best):
            raise AssertionError(f"no accepted case covers {sorted(uncovered)}")
        cases.append(best)
        uncovered.difference_update(best)
    cases.extend(c for c in pool if c not in cases)
    return cases[:count]


def _merge(into: Obj, fragment: Obj) -> Obj:
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _combined(choice: Choice, side: Callable[[Pair], Obj]) -> Obj:
    out: Obj = {}
    for pair in _pairs(choice):
        _merge(out, side(pair))
    return out


CASES = generate_cases()
IDS = [f"case{n:02d}" for n in range(len(CASES))]


@functools.cache
def _chart(index: int, helm: Path, tmp: Path) -> dict[str, Obj]:
    """The chart's agent objects for a case, by kind (the hook pod and dev Redis left out)."""
    values = tmp / f"{IDS[index]}.yaml"
    values.write_text(yaml.safe_dump(_combined(CASES[index], lambda p: p.values)))
    args = ("template", NAME, str(CHART), "--namespace", NAMESPACE, "-f", str(values))
    out = run_helm(helm, *args, check=False)
    assert out.returncode == 0, f"the chart refused {dict(CASES[index])}: {out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return {
        d["kind"]: d
        for d in docs
        if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
        and d["metadata"]["name"] == NAME
    }


def _operator(index: int) -> dict[str, Obj]:
    spec = parse_spec(_combined(CASES[index], lambda p: p.spec))
    assert validate(spec) == [], "the generated spec must be one the operator accepts"
    owner = Owner(name=NAME, namespace=NAMESPACE, uid="0000")
    return {obj["kind"]: obj for _, _, obj in build_children(owner, spec) if obj is not None}


def _environment(objs: dict[str, Obj]) -> Obj:
    """The container's effective environment: its ConfigMap's data plus its env entries."""
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env: Obj = dict(objs["ConfigMap"]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _files(objs: dict[str, Obj]) -> Obj:
    """The ConfigMap's files (the system prompt), which envFrom does not import."""
    return dict(objs["ConfigMap"].get("binaryData") or {})


def _pod(objs: dict[str, Obj]) -> Obj:
    pod = copy.deepcopy(objs["Deployment"]["spec"]["template"]["spec"])
    container = pod.pop("containers")[0]
    container.pop("envFrom")  # the ConfigMaps' names differ; their content is in _environment
    container.pop("env", None)
    own = objs["ConfigMap"]["metadata"]["name"]
    for volume in pod.get("volumes", []):
        # The prompt's volume names each side's own ConfigMap (its content is in _files).
        source = volume.get("configMap")
        if source is not None and source["name"] == own:
            source["name"] = "<own ConfigMap>"
    return {"pod": pod, "container": container}


# What each side stamps on its own objects: the chart's release labels and checksums, the
# operator's manager label, checksum and template hash. The rest must be equal.
CHART_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
OWN_ANNOTATION_PREFIXES = ("checksum/", "moorage.dev/")


def _user_metadata(meta: Obj) -> Obj:
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in CHART_ONLY_LABELS}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith(OWN_ANNOTATION_PREFIXES)
    }
    return {"labels": labels, "annotations": annotations}


def _pod_metadata(objs: dict[str, Obj]) -> Obj:
    return _user_metadata(objs["Deployment"]["spec"]["template"]["metadata"])


def _service_metadata(objs: dict[str, Obj]) -> Obj:
    return _user_metadata(objs["Service"]["metadata"])


def _service_account(objs: dict[str, Obj]) -> Obj | None:
    """The ServiceAccount made for the pods, if any (the pods' serviceAccountName is compared
    with the pod template)."""
    account = objs.get("ServiceAccount")
    if account is None:
        return None
    return {
        "name": account["metadata"]["name"],
        "automountServiceAccountToken": account.get("automountServiceAccountToken"),
    }


def _deployment(objs: dict[str, Obj]) -> Obj:
    spec = objs["Deployment"]["spec"]
    keys = ("replicas", "revisionHistoryLimit", "strategy", "selector")
    return {key: spec.get(key, "<unset>") for key in keys}


def _spec_of(kind: str) -> Callable[[dict[str, Obj]], Obj | None]:
    def spec(objs: dict[str, Obj]) -> Obj | None:
        return objs[kind]["spec"] if kind in objs else None

    return spec


ASPECTS: dict[str, Callable[[dict[str, Obj]], Any]] = {
    "pod-template": _pod,
    "pod-metadata": _pod_metadata,
    "service-metadata": _service_metadata,
    "service-account": _service_account,
    "environment": _environment,
    "configmap-files": _files,
    "deployment": _deployment,
    "service": _spec_of("Service"),
    "disruption-budget": _spec_of("PodDisruptionBudget"),
    "autoscaler": _spec_of("HorizontalPodAutoscaler"),
}


@pytest.fixture(scope="module")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.mark.parametrize("aspect", list(ASPECTS))
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_the_operator_builds_what_the_chart_renders(
    index: int, aspect: str, helm: Path, chart_dir: Path
) -> None:
    ours = ASPECTS[aspect](_operator(index))
    theirs = ASPECTS[aspect](_chart(index, helm, chart_dir))
    assert ours == theirs, f"{aspect} differs for {dict(CASES[index])}"


def test_the_cases_cover_every_option_and_the_chart_accepts_each() -> None:
    used = {pair for case in CASES for pair in case}
    every = {(axis, option) for axis, options in AXES.items() for option in options}
    assert used == every
    assert len(set(CASES)) == len(CASES) >= 30
    assert all(_accepted(case) for case in CASES)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"replicas": "three", "secrets": "memory-echo"}, "memory://"),
        ({"secrets": "chart-url", "session-tls": "ca"}, "session.tls"),
    ],
    ids=["shared-memory", "tls-on-plain-text"],
)
def test_a_case_the_chart_refuses_is_never_generated(
    helm: Path, tmp_path: Path, overrides: dict[str, str], reason: str
) -> None:
    # The generator's rules mirror the chart's own checks.
    refused = tuple(
        (axis, overrides.get(axis, next(iter(options)))) for axis, options in AXES.items()
    )
    assert not _accepted(refused)
    values = tmp_path / "refused.yaml"
    values.write_text(yaml.safe_dump(_combined(refused, lambda p: p.values)))
    out = run_helm(helm, "template", NAME, str(CHART), "-f", str(values), check=False)
    assert out.returncode != 0
    assert reason in out.stderr


_EXTRA = {"name": "extra", "emptyDir": {}}
AT_THE_PROMPT = (
    "mountPath /etc/moorage/agent collides with the pod contract's mount /etc/moorage/agent"
)


@pytest.mark.parametrize(
    ("values", "pod", "chart_says", "operator_says"),
    [
        (
            {"podLabels": {"app.kubernetes.io/instance": "other"}},
            {"labels": {"app.kubernetes.io/instance": "other"}},
            "podLabels may not set app.kubernetes.io/instance",
            "spec.pod.labels may not set app.kubernetes.io/instance",
        ),
        (
            {"podLabels": {"pod-template-hash": "abc"}},
            {"labels": {"pod-template-hash": "abc"}},
            "podLabels may not set pod-template-hash",
            "spec.pod.labels may not set pod-template-hash",
        ),
        (
            {"podAnnotations": {"moorage.dev/gate": "[]"}},
            {"annotations": {"moorage.dev/gate": "[]"}},
            "podAnnotations may not set moorage.dev/gate",
            "spec.pod.annotations may not set moorage.dev/gate",
        ),
        (
            {"extraVolumes": [{"name": "secrets", "emptyDir": {}}]},
            {"volumes": [{"name": "secrets", "emptyDir": {}}]},
            "the name secrets is the pod contract's own volume",
            "spec.pod.volumes[0].name may not be secrets",
        ),
        (
            {
                "extraVolumes": [_EXTRA],
                "extraVolumeMounts": [{"name": "extra", "mountPath": "/tmp/x"}],
            },
            {"volumes": [_EXTRA], "volumeMounts": [{"name": "extra", "mountPath": "/tmp/x"}]},
            "mountPath /tmp/x collides with the pod contract's mount /tmp",
            "mountPath /tmp/x collides with the pod contract's mount /tmp",
        ),
        (
            {
                "extraVolumes": [_EXTRA],
                "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc"}],
            },
            {"volumes": [_EXTRA], "volumeMounts": [{"name": "extra", "mountPath": "/etc"}]},
            "mountPath /etc collides with the pod contract's mount /etc/moorage/secrets",
            "mountPath /etc collides with the pod contract's mount /etc/moorage/secrets",
        ),
        (
            {"extraVolumes": [{"name": "system-prompt", "emptyDir": {}}]},
            {"volumes": [{"name": "system-prompt", "emptyDir": {}}]},
            "the name system-prompt is the pod contract's own volume",
            "spec.pod.volumes[0].name may not be system-prompt",
        ),
        (
            {
                "extraVolumes": [_EXTRA],
                "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/moorage/agent"}],
            },
            {
                "volumes": [_EXTRA],
                "volumeMounts": [{"name": "extra", "mountPath": "/etc/moorage/agent"}],
            },
            AT_THE_PROMPT,
            AT_THE_PROMPT,
        ),
        (
            {"extraVolumeMounts": [{"name": "tmp", "mountPath": "/scratch"}]},
            {"volumeMounts": [{"name": "tmp", "mountPath": "/scratch"}]},
            "extraVolumeMounts: tmp is not a volume of extraVolumes",
            "spec.pod.volumeMounts[0].name must be one of spec.pod.volumes, got 'tmp'",
        ),
    ],
    ids=[
        "selector-label",
        "pod-template-hash",
        "operator-annotation",
        "contract-volume",
        "under-a-contract-mount",
        "above-a-contract-mount",
        "prompt-volume",
        "at-the-prompt-mount",
        "contract-volume-mounted-again",
    ],
)
def test_the_chart_and_the_operator_refuse_the_same_pod_settings(
    helm: Path, tmp_path: Path, values: Obj, pod: Obj, chart_says: str, operator_says: str
) -> None:
    values_file = tmp_path / "refused.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = run_helm(helm, "template", NAME, str(CHART), "-f", str(values_file), check=False)
    assert out.returncode != 0
    assert chart_says in out.stderr
    problems = validate(parse_spec({"image": "agent:1", "pod": pod}))
    assert any(operator_says in problem for problem in problems), problems


def test_service_labels_may_not_take_the_selector_labels_on_either_side(
    helm: Path, tmp_path: Path
) -> None:
    service = {"labels": {"app.kubernetes.io/name": "other"}}
    values_file = tmp_path / "refused.yaml"
    values_file.write_text(yaml.safe_dump({"service": service}))
    out = run_helm(helm, "template", NAME, str(CHART), "-f", str(values_file), check=False)
    assert "service.labels may not set app.kubernetes.io/name" in out.stderr
    problems = validate(parse_spec({"image": "agent:1", "service": service}))
    assert problems[0].startswith("spec.service.labels may not set app.kubernetes.io/name")


@pytest.mark.parametrize(
    ("values", "spec", "chart_says", "operator_says"),
    [
        (
            {"agent": {"systemPrompt": "Be brief.", "systemPromptConfigMap": {"name": "p"}}},
            {"agent": {"systemPrompt": "Be brief.", "systemPromptConfigMapRef": {"name": "p"}}},
            "agent: set systemPrompt or systemPromptConfigMap.name, not both",
            "spec.agent: set systemPrompt or systemPromptConfigMapRef, not both",
        ),
        (
            {"agent": {"systemPrompt": "  "}},
            {"agent": {"systemPrompt": "  "}},
            "agent.systemPrompt must not be only whitespace",
            "spec.agent.systemPrompt must not be empty",
        ),
        (
            {"agent": {"tools": ["clock", "shell"]}},
            {"agent": {"tools": ["clock", "shell"]}},
            "at '/agent/tools/1'",
            "spec.agent.tools: unknown 'shell' (valid: calculator, word_count, clock)",
        ),
        (
            {"extraEnv": {"AGENT_SYSTEM_PROMPT_FILE": "/p"}},
            {"env": [{"name": "AGENT_SYSTEM_PROMPT_FILE", "value": "/p"}]},
            "extraEnv may not set AGENT_SYSTEM_PROMPT_FILE",
            "spec.env may not set AGENT_SYSTEM_PROMPT_FILE",
        ),
    ],
    ids=["two-prompt-sources", "blank-prompt", "unknown-tool", "prompt-file-in-env"],
)
def test_the_chart_and_the_operator_refuse_the_same_agent_settings(
    helm: Path, tmp_path: Path, values: Obj, spec: Obj, chart_says: str, operator_says: str
) -> None:
    values_file = tmp_path / "refused.yaml"
    values_file.write_text(yaml.safe_dump(values))
    out = run_helm(helm, "template", NAME, str(CHART), "-f", str(values_file), check=False)
    assert out.returncode != 0
    assert chart_says in out.stderr
    problems = validate(parse_spec({"image": "agent:1", **spec}))
    assert any(operator_says in problem for problem in problems), problems
