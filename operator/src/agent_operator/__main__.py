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
        "--log-level",
        default=env("AGENT_OPERATOR_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning"],
    )
    return parser.parse_args(argv)


PEERING_FIX = (
    "apply it with `kubectl apply -f manifests/operator/peering.yaml` (or grant the operator "
    "`create` on clusterkopfpeerings.kopf.dev, as manifests/operator/rbac.yaml does)"
)


def peering_problem() -> str | None:
    """None when the ClusterKopfPeering exists (created here when missing), else what is
    wrong and how to fix it."""
    try:
        if not kube.peering_served():
            return (
                "the ClusterKopfPeering CRD (clusterkopfpeerings.kopf.dev) is not installed; "
                "install the CRDs with `kubectl apply -k manifests/crds`"
            )
        if kube.get_peering(MANAGER) is not None:
            return None
        created = kube.create_peering(MANAGER)
    except ApiException as exc:
        return (
            f"the ClusterKopfPeering {MANAGER!r} does not exist and the operator could not "
            f"create it ({kube.error_message(exc)}): {PEERING_FIX}"
        )
    except Exception as exc:  # connection failures (urllib3's): say so and keep trying
        return f"could not reach the API server ({exc})"
    if created:
        log.warning("the ClusterKopfPeering %r was missing; created it", MANAGER)
    return None


def wait_for_peering(
    *,
    poll: float = 2.0,
    repeat: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until the peering object exists, saying at once (and every `repeat` seconds)
    what is missing and how to fix it.

    kopf itself would start, find no peering object, and stay paused forever without a word.
    """
    said_at: float | None = None
    while (problem := peering_problem()) is not None:
        if said_at is None or clock() - said_at >= repeat:
            log.error("cannot start: %s; waiting until that is fixed", problem)
            said_at = clock()
        sleep(poll)
    if said_at is not None:
        log.info("the ClusterKopfPeering %r is there now; starting", MANAGER)


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
    wait_for_peering()
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
        memo=kopf.Memo(namespaces=namespaces, identity=identity, priority=args.priority),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
