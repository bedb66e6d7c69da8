"""Moved to `streammind.apps.quickstart` (`streammind quickstart`); `python -m streammind.quickstart` still runs it."""

import sys

from ._compat import run_moved
from .apps.quickstart import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.quickstart", "quickstart", "streammind.apps.quickstart"))

__all__ = ["main"]
