"""The `ringstream` command line (placeholder until the CLI module lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("ringstream: no command yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
