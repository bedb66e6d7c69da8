"""`python -m streammind <verb> ...`: the `streammind` command where the console script is not installed."""

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
