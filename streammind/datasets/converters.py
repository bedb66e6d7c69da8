"""Moved to `streammind.training.annotation_converters` (`streammind convert-annotations`); `python -m streammind.datasets.converters` still runs it."""

import sys

from .._compat import run_moved
from ..training.annotation_converters import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.datasets.converters", "convert-annotations", "streammind.training.annotation_converters"))

__all__ = ["main"]
