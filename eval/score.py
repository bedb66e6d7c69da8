"""Moved to `streammind.evaluation.score` (`streammind score`); `python -m eval.score` still runs it."""

import sys

from streammind._compat import run_moved
from streammind.evaluation.score import main

if __name__ == "__main__":
    sys.exit(run_moved("eval.score", "score", "streammind.evaluation.score"))

__all__ = ["main"]
