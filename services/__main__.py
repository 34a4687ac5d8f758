"""`python -m services NAME`: one service's process, as `flowhooks NAME` runs it but
without the command line's imports (the harness and `flowhooks run` start services
this way)."""

import sys

from services import registry

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in registry.NAMES:
        sys.exit(f"usage: python -m services {{{','.join(registry.NAMES)}}}")
    registry.spec(sys.argv[1]).main()
