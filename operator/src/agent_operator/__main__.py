"""Entry point of `agent-operator`: run the kopf operator with JSON logs and a liveness probe."""

from __future__ import annotations

import argparse
import datetime
import getpass
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import Any, cast

import kopf
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


def ensure_peering() -> bool:
    """Make sure the ClusterKopfPeering exists, creating it if needed; False (and an error
    saying what is missing and how to fix it) when it cannot.

    Without it kopf stays paused forever and says nothing, so this check runs before kopf.
    """
    try:
        if not kube.peering_served():
            log.error(
                "the ClusterKopfPeering CRD (clusterkopfpeerings.kopf.dev) is not installed, so "
                "the operator cannot coordinate its instances; install the CRDs with "
                "`kubectl apply -k manifests/crds` and start the operator again"
            )
            return False
        if kube.get_peering(MANAGER) is not None:
            return True
        created = kube.create_peering(MANAGER)
    except ApiException as exc:
        log.error(
            "the ClusterKopfPeering %r does not exist and the operator could not create it "
            "(%s): %s",
            MANAGER,
            kube.error_message(exc),
            PEERING_FIX,
        )
        return False
    if created:
        log.warning("the ClusterKopfPeering %r was missing; created it", MANAGER)
    return True


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
    if not ensure_peering():
        return 2
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
