"""Every module of the package, the evaluators and the entry points imports on a fresh clone.

Run: .venv/bin/python -m pytest tests/test_imports.py -q
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import eval as eval_pkg
import streammind

MODULES = sorted(
    m.name
    for pkg in (streammind, eval_pkg)
    for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_public_api():
    from streammind import StreamingSession, StreamMindConfig, StreamMindForCausalLM  # noqa: F401

    assert len(MODULES) > 15
