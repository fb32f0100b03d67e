"""Entry point of `agent-service`: validate the configuration, then serve."""

from __future__ import annotations

import logging
import sys

from agent_service.config import ConfigError, load_settings, unknown_variables

log = logging.getLogger("agent_service")


def main() -> int:
    """Fail fast on bad configuration (exit 2, naming each bad variable), else serve."""
    try:
        settings = load_settings()
    except ConfigError as err:
        lines = "\n".join(f"  {problem}" for problem in err.problems)
        sys.stderr.write(f"agent-service: invalid configuration:\n{lines}\n")
        return 2

    # Imported late so that a bad configuration is reported without loading the web stack.
    from agent_service.logs import configure_logging
    from agent_service.server import serve

    configure_logging(settings.log_level, settings.log_format)
    log.info("starting", extra={"config": settings.redacted()})
    if settings.deprecations:
        log.warning("deprecated AGENT_* variables", extra={"variables": settings.deprecations})
    unknown = unknown_variables()
    if unknown:
        log.warning("ignoring unknown AGENT_* variables", extra={"variables": unknown})
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
