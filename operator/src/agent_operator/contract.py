"""The agent pod's contract, shared with the Helm chart: probes, hardening, files, port, defaults.

`pod-contract.yaml` beside this module is a copy of the chart's files/pod-contract.yaml, written
by `make schemas` (the chart reads the original with `.Files.Get`); a stale copy fails the chart
tier. The constants below name what the builders and the spec defaults take from it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

import yaml

Obj = dict[str, Any]


def load(text: str) -> Obj:
    """Parse a contract document (a mapping at the top)."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("the pod contract must be a YAML mapping")
    return data


CONTRACT: Final = load(
    files("agent_operator").joinpath("pod-contract.yaml").read_text(encoding="utf-8")
)

CONTAINER: Final[Obj] = CONTRACT["container"]
PORT_NAME: Final = str(CONTAINER["port"]["name"])
PORT: Final = int(CONTAINER["port"]["number"])
RUN_AS_USER: Final = int(CONTRACT["runAsUser"])
SECRETS: Final[Obj] = CONTRACT["secrets"]
SECRETS_DIR: Final = str(SECRETS["dir"])
SESSION_TLS: Final[Obj] = CONTRACT["sessionTls"]
SESSION_TLS_DIR: Final = str(SESSION_TLS["dir"])
SYSTEM_PROMPT: Final[Obj] = CONTRACT["systemPrompt"]
SYSTEM_PROMPT_DIR: Final = str(SYSTEM_PROMPT["dir"])
SYSTEM_PROMPT_KEY: Final = str(SYSTEM_PROMPT["configMapKey"])
TMP: Final[Obj] = CONTRACT["tmp"]
# The contract's own volumes and where they are mounted: a spec's extra volumes and mounts may
# not take these names, nor mount at, above or under these paths.
VOLUMES: Final = (
    str(TMP["volume"]),
    str(SECRETS["volume"]),
    str(SESSION_TLS["volume"]),
    str(SYSTEM_PROMPT["volume"]),
)
MOUNT_PATHS: Final = (str(TMP["mountPath"]), SECRETS_DIR, SESSION_TLS_DIR, SYSTEM_PROMPT_DIR)
# Extra seconds of grace beyond drain + shutdown (the chart's termination.marginSeconds).
GRACE_MARGIN_SECONDS: Final = int(CONTRACT["termination"]["graceMarginSeconds"])
HTTP_LIMITS: Final[Obj] = CONTRACT["http"]
TERMINATION: Final[Obj] = CONTRACT["termination"]
AUTOSCALING: Final[Obj] = CONTRACT["autoscaling"]


def resources() -> dict[str, dict[str, str]]:
    """The default container resources (a fresh copy)."""
    return {
        kind: {k: str(v) for k, v in amounts.items()}
        for kind, amounts in CONTRACT["resources"].items()
    }


def probe(name: str) -> Obj:
    """The startup, liveness or readiness probe: an HTTP GET of the service on the named port."""
    settings = dict(CONTRACT["probes"][name])
    path = settings.pop("path")
    return {"httpGet": {"path": path, "port": PORT_NAME}, **settings}


def secret_file(name: str) -> tuple[str, str]:
    """(file name, AGENT_*_FILE variable) of a secret file: sessionUrl, modelApiKey, apiKeys."""
    entry = SECRETS["files"][name]
    return str(entry["path"]), str(entry["env"])


def session_tls_file(name: str) -> tuple[str, str]:
    """(file name, AGENT_SESSION_*_FILE variable) of a session TLS file: ca, cert, key."""
    entry = SESSION_TLS["files"][name]
    return str(entry["path"]), str(entry["env"])
