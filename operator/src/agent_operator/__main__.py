"""Entry point of `agent-operator`: run the kopf operator with JSON logs and a liveness probe."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import kopf

from agent_operator import handlers as _handlers  # noqa: F401 - registers the kopf handlers
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
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        # Peering keeps one active instance: a second one with the same priority pauses both
        # until one leaves, and the Deployment uses Recreate so a rollout never overlaps.
        peering_name=MANAGER,
        priority=args.priority,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
