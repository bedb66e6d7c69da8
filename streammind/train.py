"""Moved to `streammind.training.train` (`streammind train`); `python -m streammind.train` still runs it."""

import sys

from ._compat import run_moved
from .training.train import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.train", "train", "streammind.training.train"))

__all__ = ["main"]
