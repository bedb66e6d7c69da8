"""Fixtures of the adversarial suite: a saved tiny model and a loopback server that accepts
connections and never answers (its helpers are in tests/helpers.py).

Run: .venv/bin/python -m pytest tests/adversarial -q
"""

from __future__ import annotations

import pytest

from tests.helpers import SilentServer, save_tiny_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A saved tiny StreamMind model (read-only: tests copy it before changing anything)."""
    return save_tiny_model(tmp_path_factory.mktemp("adversarial_model"), tiny_tokenizer_dir)


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()
