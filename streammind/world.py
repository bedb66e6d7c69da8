"""Moved to `streammind.synthetic.world` (`streammind world`); `python -m streammind.world` still runs it."""

import sys

from ._compat import run_moved
from .synthetic.world import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.world", "world", "streammind.synthetic.world"))

__all__ = ["main"]
