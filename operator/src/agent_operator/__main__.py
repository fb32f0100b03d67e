"""Entry point of `agent-operator`: run the kopf operator with JSON logs and a liveness probe."""

from __future__ import annotations

import argparse
import datetime
import getpass
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from agent_operator import handlers as _handlers  # noqa: F401 - registers the kopf handlers
from agent_operator import kube
from agent_operator.builders import MANAGER

log = logging.getLogger("agent_operator")


class _QuietWatches(logging.Filter):
    """Drop kopf's per-event "Handler 'watch-…' succeeded." lines; failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Handler 'watch-") and message.endswith("succeeded."))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; each has an AGENT_OPERATOR_* variable as its default."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="agent-operator", description=__doc__)
    parser.add_argument(
        "--namespaces",
        default=env("AGENT_OPERATOR_NAMESPACES", ""),
        help="comma-separated namespaces to watch (default: all namespaces)",
    )
    parser.add_argument(
        "--liveness",
        # Loopback by default; the in-cluster Deployment sets 0.0.0.0 for the kubelet's probe.
        default=env("AGENT_OPERATOR_LIVENESS", "http://127.0.0.1:8081/healthz"),
        help="kopf liveness endpoint URL; empty to disable",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=int(env("AGENT_OPERATOR_PRIORITY", "0")),
        help="peering priority: a higher one pauses the others (a local debug run, say)",
    )
    parser.add_argument(
        "--peering",
        default=env("AGENT_OPERATOR_PEERING", "cluster"),
        choices=["cluster", "namespaced"],
        help="where instances meet: one ClusterKopfPeering (default), or a KopfPeering in each "
        "watched namespace (needs --namespaces; an operator with namespaced RBAC only)",
    )
    parser.add_argument(
        "--log-level",
        default=env("AGENT_OPERATOR_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning"],
    )
    return parser.parse_args(argv)


def _peering_fix(namespace: str | None) -> str:
    if namespace is None:
        return (
            "apply it with `kubectl apply -f manifests/operator/peering.yaml` (or grant the "
            "operator `create` on clusterkopfpeerings.kopf.dev, as manifests/operator/rbac.yaml "
            "does)"
        )
    return (
        f"apply manifests/operator/namespaced/peering.yaml in namespace {namespace} (or grant the "
        "operator `create` on kopfpeerings.kopf.dev there, as manifests/operator/namespaced/"
        "role.yaml does)"
    )


def peering_problem(namespace: str | None = None) -> str | None:
    """None when the peering object exists (created here when missing), else what is wrong
    and how to fix it. `namespace`: the KopfPeering there, else the ClusterKopfPeering."""
    kind = kube.peering_kind(namespace)
    where = "" if namespace is None else f" in namespace {namespace!r}"
    try:
        if not kube.peering_served(namespace):
            return (
                f"the {kind} CRD is not installed; install the CRDs with "
                "`kubectl apply -k manifests/crds`"
            )
        if kube.get_peering(MANAGER, namespace) is not None:
            return None
        created = kube.create_peering(MANAGER, namespace)
    except ApiException as exc:
        return (
            f"the {kind} {MANAGER!r}{where} does not exist and the operator could not "
            f"create it ({kube.error_message(exc)}): {_peering_fix(namespace)}"
        )
    except Exception as exc:  # connection failures (urllib3's): say so and keep trying
        return f"could not reach the API server ({exc})"
    if created:
        log.warning("the %s %r%s was missing; created it", kind, MANAGER, where)
    return None


def wait_for_peering(
    scopes: Sequence[str | None] = (None,),
    *,
    poll: float = 2.0,
    repeat: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until every peering object exists (`scopes`: None for the cluster's, else the
    namespaces'), saying at once (and every `repeat` seconds) what is missing and how to fix it.

    kopf itself would start, find no peering object, and stay paused forever without a word.
    """
    said_at: float | None = None
    while problems := [p for p in map(peering_problem, scopes) if p is not None]:
        if said_at is None or clock() - said_at >= repeat:
            log.error("cannot start: %s; waiting until that is fixed", "; ".join(problems))
            said_at = clock()
        sleep(poll)
    if said_at is not None:
        log.info("the peering objects are there now; starting")


def own_identity() -> str:
    """This instance's peering identity: the pod name in a cluster, else user@host/start."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{started}/{uuid.uuid4().hex[:4]}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the operator until SIGTERM/SIGINT."""
    args = parse_args(argv)
    kopf.configure(
        debug=args.log_level == "debug",
        quiet=args.log_level == "warning",
        log_format=kopf.LogFormat.JSON,
        log_refkey="object",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietWatches())
    namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    log.info(
        "starting agent-operator",
        extra={"namespaces": namespaces or "all", "liveness": args.liveness or "off"},
    )
    try:
        kube.api_client()
    except kubernetes.config.ConfigException as exc:
        log.error("no Kubernetes credentials: %s (set KUBECONFIG or run in a pod)", exc)
        return 2
    if args.peering == "namespaced" and not namespaces:
        log.error(
            "AGENT_OPERATOR_PEERING=namespaced needs AGENT_OPERATOR_NAMESPACES: the namespaces "
            "whose KopfPeering the instances meet in"
        )
        return 2
    scopes: list[str | None] = list(namespaces) if args.peering == "namespaced" else [None]
    wait_for_peering(scopes)
    identity = own_identity()
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        # Peering keeps one active instance: a second one with the same priority pauses both
        # until one leaves, and the Deployment uses Recreate so a rollout never overlaps.
        peering_name=MANAGER,
        priority=args.priority,
        # Known to us too, so the resync thread pauses exactly when kopf does.
        identity=cast(Any, identity),
        memo=kopf.Memo(
            namespaces=namespaces,
            identity=identity,
            priority=args.priority,
            peering=args.peering,
            peering_scopes=scopes,
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
