"""Moved to `streammind.synthetic.tower_pretrain` (`streammind pretrain-tower`); `python -m streammind.tower_pretrain` still runs it."""

import sys

from ._compat import run_moved
from .synthetic.tower_pretrain import main

if __name__ == "__main__":
    sys.exit(run_moved("streammind.tower_pretrain", "pretrain-tower", "streammind.synthetic.tower_pretrain"))

__all__ = ["main"]
