"""`python -m edgeopt`."""

from __future__ import annotations

import sys

from edgeopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
