"""``python -m grpclb`` and the ``grpclb`` console script.

Kept to a shim so that importing the package never parses arguments or
imports the command line's code.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from grpclb.tools.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
