"""Entry point of `agent-service`."""

import sys


def main() -> int:
    """Start the service."""
    return 2


if __name__ == "__main__":
    sys.exit(main())
