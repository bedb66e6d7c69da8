"""Moved to `streammind.apps.bench` (`streammind bench`); `python -m streammind.bench` still runs it."""

import sys

from ._compat import run_moved
from .apps.bench import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.bench", "bench", "streammind.apps.bench"))

__all__ = ["main"]
