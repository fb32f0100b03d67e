"""Entry point of `agent-operator` (skeleton until the operator issue lands)."""

import sys


def main() -> int:
    """Run the operator."""
    sys.stderr.write("agent-operator: not implemented yet\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
