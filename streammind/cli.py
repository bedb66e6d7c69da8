"""Moved to `streammind.apps.cli`; `python -m streammind.cli <verb> ...` still runs the `streammind` command."""

import sys

from .apps.cli import main

if __name__ == "__main__":
    sys.stderr.write("note: `python -m streammind.cli` is now `streammind` (or `python -m streammind`); running it\n")
    sys.exit(main())

__all__ = ["main"]
