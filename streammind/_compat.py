"""The shims that keep the entry points of earlier versions working (old `python -m` paths).

Each old module path is a few lines that call `run_moved` (for a command) or
`moved_module` (for a library module that went elsewhere); the layout of the package is in
`streammind/__init__.py`'s docstring.
"""

from __future__ import annotations

import importlib
import sys

from .errors import run_command


def run_moved(old: str, verb: str, module: str) -> int:
    """Run `module.main` for `python -m <old>`, after a one-line note naming the new command."""
    sys.stderr.write(f"note: `python -m {old}` is now `streammind {verb}` ({module}); running it\n")
    return run_command(f"streammind {verb}", importlib.import_module(module).main)


def moved_module(old: str, where: str) -> ImportError:
    """The error an old library module raises on import: one line saying where its contents went."""
    return ImportError(f"{old} has moved: {where}")


__all__ = ["moved_module", "run_moved"]
