"""Moved to `streammind.training.features` (`streammind features`); `python -m streammind.features` still runs it."""

import sys

from ._compat import run_moved
from .training.features import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.features", "features", "streammind.training.features"))

__all__ = ["main"]
