"""Moved to `streammind.apps.convert` (`streammind convert`); `python -m streammind.convert` still runs it."""

import sys

from ._compat import run_moved
from .apps.convert import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.convert", "convert", "streammind.apps.convert"))

__all__ = ["main"]
